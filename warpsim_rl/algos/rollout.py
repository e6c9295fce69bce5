"""Batched rollouts of a task on the simulator, shared by every algorithm.

A :class:`Rollouts` object owns one :class:`~warpsim_rl.autodiff.TorchSimulator` for ``E``
environments of a task and runs:

* :meth:`Rollouts.policy` — closed loop under a policy, optionally recording the per-step
  Jacobians ``A_t``, ``B_t`` (PODS 2nd order) or keeping the autograd graph (BPTT) or making each
  action a leaf whose gradient is ``dV/da_t`` (PODS 1st order);
* :meth:`Rollouts.open_loop` — a given action sequence (PODS line search, estimators).

Rewards follow PODS Eq. 15 as implemented by :meth:`warpsim_rl.tasks.Task.reward`:
``r_t = r(s_{t+1}, a_t)`` with the executed (clipped) action.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import warp as wp

from ..autodiff import TorchSimulator
from ..tasks import Task

__all__ = ["Trajectory", "Rollouts", "evaluate"]


@dataclasses.dataclass
class Trajectory:
    """A batch of T-step rollouts of E envs.

    Attributes:
        states: T+1 tuples ``(x, v, x_prev, v_prev)`` of (E, n, dim) tensors.
        obs: (T, E, obs_dim) observation at ``s_t`` (what the policy saw).
        actions: (T, E, h, dim) executed actions.
        rewards: (T, E) ``r_t``.
        A, B: (T, E, ns, ns) and (T, E, ns, na) Jacobians, when recorded.
        failed: (E,) bool, envs whose Newton solve failed in some step (or, with Jacobians,
            whose exact Hessian did not factor).
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


class Rollouts:
    """Rollouts of ``task`` on ``num_envs`` environments (see the module doc)."""

    def __init__(self, task: Task, num_envs: int, device="cpu", dtype="float32"):
        self.task = task
        self.model = task.scene.build(num_envs=num_envs, device=device, dtype=dtype)
        self.ts = TorchSimulator(self.model, check=False)
        self.num_envs = num_envs
        self.device = self.ts.torch_device
        self.dtype = self.ts.torch_dtype
        lim = task.action_limits
        self.limit = torch.tensor(lim, dtype=self.dtype, device=self.device)

    def initial_state(self, positions: np.ndarray, velocities: np.ndarray):
        """Device state tuple from host initial states (E, n, dim)."""
        return self.ts.initial_state(positions, velocities)

    def _finish(self, states, obs, actions, rewards, A=None, B=None, singular=None, leaves=None) -> Trajectory:
        failed = wp.to_torch(self.ts.sim.first_failure_step) >= 0
        if singular is not None:
            failed = failed | singular
        self.ts.sim.clear_failures()
        return Trajectory(states, torch.stack(obs), torch.stack(actions), torch.stack(rewards), failed.clone(), A, B,
                          leaves)

    def policy(self, policy, state0, horizon: int, *, jacobians: bool = False, graph: bool = False,
               leaf_actions: bool = False) -> Trajectory:
        """Closed-loop rollout of ``policy`` (obs (E, obs_dim) -> action (E, h*dim)).

        ``jacobians``: also record ``A_t``, ``B_t`` (no autograd). ``graph``: keep the autograd
        graph through simulator and policy (BPTT). ``leaf_actions``: each action is detached into
        a leaf requiring grad, so ``V.backward()`` leaves ``dV/da_t`` in ``actions.grad`` —
        trajectory-space gradients (PODS Eq. 5) from one adjoint pass.
        """
        task, ts = self.task, self.ts
        m = self.model
        state = tuple(state0)
        states, obs_l, acts, rews, As, Bs = [state], [], [], [], [], []
        singular = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device) if jacobians else None
        shape = (self.num_envs, m.num_handles, m.dim)
        track = graph or leaf_actions
        with torch.set_grad_enabled(track):
            for _ in range(horizon):
                obs = task.observation(state[0], state[1])
                a = torch.clamp(policy(obs if graph else obs.detach()).reshape(shape), -self.limit, self.limit)
                if leaf_actions:
                    a = a.detach().requires_grad_(True)
                elif not graph:
                    a = a.detach()
                if jacobians:
                    state, A, B = ts.jacobians(*state, a, validate=False)
                    singular |= wp.to_torch(ts.diff.ok) == 0
                    As.append(A)
                    Bs.append(B)
                else:
                    state = ts.step(*state, a, validate=False)
                rews.append(task.reward(state[0], state[1], a))
                states.append(state)
                obs_l.append(obs)
                acts.append(a)
        return self._finish(states, obs_l, acts, rews, torch.stack(As) if jacobians else None,
                            torch.stack(Bs) if jacobians else None, singular, acts if leaf_actions else None)

    @torch.no_grad()
    def open_loop(self, state0, actions: torch.Tensor) -> Trajectory:
        """Replay ``actions`` (T, E, h, dim) (clipped to the limits) from ``state0``."""
        task, ts = self.task, self.ts
        state = tuple(state0)
        states, obs_l, acts, rews = [state], [], [], []
        for t in range(actions.shape[0]):
            obs_l.append(task.observation(state[0], state[1]))
            a = torch.clamp(actions[t], -self.limit, self.limit)
            state = ts.step(*state, a, validate=False)
            rews.append(task.reward(state[0], state[1], a))
            states.append(state)
            acts.append(a)
        return self._finish(states, obs_l, acts, rews)


@torch.no_grad()
def evaluate(task: Task, policy, rollouts: Rollouts | None = None, device="cpu", dtype="float32") -> dict:
    """Evaluate ``policy`` on the task's fixed test bed (PODS Figs. 8–10 metrics).

    Returns mean and std over the test bed of: ``reward`` (episode return), ``terminal_kinetic_energy``
    (J, payload at the last step), ``distance_to_target`` (m, mean over payload particles at the
    last step), ``action_magnitude`` (m/s, mean over steps of the action norm); ``diverged`` counts
    environments whose implicit solve failed. Also returns the trajectory (``"trajectory"``)."""
    pos, vel = task.test_bed()
    if rollouts is None or rollouts.num_envs != pos.shape[0]:
        rollouts = Rollouts(task, pos.shape[0], device, dtype)
    traj = rollouts.policy(policy, rollouts.initial_state(pos, vel), task.horizon)
    x, v = traj.states[-1][0], traj.states[-1][1]
    c = task.constants(x.device, x.dtype)
    mass = torch.as_tensor(task.scene.masses[task.payload], dtype=x.dtype, device=x.device)
    vp = v.index_select(1, c["payload"])
    ke = 0.5 * (mass[None, :] * vp.square().sum(-1)).sum(-1)
    dist = (x.index_select(1, c["payload"]) - c["target"]).norm(dim=-1).mean(-1)
    act = traj.actions.flatten(2).norm(dim=-1).mean(0)
    out = {"diverged": int(traj.failed.sum())}
    for name, val in (("reward", traj.returns), ("terminal_kinetic_energy", ke), ("distance_to_target", dist),
                      ("action_magnitude", act)):
        out[name] = float(val.mean())
        out[name + "_std"] = float(val.std())
    out["trajectory"] = traj
    return out
