"""Force elements and the assembled BDF2 incremental potential, checked by finite differences.

* ``spring_eval_kernel``: energy vs the closed form, gradient vs central differences of the
  energy, Hessian vs central differences of the gradient (float64, 2D and 3D); the projected
  Hessian (``project=1``) is PSD for compressed springs and exact for stretched ones; cables are
  exactly zero when slack and equal to the bilateral spring when taut.
* ``damping_terms`` through a tiny test kernel.
* ``bdf2_kernels(...).potential``: ``Phi`` vs an independent numpy evaluation, gradient vs
  central differences of ``Phi`` and banded Hessian vs central differences of the gradient,
  on shipped scenes and damped variants rebuilt with the :class:`SceneBuilder`.

Finite differences use one launch per check: every perturbed configuration is its own entry
(springs) or its own environment (potential).
"""

import functools

import numpy as np
import pytest
import warp as wp

from warpsim_rl import SceneBuilder, load_scene
from warpsim_rl.kernels.bdf2 import bdf2_kernels
from warpsim_rl.kernels.elements import element_funcs, spring_eval_kernel

F64 = wp.float64
EPS = 1.0e-6  # central-difference step (m); truncation ~EPS^2, round-off ~1e-16/EPS


# ------------------------------------------------------------------------------------------
# single springs
# ------------------------------------------------------------------------------------------

def eval_springs(xi, xj, k, rest, cable, project, dim, device):
    """Run ``spring_eval`` on host arrays; returns (energy (S,), grad_i (S, dim), hess (S, dim, dim))."""
    f = element_funcs(F64, dim)
    S = xi.shape[0]
    kern = spring_eval_kernel(F64, dim)
    energy = wp.zeros(S, dtype=F64, device=device)
    grad = wp.zeros(S, dtype=f.vec, device=device)
    hess = wp.zeros(S, dtype=f.mat, device=device)
    wp.launch(kern, dim=S, device=device, inputs=[
        wp.array(xi, dtype=f.vec, device=device), wp.array(xj, dtype=f.vec, device=device),
        wp.array(k, dtype=F64, device=device), wp.array(rest, dtype=F64, device=device),
        wp.array(cable.astype(np.int32), dtype=wp.int32, device=device), int(project),
        energy, grad, hess])
    return energy.numpy(), grad.numpy().reshape(S, dim), hess.numpy().reshape(S, dim, dim)


def random_springs(rng, dim, ratios, count):
    """``count`` springs per length ratio l/L in ``ratios`` at random positions/orientations."""
    xi, xj, k, rest = [], [], [], []
    for r in ratios:
        for _ in range(count):
            L = rng.uniform(0.3, 2.0)
            n = rng.normal(size=dim)
            n /= np.linalg.norm(n)
            a = rng.normal(size=dim)
            xj.append(a)
            xi.append(a + r * L * n)
            k.append(10.0 ** rng.uniform(1, 4))
            rest.append(L)
    return np.array(xi), np.array(xj), np.array(k), np.array(rest)


