"""PODS: Policy Optimization via Differentiable Simulation (Mora et al., ICML 2021), Algorithm 1.

Each epoch:

1. roll out ``pi_theta`` from ``k`` sampled initial states; the executed actions form the
   trajectory-space policy ``a_bar`` (Sec. 3.1), so ``V^{a_bar}(s_0) = V^{pi_theta}(s_0)``;
2. improve ``a_bar`` per rollout —
   * 1st order (Eq. 6): ``a_bar' = a_bar + alpha dV/da_bar``, the gradient from one adjoint pass
     (leaf actions, ``warpsim_rl.autodiff``);
   * 2nd order (Eq. 13–14): Gauss-Newton on the cost ``c = -r``:
     ``H = sum_t J_{t+1}^T C_ss J_{t+1} + C_aa`` with ``J_{t+1} = ds_{t+1}/da_bar`` built from the
     per-step Jacobians (``J_{t+1} = A_t J_t + B_t E_t``),
     ``a_bar' = a_bar + alpha (H + gn_damping I)^-1 dV/da_bar`` (a Levenberg-Marquardt damping the
     paper does not have; docs/algorithms.md says why) — batched Cholesky on the simulation's
     device, chunked over rollouts;
3. line search on ``alpha`` per rollout: all candidates are simulated at once as extra
   environments; a rollout keeps the best candidate that improves its return, or its old actions
   if none does (so the batch never gets worse); actions are clipped to the limits;
4. regress ``pi_theta`` onto the improved actions along the improved trajectories ``s(a_bar')``
   (Eq. 7) with Adam, ``regression_steps`` steps per epoch;
5. with ``policy_check``, keep the regressed policy only if its closed-loop return on the epoch's
   initial states did not drop (an addition to the paper, :meth:`PODS._check_policy`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..tasks import Task
from .base import Algorithm, TrainConfig
from .rollout import Rollouts, Trajectory

__all__ = ["PODS", "gauss_newton_direction", "value_gradient"]


def value_gradient(A: torch.Tensor, B: torch.Tensor, dr_ds: torch.Tensor, dr_da: torch.Tensor) -> torch.Tensor:
    """``dV/da_bar`` (T, E, na) by the adjoint recursion on the Markov state.

    ``A`` (T, E, ns, ns), ``B`` (T, E, ns, na): step Jacobians; ``dr_ds`` (T, E, ns): gradient of
    ``r_t`` w.r.t. ``s_{t+1}``; ``dr_da`` (T, E, na). With ``psi_{t+1} = dV/ds_{t+1}``:
    ``psi_T = dr_{T-1}/ds_T``, ``psi_{t+1} = dr_t/ds_{t+1} + A_{t+1}^T psi_{t+2}``, and
    ``dV/da_t = dr_t/da_t + B_t^T psi_{t+1}``."""
    T = A.shape[0]
    grad = torch.empty_like(dr_da)
    psi = dr_ds[T - 1]
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            psi = dr_ds[t] + torch.einsum("eji,ej->ei", A[t + 1], psi)
        grad[t] = dr_da[t] + torch.einsum("eji,ej->ei", B[t], psi)
    return grad


def gauss_newton_direction(A: torch.Tensor, B: torch.Tensor, grad: torch.Tensor, c_ss: torch.Tensor,
                           c_aa: torch.Tensor, damping: float = 1e-6) -> torch.Tensor:
    """Second-order PODS step ``(H + damping I)^-1 dV/da_bar`` (T, E, na), PODS Eq. 13–14.

    ``H = sum_{t} J_{t+1}^T diag(c_ss) J_{t+1} + diag(c_aa)`` with ``J_{t+1} = ds_{t+1}/da_bar``
    (ns x T na), ``J_1 = [B_0, 0, ...]``, ``J_{t+1} = A_t J_t + B_t E_t``; ``c_ss`` (ns,) and
    ``c_aa`` (na,) are the (constant, non-negative) Hessian diagonals of the cost ``c = -r``."""
    T, E, ns, na = B.shape
    n = T * na
    H = torch.zeros(E, n, n, dtype=B.dtype, device=B.device)
    J = torch.zeros(E, ns, n, dtype=B.dtype, device=B.device)
    for t in range(T):
        w = t * na  # J_t has non-zero columns only for steps < t
        if t > 0:
            J[:, :, :w] = torch.bmm(A[t], J[:, :, :w])
        J[:, :, w:w + na] = B[t]
        Jc = J[:, :, :w + na]
        H[:, :w + na, :w + na] += torch.bmm(Jc.transpose(1, 2) * c_ss[None, None, :], Jc)
    diag = c_aa.repeat(T) + damping
    H.diagonal(dim1=1, dim2=2).add_(diag)
    L, info = torch.linalg.cholesky_ex(H)
    rhs = grad.permute(1, 0, 2).reshape(E, n, 1)
    step = torch.cholesky_solve(rhs, L).reshape(E, T, na).permute(1, 0, 2)
    # a rollout whose H did not factor (should not happen: H is PSD + damping) takes a gradient step
    bad = info != 0
    if bool(bad.any()):
        step[:, bad] = grad[:, bad]
    return step


class PODS(Algorithm):
    """PODS first (``order=1``) or second (``order=2``) order. See the module doc."""

    #: regression learning rate, decayed linearly (tuned on pendulum2d-stop over {3e-4, 1e-3, 3e-3},
    #: docs/results.md)
    DEFAULT_LR = 1e-3

    def __init__(self, task: Task, cfg: TrainConfig, order: int):
        super().__init__(task, cfg)
        self.order = order
        self.alphas = torch.tensor([0.5 ** i for i in range(cfg.line_search)], dtype=self.dtype, device=self.device)
        K = len(self.alphas)
        self.search = Rollouts(task, cfg.num_envs * K, cfg.device, cfg.dtype)
        self.make_optimizer(self.DEFAULT_LR, "linear")

    # -- step 2: improvement direction -----------------------------------------------------------
    def _direction(self, state0) -> tuple[Trajectory, torch.Tensor]:
        task, cfg = self.task, self.cfg
        E = cfg.num_envs
        if self.order == 1:
            traj = self.rollouts.policy(self.policy, state0, task.horizon, leaf_actions=True)
            traj.returns.sum().backward()
            grad = torch.stack([a.grad for a in traj.leaves]).reshape(task.horizon, E, -1)
            # scale so that the largest change of the full step is first_order_step x the limit
            lim = self.rollouts.limit.reshape(-1)
            scale = cfg.first_order_step / (grad.abs() / lim).amax(dim=(0, 2)).clamp_min(1e-30)
            return traj, grad * scale[None, :, None]
        traj = self.rollouts.policy(self.policy, state0, task.horizon, jacobians=True)
        dr_ds, dr_da = [], []
        for t in range(task.horizon):
            d = task.reward_derivatives(traj.states[t + 1][0], traj.states[t + 1][1], traj.actions[t], layout="markov")
            dr_ds.append(d["dr_ds"])
            dr_da.append(d["dr_da"])
        c_ss = -d["d2r_ds2"]
        c_aa = -d["d2r_da2"]
        grad = value_gradient(traj.A, traj.B, torch.stack(dr_ds), torch.stack(dr_da))
        step = torch.empty_like(grad)
        for s in range(0, E, cfg.chunk):
            sl = slice(s, min(E, s + cfg.chunk))
            step[:, sl] = gauss_newton_direction(traj.A[:, sl], traj.B[:, sl], grad[:, sl], c_ss, c_aa,
                                                 cfg.gn_damping)
        traj.A = traj.B = None  # free the Jacobians
        return traj, step

    # -- step 3: line search -------------------------------------------------------------------
    @torch.no_grad()
    def _line_search(self, state0, traj: Trajectory, step: torch.Tensor):
        """Per-rollout best improving ``alpha``; returns the chosen trajectory data and stats."""
        task, E, K = self.task, self.cfg.num_envs, len(self.alphas)
        T = task.horizon
        a0 = traj.actions.detach().reshape(T, E, -1)
        cand = a0[:, None] + self.alphas[None, :, None, None] * step[:, None]  # (T, K, E, na)
        cand = cand.reshape(T, K * E, task.num_handles, task.dim)
        s0 = tuple(t.repeat(K, 1, 1) for t in state0)
        res = self.search.open_loop(s0, cand)
        ret = res.returns.reshape(K, E)
        ret = torch.where(res.failed.reshape(K, E), torch.full_like(ret, -torch.inf), ret)
        best, k_best = ret.max(dim=0)
        base = traj.returns.detach()
        improved = best > base
        idx = k_best * E + torch.arange(E, device=ret.device)
        obs = res.obs[:, idx]
        acts = res.actions[:, idx].reshape(T, E, -1)
        new_ret = torch.where(improved, best, base)
        alpha = torch.where(improved, self.alphas[k_best], torch.zeros_like(best))
        return obs, acts, improved, new_ret, alpha

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, task = self.cfg, self.task
        pos, vel = task.sample_initial_states(cfg.num_envs, self.rng)
        state0 = self.rollouts.initial_state(pos, vel)
        traj, step = self._direction(state0)
        obs, acts, improved, new_ret, alpha = self._line_search(state0, traj, step)
        ok = improved & ~traj.failed
        loss = float("nan")
        old = traj.returns.detach()
        metrics = {}
        if bool(ok.any()):
            X = obs[:, ok].reshape(-1, task.obs_dim)
            Y = acts[:, ok].reshape(-1, task.action_dim)
            if cfg.policy_check:
                saved = (copy.deepcopy(self.policy.state_dict()), copy.deepcopy(self.optimizer.state_dict()))
            self.policy.observe(X)
            loss = self.regress(X, Y)
            if cfg.policy_check:
                metrics = self._check_policy(state0, old, traj.failed, saved)
        return {
            "train/return_before": float(old.mean()),
            "train/return_after": float(new_ret.mean()),
            "train/improved_fraction": float(improved.float().mean()),
            "train/alpha_mean": float(alpha.mean()),
            "train/regression_loss": loss,
            "train/diverged": int(traj.failed.sum()),
            **metrics,
        }

    @torch.no_grad()
    def _check_policy(self, state0, old: torch.Tensor, old_failed: torch.Tensor, saved) -> dict:
        """Keep the regressed policy only if its closed-loop return on this epoch's initial states
        is at least the old policy's (envs that fail under either policy excluded); otherwise
        restore the old weights, observation statistics and optimiser state. Regression (Eq. 7)
        is not guaranteed to carry the trajectory-space improvement over to the closed loop; this
        makes the batch return of ``pi_theta`` monotone, as PODS' improvement argument intends."""
        new = self.rollouts.policy(self.policy, state0, self.task.horizon)
        both = ~(old_failed | new.failed)
        gain = float(((new.returns - old) * both).sum() / both.sum().clamp_min(1))
        accepted = gain >= 0.0 and not bool((new.failed & ~old_failed).any())
        if not accepted:
            self.policy.load_state_dict(saved[0])
            self.optimizer.load_state_dict(saved[1])
        return {"train/policy_accepted": int(accepted), "train/policy_gain": gain}

    def regress(self, X: torch.Tensor, Y: torch.Tensor) -> float:
        """Eq. 7: ``min_theta mean ||pi_theta(s_t) - a'_t||^2`` with Adam on random minibatches of
        ``regression_batch`` pairs (drawn with torch's generator, saved in checkpoints)."""
        n = X.shape[0]
        for _ in range(self.cfg.regression_steps):
            idx = torch.randint(n, (min(n, self.cfg.regression_batch),)).to(X.device)
            self.optimizer.zero_grad()
            loss = (self.policy(X[idx]) - Y[idx]).square().sum(-1).mean()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            return float((self.policy(X) - Y).square().sum(-1).mean())
