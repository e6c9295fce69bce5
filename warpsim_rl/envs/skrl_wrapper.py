"""skrl wrapper: :class:`~warpsim_rl.envs.torch_env.WarpSimEnv` as an skrl (torch) environment.

Everything stays on the env's torch device (no host round trip): skrl's agents and trainers call
``reset()`` once and then ``step(actions)``; the env auto-resets done envs inside the step
(same-step autoreset, like Isaac Lab, which skrl's trainers expect for vectorised envs), so the
returned observations are always those the agent acts on next. Rewards, ``terminated`` and
``truncated`` are returned as (E, 1) tensors, as skrl expects.

Actions from skrl's Gaussian policies are unbounded; the env clips them per axis to the task's
velocity limits (the action space's bounds) — pass ``clip_actions=True`` to the policy model to
clip before sampling statistics are computed instead.

Requires ``skrl`` (an optional extra: ``pip install warpsim_rl[rl]``).

Example::

    from warpsim_rl.envs.skrl_wrapper import make_skrl_env
    env = make_skrl_env("pendulum2d-stop", num_envs=1024)
    # ... skrl models, PPO agent, SequentialTrainer(env=env, agents=agent, cfg=...)
"""

from __future__ import annotations

from typing import Any

import gymnasium
import torch
from skrl.envs.wrappers.torch import Wrapper

from ..tasks import Task
from .gym_vector import _spaces
from .torch_env import WarpSimEnv

__all__ = ["SkrlWrapper", "make_skrl_env"]


class SkrlWrapper(Wrapper):
    """skrl ``Wrapper`` around an auto-resetting :class:`WarpSimEnv`.

    Args:
        env: the torch env (``auto_reset`` must be on).
        seed: seed of the first reset (``None``: the env's generator as constructed).
    """

    def __init__(self, env: WarpSimEnv, seed: int | None = None) -> None:
        if not isinstance(env, WarpSimEnv):
            raise TypeError(f"SkrlWrapper wraps a WarpSimEnv, got {type(env).__name__}")
        if not env.auto_reset:
            raise ValueError("SkrlWrapper needs a WarpSimEnv with auto_reset=True (skrl never resets single envs)")
        super().__init__(env)
        self._seed = seed
        self._obs_space, self._act_space, _ = _spaces(env)
        self._observations: torch.Tensor | None = None
        self._info: dict[str, Any] = {}

    @property
    def torch_env(self) -> WarpSimEnv:
        """The wrapped :class:`WarpSimEnv`."""
        return self._env

    @property
    def observation_space(self) -> gymnasium.Space:
        """Single-env observation space ``Box(-inf, inf, (obs_dim,))``."""
        return self._obs_space

    @property
    def action_space(self) -> gymnasium.Space:
        """Single-env action space ``Box(-limit, limit, (h*dim,))``."""
        return self._act_space

    @property
    def state_space(self) -> gymnasium.Space | None:
        return None

    def reset(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset every env on the first call; later calls return the current observations (the
        env resets done envs itself)."""
        if self._observations is None:
            self._observations, self._info = self._env.reset(seed=self._seed)
        return self._observations, self._info

    def step(self, actions: torch.Tensor):
        """Step with (E, h*dim) actions on the env's device; returns ``(obs, reward (E, 1),
        terminated (E, 1), truncated (E, 1), info)``."""
        env: WarpSimEnv = self._env
        if isinstance(actions, torch.Tensor) and actions.dtype != env.dtype and actions.is_floating_point():
            actions = actions.to(env.dtype)
        with torch.no_grad():
            obs, rew, term, trunc, info = env.step(actions)
        self._observations, self._info = obs, info
        return obs, rew.view(-1, 1), term.view(-1, 1), trunc.view(-1, 1), info

    def state(self) -> torch.Tensor | None:
        return None

    def render(self, *args, **kwargs) -> None:
        return None

    def close(self) -> None:
        self._env.close()


def make_skrl_env(task: Task | str, num_envs: int, device="cpu", dtype="float32", seed: int | None = None,
                  validate: bool = True) -> SkrlWrapper:
    """An auto-resetting :class:`WarpSimEnv` wrapped for skrl."""
    return SkrlWrapper(WarpSimEnv(task, num_envs, device=device, dtype=dtype, seed=seed, validate=validate), seed=seed)
