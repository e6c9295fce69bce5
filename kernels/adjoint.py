"""Exact derivatives of one BDF2 step by the implicit function theorem.

Notation of ``bdf2.py``: the free positions ``x'`` solve ``R(x'; q) = grad Phi = 0`` with

``R_f = m_f (x'_f - y_f) - beta m_f g + beta sum_s sigma_sf (G_s + Gd_s) + beta (Gc_f + Gf_f)``

(``G_s = dU_s/dx'_i`` spring, ``Gd_s = c s u`` damping, ``sigma = +1`` at end ``i``, ``-1`` at ``j``;
``Gc_f`` the contact-penalty gradient, a function of ``x'_f`` only, and ``Gf_f`` the lagged
friction gradient ``mu lambda_0 phi(|v_T|) v_T``, ``v_T = T_0 kappa (x'_f - x_hat_f)``, see
``contact.py``) and ``q`` the step inputs: the previous state (through ``y``, ``x_hat``, the
damping direction ``u`` taken at ``x`` and the friction's normal force ``lambda_0`` and tangent
projector ``T_0`` taken at ``x``), the handle positions ``x'_h = x_h + h clip(a)`` and velocities
``v'_h = clip(a)``, stiffness and mass. With the exact Hessian ``H = dR/dx'`` at the converged
solution, ``dx'/dq = -H^-1 dR/dq``. The step outputs are ``x'``, ``v'_f = kappa (x'_f - x_hat_f)``,
``x_prev' = x``, ``v_prev' = v``, and the handle kinematics.

* :func:`bdf2_vjp`: reverse mode. ``lambda = H^-1 (xbar'_f + kappa vbar'_f)``, then
  ``qbar -= (dR/dq)^T lambda`` plus the explicit terms; one factorisation and one solve per env.
  Adjoints are *accumulated* into the ``adj_*`` outputs.
* :func:`bdf2_jacobian`: forward mode into dense per-env matrices ``A = ds'/ds``, ``B = ds'/da`` on
  the Markov state ``s = [x_f, v_f, x_prev_f, v_prev_f, x_h]`` (free particles' positions,
  velocities and BDF2 history, then handle positions; each block flattened particle-major).
  Handle velocities and handle history are not part of ``s``: they never influence later steps.
  One factorisation and the inverse ``W = H^-1`` per env (about ``N^2 B`` multiply-adds, into a
  scratch): the inertial part of ``dR/dq`` is ``-M`` times constants, so most of ``A`` is ``W M``
  scaled; the other terms of ``dR/dq`` (handle springs, damping, friction) are sparse
  ``dim x dim`` blocks, each answered by a product with ``dim`` columns of ``W``. The kernel
  writes every entry of ``A`` and ``B``, zeros included, so the caller need not clear them
  (writing the output is a large part of the cost; clearing it with a bulk memset first measured
  no cheaper): the rows of ``x'_f``/``v'_f`` once and then the few entries the sparse terms
  update, the other rows once.

The clip of the action has derivative 1 strictly inside the limits and 0 outside (and on an axis
whose limit is 0). Both kernels set ``ok[e] = 0`` when the exact Hessian is not positive definite
at the solution (the step is then not differentiable by this method; the Jacobians are zero there).

The Jacobian kernel's hot loops with run-time trip counts are ``while`` loops, which Warp's CPU
backend compiles to tighter code than ``for ... in range(n)`` (see ``linalg.py``).
"""

import functools
from types import SimpleNamespace

import warp as wp

from .bdf2 import bdf2_kernels
from .contact import contact_funcs
from .elements import element_funcs
from .linalg import band_funcs, band_inverse_func


def adjoint_kernels(dtype, dim: int, contact: bool = True, band: int | None = None) -> SimpleNamespace:
    """The VJP and Jacobian kernels (module doc) for one scalar type, spatial dimension and contact
    flag; ``band`` as in :func:`~.bdf2.bdf2_kernels` (the factorisation and solves specialised to
    that half-bandwidth, bitwise the same results)."""
    return _adjoint_kernels(dtype, int(dim), bool(contact), None if band is None else int(band))


