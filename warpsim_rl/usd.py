"""USD export of scenes and rollouts, for usdview, Omniverse and any other USD viewer.

A rollout — ``positions`` of shape ``(T+1, E, n, dim)``, frame 0 being the initial state — is
written as a time-sampled USD stage (``.usda`` text, ``.usdc`` binary crate, or ``.usd``, which is
crate). Layout (see ``docs/usd.md``)::

    /World                      Xform, the stage's defaultPrim
        Env_0000                Xform, translated to its cell of the environment grid
            Particles           Points: free particles, per-point widths, time-sampled points
            Handles             Points: the kinematic handles, a distinct colour and larger width
            Springs             BasisCurves (linear, 2 vertices each): bilateral springs
            Cables              BasisCurves (linear, 2 vertices each): tension-only cables
            Cloth               Mesh (only when ``faces`` is given), time-sampled points
            Geometry/Plane_k    Mesh: a finite quad of each half-space boundary
            Geometry/Box_k      Cube: each box (table), scaled to its half extents
        Env_0001 ...

Springs and cables carry their tension per curve, time-sampled, as ``primvars:tension`` (N) and
as ``primvars:displayColor`` (springs: blue in compression, grey at rest, red in tension;
cables: pale yellow when slack to orange-red when taut). Stage metadata: ``upAxis = "Y"``,
``metersPerUnit = 1``, ``timeCodesPerSecond = framesPerSecond = 1/dt``, start time code 0, end
time code ``T``, default prim ``/World``. 2D scenes are embedded in the x–y plane (z = 0).

Entry points:
    :func:`record_rollout` runs the simulator (random, given or policy actions);
    :func:`record_policy_rollout` runs a training checkpoint's policy on its task's test bed;
    :func:`export_rollout` writes positions as USD; :func:`check_compliance` runs usd-core's
    checker; ``python -m warpsim_rl.usd --scene NAME --envs E --steps T --out FILE`` (or
    ``--policy RUN_OR_CHECKPOINT --out FILE``) does it all.

Files are written atomically: the stage goes to a temporary file in the target directory that is
renamed over ``path`` only when complete; on any error no file (partial or temporary) remains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from pxr import Gf, Sdf, Usd, UsdGeom, UsdUtils, Vt

from .scene import Scene, SceneError, load_scene, scene_names
from .util import parse_params
from .viz.geometry import (BOX_COLOR, CLOTH_COLOR, HANDLE_COLOR, PARTICLE_COLOR, PLANE_COLOR, as_scene,
                           cable_colors, check_faces, check_positions, spring_colors, spring_tensions)


__all__ = [
    "Rollout",
    "record_rollout",
    "record_policy_rollout",
    "spring_tensions",
    "export_rollout",
    "check_compliance",
    "default_env_spacing",
    "env_offsets",
    "main",
    "SUFFIXES",
]

SUFFIXES = (".usda", ".usdc", ".usd")

DEPTH_2D = 0.1  # m: z thickness given to the boxes of 2D scenes


# ------------------------------------------------------------------------------------------
# Rollouts
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Rollout:
    """A recorded rollout of ``E`` environments over ``T`` steps.

    Attributes:
        scene: the scene.
        positions: (T+1, E, n, dim) float64 particle positions in m; frame 0 is the initial state.
        actions: (T, E, h, dim) float64 handle velocities applied (clipped to the limits), m/s.
        tensions: (T+1, E, m) float64 elastic spring tensions in N (see :func:`spring_tensions`).
        dt: time between frames in s.
        metadata: where the rollout came from (:func:`record_policy_rollout`: env, algo, seed,
            epoch, ...), for the USD file's ``customLayerData``.
    """

    scene: Scene
    positions: np.ndarray
    actions: np.ndarray
    tensions: np.ndarray
    dt: float
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def envs(self) -> int:
        return int(self.positions.shape[1])


def _random_action_source(scene: Scene, envs: int, seed: int, hold: int):
    rng = np.random.default_rng(seed)
    lim = scene.velocity_limit  # (h, dim)
    state = {"a": None}

    def source(t, x, v):
        if t % hold == 0 or state["a"] is None:
            state["a"] = rng.uniform(-1.0, 1.0, size=(envs,) + lim.shape) * lim
        return state["a"]

    return source


def record_rollout(scene, envs: int = 1, steps: int | None = None, actions=None, *, seed: int = 0,
                   device="cpu", dtype="float32", action_hold: int = 10, check: bool = True,
                   **parameters) -> Rollout:
    """Simulate ``envs`` environments of ``scene`` for ``steps`` steps and record every frame.

    Args:
        scene: a :class:`~warpsim_rl.scene.Scene`, or a scene name/TOML path (``parameters``
            then override its ``[parameters]``; unknown names raise ``SceneError``).
        envs: number of environments.
        steps: number of steps ``T`` (default 100, or the length of ``actions``).
        actions: ``None`` — random actions, uniform within ``±scene.velocity_limit`` per axis,
            redrawn every ``action_hold`` steps (a new random velocity every ``action_hold * dt``
            seconds gives visible swings; ``action_hold=1`` redraws each step); an array of
            shape (T, E, h, dim), or (T, h, dim) for the same actions in every env; or a callable policy
            ``policy(t, x, v) -> (E, h, dim)`` receiving host copies of the positions and
            velocities (E, n, dim) at step ``t`` (numpy or anything ``np.asarray`` accepts, such
            as a CPU torch tensor).
        seed: seed of the random actions.
        device, dtype: Warp device and float type of the simulation.
        check: raise :class:`~warpsim_rl.sim.SimulationError` at the end if an env failed.

    Returns:
        a :class:`Rollout` (positions (T+1, E, n, dim), actions as applied, tensions).
    """
    import warp as wp

    from .sim import ActionError, Simulator

    sc = as_scene(scene, **parameters)
    if isinstance(envs, bool) or not isinstance(envs, (int, np.integer)) or envs < 1:
        raise ValueError(f"envs = {envs!r}: must be an integer >= 1")
    if isinstance(action_hold, bool) or not isinstance(action_hold, (int, np.integer)) or action_hold < 1:
        raise ValueError(f"action_hold = {action_hold!r}: must be an integer >= 1")
    h, dim = sc.num_handles, sc.dim
    raw = None if actions is None or callable(actions) else np.asarray(actions, dtype=np.float64)
    if steps is None:
        steps = raw.shape[0] if raw is not None and raw.ndim >= 1 else 100
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps = {steps!r}: must be an integer >= 0")
    table = None
    if actions is None:
        source = _random_action_source(sc, envs, seed, int(action_hold))
    elif callable(actions):
        source = actions
    else:
        given = raw.shape
        want = (int(steps), int(envs), h, dim)
        if raw.ndim == 3:  # (T, h, dim): the same actions for every env
            raw = raw[:, None]
        try:
            table = np.broadcast_to(raw, want) if raw.shape[:1] == want[:1] else None
        except ValueError:
            table = None
        if table is None:
            raise ValueError(f"actions: shape {given} does not match the expected {want} "
                             f"(steps, envs, handles, dim) for scene {sc.name!r}")
        if not np.all(np.isfinite(table)):
            raise ValueError("actions: values must be finite")
        source = None

    model = sc.build(num_envs=int(envs), device=device, dtype=dtype)
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    ctrl = model.control()
    E, n, T = int(envs), sc.num_particles, int(steps)
    positions = np.empty((T + 1, E, n, dim))
    applied = np.zeros((T, E, h, dim))
    positions[0] = s0.x.numpy()
    lim = sc.velocity_limit
    for t in range(T):
        if h:
            if table is not None:
                a = table[t]
            else:
                x, v = positions[t].copy(), s0.v.numpy().astype(np.float64)
                a = np.asarray(source(t, x, v), dtype=np.float64)
                try:
                    a = np.broadcast_to(a, (E, h, dim))
                except ValueError:
                    raise ActionError(f"policy returned actions of shape {a.shape} at step {t}; "
                                      f"expected {(E, h, dim)} (envs, handles, dim)") from None
                if not np.all(np.isfinite(a)):
                    raise ActionError(f"policy returned non-finite actions at step {t}")
            a = np.clip(a, -lim, lim)
            applied[t] = a
            wp.copy(ctrl.action, wp.array(np.ascontiguousarray(a, dtype=model.np_dtype), dtype=model.vec,
                                          device=model.device))
        sim.step(s0, ctrl, s1, check=False)
        positions[t + 1] = s1.x.numpy()
        s0, s1 = s1, s0
    if check:
        sim.check()
    return Rollout(sc, positions, applied, spring_tensions(sc, positions), float(sc.dt))


def record_policy_rollout(checkpoint, envs: int = 4, steps: int | None = None, *, device="cpu",
                          dtype: str | None = None) -> Rollout:
    """Roll out the trained policy of a training checkpoint (``checkpoint.pt`` or its run folder)
    on the task it was trained on, from the first ``envs`` initial states of the task's fixed test
    bed, for ``steps`` steps (default: the task's horizon as trained) — the rollouts the run's
    test-bed evaluation and its ``eval.usdc`` show, through the same step core (the task's action
    limits, frozen failed envs).

    ``dtype`` defaults to the run's. Returns a :class:`Rollout` of the task's scene whose
    ``metadata`` names the env, algorithm, seed, epoch and checkpoint; an env whose implicit solve
    failed is held at its last valid state (``metadata["diverged"]`` counts them). Raises
    :class:`~warpsim_rl.training.CheckpointError` for a missing or unreadable checkpoint and
    ``ValueError`` for bad ``envs`` / ``steps``."""
    import torch

    from .core import StepCore
    from .training import load_policy

    task, run, policy, epoch = load_policy(checkpoint, device=device, dtype=dtype)
    if isinstance(envs, bool) or not isinstance(envs, (int, np.integer)) or not 1 <= envs <= task.test_bed_size:
        raise ValueError(f"envs = {envs!r}: must be an integer in [1, {task.test_bed_size}] (the test bed "
                         f"of {run.env!r} has {task.test_bed_size} initial states)")
    steps = task.horizon if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps = {steps!r}: must be an integer >= 1")
    pos, vel = task.test_bed()
    E = int(envs)
    core = StepCore(task, E, run.device, run.dtype)
    with torch.no_grad():
        traj = core.rollout(policy, core.initial_state(pos[:E], vel[:E]), int(steps))
    positions = np.stack([st[0].detach().cpu().numpy() for st in traj.states]).astype(np.float64)
    actions = traj.actions.detach().cpu().numpy().astype(np.float64).reshape(int(steps), E, task.num_handles,
                                                                              task.dim)
    sc = task.scene
    meta = {"env": run.env, "algo": run.algo, "seed": run.seed, "epoch": epoch, "actions": "policy",
            "initial_states": "test bed", "policy": str(checkpoint), "diverged": int(traj.failed.sum())}
    return Rollout(sc, positions, actions, spring_tensions(sc, positions), float(task.dt), meta)


# ------------------------------------------------------------------------------------------
# Validation and layout
# ------------------------------------------------------------------------------------------

def _embed3(x: np.ndarray) -> np.ndarray:
    """(..., dim) -> (..., 3) float32; 2D points go to the x–y plane (z = 0)."""
    if x.shape[-1] == 3:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(x.shape[:-1] + (3,), dtype=np.float32)
    out[..., :2] = x
    return out


def default_env_spacing(scene: Scene, positions=None) -> float:
    """Grid spacing in m (same along x and z): 1.25 times the larger horizontal (x or z) extent
    of everything the rollout visits (all frames and envs, boxes included), so neighbouring
    environments do not overlap; at least 0.5 times the vertical extent, and > 0."""
    pts = _embed3(np.asarray(scene.positions if positions is None else positions, dtype=np.float64))
    pts = pts.reshape(-1, 3).astype(np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    for b in scene.boxes:
        c, he = _box3(b, scene.dim)
        lo, hi = np.minimum(lo, c - he), np.maximum(hi, c + he)
    span = hi - lo
    spacing = max(1.25 * max(span[0], span[2]), 0.5 * span[1], 4.0 * _default_radius(scene))
    return float(spacing) if spacing > 0 else 1.0


def _spacing_pair(env_spacing) -> tuple[float, float]:
    s = np.asarray(env_spacing, dtype=np.float64)
    if s.shape == ():
        s = np.array([s, s])
    if s.shape != (2,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"env_spacing = {env_spacing!r}: expected a positive number or a pair "
                         f"(x spacing, z spacing) in m")
    return float(s[0]), float(s[1])


def env_offsets(envs: int, env_spacing) -> np.ndarray:
    """(E, 3) translation of each environment: a near-square grid in the x–z plane (y is up),
    ``ceil(sqrt(E))`` columns along +x, rows along +z, env 0 at the origin."""
    sx, sz = _spacing_pair(env_spacing)
    cols = max(1, math.ceil(math.sqrt(envs)))
    e = np.arange(envs)
    off = np.zeros((envs, 3))
    off[:, 0] = (e % cols) * sx
    off[:, 2] = (e // cols) * sz
    return off


def _default_radius(scene: Scene) -> float:
    if scene.num_springs:
        r = 0.15 * float(np.median(scene.rest_length[scene.rest_length > 0])) \
            if np.any(scene.rest_length > 0) else 0.0
        if r > 0:
            return min(r, 0.05)
    span = float(np.ptp(scene.positions, axis=0).max()) if scene.num_particles > 1 else 0.0
    return max(0.02 * span, 0.01)


def _box3(box, dim: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.zeros(3)
    he = np.full(3, DEPTH_2D / 2)
    c[:dim] = box.center
    he[:dim] = box.half_extents
    return c, he


def _plane_quad(plane, dim: int, center: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """Four vertices of a quad of the plane ``n·x = offset`` around the projection of ``center``,
    counter-clockwise about ``n`` (so the face normal points into the allowed half-space)."""
    n = np.zeros(3)
    n[:dim] = plane.normal
    n /= np.linalg.norm(n)
    if dim == 2:
        t1 = np.array([-n[1], n[0], 0.0])
        t2 = np.array([0.0, 0.0, 1.0])
    else:
        a = np.eye(3)[int(np.argmin(np.abs(n)))]
        t1 = np.cross(a, n)
        t1 /= np.linalg.norm(t1)
        t2 = np.cross(n, t1)
    p0 = center - (n @ center - plane.offset) * n
    # one grid cell wide along x and z (a horizontal floor tiles across the grid)
    sx, sz = size
    a, b = (0.5 * (abs(t[0]) * sx + abs(t[2]) * sz + abs(t[1]) * max(sx, sz)) for t in (t1, t2))
    return np.array([p0 - a * t1 - b * t2, p0 + a * t1 - b * t2, p0 + a * t1 + b * t2, p0 - a * t1 + b * t2])


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------

def _check_output_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"output path {str(path)!r}: the extension must be one of {list(SUFFIXES)} "
                         f"(.usd is written as binary crate)")
    return _check_dir(path)


def _check_dir(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    return path


def _reserve_temp(path: Path) -> str:
    """Create the temporary file next to ``path`` (same directory, same suffix, so the final
    rename is atomic and the format is inferred from the suffix); a clear OSError if the
    directory is not writable."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=parent)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {str(path)!r}: directory {str(parent)!r} is not "
                               f"writable ({e.strerror})") from None
    os.close(fd)
    return tmp