def fd_springs(xi, xj, k, rest, cable, dim, device):
    """Energy/gradient at the base points and central differences w.r.t. x_i and x_j."""
    S = xi.shape[0]
    # layout: [base | +e_a on xi | -e_a on xi | +e_a on xj | -e_a on xj] for a in 0..dim-1
    XI, XJ = [xi], [xj]
    for which in (0, 1):
        for a in range(dim):
            for sgn in (1.0, -1.0):
                d = np.zeros(dim)
                d[a] = sgn * EPS
                XI.append(xi + (d if which == 0 else 0.0))
                XJ.append(xj + (d if which == 1 else 0.0))
    reps = len(XI)
    U, G, Hs = eval_springs(np.concatenate(XI), np.concatenate(XJ), np.tile(k, reps), np.tile(rest, reps),
                            np.tile(cable, reps), 0, dim, device)
    U = U.reshape(reps, S)
    G = G.reshape(reps, S, dim)
    dU = np.zeros((2, S, dim))
    dG = np.zeros((2, S, dim, dim))  # dG[w, s, :, a] = d grad_i / d x_w[a]
    idx = 1
    for which in (0, 1):
        for a in range(dim):
            dU[which, :, a] = (U[idx] - U[idx + 1]) / (2 * EPS)
            dG[which, :, :, a] = (G[idx] - G[idx + 1]) / (2 * EPS)
            idx += 2
    return U[0], G[0], Hs[:S], dU, dG


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kind", ["bilateral", "cable"])
def test_spring_derivatives_fd(device, dim, kind, rng):
    # length ratios away from the cable switch (l = L) so that the energy is smooth there
    ratios = [0.4, 0.8, 0.95, 1.05, 1.3, 2.5]
    xi, xj, k, rest = random_springs(rng, dim, ratios, 4)
    cable = np.full(len(k), kind == "cable")
    U, g, H, dU, dG = fd_springs(xi, xj, k, rest, cable, dim, device)

    l = np.linalg.norm(xi - xj, axis=1)
    U_ref = 0.5 * k * (l - rest) ** 2
    if kind == "cable":
        U_ref = np.where(l > rest, U_ref, 0.0)
    np.testing.assert_allclose(U, U_ref, rtol=1e-12, atol=1e-14 * k.max())

    scale = (k * rest)[:, None]          # N: natural force scale
    # forces: f_i = -grad_i = -dU/dx_i, f_j = +grad_i = -dU/dx_j (action = reaction)
    np.testing.assert_allclose(g, dU[0], rtol=0, atol=1e-8 * scale.max())
    np.testing.assert_allclose(-g, dU[1], rtol=0, atol=1e-8 * scale.max())
    assert np.all(np.abs(g - dU[0]) <= 1e-8 * scale)
    # Hessian: K = d grad_i/d x_i = -d grad_i / d x_j, symmetric
    kk = k[:, None, None]
    assert np.all(np.abs(H - dG[0]) <= 1e-8 * kk)
    assert np.all(np.abs(-H - dG[1]) <= 1e-8 * kk)
    np.testing.assert_array_equal(H, np.swapaxes(H, 1, 2))
    # the check has teeth: the derivatives are not trivially zero
    if kind == "bilateral":
        assert np.all(np.linalg.norm(g, axis=1) > 1e-3 * k * rest)


@pytest.mark.parametrize("dim", [2, 3])
def test_spring_hessian_closed_form(device, dim, rng):
    xi, xj, k, rest = random_springs(rng, dim, [0.5, 0.9, 1.1, 2.0], 3)
    U, g, H = eval_springs(xi, xj, k, rest, np.zeros(len(k), bool), 0, dim, device)
    d = xi - xj
    l = np.linalg.norm(d, axis=1)
    n = d / l[:, None]
    nn = n[:, :, None] * n[:, None, :]
    H_ref = k[:, None, None] * (nn + (1 - rest / l)[:, None, None] * (np.eye(dim) - nn))
    np.testing.assert_allclose(H, H_ref, rtol=1e-12, atol=1e-12 * k.max())
    np.testing.assert_allclose(g, (k * (l - rest))[:, None] * n, rtol=1e-12, atol=1e-12 * k.max())


@pytest.mark.parametrize("dim", [2, 3])
def test_projected_hessian(device, dim, rng):
    # compressed bilateral springs: exact Hessian indefinite, projected PSD
    xi, xj, k, rest = random_springs(rng, dim, [0.3, 0.7, 0.95], 4)
    bil = np.zeros(len(k), bool)
    _, g0, H0 = eval_springs(xi, xj, k, rest, bil, 0, dim, device)
    _, g1, H1 = eval_springs(xi, xj, k, rest, bil, 1, dim, device)
    np.testing.assert_array_equal(g0, g1)  # projection changes the Hessian only
    ev0 = np.linalg.eigvalsh(H0)
    ev1 = np.linalg.eigvalsh(H1)
    assert np.all(ev0[:, 0] < -0.04 * k), "compressed springs must have an indefinite exact Hessian"
    assert np.all(ev1 >= -1e-12 * k[:, None]), "projected Hessian must be PSD"
    # the projection keeps the axial stiffness k n n^T
    d = xi - xj
    n = d / np.linalg.norm(d, axis=1)[:, None]
    np.testing.assert_allclose(H1, k[:, None, None] * n[:, :, None] * n[:, None, :], rtol=1e-12,
                               atol=1e-12 * k.max())

    # stretched springs: projected == exact
    xi, xj, k, rest = random_springs(rng, dim, [1.01, 1.5, 3.0], 4)
    _, _, H0 = eval_springs(xi, xj, k, rest, bil, 0, dim, device)
    _, _, H1 = eval_springs(xi, xj, k, rest, bil, 1, dim, device)
    np.testing.assert_array_equal(H0, H1)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("project", [0, 1])
