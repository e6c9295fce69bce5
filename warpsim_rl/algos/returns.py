"""Reductions over batches of rollouts: TD(lambda) value targets and means over the
environments that did not fail. Time runs along dim 0, environments along dim 1."""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "td_lambda_targets"]


def masked_mean(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the entries where the bool tensor ``ok`` (broadcastable to
    ``values``) is true, 0 if there are none: ``where(ok, values, 0).sum() / ok.sum().clamp_min(1)``
    (a ``where``, not ``values * ok``, so that a NaN in an excluded entry stays out; where every
    entry is ok the result equals ``(values * ok).sum() / ok.sum()`` bit for bit)."""
    return torch.where(ok, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum() \
        / ok.sum().clamp_min(1)


def td_lambda_targets(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor,
                      gamma: float, lam: float, truncated: torch.Tensor | None = None,
                      bootstrap: torch.Tensor | None = None) -> torch.Tensor:
    """TD(lambda) targets of a window of T steps in E environments that may reset inside it.

    The lambda-return (Sutton & Barto 2018, Eq. 12.2; truncated at the window's end, Eq. 12.9;
    SHAC's critic target, Xu et al. 2022, Eq. 6-7), computed backwards by its recursive form::

        G_t = r_t                                                      if step t is terminal
        G_t = r_t + gamma V'_{t+1}                                     if step t is truncated
        G_t = r_t + gamma ((1 - lam) V_{t+1} + lam G_{t+1})            otherwise,  G_T = V_T

    where ``V'_{t+1}`` is ``bootstrap[t]``, the value of the state the time limit cut off (the
    observation before the reset, not ``values[t + 1]`` which belongs to the next episode).
    ``lam = 0`` gives the one-step targets ``r_t + gamma V_{t+1}``, ``lam = 1`` the discounted
    returns to the episode's end or the window's end, bootstrapped there with ``V``.

    Args:
        rewards: (T, E) reward of step t (the transition s_t -> s_{t+1}).
        values: (T + 1, E) ``V(s_t)`` of the observations the policy saw (after resets), and
            ``values[T]`` of the observation after the window. Pass detached values (target
            critic) unless the targets are to be differentiated.
        dones: (T, E) bool, step t ended the episode in a terminal state (no bootstrap).
        gamma, lam: discount and trace-decay parameters in [0, 1].
        truncated: (T, E) bool, step t hit the time limit (``None``: never); a step that is
            both terminal and truncated counts as terminal.
        bootstrap: (T, E) value of the pre-reset next state, read only where ``truncated``.

    Returns:
        (T, E) targets, in the units of ``rewards``.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma = {gamma!r}, lam = {lam!r}: must be in [0, 1]")
    steps = rewards.shape[0]
    if values.shape != (steps + 1, *rewards.shape[1:]):
        raise ValueError(f"values has shape {tuple(values.shape)}; expected (T + 1, E) = "
                         f"{(steps + 1, *rewards.shape[1:])} for rewards of shape {tuple(rewards.shape)}")
    masks = {"dones": dones} if truncated is None else {"dones": dones, "truncated": truncated}
    for name, mask in masks.items():
        if mask.shape != rewards.shape or mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor of shape {tuple(rewards.shape)}; "
                             f"got {mask.dtype} {tuple(mask.shape)}")
    next_values = values[1:]
    cont = ~dones
    if truncated is not None:
        if bootstrap is None or bootstrap.shape != rewards.shape:
            raise ValueError(f"bootstrap must be a tensor of shape {tuple(rewards.shape)} with truncated")
        next_values = torch.where(truncated, bootstrap, next_values)
        cont = cont & ~truncated
    targets, ret = [], values[steps]
    for t in range(steps - 1, -1, -1):
        tail = torch.where(cont[t], (1.0 - lam) * next_values[t] + lam * ret, next_values[t])
        ret = torch.where(dones[t], rewards[t], rewards[t] + gamma * tail)
        targets.append(ret)
    return torch.stack(targets[::-1])