def probe_writable(path) -> Path:
    """Raise a clear error now if ``path`` cannot be written (bad extension is not checked
    here), without touching an existing file at ``path``."""
    path = _check_dir(Path(path))
    os.unlink(_reserve_temp(path))
    return path


def _commit(tmp: str, path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write(path, writer: Callable[[str], None]) -> Path:
    """Run ``writer(tmp_path)`` on a temporary file next to ``path`` and rename it to ``path``;
    on any error the temporary file is removed and ``path`` is left untouched."""
    path = Path(path)
    tmp = _reserve_temp(path)
    try:
        writer(tmp)
        _commit(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------

def _extents(pts: np.ndarray, pad: float) -> np.ndarray:
    """(T, E, k, 3) -> (T, E, 2, 3) float32 bounding boxes grown by ``pad``."""
    return np.stack([pts.min(axis=2) - pad, pts.max(axis=2) + pad], axis=2).astype(np.float32)


def _json_safe(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
        elif isinstance(v, (np.integer, np.floating)):
            out[str(k)] = v.item()
        else:
            out[str(k)] = json.dumps(v, default=str)
    return out


def export_rollout(scene, positions, path, *, dt: float | None = None, env_spacing=None, tensions=None,
                   faces=None, particle_radius: float | None = None, tension_scale: float | None = None,
                   metadata: dict | None = None) -> Path:
    """Write a rollout as a time-sampled USD stage at ``path`` (``.usda``, ``.usdc`` or ``.usd``).

    Args:
        scene: the :class:`~warpsim_rl.scene.Scene` (or a scene name) the rollout belongs to.
        positions: (T+1, E, n, dim) particle positions in m; frame ``t`` is written at time code
            ``t``. 2D scenes are embedded in the x–y plane with z = 0.
        path: output file; written atomically (see the module docstring).
        dt: seconds between frames (default ``scene.dt``); the stage's timeCodesPerSecond is 1/dt.
        env_spacing: grid spacing in m, a number or (x, z) pair (default
            :func:`default_env_spacing`). Env ``e`` is translated by ``env_offsets(E, spacing)[e]``.
        tensions: (T+1, E, m) spring tensions in N for the curve colours and the
            ``primvars:tension`` primvar (default :func:`spring_tensions` of ``positions``).
        faces: optional (F, 3) triangles or (F, 4) quads of particle indices, written as a
            ``Cloth`` Mesh per environment.
        particle_radius: particle radius in m (default from the spring rest lengths); handles
            are drawn 1.5 times larger.
        tension_scale: tension in N that maps to the full colour (default: the largest
            |tension| of the rollout, springs and cables separately).
        metadata: extra entries for the layer's ``customLayerData["warpsim_rl"]``.

    Returns:
        the path written.

    Raises:
        ValueError: wrong shapes, non-finite positions, bad extension or arguments.
        OSError (FileNotFoundError, PermissionError, IsADirectoryError): unwritable path.
        SceneError: unknown scene name.
    """
    sc = as_scene(scene)
    path = _check_output_path(path)
    x = check_positions(sc, positions)
    frames, E = x.shape[:2]
    m = sc.num_springs
    if tensions is None:
        ten = spring_tensions(sc, x)
    else:
        ten = np.asarray(tensions, dtype=np.float64)
        if ten.shape != (frames, E, m):
            raise ValueError(f"tensions: shape {ten.shape} does not match the expected "
                             f"{(frames, E, m)} (frames, envs, springs)")
        if not np.all(np.isfinite(ten)):
            raise ValueError("tensions: values must be finite")
    fc = check_faces(sc, faces)
    dt = float(sc.dt if dt is None else dt)
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt = {dt!r}: must be > 0")
    radius = _default_radius(sc) if particle_radius is None else float(particle_radius)
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"particle_radius = {particle_radius!r}: must be > 0")
    if tension_scale is not None and not (math.isfinite(float(tension_scale)) and float(tension_scale) > 0):
        raise ValueError(f"tension_scale = {tension_scale!r}: must be > 0")
    spacing = _spacing_pair(default_env_spacing(sc, x) if env_spacing is None else env_spacing)

    def write(tmp: str) -> None:
        layer = _build_layer(sc, x, ten, fc, dt, radius, tension_scale, spacing, path.suffix.lower(), metadata)
        if not layer.Export(tmp, comment=""):
            raise OSError(f"writing {str(path)!r} failed (USD could not export the layer)")

    atomic_write(path, write)
    # a stage of this process that already has the old file open would otherwise keep
    # showing it (USD caches layers by path): reload it from the new file
    cached = Sdf.Layer.Find(str(path.resolve()))
    if cached is not None:
        cached.Reload(force=True)
    return path


def _build_layer(sc: Scene, x: np.ndarray, ten: np.ndarray, faces, dt: float, radius: float,
                 tension_scale, spacing, suffix: str, metadata):
    frames, E = x.shape[:2]
    T = frames - 1
    P = _embed3(x)  # (T+1, E, n, 3) float32
    layer = Sdf.Layer.CreateAnonymous("warpsim_rl" + (suffix if suffix != ".usd" else ".usdc"))
    stage = Usd.Stage.Open(layer)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetTimeCodesPerSecond(1.0 / dt)
    stage.SetFramesPerSecond(1.0 / dt)
    stage.SetStartTimeCode(0.0)
    stage.SetEndTimeCode(float(T))
    world = UsdGeom.Xform.Define(stage, "/World")
    stage.SetDefaultPrim(world.GetPrim())
    layer.documentation = (f"warpsim_rl rollout of scene {sc.name!r}: {E} environment(s), {frames} "
                           f"frame(s), dt = {dt} s")
    info = {"scene": sc.name, "dim": sc.dim, "envs": E, "frames": frames, "dt": dt,
            "env_spacing": Gf.Vec2d(*spacing), "version": _version()}
    if sc.parameters:
        info["parameters"] = _json_safe(sc.parameters)
    if metadata:
        info.update(_json_safe(metadata))
    layer.customLayerData = {"warpsim_rl": info}

    free = sc.free_particles
    handles = sc.handles
    spring_sel = np.flatnonzero(~sc.is_cable)
    cable_sel = np.flatnonzero(sc.is_cable)
    ten_s, ten_c = ten[..., spring_sel], ten[..., cable_sel]
    scale_s = tension_scale or (float(np.abs(ten_s).max()) if ten_s.size else 1.0) or 1.0
    scale_c = tension_scale or (float(ten_c.max()) if ten_c.size else 1.0) or 1.0
    width = 2.0 * radius
    curve_w = 0.3 * width
    offsets = env_offsets(E, spacing)
    env_digits = max(4, len(str(E - 1)))


    def points_prim(env_path, name, idx, color, w):
        prim = UsdGeom.Points.Define(stage, f"{env_path}/{name}")
        prim.CreateWidthsAttr(Vt.FloatArray([w] * len(idx)))
        prim.SetWidthsInterpolation(UsdGeom.Tokens.vertex)
        prim.CreateDisplayColorPrimvar(UsdGeom.Tokens.constant).Set(Vt.Vec3fArray([Gf.Vec3f(*color)]))
        pv = UsdGeom.PrimvarsAPI(prim).CreatePrimvar("particleIndex", Sdf.ValueTypeNames.IntArray,
                                                     UsdGeom.Tokens.vertex)
        pv.Set(Vt.IntArray([int(i) for i in idx]))
        names = [sc.particle_names[int(i)] for i in idx]
        if any(names):
            prim.GetPrim().CreateAttribute("warpsim:particleNames", Sdf.ValueTypeNames.StringArray,
                                           custom=True).Set(Vt.StringArray(names))
        return prim

    def curves_prim(env_path, name, sel, w, kind):
        prim = UsdGeom.BasisCurves.Define(stage, f"{env_path}/{name}")
        prim.CreateTypeAttr(UsdGeom.Tokens.linear)
        prim.CreateWrapAttr(UsdGeom.Tokens.nonperiodic)
        prim.CreateCurveVertexCountsAttr(Vt.IntArray([2] * len(sel)))
        prim.CreateWidthsAttr(Vt.FloatArray([w]))
        prim.SetWidthsInterpolation(UsdGeom.Tokens.constant)
        prim.CreateDisplayColorPrimvar(UsdGeom.Tokens.uniform)
        api = UsdGeom.PrimvarsAPI(prim)
        api.CreatePrimvar("tension", Sdf.ValueTypeNames.FloatArray, UsdGeom.Tokens.uniform)
        api.CreatePrimvar("springIndex", Sdf.ValueTypeNames.IntArray, UsdGeom.Tokens.uniform).Set(
            Vt.IntArray([int(i) for i in sel]))
        prim.GetPrim().CreateAttribute("warpsim:springKind", Sdf.ValueTypeNames.Token, custom=True).Set(kind)
        return prim

    # per-env arrays computed once for all envs
    data = {}
    if len(free):
        data["Particles"] = np.ascontiguousarray(P[:, :, free])
    if len(handles):
        data["Handles"] = np.ascontiguousarray(P[:, :, handles])
    if len(spring_sel):
        data["Springs"] = np.ascontiguousarray(P[:, :, sc.springs[spring_sel].ravel()])
        spring_rgb = spring_colors(ten_s, scale_s)
    if len(cable_sel):
        data["Cables"] = np.ascontiguousarray(P[:, :, sc.springs[cable_sel].ravel()])
        cable_rgb = cable_colors(ten_c, scale_c)
    if faces is not None:
        verts, inv = np.unique(faces, return_inverse=True)
        data["Cloth"] = np.ascontiguousarray(P[:, :, verts])
        cloth_indices = Vt.IntArray([int(i) for i in inv.reshape(-1)])
        cloth_counts = Vt.IntArray([faces.shape[1]] * faces.shape[0])
    pads = {"Particles": radius, "Handles": 1.5 * radius, "Springs": curve_w / 2, "Cables": 0.6 * curve_w / 2,
            "Cloth": 0.0}
    ext = {k: _extents(v, pads[k]) for k, v in data.items()}

    attr_paths: list[tuple[Sdf.Path, np.ndarray, type]] = []
    for e in range(E):
        env_path = f"/World/Env_{e:0{env_digits}d}"
        env = UsdGeom.Xform.Define(stage, env_path)
        env.AddTranslateOp().Set(Gf.Vec3d(*offsets[e]))
        prims = {}
        if "Particles" in data:
            prims["Particles"] = points_prim(env_path, "Particles", free, PARTICLE_COLOR, width)
        if "Handles" in data:
            prims["Handles"] = points_prim(env_path, "Handles", handles, HANDLE_COLOR, 1.5 * width)
        if "Springs" in data:
            prims["Springs"] = curves_prim(env_path, "Springs", spring_sel, curve_w, "bilateral")
            attr_paths.append((prims["Springs"].GetDisplayColorAttr().GetPath(), spring_rgb[:, e], Vt.Vec3fArray))
            attr_paths.append((prims["Springs"].GetPrim().GetAttribute("primvars:tension").GetPath(),
                               ten_s[:, e].astype(np.float32), Vt.FloatArray))
        if "Cables" in data:
            prims["Cables"] = curves_prim(env_path, "Cables", cable_sel, 0.6 * curve_w, "cable")
            attr_paths.append((prims["Cables"].GetDisplayColorAttr().GetPath(), cable_rgb[:, e], Vt.Vec3fArray))
            attr_paths.append((prims["Cables"].GetPrim().GetAttribute("primvars:tension").GetPath(),
                               ten_c[:, e].astype(np.float32), Vt.FloatArray))
        if "Cloth" in data:
            mesh = UsdGeom.Mesh.Define(stage, f"{env_path}/Cloth")
            mesh.CreateFaceVertexCountsAttr(cloth_counts)
            mesh.CreateFaceVertexIndicesAttr(cloth_indices)
            mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
            mesh.CreateDoubleSidedAttr(True)
            mesh.CreateDisplayColorPrimvar(UsdGeom.Tokens.constant).Set(Vt.Vec3fArray([Gf.Vec3f(*CLOTH_COLOR)]))
            UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("particleIndex", Sdf.ValueTypeNames.IntArray,
                                                    UsdGeom.Tokens.vertex).Set(Vt.IntArray([int(i) for i in verts]))
            prims["Cloth"] = mesh
        for k, prim in prims.items():
            attr_paths.append((prim.CreatePointsAttr().GetPath(), data[k][:, e], Vt.Vec3fArray))
            attr_paths.append((prim.CreateExtentAttr().GetPath(), ext[k][:, e], Vt.Vec3fArray))
        _static_geometry(stage, sc, env_path, x, spacing)

    # bulk time samples, straight into the layer (no per-sample recomposition)
    with Sdf.ChangeBlock():
        for apath, arr, vt in attr_paths:
            conv = vt.FromNumpy
            for t in range(frames):
                layer.SetTimeSample(apath, float(t), conv(arr[t]))
    return layer


def _static_geometry(stage, sc: Scene, env_path: str, x: np.ndarray, spacing) -> None:
    if not sc.planes and not sc.boxes:
        return
    UsdGeom.Scope.Define(stage, f"{env_path}/Geometry")
    center = _embed3(x).reshape(-1, 3).astype(np.float64)
    center = 0.5 * (center.min(axis=0) + center.max(axis=0))
    for k, pl in enumerate(sc.planes):
        quad = _plane_quad(pl, sc.dim, center, spacing)
        mesh = UsdGeom.Mesh.Define(stage, f"{env_path}/Geometry/Plane_{k}")
        mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(quad.astype(np.float32)))
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray([4]))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray([0, 1, 2, 3]))
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        mesh.CreateDoubleSidedAttr(True)
        n3 = np.zeros(3, dtype=np.float32)
        n3[:sc.dim] = pl.normal
        mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.tile(n3, (4, 1))))
        mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        mesh.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([quad.min(0), quad.max(0)]).astype(np.float32)))
        mesh.CreateDisplayColorPrimvar(UsdGeom.Tokens.constant).Set(Vt.Vec3fArray([Gf.Vec3f(*PLANE_COLOR)]))
        mesh.CreateDisplayOpacityPrimvar(UsdGeom.Tokens.constant).Set(Vt.FloatArray([0.5]))
    for k, bx in enumerate(sc.boxes):
        c, he = _box3(bx, sc.dim)
        cube = UsdGeom.Cube.Define(stage, f"{env_path}/Geometry/Box_{k}")
        cube.CreateSizeAttr(2.0)
        cube.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(-1, -1, -1), Gf.Vec3f(1, 1, 1)]))
        cube.AddTranslateOp().Set(Gf.Vec3d(*c))
        cube.AddScaleOp().Set(Gf.Vec3f(*he))
        cube.CreateDisplayColorPrimvar(UsdGeom.Tokens.constant).Set(Vt.Vec3fArray([Gf.Vec3f(*BOX_COLOR)]))