def test_cable_slack_and_taut(device, dim, project, rng):
    xi, xj, k, rest = random_springs(rng, dim, [0.2, 0.6, 0.9, 0.999], 3)
    U, g, H = eval_springs(xi, xj, k, rest, np.ones(len(k), bool), project, dim, device)
    np.testing.assert_array_equal(U, 0.0)
    np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_array_equal(H, 0.0)

    xi, xj, k, rest = random_springs(rng, dim, [1.001, 1.2, 2.0], 3)
    Uc, gc, Hc = eval_springs(xi, xj, k, rest, np.ones(len(k), bool), project, dim, device)
    Ub, gb, Hb = eval_springs(xi, xj, k, rest, np.zeros(len(k), bool), project, dim, device)
    assert np.all(Uc > 0)
    np.testing.assert_array_equal(Uc, Ub)
    np.testing.assert_array_equal(gc, gb)
    np.testing.assert_array_equal(Hc, Hb)


# ------------------------------------------------------------------------------------------
# damping
# ------------------------------------------------------------------------------------------

@functools.cache
def damping_eval_kernel(dim):
    f = element_funcs(F64, dim)

    @wp.kernel(enable_backward=False, module="unique")
    def damping_eval(xi: wp.array(dtype=f.vec), xhat: wp.array(dtype=f.vec), vj: wp.array(dtype=f.vec),
                     u: wp.array(dtype=f.vec), c: wp.array(dtype=F64), kappa: wp.array(dtype=F64),
                     energy: wp.array(dtype=F64), grad: wp.array(dtype=f.vec), hess: wp.array(dtype=f.mat)):
        t = wp.tid()
        # v_i = kappa (x_i - x_hat_i), the BDF2 velocity of a free particle
        rel = kappa[t] * (xi[t] - xhat[t]) - vj[t]
        e, g, h = f.damping_terms(rel, u[t], c[t], kappa[t])
        energy[t] = e
        grad[t] = g
        hess[t] = h

    return damping_eval


