"""One implicit BDF2 step for every environment, solved by Newton's method in a single launch.

Per environment (one thread), with step ``h``, free-particle positions ``x``:

* BDF2 (constant step) reads ``x' - 4/3 x + 1/3 x_prev = 2h/3 v'`` and
  ``v' - 4/3 v + 1/3 v_prev = 2h/3 M^-1 f(x', v')``. Eliminating ``v' = kappa (x' - x_hat)`` with
  ``x_hat = 4/3 x - 1/3 x_prev`` and ``kappa = 3 / (2h)`` gives ``M (x' - y) = beta f(x', v')`` with
  ``y = x_hat + 2h/3 (4/3 v - 1/3 v_prev)`` and ``beta = 4 h^2 / 9``.
* That is the stationarity condition of the incremental potential
  ``Phi(x') = 1/2 (x'-y)^T M (x'-y) + beta [U(x') + D(x')]`` with ``U`` the spring, gravity and
  contact-penalty energy and ``D`` the damping and friction dissipation potentials
  (``elements.py``, ``contact.py``; contact acts on free particles only, against the model's
  planes and boxes, with friction lagged at the start-of-step positions). Newton's method
  minimises ``Phi``: gradient ``g`` and (PSD-projected) Hessian ``H`` assembled into a banded
  matrix, per-thread banded Cholesky, backtracking (Armijo) line search on ``Phi``.
* Increments, not positions: the Newton iterate is the increment ``u = x' - x`` (``scratch.u``),
  and ``y``, ``x_hat`` are held as offsets from ``x`` (:func:`inertial_target`). The inertia term
  ``M (u - (y - x))`` and the velocity ``v' = kappa (u - (x_hat - x))`` are formed from them
  without rounding at the scale of ``x``, and the springs and the contact see ``x' = x + u``.
  Solving for ``x'`` itself loses the step's acceleration ``h^2 a`` in float32 once it falls
  near the spacing of ``x`` (about 1e-7 m at 1 m). Before this, the float32 trajectory error of
  a spring pendulum grew from 3e-4 m at dt 5 ms to 1 m at dt 0.1 ms, and Newton stalled at tol
  1e-6; docs/results.md, "The float32 floor".
* Convergence: ``max|dx| / h <= tol`` (m/s) for the Newton step ``dx`` (certified before the
  solve when ``|g|_2 / ((m_min - neg) h) <= tol``, since ``H >= (m_min - neg) I``; ``H >= MASS_FLOOR M`` and
  ``m_min`` scaled accordingly in scenes with boxes, see ``contact.py``), or — at the round-off
  floor of float32 — a step within ``STALL_FACTOR * tol`` that no longer halves (quadratic
  convergence always halves it), or — with the error-controlled stop ``lte_fraction > 0`` — a
  Newton step ``max|dx|`` at most ``lte_fraction`` times the step's truncation-error estimate
  ``(2/9) h max|v' - 2 v + v_prev|`` (:func:`truncation_estimate`), or whose gradient certifies
  that bound for the next step (``|g|_2 / (m_min - neg)``, as above); never before the first solve.
  Status per env:
  ``STATUS_OK``, ``STATUS_MAX_ITERS``, ``STATUS_NONFINITE``, ``STATUS_NOT_PD``.
* Handles are kinematic: ``x_h' = x_h + h clip(a)``, ``v_h' = clip(a)`` with the per-axis limit.
  A non-finite action component holds that axis still and marks the env ``STATUS_NONFINITE``
  (``Simulator.step(check=True)`` rejects such actions before the launch).
* Start-up: the state carries the BDF2 history (``x_prev``, ``v_prev``). A fresh state gets it
  from the forces at the initial state by Taylor expansion (:func:`startup`), which keeps the
  method second-order accurate from the first step (``tests/test_physics.py`` measures it);
  particles touching geometry at reset start from a rest history (contact is not expanded).

The loops with run-time trip counts inside the Newton iteration (assembly, the line search's
trial points, the reductions over the DOFs) are ``while`` loops, which Warp's CPU backend
compiles to tighter code than ``for ... in range(n)`` (see ``linalg.py``); the loops run once per
step gained nothing measurable that way and stay ``for`` loops. Loops over ``dim`` are unrolled
by Warp (``add_block`` runs its triangle as a full unrolled square with a test, since
``range(a + 1)`` would not be unrolled).
"""


