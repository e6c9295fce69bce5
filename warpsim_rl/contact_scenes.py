"""Helpers for the contact scenes (``cloth_table``, ``wall_pendulum2d``) and their pictures for
``docs/contact.md``.

* :func:`cloth_lay_actions`: handle velocities that lay ``cloth_table``'s cloth flat on the table:
  lower the held edge until the hanging edge touches the table, then move it down and back
  (-z) along a 45 degree line, so that the cloth is laid down progressively.
* :func:`cloth_place_target`: the cloth laid flat on the table (what :func:`cloth_lay_actions`
  achieves), optionally shifted: the target of a "place" task.
* :func:`grid_faces`: the quads of a grid scene (for filled cloth in previews and USD).
* :func:`cloth_newton_stats`: Newton statistics of the cloth with cables or bilateral springs
  (``python -m warpsim_rl.contact_scenes --newton-stats``, the table in ``docs/contact.md``).
* :func:`render_contact_pictures` renders ``env_cloth_table.png`` (side view, z–y),
  ``env_cloth_table_top.png`` (top view, x–z) and ``env_wall_pendulum2d.png`` with
  :func:`warpsim_rl.render.render_preview`::

      python -m warpsim_rl.contact_scenes docs/images
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import warp as wp

from .scene import Scene, load_scene

__all__ = ["cloth_lay_actions", "cloth_place_target", "cloth_newton_stats", "grid_faces", "rollout",
           "render_contact_pictures"]


def grid_faces(rows: int, cols: int, first: int = 0) -> np.ndarray:
    """(F, 4) particle indices of the quads of a ``rows x cols`` grid whose particles were created
    row by row from index ``first`` (:meth:`~warpsim_rl.scene.SceneBuilder.add_grid`)."""
    idx = first + np.arange(rows * cols).reshape(rows, cols)
    return np.array([[idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]]
                     for r in range(rows - 1) for c in range(cols - 1)], dtype=np.int64)


def cloth_lay_actions(scene: Scene, steps: int, drop: float = 0.1, speed: float = 0.3) -> np.ndarray:
    """(steps, 2, 3) handle velocities laying ``cloth_table``'s cloth (module doc): lower the held
    edge by ``drop`` m at 0.5 m/s until the hanging edge touches the table, then move it down and
    towards -z at ``speed`` m/s per axis (a 45 degree line), so that the cloth's hanging part stays
    vertical under the handles while the part on the table grows at ``speed``; stop when the held
    edge reaches the table top. Clipped to the handle limits."""
    dt = scene.dt
    length = float(scene.parameters["spacing"]) * (int(scene.parameters["rows"]) - 1)
    t_drop = drop / 0.5
    t_lay = length / speed
    acts = np.zeros((steps, scene.num_handles, 3))
    for t in range(steps):
        tt = (t + 0.5) * dt
        if tt < t_drop:
            acts[t] = [0.0, -0.5, 0.0]
        elif tt < t_drop + t_lay:
            acts[t] = [0.0, -speed, -speed]
    return np.clip(acts, -scene.velocity_limit[None], scene.velocity_limit[None])


def cloth_place_target(scene: Scene, offset=(0.0, 0.0)) -> np.ndarray:
    """(n, 3) positions of ``cloth_table``'s cloth laid flat on the table top, held edge (row 0,
    the handles) towards -z: particle ``(r, c)`` at ``x`` as in the scene, ``y`` = the table top,
    ``z = handle_z - (rows - 1 - r) spacing`` (row ``rows - 1`` lands under the initial handles),
    shifted by ``offset = (dx, dz)``. :func:`cloth_lay_actions` ends within 2 cm of it (0.2 mm in y)."""
    rows, cols = int(scene.parameters["rows"]), int(scene.parameters["cols"])
    sp, hz = float(scene.parameters["spacing"]), float(scene.parameters["handle_z"])
    box = scene.boxes[0]
    top = box.center[1] + box.half_extents[1]
    x = np.array(scene.positions, dtype=np.float64)
    r = np.repeat(np.arange(rows), cols)
    x[: rows * cols, 1] = top
    x[: rows * cols, 2] = hz - (rows - 1 - r) * sp
    x[: rows * cols, 0] += offset[0]
    x[: rows * cols, 2] += offset[1]
    return x


def rollout(scene: Scene, actions: np.ndarray, envs: int = 1, positions=None, velocities=None,
            dtype: str = "float32", device=None) -> np.ndarray:
    """Positions (T+1, E, n, dim) of a rollout of ``actions`` (T, h, dim) or (T, E, h, dim)."""
    from .sim import Simulator

    model = scene.build(num_envs=envs, device=device, dtype=dtype)
    sim = Simulator(model)
    s0, s1 = model.state(positions, velocities), model.state()
    ctrl = model.control()
    xs = [s0.x.numpy().copy()]
    acts = np.asarray(actions, dtype=np.float64)
    if acts.ndim == 3:
        acts = np.broadcast_to(acts[:, None], (acts.shape[0], envs) + acts.shape[1:])
    for a in acts:
        ctrl.action.assign(wp.array(np.ascontiguousarray(a, dtype=model.np_dtype), dtype=model.vec,
                                    device=model.device))
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
        xs.append(s0.x.numpy().copy())
    return np.array(xs)


def cloth_newton_stats(kind: str = "cable", dtype: str = "float32", envs: int = 64, steps: int = 120,
                       noise: float = 0.3, seed: int = 0, device=None) -> dict:
    """Newton statistics of ``cloth_table`` with cloth springs of ``kind`` ("cable" or
    "bilateral") over ``cloth_lay_actions`` plus N(0, ``noise``) m/s per action component:
    iterations (mean, p99, max), steps that did not converge and, in float64, converged steps
    whose exact Hessian is not positive definite (the step is then not differentiable)."""
    from .autodiff import Differentiator
    from .sim import Simulator

    sc = load_scene("cloth_table", kind=kind)
    model = sc.build(num_envs=envs, device=device, dtype=dtype)
    sim = Simulator(model)
    diff = Differentiator(sim) if dtype == "float64" else None
    base = cloth_lay_actions(sc, steps)
    rng = np.random.default_rng(seed)
    states = [model.state(), model.state()]
    ctrl = model.control()
    if diff is not None:
        A = wp.zeros((envs, model.num_state, model.num_state), dtype=model.dtype, device=model.device)
        B = wp.zeros((envs, model.num_state, model.num_actions), dtype=model.dtype, device=model.device)
    its, failed, not_pd = [], 0, 0
    for t in range(steps):
        a = base[t][None] + noise * rng.normal(size=(envs, sc.num_handles, 3))
        ctrl.action.assign(wp.array(a.astype(model.np_dtype), dtype=model.vec, device=model.device))
        sim.step(states[0], ctrl, states[1], check=False)
        st = sim.status.numpy()
        its.append(sim.iterations.numpy().copy())
        failed += int((st != 0).sum())
        if diff is not None:
            diff.jacobians(states[0].arrays(), ctrl.action, states[1].arrays(), A, B)
            not_pd += int(((diff.ok.numpy() == 0) & (st == 0)).sum())
        states = states[::-1]
    its = np.array(its)
    return {"kind": kind, "dtype": dtype, "envs": envs, "steps": steps, "max_iters": model.max_iters,
            "iters_mean": float(its.mean()), "iters_p99": float(np.percentile(its, 99)), "iters_max": int(its.max()),
            "steps_not_converged": failed, "envs_failed": len(sim.failures()[0]),
            "converged_steps_not_pd": not_pd if diff is not None else None}


def render_contact_pictures(out_dir) -> list[Path]:
    """Render the two pictures of ``docs/contact.md`` into ``out_dir``."""
    from .render import render_preview

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    # cloth_table: two envs, the scripted laying and a variant sweeping 30% faster
    sc = load_scene("cloth_table")
    T = 125
    acts = np.stack([cloth_lay_actions(sc, T), cloth_lay_actions(sc, T, speed=0.6)], axis=1)
    xs = rollout(sc, acts, envs=2)
    paths.append(render_preview(sc, xs, out / "env_cloth_table.png", envs=2, frames=6,
                                faces=grid_faces(sc.parameters["rows"], sc.parameters["cols"]), projection="zy",
                                title="cloth_table: laying the cloth on the table (side view, z-y); handles move "
                                      "down and back at 0.3 m/s (top) and 0.6 m/s (bottom)"))
    paths.append(render_preview(sc, xs[:, :1], out / "env_cloth_table_top.png", envs=1, frames=6,
                                faces=grid_faces(sc.parameters["rows"], sc.parameters["cols"]), projection="xz",
                                title="cloth_table from above (x-z): the 0.3 m/s laying"))
    # wall_pendulum2d: the bob swung into the wall at three wall stiffnesses
    sc = load_scene("wall_pendulum2d")
    vel = np.zeros((3,) + sc.velocities.shape)
    vel[:, 1] = [2.0, 0.0]
    from .sim import Simulator

    model = sc.build(num_envs=3)
    model.set_contact_stiffness(np.array([[1e2], [1e3], [1e4]]))
    sim = Simulator(model)
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    xs = [s0.x.numpy().copy()]
    for _ in range(60):
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
        xs.append(s0.x.numpy().copy())
    paths.append(render_preview(sc, np.array(xs), out / "env_wall_pendulum2d.png", envs=3, frames=6,
                                title="wall_pendulum2d: bob thrown at 2 m/s into the wall at x = 0.4 m; "
                                      "rows: wall stiffness 1e2, 1e3, 1e4 N/m"))
    return paths


def main(argv=None) -> int:
    """``python -m warpsim_rl.contact_scenes [OUT_DIR]`` renders the pictures (default
    ``docs/images``); ``--newton-stats`` prints :func:`cloth_newton_stats` for cables and
    bilateral springs in float32 and float64 as JSON lines."""
    import json

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--newton-stats":
        for kind in ("cable", "bilateral"):
            for dtype in ("float32", "float64"):
                print(json.dumps(cloth_newton_stats(kind, dtype)))
        return 0
    for p in render_contact_pictures(args[0] if args else "docs/images"):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
