"""Deterministic policy network: an MLP from (normalised) observations to handle velocities.

The output layer is squashed by ``tanh`` and scaled by the task's action limits, so every action
the policy emits is executable (no clipping needed). Observations are standardised by an
:class:`ObservationNormalizer` whose running mean and variance are buffers of the module: the
algorithms update them from the observations they train on (:meth:`MLPPolicy.observe`), they are
frozen otherwise (evaluation never changes them), and they are saved with the weights, so a
resumed run continues exactly.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPPolicy", "ObservationNormalizer"]


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
        """Merge a batch (..., dim) into the running statistics (Chan et al.'s parallel update)."""
        x = obs.detach().reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        b_mean = x.mean(0)
        b_var = x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        std = self.var.sqrt().clamp_min(self.min_std)
        return ((obs - self.mean) / std).clamp(-self.clip, self.clip)


class MLPPolicy(nn.Module):
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
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        last = nn.Linear(width, action_dim)
        nn.init.orthogonal_(last.weight, gain=init_gain)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.normalizer = ObservationNormalizer(obs_dim) if normalize else nn.Identity()
        self.register_buffer("limit", limit.reshape(-1).clone())

    def observe(self, obs: torch.Tensor) -> None:
        """Update the observation statistics with a batch (..., obs_dim) (no-op if not normalising)."""
        if isinstance(self.normalizer, ObservationNormalizer):
            self.normalizer.update(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.limit * torch.tanh(self.net(self.normalizer(obs)))
