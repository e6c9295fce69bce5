"""Pictures of the task systems (matplotlib), for ``docs/envs.md``.

Each picture shows one system in its rest configuration (handles at home, payload at its target)
next to a few initial states of the test beds of its "stop" and "stop-origin" tasks. Bilateral
springs are solid lines, cables dashed; handles are squares, free particles discs whose area grows
with their mass; the payload target is a cross; velocity arrows show the initial
payload velocities (scaled to 0.2 s of motion). 3D systems are drawn with gravity pointing down
the vertical axis (the scenes are y-up).

Regenerate the documentation images with::

    python -m warpsim_rl.envs.pictures docs/images
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..tasks import SYSTEMS, make_task

__all__ = ["draw_state", "system_figure", "render_all"]

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


def _limits(ax, pts: np.ndarray, dim: int):
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
        ax.view_init(elev=18, azim=-60)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=7)


def system_figure(system: str, samples: int | None = None):
    """A matplotlib figure of ``system``: rest configuration, and ``samples`` test-bed initial
    states of its "stop" and "stop-origin" tasks."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = [make_task(f"{system}-stop"), make_task(f"{system}-stop-origin")]
    d = tasks[0].dim
    if samples is None:
        samples = 8 if d == 2 else 6
    fig = plt.figure(figsize=(11, 4.6), dpi=110)
    kw = {"projection": "3d"} if d == 3 else {}
    titles = ["rest configuration (target)", "stop: test-bed initial states", "stop-origin: test-bed initial states"]
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
        _limits(ax, np.concatenate(pts), d)
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
    """Write ``env_<system>.png`` for every system into ``out_dir``; returns the paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for system in systems:
        fig = system_figure(system)
        path = out / f"env_{system}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in render_all(sys.argv[1] if len(sys.argv) > 1 else "docs/images"):
        print(p)
