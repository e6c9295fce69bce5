"""SHAC: Short-Horizon Actor-Critic (Xu et al., *Accelerated Policy Learning with Parallel
Differentiable Simulation*, ICLR 2022), on the step core.

An epoch is one pass over the task's horizon ``H`` from ``E = num_envs`` initial states, cut into
windows of ``h = horizon_window`` steps (the last one shorter when ``h`` does not divide ``H``).
In each window:

1. **Roll out** the stochastic actor ``a = limit tanh(u)``, ``u ~ N(mu_theta(o), sigma^2)``
   (reparameterised) keeping the autograd graph through the policy and the simulator (implicit
   adjoints); the state entering the window is cut from the previous window's graph.
2. **Actor step** (Xu et al. Eq. 5): minimise
   ``L = -(1 / (h N)) sum_i [sum_{t<h} gamma^t r_t + gamma^h V_target(s_h)]`` over the ``N`` envs
   that did not fail (:func:`window_objective`), with the gradient norm clipped; a non-finite
   gradient raises :class:`FloatingPointError` naming the window and the epoch.
3. **Critic** (Eq. 6-7): TD(lambda) targets over the window from the target critic
   (:func:`~warpsim_rl.algos.returns.td_lambda_targets`, the window's end bootstrapped with
   ``V_target(s_h)``), fitted by ``critic_iterations`` passes of ``minibatches`` shuffled
   minibatches of the window's ``h N`` states (mean squared error, clipped gradient norm).
4. **Target critic**: ``theta' <- (1 - target_tau) theta' + target_tau theta``.
5. **Observation statistics**: the window's observations of the envs that did not fail (after
   the update, like BPTT: the graph was built with the old statistics).

The test bed evaluates ``self.policy``, the deterministic actor: the stochastic actor shares its
``net`` and ``normalizer`` modules, so its mean *is* ``self.policy`` at all times. The critic
takes the observations normalised by the actor's statistics.

``python -m warpsim_rl.bench windows`` (:func:`warpsim_rl.bench.windows.window_epoch_cost`)
times an epoch against the forward simulation of the same steps.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from .. import distributed
from ..tasks import Task
from .base import Algorithm
from .config import AlgoConfig, RunConfig, check_int, check_positive, check_range, check_unit, check_widths
from .models import SquashedGaussianActor, ValueCritic, soft_update
from .returns import td_lambda_targets

__all__ = ["SHAC", "SHACConfig", "Window", "window_objective"]


@dataclasses.dataclass
class SHACConfig(AlgoConfig):
    """SHAC options. Defaults follow Xu et al. 2022 and their reference implementation
    (NVlabs/DiffRL, ``algorithms/shac.py`` and its task configs; ``docs/algorithms.md``)."""

    lr: float = 5e-3
    """actor Adam learning rate (DiffRL's configs: 2e-3 for most tasks; tuned on pendulum2d-stop
    over {2e-3, 5e-3, 1e-2}, docs/algorithms.md)"""
    lr_schedule: str = "linear"
    """actor and critic learning rates decay linearly to 0 over the epochs (as in DiffRL; better
    than constant on pendulum2d-stop)"""
    critic_lr: float = 2e-3
    """critic Adam learning rate (DiffRL's reference value; the best of {5e-4, 2e-3, 5e-3} on
    pendulum2d-stop)"""
    betas: tuple[float, float] = (0.7, 0.95)
    """Adam betas of actor and critic (DiffRL's configs)"""
    horizon_window: int = 32
    """h: steps per differentiable window (Xu et al.: 32); the last window of an epoch may be shorter"""
    gamma: float = 0.99
    """discount of the window objective and of the critic targets"""
    lam: float = 0.95
    """TD(lambda) trace decay of the critic targets"""
    critic_iterations: int = 16
    """passes over the window's states per critic fit"""
    minibatches: int = 4
    """shuffled minibatches per critic pass"""
    target_tau: float = 0.8
    """target-critic update theta' <- (1 - tau) theta' + tau theta once per window (DiffRL's
    target_critic_alpha = 0.2 is the weight of the old target: tau = 1 - 0.2)"""
    max_grad_norm: float = 1.0
    """gradient-norm clip of actor and critic"""
    init_log_std: float = -2.0
    """initial log standard deviation of the actor's pre-tanh Gaussian, trained by the actor loss
    (DiffRL: -1; -2 converged faster on pendulum2d-stop, whose actions are scaled by 2 m/s limits)"""
    critic_hidden: tuple[int, ...] = (64, 64)
    """critic MLP hidden widths (ELU; DiffRL: 64 x 64)"""

    def __post_init__(self):
        super().__post_init__()
        check_positive("critic_lr", self.critic_lr)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0
                        for b in self.betas)):
            raise ValueError(f"betas = {self.betas!r}: expected two numbers in [0, 1)")
        check_int("horizon_window", self.horizon_window, 1)
        check_unit("gamma", self.gamma, low_open=True)
        check_unit("lam", self.lam)
        check_int("critic_iterations", self.critic_iterations, 1)
        check_int("minibatches", self.minibatches, 1)
        check_unit("target_tau", self.target_tau, low_open=True)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_range("init_log_std", self.init_log_std, -5.0, 2.0)
        self.critic_hidden = check_widths("critic_hidden", self.critic_hidden)