import functools
from types import SimpleNamespace

import warp as wp

from .contact import contact_funcs
from .data import kernel_structs
from .elements import element_funcs
from .linalg import band_funcs

STALL_FACTOR = 10.0
# Hessian modes of assemble(): exact; contact curvature clamped (Newton's first choice); all
# indefinite terms projected (Newton's fallback where the former is not positive definite)
PROJECT_NONE = 0
PROJECT_ALL = 1
PROJECT_CONTACT = 2
# Newton matrix: contact curvature (a particle pressed onto a rounded box edge) may remove up to
# 1 - MASS_FLOOR of each particle's inertia m / beta (contact.py), so that H >= MASS_FLOOR M
MASS_FLOOR = 0.1
# approximate-Armijo slope bound: a trial point whose Phi is within round-off of the start is
# accepted only if the directional derivative there is at most APPROX_SLOPE * |initial slope|.
# Hager & Zhang's 0.8 (delta = 0.1) let light particles (the 3.8 g cloth of cloth_table in float32,
# where a 4 mm step changes Phi by less than its round-off) alternate between two iterates across
# a kink of the Hessian (cable or friction switch) without end; 0.1 restricts acceptance to points
# that have (nearly) not overshot the minimum along dx.
APPROX_SLOPE = 0.1
# curvature bound of the strong Wolfe conditions on the overshooting side: a trial point with
# directional derivative above CURVATURE_C2 * |initial slope| is rejected even when Phi decreased.
# Across a kink of the Hessian (a cable going taut, friction sticking) the Newton step can land on
# the mirror image of its start (slope_t = -slope, Phi almost unchanged), which plain Armijo
# accepts, and the next step jumps back: a 2-cycle that never converges.
CURVATURE_C2 = 0.9
STATUS_OK = 0
STATUS_MAX_ITERS = 1
STATUS_NONFINITE = 2
STATUS_NOT_PD = 3
STATUS_NAMES = {
    STATUS_OK: "converged",
    STATUS_MAX_ITERS: "Newton did not converge within max_iters",
    STATUS_NONFINITE: "non-finite value (NaN/inf) in the Newton iterate",
    STATUS_NOT_PD: "Hessian not positive definite (degenerate spring or invalid parameters)",
}


def bdf2_kernels(dtype, dim: int, contact: bool = True, band: int | None = None) -> SimpleNamespace:
    """Step and diagnostic kernels for one scalar type and spatial dimension. ``contact=False``
    compiles the contact terms out (for scenes without geometry: ~4 % faster on small systems);
    ``band`` compiles the banded factorisation and solves for that half-bandwidth
    (``linalg.fixed_band``; ``None``: any, the model's ``band`` at run time), which must then be
    the model's; the results are bitwise the same. The kernel signatures stay the same. The
    kernels take the static model as one ``ModelData`` struct (``Model.data``), stiffness and
    mass as separate (E, m) / (E, n) arrays (the torch bridge passes its own), states as
    ``StateData`` and the Newton work arrays as one ``NewtonScratch`` (``data.py``)."""
    return _bdf2_kernels(dtype, int(dim), bool(contact), None if band is None else int(band))


