"""Gradient estimators of a Gaussian-smoothed objective (Suh, Simchowitz, Zhang, Tedrake, ICML 2022).

For an objective ``f(theta, w)`` perturbed by Gaussian noise ``w ~ N(0, sigma^2 I)`` — added to the
parameters (``f(theta + w)``) or to every action of a rollout — the *smoothed objective* is
``F(theta) = E_w[f(theta, w)]``. Its gradient is estimated from ``N`` samples by

* **zeroth order** (ZoBG, likelihood ratio with the noise-free value as a baseline)::

      g0 = 1/N sum_i [f(theta, w_i) - f(theta, 0)] z_i / sigma^2

  with ``z_i = w_i`` for parameter noise and ``z_i = sum_h (d pi/d theta (x_h))^T w_h`` for
  action noise ``w_h`` on a policy ``pi_theta`` (``x_h``: the states of the noisy rollout);
* **first order** (FoBG, reparameterised; through the simulator)::

      g1 = 1/N sum_i grad_theta f(theta, w_i);

* **alpha order** (AoBG): ``g_alpha = alpha g1 + (1 - alpha) g0`` with ``g1`` and ``g0`` from
  *independent* sample batches and ``alpha`` chosen by the confidence-interval rule of
  :func:`choose_alpha` (``/work/shared/papers/NOTES.md``).

Everything here is plain torch and works on the *per-sample* estimates (an ``(N, d)`` matrix
whose rows average to the estimate), so the same code serves open-loop action sequences
(:func:`smoothed_gradient`, any batch-separable differentiable ``f``) and network policies
(:mod:`warpsim_rl.algos.estimator_pg`, which builds the per-sample rows with vector-Jacobian
products through the policy).

Variances are *trace* variances: ``s^2 = sum_j Var(row_j)`` of one per-sample estimate
(unbiased, over the ``N`` rows); the N-sample mean has trace variance ``s^2 / N``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

__all__ = [
    "Estimate",
    "AlphaChoice",
    "SmoothedGradient",
    "zeroth_order",
    "first_order",
    "confidence_halfwidth",
    "choose_alpha",
    "alpha_order",
    "smoothed_gradient",
    "smoothed_gradients",
    "METHODS",
]

METHODS = ("zobg", "fobg", "aobg")


@dataclasses.dataclass
class Estimate:
    """A gradient estimate from ``N`` per-sample estimates ``samples`` (N, d); ``grad`` is their
    mean."""

    samples: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])

    @property
    def grad(self) -> torch.Tensor:
        """(d,) the N-sample estimate."""
        return self.samples.mean(dim=0)

    @property
    def var(self) -> float:
        """Trace variance ``s^2`` of one per-sample estimate (unbiased; 0 when N < 2)."""
        if self.n < 2:
            return 0.0
        return float(self.samples.var(dim=0, unbiased=True).sum())

    @property
    def stderr(self) -> float:
        """Root trace variance of the N-sample mean, ``sqrt(s^2 / N)``."""
        return math.sqrt(self.var / max(self.n, 1))

    @property
    def spread(self) -> float:
        """``max_i ||samples_i - grad||``: the empirical stand-in for the bound ``L`` of the
        Bernstein confidence interval (:func:`confidence_halfwidth`)."""
        if self.n == 0:
            return 0.0
        return float((self.samples - self.grad).norm(dim=1).max())


def zeroth_order(values: torch.Tensor, baseline, directions: torch.Tensor, sigma: float) -> Estimate:
    """ZoBG per-sample estimates ``(f_i - f_0) z_i / sigma^2``.

    Args:
        values: (N,) ``f(theta, w_i)``.
        baseline: ``f(theta, 0)``: a scalar or (N,) (one per sample, e.g. per initial state).
        directions: (N, d) ``z_i`` — the noise ``w_i`` itself for parameter noise, or the policy
            vector-Jacobian product ``sum_h (d pi/d theta)^T w_h`` for action noise.
        sigma: noise standard deviation (> 0).
    """
    if not sigma > 0:
        raise ValueError(f"sigma = {sigma!r}: must be > 0")
    values = values.reshape(-1)
    base = torch.as_tensor(baseline, dtype=values.dtype, device=values.device)
    adv = (values - base).detach()
    return Estimate(adv[:, None] * directions.reshape(values.shape[0], -1).detach() / (sigma * sigma))


def first_order(grads: torch.Tensor) -> Estimate:
    """FoBG per-sample estimates: the gradients ``grad_theta f(theta, w_i)`` (N, d)."""
    return Estimate(grads.reshape(grads.shape[0], -1).detach())


def confidence_halfwidth(s0_sq: float, n: int, d: int, delta: float, L: float) -> float:
    """Bernstein half-width of the ZoBG mean (NOTES.md, Suh et al. 2022):
    ``eps = sqrt(2 s0^2 log((d+1)/delta) / N) + 2 L log((d+1)/delta) / (3 N)``, i.e.
    ``||g0 - E g0|| <= eps`` with probability ``>= 1 - delta`` when ``||per-sample - mean|| <= L``."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta = {delta!r}: must be in (0, 1)")
    if n < 1 or d < 1:
        raise ValueError(f"n = {n!r}, d = {d!r}: must be >= 1")
    lg = math.log((d + 1) / delta)
    return math.sqrt(2.0 * max(s0_sq, 0.0) * lg / n) + 2.0 * max(L, 0.0) * lg / (3.0 * n)