@pytest.mark.parametrize("dim", [2, 3])
def test_damping_terms_fd(device, dim, rng):
    f = element_funcs(F64, dim)
    S = 6
    xi = rng.normal(size=(S, dim))
    xhat = xi + 0.01 * rng.normal(size=(S, dim))
    vj = rng.normal(size=(S, dim))
    u = rng.normal(size=(S, dim))
    u /= np.linalg.norm(u, axis=1)[:, None]
    c = rng.uniform(0.5, 20.0, S)
    kappa = 1.5 / rng.choice([0.01, 0.02, 0.05], S)

    XI = [xi]
    for a in range(dim):
        for sgn in (1.0, -1.0):
            XI.append(xi + sgn * EPS * np.eye(dim)[a])
    R = len(XI)
    kern = damping_eval_kernel(dim)
    energy = wp.zeros(S * R, dtype=F64, device=device)
    grad = wp.zeros(S * R, dtype=f.vec, device=device)
    hess = wp.zeros(S * R, dtype=f.mat, device=device)
    tile = lambda a: np.tile(a, (R, 1)) if a.ndim == 2 else np.tile(a, R)  # noqa: E731
    wp.launch(kern, dim=S * R, device=device, inputs=[
        wp.array(np.concatenate(XI), dtype=f.vec, device=device),
        wp.array(tile(xhat), dtype=f.vec, device=device), wp.array(tile(vj), dtype=f.vec, device=device),
        wp.array(tile(u), dtype=f.vec, device=device), wp.array(tile(c), dtype=F64, device=device),
        wp.array(tile(kappa), dtype=F64, device=device), energy, grad, hess])
    D = energy.numpy().reshape(R, S)
    G = grad.numpy().reshape(R, S, dim)
    H = hess.numpy().reshape(R, S, dim, dim)[0]

    # closed form and physics: the damping force -grad is -c (u . (v_i - v_j)) u
    rel = kappa[:, None] * (xi - xhat) - vj
    s = np.sum(u * rel, axis=1)
    np.testing.assert_allclose(D[0], c * s * s / (2 * kappa), rtol=1e-12)
    np.testing.assert_allclose(-G[0], -(c * s)[:, None] * u, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(H, (c * kappa)[:, None, None] * u[:, :, None] * u[:, None, :], rtol=1e-12)
    # derivatives by central differences
    for a in range(dim):
        dD = (D[1 + 2 * a] - D[2 + 2 * a]) / (2 * EPS)
        dG = (G[1 + 2 * a] - G[2 + 2 * a]) / (2 * EPS)
        np.testing.assert_allclose(G[0][:, a], dD, rtol=1e-6, atol=1e-9 * (c * kappa).max())
        np.testing.assert_allclose(H[:, :, a], dG, rtol=1e-6, atol=1e-9 * (c * kappa).max())


# ------------------------------------------------------------------------------------------
# the assembled incremental potential
# ------------------------------------------------------------------------------------------

def rebuild(scene, damping=None, name=None):
    """Rebuild ``scene`` with the SceneBuilder, optionally with per-spring ``damping``."""
    b = SceneBuilder(name or scene.name, dim=scene.dim, dt=scene.dt, gravity=scene.gravity)
    hk = {int(p): k for k, p in enumerate(scene.handles)}
    for p in range(scene.num_particles):
        if scene.is_handle[p]:
            b.add_handle(scene.positions[p], scene.velocity_limit[hk[p]], name=scene.particle_names[p])
        else:
            b.add_particle(scene.positions[p], scene.masses[p], scene.velocities[p], name=scene.particle_names[p])
    for s, (i, j) in enumerate(scene.springs):
        b.add_spring(int(i), int(j), scene.stiffness[s], scene.rest_length[s],
                     damping=scene.damping[s] if damping is None else damping[s],
                     kind="cable" if scene.is_cable[s] else "bilateral")
    return b.finalize()


def dense_from_band(Hb, N, B):
    """Dense symmetric matrices (E, N, N) from the band storage (N*(B+1), E) of kernels/linalg.py."""
    E = Hb.shape[1]
    A = np.zeros((E, N, N))
    for i in range(N):
        for d in range(B + 1):
            j = i - d
            if j >= 0:
                A[:, i, j] = Hb[i * (B + 1) + d]
                A[:, j, i] = Hb[i * (B + 1) + d]
    return A


def potential_eval(model, xq, x_in, v_in, xp_in, vp_in, v_handle, project):
    """Launch the ``potential`` kernel (one env per row of the host arrays); returns ``phi``, ``g``,
    the band ``H`` and the inertial target ``y`` (absolute: the kernel holds it as an offset from
    the start-of-step positions ``x_in``)."""
    m, d, vec = model, model.device, model.vec
    E = m.num_envs
    K = bdf2_kernels(F64, m.dim)
    arr = lambda a: wp.array(np.ascontiguousarray(a), dtype=vec, device=d)  # noqa: E731
    sc = m.newton_scratch()
    sc.H.fill_(123.0)  # garbage: assemble must reset it
    phi = wp.zeros(E, dtype=F64, device=d)
    wp.launch(K.potential, dim=E, device=d, inputs=[
        m.data, m.mass, m.stiffness, arr(xq), m.state_data([arr(a) for a in (x_in, v_in, xp_in, vp_in)]),
        arr(v_handle), int(project), sc, phi])
    free = model.scene.free_particles
    y = sc.y_t.numpy().T + np.asarray(x_in)[:, free].reshape(E, -1)
    return phi.numpy(), sc.g.numpy().T.copy(), sc.H.numpy(), y


def numpy_phi(scene, xq, x_in, v_in, xp_in, vp_in, v_handle):
    """Independent numpy evaluation of Phi for one env (kernels/bdf2.py module doc)."""
    h = scene.dt
    beta, kappa = 4 * h * h / 9, 1.5 / h
    x_hat = 4 / 3 * x_in - 1 / 3 * xp_in
    y = x_hat + 2 * h / 3 * (4 / 3 * v_in - 1 / 3 * vp_in)
    phi = 0.0
    for p in scene.free_particles:
        r = xq[p] - y[p]
        phi += 0.5 * scene.masses[p] * r @ r - beta * scene.masses[p] * scene.gravity @ r
    for s, (i, j) in enumerate(scene.springs):
        k, L, c, cab = scene.stiffness[s], scene.rest_length[s], scene.damping[s], scene.is_cable[s]
        l = np.linalg.norm(xq[i] - xq[j])
        U = 0.0 if (cab and l <= L) else 0.5 * k * (l - L) ** 2
        if c > 0:
            d0 = x_in[i] - x_in[j]
            l0 = np.linalg.norm(d0)
            if (not cab or l0 > L) and l0 > 0:
                vel = lambda p: v_handle[p] if scene.is_handle[p] else kappa * (xq[p] - x_hat[p])  # noqa: E731
                sr = (d0 / l0) @ (vel(i) - vel(j))
                U += c * sr * sr / (2 * kappa)
        phi += beta * U
    return phi, y


def _scene_cases():
    dp = load_scene("double_pendulum3d")
    rope = load_scene("rope3d", num_particles=4)
    cab = load_scene("cable_payload2d")
    return {
        "double_pendulum3d": dp,
        "double_pendulum3d_damped": rebuild(dp, damping=[3.0, 7.5]),
        "rope3d": rope,
        "rope3d_damped": load_scene("rope3d", num_particles=4, damping=0.8),
        "cable_payload2d": cab,
        "cable_payload2d_damped": rebuild(cab, damping=[4.0, 10.0]),
    }


CASES = _scene_cases()


def random_step_input(scene, rng, scale=0.05):
    """Random step-start state around the scene's rest positions; cables kept away from the
    switch (|l - L| > 1e-3) so that Phi is smooth within the finite-difference stencil."""
    n, dim = scene.num_particles, scene.dim
    while True:
        x_in = scene.positions + scale * rng.normal(size=(n, dim))
        xq = x_in + scale * rng.normal(size=(n, dim))
        ok = True
        for s, (i, j) in enumerate(scene.springs):
            if scene.is_cable[s]:
                for x in (x_in, xq):
                    if abs(np.linalg.norm(x[i] - x[j]) - scene.rest_length[s]) < 1e-3:
                        ok = False
        if ok:
            break
    v_in = rng.normal(size=(n, dim))
    xp_in = x_in - scene.dt * v_in + 1e-3 * rng.normal(size=(n, dim))
    vp_in = v_in + 0.1 * rng.normal(size=(n, dim))
    v_handle = rng.normal(size=(n, dim))
    return xq, x_in, v_in, xp_in, vp_in, v_handle


@pytest.mark.parametrize("case", sorted(CASES))
def test_potential_gradient_hessian_fd(device, case, rng):
    scene = CASES[case]
    N, dim = scene.num_dofs, scene.dim
    xq, x_in, v_in, xp_in, vp_in, v_handle = random_step_input(scene, rng)
    if "damped" in case:
        assert scene.damping.max() > 0
        # at least one damper is active (cables only damp when taut at the step start)
        active = [not scene.is_cable[s] or np.linalg.norm(x_in[i] - x_in[j]) > scene.rest_length[s]
                  for s, (i, j) in enumerate(scene.springs)]
        assert any(active)

    # env 0: base point; env 1 + 2r (+EPS), 2 + 2r (-EPS) on free DOF r
    E = 1 + 2 * N
    model = scene.build(num_envs=E, device=device, dtype="float64")
    free = scene.free_particles
    XQ = np.repeat(xq[None], E, axis=0)
    for r in range(N):
        p, a = free[r // dim], r % dim
        XQ[1 + 2 * r, p, a] += EPS
        XQ[2 + 2 * r, p, a] -= EPS
    rep = lambda a: np.repeat(a[None], E, axis=0)  # noqa: E731
    phi, g, Hb, y = potential_eval(model, XQ, rep(x_in), rep(v_in), rep(xp_in), rep(vp_in), rep(v_handle), 0)
    H = dense_from_band(Hb, N, model.band)[0]

    # Phi and the inertial target against numpy
    phi_np, y_np = numpy_phi(scene, xq, x_in, v_in, xp_in, vp_in, v_handle)
    np.testing.assert_allclose(phi[0], phi_np, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(y[0], y_np[free].reshape(-1), rtol=1e-13, atol=1e-14)

    g_fd = (phi[1::2] - phi[2::2]) / (2 * EPS)
    H_fd = ((g[1::2] - g[2::2]) / (2 * EPS)).T  # column r = d g / d x_r
    gscale = np.abs(g[0]).max()
    Hscale = np.abs(H).max()
    assert gscale > 1e-3
    np.testing.assert_allclose(g[0], g_fd, rtol=0, atol=2e-9 * gscale)  # round-off ~1e-10
    np.testing.assert_allclose(H, H_fd, rtol=0, atol=2e-9 * Hscale)
    # the band holds the whole matrix: entries outside it vanish in the FD Hessian too
    outside = np.abs(np.subtract.outer(np.arange(N), np.arange(N))) > model.band
    assert np.all(np.abs(H_fd[outside]) <= 2e-9 * Hscale)

    # projected assembly: same Phi and gradient, PSD Newton matrix with H >= M
    phi1, g1, Hb1, _ = potential_eval(model, XQ[:1].repeat(E, 0), rep(x_in), rep(v_in), rep(xp_in),
                                      rep(vp_in), rep(v_handle), 1)
    np.testing.assert_array_equal(phi1[0], phi[0])
    np.testing.assert_array_equal(g1[0], g[0])
    H1 = dense_from_band(Hb1, N, model.band)[0]
    M = np.diag(np.repeat(scene.masses[free], dim))
    assert np.linalg.eigvalsh(H1 - M).min() >= -1e-10 * Hscale
