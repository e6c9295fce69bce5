"""Pictures of the task systems (matplotlib), for ``docs/envs.md``.

Each picture shows one system in its rest configuration (handles at home, payload at its target)
next to a few initial states of the test beds of each of its tasks ("stop" and "stop-origin", or
"stop" and "place" for ``cloth_table``). Bilateral springs are solid lines, cables dashed; handles
are squares, free particles discs whose area grows with their mass; the payload target of each
task is a cross; velocity arrows show the initial payload velocities (scaled to 0.2 s of motion).
Contact geometry is grey: planes as lines (2D), boxes as their outline (3D; the floor is not
drawn). 3D systems are drawn with gravity pointing down the vertical axis (the scenes are y-up).

The files are ``env_<system>.png``, except for the contact systems (``CONTACT_SYSTEMS``), whose
``env_<system>.png`` is the motion picture of :mod:`warpsim_rl.viz.contact`: theirs are
``env_<system>_tasks.png``. Regenerate the documentation images with::

    python -m warpsim_rl.viz docs/images
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..tasks import CONTACT_SYSTEMS, SYSTEMS, make_task, system_kinds

__all__ = ["draw_state", "draw_geometry", "system_figure", "render_all", "picture_name"]

_REST = "#1f3b73"
_SAMPLE = "#d9822b"
_HANDLE = "#b22222"
_TARGET = "#2a9d3f"


def _to_plot(p: np.ndarray, dim: int):
    """World coordinates (..., dim) -> plot coordinates: 2D as is; 3D (x, y, z) y-up -> (x, z, y)."""
    if dim == 2:
        return p[..., 0], p[..., 1]
    return p[..., 0], p[..., 2], p[..., 1]


def draw_state(ax, task, positions, velocities=None, color=_REST, alpha=1.0, lw=1.6, mark_target=False):
    """Draw one state (n, dim) of ``task``'s system on ``ax`` (2D axes or a 3D axes)."""
    sc = task.scene
    d = sc.dim
    pos = np.asarray(positions, dtype=np.float64)
    for s, (i, j) in enumerate(sc.springs):
        seg = pos[[i, j]]
        ax.plot(*_to_plot(seg, d), color=color, alpha=alpha, lw=lw, ls="--" if sc.is_cable[s] else "-")
    free = sc.free_particles
    sizes = 70.0 * np.sqrt(sc.masses[free]) + 6.0  # area grows with mass: 1 kg -> 76 pt²
    ax.scatter(*_to_plot(pos[free], d), s=sizes, color=color, alpha=alpha, zorder=3, edgecolors="none")
    ax.scatter(*_to_plot(pos[sc.handles], d), s=70, marker="s", color=_HANDLE, alpha=alpha, zorder=4,
               edgecolors="none")
    if velocities is not None:
        shown = free if len(free) <= 2 else free[-1:]  # chains: the tip only
        vel = np.asarray(velocities)[shown] * 0.2
        base = pos[shown]
        if d == 2:
            ax.quiver(base[:, 0], base[:, 1], vel[:, 0], vel[:, 1], color=color, alpha=alpha,
                      angles="xy", scale_units="xy", scale=1.0, width=0.004)
        else:
            bx, by, bz = _to_plot(base, 3)
            vx, vy, vz = _to_plot(vel, 3)
            ax.quiver(bx, by, bz, vx, vy, vz, color=color, alpha=alpha, linewidth=1.0)
    if mark_target:
        big = len(free) <= 2
        ax.scatter(*_to_plot(task.target, d), s=90 if big else 25, marker="x", color=_TARGET, zorder=5,
                   linewidths=2.0 if big else 1.0)


def draw_geometry(ax, scene):
    """Draw ``scene``'s contact geometry within the current axis limits (call after setting them):
    2D planes as lines, 3D boxes as wireframes clipped to the view box (3D planes are not
    drawn)."""
    style = dict(color="0.45", lw=1.2, zorder=1)
    if scene.dim == 2:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for pl in scene.planes:
            n, c = np.asarray(pl.normal, dtype=np.float64), float(pl.offset)
            if abs(n[1]) < 1e-12:  # vertical: x = c / n_x
                ax.plot([c / n[0]] * 2, [y0, y1], **style)
            else:
                xs = np.array([x0, x1])
                ax.plot(xs, (c - n[0] * xs) / n[1], **style)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        return
    (xv0, xv1), (zv0, zv1), (yv0, yv1) = ax.get_xlim(), ax.get_ylim(), ax.get_zlim()  # plot axes: x, z, y
    for b in scene.boxes:
        c, he = np.asarray(b.center), np.asarray(b.half_extents)
        lo = np.maximum(c - he, [xv0, yv0, zv0])
        hi = np.minimum(c + he, [xv1, yv1, zv1])
        if np.any(hi <= lo):
            continue  # out of view
        ybot = lo[1]
        xs = [lo[0], hi[0], hi[0], lo[0], lo[0]]
        zs = [lo[2], lo[2], hi[2], hi[2], lo[2]]
        for y in (hi[1], ybot):
            ax.plot(xs, zs, [y] * 5, **style)
        for xx, zz in zip(xs[:4], zs[:4]):
            ax.plot([xx, xx], [zz, zz], [ybot, hi[1]], **style)