@dataclasses.dataclass(frozen=True)
class AlphaChoice:
    """The interpolation weight of AoBG and why it was chosen.

    ``case``: ``"zero"`` (``eps > gamma``: the ZoBG confidence interval alone exceeds the
    tolerance, so first-order information cannot be vetted: alpha = 0), ``"interior"`` (the
    variance-optimal ``alpha* = s0^2 / (s0^2 + s1^2)`` satisfies the bias constraint) or
    ``"clipped"`` (``alpha = (gamma - eps) / ||g1 - g0||`` < alpha*)."""

    alpha: float
    alpha_star: float
    eps: float
    gap: float
    gamma: float
    case: str


def choose_alpha(s0_sq: float, s1_sq: float, gap: float, eps: float, gamma: float) -> AlphaChoice:
    """The confidence-interval rule for alpha (NOTES.md): minimise
    ``alpha^2 s1^2 + (1 - alpha)^2 s0^2`` subject to ``eps + alpha ||g1 - g0|| <= gamma``.

    * ``eps > gamma`` -> ``alpha = 0``;
    * else ``alpha* = s0^2 / (s0^2 + s1^2)`` if ``alpha* gap <= gamma - eps``;
    * else ``alpha = (gamma - eps) / gap``.

    ``s0_sq``, ``s1_sq``: trace variances of the zeroth/first-order estimates (per sample or of
    the means — only their ratio matters); ``gap = ||g1 - g0||``. When both variances are 0,
    ``alpha* = 1`` (first order is then exact)."""
    for name, v in (("s0_sq", s0_sq), ("s1_sq", s1_sq), ("gap", gap), ("eps", eps)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} = {v!r}: must be finite and >= 0")
    if not gamma > 0:
        raise ValueError(f"gamma = {gamma!r}: must be > 0")
    tot = s0_sq + s1_sq
    alpha_star = s0_sq / tot if tot > 0 else 1.0
    if eps > gamma:
        return AlphaChoice(0.0, alpha_star, eps, gap, gamma, "zero")
    if alpha_star * gap <= gamma - eps:
        return AlphaChoice(alpha_star, alpha_star, eps, gap, gamma, "interior")
    return AlphaChoice((gamma - eps) / gap, alpha_star, eps, gap, gamma, "clipped")


def alpha_order(g0: Estimate, g1: Estimate, gamma: float, delta: float = 0.05,
                L: float | None = None) -> tuple[Estimate, AlphaChoice]:
    """AoBG from independent ZoBG (``g0``) and FoBG (``g1``) batches.

    ``L`` bounds ``||ZoBG sample - its mean||`` in the confidence half-width; ``None`` uses the
    empirical :attr:`Estimate.spread` of ``g0`` (a plug-in: the true bound is unknown), ``0``
    keeps only the variance term. Returns the combined estimate — its rows
    ``alpha g1_i + (1 - alpha) g0_i`` (paired by index, ``min(N0, N1)`` rows; the mean is taken
    from the full batches) — and the :class:`AlphaChoice`."""
    d = int(g0.samples.shape[1])
    if g1.samples.shape[1] != d:
        raise ValueError(f"alpha_order: g0 has {d} columns but g1 has {g1.samples.shape[1]}")
    s0, s1 = g0.var, g1.var
    eps = confidence_halfwidth(s0, g0.n, d, delta, g0.spread if L is None else L)
    mean0, mean1 = g0.grad, g1.grad
    gap = float((mean1 - mean0).norm())
    choice = choose_alpha(s0, s1, gap, eps, gamma)
    a = choice.alpha
    n = min(g0.n, g1.n)
    rows = a * g1.samples[:n] + (1.0 - a) * g0.samples[:n]
    # shift the paired rows so that their mean is exactly alpha g1 + (1 - alpha) g0 of the full batches
    rows = rows - rows.mean(0, keepdim=True) + (a * mean1 + (1.0 - a) * mean0)
    return Estimate(rows), choice


@dataclasses.dataclass
class SmoothedGradient:
    """Result of :func:`smoothed_gradient`: ``grad`` (shape of theta), the estimators used
    (``zo``/``fo`` :class:`Estimate`, ``alpha`` :class:`AlphaChoice` for AoBG), the sampled
    values ``f(theta + w_i)`` and the noise-free value ``f0`` (ZoBG/AoBG)."""

    method: str
    grad: torch.Tensor
    estimate: Estimate
    zo: Estimate | None = None
    fo: Estimate | None = None
    alpha: AlphaChoice | None = None
    values: torch.Tensor | None = None
    f0: float | None = None