@functools.cache
def _adjoint_kernels(dtype, dim: int, contact: bool, band: int | None) -> SimpleNamespace:
    """:func:`adjoint_kernels`, cached per normalised arguments."""
    el = element_funcs(dtype, dim)
    ct = contact_funcs(dtype, dim)
    la = band_funcs(dtype, band)
    band_inverse = band_inverse_func(dtype, dim)
    bk = bdf2_kernels(dtype, dim, contact)
    vec = el.vec
    mat = el.mat
    # the argument structs of data.py, shared with the step kernels
    ModelData = bk.ModelData
    StateData = bk.StateData
    NewtonScratch = bk.NewtonScratch

    @wp.func
    def step_coefficients(h: dtype):
        """``beta = 4 h^2 / 9``, ``kappa = 3 / (2 h)``, ``4/3``, ``1/3`` and ``2 h / 3`` of the BDF2
        step (``bdf2.py``)."""
        c43 = dtype(4.0) / dtype(3.0)
        c13 = dtype(1.0) / dtype(3.0)
        return dtype(4.0) * h * h / dtype(9.0), dtype(1.5) / h, c43, c13, dtype(2.0) * h / dtype(3.0)

    @wp.func
    def clip_mask(a: vec, lim: vec):
        """Derivative of the per-axis clip: 1 strictly inside the limits, else 0."""
        mk = vec()
        for d in range(dim):
            if a[d] > -lim[d] and a[d] < lim[d]:
                mk[d] = dtype(1.0)
        return mk

    @wp.func
    def damping_active(x_in: wp.array2d(dtype=vec), e: int, pi: int, pj: int, c: dtype, L: dtype, cable: int):
        """Whether a spring's damper acts in this step: damped, taut if a cable, and of non-zero
        length at the start of the step (where its direction is taken)."""
        if not (c > dtype(0.0)):
            return False
        l0 = wp.length(x_in[e, pi] - x_in[e, pj])
        return (cable == 0 or l0 > L) and l0 > dtype(0.0)

    @wp.func
    def end_velocity(e: int, p: int, f: int, xq: wp.array2d(dtype=vec), x_in: wp.array2d(dtype=vec),
                     x_hat: wp.array2d(dtype=dtype), v_handle: wp.array2d(dtype=vec), kappa: dtype):
        """BDF2 velocity at the end of the step of a free particle (``x_hat`` an offset from its
        start-of-step position ``x_in``), or the handle velocity."""
        if f >= 0:
            return bk.step_velocity(xq[e, p], x_in[e, p], bk.get_vec(x_hat, e, f), kappa)
        return v_handle[e, p]

    @wp.func
    def damper_blocks(e: int, state_in: StateData, state_out: StateData, x_hat: wp.array2d(dtype=dtype), pi: int,
                      pj: int, fi: int, fj: int, c: dtype, kappa: dtype):
        """``(u u^T, P)`` of an acting damper between particles ``pi`` and ``pj`` (free indices
        ``fi``/``fj``): its direction ``u`` at the start of the step and ``P = d(grad_i D)/d d0``
        (``elements.damping_direction_jacobian``) at the end velocities of the step."""
        d0 = state_in.x[e, pi] - state_in.x[e, pj]
        ud = d0 / wp.length(d0)
        vi = end_velocity(e, pi, fi, state_out.x, state_in.x, x_hat, state_out.v, kappa)
        vj = end_velocity(e, pj, fj, state_out.x, state_in.x, x_hat, state_out.v, kappa)
        P = el.damping_direction_jacobian(vi - vj, d0, c)
        return wp.outer(ud, ud), P

    @wp.func
    def factor_exact(e: int, model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
                     state_in: StateData, state_out: StateData, scratch: NewtonScratch, ok: wp.array(dtype=int)):
        """Exact (unprojected) Hessian at the converged step ``state_in -> state_out`` (its ``x``
        and ``v``), factored in place in ``scratch.H``; ``ok[e]`` and the return value are 1 on
        success, else 0. Leaves the step's ``y_t`` and ``x_hat`` in ``scratch``."""
        bk.store_targets(e, model, state_in, scratch)
        bk.store_increment(e, model, state_out.x, state_in.x, scratch)
        bk.assemble(e, model, mass, stiffness, state_out.x, state_in.x, state_out.v, 0, scratch)
        good = la.band_cholesky(scratch.H, e, model.num_dofs, model.band)
        ok[e] = good
        return good

    @wp.func
    def friction_partials(e: int, model: ModelData, p: int, f: int, state_in: StateData, state_out: StateData,
                          x_hat: wp.array2d(dtype=dtype), kappa: dtype):
        """Friction partials of free particle ``p`` (free index ``f``) in the step
        ``state_in -> state_out``, summed over the geometry: ``Kv = dGf/dx'`` (``= -dGf/dx_hat``)
        and ``J0 = dGf/dx`` through the lagged normal force and tangent plane (``contact.py``);
        ``Gf`` is the friction part of the particle's residual (over beta)."""
        x0 = state_in.x[e, p]
        vel = bk.step_velocity(state_out.x[e, p], x0, bk.get_vec(x_hat, e, f), kappa)
        Kv = mat()
        J0 = mat()
        width = model.contact_width
        eps_v = model.contact_eps_v
        half = dtype(0.5) * width
        for k in range(model.geo_kind.shape[0]):
            mu = model.friction[e, k]
            if mu > dtype(0.0):
                d0, n0, C0 = ct.signed_distance(model.geo_kind[k], model.geo_a[k], model.geo_b[k], model.geo_r[k], x0)
                if d0 < half:
                    e0, lam0, e20 = ct.penalty(d0, model.contact_stiffness[e, k], width)
                    uf, gf, Kf = ct.friction_terms(vel, n0, mu * lam0, eps_v, kappa)
                    Kv += Kf
                    J0 += ct.friction_lag_jacobian(vel, n0, C0, mu, lam0, e20, eps_v)
        return Kv, J0

    @wp.func
    def has_friction(contact_mu: wp.array2d(dtype=dtype), e: int):
        for k in range(contact_mu.shape[1]):
            if contact_mu[e, k] > dtype(0.0):
                return 1
        return 0

    @wp.kernel(enable_backward=False, module="unique")
    def bdf2_vjp(
        model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
        # the converged forward step (of its outputs, x and v are read)
        state_in: StateData, action: wp.array2d(dtype=vec), state_out: StateData,
        # adjoints of the outputs
        adj_out: StateData,
        scratch: NewtonScratch,
        # (E, n) scratch: adjoints of the handles' x' and v'
        adj_xh: wp.array2d(dtype=vec),
        adj_vh: wp.array2d(dtype=vec),
        # accumulated adjoints of the inputs
        adj_in: StateData,
        adj_action: wp.array2d(dtype=vec),
        adj_stiffness: wp.array2d(dtype=dtype),
        adj_mass: wp.array2d(dtype=dtype),
        ok: wp.array(dtype=int),
    ):
        e = wp.tid()
        if factor_exact(e, model, mass, stiffness, state_in, state_out, scratch, ok) == 0:
            return
        h = model.dt
        beta, kappa, c43, c13, c23h = step_coefficients(h)
        free_index = model.free_index
        n = free_index.shape[0]
        cable = model.is_cable
        lam = scratch.dx  # the adjoint solve
        # lambda = H^-1 (xbar'_f + kappa vbar'_f); explicit terms of v'_f = kappa (x'_f - x_hat_f)
        for p in range(n):
            f = free_index[p]
            if f >= 0:
                w = adj_out.x[e, p] + kappa * adj_out.v[e, p]
                for d in range(dim):
                    lam[f * dim + d, e] = w[d]
                av = adj_out.v[e, p]
                adj_in.x[e, p] = adj_in.x[e, p] - (kappa * c43) * av
                adj_in.x_prev[e, p] = adj_in.x_prev[e, p] + (kappa * c13) * av
            else:
                adj_xh[e, p] = adj_out.x[e, p]
                adj_vh[e, p] = adj_out.v[e, p]
            # history shift x_prev' = x, v_prev' = v
            adj_in.x[e, p] = adj_in.x[e, p] + adj_out.x_prev[e, p]
            adj_in.v[e, p] = adj_in.v[e, p] + adj_out.v_prev[e, p]
        la.band_solve(scratch.H, e, model.num_dofs, model.band, lam, lam)
        # inertia and gravity: ybar = m lambda; mbar = -lambda . ((x' - y) - beta g)
        for p in range(n):
            f = free_index[p]
            if f >= 0:
                m = mass[e, p]
                lf = bk.get_vec(lam, e, f)
                yb = m * lf
                adj_in.x[e, p] = adj_in.x[e, p] + c43 * yb
                adj_in.x_prev[e, p] = adj_in.x_prev[e, p] - c13 * yb
                adj_in.v[e, p] = adj_in.v[e, p] + (c23h * c43) * yb
                adj_in.v_prev[e, p] = adj_in.v_prev[e, p] - (c23h * c13) * yb
                r = (state_out.x[e, p] - state_in.x[e, p]) - bk.get_vec(scratch.y_t, e, f) - beta * model.gravity
                adj_mass[e, p] = adj_mass[e, p] - wp.dot(lf, r)
        # springs and dampers
        for s in range(model.spring_i.shape[0]):
            pi = model.spring_i[s]
            pj = model.spring_j[s]
            fi = free_index[pi]
            fj = free_index[pj]
            li = vec()
            lj = vec()
            if fi >= 0:
                li = bk.get_vec(lam, e, fi)
            if fj >= 0:
                lj = bk.get_vec(lam, e, fj)
            k = stiffness[e, s]
            L = model.rest_length[e, s]
            u, G, K = el.spring_terms(state_out.x[e, pi], state_out.x[e, pj], k, L, cable[s], 0)
            # rho = -lambda is the adjoint of R; R_i += beta G, R_j -= beta G
            adj_stiffness[e, s] = adj_stiffness[e, s] - beta * wp.dot(li - lj, G) / k
            # handle ends: dR_free/dx'_h = -beta K
            if fi < 0:
                adj_xh[e, pi] = adj_xh[e, pi] + beta * (K * lj)
            if fj < 0:
                adj_xh[e, pj] = adj_xh[e, pj] + beta * (K * li)
            c = model.damping[s]
            if damping_active(state_in.x, e, pi, pj, c, L, cable[s]):
                uu, P = damper_blocks(e, state_in, state_out, scratch.x_hat, pi, pj, fi, fj, c, kappa)
                rd = -beta * (li - lj)  # adjoint of Gd
                # x_hat dependence: dGd/dx_hat_i = -c kappa uu, dGd/dx_hat_j = +c kappa uu
                if fi >= 0:
                    xhb = -(c * kappa) * (uu * rd)
                    adj_in.x[e, pi] = adj_in.x[e, pi] + c43 * xhb
                    adj_in.x_prev[e, pi] = adj_in.x_prev[e, pi] - c13 * xhb
                else:
                    adj_vh[e, pi] = adj_vh[e, pi] + c * (uu * rd)
                if fj >= 0:
                    xhb = (c * kappa) * (uu * rd)
                    adj_in.x[e, pj] = adj_in.x[e, pj] + c43 * xhb
                    adj_in.x_prev[e, pj] = adj_in.x_prev[e, pj] - c13 * xhb
                else:
                    adj_vh[e, pj] = adj_vh[e, pj] - c * (uu * rd)
                # direction u from x at the start of the step
                db = wp.transpose(P) * rd
                adj_in.x[e, pi] = adj_in.x[e, pi] + db
                adj_in.x[e, pj] = adj_in.x[e, pj] - db
        # lagged friction: Gf(x', x_hat, x) with x_hat = 4/3 x - 1/3 xp (normal contact depends on x'
        # only and has no input partials)
        if has_friction(model.friction, e) != 0:
            for p in range(n):
                f = free_index[p]
                if f >= 0:
                    Kv, J0 = friction_partials(e, model, p, f, state_in, state_out, scratch.x_hat, kappa)
                    rd = -beta * bk.get_vec(lam, e, f)
                    xhb = -(Kv * rd)  # (dGf/dx_hat)^T rd, Kv symmetric
                    adj_in.x[e, p] = adj_in.x[e, p] + c43 * xhb + wp.transpose(J0) * rd
                    adj_in.x_prev[e, p] = adj_in.x_prev[e, p] - c13 * xhb
        # handle kinematics x'_h = x_h + h clip(a), v'_h = clip(a)
        for kk in range(model.handle_particle.shape[0]):
            p = model.handle_particle[kk]
            mk = clip_mask(action[e, kk], model.velocity_limit[kk])
            axh = adj_xh[e, p]
            adj_in.x[e, p] = adj_in.x[e, p] + axh
            adj_action[e, kk] = adj_action[e, kk] + wp.cw_mul(mk, h * axh + adj_vh[e, p])

    @wp.func
    def pos_column(N: int, f: int, kh: int):
        """Column of a particle's position in the Markov state (free block or handle block)."""
        if f >= 0:
            return f * dim
        return 4 * N + kh * dim

    @wp.func
    def zero_row(M: wp.array3d(dtype=dtype), e: int, row: int, c0: int, c1: int):
        """``M[e, row, c0:c1] = 0``."""
        c = c0
        while c < c1:
            M[e, row, c] = dtype(0.0)
            c += 1

    @wp.func
    def w_block(W: wp.array2d(dtype=dtype), e: int, N: int, i: int, f: int):
        """Row ``i`` of the ``dim`` columns of ``W`` (``(N * N, E)``, ``band_inverse``) that
        belong to free particle ``f``."""
        r = vec()
        for d in range(dim):
            r[d] = W[i * N + f * dim + d, e]
        return r

    @wp.func
    def add_solved_block(W: wp.array2d(dtype=dtype), e: int, N: int, kappa: dtype, M: wp.array3d(dtype=dtype),
                         fa: int, fb: int, col: int, K: mat, scale: vec):
        """Response of the free rows to one block of ``dR/dq``: ``K diag(scale)`` in the residual
        rows of free particle ``fa`` and its negative in those of ``fb`` (a negative index: no such
        rows), columns ``col .. col + dim - 1``. As ``dx'_f/dq = -W dR/dq`` (``W = H^-1``), the
        position rows ``0..N-1`` of ``M`` get ``-(W_fa - W_fb) K diag(scale)`` added (``W_f``: the
        columns of ``W`` of particle ``f``) and the velocity rows ``N..2N-1`` kappa times that."""
        i = int(0)
        while i < N:
            wd = vec()
            if fa >= 0:
                wd = w_block(W, e, N, i, fa)
            if fb >= 0:
                wd = wd - w_block(W, e, N, i, fb)
            t = wp.cw_mul(wp.transpose(K) * wd, scale)
            for b in range(dim):
                M[e, i, col + b] = M[e, i, col + b] - t[b]
                M[e, N + i, col + b] = M[e, N + i, col + b] - kappa * t[b]
            i += 1

    @wp.func
    def add_handle_coupling(W: wp.array2d(dtype=dtype), e: int, N: int, kappa: dtype, beta: dtype, h: dtype,
                            A: wp.array3d(dtype=dtype), Bm: wp.array3d(dtype=dtype), f: int, kh: int, K: mat,
                            mk: vec):
        """Response to a spring (stiffness block ``K``) between free particle ``f`` and handle
        ``kh``: ``dR_f/dx'_h = -beta K`` with ``x'_h = x_h + h clip(a_kh)``, so the columns of
        ``x_h`` in ``A`` get ``beta W_f K`` and those of ``a_kh`` in ``B`` that times
        ``h clip'(a_kh)`` (``mk``); position rows, the velocity rows kappa times that."""
        ca = 4 * N + kh * dim
        cb = kh * dim
        i = int(0)
        while i < N:
            t = beta * (wp.transpose(K) * w_block(W, e, N, i, f))
            tb = h * wp.cw_mul(t, mk)
            for b in range(dim):
                A[e, i, ca + b] = A[e, i, ca + b] + t[b]
                A[e, N + i, ca + b] = A[e, N + i, ca + b] + kappa * t[b]
                Bm[e, i, cb + b] = Bm[e, i, cb + b] + tb[b]
                Bm[e, N + i, cb + b] = Bm[e, N + i, cb + b] + kappa * tb[b]
            i += 1

    @wp.kernel(enable_backward=False, module="unique")
    def bdf2_jacobian(
        model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
        # the converged forward step (of its outputs, x and v are read)
        state_in: StateData, action: wp.array2d(dtype=vec), state_out: StateData,
        scratch: NewtonScratch,
        # (N * N, E) scratch: the inverse Hessian
        W: wp.array2d(dtype=dtype),
        # outputs: the Jacobians (E, ns, ns) and (E, ns, na); ok (E,)
        A: wp.array3d(dtype=dtype), Bm: wp.array3d(dtype=dtype),
        ok: wp.array(dtype=int),
    ):
        e = wp.tid()
        ns = A.shape[1]
        na = Bm.shape[2]
        if factor_exact(e, model, mass, stiffness, state_in, state_out, scratch, ok) == 0:
            # not differentiable by this method: zeros rather than whatever the buffers held
            for r in range(ns):
                zero_row(A, e, r, 0, ns)
                zero_row(Bm, e, r, 0, na)
            return
        N = model.num_dofs
        band_inverse(scratch.H, e, N, model.band, W)
        h = model.dt
        beta, kappa, c43, c13, c23h = step_coefficients(h)
        one = vec()
        for d in range(dim):
            one[d] = dtype(1.0)
        free_index = model.free_index
        n = free_index.shape[0]
        handle_index = model.handle_index
        velocity_limit = model.velocity_limit
        cable = model.is_cable
        # Rows of x'_f (0..N-1) and v'_f (N..2N-1), inertial part: dR/dy = -M with
        # y = 4/3 x - 1/3 xp + 2h/3 (4/3 v - 1/3 vp), so the columns of x, v, xp, vp are multiples of
        # W M; v'_f = kappa (x'_f - x_hat_f) with x_hat = 4/3 x - 1/3 xp. The handle and action
        # columns start at zero.
        i = int(0)
        while i < N:
            p = int(0)
            while p < n:
                f = free_index[p]
                if f >= 0:
                    wm = mass[e, p] * w_block(W, e, N, i, f)
                    x0 = c43 * wm
                    x1 = c23h * x0
                    x2 = -c13 * wm
                    x3 = c23h * x2
                    for d in range(dim):
                        j = f * dim + d
                        A[e, i, j] = x0[d]
                        A[e, i, N + j] = x1[d]
                        A[e, i, 2 * N + j] = x2[d]
                        A[e, i, 3 * N + j] = x3[d]
                        A[e, N + i, j] = kappa * x0[d]
                        A[e, N + i, N + j] = kappa * x1[d]
                        A[e, N + i, 2 * N + j] = kappa * x2[d]
                        A[e, N + i, 3 * N + j] = kappa * x3[d]
                p += 1
            # v'_f's explicit dependence on x_hat
            A[e, N + i, i] = A[e, N + i, i] - kappa * c43
            A[e, N + i, 2 * N + i] = A[e, N + i, 2 * N + i] + kappa * c13
            k = int(0)
            while k < na:  # the handle columns of A are as many as the action columns
                A[e, i, 4 * N + k] = dtype(0.0)
                A[e, N + i, 4 * N + k] = dtype(0.0)
                Bm[e, i, k] = dtype(0.0)
                Bm[e, N + i, k] = dtype(0.0)
                k += 1
            i += 1
        # ... plus the response -W dR/dq to the other, sparse, terms of dR/dq: handle couplings,
        # damping and friction
        for s in range(model.spring_i.shape[0]):
            pi = model.spring_i[s]
            pj = model.spring_j[s]
            fi = free_index[pi]
            fj = free_index[pj]
            if fi < 0 and fj < 0:
                continue
            L = model.rest_length[e, s]
            if fi < 0 or fj < 0:
                u, G, K = el.spring_terms(state_out.x[e, pi], state_out.x[e, pj], stiffness[e, s], L, cable[s], 0)
                if fi < 0:
                    kh = handle_index[pi]
                    add_handle_coupling(W, e, N, kappa, beta, h, A, Bm, fj, kh, K,
                                        clip_mask(action[e, kh], velocity_limit[kh]))
                else:
                    kh = handle_index[pj]
                    add_handle_coupling(W, e, N, kappa, beta, h, A, Bm, fi, kh, K,
                                        clip_mask(action[e, kh], velocity_limit[kh]))
            c = model.damping[s]
            if damping_active(state_in.x, e, pi, pj, c, L, cable[s]):
                uu, P = damper_blocks(e, state_in, state_out, scratch.x_hat, pi, pj, fi, fj, c, kappa)
                # R_i += beta Gd (if i free), R_j -= beta Gd (if j free): rows fi (+) and fj (-).
                # Gd depends on the x_hat of free ends (x_hat = 4/3 x - 1/3 xp), on the velocity
                # of handle ends and, through its direction, on the positions at the start of the step
                cx = beta * c * kappa
                if fi >= 0:
                    add_solved_block(W, e, N, kappa, A, fi, fj, fi * dim, uu, -(cx * c43) * one)
                    add_solved_block(W, e, N, kappa, A, fi, fj, 2 * N + fi * dim, uu, (cx * c13) * one)
                else:
                    kh = handle_index[pi]
                    add_solved_block(W, e, N, kappa, Bm, fi, fj, kh * dim, uu,
                                     (beta * c) * clip_mask(action[e, kh], velocity_limit[kh]))
                if fj >= 0:
                    add_solved_block(W, e, N, kappa, A, fi, fj, fj * dim, uu, (cx * c43) * one)
                    add_solved_block(W, e, N, kappa, A, fi, fj, 2 * N + fj * dim, uu, -(cx * c13) * one)
                else:
                    kh = handle_index[pj]
                    add_solved_block(W, e, N, kappa, Bm, fi, fj, kh * dim, uu,
                                     -(beta * c) * clip_mask(action[e, kh], velocity_limit[kh]))
                add_solved_block(W, e, N, kappa, A, fi, fj, pos_column(N, fi, handle_index[pi]), P, beta * one)
                add_solved_block(W, e, N, kappa, A, fi, fj, pos_column(N, fj, handle_index[pj]), P, -beta * one)
        # lagged friction of the free particles: R_f += beta Gf(x', x_hat, x), x_hat = 4/3 x - 1/3 xp
        if has_friction(model.friction, e) != 0:
            for p in range(n):
                f = free_index[p]
                if f >= 0:
                    Kv, J0 = friction_partials(e, model, p, f, state_in, state_out, scratch.x_hat, kappa)
                    add_solved_block(W, e, N, kappa, A, f, -1, f * dim, J0 - c43 * Kv, beta * one)
                    add_solved_block(W, e, N, kappa, A, f, -1, 2 * N + f * dim, Kv, (beta * c13) * one)
        # x_prev'_f = x_f, v_prev'_f = v_f, x'_h = x_h + h clip(a)
        r = 2 * N
        while r < ns:
            zero_row(A, e, r, 0, ns)
            zero_row(Bm, e, r, 0, na)
            if r < 4 * N:
                A[e, r, r - 2 * N] = dtype(1.0)
            else:
                A[e, r, r] = dtype(1.0)
            r += 1
        for kk in range(model.handle_particle.shape[0]):
            mk = clip_mask(action[e, kk], velocity_limit[kk])
            for d in range(dim):
                Bm[e, 4 * N + kk * dim + d, kk * dim + d] = h * mk[d]

    return SimpleNamespace(ModelData=ModelData, StateData=StateData, NewtonScratch=NewtonScratch, bdf2_vjp=bdf2_vjp,
                           bdf2_jacobian=bdf2_jacobian)
