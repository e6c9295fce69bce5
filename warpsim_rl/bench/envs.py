"""Environment benchmark: env-steps/s of :class:`~warpsim_rl.envs.torch_env.WarpSimEnv.step`
for every registered task (``python -m warpsim_rl.bench envs --json``).

A step here is the whole environment step: action validation (shape, dtype, device, finiteness),
clipping, the BDF2 solve, observation, reward, and the auto-resets at the horizon. Actions are
uniform within the limits (pre-generated on the device). Timings exclude kernel compilation (one
warm-up step), synchronise the device before the clock stops, and report the median of
``repeats`` timed passes.
"""

from __future__ import annotations

import torch
import warp as wp

from ..envs.torch_env import WarpSimEnv
from ..tasks import make_task, task_names
from .common import machine_info, rates, time_passes

__all__ = ["bench_envs", "bench_task"]


def bench_task(task, envs: int = 4096, steps: int = 100, device="cpu", dtype="float32", repeats: int = 3,
               seed: int = 0) -> dict:
    """Benchmark one task; returns a row dict (see :func:`bench_envs`)."""
    t = make_task(task)
    env = WarpSimEnv(t, envs, device=device, dtype=dtype, seed=seed)
    env.reset()
    gen = torch.Generator(device=env.device).manual_seed(seed)
    lim = t.constants(env.device, env.dtype)["limit"].reshape(-1)
    acts = [(torch.rand(envs, t.action_dim, generator=gen, device=env.device, dtype=env.dtype) * 2 - 1) * lim
            for _ in range(8)]
    env.step(acts[0])  # compile + warm up
    wp.synchronize_device(env.model.device)
    count = torch.zeros((), dtype=torch.long, device=env.device)

    def run():
        for k in range(steps):
            _, _, term, _, _ = env.step(acts[k % len(acts)])
            count.add_(term.sum())  # stays on the device: no sync inside the timed loop

    times = time_passes(run, repeats, env.model.device, setup=env.reset)
    return {
        "name": t.name,
        "system": t.scene_name,
        "obs_dim": t.obs_dim,
        "action_dim": t.action_dim,
        "horizon": t.horizon,
        "dt": t.dt,
        "envs": envs,
        "steps": steps,
        **rates(times, envs * steps),
        "diverged_env_steps": int(count),
    }


def bench_envs(envs: int = 4096, steps: int = 100, device="cpu", dtype="float32", tasks=None,
               repeats: int = 3) -> dict:
    """env-steps/s of the batched torch env at ``envs`` environments for each task (default: all
    registered tasks). Returns ``{"benchmark": "envs", "envs", "steps", "device", "dtype",
    "rows": [{"name", "obs_dim", "action_dim", "horizon", "env_steps_per_s", ...}, ...]}``."""
    names = list(tasks) if tasks is not None else task_names()
    rows = [bench_task(n, envs, steps, device, dtype, repeats) for n in names]
    return {
        "benchmark": "envs",
        "envs": envs,
        "steps": steps,
        "device": str(device),
        "dtype": str(dtype),
        "repeats": repeats,
        "rows": rows,
        **machine_info(),
    }

