"""Batched torch environment over the Warp simulator: ``reset`` / ``step`` on device tensors.

:class:`WarpSimEnv` runs ``num_envs`` copies of one :class:`~warpsim_rl.tasks.Task` in one
:class:`~warpsim_rl.sim.Simulator`. All per-step data stays on the model's device: the simulator
state lives in two double-buffered :class:`~warpsim_rl.model.State` objects that are read and
written through zero-copy torch views (``wp.to_torch``), and actions are copied into the view of
one :class:`~warpsim_rl.model.Control` (the simulator replays its recorded launches, which are
keyed by array identity, so no Warp array is ever created per step).

Observation (E, obs_dim), see :attr:`Task.observation_layout`::

    [ handle positions - home   (h*dim) | payload positions - target (k*dim) | payload velocities (k*dim) ]

Action (E, h*dim) or (E, h, dim): commanded handle velocities in m/s, handle-major. They are
clipped per axis to ``task.action_limits`` before the step (the simulator kernel clamps to the
same limits); the reward's action term uses the clipped action, which is what the system executed.

Episodes: ``truncated`` after ``task.horizon`` steps; ``terminated`` when the implicit solve of
an env fails (Newton status != 0: not converged, non-finite or not positive definite) — such an
env's state is rolled back to its last valid state, its reward and final observation are computed
on that state, so observations and rewards are never NaN. With ``auto_reset=True`` (default) done
envs are reset inside :meth:`step` (same-step autoreset, as in Isaac Lab / skrl): the returned
observation is the new episode's first one and ``info["final_observation"]`` holds the last
observation of the finished episode (``info["done"]`` is the mask; in steps where no env was
reset it is the returned observation tensor itself, not a copy).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import warp as wp

from ..scene import SceneError
from ..core import StepCore
from ..sim import ActionError, SimulationError
from ..tasks import Task, make_task

__all__ = ["WarpSimEnv", "ActionError"]


class WarpSimEnv:
    """Batched, auto-resetting torch environment for one task.

    Args:
        task: a :class:`~warpsim_rl.tasks.Task` or a registered task name.
        num_envs: number of environments ``E``.
        device: Warp/torch device name (``"cpu"``, ``"cuda:0"``).
        dtype: ``"float32"`` (default) or ``"float64"``: simulation and tensor dtype.
        seed: seed of the environment's generator of initial states (``reset(seed=...)`` reseeds).
        auto_reset: reset done envs inside :meth:`step` (see the module doc).
        validate: check every action's shape, dtype, device and finiteness (the finiteness test is
            one device sync per step; ``validate=False`` skips all checks).
        threads: CPU threads launching the simulator kernels on shards of the envs (default:
            the available cores; results do not depend on it).
        core: step an existing :class:`~warpsim_rl.core.StepCore` of this task and ``num_envs``
            instead of building one (an algorithm's core: its env steps are counted there);
            ``device``, ``dtype`` and ``threads`` are then the core's.

    Attributes:
        task, model, sim: the task, the batched :class:`~warpsim_rl.model.Model`, the
            :class:`~warpsim_rl.sim.Simulator`.
        num_envs, obs_dim, action_dim, horizon: sizes.
        device: torch device; dtype: torch dtype.
        episode_step: (E,) int64 steps taken in the current episode.
    """

    def __init__(self, task: Task | str, num_envs: int, device="cpu", dtype="float32", seed=None,
                 auto_reset: bool = True, validate: bool = True, threads: int | None = None,
                 core: StepCore | None = None):
        self.task = make_task(task)
        if core is None:
            core = StepCore(self.task, num_envs, device, dtype, threads)
        elif core.task is not self.task or core.num_envs != num_envs:
            raise ValueError(f"core: a StepCore of {core.task.name!r} with {core.num_envs} envs cannot serve "
                             f"task {self.task.name!r} with num_envs = {num_envs}")
        self.core = core
        m = self.model = self.core.model
        self.sim = self.core.sim
        self.num_envs = m.num_envs
        self.obs_dim = self.task.obs_dim
        self.action_dim = self.task.action_dim
        self.horizon = self.task.horizon
        self.auto_reset = bool(auto_reset)
        self.validate = bool(validate)
        self.device = self.core.device
        self.dtype = self.core.dtype
        self._states = [m.state(), m.state()]
        self._views = [tuple(wp.to_torch(a) for a in s.arrays()) for s in self._states]
        self._cur = 0
        self.control = m.control()
        self._action_view = wp.to_torch(self.control.action)  # (E, max(h,1), dim)
        self._rng = np.random.default_rng(seed)
        self.episode_step = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._has_reset = False
        self.closed = False
        self._wp_stream = None  # (torch cuda_stream handle, warp Stream) on CUDA devices

    def _stream(self):
        """On CUDA, run Warp work on torch's current stream (torch writes the actions and reads
        the results, so both must be ordered on one stream); a no-op on the CPU."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        handle = torch.cuda.current_stream(self.device).cuda_stream
        if self._wp_stream is None or self._wp_stream[0] != handle:
            self._wp_stream = (handle, wp.stream_from_torch(self.device))
        return wp.ScopedStream(self._wp_stream[1])

    # -- state access ------------------------------------------------------------------------------
    @property
    def state(self):
        """The current :class:`~warpsim_rl.model.State` (its arrays change every step)."""
        return self._states[self._cur]

    def state_tensors(self):
        """Zero-copy torch views ``(x, v, x_prev, v_prev)``, each (E, n, dim), of the current
        state. They alias simulator memory: clone them to keep values across steps."""
        return self._views[self._cur]

    def flat_state(self, layout: str = "full") -> torch.Tensor:
        """The current state as one vector per env, a copy: ``"full"`` ``[x, v, x_prev, v_prev]``
        (E, 4*n*dim) or ``"markov"`` (:class:`~warpsim_rl.core.StateLayout`)."""
        return self.core.layout.flatten(self.state_tensors(), layout)

    def observation(self) -> torch.Tensor:
        """Observation (E, obs_dim) of the current state (a new tensor)."""
        return self.core.observe(self.state_tensors())

    # -- reset ---------------------------------------------------------------------------------------
    def reset(self, seed=None, env_ids=None, initial_state=None):
        """Start new episodes; returns ``(observation (E, obs_dim), info)``.

        Args:
            seed: reseed the initial-state generator first (deterministic resets).
            env_ids: which envs to reset: ``None`` (all), a boolean mask (E,) or indices
                (torch or numpy); the others keep their state.
            initial_state: ``(positions, velocities)`` host arrays (m, n, dim) for the ``m``
                reset envs (e.g. a slice of ``task.test_bed()``) instead of sampled ones.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        mask = self._mask(env_ids)
        count = int(mask.sum())
        if initial_state is None:
            pos, vel = self.task.sample_initial_states(count, self._rng)
        else:
            pos, vel = (np.asarray(a, dtype=np.float64) for a in initial_state)
            shape = (count, self.task.num_particles, self.task.dim)
            if pos.shape != shape or vel.shape != shape:
                raise ValueError(f"initial_state: expected positions and velocities of shape {shape} "
                                 f"(reset envs, particles, dim), got {pos.shape} and {vel.shape}")
        with self._stream():
            self._write_states(mask, pos, vel)
            self.sim.clear_failures()
        self.episode_step[torch.as_tensor(mask, device=self.device)] = 0
        self._has_reset = True
        return self.observation(), {"env_ids": torch.as_tensor(np.flatnonzero(mask), device=self.device)}

    def _mask(self, env_ids) -> np.ndarray:
        E = self.num_envs
        if env_ids is None:
            return np.ones(E, dtype=bool)
        ids = env_ids.detach().cpu().numpy() if isinstance(env_ids, torch.Tensor) else np.asarray(env_ids)
        if ids.dtype == bool:
            if ids.shape != (E,):
                raise ValueError(f"env_ids: boolean mask of shape {ids.shape}, expected ({E},)")
            return ids.copy()
        ids = ids.astype(np.int64).ravel()
        if ids.size and (ids.min() < -E or ids.max() >= E):
            raise ValueError(f"env_ids: indices must lie in [0, {E}), got {ids.tolist()[:8]}")
        mask = np.zeros(E, dtype=bool)
        mask[ids] = True
        return mask

    def _write_states(self, mask: np.ndarray, pos: np.ndarray, vel: np.ndarray) -> None:
        """Reset the envs of ``mask`` to ``pos``/``vel`` (count, n, dim) with their BDF2 start-up
        history (:meth:`warpsim_rl.core.StepCore.write_initial`)."""
        try:
            self.core.write_initial(self.state, mask, pos, vel)
        except SceneError as e:
            raise ValueError(f"initial_state: {e}") from None

    # -- step ----------------------------------------------------------------------------------------
    def check_action(self, action) -> torch.Tensor:
        """Validate ``action`` and return it as (E, h, dim); raises :class:`ActionError`."""
        E, h, d = self.num_envs, self.task.num_handles, self.task.dim
        if not isinstance(action, torch.Tensor):
            raise ActionError(f"action: expected a torch.Tensor (E, {h * d}) on {self.device}, "
                              f"got {type(action).__name__}")
        if action.device != self.device:
            raise ActionError(f"action.device = {action.device}: expected {self.device}")
        if action.dtype != self.dtype:
            raise ActionError(f"action.dtype = {action.dtype}: expected {self.dtype}")
        if tuple(action.shape) not in ((E, h * d), (E, h, d)):
            raise ActionError(f"action.shape = {tuple(action.shape)}: expected ({E}, {h * d}) or ({E}, {h}, {d}) "
                              f"(envs, handles × dim) for task {self.task.name}")
        shaped = action.reshape(E, h, d)
        if self.validate:
            finite = torch.isfinite(shaped).reshape(E, -1).all(dim=1)
            if not bool(finite.all()):
                bad = torch.nonzero(~finite).flatten().tolist()
                raise ActionError(f"action: non-finite values (NaN/inf) in env(s) {bad[:8]}"
                                  f"{' ...' if len(bad) > 8 else ''}, e.g. action[{bad[0]}] = "
                                  f"{action[bad[0]].tolist()}")
        return shaped

    def step(self, action):
        """Advance every env by one step of ``task.dt``.

        Returns ``(observation (E, obs_dim), reward (E,), terminated (E,) bool, truncated (E,)
        bool, info)``; ``info`` holds ``"diverged"`` (E,) bool, ``"done"`` (E,) bool,
        ``"episode_step"`` (E,) (steps of the finished or running episode), ``"action"`` (the
        executed, clipped action (E, h*dim)) and, with ``auto_reset``, ``"final_observation"``.
        """
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        if self.closed:
            raise RuntimeError("the environment is closed")
        if self.validate:
            shaped = self.check_action(action)
        else:
            shaped = action.reshape(self.num_envs, self.task.num_handles, self.task.dim)
        a = self.core.clip(shaped)
        h = self.task.num_handles
        if h:
            self._action_view[:, :h].copy_(a)
        nxt = 1 - self._cur
        with self._stream():
            self.core.advance(self._states[self._cur], self.control, self._states[nxt])
        self._cur = nxt
        diverged = self.core.tsim.status_view != 0
        any_div = bool(diverged.any())
        if any_div:
            self._roll_back(diverged)
        state = self.state_tensors()
        obs = self.core.observe(state)
        rew = self.task.reward_from_observation(obs, a)  # = core.reward(state, a), from the parts already gathered
        a_flat = a.reshape(self.num_envs, -1)
        self.episode_step += 1
        terminated = diverged
        truncated = (self.episode_step >= self.horizon) & ~diverged
        done = terminated | truncated
        info = {"diverged": diverged, "done": done, "episode_step": self.episode_step.clone(), "action": a_flat}
        if self.auto_reset:
            info["final_observation"] = obs
            if any_div or bool(truncated.any()):
                obs, _ = self.reset(env_ids=done.cpu().numpy())
        return obs, rew, terminated, truncated, info

    def _roll_back(self, diverged: torch.Tensor) -> None:
        """Restore the last valid state of the envs that diverged (previous buffer)."""
        old = self._views[1 - self._cur]
        for dst, src in zip(self._views[self._cur], old):
            dst[diverged] = src[diverged]

    # -- differentiable rollouts -----------------------------------------------------------------
    def rollout_differentiable(self, actions_or_policy, initial_state=None, steps: int | None = None,
                               checkpoint_every: int | None = None) -> dict:
        """A differentiable rollout (torch autograd through exact implicit adjoints,
        :class:`warpsim_rl.autodiff.TorchSimulator`), independent of the env's own state.

        Args:
            actions_or_policy: either actions (T, E, h*dim) or (T, E, h, dim) on the env's
                device/dtype (typically ``requires_grad=True``; the open-loop "trajectory-space
                policy" of PODS), or a callable ``policy(observation (E, obs_dim)) -> action
                (E, h*dim)`` (closed loop, e.g. a network: gradients reach its parameters).
            initial_state: ``None`` (the env's current state), ``(positions, velocities)`` host
                arrays (E, n, dim) (e.g. ``task.test_bed()`` slices), or torch tensors
                ``(x, v, x_prev, v_prev)`` (E, n, dim) (may require grad).
            steps: rollout length for a policy (default ``task.horizon``); for actions it is T.
            checkpoint_every: recompute segments of this many steps in the backward pass
                (``torch.utils.checkpoint``) to save memory on long horizons; only for actions.

        Returns ``{"states": [(x, v, x_prev, v_prev)] * (T+1), "observations": (T+1, E,
        obs_dim), "actions": (T, E, h*dim) executed (clipped), "rewards": (T, E)}``, all connected
        to the autograd graph. ``rewards[t]`` is :meth:`Task.reward` of ``states[t+1]`` and
        ``actions[t]``. Actions are clipped with ``torch.clamp`` (zero gradient outside the
        limits, like the simulator's own clip). There is no auto-reset: a step whose Newton solve
        fails raises :class:`~warpsim_rl.sim.SimulationError`.
        """
        core = self.core
        E, h, d, n = self.num_envs, self.task.num_handles, self.task.dim, self.task.num_particles
        if initial_state is None:
            state = tuple(t.clone() for t in self.state_tensors())
        elif len(initial_state) == 2:
            pos, vel = (np.asarray(a, dtype=np.float64) for a in initial_state)
            if pos.shape != (E, n, d) or vel.shape != (E, n, d):
                raise ValueError(f"initial_state: expected positions and velocities of shape {(E, n, d)}, "
                                 f"got {pos.shape} and {vel.shape}")
            state = core.initial_state(pos, vel)
        elif len(initial_state) == 4:
            state = tuple(initial_state)
            for name, t in zip(("x", "v", "x_prev", "v_prev"), state):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != (E, n, d) or t.dtype != self.dtype \
                        or t.device != self.device:
                    raise ValueError(f"initial_state.{name}: expected a {self.dtype} tensor of shape {(E, n, d)} "
                                     f"on {self.device}")
        else:
            raise ValueError("initial_state: expected None, (positions, velocities) or (x, v, x_prev, v_prev)")
        policy = actions_or_policy if callable(actions_or_policy) and not isinstance(actions_or_policy, torch.Tensor) \
            else None
        core.failures()  # forget failures recorded by earlier work on this simulator
        if policy is None:
            acts = actions_or_policy
            if not isinstance(acts, torch.Tensor) or acts.dim() < 3 or tuple(acts.shape[1:]) not in ((E, h * d), (E, h, d)):
                raise ActionError(f"actions: expected a tensor (T, {E}, {h * d}) or a policy callable, got "
                                  f"{tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__}")
            if acts.dtype != self.dtype or acts.device != self.device:
                raise ActionError(f"actions: dtype/device {acts.dtype}/{acts.device}, expected {self.dtype}/{self.device}")
            if not bool(torch.isfinite(acts).all()):
                raise ActionError("actions: non-finite values (NaN/inf)")
            traj = core.open_loop(state, acts.reshape(acts.shape[0], E, h, d), checkpoint_every=checkpoint_every)
        else:
            checked = (lambda obs: self.check_action(policy(obs))) if self.validate else policy
            traj = core.rollout(checked, state, self.horizon if steps is None else int(steps), graph=True)
        if bool(traj.failed.any()):
            bad = torch.nonzero(traj.failed).flatten().tolist()
            raise SimulationError(bad, [-1] * len(bad), ["Newton solve failed during the rollout"] * len(bad))
        T = traj.actions.shape[0]
        obs = torch.cat([traj.obs, core.observe(traj.states[-1])[None]])
        return {"states": traj.states, "observations": obs, "actions": traj.actions.reshape(T, E, h * d),
                "rewards": traj.rewards}

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return (f"WarpSimEnv({self.task.name!r}, num_envs={self.num_envs}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).replace('torch.', '')!r})")