def window_objective(rewards: torch.Tensor, last_value: torch.Tensor, gamma: float,
                     dones: torch.Tensor | None = None, truncated: torch.Tensor | None = None,
                     bootstrap: torch.Tensor | None = None) -> torch.Tensor:
    """(E,) SHAC's short-horizon objective of a window of T steps (Xu et al. Eq. 5, the bracket):
    ``sum_{t<T} gamma^t r_t + gamma^T V(s_T)``, the discount restarting after a reset inside the
    window (every episode segment counts from its own start, as DiffRL's ``rew_acc`` / ``gamma``
    reset). A segment ending at step ``t``

    * in a terminal state (``dones[t]``) adds no bootstrap;
    * at the time limit (``truncated[t]``) adds ``gamma^(len) bootstrap[t]``, the value of the
      pre-reset next state (``values[t + 1]`` would belong to the next episode);
    * at the window's end adds ``gamma^(len) last_value``.

    Args:
        rewards: (T, E) ``r_t``, differentiable.
        last_value: (E,) ``V(s_T)`` of the state after the window.
        gamma: discount in (0, 1].
        dones, truncated: (T, E) bool or ``None`` (no resets); terminal wins over truncated.
        bootstrap: (T, E) pre-reset values, read where ``truncated``.
    """
    if truncated is not None and bootstrap is None:
        raise ValueError("window_objective: truncated needs bootstrap, the values of the pre-reset states")
    never = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    dones = never if dones is None else dones
    truncated = never if truncated is None else truncated & ~dones
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    total, disc = torch.zeros_like(last_value), torch.ones_like(last_value)
    for t in range(rewards.shape[0]):
        total = total + disc * rewards[t]
        disc = disc * gamma
        if bootstrap is not None:
            total = total + torch.where(truncated[t], disc * bootstrap[t], zero)
        disc = torch.where(dones[t] | truncated[t], torch.ones_like(disc), disc)
    return total + disc * last_value