def smoothed_gradient(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, sigma: float, n: int,
                      method: str = "aobg", *, gamma: float = 1.0, delta: float = 0.05, L: float | None = None,
                      noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> SmoothedGradient:
    """Estimate ``grad E_w f(theta + w)``, ``w ~ N(0, sigma^2 I)``, with ``n`` samples per batch.

    ``f`` maps a batch ``(M, *theta.shape)`` to ``(M,)`` and must be *batch-separable* (row ``m``
    of the output depends only on row ``m`` of the input) and differentiable with torch autograd
    for ``fobg``/``aobg`` — e.g. a simulator rollout where every row is one environment, so all
    samples run as extra environments in one launch. One call to ``f`` per estimate:

    * ``zobg``: rows ``[theta + w_1 .. theta + w_n, theta]`` (no autograd);
    * ``fobg``: rows ``theta + w_i``; per-sample gradients from one backward pass of
      ``sum_i f_i`` (separability makes the row gradients the per-sample gradients);
    * ``aobg``: rows ``[theta + w'_1 .. theta + w'_n, theta + w_1 .. theta + w_n, theta]``:
      FoBG on the first batch, ZoBG on the second, independent one (backward of the first n
      values only).

    ``noise``: optional standard-normal draws to use (``(n, *theta.shape)``, or ``(2n, ...)``
    for aobg: FoBG rows first), scaled by ``sigma`` here; otherwise drawn with ``generator``.
    :func:`smoothed_gradients` does the same for several ``theta`` in one call of ``f``.
    """
    z = None if noise is None else noise[None]
    return smoothed_gradients(f, theta[None], sigma, n, method, gamma=gamma, delta=delta, L=L, noise=z,
                              generator=generator)[0]


def smoothed_gradients(f: Callable[[torch.Tensor], torch.Tensor], thetas: torch.Tensor, sigma: float, n: int,
                       method: str = "aobg", *, gamma: float = 1.0, delta: float = 0.05, L: float | None = None,
                       noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> list[SmoothedGradient]:
    """:func:`smoothed_gradient` at ``B`` parameter points ``thetas`` (B, *shape) at once: one call
    of ``f`` on all rows (FoBG rows of every point, then ZoBG rows, then the ``B`` noise-free
    rows), so that independent optimisations (seeds) share one simulator launch. ``noise``:
    ``(B, n or 2n, *shape)`` standard normals. Returns one :class:`SmoothedGradient` per point."""
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: must be one of {list(METHODS)}")
    if not sigma > 0:
        raise ValueError(f"sigma = {sigma!r}: must be > 0")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n = {n!r}: must be an integer >= 2 (variances need two samples)")
    thetas = thetas.detach()
    B, shape = int(thetas.shape[0]), tuple(thetas.shape[1:])
    k = 2 * n if method == "aobg" else n
    if noise is None:
        z = torch.randn((B, k) + shape, generator=generator, dtype=thetas.dtype, device=thetas.device)
    else:
        z = noise.to(dtype=thetas.dtype, device=thetas.device)
        if tuple(z.shape) != (B, k) + shape:
            raise ValueError(f"noise.shape = {tuple(z.shape)}: expected {(B, k) + shape}")
    w = sigma * z
    pts = thetas[:, None] + w  # (B, k, *shape)
    n_fo = 0 if method == "zobg" else n
    fo_rows = pts[:, :n_fo].reshape((B * n_fo,) + shape)
    zo_rows = pts[:, k - n:].reshape((B * n,) + shape) if method != "fobg" else pts[:, :0].reshape((0,) + shape)
    base_rows = thetas if method != "fobg" else thetas[:0]
    out = []
    if method == "zobg":
        with torch.no_grad():
            vals = f(torch.cat([zo_rows, base_rows]))
        g = None
    else:
        rows = torch.cat([fo_rows, zo_rows, base_rows]).requires_grad_(True)
        vals = f(rows)
        (g,) = torch.autograd.grad(vals[:B * n_fo].sum(), rows)
        vals = vals.detach()
    vfo = vals[:B * n_fo].reshape(B, n_fo)
    vzo = vals[B * n_fo:B * n_fo + B * n].reshape(B, -1) if method != "fobg" else None
    f0 = vals[B * n_fo + (B * n if method != "fobg" else 0):]
    for b in range(B):
        fo = zo = choice = None
        if method != "zobg":
            fo = first_order(g[b * n_fo:(b + 1) * n_fo])
        if method != "fobg":
            zo = zeroth_order(vzo[b], f0[b], w[b, k - n:].reshape(n, -1), sigma)
        if method == "zobg":
            e, values = zo, vzo[b]
        elif method == "fobg":
            e, values = fo, vfo[b]
        else:
            e, choice = alpha_order(zo, fo, gamma, delta, L)
            values = torch.cat([vfo[b], vzo[b]])
        out.append(SmoothedGradient(method, e.grad.reshape(shape), e, zo=zo, fo=fo, alpha=choice, values=values,
                                    f0=None if method == "fobg" else float(f0[b])))
    return out
