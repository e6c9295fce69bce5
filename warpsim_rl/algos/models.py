"""Networks of the algorithms: the deterministic actor, a squashed-Gaussian actor, V and twin-Q
critics, the MLP builder they share, and target-network updates.

Every network is :func:`mlp` behind an optional :class:`ObservationNormalizer`. Actors squash
their output by ``tanh`` and scale it by the task's per-axis action limits, so every action they
emit is executable (no clipping needed). The normaliser's running mean and variance are buffers of
the module: the algorithms update them from the observations they train on (``observe``), they
are frozen otherwise (evaluation never changes them), and they are saved with the weights, so a
resumed run continues exactly.

Units: observations in the task's units (m, m/s), actions in m/s, values in return units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import is_distributed, merge_moments

__all__ = ["ACTIVATIONS", "mlp", "ObservationNormalizer", "MLPPolicy", "SquashedGaussianActor",
           "ValueCritic", "TwinQCritic", "soft_update", "hard_update"]

#: hidden-layer activations by name (the ``activation`` argument of :func:`mlp`)
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def mlp(in_dim: int, out_dim: int, hidden=(64, 64), activation: str = "tanh",
        last_gain: float | None = None) -> nn.Sequential:
    """``Linear, act, ..., Linear, act, Linear`` with widths ``in_dim, *hidden, out_dim``.

    Layers are created (and default-initialised, drawing from torch's global RNG) in order, then,
    if ``last_gain`` is given, the last layer is re-initialised orthogonally with that gain and a
    zero bias. Module indices are ``0, 2, ...`` for the linear layers (``net.0.weight``, ...).

    Args:
        in_dim, out_dim: input and output sizes.
        hidden: hidden layer widths (empty: a single linear layer).
        activation: a key of :data:`ACTIVATIONS`.
        last_gain: orthogonal-init gain of the last layer (``None``: PyTorch's default init).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation = {activation!r}: must be one of {sorted(ACTIVATIONS)}")
    layers, width = [], in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    last = nn.Linear(width, out_dim)
    if last_gain is not None:
        nn.init.orthogonal_(last.weight, gain=last_gain)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ObservationNormalizer(nn.Module):
    """``clip((obs - mean) / max(std, min_std), -clip, clip)`` with running statistics.

    Args:
        dim: observation size.
        min_std: floor on the standard deviation (observation units, m or m/s), so that a
            feature that barely varies (e.g. a handle that has not moved yet) is not amplified by
            more than ``1/min_std``.
        clip: bound on the normalised features.
    """

    def __init__(self, dim: int, min_std: float = 0.05, clip: float = 10.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros(()))
        self.min_std, self.clip = float(min_std), float(clip)

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merge a batch (..., dim) into the running statistics (Chan et al.'s parallel update); under
        ``torchrun`` the batch is the union of every rank's (a collective: every rank calls it)."""
        x = obs.detach().reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        if x.shape[0] == 0 and not is_distributed():
            return
        n, b_mean, b_var = merge_moments(x)  # under torchrun: the batch of every rank
        if n == 0:
            return
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @property
    def std(self) -> torch.Tensor:
        """(dim,) the standard deviation the features are divided by: ``max(sqrt(var), min_std)``."""
        return self.var.sqrt().clamp_min(self.min_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean) / self.std).clamp(-self.clip, self.clip)


class _Normalized(nn.Module):
    """A network whose ``normalizer`` is an :class:`ObservationNormalizer` or ``nn.Identity``."""

    normalizer: nn.Module

    def observe(self, obs: torch.Tensor) -> None:
        """Update the observation statistics with a batch (..., obs_dim) (no-op if not normalising)."""
        if isinstance(self.normalizer, ObservationNormalizer):
            self.normalizer.update(obs)


class MLPPolicy(_Normalized):
    """``a = limit * tanh(W_L ... tanh(W_1 normalize(obs)))``.

    Args:
        obs_dim, action_dim: sizes of the flat observation and action.
        limit: (action_dim,) tensor of per-axis action limits (m/s).
        hidden: hidden layer widths.
        normalize: standardise observations with running statistics (else the identity).
        init_gain: scale of the last layer's initial weights (small: the initial policy barely
            moves the handles).
    """

    def __init__(self, obs_dim: int, action_dim: int, limit: torch.Tensor, hidden=(64, 64),
                 normalize: bool = True, init_gain: float = 0.1):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden, "tanh", last_gain=init_gain)
        self.normalizer = ObservationNormalizer(obs_dim) if normalize else nn.Identity()
        self.register_buffer("limit", limit.reshape(-1).clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.limit * torch.tanh(self.net(self.normalizer(obs)))


class SquashedGaussianActor(_Normalized):
    """SAC's actor: ``a = limit * tanh(u)``, ``u ~ N(mu(obs), diag(exp(log_std))^2)``.

    The mean ``mu = net(normalize(obs))`` is built exactly like :class:`MLPPolicy` (same
    arguments, same module names ``net.*``, ``normalizer.*``, ``limit``, same torch RNG draws:
    under one seed both start with the same ``net``), so a deterministic policy's weights load into
    it and :meth:`mean_action` then equals that policy's output. For that reason the log standard
    deviation is a state-independent parameter ``log_std`` (action_dim,), in pre-tanh units,
    clamped to ``[log_std_min, log_std_max]`` when used (no gradient outside the range).

    Log-likelihood (Haarnoja et al. 2018, Eq. 21 / Appendix C, with the affine scaling by the
    per-axis ``limit``)::

        log pi(a|s) = sum_i [ log N(u_i; mu_i, std_i) - log(limit_i * (1 - tanh(u_i)^2)) ]

    with ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` so the correction stays finite
    where ``tanh`` saturates in floating point. ``log_prob`` is the log-density of the action in
    m/s (it shifts by ``-action_dim log c`` if actions are rescaled by ``c``).

    Args:
        obs_dim, action_dim, limit, hidden, normalize, init_gain: as :class:`MLPPolicy`.
        init_log_std: initial value of every entry of ``log_std``.
        log_std_min, log_std_max: clamp range of ``log_std``.
    """

    def __init__(self, obs_dim: int, action_dim: int, limit: torch.Tensor, hidden=(64, 64),
                 normalize: bool = True, init_gain: float = 0.1, init_log_std: float = 0.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden, "tanh", last_gain=init_gain)
        self.normalizer = ObservationNormalizer(obs_dim) if normalize else nn.Identity()
        self.register_buffer("limit", limit.reshape(-1).clone())
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)

    def forward(self, obs: torch.Tensor, deterministic: bool = False, eps: torch.Tensor | None = None):
        """Reparameterised sample (global torch RNG) and its log-likelihood.

        Args:
            obs: (..., obs_dim) raw observations.
            deterministic: take ``u = mu`` (log_prob is then the density at ``limit tanh(mu)``).
            eps: (..., action_dim) the standard normal draw to use (default: ``torch.randn_like``
                of the mean; under torchrun an algorithm passes its block of a global draw).

        Returns:
            action (..., action_dim) in m/s with ``|action| <= limit``; log_prob (...,).
        """
        mean = self.net(self.normalizer(obs))
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        if deterministic:
            eps = torch.zeros_like(mean)
        elif eps is None:
            eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; mean, std) with (u - mean) / std = eps, minus log |d a / d u|
        log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2.0 * math.pi)
                    - torch.log(self.limit) - 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u)))
        return self.limit * torch.tanh(u), log_prob.sum(-1)

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """``limit * tanh(mu(obs))`` (..., action_dim): the evaluation action."""
        return self.limit * torch.tanh(self.net(self.normalizer(obs)))


