"""Deterministic policy network: an MLP from observations to handle velocities.

The output layer is squashed by ``tanh`` and scaled by the task's action limits, so every action
the policy emits is executable (no clipping needed). Observations are scaled by fixed,
documented constants (``obs_scale``): positions in m and velocities in m/s are already O(1) for
the shipped tasks, so the default scale is 1 — no running statistics that would make resumed
runs depend on history.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPPolicy"]


class MLPPolicy(nn.Module):
    """``a = limit * tanh(W_L ... tanh(W_1 (obs * obs_scale)))``.

    Args:
        obs_dim, action_dim: sizes of the flat observation and action.
        limit: (action_dim,) tensor of per-axis action limits (m/s).
        hidden: hidden layer widths.
        obs_scale: multiplies observations before the first layer.
        init_gain: scale of the last layer's initial weights (small: the initial policy barely
            moves the handles).
    """

    def __init__(self, obs_dim: int, action_dim: int, limit: torch.Tensor, hidden=(64, 64),
                 obs_scale: float = 1.0, init_gain: float = 0.1):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        last = nn.Linear(width, action_dim)
        nn.init.orthogonal_(last.weight, gain=init_gain)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.register_buffer("limit", limit.reshape(-1).clone())
        self.obs_scale = float(obs_scale)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.limit * torch.tanh(self.net(obs * self.obs_scale))