@functools.cache
def _bdf2_kernels(dtype, dim: int, contact: bool, band: int | None) -> SimpleNamespace:
    """:func:`bdf2_kernels`, cached per normalised arguments (one object per variant, however called)."""
    el = element_funcs(dtype, dim)
    ct = contact_funcs(dtype, dim)
    WITH_CONTACT = 1 if contact else 0
    la = band_funcs(dtype, band)
    vec = el.vec
    mat = el.mat
    structs = kernel_structs(dtype, dim)
    ModelData = structs.ModelData
    StateData = structs.StateData
    NewtonScratch = structs.NewtonScratch
    # round-off allowance on Phi for the approximate-Armijo test (Hager & Zhang 2005), in units of
    # the error scale returned by assemble()
    NOISE = 64.0 * (1.1920929e-07 if dtype == wp.float32 else 2.220446049250313e-16)

    @wp.func
    def inertial_target(x: vec, v: vec, xp: vec, vp: vec, h: dtype):
        """``(x_hat - x, y - x)`` of the BDF2 step (module doc): offsets from the start-of-step
        position ``x``, formed from the increment ``x - xp`` (exact in floating point when the two
        positions are within a factor 2, Sterbenz) instead of ``4/3 x - 1/3 xp``."""
        c43 = dtype(4.0) / dtype(3.0)
        c13 = dtype(1.0) / dtype(3.0)
        x_hat = c13 * (x - xp)
        y = x_hat + (dtype(2.0) * h / dtype(3.0)) * (c43 * v - c13 * vp)
        return x_hat, y

    @wp.func
    def step_velocity(xq: vec, x0: vec, x_hat: vec, kappa: dtype):
        """BDF2 end velocity ``kappa (x' - x_hat)`` of a free particle at ``xq`` that started the
        step at ``x0``, from the offset ``x_hat - x0`` (:func:`inertial_target`)."""
        return kappa * ((xq - x0) - x_hat)

    @wp.func
    def add_block(H: wp.array2d(dtype=dtype), e: int, B: int, fi: int, fj: int, K: mat, sign: dtype):
        """Add ``sign * K`` to the (fi, fj) particle block of the banded matrix (lower part only)."""
        if fi == fj:
            for a in range(dim):
                for b in range(dim):  # b <= a; range(a + 1) would not be unrolled
                    if b <= a:
                        la.band_add(H, e, B, fi * dim + a, fi * dim + b, sign * K[a, b])
        else:
            r = fi
            c = fj
            if fj > fi:
                r = fj
                c = fi
            for a in range(dim):
                for b in range(dim):
                    la.band_add(H, e, B, r * dim + a, c * dim + b, sign * K[a, b])

    @wp.func
    def amax(v: vec):
        """max_i |v_i| (a norm for round-off estimates, without a square root)."""
        r = wp.abs(v[0])
        for d in range(1, dim):
            r = wp.max(r, wp.abs(v[d]))
        return r

    @wp.func
    def get_vec(a: wp.array2d(dtype=dtype), e: int, f: int):
        v = vec()
        for d in range(dim):
            v[d] = a[f * dim + d, e]
        return v

    @wp.func
    def store_targets(e: int, model: ModelData, state_in: StateData, scratch: NewtonScratch):
        """Write the inertial target ``y`` and ``x_hat`` of every free DOF of the step from
        ``state_in``, as offsets from the start-of-step positions ``state_in.x``
        (:func:`inertial_target`), into ``scratch.y_t`` / ``scratch.x_hat`` (module doc)."""
        for p in range(model.free_index.shape[0]):
            f = model.free_index[p]
            if f >= 0:
                xh, y = inertial_target(state_in.x[e, p], state_in.v[e, p], state_in.x_prev[e, p],
                                        state_in.v_prev[e, p], model.dt)
                for d in range(dim):
                    scratch.y_t[f * dim + d, e] = y[d]
                    scratch.x_hat[f * dim + d, e] = xh[d]

    @wp.func
    def store_increment(e: int, model: ModelData, xq: wp.array2d(dtype=vec), x_in: wp.array2d(dtype=vec),
                        scratch: NewtonScratch):
        """``scratch.u = xq - x_in`` on the free DOFs: the increment :func:`assemble` reads, for a
        point ``xq`` given by its positions (outside the Newton loop, which keeps ``u`` itself)."""
        for p in range(model.free_index.shape[0]):
            f = model.free_index[p]
            if f >= 0:
                d = xq[e, p] - x_in[e, p]
                for a in range(dim):
                    scratch.u[f * dim + a, e] = d[a]

    @wp.func
    def add_vec(g: wp.array2d(dtype=dtype), e: int, f: int, v: vec):
        for a in range(dim):
            g[f * dim + a, e] = g[f * dim + a, e] + v[a]

    @wp.func
    def contact_particle(e: int, model: ModelData, xq: vec, x0: vec, vel: vec, kappa: dtype, project: int,
                         cap: dtype):
        """Contact energy + friction dissipation potential of one free particle at ``xq`` against
        every geometry of ``model``, with gradient and Hessian (``contact.py``); ``x0`` is its
        position at the start of the step (lagged normal force and tangent plane), ``vel`` its
        BDF2 velocity. ``cap`` (N/m): with ``project``, the negative curvature of all boxes
        together stays above ``-cap`` (shared equally between the boxes)."""
        geo_kind = model.geo_kind
        width = model.contact_width
        u = dtype(0.0)
        gr = vec()
        K = mat()
        half = dtype(0.5) * width
        nbox = int(0)
        k = int(0)
        while k < geo_kind.shape[0]:
            if geo_kind[k] != 0:
                nbox += 1
            k += 1
        cap_each = cap / dtype(wp.max(nbox, 1))
        k = int(0)
        while k < geo_kind.shape[0]:
            kc = model.contact_stiffness[e, k]
            d, nrm, C = ct.signed_distance(geo_kind[k], model.geo_a[k], model.geo_b[k], model.geo_r[k], xq)
            if d < half:
                uc, gc, Kc = ct.normal_terms(d, nrm, C, kc, width, project, cap_each)
                u += uc
                gr += gc
                K += Kc
            mu = model.friction[e, k]
            if mu > dtype(0.0):
                d0, n0, C0 = ct.signed_distance(geo_kind[k], model.geo_a[k], model.geo_b[k], model.geo_r[k], x0)
                if d0 < half:
                    e0, lam0, e20 = ct.penalty(d0, kc, width)
                    uf, gf, Kf = ct.friction_terms(vel, n0, mu * lam0, model.contact_eps_v, kappa)
                    u += uf
                    gr += gf
                    K += Kf
            k += 1
        return u, gr, K

    def make_assemble(with_contact: int):
        """:func:`assemble` with the contact terms compiled in (``with_contact``; only where the
        model has geometry) or out (the start-up's spring, damping and gravity forces)."""

        @wp.func
        def assemble(e: int, model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
                     xq: wp.array2d(dtype=vec), x_in: wp.array2d(dtype=vec), v_handle: wp.array2d(dtype=vec),
                     project: int, scratch: NewtonScratch):
            """Incremental potential ``Phi`` at ``xq[e]``, the scale of its round-off error (the
            sum over its terms of |term gradient| x |position| in max-norms, to be multiplied by
            the machine epsilon) and ``neg >= 0``, a bound on how far compressed bilateral springs
            pull the smallest eigenvalue of the assembled matrix below that of its fully projected
            version (Weyl; 0 when ``project == PROJECT_ALL``).
            ``project``: ``PROJECT_NONE`` exact Hessian, ``PROJECT_CONTACT`` exact springs with the
            contact curvature clamped, ``PROJECT_ALL`` PSD-projected springs too;
            writes its gradient into ``scratch.g`` and its Hessian into the band ``scratch.H``
            (both (re)initialised here). ``scratch.y_t``/``scratch.x_hat`` hold the step's
            inertial target and ``x_hat`` as offsets from ``x_in`` (:func:`store_targets`) and
            ``scratch.u`` the increment ``xq - x_in`` of the point, unrounded (the inertia and
            the BDF2 velocities are formed from it, the springs and the contact from ``xq``);
            ``x_in`` the positions at the start of the step (damping direction, lagged friction); ``v_handle`` the handle
            velocities; ``mass`` (E, n) and ``stiffness`` (E, m) the per-env parameters;
            everything else comes from ``model`` (contact against its geometry ``geo_*`` with
            ``contact_stiffness``/``friction`` (E, G), ``contact.py``)."""
            h = model.dt
            beta = dtype(4.0) * h * h / dtype(9.0)
            kappa = dtype(1.5) / h
            B = model.band
            g = scratch.g
            H = scratch.H
            i = int(0)
            while i < model.num_dofs:
                g[i, e] = dtype(0.0)
                i += 1
            i = int(0)
            while i < model.num_dofs * (B + 1):
                H[i, e] = dtype(0.0)
                i += 1
            free_index = model.free_index
            cable = model.is_cable
            gravity = model.gravity
            phi = dtype(0.0)
            scale = dtype(0.0)
            neg = dtype(0.0)
            n = free_index.shape[0]
            p = int(0)
            while p < n:
                f = free_index[p]
                if f >= 0:
                    m = mass[e, p]
                    r = get_vec(scratch.u, e, f) - get_vec(scratch.y_t, e, f)
                    phi += dtype(0.5) * m * wp.dot(r, r) - beta * m * wp.dot(gravity, r)
                    scale += m * (amax(r) + beta * amax(gravity)) * amax(xq[e, p])
                    add_vec(g, e, f, m * r - (beta * m) * gravity)
                    for a in range(dim):
                        la.band_add(H, e, B, f * dim + a, f * dim + a, m)
                p += 1
            s = int(0)
            while s < model.spring_i.shape[0]:
                pi = model.spring_i[s]
                pj = model.spring_j[s]
                fi = free_index[pi]
                fj = free_index[pj]
                xi = xq[e, pi]
                xj = xq[e, pj]
                L = model.rest_length[e, s]
                u, gr, K = el.spring_terms(xi, xj, stiffness[e, s], L, cable[s], int(project == PROJECT_ALL))
                if cable[s] == 0:
                    # compressed bilateral spring: its exact Hessian has the eigenvalue
                    # -2 beta k (L/l - 1) (relative transverse mode); sum them for a Weyl bound
                    # k (1 - L/l) from the trace of the block, tr K = k (1 + (dim - 1)(1 - L/l)); a
                    # projected block gives >= 0, as it should: that matrix is >= M
                    kct = (wp.trace(K) - stiffness[e, s]) / dtype(dim - 1)
                    if kct < dtype(0.0):
                        neg -= dtype(2.0) * beta * kct
                c = model.damping[s]
                if c > dtype(0.0):
                    d0 = x_in[e, pi] - x_in[e, pj]
                    l0 = wp.length(d0)
                    if (cable[s] == 0 or l0 > L) and l0 > dtype(0.0):
                        vi = v_handle[e, pi]
                        vj = v_handle[e, pj]
                        if fi >= 0:
                            vi = kappa * (get_vec(scratch.u, e, fi) - get_vec(scratch.x_hat, e, fi))
                        if fj >= 0:
                            vj = kappa * (get_vec(scratch.u, e, fj) - get_vec(scratch.x_hat, e, fj))
                        ud, gd, Kd = el.damping_terms(vi - vj, d0 / l0, c, kappa)
                        u += ud
                        gr += gd
                        K += Kd
                phi += beta * u
                scale += beta * amax(gr) * (amax(xi) + amax(xj))
                if fi >= 0:
                    add_vec(g, e, fi, beta * gr)
                    add_block(H, e, B, fi, fi, K, beta)
                if fj >= 0:
                    add_vec(g, e, fj, -beta * gr)
                    add_block(H, e, B, fj, fj, K, beta)
                if fi >= 0 and fj >= 0:
                    add_block(H, e, B, fi, fj, K, -beta)
                s += 1
            if with_contact != 0 and model.geo_kind.shape[0] > 0:
                p = int(0)
                while p < n:
                    f = free_index[p]
                    if f >= 0:
                        xp = xq[e, p]
                        vel = kappa * (get_vec(scratch.u, e, f) - get_vec(scratch.x_hat, e, f))
                        cap = dtype(1.0 - MASS_FLOOR) * mass[e, p] / beta
                        u, gr, K = contact_particle(e, model, xp, x_in[e, p], vel, kappa, int(project != PROJECT_NONE),
                                                    cap)
                        phi += beta * u
                        scale += beta * amax(gr) * amax(xp)
                        add_vec(g, e, f, beta * gr)
                        add_block(H, e, B, f, f, K, beta)
                    p += 1
            return phi, scale, neg

        return assemble

    assemble = make_assemble(WITH_CONTACT)
    # the start-up history takes spring, damping and gravity forces only (startup())
    assemble_no_contact = make_assemble(0) if contact else assemble

    @wp.func
    def set_iterate(e: int, model: ModelData, scratch: NewtonScratch, alpha: dtype, x_in: wp.array2d(dtype=vec),
                    xq: wp.array2d(dtype=vec)):
        """The increment ``u = base + alpha dx`` (``scratch``) and the positions ``xq = x_in + u``
        on the free particles (the iterate is the increment: its small size keeps the bits that
        ``x_in + u`` rounds off at the scale of ``x_in``)."""
        p = int(0)
        while p < model.free_index.shape[0]:
            f = model.free_index[p]
            if f >= 0:
                v = vec()
                for a in range(dim):
                    i = f * dim + a
                    v[a] = scratch.base[i, e] + alpha * scratch.dx[i, e]
                    scratch.u[i, e] = v[a]
                xq[e, p] = x_in[e, p] + v
            p += 1

    @wp.func
    def truncation_estimate(e: int, model: ModelData, state_in: StateData, scratch: NewtonScratch):
        """BDF2's local truncation error of the step at the iterate ``scratch.u`` (m):
        ``(2/9) h max|v' - 2 v + v_prev|`` over the free DOFs, ``v'`` the iterate's BDF2 velocity
        (``2/9`` is BDF2's error constant and ``v' - 2 v + v_prev`` is ``h^2`` times the third
        derivative of the positions, to leading order)."""
        h = model.dt
        kappa = dtype(1.5) / h
        worst = dtype(0.0)
        p = int(0)
        while p < model.free_index.shape[0]:
            f = model.free_index[p]
            if f >= 0:
                dv = kappa * (get_vec(scratch.u, e, f) - get_vec(scratch.x_hat, e, f)) - dtype(2.0) * state_in.v[e, p] \
                    + state_in.v_prev[e, p]
                worst = wp.max(worst, amax(dv))
            p += 1
        return dtype(2.0 / 9.0) * h * worst

    @wp.kernel(enable_backward=False, module="unique")
    def bdf2_step(
        model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
        state_in: StateData,
        action: wp.array2d(dtype=vec),
        scratch: NewtonScratch,
        step_index: int,
        # outputs
        state_out: StateData,
        status: wp.array(dtype=int),
        iters: wp.array(dtype=int),
        residual: wp.array(dtype=dtype),
        first_fail_step: wp.array(dtype=int),
        first_fail_status: wp.array(dtype=int),
    ):
        """One BDF2 step of env ``e`` from ``state_in`` with ``action`` (E, h) into ``state_out``
        (module doc); per env the ``status`` (``STATUS_*``), Newton ``iters`` and final
        ``residual`` (m/s), and, at the first failure since they were reset (-1), its step
        ``first_fail_step = step_index`` and ``first_fail_status``."""
        e = wp.tid()
        h = model.dt
        free_index = model.free_index
        n = free_index.shape[0]
        x_out = state_out.x
        # history shift and handle kinematics
        for p in range(n):
            state_out.x_prev[e, p] = state_in.x[e, p]
            state_out.v_prev[e, p] = state_in.v[e, p]
        bad_action = int(0)
        for k in range(model.handle_particle.shape[0]):
            p = model.handle_particle[k]
            act = action[e, k]
            lim = model.velocity_limit[k]
            ac = vec()
            for d in range(dim):
                if wp.isfinite(act[d]):
                    ac[d] = wp.clamp(act[d], -lim[d], lim[d])
                else:
                    bad_action = 1  # reported below; the handle holds still instead of moving on NaN
            x_out[e, p] = state_in.x[e, p] + h * ac
            state_out.v[e, p] = ac
        # predictor: the inertial target y
        store_targets(e, model, state_in, scratch)
        for p in range(n):
            f = free_index[p]
            if f >= 0:
                y = get_vec(scratch.y_t, e, f)
                for a in range(dim):
                    scratch.u[f * dim + a, e] = y[a]
                x_out[e, p] = state_in.x[e, p] + y
        # the first Newton matrix (at the predictor, far from the solution) is fully projected;
        # later ones keep the exact spring Hessian where it is positive definite
        phi, phi_scale, neg = assemble(e, model, mass, stiffness, x_out, state_in.x, state_out.v, PROJECT_ALL,
                                       scratch)
        st = STATUS_MAX_ITERS
        it = int(0)
        res = dtype(0.0)
        prev_res = dtype(1.0e30)
        # smallest mass: the projected Newton matrix satisfies H >= M (H >= MASS_FLOOR M with box
        # contact) and the exact-spring one H >= (m_min - neg) I (assemble()), so the Newton step
        # obeys max|dx| <= |g|_2 / (m_min - neg) and a small gradient certifies convergence
        # without a solve
        m_min = dtype(1.0e30)
        for p in range(n):
            if free_index[p] >= 0:
                m_min = wp.min(m_min, mass[e, p])
        for k in range(model.geo_kind.shape[0]):
            if model.geo_kind[k] != 0:
                m_min = dtype(MASS_FLOOR) * m_min
                break
        N = model.num_dofs
        B = model.band
        tol = model.tol
        g = scratch.g
        dx = scratch.dx
        while it < model.max_iters:
            if not wp.isfinite(phi):
                st = STATUS_NONFINITE
                break
            gg = dtype(0.0)
            i = int(0)
            while i < N:
                gg += g[i, e] * g[i, e]
                i += 1
            m_eff = m_min - neg  # lower bound on lambda_min of the (exact-spring) Newton matrix
            if m_eff > dtype(0.0):
                bound = wp.sqrt(gg) / m_eff  # >= max|dx| of the next Newton step (m)
                certified = bound <= tol * h
                if not certified and it > 0 and model.lte_fraction > dtype(0.0):
                    certified = bound <= model.lte_fraction * truncation_estimate(e, model, state_in, scratch)
                if certified:
                    res = bound / h
                    st = STATUS_OK
                    break
            # Newton matrix: the exact spring Hessian where it is positive definite (quadratic
            # convergence), else the PSD projection of every indefinite term (still a descent
            # direction, linear convergence)
            if la.band_cholesky(scratch.H, e, N, B) == 0:
                phi, phi_scale, neg = assemble(e, model, mass, stiffness, x_out, state_in.x, state_out.v,
                                               PROJECT_ALL, scratch)
                if la.band_cholesky(scratch.H, e, N, B) == 0:
                    st = STATUS_NOT_PD
                    break
            i = int(0)
            while i < N:
                dx[i, e] = -g[i, e]
                i += 1
            la.band_solve(scratch.H, e, N, B, dx, dx)
            it += 1
            slope = dtype(0.0)
            res = dtype(0.0)
            i = int(0)
            while i < N:
                slope += g[i, e] * dx[i, e]
                res = wp.max(res, wp.abs(dx[i, e]))
                i += 1
            res = res / h
            # record the base iterate (its increment)
            i = int(0)
            while i < N:
                scratch.base[i, e] = scratch.u[i, e]
                i += 1
            if not wp.isfinite(res):
                st = STATUS_NONFINITE
                break
            # converged: below tol, or stalled at the round-off floor (a Newton step that no
            # longer halves while already within STALL_FACTOR * tol), or (error control) a
            # correction below lte_fraction of the step's own truncation error
            done = res <= tol or (res <= dtype(STALL_FACTOR) * tol and res > dtype(0.5) * prev_res)
            if done or model.lte_fraction > dtype(0.0):
                set_iterate(e, model, scratch, dtype(1.0), state_in.x, x_out)  # the full step (the line search's first trial too)
            if not done and model.lte_fraction > dtype(0.0):
                done = res * h <= model.lte_fraction * truncation_estimate(e, model, state_in, scratch)
            if done:
                st = STATUS_OK
                break
            # backtracking line search on Phi: Armijo (with the overshoot bound CURVATURE_C2),
            # or Hager-Zhang's approximate Armijo
            # (Phi within round-off of the start and the slope along dx not turned positive
            # beyond APPROX_SLOPE times the initial one), which keeps float32 from stalling where
            # Phi differences drown in round-off
            alpha = dtype(1.0)
            noise = dtype(NOISE) * phi_scale
            ls_max = model.line_search_max
            for ls in range(ls_max + 1):
                set_iterate(e, model, scratch, alpha, state_in.x, x_out)
                phi_t, scale_t, neg_t = assemble(e, model, mass, stiffness, x_out, state_in.x, state_out.v,
                                                 PROJECT_CONTACT, scratch)
                slope_t = dtype(0.0)
                i = int(0)
                while i < N:
                    slope_t += g[i, e] * dx[i, e]
                    i += 1
                armijo = phi_t <= phi + dtype(1.0e-4) * alpha * slope and slope_t <= dtype(-CURVATURE_C2) * slope
                approx = phi_t <= phi + noise and slope_t <= dtype(-APPROX_SLOPE) * slope
                if armijo or approx or ls == ls_max:
                    phi = phi_t
                    phi_scale = scale_t
                    neg = neg_t
                    break
                alpha = alpha * dtype(0.5)
            prev_res = res
        # velocities of the free particles
        kappa = dtype(1.5) / h
        for p in range(n):
            f = free_index[p]
            if f >= 0:
                state_out.v[e, p] = kappa * (get_vec(scratch.u, e, f) - get_vec(scratch.x_hat, e, f))
        if bad_action != 0:
            st = STATUS_NONFINITE
        status[e] = st
        iters[e] = it
        residual[e] = res
        if st != STATUS_OK and first_fail_step[e] < 0:
            first_fail_step[e] = step_index
            first_fail_status[e] = st

    @wp.kernel(enable_backward=False, module="unique")
    def potential(
        model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
        xq: wp.array2d(dtype=vec),
        state_in: StateData,
        v_handle: wp.array2d(dtype=vec),
        project: int,
        scratch: NewtonScratch,
        phi: wp.array(dtype=dtype),
    ):
        """Diagnostic: ``Phi``, its gradient (``scratch.g``) and banded Hessian (``scratch.H``) at
        ``xq`` (handles at ``xq`` too) for the step from ``state_in``, with handle velocities
        ``v_handle``."""
        e = wp.tid()
        store_targets(e, model, state_in, scratch)
        store_increment(e, model, xq, state_in.x, scratch)
        value, scale, neg = assemble(e, model, mass, stiffness, xq, state_in.x, v_handle, project, scratch)
        phi[e] = value

    @wp.kernel(enable_backward=False, module="unique")
    def startup(
        model: ModelData, mass: wp.array2d(dtype=dtype), stiffness: wp.array2d(dtype=dtype),
        x_new: wp.array2d(dtype=vec),
        v_new: wp.array2d(dtype=vec),
        mask: wp.array(dtype=int),
        scratch: NewtonScratch,
        state: StateData,
    ):
        """Start a BDF2 history (envs with ``mask[e] != 0``): ``x = x_new``, ``v = v_new`` and, with
        the acceleration ``a = M^-1 f(x, v) + gravity`` of the spring, damping and gravity forces,
        ``x_prev = x - h v + h^2/2 a`` and ``v_prev = v - h a`` (Taylor to O(h^3) and O(h^2): the
        first step keeps the method's second order), all written into ``state``. ``f`` is taken
        from :func:`assemble` at ``x' = y = x`` with ``x_hat = x - v/kappa`` (so the damping
        velocities are ``v``) and the contact terms compiled out (``assemble_no_contact``): its
        gradient is ``-beta M a``. Contact forces are
        stiff and one-sided, so their Taylor history would be meaningless: a particle within the
        contact band (``d < width/2``) of some geometry at reset starts with ``a = 0``."""
        e = wp.tid()
        if mask[e] == 0:
            return
        h = model.dt
        free_index = model.free_index
        kappa = dtype(1.5) / h
        beta = dtype(4.0) * h * h / dtype(9.0)
        for p in range(free_index.shape[0]):
            state.x[e, p] = x_new[e, p]
            state.v[e, p] = v_new[e, p]
            f = free_index[p]
            if f >= 0:
                for d in range(dim):  # offsets from x_new (store_targets); the point is x_new itself
                    scratch.y_t[f * dim + d, e] = dtype(0.0)
                    scratch.x_hat[f * dim + d, e] = -v_new[e, p][d] / kappa
                    scratch.u[f * dim + d, e] = dtype(0.0)
        phi, scale, neg = assemble_no_contact(e, model, mass, stiffness, x_new, x_new, v_new, PROJECT_ALL, scratch)
        for p in range(free_index.shape[0]):
            f = free_index[p]
            a = vec()
            if f >= 0:
                a = -get_vec(scratch.g, e, f) / (beta * mass[e, p])
                for k in range(model.geo_kind.shape[0]):
                    dist, nrm, C = ct.signed_distance(model.geo_kind[k], model.geo_a[k], model.geo_b[k],
                                                      model.geo_r[k], x_new[e, p])
                    if dist < dtype(0.5) * model.contact_width:
                        a = vec()
            state.x_prev[e, p] = x_new[e, p] - h * v_new[e, p] + (dtype(0.5) * h * h) * a
            state.v_prev[e, p] = v_new[e, p] - h * a

    return SimpleNamespace(vec=vec, mat=mat, ModelData=ModelData, StateData=StateData, NewtonScratch=NewtonScratch,
                           bdf2_step=bdf2_step, potential=potential, assemble=assemble, startup=startup,
                           inertial_target=inertial_target, step_velocity=step_velocity,
                           store_increment=store_increment, add_block=add_block, add_vec=add_vec,
                           get_vec=get_vec, store_targets=store_targets, contact_particle=contact_particle)
