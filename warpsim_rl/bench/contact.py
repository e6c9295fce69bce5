"""Newton statistics of the cloth on the table: ``python -m warpsim_rl.bench contact`` (the table
of ``docs/contact.md``)."""

from __future__ import annotations

import numpy as np
import warp as wp

from ..scene import load_scene
from ..tasks.place import cloth_lay_actions
from .common import machine_info, progress_bar

__all__ = ["cloth_newton_stats", "newton_stats"]


def cloth_newton_stats(kind: str = "cable", dtype: str = "float32", envs: int = 64, steps: int = 120,
                       noise: float = 0.3, seed: int = 0, device=None, progress=False) -> dict:
    """Newton statistics of ``cloth_table`` with cloth springs of ``kind`` ("cable" or
    "bilateral") over :func:`~warpsim_rl.tasks.place.cloth_lay_actions` plus N(0, ``noise``) m/s
    per action component: iterations (mean, p99, max), steps that did not converge and, in
    float64, converged steps whose exact Hessian is not positive definite (the step is then not
    differentiable). ``progress``: a bool or a caller's tqdm bar (one unit per step)."""
    with progress_bar(progress, steps, f"contact {kind} {dtype}", unit="step") as bar:
        return _cloth_newton_stats(kind, dtype, envs, steps, noise, seed, device, bar)


def _cloth_newton_stats(kind, dtype, envs, steps, noise, seed, device, bar) -> dict:
    from ..autodiff import Differentiator
    from ..sim import Simulator

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
        bar.update()
    its = np.array(its)
    return {"kind": kind, "dtype": dtype, "envs": envs, "steps": steps, "max_iters": model.max_iters,
            "iters_mean": float(its.mean()), "iters_p99": float(np.percentile(its, 99)), "iters_max": int(its.max()),
            "steps_not_converged": failed, "envs_failed": len(sim.failures()[0]),
            "converged_steps_not_pd": not_pd if diff is not None else None}


def newton_stats(kinds=("cable", "bilateral"), dtypes=("float32", "float64"), envs: int = 64, steps: int = 120,
                 noise: float = 0.3, seed: int = 0, device=None, progress=False) -> dict:
    """:func:`cloth_newton_stats` for every spring kind and dtype: ``{"benchmark": "contact",
    "rows": [...]}`` (the defaults are the table of ``docs/contact.md``)."""
    configs = [(k, d) for k in kinds for d in dtypes]
    rows = []
    with progress_bar(progress, len(configs) * steps, "contact cloth_table", unit="step") as bar:
        for k, d in configs:
            bar.set_postfix_str(f"{k} {d}")
            rows.append(cloth_newton_stats(k, d, envs, steps, noise, seed, device, progress=bar))
    return {"benchmark": "contact", "scene": "cloth_table", "envs": envs, "steps": steps, "noise": noise,
            "seed": seed, "rows": rows, **machine_info()}
