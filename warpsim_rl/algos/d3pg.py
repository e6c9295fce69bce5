"""D3PG: DDPG whose critic also fits the simulator's gradients of the TD target (Qiao et al.,
"Hybrid DDPG", ICLR 2020 submission; ``--algo d3pg``).

Per epoch, ``E = num_envs`` environments start from :meth:`~.base.Algorithm.initial_state` and
run the task's horizon with Gaussian action noise (``a = clip(pi(o) + exploration_noise * limit *
N(0, I))``; the paper uses parameter-space noise, Sec. 4.2). Every step adds the ``E``
transitions of the envs that have not failed to the replay buffer, then takes
``updates_per_step`` gradient updates on minibatches of ``batch_size`` (once the buffer holds a
minibatch), each Algorithm 1, lines 8-12:

* target (line 9) ``y = r + gamma Q'(o', pi'(o'))`` (the tasks have no terminal states: the
  horizon is a time limit, bootstrapped);
* its gradient (Eq. 2), in **observation coordinates**. The critic sees the observation
  ``o = O s + c`` of the Markov state ``s = [x_f, v_f, x_prev_f, v_prev_f, x_h]`` (``O`` selects
  handle positions, payload positions and velocities: :meth:`~warpsim_rl.layout.StateLayout.observation_jacobian`),
  and ``o`` does not determine ``s`` (the BDF2 history ``x_prev_f, v_prev_f`` is not observed).
  The reward ``r(s', a)`` depends on ``s'`` only through ``o'``, so with
  ``g' = dr/do' + gamma d/do' [Q'(o', pi'(o'))]`` (the target actor's path included)::

      grad_s y = A^T O^T g',   grad_a y = dr/da + B^T O^T g'

  with ``A = ds'/ds``, ``B = ds'/da`` from the step core. ``grad_a y`` is exact for a critic
  of ``(o, a)``: it needs only ``O B``. The critic ``Q(O s + c, a)`` cannot see the history, so
  its state gradient is fitted along the Markov-state perturbations ``S e_j`` that an
  observation perturbation ``e_j`` stands for (``O S = I``): ``grad_o Q`` is fitted to
  ``(O A S)^T g'`` (:func:`chain_through_step`; ``state_gradient``):

  - ``"fixed"``, ``S = O^T``: the history held fixed, the literal ``O grad_s y`` (with ``O``'s
    orthonormal rows ``|grad_s Q - grad_s y|^2 = |grad_o Q - O grad_s y|^2 + const``). BDF2's
    ``x' = 4/3 x - 1/3 x_prev + ...`` makes the spectral radius of ``O A O^T`` 4/3 (measured
    1.332 on pendulum2d, double_pendulum3d, rope3d): bootstrapping ``g' -> gamma (O A O^T)^T g'``
    then amplifies the critic's gradient errors by ``4/3 gamma > 1`` per step;
  - ``"shifted"`` (default), ``S`` also adds the perturbation of each payload position /
    velocity to its history entry (a perturbation of the recent trajectory, not of one BDF2
    level): spectral radius 1.000, that of the full ``A``.

  Only the observed blocks ``O A S`` (obs x obs) and ``O B`` (obs x na) are needed;
* critic loss (line 10) ``|Q - y|^2 + w1 |grad_a Q - grad_a y|^2 + w2 |grad_s Q - grad_s y|^2``,
  the gradients of ``Q`` by ``torch.autograd.grad(create_graph=True)``; with ``w1 = w2 = 0`` it is
  DDPG (no Jacobian is then computed or stored);
* actor (line 11) ``max mean Q(o, pi(o))`` with Adam; targets (line 12) by Polyak averaging.

**Normalisation** (Sec. 4.2): the critic's network sees normalised observations (its own running
statistics, fed the same observations as the actor's normaliser) and actions divided by the
task's limits, and outputs a normalised value ``Q = mu + sigma net(x)``, ``(mu, sigma)`` the
running mean / std of the TD targets, updated by Pop-Art (van Hasselt et al. 2016) so that a
statistics update leaves every critic's function unchanged. Every loss term is computed in those
units: ``(Q - y) / sigma``, gradients w.r.t. the normalised inputs (:func:`critic_loss`).

**Jacobians** (``jacobians``): ``"store"`` keeps ``O A S`` and ``O B`` per transition in the
buffer (computed with the rollout's step, ``core.step(jacobians=True)``); ``"recompute"`` keeps
the simulator state and recomputes them for each minibatch with one Jacobian step on a core of
``batch_size`` envs (not counted as environment steps: it re-simulates stored transitions);
``"auto"`` stores while the Jacobian fields of the whole buffer fit in ``jacobian_memory_mb``.
Measured per transition (float32) and per update: docs/algorithms.md.

The pieces (:class:`QCritic`, :func:`td_target`, :func:`chain_through_step`,
:func:`popart_update`, :func:`critic_loss`, :func:`critic_loss_on_batch`) take plain tensors, so
the paper's motivating example (Sec. 3.3, ``warpsim_rl/bench/d3pg.py``) runs the same critic
update as the simulator.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..core import StepCore, StepCounter
from ..tasks import Task
from .base import Algorithm
from .buffers import ReplayBuffer, memory_bytes
from .config import AlgoConfig, RunConfig, check_bool, check_choice, check_int, check_positive, check_range, \
    check_widths
from .models import ObservationNormalizer, mlp, soft_update
from .returns import masked_mean

__all__ = ["D3PG", "D3PGConfig", "QCritic", "td_target", "chain_through_step", "popart_update", "critic_loss",
           "critic_loss_on_batch", "observed_indices", "history_partners", "JACOBIAN_MODES", "STATE_GRADIENTS"]

#: values of ``D3PGConfig.jacobians``
JACOBIAN_MODES = ("auto", "store", "recompute")
#: values of ``D3PGConfig.state_gradient``
STATE_GRADIENTS = ("shifted", "fixed")


@dataclasses.dataclass
class D3PGConfig(AlgoConfig):
    """D3PG options (DDPG with ``w1 = w2 = 0``)."""

    lr: float = 1e-4
    """Adam learning rate of the actor (DDPG's 1e-4; 1e-3 collapsed the policy in the first epochs
    on pendulum2d-stop, docs/algorithms.md)"""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic (same schedule as the actor's)"""
    critic_hidden: tuple[int, ...] = (64, 64)
    """critic MLP hidden widths (ELU)"""
    gamma: float = 0.99
    """discount of the TD target"""
    tau: float = 0.005
    """Polyak factor of the target actor and critic (Algorithm 1, line 12)"""
    w1: float = 1.0
    """weight of the action-gradient term |grad_a Q - grad_a y|^2 (Algorithm 1, line 10)"""
    w2: float = 0.1
    """weight of the state-gradient term |grad_s Q - grad_s y|^2, fitted on the observation
    (best of {0, 0.1, 1} with w1 = 1 on pendulum2d-stop, docs/algorithms.md)"""
    batch_size: int = 256
    """transitions per minibatch"""
    buffer_size: int = 100_000
    """replay-buffer capacity (transitions)"""
    updates_per_step: int = 2
    """gradient updates per simulated step of the num_envs environments (measured with 2 at
    num_envs = 64, docs/results.md)"""
    exploration_noise: float = 0.1
    """std of the Gaussian action noise, as a fraction of each axis' action limit"""
    normalize_q: bool = True
    """normalise the critic's output by the running mean / std of the TD targets (Pop-Art)"""
    state_gradient: str = "shifted"
    """the state perturbation an observation perturbation stands for (the BDF2 history x_prev, v_prev
    is not observed): 'shifted' moves the history with the payload, 'fixed' holds it (the literal
    partial derivative, whose observed block has spectral radius 4/3: bootstrapped state gradients
    then diverge)"""
    jacobians: str = "auto"
    """'store' the observed Jacobian blocks per transition, 'recompute' them per minibatch from
    the stored simulator state, or 'auto' (store while they fit in jacobian_memory_mb)"""
    jacobian_memory_mb: float = 1024.0
    """'auto' stores the Jacobians while their buffer fields take at most this many MiB"""

    def __post_init__(self):
        super().__post_init__()
        self.critic_hidden = check_widths("critic_hidden", self.critic_hidden)
        check_positive("critic_lr", self.critic_lr)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("tau", self.tau, 0.0, 1.0)
        check_positive("w1", self.w1, allow_zero=True)
        check_positive("w2", self.w2, allow_zero=True)
        check_int("batch_size", self.batch_size, 1)
        check_int("buffer_size", self.buffer_size, 1)
        check_int("updates_per_step", self.updates_per_step, 1)
        check_positive("exploration_noise", self.exploration_noise, allow_zero=True)
        check_bool("normalize_q", self.normalize_q)
        check_choice("state_gradient", self.state_gradient, STATE_GRADIENTS)
        check_choice("jacobians", self.jacobians, JACOBIAN_MODES)
        check_positive("jacobian_memory_mb", self.jacobian_memory_mb)

    @property
    def fits_gradients(self) -> bool:
        """Whether the critic loss has a gradient term (else the algorithm is DDPG)."""
        return self.w1 > 0 or self.w2 > 0


