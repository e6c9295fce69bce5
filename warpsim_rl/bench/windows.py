"""Cost of an epoch of the window-based actor-critics (SHAC, AGPO) against the forward simulation
of the same steps: ``python -m warpsim_rl.bench windows`` (issue target: a SHAC epoch <= 2x the
forward simulation at E = 256)."""

from __future__ import annotations

import time

__all__ = ["window_epoch_cost"]


def window_epoch_cost(task, num_envs: int = 256, repeats: int = 3, dtype: str = "float32",
                     threads: int | None = None, algo: str = "shac", **overrides) -> dict:
    """Wall-clock of a SHAC (or AGPO, ``algo="agpo"``) epoch against the forward simulation of the
    same steps, on the CPU (the issue's target: epoch <= 2x forward).

    Times, median over ``repeats`` after one untimed warm-up epoch: ``forward_s`` (a closed-loop
    rollout of the deterministic policy over the horizon without autograd: the forward
    simulation), ``epoch_s`` (``train_epoch``: every window's forward with the graph, backward,
    critic passes, target update), and the pieces of one full window (``window_forward_s``,
    ``window_backward_s``, ``window_critic_s``). Returns them with ``ratio = epoch_s / forward_s``."""
    import numpy as np
    import torch

    from ..algos import RunConfig, algo_config, make_algorithm
    from ..tasks import make_task

    task = make_task(task) if isinstance(task, str) else task
    run = RunConfig(env=task.name, algo=algo, num_envs=num_envs, dtype=dtype, threads=threads, seed=0)
    shac = make_algorithm(task, run, algo_config(algo, **overrides))
    shac.begin_epoch(0)
    shac.train_epoch()  # warm-up: kernels compiled, allocator primed
    timings = {k: [] for k in ("forward_s", "epoch_s", "window_forward_s", "window_backward_s", "window_critic_s")}
    h = shac.windows()[0][1]
    for _ in range(repeats):
        state0 = shac.initial_state()
        t0 = time.perf_counter()
        shac.core.rollout(shac.policy, state0, task.horizon)
        timings["forward_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        shac.train_epoch()
        timings["epoch_s"].append(time.perf_counter() - t0)
        ok = torch.ones(num_envs, dtype=torch.bool, device=shac.device)
        t0 = time.perf_counter()
        win, _ = shac.rollout_window(shac.initial_state(), h, ~ok)
        t1 = time.perf_counter()
        shac.actor_step(win, ok, "the benchmark window")
        t2 = time.perf_counter()
        shac.critic_step(win, ok)
        t3 = time.perf_counter()
        for k, v in (("window_forward_s", t1 - t0), ("window_backward_s", t2 - t1), ("window_critic_s", t3 - t2)):
            timings[k].append(v)
    out = {"task": task.name, "algo": algo, "num_envs": num_envs, "dtype": dtype, "horizon": task.horizon,
           "horizon_window": shac.cfg.horizon_window, "threads": shac.core.model.threads,
           **{k: float(np.median(v)) for k, v in timings.items()}}
    out["ratio"] = out["epoch_s"] / out["forward_s"]
    return out