def _version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------------------------------
# Compliance
# ------------------------------------------------------------------------------------------

def check_compliance(path) -> tuple[list[str], list[str]]:
    """Run usd-core's compliance checks on ``path``; returns ``(errors, warnings)``.

    With a usd-core that still ships ``UsdUtils.ComplianceChecker`` (24.x to at least 26.03)
    that checker runs with its default (non-ARKit) rules, and its failed checks count as errors
    together with ``GetErrors()``. usd-core 26.08 and later no longer have it (the validation
    framework ``pxr.UsdValidation``, which ``usdchecker`` now uses, replaced it): then every
    registered validator runs on the stage and each ``Error``-type result is an error, the rest
    warnings.
    """
    path = str(path)
    if hasattr(UsdUtils, "ComplianceChecker"):
        checker = UsdUtils.ComplianceChecker()
        checker.CheckCompliance(path)
        return list(checker.GetErrors()) + list(checker.GetFailedChecks()), list(checker.GetWarnings())
    from pxr import UsdValidation

    stage = Usd.Stage.Open(path)
    if stage is None:
        return [f"cannot open {path!r} as a USD stage"], []
    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    results = UsdValidation.ValidationContext(validators).Validate(stage)
    errors, warnings = [], []
    for r in results:
        if r.HasNoError():
            continue
        (errors if r.GetType() == UsdValidation.ValidationErrorType.Error else warnings).append(
            r.GetErrorAsString())
    return errors, warnings


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m warpsim_rl.usd",
        description="Export a rollout of a scene as time-sampled USD: random actions within the "
                    "handle limits, or, with --policy, a trained policy on its task's test bed. "
                    "See docs/usd.md.")
    p.add_argument("--scene", help=f"scene name ({', '.join(scene_names())}) or TOML path; with --policy "
                                   f"optional (the checkpoint names its task) and, if given, it must be "
                                   f"the task's scene")
    p.add_argument("--envs", type=int, default=None,
                   help="environments, laid out in a grid (default 4; 64 with --bench); with --policy "
                        "the first ENVS initial states of the test bed")
    p.add_argument("--steps", type=int, default=None,
                   help="simulated steps; frames = steps + 1 (default 100; with --policy the task's "
                        "horizon as trained)")
    p.add_argument("--out", help="output file: .usda (text), .usdc or .usd (binary)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random actions (default 0)")
    p.add_argument("--hold", type=int, default=None,
                   help="random actions are redrawn every HOLD steps (default 10)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="simulation precision (default float32; with --policy the run's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="scene parameter override, e.g. num_particles=20 (repeatable)")
    p.add_argument("--spacing", type=float, default=None, help="grid spacing in m (default: from the rollout)")
    p.add_argument("--policy", metavar="CHECKPOINT",
                   help="act with the trained policy of a train.py run (its checkpoint.pt or its run "
                        "folder): the task it was trained on, from the test bed's initial states")
    p.add_argument("--png", metavar="PATH", help="also render a matplotlib preview (x-y projection)")
    p.add_argument("--check", action="store_true", help="run the USD compliance checker on the file")
    p.add_argument("--bench", action="store_true",
                   help="benchmark the export (default 64 envs x 100 steps of rope3d) and print JSON; "
                        "the extension of --out, if given, picks the format (default .usdc). The same as "
                        "`python -m warpsim_rl.bench usd --json` (warpsim_rl.bench.usd)")
    args = p.parse_args(argv)

    if args.bench:
        from .bench.usd import bench_export

        res = bench_export(envs=args.envs or 64, frames=100 if args.steps is None else args.steps,
                           scene=args.scene or "rope3d", suffix=Path(args.out).suffix if args.out else ".usdc")
        print(json.dumps(res))
        return 0
    if not args.out or not (args.scene or args.policy):
        p.error("--out and --scene (or --policy) are required (unless --bench)")
    try:
        # fail now, not after the simulation, if an output cannot be written
        out = probe_writable(_check_output_path(args.out))
        if args.png:
            if Path(args.png).suffix.lower() != ".png":
                raise ValueError(f"--png {args.png!r}: the file must end in .png")
            probe_writable(args.png)
        t0 = time.perf_counter()
        if args.policy:
            random_only = [f for f, v in (("--seed", args.seed), ("--hold", args.hold),
                                          ("--param", args.param or None)) if v is not None]
            if random_only:
                raise ValueError(f"--policy: {', '.join(random_only)} shape random actions or the scene; a "
                                 f"policy rollout starts from the task's test bed in the scene it was trained "
                                 f"in (drop {', '.join(random_only)})")
            ro = _policy_rollout(args)
            sc = ro.scene
            metadata = ro.metadata
        else:
            sc = load_scene(args.scene, **parse_params(args.param))
            seed = 0 if args.seed is None else args.seed
            ro = record_rollout(sc, args.envs or 4, 100 if args.steps is None else args.steps, None, seed=seed,
                                device=args.device, dtype=args.dtype or "float32",
                                action_hold=10 if args.hold is None else args.hold)
            metadata = {"seed": seed, "actions": "random", "policy": ""}
        t1 = time.perf_counter()
        export_rollout(sc, ro.positions, out, dt=ro.dt, env_spacing=args.spacing, tensions=ro.tensions,
                       metadata=metadata)
        t2 = time.perf_counter()
        source = (f"policy of {metadata['env']} ({metadata['algo']}, seed {metadata['seed']}, epoch "
                  f"{metadata['epoch']}), test-bed initial states"
                  + (f", {metadata['diverged']} env(s) diverged" if metadata["diverged"] else "")
                  if args.policy else "random actions")
        print(f"wrote {out} ({sc.name}: {ro.envs} envs, {ro.frames} frames, dt {ro.dt} s, {source}; "
              f"simulate {t1 - t0:.2f} s, export {t2 - t1:.2f} s)")
        if args.png:
            from .viz.preview import render_preview

            render_preview(sc, ro.positions, args.png, dt=ro.dt)
            print(f"wrote {args.png}")
        if args.check:
            errors, warnings = check_compliance(out)
            for w in warnings:
                print(f"compliance warning: {w}")
            for e in errors:
                print(f"compliance error: {e}")
            if errors:
                return 1
            print("compliance: no errors")
    except (SceneError, ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _policy_rollout(args) -> Rollout:
    """``--policy``: the checkpoint's policy on its task; ``--scene``, if given, must be its scene."""
    from .training import load_checkpoint

    path = Path(args.policy)
    if not path.exists():
        raise FileNotFoundError(f"--policy {args.policy!r}: no such checkpoint file or run folder")
    if args.scene:
        run = load_checkpoint(path, what="--policy")["config"]["run"]
        from .tasks import make_task

        scene_name = make_task(run["env"]).scene_name
        if args.scene != scene_name:
            raise ValueError(f"--scene {args.scene!r} does not match the policy: {args.policy!r} was trained "
                             f"on task {run['env']!r}, whose scene is {scene_name!r}; pass --scene "
                             f"{scene_name} or leave --scene out")
    return record_policy_rollout(path, args.envs or 4, args.steps, device=args.device, dtype=args.dtype)


if __name__ == "__main__":
    sys.exit(main())
