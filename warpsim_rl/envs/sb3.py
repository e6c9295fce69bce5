"""Stable-Baselines3 adapter: :class:`~warpsim_rl.envs.torch_env.WarpSimEnv` as an SB3 ``VecEnv``.

SB3 accepts only its own ``VecEnv`` API (or single gymnasium envs it wraps in ``DummyVecEnv``),
not a gymnasium ``VectorEnv``: :class:`SB3VecEnv` runs the whole batch in one simulator and
speaks that API, with the semantics of a ``DummyVecEnv`` over :class:`~warpsim_rl.envs.gym_vector.WarpSimGymEnv`
(tested value for value):

* ``reset() -> obs`` (E, obs_dim); ``step_async(actions)`` / ``step_wait() -> (obs, rewards
  (E,) float32, dones (E,) bool, infos)`` with ``done = terminated | truncated``;
* done envs are reset inside the step (the env's same-step auto-reset): the returned observation
  starts the new episode, ``infos[i]["terminal_observation"]`` is the last one of the ended
  episode, and every ``infos[i]`` holds ``"TimeLimit.truncated"`` (``truncated and not
  terminated``: SB3 bootstraps the value there) and ``"diverged"`` (the Newton solve failed: the
  episode terminated);
* numpy at the boundary, converted once per step for the whole batch (one host copy of
  observations, final observations, rewards and flags), never per env;
* ``seed(s)`` (SB3's ``set_random_seed`` calls it) takes effect at the next ``reset()``: the
  batch draws every initial state from one generator, seeded with the first env's seed ``s``
  (SB3 hands env ``i`` the seed ``s + i``), so runs are deterministic, but the states differ from
  those of a ``DummyVecEnv`` of separately seeded single envs;
* ``set_options({"initial_state": (pos, vel)})`` ((n, dim) per env, or a list of such dicts, one
  per env) sets exact states for the next ``reset()``;
* ``get_attr``/``set_attr``/``env_method`` address the one batched :class:`WarpSimEnv` shared by
  every index (``get_attr("task")`` gives the task once per requested index; ``set_attr`` must
  address all envs; ``env_method`` calls the method once and returns its result per index);
  ``env_is_wrapped`` is ``False`` for every index (there are no per-env gymnasium wrappers:
  wrap the adapter in SB3's ``VecMonitor``, ``VecNormalize``, ... instead); ``render_mode`` is
  ``None`` (nothing renders, see :mod:`warpsim_rl.viz`).

Actions are clipped per axis to the task's velocity limits (SB3 already clips Gaussian actions
to the action space's bounds); wrong shapes or NaN/inf raise :class:`~warpsim_rl.sim.ActionError`.

Requires ``stable-baselines3`` (an optional extra: ``pip install warpsim_rl[sb3]``).

Example::

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    from warpsim_rl.envs.sb3 import make_sb3_env

    env = VecMonitor(make_sb3_env("pendulum2d-stop", num_envs=64, seed=0))
    PPO("MlpPolicy", env, n_steps=64, seed=0).learn(100_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ..tasks import Task
from .gym_vector import _as_action, _spaces
from .torch_env import WarpSimEnv

__all__ = ["SB3VecEnv", "make_sb3_env"]


class SB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` around an auto-resetting :class:`WarpSimEnv` (see the module doc).

    Args:
        env: the torch env (``auto_reset`` must be on; ``validate=False`` is enough, the adapter
            checks the numpy actions itself).
        seed: seed of the first ``reset()`` (``None``: the env's generator as constructed);
            ``seed()`` overrides it.
    """

    def __init__(self, env: WarpSimEnv, seed: int | None = None) -> None:
        if not isinstance(env, WarpSimEnv):
            raise TypeError(f"SB3VecEnv wraps a WarpSimEnv, got {type(env).__name__}")
        if not env.auto_reset:
            raise ValueError("SB3VecEnv needs a WarpSimEnv with auto_reset=True (SB3 never resets single envs)")
        self.env = env
        self.task = env.task
        obs_space, act_space, self._np_dtype = _spaces(env)
        super().__init__(env.num_envs, obs_space, act_space)  # reads get_attr("render_mode")
        self._seeds[0] = seed
        self._actions: torch.Tensor | None = None
        self._o = env.obs_dim

    @property
    def torch_env(self) -> WarpSimEnv:
        """The wrapped :class:`WarpSimEnv`."""
        return self.env

    # -- the VecEnv API ---------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Reset every env (with the seed and options set since the last reset) and return the
        observations (E, obs_dim)."""
        seed = next((s for s in self._seeds if s is not None), None)
        options = self._options
        self._reset_seeds()  # seeds and options are used once (as in DummyVecEnv), even by a failing reset
        self._reset_options()
        obs, _ = self.env.reset(seed=seed, initial_state=self._initial_state(options))
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._actions = None
        return obs.detach().cpu().numpy().copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = _as_action(self.env, actions, self._np_dtype)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async() (or after reset())")
        a, self._actions = self._actions, None
        with torch.no_grad():
            obs, rew, term, trunc, info = self.env.step(a)
        o = self._o
        # one host copy per step: [obs | final obs | reward | terminated | truncated | diverged]
        dt = obs.dtype
        packed = torch.cat([obs, info["final_observation"], rew[:, None].to(dt),
                            torch.stack([term, trunc, info["diverged"]], dim=1).to(dt)], dim=1)
        host = packed.detach().cpu().numpy().copy()
        obs_np, final_np = host[:, :o], host[:, o:2 * o]
        rew_np = host[:, 2 * o].astype(np.float32)
        flags = host[:, 2 * o + 1:] != 0
        term_np, trunc_np, div_np = flags[:, 0], flags[:, 1], flags[:, 2]
        done = term_np | trunc_np
        time_limit = (trunc_np & ~term_np).tolist()
        infos = [{"diverged": d, "TimeLimit.truncated": t} for d, t in zip(div_np.tolist(), time_limit)]
        for i in np.flatnonzero(done):
            infos[i]["terminal_observation"] = final_np[i]
        return obs_np, rew_np, done, infos

    def close(self) -> None:
        self.env.close()

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """SB3's seeding (``seed + i`` for env ``i``), applied at the next ``reset()``: the batch's
        generator is seeded with ``seed`` (see the module doc)."""
        return super().seed(seed)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    # -- attributes and methods: one shared WarpSimEnv for every index ---------------------------
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """``getattr`` on the shared :class:`WarpSimEnv`, once per requested index
        (``render_mode``: ``None``)."""
        n = len(list(self._get_indices(indices)))
        if attr_name == "render_mode":
            return [None] * n
        return [getattr(self.env, attr_name)] * n

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """``setattr`` on the shared :class:`WarpSimEnv`; ``indices`` must cover every env."""
        idx = sorted({int(i) % self.num_envs for i in self._get_indices(indices)})
        if idx != list(range(self.num_envs)):
            raise ValueError(f"set_attr({attr_name!r}, indices={indices!r}): every env of the batch shares "
                             "one WarpSimEnv, so an attribute can only be set for all of them")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        """Call ``method_name`` once on the shared :class:`WarpSimEnv`; its result is returned
        for every requested index."""
        n = len(list(self._get_indices(indices)))
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result] * n

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        """``False`` for every index: the batch has no per-env gymnasium wrappers."""
        return [False] * len(list(self._get_indices(indices)))

    # -- helpers ----------------------------------------------------------------------------------
    def _initial_state(self, options: list[dict[str, Any]]):
        """Per-env ``{"initial_state": (pos, vel)}`` options, (n, dim) each -> stacked (E, n, dim)."""
        if not any(options):
            return None
        keys = {k for o in options for k in o}
        if keys - {"initial_state"}:
            raise ValueError(f"reset options: unknown key(s) {sorted(keys - {'initial_state'})} (known: ['initial_state'])")
        if not all("initial_state" in o for o in options):
            raise ValueError("reset options: 'initial_state' must be given for every env (the batch resets together)")
        pos = np.stack([np.asarray(o["initial_state"][0], dtype=np.float64) for o in options])
        vel = np.stack([np.asarray(o["initial_state"][1], dtype=np.float64) for o in options])
        return pos, vel

    def __repr__(self) -> str:
        return f"SB3VecEnv({self.task.name!r}, num_envs={self.num_envs})"


def make_sb3_env(task: Task | str, num_envs: int, device="cpu", dtype="float32", seed: int | None = None) -> SB3VecEnv:
    """An auto-resetting :class:`WarpSimEnv` (actions checked by the adapter) wrapped for SB3."""
    return SB3VecEnv(WarpSimEnv(task, num_envs, device=device, dtype=dtype, seed=seed, validate=False), seed=seed)
