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
     paper does not have; docs/algorithms.md says why) — solved without forming ``H`` by the
     Riccati recursion of the equivalent linear-quadratic problem (or ``gn_solver="dense"``:
     batched Cholesky of ``H``), on the simulation's device, chunked over rollouts;
3. line search on ``alpha`` per rollout: all candidates are simulated at once as extra
   environments; a rollout keeps the best candidate that improves its return, or its old actions
   if none does (so the batch never gets worse); actions are clipped to the limits;
4. regress ``pi_theta`` onto the improved actions along the improved trajectories ``s(a_bar')``
   (Eq. 7) with Adam, ``regression_steps`` steps per epoch;
5. with ``policy_check``, keep the regressed policy only if its closed-loop return on the epoch's
   initial states did not drop, backtracking on the regression step if it did (an addition to the
   paper, :meth:`PODS._check_policy`).

Steps 2–3 are :class:`~warpsim_rl.algos.trajectory.TrajectoryOptimizer`, usable on its own as a
trajectory optimiser.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import ClassVar

import torch

from .. import distributed
from ..tasks import Task
from .base import Algorithm
from .config import AlgoConfig, RunConfig, check_bool, check_choice, check_int
from .trajectory import TrajectoryOptimizer, TrajectoryStepConfig

__all__ = ["PODS", "PODSConfig"]


@dataclasses.dataclass
class PODSConfig(TrajectoryStepConfig, AlgoConfig):
    """PODS options (trajectory-space step, regression, policy check)."""

    #: the Gauss-Newton solve before ``gn_solver`` (414f2ea) was the dense one; the policy check kept
    #: or reverted before ``check_backtracks`` (96d9211) and had no fallback before ``check_fallback``
    #: (8321d4a)
    LEGACY: ClassVar[dict] = {"gn_solver": "dense", "check_backtracks": 0, "check_fallback": "none"}

    lr: float = 1e-3
    """regression learning rate (tuned on pendulum2d-stop over {3e-4, 1e-3, 3e-3}, docs/results.md)"""
    lr_schedule: str = "linear"
    """decayed linearly to 0 over the epochs"""
    regression_steps: int = 50
    """Adam steps on Eq. 7 per epoch"""
    regression_batch: int = 4096
    """minibatch of (state, action) pairs per Adam step"""
    policy_check: bool = True
    """keep a regressed policy only if its batch return did not drop"""
    check_backtracks: int = 2
    """with policy_check: halvings of the regression's parameter step tried when the full step lowers
    the batch return, before the fallback and the old policy (0: the full step, then the fallback)"""

    check_fallback: str = "gradient"
    """with policy_check, when every regression step size lowers the batch return: 'gradient' tries
    a step along the closed-loop gradient of the batch return (one BPTT pass) whose first-order
    gain is the trajectory-space step's, with the same halvings, before the old policy is kept; 'none':
    keep the old policy, as before 2026-12-02 (docs/algorithms.md: the default since it unfroze
    pendulum3d-stop seed 0: -20.99 -> -10.51 in 25 epochs)"""

    def __post_init__(self):
        AlgoConfig.__post_init__(self)
        TrajectoryStepConfig.__post_init__(self)
        check_int("regression_steps", self.regression_steps, 1)
        check_int("regression_batch", self.regression_batch, 1)
        check_bool("policy_check", self.policy_check)
        check_int("check_backtracks", self.check_backtracks, 0)
        check_choice("check_fallback", self.check_fallback, ("gradient", "none"))


class PODS(Algorithm):
    """PODS first (``order=1``) or second (``order=2``) order. See the module doc."""

    Config = PODSConfig
    DISTRIBUTED = True

    def __init__(self, task: Task, run: RunConfig, cfg: PODSConfig):
        super().__init__(task, run, cfg)
        step_fields = {f.name for f in dataclasses.fields(TrajectoryStepConfig)}
        self.trajectory = TrajectoryOptimizer(
            self.core, TrajectoryStepConfig(**{k: getattr(cfg, k) for k in step_fields}))
        self.optimizer = self.register_optimizer("policy", self.policy.parameters())

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, task = self.cfg, self.task
        state0 = self.initial_state()
        traj = self.core.rollout(self.policy, state0, task.horizon, jacobians=self.trajectory.records_jacobians,
                                 leaf_actions=cfg.order == 1)
        res = self.trajectory.line_search(state0, traj, self.trajectory.direction(traj))
        ok = res.improved & ~traj.failed
        loss = float("nan")
        old = res.returns_before
        metrics = {}
        if int(distributed.global_count(ok)) > 0:  # under torchrun: on any rank (every rank regresses)
            X = res.obs[:, ok].reshape(-1, task.obs_dim)
            Y = res.actions[:, ok].reshape(-1, task.action_dim)
            if cfg.policy_check:
                saved = (copy.deepcopy(self.policy.state_dict()), copy.deepcopy(self.optimizer.state_dict()))
            self.policy.observe(X)
            loss = self.regress(X, Y)
            if cfg.policy_check:
                target = self.global_value(self.global_mean(res.returns_after - old, ~traj.failed))
                metrics = self._check_policy(state0, old, traj.failed, saved, target)
        ran = ~traj.failed
        everywhere = torch.ones_like(ran)
        return {
            "train/return_before": self.global_value(self.global_mean(old, ran)),
            "train/return_after": self.global_value(self.global_mean(res.returns_after, ran)),
            "train/improved_fraction": self.global_value(self.global_mean(res.improved.float(), everywhere)),
            "train/alpha_mean": self.global_value(self.global_mean(res.alpha, everywhere)),
            "train/regression_loss": loss,
            "train/diverged": int(distributed.global_count(traj.failed)),
            **metrics,
        }

    @torch.no_grad()
    def _check_policy(self, state0, old: torch.Tensor, old_failed: torch.Tensor, saved,
                      target: float = 0.0) -> dict:
        """Keep the regressed policy only if its closed-loop return on this epoch's initial states
        is at least the old policy's (envs that fail under either policy excluded, and no env may
        fail that did not). If the full regression step fails the test, try the parameters
        ``theta_old + beta (theta_new - theta_old)`` for ``beta = 1/2, 1/4, ...``
        (``check_backtracks`` halvings, each one closed-loop rollout, the new observation
        statistics kept) and keep the first that passes. If none does and ``check_fallback`` is
        ``"gradient"``, try ``theta_old + beta (target / |g|^2) g``: ``g`` the analytic gradient of
        the batch's closed-loop return through policy and simulator (one BPTT pass from the same
        states), scaled so that its first-order gain is ``target``, the mean gain the
        trajectory-space step found on the batch (the improvement the regression was to carry
        over), the same ``beta``, with the new observation statistics kept (as in the halvings: ``g``
        is taken at the old weights with the new statistics); if that fails too, restore the old
        weights, observation statistics and optimiser state. Whenever the regression's own steps
        are all rejected, the optimiser's state is the one from before the regression, also when
        the fallback's step is kept. Regression (Eq. 7) is not guaranteed to carry the
        trajectory-space improvement over to the closed loop; this makes the batch return of ``pi_theta`` monotone, as PODS'
        improvement argument intends, without freezing a policy whose regressions keep lowering
        it (docs/algorithms.md)."""
        params = dict(self.policy.named_parameters())
        new_params = {k: v.clone() for k, v in params.items()}
        old_params = {k: saved[0][k] for k in params}
        betas = [0.5 ** i for i in range(self.cfg.check_backtracks + 1)]
        gain = float("nan")
        for beta in betas:
            for k, p in params.items():
                p.copy_(torch.lerp(old_params[k], new_params[k], beta))
            gain, passed = self._closed_loop_gain(state0, old, old_failed)
            if passed:
                return {"train/policy_accepted": 1, "train/policy_gain": gain, "train/policy_step": beta,
                        "train/policy_fallback": 0.0}
        fallback = 0.0
        self.optimizer.load_state_dict(saved[1])  # the regression's steps were rejected
        if self.cfg.check_fallback == "gradient" and target > 0.0:
            for k, p in params.items():
                p.copy_(old_params[k])
            grad = self._closed_loop_gradient(state0)
            norm2 = float(sum(g.square().sum() for g in grad.values()))
            if math.isfinite(norm2) and norm2 > 0.0:  # else no usable direction: revert
                for beta in betas:
                    for k, p in params.items():
                        p.copy_(old_params[k] + (beta * target / norm2) * grad[k])
                    gain, passed = self._closed_loop_gain(state0, old, old_failed)
                    if passed:
                        fallback = beta
                        break
        if not fallback:
            self.policy.load_state_dict(saved[0])
        return {"train/policy_accepted": int(fallback > 0), "train/policy_gain": gain, "train/policy_step": 0.0,
                "train/policy_fallback": fallback}

    def _closed_loop_gain(self, state0, old: torch.Tensor, old_failed: torch.Tensor) -> tuple[float, bool]:
        """The current policy's closed-loop batch return from ``state0`` minus ``old`` (over the
        envs that fail under neither), and whether it passes the check (no loss, no new failure)."""
        new = self.core.rollout(self.policy, state0, self.task.horizon)
        both = ~(old_failed | new.failed)
        if distributed.is_distributed():  # the global batch's gain and failures: one decision everywhere
            gain = self.global_value(self.global_mean(new.returns - old, both))
            newly_failed = int(distributed.global_count(new.failed & ~old_failed))
        else:
            gain = float(torch.where(both, new.returns - old, 0.0).sum() / both.sum().clamp_min(1))  # NaN-safe
            newly_failed = int((new.failed & ~old_failed).sum())
        return gain, gain >= 0.0 and newly_failed == 0

    def _closed_loop_gradient(self, state0) -> dict:
        """``d mean V / d theta`` of the policy's closed-loop rollout from ``state0`` (the envs that
        did not fail), through the simulator's implicit adjoints, as BPTT takes it; under torchrun
        the global batch's (summed shares)."""
        with torch.enable_grad():
            traj = self.core.rollout(self.policy, state0, self.task.horizon, graph=True)
            self.optimizer.zero_grad()
            self.global_mean(traj.returns, ~traj.failed).backward()
            self.all_reduce_gradients()
        grad = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for k, p in self.policy.named_parameters()}
        self.optimizer.zero_grad()
        return grad

    def regress(self, X: torch.Tensor, Y: torch.Tensor) -> float:
        """Eq. 7: ``min_theta mean ||pi_theta(s_t) - a'_t||^2`` with Adam on random minibatches of
        ``regression_batch`` pairs (drawn with torch's generator, saved in checkpoints). ``X``,
        ``Y``: the ``(T * n, dim)`` pairs of ``n`` rollouts, time-major.

        Under torchrun the pairs of every rank form one global set (time-major over the ranks'
        rollouts in rank order, as in one process): every rank draws the same global minibatch,
        takes the loss of the pairs it holds divided by the minibatch size, and the summed
        gradients are the single-process gradient."""
        T = self.task.horizon
        draw = distributed.GlobalRows(X.shape[0] // T, T) if distributed.is_distributed() else None
        n = X.shape[0] if draw is None else draw.total
        for _ in range(self.cfg.regression_steps):
            idx = torch.randint(n, (min(n, self.cfg.regression_batch),)).to(X.device)
            self.optimizer.zero_grad()
            if draw is None:
                loss = (self.policy(X[idx]) - Y[idx]).square().sum(-1).mean()
            else:
                mine = draw.local(idx)
                loss = (self.policy(X[mine]) - Y[mine]).square().sum() / idx.numel()
            loss.backward()
            self.all_reduce_gradients()
            self.optimizer.step()
        with torch.no_grad():
            err = (self.policy(X) - Y).square().sum(-1)
            if draw is None:
                return float(err.mean())
            return self.global_value(err.sum() / max(draw.total, 1))

