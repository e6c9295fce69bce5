"""Frictional contact between free particles and static geometry, as Warp functions.

Everything here is generated per (scalar type, spatial dimension) by :func:`contact_funcs`.
The terms enter the BDF2 incremental potential ``Phi`` (``bdf2.py``) like the springs and the
damping, so Newton's method, the line search and the convergence tests are unchanged; the
derivation and its limitations are in ``docs/contact.md``.

Geometry (one entry ``k`` of the model's geometry list), described by ``kind``, two vectors
``a``, ``b`` and a scalar ``r``:

* plane (``kind = 0``): unit normal ``a``, offset ``r``; the solid is ``{x : a.x < r}``, the
  signed distance ``d = a.x - r`` (gradient ``a``, Hessian 0);
* box (``kind = 1``): centre ``a``, half extents ``b``, edge radius ``r`` (a box with rounded
  edges and corners: the inner box of half extents ``b - r`` grown by ``r``). With
  ``q = |x - a| - (b - r)`` (per axis) and ``o = max(q, 0)``: outside the inner box
  ``d = |o| - r``, gradient ``n = sign(x - a) o / |o|``, Hessian ``(D - n n^T) / |o|`` (``D``:
  diagonal indicator of the axes with ``q > 0``); inside it ``d = max_i q_i - r`` with the
  gradient of the nearest face and a zero Hessian (the distance has a kink on the medial
  surface, at a depth ``>= r`` below the surface).

Normal contact: a smoothed penalty on the penetration ``s = -d`` with stiffness ``k`` (N/m)
and smoothing width ``w`` (m). The normal force magnitude is ``lambda = k rho(s)`` with the C1
ramp ``rho(s) = 0`` for ``s <= -w/2``, ``(s + w/2)^2 / (2 w)`` for ``|s| < w/2`` and ``s`` for
``s >= w/2``; the energy ``E = k int rho ds`` is C2 (``k (s + w/2)^3 / (6 w)`` in the ramp,
``k (s^2 / 2 + w^2 / 24)`` beyond), its gradient ``-lambda n`` and its Hessian
``k rho'(s) n n^T - lambda C`` (``C`` the Hessian of ``d``). The curvature term ``-lambda C``
is negative semi-definite (convex geometry); for the Newton matrix (``project``) its eigenvalues
are clamped at ``-cap``, a fraction of the particle's inertia ``m / beta`` (``bdf2.py``), which keeps
the matrix positive definite. (Dropping the term altogether makes Newton converge only linearly
where a particle is pressed onto a rounded edge: there ``beta lambda / r`` can nearly cancel
``m`` and the true Phi is almost flat along the edge.)

Friction: lagged, smoothed Coulomb friction (IPC style). At the start of the step (positions
``x``, the lagged state) the normal force ``lambda_0 = lambda(d(x))`` and the tangent projector
``T_0 = I - n_0 n_0^T`` (``n_0 = grad d(x)``) are frozen. With the BDF2 velocity
``v' = kappa (x' - x_hat)`` and its tangential part ``v_T = T_0 v'``, ``y = |v_T|``, the
dissipation potential is ``D = mu lambda_0 f0(y) / kappa`` with IPC's mollifier of width
``eps_v`` (m/s): ``f1(y) = 2 y / eps_v - y^2 / eps_v^2`` for ``y < eps_v``, else 1, and
``f0' = f1``, ``f0(0) = eps_v / 3``. Its gradient w.r.t. ``x'`` is
``mu lambda_0 phi(y) v_T`` with ``phi = f1(y) / y`` (the friction force is ``-mu lambda_0 f1
v_T / y``: Coulomb's ``mu lambda_0`` when sliding faster than ``eps_v``, a viscous
``2 mu lambda_0 / eps_v`` around rest), its Hessian
``kappa mu lambda_0 (phi T_0 + c v_T v_T^T)`` with ``c = phi'(y) / y`` (``-1 / (eps_v^2 y)``
below ``eps_v``, ``-1 / y^3`` above), whose eigenvalues ``f1'(y)`` and ``f1(y) / y`` are >= 0:
it is PSD and needs no projection.
"""

import functools
from types import SimpleNamespace

import warp as wp

from .elements import element_funcs

GEOM_PLANE = 0
GEOM_BOX = 1