@dataclasses.dataclass
class Window:
    """One differentiable window of T steps of E envs.

    Attributes:
        obs: (T + 1, E, obs_dim) raw observations ``o(s_0) .. o(s_T)`` (with the graph).
        actions: (T, E, action_dim) sampled actions (with the graph).
        rewards: (T, E) ``r_t`` (with the graph).
        state: the state ``s_T`` after the window (with the graph).
        bootstrap: (E,) the value at ``s_T`` in the objective (with the graph).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    state: tuple
    bootstrap: torch.Tensor


class SHAC(Algorithm):
    """Short-horizon actor-critic (see the module doc)."""

    Config = SHACConfig
    DISTRIBUTED = True

    def __init__(self, task: Task, run: RunConfig, cfg: SHACConfig):
        super().__init__(task, run, cfg)
        self.actor = self.register_module("actor", self._make_stochastic_actor())
        self.optimizer = self.register_optimizer("actor", self.actor.parameters(), betas=cfg.betas)
        self.critic = self.register_module("critic", self.make_critic())
        self.target_critic = self.register_module("target_critic", copy.deepcopy(self.critic))
        self.target_critic.requires_grad_(False)
        self.critic_optimizer = self.register_optimizer("critic", self.critic.parameters(), lr=cfg.critic_lr,
                                                        betas=cfg.betas)
        self._epoch = 0

    def _make_stochastic_actor(self) -> SquashedGaussianActor:
        """The Gaussian actor around ``self.policy``: it holds the policy's ``net`` and
        ``normalizer`` (the same modules, not copies), so its mean is ``self.policy(obs)``."""
        cfg = self.cfg
        actor = SquashedGaussianActor(self.task.obs_dim, self.task.action_dim, self.core.limit, cfg.hidden,
                                      normalize=cfg.normalize_obs, init_log_std=cfg.init_log_std)
        actor.net, actor.normalizer = self.policy.net, self.policy.normalizer
        return actor.to(device=self.device, dtype=self.dtype)

    def make_critic(self) -> torch.nn.Module:
        """``V(normalised obs)`` (ELU MLP of ``critic_hidden``)."""
        return ValueCritic(self.task.obs_dim, self.cfg.critic_hidden).to(device=self.device, dtype=self.dtype)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations standardised by the actor's running statistics (the critics' input)."""
        return self.policy.normalizer(obs)

    # -- the epoch -------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, progress: float | None = None) -> None:
        """The base's learning-rate schedules; remembers ``epoch`` for error messages."""
        super().begin_epoch(epoch, progress)
        self._epoch = epoch

    def windows(self) -> list[tuple[int, int]]:
        """``[(t0, t1), ...]``: the epoch's windows, ``horizon_window`` steps each (the last shorter)."""
        H, h = self.task.horizon, self.cfg.horizon_window
        return [(t0, min(t0 + h, H)) for t0 in range(0, H, h)]

    def train_epoch(self) -> dict:
        state = self.initial_state()
        E = self.core.num_envs
        failed = torch.zeros(E, dtype=torch.bool, device=self.device)
        returns = torch.zeros(E, dtype=self.dtype, device=self.device)
        logs: list[dict] = []
        windows = self.windows()
        for w, (t0, t1) in enumerate(windows):
            win, failed = self.rollout_window(state, t1 - t0, failed)
            ok = ~failed
            where = f"window {w + 1}/{len(windows)} (steps {t0}..{t1 - 1}) of epoch {self._epoch + 1}"
            logs.append(self.actor_step(win, ok, where))
            logs[-1].update(self.critic_step(win, ok))
            self.policy.observe(win.obs[:-1].detach()[:, ok])
            returns += win.rewards.detach().sum(0)
            state = self.core.cut(win.state)
        ok = ~failed
        out = {"train/return_before": self.global_value(self.global_mean(returns, ok)),
               "train/diverged": int(distributed.global_count(failed)),
               "train/log_std": float(self.actor.log_std.detach().mean())}
        for key in logs[0]:
            out[key] = sum(log[key] for log in logs) / len(logs)
        return out

    # -- one window ------------------------------------------------------------------------------
    def rollout_window(self, state, steps: int, failed: torch.Tensor) -> tuple[Window, torch.Tensor]:
        """``steps`` steps of the stochastic actor from ``state`` with the autograd graph; returns
        the window and ``failed`` updated with the envs whose solve failed in it."""
        obs, actions, rewards = [], [], []
        with torch.enable_grad():
            for t in range(steps):
                o = self.core.observe(state)
                a, _ = self.actor(o, eps=self.action_noise(o))
                tr = self.transition(t, state, o, a)
                state = tr.state
                obs.append(o)
                actions.append(a)
                rewards.append(tr.reward)
            o = self.core.observe(state)
            obs.append(o)
            win = Window(torch.stack(obs), torch.stack(actions), torch.stack(rewards), state, self.bootstrap(o))
        return win, failed | self.core.failures()

    def action_noise(self, obs: torch.Tensor) -> torch.Tensor:
        """(E, action_dim) the actor's standard normal draw for one step: this rank's block of a
        draw for all ``num_envs`` envs (:func:`~warpsim_rl.distributed.randn_rows`; in one
        process what the actor would draw itself)."""
        return distributed.randn_rows(self.run.num_envs, self.env_slice, (self.task.action_dim,), obs.dtype,
                                      obs.device)

    def transition(self, t: int, state, obs: torch.Tensor, action: torch.Tensor):
        """Step ``t`` of a window: the step core's differentiable step."""
        return self.core.step(state, action)

    def bootstrap(self, obs: torch.Tensor) -> torch.Tensor:
        """(E,) ``V_target(s_h)``: the value closing a window, differentiable in the state."""
        return self.target_critic(self.normalize(obs))

    def actor_loss(self, win: Window, ok: torch.Tensor) -> torch.Tensor:
        """``-(1 / (h N)) sum_{ok} window_objective`` (Xu et al. Eq. 5; under torchrun this rank's
        share, ``N`` the envs that did not fail on every rank)."""
        steps = win.rewards.shape[0]
        return -self.global_mean(window_objective(win.rewards, win.bootstrap, self.cfg.gamma), ok) / steps

    def actor_step(self, win: Window, ok: torch.Tensor, where: str) -> dict:
        """One clipped Adam step of the actor on :meth:`actor_loss`; raises on a non-finite
        gradient (naming ``where``)."""
        loss = self.actor_loss(win, ok)
        self.optimizer.zero_grad()
        loss.backward()
        self.all_reduce_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.max_grad_norm)
        if not math.isfinite(float(norm)):
            raise FloatingPointError(
                f"{type(self).__name__}: the actor gradient of {where} is not finite (norm {float(norm)}): "
                f"the simulator's adjoint or the loss overflowed; try float64, a smaller horizon_window "
                f"(now {self.cfg.horizon_window}) or lr (now {self.cfg.lr})")
        self.optimizer.step()
        return {"train/actor_loss": self.global_value(loss), "train/grad_norm": float(norm)}

    # -- the critic ------------------------------------------------------------------------------
    @torch.no_grad()
    def critic_data(self, win: Window, ok: torch.Tensor) -> tuple[tuple, torch.Tensor]:
        """The critic's inputs and TD(lambda) targets (Xu et al. Eq. 6-7) of the window's states of
        the envs that did not fail: ``((nobs,), targets)``, flattened over steps and envs."""
        nobs = self.normalize(win.obs.detach())
        values = self.target_critic(nobs)
        targets = self.lambda_targets(win, values)
        return (nobs[:-1][:, ok].flatten(0, 1),), targets[:, ok].flatten(0, 1)

    def lambda_targets(self, win: Window, values: torch.Tensor) -> torch.Tensor:
        """TD(lambda) targets of the window (no resets inside a window: episodes start at window
        boundaries; the window's end bootstraps with ``values[h]``)."""
        rewards = win.rewards.detach()
        dones = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
        return td_lambda_targets(rewards, values, dones, self.cfg.gamma, self.cfg.lam)

    def critic_loss(self, inputs: tuple, targets: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Mean squared error of ``V`` on a minibatch (under torchrun: this rank's rows of a global
        minibatch of ``size`` rows, their squared errors summed over ``size``)."""
        err = (self.critic(*inputs) - targets).square()
        return err.mean() if size is None else err.sum() / size

    def critic_step(self, win: Window, ok: torch.Tensor) -> dict:
        """Fit the critic (``critic_iterations`` x ``minibatches`` clipped Adam steps on shuffled
        minibatches, torch's global generator) and soft-update the target. Under torchrun the
        minibatches are drawn over the rows of every rank (:class:`~warpsim_rl.distributed.GlobalRows`),
        as one process would draw them."""
        inputs, targets = self.critic_data(win, ok)
        cfg = self.cfg
        rows = distributed.GlobalRows(int(ok.sum()), win.rewards.shape[0]) if distributed.is_distributed() else None
        n = targets.shape[0] if rows is None else rows.total
        losses = []
        if n:
            for _ in range(cfg.critic_iterations):
                losses = []
                for idx in torch.randperm(n, device=targets.device).chunk(cfg.minibatches):
                    size = None if rows is None else idx.numel()
                    mine = idx if rows is None else rows.local(idx)
                    loss = self.critic_loss(tuple(x[mine] for x in inputs), targets[mine], size)
                    self.critic_optimizer.zero_grad()
                    loss.backward()
                    self.all_reduce_gradients()
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                    self.critic_optimizer.step()
                    losses.append(loss.detach())
        soft_update(self.target_critic, self.critic, cfg.target_tau)
        if not n:
            return {"train/critic_loss": float("nan"), "train/value_target": float("nan")}
        if rows is None:
            return {"train/critic_loss": float(torch.stack(losses).mean()), "train/value_target": float(targets.mean())}
        shares = distributed.all_reduce(torch.stack([*losses, targets.sum() / n]), "sum")
        return {"train/critic_loss": float(shares[:-1].mean()), "train/value_target": float(shares[-1])}
