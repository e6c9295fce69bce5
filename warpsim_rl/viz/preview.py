"""Matplotlib preview of a rollout, for machines without a USD viewer.

:func:`render_preview` draws a grid of snapshots — one row per environment (the first few), one
column per time — in a 2D projection (x–y by default; scenes are y-up, 2D scenes live in x–y).
Each panel shows the springs (grey, coloured by tension like the USD export: red in tension,
blue in compression), the cables (pale yellow when slack to orange-red when taut), the free
particles (blue), the handles (green squares), faint trails up to that time (of the handles, and
of every free particle — or only the last one in scenes with more than three), the cloth faces
if given, and the boxes and planes that are visible in the projection. It uses
matplotlib's object API with the Agg canvas, so it neither needs a display nor changes the
global pyplot backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..scene import Scene
from ..usd import atomic_write
from .geometry import (BOX_COLOR, CLOTH_COLOR, HANDLE_COLOR, PARTICLE_COLOR, as_scene, cable_colors, check_faces,
                       check_positions, spring_colors, spring_tensions)

__all__ = ["render_preview"]

_AXES = {"x": 0, "y": 1, "z": 2}


def render_preview(scene, positions, path, *, dt: float | None = None, envs: int = 3, frames: int = 6,
                   faces=None, tensions=None, projection: str = "xy", title: str | None = None,
                   dpi: int = 80) -> Path:
    """Render a PNG strip of snapshots of a rollout.

    Args:
        scene: the :class:`~warpsim_rl.scene.Scene` (or a scene name).
        positions: (T+1, E, n, dim) positions in m, as for :func:`warpsim_rl.usd.export_rollout`.
        path: output ``.png`` file, written atomically.
        dt: seconds between frames (default ``scene.dt``), for the panel titles.
        envs: rows: the first ``envs`` environments.
        frames: columns: snapshot times spread evenly over the rollout (first and last included).
        faces: optional (F, 3|4) particle-index faces drawn filled (cloth).
        tensions: (T+1, E, m) spring tensions in N (default from the positions).
        projection: two axis letters, horizontal then vertical (``"xy"``, ``"zy"``, ``"xz"``).
        title: figure title (default: scene name and sizes).
        dpi: resolution.

    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    sc: Scene = as_scene(scene)
    x = check_positions(sc, positions)
    fc = check_faces(sc, faces)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"preview path {str(path)!r}: the file must end in .png")
    if len(projection) != 2 or any(a not in _AXES for a in projection) or projection[0] == projection[1]:
        raise ValueError(f"projection = {projection!r}: expected two different axis letters from 'xyz'")
    if any(_AXES[a] >= sc.dim for a in projection):
        raise ValueError(f"projection = {projection!r}: scene {sc.name!r} is {sc.dim}D")
    T1, E = x.shape[:2]
    dt = float(sc.dt if dt is None else dt)
    ten = spring_tensions(sc, x) if tensions is None else np.asarray(tensions, dtype=np.float64)
    if ten.shape != (T1, E, sc.num_springs):
        raise ValueError(f"tensions: shape {ten.shape} does not match the expected {(T1, E, sc.num_springs)}")
    rows = max(1, min(int(envs), E))
    cols = max(1, min(int(frames), T1))
    times = np.unique(np.linspace(0, T1 - 1, cols).round().astype(int))
    cols = len(times)
    a0, a1 = _AXES[projection[0]], _AXES[projection[1]]
    xy = x[:, :rows][..., [a0, a1]]  # (T+1, rows, n, 2)

    lo, hi = xy.reshape(-1, 2).min(axis=0), xy.reshape(-1, 2).max(axis=0)
    for b in sc.boxes:
        c, he = np.asarray(b.center), np.asarray(b.half_extents)
        lo = np.minimum(lo, c[[a0, a1]] - he[[a0, a1]])
        hi = np.maximum(hi, c[[a0, a1]] + he[[a0, a1]])
    span = float(max((hi - lo).max(), 1e-3))
    pad = 0.08 * span
    lo, hi = lo - pad, hi + pad
    aspect = (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-9)
    panel_w = 2.2
    panel_h = float(np.clip(panel_w * aspect, 1.2, 4.0))
    fig = Figure(figsize=(panel_w * cols, panel_h * rows + 0.5), dpi=dpi)
    FigureCanvasAgg(fig)

    spring_sel = np.flatnonzero(~sc.is_cable)
    cable_sel = np.flatnonzero(sc.is_cable)
    ten_s, ten_c = ten[..., spring_sel], ten[..., cable_sel]
    scale_s = (float(np.abs(ten_s).max()) if ten_s.size else 1.0) or 1.0
    scale_c = (float(ten_c.max()) if ten_c.size else 1.0) or 1.0
    free, handles = sc.free_particles, sc.handles
    # trails: every free particle of small scenes, else only the last one (e.g. a rope's tip)
    trail = free if len(free) <= 3 else free[-1:]
    for e in range(rows):
        for c, t in enumerate(times):
            ax = fig.add_subplot(rows, cols, e * cols + c + 1)
            p = xy[t, e]
            if t > 0 and len(trail):
                trails = np.transpose(xy[: t + 1, e, trail], (1, 0, 2))
                ax.add_collection(LineCollection(trails, colors=(*PARTICLE_COLOR, 0.35), linewidths=0.7))
            if len(handles) and t > 0:
                trails = np.transpose(xy[: t + 1, e, handles], (1, 0, 2))
                ax.add_collection(LineCollection(trails, colors=(0.1, 0.7, 0.2, 0.35), linewidths=0.7))
            for b in sc.boxes:
                cc, he = np.asarray(b.center), np.asarray(b.half_extents)
                ax.add_patch(Rectangle(cc[[a0, a1]] - he[[a0, a1]], 2 * he[a0], 2 * he[a1],
                                       facecolor=(*BOX_COLOR, 0.5), edgecolor=(0.4, 0.3, 0.2)))
            for pl in sc.planes:
                _draw_plane(ax, pl, sc.dim, a0, a1, lo, hi)
            if fc is not None:
                ax.add_collection(PolyCollection(p[fc], facecolors=(*CLOTH_COLOR, 0.35),
                                                 edgecolors=(0.4, 0.5, 0.8, 0.5), linewidths=0.3))
            if len(spring_sel):
                segs = p[sc.springs[spring_sel]]
                ax.add_collection(LineCollection(segs, colors=spring_colors(ten_s[t, e], scale_s), linewidths=1.6))
            if len(cable_sel):
                segs = p[sc.springs[cable_sel]]
                ax.add_collection(LineCollection(segs, colors=cable_colors(ten_c[t, e], scale_c), linewidths=1.2))
            if len(free):
                ax.scatter(p[free, 0], p[free, 1], s=10, color=PARTICLE_COLOR, zorder=3, linewidths=0)
            if len(handles):
                ax.scatter(p[handles, 0], p[handles, 1], s=28, marker="s", color=HANDLE_COLOR,
                           edgecolors="k", linewidths=0.5, zorder=4)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal", adjustable="box")
            ax.tick_params(labelsize=6, length=2)
            ax.set_title(f"env {e}, t = {t * dt:.2f} s", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{projection[1]} (m)", fontsize=7)
            if e == rows - 1:
                ax.set_xlabel(f"{projection[0]} (m)", fontsize=7)
    fig.suptitle(title or f"{sc.name}: {E} env(s), {T1} frames, dt = {dt:g} s "
                          f"({projection[0]}-{projection[1]} projection)", fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _draw_plane(ax, plane, dim, a0, a1, lo, hi):
    """Draw the plane's trace if it contains the viewing direction (else it covers the view)."""
    n = np.zeros(3)
    n[:dim] = plane.normal
    other = ({0, 1, 2} - {a0, a1}).pop()
    if abs(n[other]) > 1e-6 and dim == 3:
        return
    u, v = n[a0], n[a1]
    if abs(v) > abs(u):
        xs = np.array([lo[0], hi[0]])
        ys = (plane.offset - u * xs) / v
    else:
        ys = np.array([lo[1], hi[1]])
        xs = (plane.offset - v * ys) / u
    ax.plot(xs, ys, color=(0.45, 0.45, 0.45), linewidth=1.5)
    # hatch a thin band on the forbidden side
    ax.plot(xs - 0.01 * (hi[0] - lo[0]) * np.sign(u) * (abs(u) > 1e-9),
            ys - 0.01 * (hi[1] - lo[1]) * np.sign(v) * (abs(v) > 1e-9),
            color=(0.45, 0.45, 0.45, 0.4), linewidth=3)
