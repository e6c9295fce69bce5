"""gymnasium 1.x adapters (numpy in and out) over :class:`~warpsim_rl.envs.torch_env.WarpSimEnv`.

* :class:`WarpSimVectorEnv` — a ``gymnasium.vector.VectorEnv`` of ``num_envs`` batched envs.
  ``metadata["autoreset_mode"]`` is ``AutoresetMode.NEXT_STEP`` by default, gymnasium's own
  default and the mode its vector wrappers (e.g. ``NormalizeObservation``) require: after a step
  that returns ``terminated or truncated`` for an env, the *next* ``step`` ignores that env's action,
  resets it and returns its first observation with reward 0 and ``terminated = truncated = False``.
  ``autoreset_mode=AutoresetMode.SAME_STEP`` resets inside the step that ends the episode and
  returns the last observation in ``info["final_obs"]`` (an object array, ``None`` for the other
  envs, with the mask ``info["_final_obs"]``), like ``SyncVectorEnv`` in that mode.
  ``AutoresetMode.DISABLED`` never resets by itself: call ``reset(options={"reset_mask": mask})``.
  ``info`` has exactly the structure ``SyncVectorEnv`` builds from the single envs' infos
  (``{"diverged": bool}`` per step, ``{}`` per reset): ``info["diverged"]`` with the mask
  ``info["_diverged"]`` covers the envs whose result came from a step; an env reset in this step
  (NEXT_STEP) has no entry, and in SAME_STEP an env whose episode ended has its last step's
  ``diverged`` in ``info["final_info"]["diverged"]`` (mask ``info["final_info"]["_diverged"]``),
  with ``info["_final_info"]`` the mask of ended envs. A key no env has is absent.
* :class:`WarpSimGymEnv` — a single ``gymnasium.Env`` (one env of a batch of one), so that
  ``gymnasium.utils.env_checker.check_env`` and ``gymnasium.vector.SyncVectorEnv`` apply.

Spaces: ``single_observation_space = Box(-inf, inf, (obs_dim,))`` and
``single_action_space = Box(-limit, limit, (h*dim,))`` with the task's per-axis velocity limits,
in the env's dtype (float32 by default). Actions outside the box are clipped (documented
clipping), wrong shapes or non-finite values raise :class:`~warpsim_rl.sim.ActionError`.
Seeding follows gymnasium: ``reset(seed=s)`` seeds ``np_random``, which draws the initial states.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..sim import ActionError
from ..tasks import TASKS, Task, make_task, task_names
from .torch_env import WarpSimEnv

__all__ = ["WarpSimVectorEnv", "WarpSimGymEnv", "ActionError", "register_gymnasium_envs"]


def _spaces(env: WarpSimEnv):
    np_dtype = np.float32 if env.dtype == torch.float32 else np.float64
    lim = env.task.action_limits.reshape(-1).astype(np_dtype)
    act = spaces.Box(low=-lim, high=lim, dtype=np_dtype)
    obs = spaces.Box(low=-np.inf, high=np.inf, shape=(env.obs_dim,), dtype=np_dtype)
    return obs, act, np_dtype


def _as_action(env: WarpSimEnv, actions, np_dtype) -> torch.Tensor:
    """numpy (or array-like) actions (E, h*dim) or (E, h, dim) -> validated device tensor."""
    E, h, d = env.num_envs, env.task.num_handles, env.task.dim
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().numpy()
    try:
        arr = np.asarray(actions)
    except Exception:
        raise ActionError(f"action: expected an array of shape ({E}, {h * d}), got {type(actions).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise ActionError(f"action.dtype = {arr.dtype}: expected a real number type")
    if arr.shape not in ((E, h * d), (E, h, d)):
        raise ActionError(f"action.shape = {arr.shape}: expected ({E}, {h * d}) (envs, handles × dim) "
                          f"for task {env.task.name}")
    arr = arr.astype(np_dtype, copy=False).reshape(E, h * d)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ActionError(f"action: non-finite values (NaN/inf) in env(s) {bad[:8].tolist()}, "
                          f"e.g. action[{bad[0]}] = {arr[bad[0]].tolist()}")
    return torch.as_tensor(np.ascontiguousarray(arr), device=env.device)


def _np(t: torch.Tensor) -> np.ndarray:
    """A fresh host copy (never aliasing simulator memory or a previous result)."""
    return t.detach().cpu().numpy().copy()


def _add_step_info(infos: dict[str, Any], diverged: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Add the single envs' step info ``{"diverged": bool}`` of the envs in ``mask`` to ``infos``
    as ``SyncVectorEnv._add_info`` does: ``diverged`` (False outside the mask) and ``_diverged``
    (the mask); nothing when the mask is empty. Returns ``infos``."""
    if mask.any():
        infos["diverged"] = np.where(mask, diverged, False)
        infos["_diverged"] = mask.copy()
    return infos


