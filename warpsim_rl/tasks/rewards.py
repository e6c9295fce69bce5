"""PODS Eq. 15 on the parts of a state (torch): :func:`reward` and its gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import Weights

__all__ = ["reward", "reward_gradients"]


def _sq(t):
    return t.reshape(t.shape[0], -1).square().sum(dim=1)


def reward(p, x, v, a, weights: Weights):
    """PODS Eq. 15: ``-w_p|p|² - w_x|x|² - w_v|v|² - w_a|a|²`` per env (E,), for torch tensors
    with a leading env dimension (any trailing shape): handle positions relative to home ``p``,
    payload positions relative to target ``x``, payload velocities ``v``, executed actions ``a``."""
    w = weights
    return -(w.w_p * _sq(p) + w.w_x * _sq(x) + w.w_v * _sq(v) + w.w_a * _sq(a))


def reward_gradients(p, x, v, a, weights: Weights):
    """Gradients of :func:`reward` w.r.t. ``(p, x, v, a)``, shaped like them: ``-2 w ·``."""
    w = weights
    return -2.0 * w.w_p * p, -2.0 * w.w_x * x, -2.0 * w.w_v * v, -2.0 * w.w_a * a