class ValueCritic(_Normalized):
    """``V(s) = net(normalize(obs))``, shape (...,), in return units (SHAC's critic).

    With ``normalize=False`` the critic takes its input as given: pass already normalised
    observations (e.g. ``actor.normalizer(obs)`` to share the actor's statistics). With
    ``normalize=True`` it owns an :class:`ObservationNormalizer`, updated by :meth:`observe`.

    Args:
        obs_dim: observation size.
        hidden, activation: as :func:`mlp` (ELU by default, as SHAC's critic; the output layer
            keeps PyTorch's default init).
        normalize: own an observation normaliser.
    """

    def __init__(self, obs_dim: int, hidden=(64, 64), activation: str = "elu",
                 normalize: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation)
        self.normalizer = ObservationNormalizer(obs_dim) if normalize else nn.Identity()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalizer(obs)).squeeze(-1)


class TwinQCritic(_Normalized):
    """Two independent ``Q_k(s, a) = net_k([normalize(obs), action])`` (Fujimoto et al. 2018).

    The observation is normalised as in :class:`ValueCritic` (own normaliser with
    ``normalize=True``, else taken as given); the action enters unscaled, in m/s. The heads
    ``q1``, ``q2`` are built one after the other, so they start from different weights.

    Args:
        obs_dim, action_dim: input sizes.
        hidden, activation: as :func:`mlp` (ELU by default).
        normalize: own an observation normaliser.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden=(64, 64), activation: str = "elu",
                 normalize: bool = False):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, hidden, activation)
        self.q2 = mlp(obs_dim + action_dim, 1, hidden, activation)
        self.normalizer = ObservationNormalizer(obs_dim) if normalize else nn.Identity()

    def forward(self, obs: torch.Tensor, action: torch.Tensor):
        """obs (..., obs_dim), action (..., action_dim) -> (q1, q2), each (...,)."""
        x = torch.cat([self.normalizer(obs), action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``min(Q_1, Q_2)`` (...,): the clipped double-Q estimate of TD3/SAC targets."""
        return torch.minimum(*self(obs, action))


def _paired(target: nn.Module, source: nn.Module):
    """(target, source) tensors of parameters and of buffers, matched by name."""
    pairs = []
    for kind in ("named_parameters", "named_buffers"):
        t, s = dict(getattr(target, kind)()), dict(getattr(source, kind)())
        if t.keys() != s.keys():
            raise ValueError(f"target and source differ in {kind[6:]}: "
                             f"{sorted(t.keys() ^ s.keys())}")
        pairs.append([(t[k], s[k]) for k in t])
    return pairs


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging in place: ``theta_target <- (1 - tau) theta_target + tau theta_source``
    for every parameter (``torch.lerp``: exact at ``tau`` = 0 and 1); buffers (normaliser
    statistics, limits) are copied. ``target`` and ``source`` must have the same structure."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau = {tau!r}: must be in [0, 1]")
    params, buffers = _paired(target, source)
    for t, s in params:
        t.lerp_(s, tau)
    for t, s in buffers:
        t.copy_(s)


@torch.no_grad()
def hard_update(target: nn.Module, source: nn.Module) -> None:
    """Copy every parameter and buffer of ``source`` into ``target`` in place."""
    params, buffers = _paired(target, source)
    for t, s in params + buffers:
        t.copy_(s)