def _capped_task(task: Task | str, max_episode_steps: int | None) -> Task:
    """``task`` with its horizon capped at ``max_episode_steps`` (``None``/``-1``: unchanged)."""
    task = make_task(task)
    if max_episode_steps is None or max_episode_steps == -1:
        return task
    if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) \
            or max_episode_steps < 1:
        raise ValueError(f"max_episode_steps = {max_episode_steps!r}: expected an integer >= 1, -1 or None")
    if max_episode_steps < task.horizon:
        task = make_task(task, horizon=int(max_episode_steps))
    return task


class WarpSimVectorEnv(VectorEnv):
    """gymnasium 1.x vector env over one batched :class:`WarpSimEnv` (numpy in and out).

    Args:
        task: task name or :class:`~warpsim_rl.tasks.Task`.
        num_envs: batch size.
        device, dtype: simulation device and dtype (observations/actions use the same dtype).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default), ``SAME_STEP`` or ``DISABLED``
            (or their string values).
        max_episode_steps: truncate episodes after ``min(task.horizon, max_episode_steps)``
            steps, what ``gymnasium.wrappers.TimeLimit(max_episode_steps)`` does over the single
            env; ``None`` or ``-1``: at the task's horizon. ``gymnasium.make_vec`` passes the
            registered spec's value (the registered task's horizon).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, task: Task | str, num_envs: int, device="cpu", dtype="float32",
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 max_episode_steps: int | None = None):
        mode = autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else AutoresetMode(autoreset_mode)
        self.metadata = dict(type(self).metadata, autoreset_mode=mode)
        self.autoreset_mode = mode
        task = _capped_task(task, max_episode_steps)
        self.env = WarpSimEnv(task, num_envs, device=device, dtype=dtype,
                              auto_reset=(mode == AutoresetMode.SAME_STEP), validate=False)
        self.task = self.env.task
        self.num_envs = self.env.num_envs
        self.single_observation_space, self.single_action_space, self._np_dtype = _spaces(self.env)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset_envs = np.zeros(self.num_envs, dtype=bool)
        self._has_reset = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset all envs (or those of ``options["reset_mask"]``, (E,) bool).
        ``options["initial_state"] = (positions, velocities)`` (m, n, dim) sets exact states of
        the ``m`` reset envs (e.g. slices of ``task.test_bed()``)."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"reset_mask", "initial_state"}
        if unknown:
            raise ValueError(f"reset options: unknown key(s) {sorted(unknown)} (known: ['initial_state', 'reset_mask'])")
        mask = options.get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (self.num_envs,):
                raise ValueError(f"options['reset_mask']: expected a boolean array of shape ({self.num_envs},)")
        self.env._rng = self.np_random
        obs, _ = self.env.reset(env_ids=mask, initial_state=options.get("initial_state"))
        if mask is None:
            self._autoreset_envs[:] = False
        else:
            self._autoreset_envs[mask] = False
        self._has_reset = True
        return _np(obs), {}

    def step(self, actions):
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        a = _as_action(self.env, actions, self._np_dtype)
        obs, rew, term, trunc, info = self.env.step(a)
        infos: dict[str, Any] = {}
        auto = self._autoreset_envs
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and auto.any():
            self.env._rng = self.np_random
            new_obs, _ = self.env.reset(env_ids=auto)
            at = torch.as_tensor(auto, device=self.env.device)
            obs = torch.where(at[:, None], new_obs, obs)
            rew = torch.where(at, torch.zeros_like(rew), rew)
            term = term & ~at
            trunc = trunc & ~at
        obs_np, rew_np, term_np, trunc_np, div_np = _np(obs), _np(rew), _np(term), _np(trunc), _np(info["diverged"])
        done = np.logical_or(term_np, trunc_np)
        # which envs' single-env info is a step's ({"diverged": bool}) rather than a reset's ({})
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset_envs = done
            stepped = ~auto
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            if done.any():
                final = _np(info["final_observation"])
                final_obs = np.full(self.num_envs, None, dtype=object)
                for i in np.flatnonzero(done):
                    final_obs[i] = final[i]
                infos["final_obs"] = final_obs
                infos["_final_obs"] = done.copy()
                infos["final_info"] = _add_step_info({}, div_np, done)  # the ended step's info
                infos["_final_info"] = done.copy()
            stepped = ~done
        else:
            stepped = np.ones(self.num_envs, dtype=bool)
        _add_step_info(infos, div_np, stepped)
        return obs_np, rew_np.astype(np.float64), term_np, trunc_np, infos

    def close_extras(self, **kwargs):
        self.env.close()

    def __repr__(self) -> str:
        return f"WarpSimVectorEnv({self.task.name!r}, num_envs={self.num_envs})"


class WarpSimGymEnv(gymnasium.Env):
    """A single ``gymnasium.Env`` for one task (numpy in and out; one env of a batch of one).

    For training prefer :class:`WarpSimVectorEnv` (one batched simulator); this class exists so
    that gymnasium's single-env tooling (``check_env``, ``SyncVectorEnv``, wrappers) applies.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: Task | str, device="cpu", dtype="float32", render_mode: str | None = None):
        if render_mode is not None:
            raise ValueError(f"render_mode = {render_mode!r}: WarpSimGymEnv does not render "
                             "(see warpsim_rl.viz for drawings)")
        self.render_mode = None
        self.env = WarpSimEnv(task, 1, device=device, dtype=dtype, auto_reset=False, validate=False)
        self.task = self.env.task
        self.observation_space, self.action_space, self._np_dtype = _spaces(self.env)
        self._has_reset = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """``options["initial_state"] = (positions, velocities)`` (n, dim) sets an exact state."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"initial_state"}
        if unknown:
            raise ValueError(f"reset options: unknown key(s) {sorted(unknown)} (known: ['initial_state'])")
        init = options.get("initial_state")
        if init is not None:
            init = tuple(np.asarray(a, dtype=np.float64)[None] for a in init)
        self.env._rng = self.np_random
        obs, _ = self.env.reset(initial_state=init)
        self._has_reset = True
        return _np(obs[0]), {}

    def step(self, action):
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        h, d = self.task.num_handles, self.task.dim
        arr = action.detach().cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
        if arr.shape not in ((h * d,), (h, d)):
            raise ActionError(f"action.shape = {arr.shape}: expected ({h * d},) (handles × dim) for task {self.task.name}")
        a = _as_action(self.env, arr[None], self._np_dtype)
        obs, rew, term, trunc, info = self.env.step(a)
        return (_np(obs[0]), float(rew[0]), bool(term[0]), bool(trunc[0]),
                {"diverged": bool(info["diverged"][0])})

    def close(self):
        self.env.close()


def register_gymnasium_envs(namespace: str = "warpsim_rl") -> list[str]:
    """Register every task with gymnasium as ``<namespace>/<task>-v0`` (idempotent) and return the
    ids: ``gymnasium.make(id)`` gives a :class:`WarpSimGymEnv`, ``gymnasium.make_vec(id, num_envs,
    vectorization_mode="vector_entry_point")`` a batched :class:`WarpSimVectorEnv`. Keyword
    arguments such as ``device``/``dtype`` pass through ``make``/``make_vec``.

    Each spec has ``max_episode_steps`` = the registered task's horizon, so ``make`` wraps the env
    in ``TimeLimit`` at the step where the env truncates by itself and ``env.spec.max_episode_steps``
    is the episode length. A ``task=`` argument with another horizon keeps the cap: a shorter
    horizon truncates earlier (the spec's value stays an upper bound), a longer one is cut at the
    cap (``TimeLimit``; ``WarpSimVectorEnv`` caps its horizon the same way); pass
    ``max_episode_steps=task.horizon`` as well to make it exact."""
    ids = []
    for name in task_names():
        env_id = f"{namespace}/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=f"{__name__}:WarpSimGymEnv",
                               vector_entry_point=f"{__name__}:WarpSimVectorEnv", kwargs={"task": name},
                               max_episode_steps=TASKS[name].horizon)
        ids.append(env_id)
    return ids
