"""What every picture of a rollout shows, in one place: the shared helpers of the USD export
(:mod:`warpsim_rl.usd`) and the matplotlib previews (:mod:`warpsim_rl.viz.preview`).

* :func:`as_scene`, :func:`check_positions`, :func:`check_faces`: argument checks of a rollout
  (scene, ``(T+1, E, n, dim)`` positions, cloth faces) with clear errors;
* :func:`spring_tensions`: the elastic tension of every spring from positions;
* :func:`spring_colors`, :func:`cable_colors` and the ``*_COLOR`` constants: the colour code
  (springs blue in compression, grey at rest, red in tension; cables pale yellow when slack to
  orange-red when taut);
* :func:`grid_faces`: the quads of a grid scene (filled cloth).
"""

from __future__ import annotations

import os

import numpy as np

from ..scene import Scene, load_scene

__all__ = ["as_scene", "check_positions", "check_faces", "spring_tensions", "spring_colors", "cable_colors",
           "grid_faces", "PARTICLE_COLOR", "HANDLE_COLOR", "CLOTH_COLOR", "PLANE_COLOR", "BOX_COLOR"]

# display colours (linear RGB)
PARTICLE_COLOR = (0.20, 0.40, 0.85)
HANDLE_COLOR = (0.10, 0.80, 0.25)
CLOTH_COLOR = (0.55, 0.65, 0.90)
PLANE_COLOR = (0.55, 0.55, 0.55)
BOX_COLOR = (0.60, 0.45, 0.30)
SPRING_REST = np.array([0.70, 0.70, 0.70])
SPRING_TENSION = np.array([0.85, 0.10, 0.25])
SPRING_COMPRESSION = np.array([0.15, 0.30, 0.90])
CABLE_SLACK = np.array([0.95, 0.88, 0.45])
CABLE_TAUT = np.array([0.85, 0.25, 0.00])


def as_scene(scene, **parameters) -> Scene:
    """``scene`` itself if it is a :class:`~warpsim_rl.scene.Scene` (``parameters`` must then be
    empty), else :func:`~warpsim_rl.scene.load_scene` of a scene name or TOML path with
    ``parameters`` as overrides; ``TypeError`` for anything else."""
    if isinstance(scene, Scene):
        if parameters:
            raise ValueError("scene parameters can only be given with a scene name or path")
        return scene
    if isinstance(scene, (str, os.PathLike)):
        return load_scene(scene, **parameters)
    raise TypeError(f"scene: expected a Scene or a scene name/path, got {type(scene).__name__}")


def check_positions(scene: Scene, positions) -> np.ndarray:
    """``positions`` as a float64 (frames, envs, n, dim) array for ``scene``; ``ValueError`` naming
    the expected shape, or the first (frame, env) with a non-finite value."""
    n, dim = scene.num_particles, scene.dim
    want = f"(frames, envs, {n}, {dim})"
    try:
        x = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"positions: expected a numeric array of shape {want} for scene "
                         f"{scene.name!r}, got {type(positions).__name__}") from None
    if x.ndim != 4 or x.shape[2:] != (n, dim) or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"positions: shape {x.shape} does not match the expected {want} "
                         f"(frames >= 1, envs >= 1) for scene {scene.name!r} "
                         f"({n} particles, dim {dim})")
    bad = ~np.isfinite(x).all(axis=(2, 3))
    if bad.any():
        t, e = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"positions: non-finite values at frame {t}, env {e} "
                         f"({int(bad.sum())} (frame, env) pairs in all)")
    return x


def check_faces(scene: Scene, faces) -> np.ndarray | None:
    """``faces`` as an int64 (F, 3) triangle or (F, 4) quad array of particle indices of ``scene``
    (``None`` stays ``None``); ``ValueError`` for a bad shape, dtype or index."""
    if faces is None:
        return None
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[0] < 1 or f.shape[1] not in (3, 4) or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces: expected an integer array of shape (F, 3) (triangles) or (F, 4) "
                         f"(quads), got shape {f.shape} and dtype {f.dtype}")
    if f.min() < 0 or f.max() >= scene.num_particles:
        raise ValueError(f"faces: particle indices must lie in [0, {scene.num_particles}), "
                         f"got [{int(f.min())}, {int(f.max())}]")
    return f.astype(np.int64)


def spring_tensions(scene: Scene, positions, stiffness=None) -> np.ndarray:
    """Elastic tension of every spring, in N, from positions ``(..., n, dim)``: ``k (l - L)``
    for bilateral springs (negative in compression) and ``k max(l - L, 0)`` for cables.
    Damping forces are not included (they need velocities). ``stiffness`` overrides the scene's,
    broadcastable to ``(..., m)`` (e.g. per-environment values of shape (E, m)).
    Returns an array of shape ``(..., m)``."""
    x = np.asarray(positions, dtype=np.float64)
    if scene.num_springs == 0:
        return np.zeros(x.shape[:-2] + (0,))
    d = x[..., scene.springs[:, 1], :] - x[..., scene.springs[:, 0], :]
    stretch = np.linalg.norm(d, axis=-1) - scene.rest_length
    k = scene.stiffness if stiffness is None else np.asarray(stiffness, dtype=np.float64)
    t = k * stretch
    return np.where(scene.is_cable, np.maximum(t, 0.0), t)


def spring_colors(t: np.ndarray, scale: float) -> np.ndarray:
    """float32 RGB (..., 3) of bilateral springs with tensions ``t`` (N): grey at rest, towards red
    in tension and blue in compression, full colour at ``|t| >= scale``."""
    s = np.clip(t / scale, -1.0, 1.0)[..., None]
    pos, neg = np.maximum(s, 0.0), np.maximum(-s, 0.0)
    c = SPRING_REST + pos * (SPRING_TENSION - SPRING_REST) + neg * (SPRING_COMPRESSION - SPRING_REST)
    return c.astype(np.float32)


def cable_colors(t: np.ndarray, scale: float) -> np.ndarray:
    """float32 RGB (..., 3) of cables with tensions ``t`` (N): pale yellow when slack to
    orange-red at ``t >= scale``."""
    s = np.clip(t / scale, 0.0, 1.0)[..., None]
    return (CABLE_SLACK + s * (CABLE_TAUT - CABLE_SLACK)).astype(np.float32)


def grid_faces(rows: int, cols: int, first: int = 0) -> np.ndarray:
    """(F, 4) particle indices of the quads of a ``rows x cols`` grid whose particles were created
    row by row from index ``first`` (:meth:`~warpsim_rl.scene.SceneBuilder.add_grid`)."""
    idx = first + np.arange(rows * cols).reshape(rows, cols)
    return np.array([[idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]]
                     for r in range(rows - 1) for c in range(cols - 1)], dtype=np.int64)
