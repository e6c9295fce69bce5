"""AGPO: adaptive-gradient policy optimisation (after Gao et al., ICML 2024), on SHAC's windows.

Only the abstract of the paper is available (``shared/papers/agpo_icml2024_abstract.yaml``): a
learned ``Q`` serves as a Bellman-consistent surrogate of the future return, and the variance of
the batched analytic gradients decides when to use ``Q``'s gradient instead of the gradient
through a rough simulation transition. The rule here is our design in that spirit
(``docs/algorithms.md``):

* **Critic**: twin ``Q_k(o, a)`` (:class:`~warpsim_rl.algos.models.TwinQCritic`) on the
  normalised observation and the executed action, fitted like SHAC's critic to the window's
  TD(lambda) targets ``G_t`` (the lambda-return after taking ``a_t``), whose values are
  ``min_k Q'_k(s_t, a_t)`` of the target twins; soft-updated targets.
* **Objective**: SHAC's window objective ``J = sum_t gamma^t r_t + gamma^h Q'(s_h, a_h)``
  (``a_h`` drawn from the actor, so ``Q'`` closes the window instead of ``V``).
* **Switch**, per step ``t`` and per group of ``group_size`` consecutive envs, decided during
  the backward pass (so from the last step to the first, each decision seeing the cuts already
  made after it). Two estimates of the action gradient of the return-to-go
  ``nabla_a Q^pi(s_t, a_t)`` are available per env ``i``:

  - the analytic one ``g^A_ti = (1 / gamma^t) dJ_i / da_t`` (through the simulator's adjoints,
    the later rewards, the later actions and the window's closing value);
  - the Q path ``g^Q_ti = nabla_a min_k Q'_k(s_t, a)`` at the executed action.

  Over the group's ``n`` envs that did not fail, let ``S^2_X(t, g) = 1/(n - 1) sum_i
  |g^X_ti - mean_g g^X_t|^2`` (the trace of the sample covariance) and ``D^2(t, g) = 1/n sum_i
  |nabla_a Q'_1 - nabla_a Q'_2|^2`` (the twins' disagreement: with independent head errors of
  variance sigma^2 each, ``E D^2 = 2 sigma^2``). The analytic estimate is unbiased and its error
  is its spread ``S^2_A``; the Q path's error is its spread plus the model's,
  ``V_Q = S^2_Q + D^2 / 2``. The analytic path of the group is **cut** at step ``t`` when
  ``S^2_A > switch_ratio * V_Q``: for those envs the gradient of the future part of ``J`` with
  respect to ``(s_t, a_t)`` is replaced by that of ``gamma^t Q'(s_t, a_t)`` (Bellman:
  ``Q(s_t, a_t) = E[r_t + gamma V(s_{t+1})]``), and nothing flows back through the transition
  ``t``. ``switch_ratio = 10``: the learned ``Q`` is a smooth fit whose gradient varies less
  across a group than the true one, so on smooth dynamics ``S^2_A`` exceeds ``V_Q`` in about
  30 % of the decisions but exceeds ``10 V_Q`` in 1-2 % (pendulum2d-stop); a stiff contact
  inside the window makes the analytic estimate of the envs that touch it explode, and the
  group is cut there (measured in ``tests/test_agpo.py``, numbers in ``docs/algorithms.md``).
* During the first ``switch_warmup`` epochs nothing is cut (an untrained ``Q``'s gradient
  carries no information); the variances are measured and logged all the same.

Logged: ``train/cut_fraction`` (the fraction of the measured (step, group) decisions where the
rule cuts; applied only after the warm-up), ``train/log10_ratio`` (median over them of
``log10(S^2_A / V_Q)``), ``train/switch_on``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..tasks import Task
from .config import RunConfig, check_int, check_positive
from .models import TwinQCritic
from .shac import SHAC, SHACConfig, Window

__all__ = ["AGPO", "AGPOConfig", "group_variance", "group_mean_square"]


@dataclasses.dataclass
class AGPOConfig(SHACConfig):
    """AGPO options: SHAC's, plus the switch between the analytic and the Q path."""

    switch_ratio: float = 10.0
    """cut a group's analytic path at a step where its analytic-gradient variance exceeds this
    multiple of the Q path's (docs/algorithms.md: why 10)"""
    group_size: int = 8
    """envs per variance group (consecutive envs; the last group may be smaller)"""
    switch_warmup: int = 3
    """epochs during which the switch only measures (the Q critic learns first)"""

    def __post_init__(self):
        super().__post_init__()
        check_positive("switch_ratio", self.switch_ratio)
        check_int("group_size", self.group_size, 2)
        check_int("switch_warmup", self.switch_warmup, 0)