def picture_name(system: str) -> str:
    """File name of ``system``'s picture (see the module doc)."""
    return f"env_{system}_tasks.png" if system in CONTACT_SYSTEMS else f"env_{system}.png"


def _limits(ax, pts: np.ndarray, dim: int, azim: float = -60.0):
    from matplotlib.ticker import MaxNLocator

    lo, hi = pts.min(axis=0), pts.max(axis=0)
    c, r = (lo + hi) / 2, float(np.max(hi - lo)) / 2 * 1.1 + 0.05
    if dim == 2:
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.set_aspect("equal")
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m] (up)")
        ax.grid(alpha=0.3)
    else:
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[2] - r, c[2] + r)
        ax.set_zlim(c[1] - r, c[1] + r)
        ax.set_box_aspect((1, 1, 1))
        ax.set_xlabel("x [m]")
        ax.set_ylabel("z [m]")
        ax.set_zlabel("y [m] (up)")
        ax.view_init(elev=18, azim=azim)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=7)


def system_figure(system: str, samples: int | None = None):
    """A matplotlib figure of ``system``: rest configuration, and ``samples`` test-bed initial
    states of each of its tasks (:func:`~warpsim_rl.tasks.system_kinds`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = [make_task(f"{system}-{kind}") for kind in system_kinds(system)]
    d = tasks[0].dim
    if samples is None:
        samples = 8 if d == 2 else (3 if tasks[0].num_particles > 20 else 6)
    fig = plt.figure(figsize=(11, 4.6), dpi=110)
    kw = {"projection": "3d"} if d == 3 else {}
    titles = ["rest configuration (target)"] + [f"{t.kind}: test-bed initial states" for t in tasks]
    rest = np.asarray(tasks[0].rest_positions)
    for k in range(3):
        ax = fig.add_subplot(1, 3, k + 1, **kw)
        pts = [rest]
        if k == 0:
            draw_state(ax, tasks[0], rest, mark_target=True)
        else:
            task = tasks[k - 1]
            pos, vel = task.test_bed()
            for i in range(samples):
                draw_state(ax, task, pos[i], vel[i], color=_SAMPLE, alpha=0.55, lw=1.1)
                pts.append(pos[i])
            draw_state(ax, task, rest, color=_REST, alpha=0.35, lw=1.0, mark_target=True)
            pts.append(np.asarray(task.target))
        # the cloth swings about x (its handle line): look from the side to see it
        _limits(ax, np.concatenate(pts), d, azim=-25.0 if tasks[0].scene.boxes else -60.0)
        draw_geometry(ax, task.scene if k else tasks[0].scene)
        ax.set_title(titles[k], fontsize=10)
    handles = [Line2D([], [], color=_REST, ls="-", label="bilateral spring"),
               Line2D([], [], color=_REST, ls="--", label="cable (tension only)"),
               Line2D([], [], color=_HANDLE, marker="s", ls="", label="handle (velocity-controlled)"),
               Line2D([], [], color=_REST, marker="o", ls="", label="payload particle"),
               Line2D([], [], color=_TARGET, marker="x", ls="", label="payload target")]
    sc = tasks[0].scene
    lim = tasks[0].action_limits
    fig.suptitle(f"{system}: {sc.num_particles - sc.num_handles} payload particle(s), {sc.num_handles} handle(s), "
                 f"{sc.num_springs} spring(s); dt = {sc.dt} s, |a| <= {lim.max():g} m/s per axis", fontsize=11)
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return fig


def render_all(out_dir: str | Path = "docs/images", systems=SYSTEMS) -> list[Path]:
    """Write every system's picture (:func:`picture_name`) into ``out_dir``; returns the paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for system in systems:
        fig = system_figure(system)
        path = out / picture_name(system)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
