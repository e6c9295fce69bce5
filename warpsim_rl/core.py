"""The step core: the one place where a task advances.

Everything that moves a task forward — the torch environment and its gymnasium / skrl adapters,
the algorithms' closed- and open-loop rollouts (with or without gradients, with or without
per-step Jacobians), the differentiable rollout and the gradient-estimator study — steps a
:class:`StepCore`. It owns

* the batched :class:`~warpsim_rl.model.Model` built by :func:`task_model`, with the *task's*
  action limits written into ``model.velocity_limit`` (the kernel clips to those, so the reward's
  executed action and the simulated handle motion always agree);
* the :class:`~warpsim_rl.autodiff.TorchSimulator` (and through it the
  :class:`~warpsim_rl.sim.Simulator` and :class:`~warpsim_rl.autodiff.Differentiator`);
* the clip, the observation, the reward (PODS Eq. 15: ``r_t = r(s_{t+1}, a_t)`` with the executed
  action) and its analytic derivatives, the per-env failure record;
* the task's :class:`~warpsim_rl.layout.StateLayout` (full, Markov and observation vectors and
  the maps between them).

State tuples are ``(x, v, x_prev, v_prev)`` torch tensors (E, n, dim) on the model's device.
:meth:`StepCore.step` is differentiable with ``torch.autograd`` (exact implicit adjoints) whenever
its inputs require grad; :meth:`StepCore.cut` detaches a state at a window boundary (SHAC/AGPO);
:meth:`StepCore.reset_where` restarts masked envs from fresh initial states outside the autograd
graph, keeping the pre-reset observation for bootstrapping. The buffered path
(:meth:`StepCore.advance`) steps two double-buffered Warp :class:`~warpsim_rl.model.State`
objects through the simulator's recorded launches (no allocation per step) — the torch
environment's path; both paths run the same kernel on the same model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import warp as wp

from .autodiff import TorchSimulator, recomputed
from .model import Control, Model, State
from .tasks import Task

__all__ = ["task_model", "StepCore", "StepCounter", "Transition", "Trajectory"]


class StepCounter:
    """Environment steps simulated for training: one per env per step of a
    :class:`StepCore` (the line-search candidates and policy checks of an algorithm included,
    the recomputation of a checkpointed backward pass not). A host integer (no device sync),
    shared by a core and its :meth:`StepCore.sibling` cores; saved in checkpoints through
    ``state_dict`` / ``load_state_dict``."""

    def __init__(self):
        self.env_steps = 0

    def add(self, steps: int) -> None:
        self.env_steps += int(steps)

    def state_dict(self) -> dict:
        return {"env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        self.env_steps = int(state["env_steps"])


def task_model(task: Task, num_envs: int, device="cpu", dtype="float32", threads: int | None = None) -> Model:
    """The batched model of ``task``'s scene with the task's action limits as the kernel's
    handle-velocity limits (m/s); ``threads``: CPU launch threads (``Model.threads``)."""
    model = task.scene.build(num_envs=num_envs, device=device, dtype=dtype, threads=threads)
    lim = task.action_limits
    if not np.array_equal(lim, model.scene.velocity_limit.reshape(lim.shape)):
        model.velocity_limit.assign(wp.array(lim.astype(model.np_dtype), dtype=model.vec, device=model.device))
    return model


@dataclasses.dataclass
class Transition:
    """One step of a batch of envs.

    Attributes:
        state: the next state ``(x, v, x_prev, v_prev)``, each (E, n, dim).
        action: (E, h, dim) executed (clipped) action.
        reward: (E,) ``r(s_{t+1}, a_t)`` (PODS Eq. 15).
        A, B: (E, ns, ns), (E, ns, na) step Jacobians on the Markov state, when requested.
        singular: (E,) bool, envs whose exact Hessian did not factor (Jacobians only).
    """

    state: tuple
    action: torch.Tensor
    reward: torch.Tensor
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    singular: torch.Tensor | None = None


@dataclasses.dataclass
class Trajectory:
    """A batch of T-step rollouts of E envs.

    Attributes:
        states: T+1 tuples ``(x, v, x_prev, v_prev)`` of (E, n, dim) tensors.
        obs: (T, E, obs_dim) observation at ``s_t`` (what the policy saw).
        actions: (T, E, h, dim) executed actions.
        rewards: (T, E) ``r_t``.
        failed: (E,) bool, envs whose Newton solve failed in some step (or, with Jacobians,
            whose exact Hessian did not factor).
        A, B: (T, E, ns, ns) and (T, E, ns, na) Jacobians, when recorded.
        leaves: the T action leaves when rolled out with ``leaf_actions=True``.
    """

    states: list
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    failed: torch.Tensor
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    leaves: list | None = None

    @property
    def returns(self) -> torch.Tensor:
        """(E,) undiscounted return ``V = sum_t r_t``."""
        return self.rewards.sum(dim=0)


class StepCore:
    """``task`` on ``num_envs`` environments: model, simulator, clip, observation, reward.

    Args:
        task: the :class:`~warpsim_rl.tasks.Task`.
        num_envs: ``E``.
        device: Warp/torch device name. dtype: ``"float32"`` or ``"float64"``.
        threads: CPU threads launching the kernels on shards of the envs (default: the
            available cores; ``warpsim_rl/shards.py``); results do not depend on it.
        counter: the :class:`StepCounter` to add this core's env steps to (default: a new one).

    Attributes:
        task, model, tsim (:class:`~warpsim_rl.autodiff.TorchSimulator`), sim
        (:class:`~warpsim_rl.sim.Simulator`), layout (:class:`~warpsim_rl.layout.StateLayout`), num_envs, device
        (torch), dtype (torch), limit ((h, dim) action limits, m/s), counter (:class:`StepCounter`).
    """

    def __init__(self, task: Task, num_envs: int, device="cpu", dtype="float32", threads: int | None = None,
                 counter: StepCounter | None = None):
        self.task = task
        self.counter = StepCounter() if counter is None else counter
        self.model = task_model(task, num_envs, device, dtype, threads)
        self.tsim = TorchSimulator(self.model, check=False, zero_failed_grads=True)
        self.sim = self.tsim.sim
        self._first_failure_view = wp.to_torch(self.sim.first_failure_step)  # live (E,) view
        self.num_envs = int(num_envs)
        self.device = self.tsim.torch_device
        self.dtype = self.tsim.torch_dtype
        self.limit = task.constants(self.device, self.dtype)["limit"]
        self.layout = task.layout
        self.action_shape = (self.num_envs, task.num_handles, task.dim)
        self._fresh: State | None = None  # scratch state of reset_where

    def sibling(self, num_envs: int) -> "StepCore":
        """Another core of the same task, device, precision and threads for ``num_envs`` envs
        (e.g. the line-search candidates), counting its steps into this core's counter."""
        dtype = "float32" if self.dtype == torch.float32 else "float64"
        return StepCore(self.task, num_envs, str(self.model.device), dtype, self.model.threads, counter=self.counter)

    # -- pieces ------------------------------------------------------------------------------------
    def initial_state(self, positions=None, velocities=None) -> tuple:
        """Fresh state tensors from host initial states (E, n, dim) (default: the scene's), with
        the BDF2 start-up history (:meth:`warpsim_rl.model.State.reset`)."""
        return self.tsim.initial_state(positions, velocities)

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """The executed action (E, h, dim): ``action`` (E, h*dim) or (E, h, dim) clipped per axis
        to the task's limits (``torch.clamp``: zero gradient outside, like the kernel's clip)."""
        return torch.clamp(action.reshape(self.action_shape), -self.limit, self.limit)

    def observe(self, state) -> torch.Tensor:
        """Observation (E, obs_dim) of a state tuple."""
        return self.task.observation(state[0], state[1])

    def reward(self, next_state, executed: torch.Tensor) -> torch.Tensor:
        """(E,) PODS Eq. 15 reward of the state after the step and the executed action."""
        return self.task.reward(next_state[0], next_state[1], executed)

    def reward_derivatives(self, next_state, executed: torch.Tensor, layout: str = "markov") -> dict:
        """:meth:`warpsim_rl.tasks.Task.reward_derivatives` on the state after the step."""
        return self.task.reward_derivatives(next_state[0], next_state[1], executed, layout=layout)

    def failures(self, clear: bool = True) -> torch.Tensor:
        """(E,) bool: envs whose Newton solve failed since the last clear (a copy)."""
        failed = self._first_failure_view >= 0
        if clear:
            self.sim.clear_failures()
        return failed

    @staticmethod
    def cut(state) -> tuple:
        """The state detached from the autograd graph (a gradient cut at a window boundary)."""
        return tuple(t.detach() for t in state)

    def write_initial(self, state: State, mask: np.ndarray, positions: np.ndarray, velocities: np.ndarray) -> None:
        """Restart the envs of the bool ``mask`` (E,) of a Warp ``state`` in place from host initial
        states (m, n, dim), ``m = mask.sum()``, with their BDF2 start-up history
        (:meth:`warpsim_rl.model.State.reset`, one launch); the other envs are untouched."""
        if not mask.any():
            return
        if mask.all():
            state.reset(positions, velocities)
            return
        sc = self.task.scene
        shape = (self.num_envs, sc.num_particles, sc.dim)
        full_p = np.broadcast_to(sc.positions, shape).copy()
        full_v = np.zeros(shape)
        full_p[mask], full_v[mask] = positions, velocities
        state.reset(full_p, full_v, env_mask=mask)

    def reset_where(self, state, mask: torch.Tensor, positions: np.ndarray, velocities: np.ndarray):
        """Restart the envs of ``mask`` (E,) bool from host initial states ``(positions,
        velocities)`` (m, n, dim), ``m = mask.sum()``, outside the autograd graph; the other envs
        keep ``state`` (and its graph). Returns ``(new_state, pre_reset_observation)``."""
        obs = self.observe(state)
        host_mask = mask.detach().cpu().numpy().astype(bool)
        if not host_mask.any():
            return tuple(state), obs
        if self._fresh is None:
            self._fresh = self.model.state()
        self.write_initial(self._fresh, host_mask, positions, velocities)
        m = mask.reshape(-1, 1, 1)
        new = tuple(torch.where(m, wp.to_torch(f), s) for f, s in zip(self._fresh.arrays(), state))
        return new, obs

    # -- one step ----------------------------------------------------------------------------------
    def step(self, state, action: torch.Tensor, *, jacobians: bool = False) -> Transition:
        """Clip ``action``, advance every env by ``dt`` and compute the reward.

        Differentiable through the implicit adjoints when inputs require grad (and grad mode is
        on). ``jacobians=True`` also returns ``A``, ``B`` (no autograd) and the envs whose exact
        Hessian did not factor. An env whose Newton solve fails keeps its last valid state, has a
        zero gradient row and is recorded (:meth:`failures`): callers leave it out of their
        statistics and losses with the trajectory's ``failed`` mask."""
        self.counter.add(self.num_envs)
        return self._step_executed(state, self.clip(action), jacobians)

    def retake(self, state, executed: torch.Tensor) -> Transition:
        """A recorded step taken again with its Jacobians: from ``state`` with the ``executed``
        (already clipped) action, as :meth:`step` with ``jacobians=True`` but not counted as env
        steps (nothing new is simulated: each env's step depends on its own inputs only, so the
        result is the recorded one, bit for bit)."""
        return self._step_executed(state, executed, True)

    def _step_executed(self, state, a: torch.Tensor, jacobians: bool) -> Transition:
        if jacobians:
            nxt, A, B = self.tsim.jacobians(*state, a, validate=False)
            singular = self.tsim.hessian_ok_view == 0
            nxt = self._freeze_failed(state, nxt)
            return Transition(nxt, a, self.reward(nxt, a), A, B, singular)
        nxt = self._freeze_failed(state, self.tsim.step(*state, a, validate=False))
        return Transition(nxt, a, self.reward(nxt, a))

    def _freeze_failed(self, state, nxt):
        """Envs whose Newton solve failed in this step keep their last valid state (as the torch
        environment rolls them back), so no NaN reaches a reward, an observation or a policy; the
        failure stays recorded (:meth:`failures`) and their gradient rows are zero. A device-side
        select, no host sync."""
        failed = (self.tsim.status_view != 0)[:, None, None]
        return tuple(torch.where(failed, s, n) for s, n in zip(state, nxt))

    def advance(self, state_in: State, control: Control, state_out: State) -> None:
        """Buffered step of Warp states (recorded launch, no allocation, no host sync): the
        caller has written the *executed* (clipped) action into ``control``."""
        self.counter.add(self.num_envs)
        self.sim.step(state_in, control, state_out, check=False)

    # -- rollouts ----------------------------------------------------------------------------------
    def rollout(self, policy, state0, horizon: int, *, jacobians: bool = False, graph: bool = False,
                leaf_actions: bool = False) -> Trajectory:
        """Closed-loop rollout of ``policy`` (obs (E, obs_dim) -> action (E, h*dim)).

        ``jacobians``: also record ``A_t``, ``B_t`` (no autograd). ``graph``: keep the autograd
        graph through simulator and policy (BPTT). ``leaf_actions``: each executed action is
        detached into a leaf requiring grad, so ``V.backward()`` leaves ``dV/da_t`` in the leaves'
        ``grad`` — trajectory-space gradients (PODS Eq. 5) from one adjoint pass."""
        leaves = [] if leaf_actions else None

        def act(t, obs):
            a = self.clip(policy(obs if graph else obs.detach()))
            if leaf_actions:
                a = a.detach().requires_grad_(True)
                leaves.append(a)
            elif not graph:
                a = a.detach()
            return a

        with torch.set_grad_enabled(graph or leaf_actions):
            traj = self._loop(state0, horizon, act, jacobians)
        traj.leaves = leaves
        return traj

    def open_loop(self, state0, actions: torch.Tensor, *, jacobians: bool = False,
                  checkpoint_every: int | None = None) -> Trajectory:
        """Replay ``actions`` (T, E, h, dim) or (T, E, h*dim) (clipped) from ``state0``; the
        autograd graph is kept when ``actions`` or the state require grad.

        ``checkpoint_every=K`` recomputes segments of ``K`` steps in the backward pass
        (:func:`~warpsim_rl.autodiff.recomputed`): memory O(T/K + K) states instead of O(T);
        the trajectory's ``states`` then holds only the segment boundaries (steps 0, K, 2K, ...,
        T), while ``obs``, ``actions`` and ``rewards`` still have every step."""
        if checkpoint_every:
            if jacobians:
                raise ValueError("open_loop: checkpoint_every and jacobians do not combine")
            return self._open_loop_checkpointed(state0, actions, int(checkpoint_every))
        rows = actions.unbind(0)  # one graph node for all steps (linear cost in T; TorchSimulator.rollout)
        return self._loop(state0, len(rows), lambda t, obs: self.clip(rows[t]), jacobians)

    def _loop(self, state0, steps: int, act, jacobians: bool) -> Trajectory:
        """``steps`` steps from ``state0`` with the executed action ``act(t, obs_t)``."""
        state = tuple(state0)
        states, obs_l, acts, rews, As, Bs = [state], [], [], [], [], []
        singular = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device) if jacobians else None
        for t in range(steps):
            obs = self.observe(state)
            self.counter.add(self.num_envs)
            tr = self._step_executed(state, act(t, obs), jacobians)
            if jacobians:
                singular |= tr.singular
                As.append(tr.A)
                Bs.append(tr.B)
            state = tr.state
            states.append(state)
            obs_l.append(obs)
            acts.append(tr.action)
            rews.append(tr.reward)
        return self._trajectory(states, obs_l, acts, rews, singular, As, Bs)

    def _open_loop_checkpointed(self, state0, actions, every: int) -> Trajectory:
        """:meth:`open_loop` in segments of ``every`` steps, each one recomputed graph node
        (:func:`~warpsim_rl.autodiff.recomputed`: memory O(T / every + every) states)."""
        rows = actions.unbind(0)  # one graph node for all steps (linear cost in T; TorchSimulator.rollout)

        def segment(*tensors):  # the state (x, v, x_prev, v_prev), then the segment's actions
            s, obs, acts, rews = tensors[:4], [], [], []
            for action in tensors[4:]:
                obs.append(self.observe(s))
                tr = self._step_executed(s, self.clip(action), False)
                s = tr.state
                acts.append(tr.action)
                rews.append(tr.reward)
            return (*s, torch.stack(obs), torch.stack(acts), torch.stack(rews))

        states, obs_l, acts, rews = [tuple(state0)], [], [], []
        T, t = len(rows), 0
        while t < T:
            t1 = min(T, t + every)
            self.counter.add((t1 - t) * self.num_envs)  # the forward pass; the backward's recomputation is not counted
            *s, o, a, r = recomputed(segment, *states[-1], *rows[t:t1])
            states.append(tuple(s))
            obs_l += o.unbind(0)
            acts += a.unbind(0)
            rews += r.unbind(0)
            t = t1
        return self._trajectory(states, obs_l, acts, rews, None, [], [])

    def _trajectory(self, states, obs, acts, rews, singular, As, Bs) -> Trajectory:
        failed = self.failures()
        if singular is not None:
            failed = failed | singular
        T = len(acts)
        empty = torch.zeros(0, self.num_envs, dtype=self.dtype, device=self.device)
        return Trajectory(states,
                          torch.stack(obs) if T else empty.reshape(0, self.num_envs, 0),
                          torch.stack(acts) if T else empty.reshape(0, *self.action_shape),
                          torch.stack(rews) if T else empty,
                          failed,
                          torch.stack(As) if As else None,
                          torch.stack(Bs) if Bs else None)