def _group_sums(values: torch.Tensor, size: int) -> torch.Tensor:
    """Sums of ``values`` (E, ...) over groups of ``size`` consecutive rows: (G, ...),
    ``G = ceil(E / size)``."""
    E = values.shape[0]
    gid = torch.arange(E, device=values.device) // size
    out = torch.zeros(((E + size - 1) // size, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, gid, values)


def group_variance(g: torch.Tensor, ok: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``size`` consecutive rows of ``g`` (E, k): the trace of the unbiased sample
    covariance over the rows where ``ok`` (E,), and their count; (G,) each (a group with fewer
    than 2 such rows has variance 0)."""
    w = ok.to(g.dtype)
    n = _group_sums(w, size)
    mean = _group_sums(g * w[:, None], size) / n.clamp_min(1)[:, None]
    dev = (g - mean.repeat_interleave(size, 0)[: g.shape[0]]).square().sum(1) * w
    return _group_sums(dev, size) / (n - 1).clamp_min(1), n


def group_mean_square(g: torch.Tensor, ok: torch.Tensor, size: int) -> torch.Tensor:
    """Per group of ``size`` consecutive rows of ``g`` (E, k): the mean of ``|g_i|^2`` over the
    rows where ``ok`` (G,) (0 for a group without such rows)."""
    w = ok.to(g.dtype)
    return _group_sums(g.square().sum(1) * w, size) / _group_sums(w, size).clamp_min(1)


class _Switch:
    """The switch of one window: the Q path's gradients recorded in the forward pass, the
    decisions taken in the backward pass (:meth:`route`)."""

    def __init__(self, gamma: float, size: int, ratio: float, enabled: bool):
        self.gamma, self.size, self.ratio, self.enabled = gamma, size, ratio, enabled
        self.q_grads: list[tuple] = []   # per step: dQ'/da (E, na), dQ'/dx, dQ'/dv (E, n, dim), dQ'_1/da - dQ'_2/da
        self.coef: torch.Tensor | None = None  # (E,) d loss / d J_i, set before the backward
        self.records: dict[int, tuple] = {}  # step -> (S2_A, V_Q, cut, measured) per group

    def route(self, t: int, ga: torch.Tensor, gs: tuple) -> tuple:
        """The adjoints of ``(a_t, s_t)`` that go on into the actor: the analytic ones, or for cut
        groups those of ``gamma^t Q'(s_t, a_t)`` (and none through the state history)."""
        qa, qx, qv, qd = self.q_grads[t]
        E = qa.shape[0]
        scale = self.coef * self.gamma ** t  # d loss / d (gamma^t Q_i)
        ok = scale != 0
        analytic = torch.where(ok[:, None], ga.reshape(E, -1) / torch.where(ok, scale, 1.0)[:, None], 0.0)
        var_a, n = group_variance(analytic, ok, self.size)
        var_q = group_variance(qa, ok, self.size)[0] + 0.5 * group_mean_square(qd, ok, self.size)
        cut = (var_a > self.ratio * var_q) & (n >= 2)
        self.records[t] = (var_a, var_q, cut, n >= 2)
        if not self.enabled:
            return ga, gs
        env_cut = cut.repeat_interleave(self.size)[:E]
        c1, c3 = env_cut[:, None], env_cut[:, None, None]
        ga = torch.where(c1, scale[:, None] * qa, ga.reshape(E, -1)).reshape(ga.shape)
        q_state = (qx, qv, None, None)
        gs = tuple(torch.where(c3, 0.0 if q is None else scale[:, None, None] * q, g) for g, q in zip(gs, q_state))
        return ga, gs


class _AnalyticGate(torch.autograd.Function):
    """Identity on ``(a_t, *s_t)`` where they enter the simulator step ``t``; its backward hands
    the incoming analytic adjoints to the window's :class:`_Switch`."""

    @staticmethod
    def forward(ctx, switch: _Switch, t: int, action, *state):
        ctx.switch, ctx.t = switch, t
        return (action.view_as(action), *(s.view_as(s) for s in state))

    @staticmethod
    def backward(ctx, ga, *gs):
        ga, gs = ctx.switch.route(ctx.t, ga, gs)
        return (None, None, ga, *gs)


class AGPO(SHAC):
    """Adaptive-gradient policy optimisation on SHAC's windows (see the module doc)."""

    Config = AGPOConfig
    #: the switch decides on per-step variances of this process' batch; not made global yet
    DISTRIBUTED = False

    def __init__(self, task: Task, run: RunConfig, cfg: AGPOConfig):
        super().__init__(task, run, cfg)
        self.switch: _Switch | None = None  # the current window's
        #: the switch's records of the last epoch, one per step in time order: (S2_A, V_Q, cut,
        #: measured), each (G,) per group; ``measured``: the group had >= 2 envs that did not fail
        self.decisions: list[tuple] = []

    def make_critic(self) -> torch.nn.Module:
        """Twin ``Q(normalised obs, action)`` (ELU MLPs of ``critic_hidden``)."""
        return TwinQCritic(self.task.obs_dim, self.task.action_dim, self.cfg.critic_hidden).to(
            device=self.device, dtype=self.dtype)

    def train_epoch(self) -> dict:
        self.decisions = []
        out = super().train_epoch()
        tiny = torch.finfo(self.dtype).tiny
        cuts = torch.cat([c[m] for _, _, c, m in self.decisions])
        ratios = torch.cat([(a.clamp_min(tiny).log10() - q.clamp_min(tiny).log10())[m]
                            for a, q, _, m in self.decisions])
        out["train/cut_fraction"] = float(cuts.float().mean()) if cuts.numel() else 0.0
        out["train/log10_ratio"] = float(ratios.median()) if ratios.numel() else float("nan")
        out["train/switch_on"] = int(self.switch_enabled)
        return out

    @property
    def switch_enabled(self) -> bool:
        """Whether the switch cuts in this epoch (after ``switch_warmup`` epochs)."""
        return self._epoch >= self.cfg.switch_warmup

    # -- the window --------------------------------------------------------------------------------
    def rollout_window(self, state, steps: int, failed: torch.Tensor) -> tuple[Window, torch.Tensor]:
        """SHAC's window, with a new switch (cutting only after the warm-up)."""
        cfg = self.cfg
        self.switch = _Switch(cfg.gamma, cfg.group_size, cfg.switch_ratio, self.switch_enabled)
        return super().rollout_window(state, steps, failed)

    def transition(self, t: int, state, obs: torch.Tensor, action: torch.Tensor):
        """The step through the gate of the switch, after recording the Q path's gradients."""
        self.switch.q_grads.append(self._q_gradients(state, action))
        action, *state = _AnalyticGate.apply(self.switch, t, action, *state)
        return self.core.step(tuple(state), action)

    def _q_gradients(self, state, action: torch.Tensor) -> tuple:
        """The Q path at step ``t`` (no graph kept): ``nabla_(a, x, v) min_k Q'_k(o(x, v), a)``
        per env, and ``nabla_a Q'_1 - nabla_a Q'_2``, the twins' disagreement."""
        x, v = (s.detach().requires_grad_(True) for s in state[:2])
        a = action.detach().requires_grad_(True)
        q1, q2 = self.target_critic(self.normalize(self.core.observe((x, v))), a)
        g1 = torch.autograd.grad(q1.sum(), (a, x, v), retain_graph=True)
        g2 = torch.autograd.grad(q2.sum(), (a, x, v))
        first = q1 <= q2
        grads = tuple(torch.where(first.reshape(-1, *[1] * (u.dim() - 1)), u, w) for u, w in zip(g1, g2))
        return (*grads, g1[0] - g2[0])

    def bootstrap(self, obs: torch.Tensor) -> torch.Tensor:
        """(E,) ``min_k Q'_k(s_h, a_h)``, ``a_h`` drawn from the actor (differentiable in both)."""
        a, _ = self.actor(obs)
        return self.target_critic.min_q(self.normalize(obs), a)

    def actor_loss(self, win: Window, ok: torch.Tensor) -> torch.Tensor:
        """SHAC's loss; tells the switch ``d loss / d J_i`` (``-1 / (h N)`` for the envs that did not
        fail, 0 for the others), the scale of the analytic adjoints it receives."""
        loss = super().actor_loss(win, ok)
        steps = win.rewards.shape[0]
        self.switch.coef = -ok.to(self.dtype) / (ok.sum().clamp_min(1) * steps)
        return loss

    def actor_step(self, win: Window, ok: torch.Tensor, where: str) -> dict:
        """SHAC's actor step (the switch decides inside its backward pass); keeps the records."""
        out = super().actor_step(win, ok, where)
        records = self.switch.records
        self.decisions += [records[t] for t in sorted(records)]
        return out

    # -- the critic --------------------------------------------------------------------------------
    @torch.no_grad()
    def critic_data(self, win: Window, ok: torch.Tensor) -> tuple[tuple, torch.Tensor]:
        """``((nobs_t, a_t), G_t)`` of the window's steps of the envs that did not fail: the
        TD(lambda) targets with the values ``min_k Q'_k(s_t, a_t)`` (and the closing value)."""
        nobs = self.normalize(win.obs.detach())
        actions = win.actions.detach()
        values = torch.cat([self.target_critic.min_q(nobs[:-1], actions), win.bootstrap.detach()[None]])
        targets = self.lambda_targets(win, values)
        return (nobs[:-1][:, ok].flatten(0, 1), actions[:, ok].flatten(0, 1)), targets[:, ok].flatten(0, 1)

    def critic_loss(self, inputs: tuple, targets: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Mean squared error of both heads (with ``size``: summed over ``size``, as SHAC's)."""
        q1, q2 = self.critic(*inputs)
        if size is not None:
            return ((q1 - targets).square() + (q2 - targets).square()).sum() / size
        return (q1 - targets).square().mean() + (q2 - targets).square().mean()