@functools.cache
def contact_funcs(dtype, dim: int) -> SimpleNamespace:
    """Warp functions for one scalar type and dimension."""
    el = element_funcs(dtype, dim)
    vec = el.vec
    mat = el.mat

    @wp.func
    def signed_distance(kind: int, a: vec, b: vec, r: dtype, x: vec):
        """``(d, grad d, Hessian of d)`` of one geometry at ``x`` (module doc)."""
        if kind == 0:  # GEOM_PLANE
            return wp.dot(a, x) - r, a, mat()
        sgn = vec()
        q = vec()
        o = vec()
        act = vec()
        for i in range(dim):
            di = x[i] - a[i]
            sgn[i] = dtype(1.0)
            if di < dtype(0.0):
                sgn[i] = dtype(-1.0)
            q[i] = wp.abs(di) - (b[i] - r)
            if q[i] > dtype(0.0):
                o[i] = q[i]
                act[i] = dtype(1.0)
        lo = wp.length(o)
        if lo > dtype(0.0):
            n = wp.cw_mul(sgn, o) / lo
            C = (wp.diag(act) - wp.outer(n, n)) / lo
            return lo - r, n, C
        # inside the inner box: nearest face
        kmax = int(0)
        for i in range(1, dim):
            if q[i] > q[kmax]:
                kmax = i
        n = vec()
        n[kmax] = sgn[kmax]
        return q[kmax] - r, n, mat()

    @wp.func
    def penalty(d: dtype, k: dtype, w: dtype):
        """Smoothed penalty at signed distance ``d``: ``(energy, lambda, d2E/dd2)`` with the
        normal force magnitude ``lambda = -dE/dd >= 0`` (module doc)."""
        s = -d
        half = dtype(0.5) * w
        zero = dtype(0.0)
        if s <= -half:
            return zero, zero, zero
        if s < half:
            t = s + half
            return k * t * t * t / (dtype(6.0) * w), k * t * t / (dtype(2.0) * w), k * t / w
        return k * (dtype(0.5) * s * s + w * w / dtype(24.0)), k * s, k

    @wp.func
    def normal_terms(d: dtype, n: vec, C: mat, k: dtype, w: dtype, project: int, cap: dtype):
        """Energy, gradient and Hessian (w.r.t. the particle) of the penalty. With ``project``
        the negative curvature term ``-lambda C`` is kept only up to ``cap`` (N/m): it becomes
        ``-min(lambda, cap / tr C) C``, whose eigenvalues are >= ``-cap``."""
        e, lam, e2 = penalty(d, k, w)
        hess = e2 * wp.outer(n, n)
        if project == 0:
            hess = hess - lam * C
        else:
            tr = wp.trace(C)
            if tr > dtype(0.0):
                hess = hess - wp.min(lam, cap / tr) * C
        return e, -lam * n, hess

    @wp.func
    def friction_factors(vt: vec, eps_v: dtype):
        """``(f0(y), phi(y) = f1(y) / y, c = phi'(y) / y)`` at ``y = |v_T|`` (module doc);
        ``c`` is returned as 0 at ``y = 0``, where it multiplies ``v_T v_T^T = 0``."""
        y = wp.length(vt)
        if y < eps_v:
            f0 = y * y * (dtype(1.0) / eps_v - y / (dtype(3.0) * eps_v * eps_v)) + eps_v / dtype(3.0)
            phi = dtype(2.0) / eps_v - y / (eps_v * eps_v)
            c = dtype(0.0)
            if y > dtype(0.0):
                c = dtype(-1.0) / (eps_v * eps_v * y)
            return f0, phi, c
        return y, dtype(1.0) / y, dtype(-1.0) / (y * y * y)

    @wp.func
    def friction_terms(vel: vec, n0: vec, mu_lam: dtype, eps_v: dtype, kappa: dtype):
        """Dissipation potential, gradient and Hessian (w.r.t. the particle's end-of-step
        position) of lagged friction with frozen normal ``n0`` and ``mu_lam = mu lambda_0``;
        ``vel`` is the BDF2 velocity ``kappa (x' - x_hat)``."""
        vt = vel - wp.dot(n0, vel) * n0
        f0, phi, c = friction_factors(vt, eps_v)
        T0 = wp.identity(n=dim, dtype=dtype) - wp.outer(n0, n0)
        energy = mu_lam * f0 / kappa
        grad = (mu_lam * phi) * vt
        hess = (kappa * mu_lam) * (phi * T0 + c * wp.outer(vt, vt))
        return energy, grad, hess

    @wp.func
    def friction_lag_jacobian(vel: vec, n0: vec, C0: mat, mu: dtype, lam0: dtype, e2_0: dtype, eps_v: dtype):
        """``J0 = d(grad D)/dx`` through the lagged quantities at the start-of-step position
        ``x``: ``lambda_0`` (``d lambda_0 / dx = -E''(d_0) n_0``) and ``T_0`` (``d n_0 / dx = C_0``):
        ``J0 = -mu E''(d_0) phi v_T n_0^T - mu lambda_0 ((n_0.v') Q + phi n_0 v'^T) C_0`` with
        ``Q = phi I + c v_T v_T^T``. (The dependence through ``x_hat`` is separate.)"""
        vt = vel - wp.dot(n0, vel) * n0
        f0, phi, c = friction_factors(vt, eps_v)
        Q = phi * wp.identity(n=dim, dtype=dtype) + c * wp.outer(vt, vt)
        J = (-mu * e2_0 * phi) * wp.outer(vt, n0)
        J = J - (mu * lam0) * ((wp.dot(n0, vel) * Q + phi * wp.outer(n0, vel)) * C0)
        return J

    return SimpleNamespace(vec=vec, mat=mat, signed_distance=signed_distance, penalty=penalty,
                           normal_terms=normal_terms, friction_factors=friction_factors,
                           friction_terms=friction_terms, friction_lag_jacobian=friction_lag_jacobian)
