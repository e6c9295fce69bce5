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
* :func:`bdf2_jacobian`: forward mode into dense per-env matrices ``A = ds'/ds``, ``B = ds'/da`` (which
  the caller zeroes before the launch, a bulk memset) on
  the Markov state ``s = [x_f, v_f, x_prev_f, v_prev_f, x_h]`` (free particles' positions,
  velocities and BDF2 history, then handle positions; each block flattened particle-major).
  Handle velocities and handle history are not part of ``s``: they never influence later steps.
  One factorisation and ``ns + na`` solves per env. ``has_lagged`` (damping or friction present)
  enables the columns of the previous free positions ``x_f``/``x_prev_f`` beyond the inertial ones.

The clip of the action has derivative 1 strictly inside the limits and 0 outside (and on an axis
whose limit is 0). Both kernels set ``ok[e] = 0`` when the exact Hessian is not positive definite
at the solution (the step is then not differentiable by this method).
"""

import functools
from types import SimpleNamespace

import warp as wp

from .bdf2 import bdf2_kernels
from .contact import contact_funcs
from .elements import element_funcs
from .linalg import band_funcs


@functools.cache
def adjoint_kernels(dtype, dim: int, contact: bool = True) -> SimpleNamespace:
    el = element_funcs(dtype, dim)
    ct = contact_funcs(dtype, dim)
    la = band_funcs(dtype)
    bk = bdf2_kernels(dtype, dim, contact)
    vec = el.vec
    mat = el.mat

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
        d0 = x_in[e, pi] - x_in[e, pj]
        l0 = wp.length(d0)
        return c > dtype(0.0) and (cable == 0 or l0 > L) and l0 > dtype(0.0)

    @wp.func
    def end_velocity(e: int, p: int, f: int, xq: wp.array2d(dtype=vec), x_hat: wp.array2d(dtype=dtype),
                     v_handle: wp.array2d(dtype=vec), kappa: dtype):
        """BDF2 velocity at the end of the step of a free particle, or the handle velocity."""
        if f >= 0:
            return kappa * (xq[e, p] - bk.get_vec(x_hat, e, f))
        return v_handle[e, p]

    @wp.func
    def factor_exact(e: int, x_out: wp.array2d(dtype=vec), x_in: wp.array2d(dtype=vec),
                     v_in: wp.array2d(dtype=vec), xp_in: wp.array2d(dtype=vec), vp_in: wp.array2d(dtype=vec),
                     v_out: wp.array2d(dtype=vec), mass: wp.array2d(dtype=dtype), free_index: wp.array(dtype=int),
                     spring_i: wp.array(dtype=int), spring_j: wp.array(dtype=int),
                     stiffness: wp.array2d(dtype=dtype), rest: wp.array2d(dtype=dtype),
                     damping: wp.array(dtype=dtype), cable: wp.array(dtype=int), geo_kind: wp.array(dtype=int),
                     geo_a: wp.array(dtype=vec), geo_b: wp.array(dtype=vec), geo_r: wp.array(dtype=dtype),
                     contact_k: wp.array2d(dtype=dtype), contact_mu: wp.array2d(dtype=dtype),
                     contact_width: dtype, contact_eps_v: dtype, gravity: vec, h: dtype,
                     N: int, B: int, y_t: wp.array2d(dtype=dtype), x_hat: wp.array2d(dtype=dtype),
                     g: wp.array2d(dtype=dtype), H: wp.array2d(dtype=dtype)):
        """Exact (unprojected) Hessian at the converged step, factored in place; 1 on success."""
        bk.store_targets(e, x_in, v_in, xp_in, vp_in, free_index, h, y_t, x_hat)
        bk.assemble(e, x_out, x_in, y_t, x_hat, v_out, mass, free_index, spring_i, spring_j, stiffness,
                    rest, damping, cable, geo_kind, geo_a, geo_b, geo_r, contact_k, contact_mu, contact_width,
                    contact_eps_v, gravity, h, N, B, 0, g, H)
        return la.band_cholesky(H, e, N, B)

    @wp.func
    def friction_partials(e: int, x0: vec, vel: vec, geo_kind: wp.array(dtype=int), geo_a: wp.array(dtype=vec),
                          geo_b: wp.array(dtype=vec), geo_r: wp.array(dtype=dtype),
                          contact_k: wp.array2d(dtype=dtype), contact_mu: wp.array2d(dtype=dtype),
                          width: dtype, eps_v: dtype, kappa: dtype):
        """Friction partials of one free particle, summed over the geometry: ``Kv = dGf/dx'``
        (``= -dGf/dx_hat``) and ``J0 = dGf/dx`` through the lagged normal force and tangent plane
        (``contact.py``); ``Gf`` is the friction part of the particle's residual (over beta)."""
        Kv = mat()
        J0 = mat()
        half = dtype(0.5) * width
        for k in range(geo_kind.shape[0]):
            mu = contact_mu[e, k]
            if mu > dtype(0.0):
                d0, n0, C0 = ct.signed_distance(geo_kind[k], geo_a[k], geo_b[k], geo_r[k], x0)
                if d0 < half:
                    e0, lam0, e20 = ct.penalty(d0, contact_k[e, k], width)
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
        # forward inputs
        x_in: wp.array2d(dtype=vec),
        v_in: wp.array2d(dtype=vec),
        xp_in: wp.array2d(dtype=vec),
        vp_in: wp.array2d(dtype=vec),
        action: wp.array2d(dtype=vec),
        mass: wp.array2d(dtype=dtype),
        free_index: wp.array(dtype=int),
        handle_particle: wp.array(dtype=int),
        velocity_limit: wp.array(dtype=vec),
        spring_i: wp.array(dtype=int),
        spring_j: wp.array(dtype=int),
        stiffness: wp.array2d(dtype=dtype),
        rest: wp.array2d(dtype=dtype),
        damping: wp.array(dtype=dtype),
        cable: wp.array(dtype=int),
        geo_kind: wp.array(dtype=int),
        geo_a: wp.array(dtype=vec),
        geo_b: wp.array(dtype=vec),
        geo_r: wp.array(dtype=dtype),
        contact_k: wp.array2d(dtype=dtype),
        contact_mu: wp.array2d(dtype=dtype),
        contact_width: dtype,
        contact_eps_v: dtype,
        gravity: vec,
        h: dtype,
        N: int,
        B: int,
        # forward outputs (converged)
        x_out: wp.array2d(dtype=vec),
        v_out: wp.array2d(dtype=vec),
        # adjoints of the outputs
        adj_x_out: wp.array2d(dtype=vec),
        adj_v_out: wp.array2d(dtype=vec),
        adj_xp_out: wp.array2d(dtype=vec),
        adj_vp_out: wp.array2d(dtype=vec),
        # scratch
        H: wp.array2d(dtype=dtype),
        g: wp.array2d(dtype=dtype),
        lam: wp.array2d(dtype=dtype),
        y_t: wp.array2d(dtype=dtype),
        x_hat: wp.array2d(dtype=dtype),
        adj_xh: wp.array2d(dtype=vec),
        adj_vh: wp.array2d(dtype=vec),
        # accumulated adjoints of the inputs
        adj_x_in: wp.array2d(dtype=vec),
        adj_v_in: wp.array2d(dtype=vec),
        adj_xp_in: wp.array2d(dtype=vec),
        adj_vp_in: wp.array2d(dtype=vec),
        adj_action: wp.array2d(dtype=vec),
        adj_stiffness: wp.array2d(dtype=dtype),
        adj_mass: wp.array2d(dtype=dtype),
        ok: wp.array(dtype=int),
    ):
        e = wp.tid()
        n = free_index.shape[0]
        beta = dtype(4.0) * h * h / dtype(9.0)
        kappa = dtype(1.5) / h
        c43 = dtype(4.0) / dtype(3.0)
        c13 = dtype(1.0) / dtype(3.0)
        c23h = dtype(2.0) * h / dtype(3.0)
        good = factor_exact(e, x_out, x_in, v_in, xp_in, vp_in, v_out, mass, free_index, spring_i, spring_j,
                            stiffness, rest, damping, cable, geo_kind, geo_a, geo_b, geo_r, contact_k, contact_mu,
                            contact_width, contact_eps_v, gravity, h, N, B, y_t, x_hat, g, H)
        ok[e] = good
        if good == 0:
            return
        # lambda = H^-1 (xbar'_f + kappa vbar'_f); explicit terms of v'_f = kappa (x'_f - x_hat_f)
        for p in range(n):
            f = free_index[p]
            if f >= 0:
                w = adj_x_out[e, p] + kappa * adj_v_out[e, p]
                for d in range(dim):
                    lam[f * dim + d, e] = w[d]
                av = adj_v_out[e, p]
                adj_x_in[e, p] = adj_x_in[e, p] - (kappa * c43) * av
                adj_xp_in[e, p] = adj_xp_in[e, p] + (kappa * c13) * av
            else:
                adj_xh[e, p] = adj_x_out[e, p]
                adj_vh[e, p] = adj_v_out[e, p]
            # history shift x_prev' = x, v_prev' = v
            adj_x_in[e, p] = adj_x_in[e, p] + adj_xp_out[e, p]
            adj_v_in[e, p] = adj_v_in[e, p] + adj_vp_out[e, p]
        la.band_solve(H, e, N, B, lam, lam)
        # inertia and gravity: ybar = m lambda; mbar = -lambda . ((x' - y) - beta g)
        for p in range(n):
            f = free_index[p]
            if f >= 0:
                m = mass[e, p]
                lf = bk.get_vec(lam, e, f)
                yb = m * lf
                adj_x_in[e, p] = adj_x_in[e, p] + c43 * yb
                adj_xp_in[e, p] = adj_xp_in[e, p] - c13 * yb
                adj_v_in[e, p] = adj_v_in[e, p] + (c23h * c43) * yb
                adj_vp_in[e, p] = adj_vp_in[e, p] - (c23h * c13) * yb
                adj_mass[e, p] = adj_mass[e, p] - wp.dot(lf, x_out[e, p] - bk.get_vec(y_t, e, f) - beta * gravity)
        # springs and dampers
        for s in range(spring_i.shape[0]):
            pi = spring_i[s]
            pj = spring_j[s]
            fi = free_index[pi]
            fj = free_index[pj]
            li = vec()
            lj = vec()
            if fi >= 0:
                li = bk.get_vec(lam, e, fi)
            if fj >= 0:
                lj = bk.get_vec(lam, e, fj)
            k = stiffness[e, s]
            L = rest[e, s]
            u, G, K = el.spring_terms(x_out[e, pi], x_out[e, pj], k, L, cable[s], 0)
            # rho = -lambda is the adjoint of R; R_i += beta G, R_j -= beta G
            adj_stiffness[e, s] = adj_stiffness[e, s] - beta * wp.dot(li - lj, G) / k
            # handle ends: dR_free/dx'_h = -beta K
            if fi < 0:
                adj_xh[e, pi] = adj_xh[e, pi] + beta * (K * lj)
            if fj < 0:
                adj_xh[e, pj] = adj_xh[e, pj] + beta * (K * li)
            c = damping[s]
            if damping_active(x_in, e, pi, pj, c, L, cable[s]):
                d0 = x_in[e, pi] - x_in[e, pj]
                ud = d0 / wp.length(d0)
                vi = end_velocity(e, pi, fi, x_out, x_hat, v_out, kappa)
                vj = end_velocity(e, pj, fj, x_out, x_hat, v_out, kappa)
                P = el.damping_direction_jacobian(vi - vj, d0, c)
                uu = wp.outer(ud, ud)
                rd = -beta * (li - lj)  # adjoint of Gd
                # x_hat dependence: dGd/dx_hat_i = -c kappa uu, dGd/dx_hat_j = +c kappa uu
                if fi >= 0:
                    xhb = -(c * kappa) * (uu * rd)
                    adj_x_in[e, pi] = adj_x_in[e, pi] + c43 * xhb
                    adj_xp_in[e, pi] = adj_xp_in[e, pi] - c13 * xhb
                else:
                    adj_vh[e, pi] = adj_vh[e, pi] + c * (uu * rd)
                if fj >= 0:
                    xhb = (c * kappa) * (uu * rd)
                    adj_x_in[e, pj] = adj_x_in[e, pj] + c43 * xhb
                    adj_xp_in[e, pj] = adj_xp_in[e, pj] - c13 * xhb
                else:
                    adj_vh[e, pj] = adj_vh[e, pj] - c * (uu * rd)
                # direction u from x at the start of the step
                db = wp.transpose(P) * rd
                adj_x_in[e, pi] = adj_x_in[e, pi] + db
                adj_x_in[e, pj] = adj_x_in[e, pj] - db
        # lagged friction: Gf(x', x_hat, x) with x_hat = 4/3 x - 1/3 xp (normal contact depends on x'
        # only and has no input partials)
        if has_friction(contact_mu, e) != 0:
            for p in range(n):
                f = free_index[p]
                if f >= 0:
                    vel = kappa * (x_out[e, p] - bk.get_vec(x_hat, e, f))
                    Kv, J0 = friction_partials(e, x_in[e, p], vel, geo_kind, geo_a, geo_b, geo_r, contact_k,
                                               contact_mu, contact_width, contact_eps_v, kappa)
                    rd = -beta * bk.get_vec(lam, e, f)
                    xhb = -(Kv * rd)  # (dGf/dx_hat)^T rd, Kv symmetric
                    adj_x_in[e, p] = adj_x_in[e, p] + c43 * xhb + wp.transpose(J0) * rd
                    adj_xp_in[e, p] = adj_xp_in[e, p] - c13 * xhb
        # handle kinematics x'_h = x_h + h clip(a), v'_h = clip(a)
        for kk in range(handle_particle.shape[0]):
            p = handle_particle[kk]
            mk = clip_mask(action[e, kk], velocity_limit[kk])
            axh = adj_xh[e, p]
            adj_x_in[e, p] = adj_x_in[e, p] + axh
            adj_action[e, kk] = adj_action[e, kk] + wp.cw_mul(mk, h * axh + adj_vh[e, p])

    @wp.func
    def add_jac_block(M: wp.array3d(dtype=dtype), e: int, row: int, col: int, K: mat, scale: vec):
        """``M[e, row + a, col + b] += K[a, b] * scale[b]``."""
        for a in range(dim):
            for b in range(dim):
                M[e, row + a, col + b] = M[e, row + a, col + b] + K[a, b] * scale[b]

    @wp.func
    def pos_column(N: int, f: int, kh: int):
        """Column of a particle's position in the Markov state (free block or handle block)."""
        if f >= 0:
            return f * dim
        return 4 * N + kh * dim

    @wp.func
    def solve_negated_column(H: wp.array2d(dtype=dtype), e: int, N: int, B: int, M: wp.array3d(dtype=dtype),
                             col: int):
        """``M[e, :N, col] <- -H^-1 M[e, :N, col]``; skips (returns 0) an all-zero column."""
        nz = int(0)
        for i in range(N):
            if M[e, i, col] != dtype(0.0):
                nz = 1
            M[e, i, col] = -M[e, i, col]
        if nz != 0:
            la.band_solve_rows(H, e, N, B, M, 0, col, 0)
        return nz

    @wp.kernel(enable_backward=False, module="unique")
    def bdf2_jacobian(
        x_in: wp.array2d(dtype=vec),
        v_in: wp.array2d(dtype=vec),
        xp_in: wp.array2d(dtype=vec),
        vp_in: wp.array2d(dtype=vec),
        action: wp.array2d(dtype=vec),
        mass: wp.array2d(dtype=dtype),
        free_index: wp.array(dtype=int),
        handle_index: wp.array(dtype=int),
        handle_particle: wp.array(dtype=int),
        velocity_limit: wp.array(dtype=vec),
        spring_i: wp.array(dtype=int),
        spring_j: wp.array(dtype=int),
        stiffness: wp.array2d(dtype=dtype),
        rest: wp.array2d(dtype=dtype),
        damping: wp.array(dtype=dtype),
        cable: wp.array(dtype=int),
        geo_kind: wp.array(dtype=int),
        geo_a: wp.array(dtype=vec),
        geo_b: wp.array(dtype=vec),
        geo_r: wp.array(dtype=dtype),
        contact_k: wp.array2d(dtype=dtype),
        contact_mu: wp.array2d(dtype=dtype),
        contact_width: dtype,
        contact_eps_v: dtype,
        gravity: vec,
        h: dtype,
        N: int,
        B: int,
        has_lagged: int,
        x_out: wp.array2d(dtype=vec),
        v_out: wp.array2d(dtype=vec),
        H: wp.array2d(dtype=dtype),
        g: wp.array2d(dtype=dtype),
        y_t: wp.array2d(dtype=dtype),
        x_hat: wp.array2d(dtype=dtype),
        A: wp.array3d(dtype=dtype),
        Bm: wp.array3d(dtype=dtype),
        ok: wp.array(dtype=int),
    ):
        e = wp.tid()
        ns = A.shape[1]
        na = Bm.shape[2]
        beta = dtype(4.0) * h * h / dtype(9.0)
        kappa = dtype(1.5) / h
        c43 = dtype(4.0) / dtype(3.0)
        c13 = dtype(1.0) / dtype(3.0)
        c23h = dtype(2.0) * h / dtype(3.0)
        one = vec()
        for d in range(dim):
            one[d] = dtype(1.0)
        good = factor_exact(e, x_out, x_in, v_in, xp_in, vp_in, v_out, mass, free_index, spring_i, spring_j,
                            stiffness, rest, damping, cable, geo_kind, geo_a, geo_b, geo_r, contact_k, contact_mu,
                            contact_width, contact_eps_v, gravity, h, N, B, y_t, x_hat, g, H)
        ok[e] = good
        if good == 0:
            return
        # rows 0..N-1 first hold the non-inertial part of dR/dq (handle couplings, damping, friction)
        for s in range(spring_i.shape[0]):
            pi = spring_i[s]
            pj = spring_j[s]
            fi = free_index[pi]
            fj = free_index[pj]
            L = rest[e, s]
            u, G, K = el.spring_terms(x_out[e, pi], x_out[e, pj], stiffness[e, s], L, cable[s], 0)
            # a handle end moves the other (free) end's residual by -beta K through x'_h = x_h + h clip(a)
            if fi < 0 and fj >= 0:
                kh = handle_index[pi]
                add_jac_block(A, e, fj * dim, 4 * N + kh * dim, K, -beta * one)
                add_jac_block(Bm, e, fj * dim, kh * dim, K,
                              -(beta * h) * clip_mask(action[e, kh], velocity_limit[kh]))
            if fj < 0 and fi >= 0:
                kh = handle_index[pj]
                add_jac_block(A, e, fi * dim, 4 * N + kh * dim, K, -beta * one)
                add_jac_block(Bm, e, fi * dim, kh * dim, K,
                              -(beta * h) * clip_mask(action[e, kh], velocity_limit[kh]))
            c = damping[s]
            if damping_active(x_in, e, pi, pj, c, L, cable[s]):
                d0 = x_in[e, pi] - x_in[e, pj]
                ud = d0 / wp.length(d0)
                vi = end_velocity(e, pi, fi, x_out, x_hat, v_out, kappa)
                vj = end_velocity(e, pj, fj, x_out, x_hat, v_out, kappa)
                P = el.damping_direction_jacobian(vi - vj, d0, c)
                uu = wp.outer(ud, ud)
                # R_i += beta Gd (if i free), R_j -= beta Gd (if j free); loop over the two rows
                for side in range(2):
                    fr = fi
                    sgn = beta
                    if side == 1:
                        fr = fj
                        sgn = -beta
                    if fr >= 0:
                        row = fr * dim
                        # x_hat of free ends (x_hat = 4/3 x - 1/3 xp)
                        if fi >= 0:
                            add_jac_block(A, e, row, fi * dim, uu, -(sgn * c * kappa * c43) * one)
                            add_jac_block(A, e, row, 2 * N + fi * dim, uu, (sgn * c * kappa * c13) * one)
                        else:
                            kh = handle_index[pi]
                            add_jac_block(Bm, e, row, kh * dim, uu,
                                          (sgn * c) * clip_mask(action[e, kh], velocity_limit[kh]))
                        if fj >= 0:
                            add_jac_block(A, e, row, fj * dim, uu, (sgn * c * kappa * c43) * one)
                            add_jac_block(A, e, row, 2 * N + fj * dim, uu, -(sgn * c * kappa * c13) * one)
                        else:
                            kh = handle_index[pj]
                            add_jac_block(Bm, e, row, kh * dim, uu,
                                          -(sgn * c) * clip_mask(action[e, kh], velocity_limit[kh]))
                        # damping direction from the positions at the start of the step
                        add_jac_block(A, e, row, pos_column(N, fi, handle_index[pi]), P, sgn * one)
                        add_jac_block(A, e, row, pos_column(N, fj, handle_index[pj]), P, -sgn * one)
        # lagged friction of the free particles: R_f += beta Gf(x', x_hat, x), x_hat = 4/3 x - 1/3 xp
        if has_lagged != 0 and has_friction(contact_mu, e) != 0:
            for p in range(free_index.shape[0]):
                f = free_index[p]
                if f >= 0:
                    vel = kappa * (x_out[e, p] - bk.get_vec(x_hat, e, f))
                    Kv, J0 = friction_partials(e, x_in[e, p], vel, geo_kind, geo_a, geo_b, geo_r, contact_k,
                                               contact_mu, contact_width, contact_eps_v, kappa)
                    add_jac_block(A, e, f * dim, f * dim, J0 - c43 * Kv, beta * one)
                    add_jac_block(A, e, f * dim, 2 * N + f * dim, Kv, (beta * c13) * one)
        # dx'_f/dq = -H^-1 dR/dq for the non-zero columns of that part (without damping or friction
        # only the handle columns can be non-zero); the velocity rows follow from v'_f = kappa (x'_f - x_hat_f)
        col0 = 4 * N
        if has_lagged != 0:
            col0 = 0
        for col in range(col0, ns):
            if solve_negated_column(H, e, N, B, A, col) != 0 and col >= 4 * N:
                for i in range(N):
                    A[e, N + i, col] = kappa * A[e, i, col]
        if has_lagged != 0:
            for col in range(na):
                if solve_negated_column(H, e, N, B, Bm, col) != 0:
                    for i in range(N):
                        Bm[e, N + i, col] = kappa * Bm[e, i, col]
        else:
            # without damping an action only acts through x'_h = x_h + h clip(a): B = A[:, x_h] h clip'
            for kk in range(handle_particle.shape[0]):
                mk = clip_mask(action[e, kk], velocity_limit[kk])
                for d in range(dim):
                    for i in range(2 * N):
                        Bm[e, i, kk * dim + d] = A[e, i, 4 * N + kk * dim + d] * h * mk[d]
        # ... plus the inertial part: dR/dy = -M with y = 4/3 x - 1/3 xp + 2h/3 (4/3 v - 1/3 vp), so
        # its columns are multiples of W = H^-1 M (N solves). W is parked in rows N..2N-1, columns
        # 0..N-1, each entry read once just before the velocity rows overwrite it.
        for j in range(N):
            for i in range(N):
                A[e, N + i, j] = dtype(0.0)
            A[e, N + j, j] = dtype(1.0)
            la.band_solve_rows(H, e, N, B, A, N, j, j)
        for p in range(free_index.shape[0]):
            f = free_index[p]
            if f >= 0:
                m = mass[e, p]
                for d in range(dim):
                    j = f * dim + d
                    for i in range(N):
                        w = m * A[e, N + i, j]
                        x0 = c43 * w
                        x1 = (c23h * c43) * w
                        x2 = -c13 * w
                        x3 = -(c23h * c13) * w
                        if has_lagged != 0:
                            x0 += A[e, i, j]
                            x1 += A[e, i, N + j]
                            x2 += A[e, i, 2 * N + j]
                            x3 += A[e, i, 3 * N + j]
                        A[e, i, j] = x0
                        A[e, i, N + j] = x1
                        A[e, i, 2 * N + j] = x2
                        A[e, i, 3 * N + j] = x3
                        # v'_f = kappa (x'_f - x_hat_f), x_hat = 4/3 x - 1/3 xp
                        y0 = kappa * x0
                        y2 = kappa * x2
                        if i == j:
                            y0 -= kappa * c43
                            y2 += kappa * c13
                        A[e, N + i, j] = y0
                        A[e, N + i, N + j] = kappa * x1
                        A[e, N + i, 2 * N + j] = y2
                        A[e, N + i, 3 * N + j] = kappa * x3
        # x_prev'_f = x_f; v_prev'_f = v_f
        for r in range(N):
            A[e, 2 * N + r, r] = dtype(1.0)
            A[e, 3 * N + r, N + r] = dtype(1.0)
        # handles: x'_h = x_h + h clip(a)
        for kk in range(handle_particle.shape[0]):
            mk = clip_mask(action[e, kk], velocity_limit[kk])
            for d in range(dim):
                A[e, 4 * N + kk * dim + d, 4 * N + kk * dim + d] = dtype(1.0)
                Bm[e, 4 * N + kk * dim + d, kk * dim + d] = h * mk[d]

    return SimpleNamespace(bdf2_vjp=bdf2_vjp, bdf2_jacobian=bdf2_jacobian)