# ---------------------------------------------------------------------------------------------
# the critic and its update (plain tensors: shared by the simulator and the motivating example)
# ---------------------------------------------------------------------------------------------

class QCritic(nn.Module):
    """``Q(o, a) = mu + sigma net([normalize(o), a / limit])`` (Sec. 4.2), shape (...,).

    ``mu``, ``sigma`` (buffers ``q_mean``, ``q_std``; 0 and 1 until :func:`popart_update`) put the
    network's output in normalised units. The observation normaliser is the critic's own.

    Args:
        obs_dim, action_dim: input sizes.
        limit: (action_dim,) action limits (the action's scale).
        hidden: hidden widths of the ELU MLP (PyTorch's default init; as the other critics: a
            tanh critic was cheaper to differentiate twice but learned far worse, DDPG and D3PG
            alike, on pendulum2d-stop).
        normalize: standardise observations with running statistics (else the identity).
    """

    def __init__(self, obs_dim: int, action_dim: int, limit: torch.Tensor, hidden=(64, 64), normalize: bool = True):
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.net = mlp(obs_dim + action_dim, 1, hidden, "elu")
        self.normalizer = ObservationNormalizer(obs_dim) if normalize else nn.Identity()
        self.register_buffer("limit", limit.reshape(-1).clone())
        self.register_buffer("q_mean", torch.zeros((), dtype=self.limit.dtype))
        self.register_buffer("q_std", torch.ones((), dtype=self.limit.dtype))

    def inputs(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The network's input ``x = [normalize(o), a / limit]`` (..., obs_dim + action_dim)."""
        return torch.cat([self.normalizer(obs), action / self.limit], dim=-1)

    def input_scale(self) -> torch.Tensor:
        """``d(raw input) / dx`` per input (obs_dim + action_dim,): the observation std the
        normaliser divides by (1 without one), then the action limits. A gradient w.r.t. the raw
        input times this is the gradient w.r.t. ``x`` (away from the normaliser's clip)."""
        norm = self.normalizer
        std = norm.std if isinstance(norm, ObservationNormalizer) \
            else torch.ones(self.obs_dim, dtype=self.limit.dtype, device=self.limit.device)
        return torch.cat([std, self.limit])

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised value ``(Q - mu) / sigma = net(x)`` (...,)."""
        return self.net(x).squeeze(-1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.q_mean + self.q_std * self.head(self.inputs(obs, action))

    def observe(self, obs: torch.Tensor) -> None:
        """Update the observation statistics with a batch (..., obs_dim) (no-op if not normalising)."""
        if isinstance(self.normalizer, ObservationNormalizer):
            self.normalizer.update(obs)

    @torch.no_grad()
    def set_output_scale(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Change ``(mu, sigma)`` to ``(mean, std)`` and rescale the last layer so that ``Q`` is
        unchanged (Pop-Art's "preserving outputs")."""
        last = self.net[-1]
        last.weight.mul_(self.q_std / std)
        last.bias.mul_(self.q_std).add_(self.q_mean - mean).div_(std)
        self.q_mean.copy_(mean)
        self.q_std.copy_(std)


def td_target(target_actor, target_critic: QCritic, reward: torch.Tensor, next_obs: torch.Tensor, gamma: float,
              dr_dnext: torch.Tensor | None = None, done: torch.Tensor | None = None):
    """Algorithm 1, line 9: ``y = r + gamma (1 - done) Q'(o', pi'(o'))`` (B,), no graph.

    With ``dr_dnext`` (B, obs_dim), the reward's gradient w.r.t. the next observation, also
    returns ``g' = dy/do' = dr/do' + gamma (1 - done) d/do' [Q'(o', pi'(o'))]`` (B, obs_dim) —
    the total derivative, through the target actor — else ``None``. ``done``: (B,) bool
    terminal transitions (default: none)."""
    discount = torch.full_like(reward, gamma) if done is None else gamma * (~done).to(reward.dtype)
    if dr_dnext is None:
        with torch.no_grad():
            return reward + discount * target_critic(next_obs, target_actor(next_obs)), None
    o1 = next_obs.detach().requires_grad_(True)
    with torch.enable_grad():
        q1 = target_critic(o1, target_actor(o1))
        (dq_do1,) = torch.autograd.grad(q1.sum(), o1)
    return reward + discount * q1.detach(), dr_dnext + discount[:, None] * dq_do1


def chain_through_step(dy_dnext: torch.Tensor, dnext_dinput: torch.Tensor, dr_da: torch.Tensor) -> torch.Tensor:
    """Eq. 2's chain rule through one step, w.r.t. the critic's raw input ``(o, a)`` (module doc).

    Args:
        dy_dnext: (B, no) ``g' = dy/do'`` (:func:`td_target`).
        dnext_dinput: (B, no, no + na) ``[O A S, O B]``: ``do'/d(o, a)``, the observation
            along the state perturbations ``S`` (:meth:`D3PG.observed_blocks`).
        dr_da: (B, na) the reward's explicit derivative w.r.t. the executed action.

    Returns:
        (B, no + na) ``[(O A S)^T g', dr/da + (O B)^T g']``: ``grad_o y`` and ``grad_a y``.
    """
    dy = torch.bmm(dy_dnext.unsqueeze(1), dnext_dinput).squeeze(1)
    dy[:, dy_dnext.shape[1]:] += dr_da
    return dy


@torch.no_grad()
def popart_update(stats: ObservationNormalizer, targets: torch.Tensor, *critics: QCritic) -> None:
    """Merge the TD targets (B,) into the running statistics ``stats`` (an
    :class:`ObservationNormalizer` of size 1, its ``min_std`` the floor of ``sigma``) and move
    every critic's output scale to them, each keeping its function (Pop-Art)."""
    stats.update(targets.reshape(-1, 1))
    mean, std = stats.mean[0], stats.std[0]
    for critic in critics:
        critic.set_output_scale(mean, std)


def critic_loss(critic: QCritic, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor,
                dy_dinput: torch.Tensor | None = None, w1: float = 0.0, w2: float = 0.0,
                grad_ok: torch.Tensor | None = None):
    """Algorithm 1, line 10, in the critic's normalised units (Sec. 4.2)::

        L = mean_i [ ((Q_i - y_i) / sigma)^2 + w1 |s_a (grad_a Q_i - grad_a y_i) / sigma|^2
                                             + w2 |s_o (grad_o Q_i - grad_o y_i) / sigma|^2 ]

    ``dy_dinput`` (B, no + na): ``[grad_o y, grad_a y]`` (:func:`chain_through_step`; needed
    when a weight is > 0). ``s_a``, ``s_o``: :meth:`QCritic.input_scale` (the gradients w.r.t.
    the normalised inputs);
    ``grad Q`` by ``torch.autograd.grad(create_graph=True)``. A term whose weight is 0 is not
    computed (``w1 = w2 = 0``: DDPG's loss). ``grad_ok`` (B,) bool: transitions whose target
    gradient is valid (default all); the others enter the value term only.

    Returns ``(loss, parts)``, ``parts`` the detached terms computed: ``value_loss``, and
    ``grad_a_loss`` / ``grad_o_loss`` (unweighted) when their weight is > 0."""
    x = critic.inputs(obs, action)
    if w1 > 0 or w2 > 0:
        x = x.detach().requires_grad_(True)
    q = critic.head(x)
    value = (q - (y - critic.q_mean) / critic.q_std).square().mean()
    parts, loss = {"value_loss": value.detach()}, value
    if w1 > 0 or w2 > 0:
        (dq_dx,) = torch.autograd.grad(q.sum(), x, create_graph=True)
        scale, no = critic.input_scale() / critic.q_std, critic.obs_dim
        squares = (dq_dx - dy_dinput * scale).square()
        for name, weight, cols in (("grad_a_loss", w1, slice(no, None)), ("grad_o_loss", w2, slice(0, no))):
            if weight > 0:
                per_sample = squares[:, cols].sum(-1)
                term = per_sample.mean() if grad_ok is None else masked_mean(per_sample, grad_ok)
                parts[name] = term.detach()
                loss = loss + weight * term
    return loss, parts


def critic_loss_on_batch(critic: QCritic, target_actor, target_critic: QCritic, batch: dict, gamma: float,
                         w1: float, w2: float, q_stats: ObservationNormalizer | None = None):
    """The whole critic objective of one minibatch: :func:`td_target` (with its gradient when a
    weight is > 0), :func:`chain_through_step`, :func:`popart_update` of ``critic`` and
    ``target_critic`` (when ``q_stats`` is given), :func:`critic_loss`.

    ``batch``: ``obs`` (B, no), ``action`` (B, na), ``reward`` (B,), ``next_obs`` (B, no); with a
    gradient term also ``dr_dnext`` (B, no), ``dr_da`` (B, na), ``dnext_dinput``
    (B, no, no + na); optional ``done`` (B,) bool and ``grad_ok`` (B,) bool.
    Returns ``(loss, parts)`` of :func:`critic_loss`, ``parts`` with the targets' mean ``q_target``."""
    grads = w1 > 0 or w2 > 0
    y, dy_dnext = td_target(target_actor, target_critic, batch["reward"], batch["next_obs"], gamma,
                            batch["dr_dnext"] if grads else None, batch.get("done"))
    dy_dinput = chain_through_step(dy_dnext, batch["dnext_dinput"], batch["dr_da"]) if grads else None
    if q_stats is not None:
        popart_update(q_stats, y, critic, target_critic)
    loss, parts = critic_loss(critic, batch["obs"], batch["action"], y, dy_dinput, w1, w2,
                              batch.get("grad_ok"))
    parts["q_target"] = y.mean()
    return loss, parts


def observed_indices(layout) -> torch.Tensor:
    """Indices ``idx`` of the Markov state that the observation reads, in observation order:
    ``O s = s[idx]`` (the observation is a selection of the state minus constants). Raises if
    the layout's observation Jacobian is not such a selection."""
    O = layout.observation_jacobian("markov")
    idx = O.argmax(dim=1)
    if not (torch.equal(O.sum(1), torch.ones(O.shape[0], dtype=O.dtype))
            and bool((O[torch.arange(O.shape[0]), idx] == 1).all()) and idx.unique().numel() == idx.numel()):
        raise ValueError("observation_jacobian: the observation is not a selection of the Markov state")
    return idx


def history_partners(layout) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cols, partners)``: the observation entries that are payload positions / velocities
    (``cols``, into the observation) and the Markov indices of their BDF2 history entries
    ``x_prev_f`` / ``v_prev_f`` (``partners``). Handle positions have no history in the Markov
    state (the action sets the handle velocity)."""
    idx = observed_indices(layout)
    payload = 2 * layout.num_payload * layout.dim  # [x_f, v_f] come first, their history next
    cols = torch.nonzero(idx < payload).reshape(-1)
    return cols, idx[cols] + payload


# ---------------------------------------------------------------------------------------------
# the algorithm
# ---------------------------------------------------------------------------------------------

class D3PG(Algorithm):
    """D3PG (DDPG with ``w1 = w2 = 0``). See the module doc."""

    Config = D3PGConfig

    def __init__(self, task: Task, run: RunConfig, cfg: D3PGConfig):
        super().__init__(task, run, cfg)
        no, na = task.obs_dim, task.action_dim
        limit = self.core.limit.reshape(-1)
        self.critic = self.register_module("critic", QCritic(no, na, limit, cfg.critic_hidden, cfg.normalize_obs)
                                           .to(device=self.device, dtype=self.dtype))
        self.target_policy = self.register_module("target_policy", _frozen_copy(self.policy))
        self.target_critic = self.register_module("target_critic", _frozen_copy(self.critic))
        self.q_stats = self.register_module("q_stats", ObservationNormalizer(1, min_std=1e-2)
                                            .to(device=self.device, dtype=self.dtype)) if cfg.normalize_q else None
        self.actor_opt = self.register_optimizer("policy", self.policy.parameters())
        self.critic_opt = self.register_optimizer("critic", self.critic.parameters(), lr=cfg.critic_lr)
        self.sampler = self.register_generator("sampler", torch.Generator(device=self.device).manual_seed(run.seed))
        self.obs_idx = observed_indices(self.core.layout).to(self.device)
        self.shift = tuple(t.to(self.device) for t in history_partners(self.core.layout)) \
            if cfg.state_gradient == "shifted" else None
        self.jacobian_mode = self.resolve_jacobian_mode(task, cfg, self.dtype)
        self.buffer = self.register_buffer("replay", ReplayBuffer(
            cfg.buffer_size, self.transition_fields(task, self.jacobian_mode), self.device, self.dtype))
        # a core re-simulating the stored transitions of a minibatch; its steps are not new experience
        self.jacobian_core = StepCore(task, cfg.batch_size, run.device, run.dtype, run.threads, counter=StepCounter()) \
            if self.jacobian_mode == "recompute" else None

    # -- storage -------------------------------------------------------------------------------------
    @staticmethod
    def transition_fields(task: Task, mode: str | None) -> dict:
        """Replay-buffer fields ``{name: shape}`` for Jacobian ``mode`` ``"store"``, ``"recompute"``
        or ``None`` (DDPG: no gradient term)."""
        no, na = task.obs_dim, task.action_dim
        fields = {"obs": (no,), "action": (na,), "reward": (), "next_obs": (no,)}
        if mode is not None:
            fields.update(dr_dnext=(no,), dr_da=(na,))
        if mode == "store":
            fields.update(dnext_dinput=(no, no + na))
        elif mode == "recompute":
            fields.update(state=(task.layout.full_size,))
        return fields

    @classmethod
    def memory_per_transition(cls, task: Task, mode: str | None, dtype=torch.float32) -> int:
        """Bytes one transition takes in the replay buffer (:func:`~.buffers.memory_bytes`)."""
        return sum(memory_bytes(1, cls.transition_fields(task, mode), dtype).values())

    @classmethod
    def resolve_jacobian_mode(cls, task: Task, cfg: D3PGConfig, dtype=torch.float32) -> str | None:
        """``None`` without a gradient term, else ``cfg.jacobians`` with ``"auto"`` resolved: store
        while the stored Jacobian fields of ``buffer_size`` transitions take at most
        ``jacobian_memory_mb`` MiB."""
        if not cfg.fits_gradients:
            return None
        if cfg.jacobians != "auto":
            return cfg.jacobians
        extra = cfg.buffer_size * (cls.memory_per_transition(task, "store", dtype)
                                   - cls.memory_per_transition(task, None, dtype))
        return "store" if extra <= cfg.jacobian_memory_mb * 2 ** 20 else "recompute"

    def observed_blocks(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """``[O A S, O B]`` (E, no, no + na), i.e. ``do'/d(o, a)`` (:func:`chain_through_step`), of
        Markov-state Jacobians A (E, ns, ns), B (E, ns, na). ``S`` embeds an observation
        perturbation into the Markov state (``state_gradient``): ``O^T`` ("fixed" history), or
        ``O^T`` plus the same perturbation on the payload's history entries ("shifted"; then
        ``x' = 4/3 x - 1/3 x_prev + ...`` of BDF2 moves as ``x`` does)."""
        idx = self.obs_idx
        rows = A.index_select(1, idx)
        block = rows.index_select(2, idx)
        if self.shift is not None:
            cols, partners = self.shift
            block[:, :, cols] += rows.index_select(2, partners)
        return torch.cat([block, B.index_select(1, idx)], dim=2)

    def transitions(self, state, obs: torch.Tensor, tr) -> dict:
        """The buffer's fields of one step of every env: ``tr`` from ``state`` (observed as ``obs``)."""
        out = {"obs": obs, "action": tr.action.flatten(1), "reward": tr.reward, "next_obs": self.core.observe(tr.state)}
        if self.jacobian_mode is not None:
            d = self.core.reward_derivatives(tr.state, tr.action, layout="markov")
            out.update(dr_dnext=d["dr_ds"].index_select(1, self.obs_idx), dr_da=d["dr_da"])
        if self.jacobian_mode == "store":
            out["dnext_dinput"] = self.observed_blocks(tr.A, tr.B)
        elif self.jacobian_mode == "recompute":
            out["state"] = self.core.layout.flatten(state, "full")
        return out

    def recompute_jacobians(self, batch: dict) -> dict:
        """Add ``dnext_dinput`` and ``grad_ok`` to a minibatch sampled in
        ``"recompute"`` mode: one Jacobian step of the stored states and actions."""
        n, d = self.task.num_particles, self.task.dim
        state = tuple(t.contiguous() for t in batch["state"].reshape(-1, 4, n, d).unbind(1))
        core = self.jacobian_core
        tr = core.step(state, batch["action"], jacobians=True)
        batch["dnext_dinput"] = self.observed_blocks(tr.A, tr.B)
        batch["grad_ok"] = ~(core.failures() | tr.singular)
        return batch

    # -- acting ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """``pi(o) + exploration_noise * limit * N(0, I)`` (E, na) (clipped by the step)."""
        limit = self.policy.limit
        noise = torch.randn(obs.shape[0], limit.numel(), generator=self.sampler, device=self.device, dtype=self.dtype)
        return self.policy(obs) + self.cfg.exploration_noise * limit * noise

    # -- one update (Algorithm 1, lines 8-12) ------------------------------------------------------------
    def update(self) -> dict:
        """One minibatch: critic step, actor step, target updates. Returns detached losses."""
        cfg = self.cfg
        batch = self.buffer.sample(cfg.batch_size, self.sampler)
        if self.jacobian_mode == "recompute":
            batch = self.recompute_jacobians(batch)
        loss, parts = critic_loss_on_batch(self.critic, self.target_policy, self.target_critic, batch, cfg.gamma,
                                           cfg.w1, cfg.w2, self.q_stats)
        self._step(self.critic_opt, loss)
        actor_loss = -self.critic.head(self.critic.inputs(batch["obs"], self.policy(batch["obs"]))).mean()
        self._step(self.actor_opt, actor_loss)
        soft_update(self.target_policy, self.policy, cfg.tau)
        soft_update(self.target_critic, self.critic, cfg.tau)
        return {"critic_loss": loss.detach(), **parts, "actor_loss": actor_loss.detach()}

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.all_reduce_gradients()
        optimizer.step()

    # -- the epoch -------------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, core = self.cfg, self.core
        state = self.initial_state()
        returns = torch.zeros(core.num_envs, dtype=self.dtype, device=self.device)
        failed = torch.zeros(core.num_envs, dtype=torch.bool, device=self.device)
        logs: dict[str, list] = {}
        for _ in range(self.task.horizon):
            obs = core.observe(state)
            tr = core.step(state, self.explore(obs), jacobians=self.jacobian_mode == "store")
            bad = core.failures(clear=False)
            if tr.singular is not None:  # stored Jacobians that did not factor
                bad = bad | tr.singular
            failed |= bad
            keep = ~bad
            self.policy.observe(obs[keep])
            self.critic.observe(obs[keep])
            self.buffer.add(**{k: v[keep] for k, v in self.transitions(state, obs, tr).items()})
            returns += tr.reward
            state = tr.state
            for _ in range(cfg.updates_per_step if len(self.buffer) >= cfg.batch_size else 0):
                for k, v in self.update().items():
                    logs.setdefault(k, []).append(v)
        failed |= core.failures()
        out = {"train/return_before": float(masked_mean(returns, ~failed)), "train/diverged": int(failed.sum()),
               "train/updates": len(logs.get("critic_loss", [])), "train/buffer_size": len(self.buffer)}
        out.update({f"train/{k}": float(torch.stack(v).mean()) for k, v in logs.items()})
        return out


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy of ``module`` whose parameters take no gradient."""
    return copy.deepcopy(module).requires_grad_(False)
