"""Energy, gradient and Hessian of the force elements, as Warp functions.

Everything here is generated per (scalar type, spatial dimension) by :func:`element_funcs`, so
the same source serves float32/float64 and 2D/3D. Conventions (per element):

* spring between ``x_i`` and ``x_j`` with stiffness ``k`` (N/m) and rest length ``L`` (m),
  ``d = x_i - x_j``, ``l = |d|``, ``n = d / l``:
  ``U = k/2 (l - L)^2``; ``dU/dx_i = k (l - L) n = -dU/dx_j``;
  ``d2U/dx_i2 = K = k [n n^T + (1 - L/l)(I - n n^T)]``, ``d2U/dx_i dx_j = -K``.
  A *cable* is the same for ``l > L`` and exactly zero for ``l <= L`` (tension only; the energy
  is C1 at the switch, the Hessian jumps).
* With ``project=True`` the transverse coefficient ``1 - L/l`` is clamped at 0, which makes
  ``K`` positive semi-definite for compressed bilateral springs (projected Newton). The exact
  Hessian (``project=False``) is used for derivatives.
* stretch-rate damping with coefficient ``c`` (N·s/m) along a fixed direction ``u`` (the spring
  direction at the start of the step, so the damping force derives from a quadratic
  dissipation potential inside the step): ``D = c/(2 kappa) (u . (v_i - v_j))^2`` where
  ``v = kappa (x - x_hat)`` is the BDF2 velocity (see ``bdf2.py``).
"""


import functools
from types import SimpleNamespace

import warp as wp


@functools.cache
def element_funcs(dtype, dim: int) -> SimpleNamespace:
    """Warp functions for one scalar type and dimension, plus the vector/matrix types."""
    vec = wp.types.vector(length=dim, dtype=dtype)
    mat = wp.types.matrix(shape=(dim, dim), dtype=dtype)

    @wp.func
    def spring_terms(xi: vec, xj: vec, k: dtype, rest: dtype, cable: int, project: int):
        """Energy U, gradient w.r.t. x_i and Hessian block K of one spring (see module doc)."""
        d = xi - xj
        l = wp.length(d)
        zero = dtype(0.0)
        if cable != 0 and l <= rest:
            return zero, vec(), mat()
        ls = wp.max(l, dtype(1.0e-30))
        n = d / ls
        stretch = l - rest
        energy = dtype(0.5) * k * stretch * stretch
        grad = (k * stretch) * n
        nn = wp.outer(n, n)
        ct = dtype(1.0) - rest / ls
        if project != 0 and ct < zero:
            ct = zero
        hess = k * (nn + ct * (wp.identity(n=dim, dtype=dtype) - nn))
        return energy, grad, hess

    @wp.func
    def damping_terms(rel_vel: vec, u: vec, c: dtype, kappa: dtype):
        """Dissipation potential D, its gradient w.r.t. x_i and Hessian block for stretch-rate
        damping along unit ``u``; ``rel_vel = v_i - v_j`` with ``dv_i/dx_i = kappa I``."""
        s = wp.dot(u, rel_vel)
        energy = c * s * s / (dtype(2.0) * kappa)
        grad = (c * s) * u
        hess = (c * kappa) * wp.outer(u, u)
        return energy, grad, hess

    @wp.func
    def damping_direction_jacobian(rel_vel: vec, d0: vec, c: dtype):
        """``P = d(grad_i D)/d d0`` where the damping direction is ``u = d0 / |d0|`` and
        ``d0 = x_i - x_j`` at the start of the step: ``P = c (u rel_vel^T + s I)(I - u u^T) / |d0|``
        with ``s = u . rel_vel``."""
        l0 = wp.length(d0)
        u = d0 / l0
        s = wp.dot(u, rel_vel)
        eye = wp.identity(n=dim, dtype=dtype)
        return (c / l0) * ((wp.outer(u, rel_vel) + s * eye) * (eye - wp.outer(u, u)))

    return SimpleNamespace(vec=vec, mat=mat, spring_terms=spring_terms, damping_terms=damping_terms,
                           damping_direction_jacobian=damping_direction_jacobian)


@functools.cache
def spring_eval_kernel(dtype, dim: int):
    """Kernel evaluating single springs in batch (used by tests and diagnostics).

    Inputs: ``xi, xj`` (S,) vec, ``k, rest`` (S,) scalar, ``cable`` (S,) int, ``project`` int.
    Outputs: ``energy`` (S,), ``grad_i`` (S,) vec, ``hess`` (S,) mat.
    """
    f = element_funcs(dtype, dim)

    @wp.kernel(enable_backward=False, module="unique")
    def spring_eval(
        xi: wp.array(dtype=f.vec),
        xj: wp.array(dtype=f.vec),
        k: wp.array(dtype=dtype),
        rest: wp.array(dtype=dtype),
        cable: wp.array(dtype=int),
        project: int,
        energy: wp.array(dtype=dtype),
        grad_i: wp.array(dtype=f.vec),
        hess: wp.array(dtype=f.mat),
    ):
        t = wp.tid()
        u, g, h = f.spring_terms(xi[t], xj[t], k[t], rest[t], cable[t], project)
        energy[t] = u
        grad_i[t] = g
        hess[t] = h

    return spring_eval
