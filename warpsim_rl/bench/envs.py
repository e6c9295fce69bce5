"""Environment benchmark: env-steps/s of :class:`~warpsim_rl.envs.torch_env.WarpSimEnv.step`
for every registered task (``python -m warpsim_rl.bench envs --json``).

A step here is the whole environment step: action validation (shape, dtype, device, finiteness),
clipping, the BDF2 solve, observation, reward, and the auto-resets at the horizon. Actions are
uniform within the limits (pre-generated on the device). Timings exclude kernel compilation (one
warm-up step), synchronise the device before the clock stops, and report the median of
``repeats`` timed passes.

Sizes: without ``envs`` every task runs :data:`DEFAULT_ENVS` (4096) environments, except the
scenes of :data:`SCENE_ENVS` (rope3d 1024, cloth_table 256), so that the default run of all tasks
takes under a minute on one CPU core; each row reports its own ``envs``. ``envs=E`` runs every
task at E (``--envs 4096``: over 5 minutes on the CPU, the cloth rows most of it).
"""

from __future__ import annotations

import torch
import warp as wp

from ..envs.torch_env import WarpSimEnv
from ..tasks import make_task, task_names
from .common import machine_info, progress_bar, rates, time_passes

__all__ = ["bench_envs", "bench_task", "default_envs", "DEFAULT_ENVS", "SCENE_ENVS"]

#: environments per task when none are given
DEFAULT_ENVS = 4096
#: ... except for these scenes, whose env-steps cost ~20x (rope3d: 30 unknowns) and ~400x (the cloth
#: on the table: 78 unknowns, contact and friction) a pendulum's; their rates per environment are
#: the same at these sizes (the kernel, not the per-step overhead, dominates)
SCENE_ENVS = {"rope3d": 1024, "cloth_table": 256}


def default_envs(task) -> int:
    """The environments :func:`bench_task` runs for ``task`` (a name or a Task) by default."""
    t = make_task(task) if isinstance(task, str) else task
    return SCENE_ENVS.get(t.scene_name, DEFAULT_ENVS)


def bench_task(task, envs: int | None = None, steps: int = 100, device="cpu", dtype="float32", repeats: int = 3,
               seed: int = 0, progress=False) -> dict:
    """Benchmark one task at ``envs`` environments (default: :func:`default_envs`); returns a row
    dict (see :func:`bench_envs`). ``progress``: a bool or a caller's tqdm bar (1 + ``repeats``
    units: set-up and warm-up, then each timed pass)."""
    t = make_task(task)
    envs = default_envs(t) if envs is None else envs
    with progress_bar(progress, repeats + 1, f"envs {t.name}") as bar:
        return _bench_task(t, envs, steps, device, dtype, repeats, seed, bar)


def _bench_task(t, envs, steps, device, dtype, repeats, seed, bar) -> dict:
    env = WarpSimEnv(t, envs, device=device, dtype=dtype, seed=seed)
    env.reset()
    gen = torch.Generator(device=env.device).manual_seed(seed)
    lim = t.constants(env.device, env.dtype)["limit"].reshape(-1)
    acts = [(torch.rand(envs, t.action_dim, generator=gen, device=env.device, dtype=env.dtype) * 2 - 1) * lim
            for _ in range(8)]
    env.step(acts[0])  # compile + warm up
    wp.synchronize_device(env.model.device)
    bar.update()
    count = torch.zeros((), dtype=torch.long, device=env.device)

    def run():
        for k in range(steps):
            _, _, term, _, _ = env.step(acts[k % len(acts)])
            count.add_(term.sum())  # stays on the device: no sync inside the timed loop

    times = time_passes(run, repeats, env.model.device, setup=env.reset, on_pass=bar.update)
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


def bench_envs(envs: int | None = None, steps: int = 100, device="cpu", dtype="float32", tasks=None,
               repeats: int = 3, progress=False) -> dict:
    """env-steps/s of the batched torch env for each task (default: all registered tasks) at
    ``envs`` environments (default: :func:`default_envs` per task). Returns ``{"benchmark":
    "envs", "envs" (as given: None for the per-task default), "steps", "device", "dtype", "rows":
    [{"name", "envs", "obs_dim", "action_dim", "horizon", "env_steps_per_s", ...}, ...]}``."""
    names = list(tasks) if tasks is not None else task_names()
    rows = []
    with progress_bar(progress, len(names) * (repeats + 1), "envs", unit="pass") as bar:
        for n in names:
            bar.set_postfix_str(n)
            rows.append(bench_task(n, envs, steps, device, dtype, repeats, progress=bar))
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

