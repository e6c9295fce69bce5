"""Environments over the simulator: a batched torch env and adapters.

* :class:`~warpsim_rl.envs.torch_env.WarpSimEnv` — batched torch env (device tensors in and out);
* :mod:`warpsim_rl.envs.gym_vector` — gymnasium 1.x ``VectorEnv`` / ``Env`` (numpy in and out;
  needs ``gymnasium``);
* :mod:`warpsim_rl.envs.skrl_wrapper` — skrl wrapper on torch tensors (needs ``skrl``);
* :mod:`warpsim_rl.envs.sb3` — Stable-Baselines3 ``VecEnv`` over the whole batch (numpy at the
  boundary; needs ``stable-baselines3``).

The adapters import their optional dependencies lazily: ``import warpsim_rl.envs`` needs
none of gymnasium, skrl or stable-baselines3.
"""

from .torch_env import WarpSimEnv
from ..tasks import TASKS, Task, make_task, task_names

__all__ = ["WarpSimEnv", "Task", "TASKS", "make_task", "task_names", "make_env"]


def make_env(task, num_envs: int, **kwargs) -> WarpSimEnv:
    """``WarpSimEnv(task, num_envs, **kwargs)`` for a task name or :class:`Task`."""
    return WarpSimEnv(task, num_envs, **kwargs)
