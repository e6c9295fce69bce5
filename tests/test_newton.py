"""Newton solver of the BDF2 step: convergence, independent check of the BDF2 equations at the
output, and reporting of steps that do not converge or produce non-finite values."""

import numpy as np
import pytest
import warp as wp

from warpsim_rl import ActionError, SceneBuilder, SimulationError, Simulator, load_scene
from warpsim_rl.kernels.bdf2 import STATUS_MAX_ITERS, STATUS_NONFINITE, STATUS_OK

STIFFNESS = [1e2, 1e3, 1e4, 2e4, 5e4, 1e5]  # N/m, one per env


def pendulum2d_like(dt, damping=0.0, max_iters=None):
    """pendulum2d (1 kg bob on a 1 m spring below a handle) with another dt/damping."""
    b = SceneBuilder("pendulum2d_like", dim=2, dt=dt)
    h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0], name="handle")
    p = b.add_particle([0.0, -1.0], mass=1.0, name="bob")
    b.add_spring(h, p, stiffness=2e4, damping=damping)
    if max_iters is not None:
        b.set_solver(max_iters=max_iters)
    return b.finalize()


def set_action(model, ctrl, a):
    ctrl.action.assign(wp.array(np.asarray(a, dtype=model.np_dtype), dtype=model.vec, device=model.device))


def random_action(model, rng):
    lim = model.scene.velocity_limit
    return rng.uniform(-1.0, 1.0, size=(model.num_envs,) + lim.shape) * lim[None]


def bdf2_check(model, s_in, action, s_out):
    """Independent numpy check of one BDF2 step (kernels/bdf2.py module doc), float64.

    Returns the largest violation, in m/s, of ``M (x' - y) = beta f(x', v')`` expressed as
    ``max |x' - y - beta M^-1 f| / h`` over the free DOFs, after asserting the exact parts
    (handle kinematics, history shift, BDF2 velocity)."""
    sc, h = model.scene, model.dt
    beta, kappa = 4 * h * h / 9, 1.5 / h
    x, v, xp, vp = (a.numpy().astype(np.float64) for a in s_in.arrays())
    x1, v1, xp1, vp1 = (a.numpy().astype(np.float64) for a in s_out.arrays())
    k_all, L_all = model.stiffness.numpy(), model.rest_length.numpy()
    m_all = model.mass.numpy()
    c_all, cab = model.damping.numpy(), model.is_cable.numpy().astype(bool)
    free, hp = sc.free_particles, sc.handles
    np.testing.assert_array_equal(xp1, x)
    np.testing.assert_array_equal(vp1, v)
    a = np.clip(action, -sc.velocity_limit[None], sc.velocity_limit[None])
    np.testing.assert_allclose(v1[:, hp], a, rtol=1e-15, atol=0)
    np.testing.assert_allclose(x1[:, hp], x[:, hp] + h * a, rtol=1e-15, atol=1e-15)
    x_hat = 4 / 3 * x - 1 / 3 * xp
    y = x_hat + 2 * h / 3 * (4 / 3 * v - 1 / 3 * vp)
    np.testing.assert_allclose(v1[:, free], kappa * (x1[:, free] - x_hat[:, free]), rtol=1e-13, atol=1e-13)
    worst = 0.0
    for e in range(model.num_envs):
        f = m_all[e][:, None] * sc.gravity[None, :]
        for s, (i, j) in enumerate(sc.springs):
            d = x1[e, i] - x1[e, j]
            l = np.linalg.norm(d)
            L = L_all[e, s]
            if not (cab[s] and l <= L):
                fs = -k_all[e, s] * (l - L) * d / l
                f[i] += fs
                f[j] -= fs
            d0 = x[e, i] - x[e, j]
            l0 = np.linalg.norm(d0)
            if c_all[s] > 0 and (not cab[s] or l0 > L) and l0 > 0:
                u = d0 / l0
                fd = -c_all[s] * (u @ (v1[e, i] - v1[e, j])) * u
                f[i] += fd
                f[j] -= fd
        r = x1[e, free] - y[e, free] - beta * f[free] / m_all[e, free][:, None]
        worst = max(worst, np.abs(r).max() / h)
    return worst


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dt", [0.01, 0.02, 0.05])
@pytest.mark.parametrize("damping", [0.0, 5.0])
def test_newton_converges_pendulum(device, dtype, dt, damping, rng):
    sc = pendulum2d_like(dt, damping)
    E = len(STIFFNESS)
    model = sc.build(num_envs=E, device=device, dtype=dtype)
    model.set_stiffness(np.array(STIFFNESS)[:, None])
    sim = Simulator(model)
    vel = np.zeros((E, 2, 2))
    vel[:, 1] = rng.normal(0.0, 2.0, size=(E, 2))
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    worst = 0.0
    for t in range(25):
        a = random_action(model, rng)
        set_action(model, ctrl, a)
        sim.step(s0, ctrl, s1, check=True)
        np.testing.assert_array_equal(sim.status.numpy(), STATUS_OK)
        assert np.all(sim.residual.numpy() <= model.tol), sim.residual.numpy()
        assert np.all(sim.iterations.numpy() <= model.max_iters)
        if dtype == "float64":
            worst = max(worst, bdf2_check(model, s0, a, s1))
        s0, s1 = s1, s0
    assert np.all(np.isfinite(s0.flat()))
    # the bob actually swung: the step was not a no-op
    assert np.abs(s0.x.numpy()[:, 1] - np.array([0.0, -1.0])).max() > 0.05
    if dtype == "float64":
        assert worst <= model.tol, f"BDF2 equations violated by {worst} m/s"


@pytest.mark.parametrize("scene", ["cable_payload2d", "double_pendulum3d", "rope3d"])
def test_bdf2_equations_hold_shipped_scenes(device, scene, rng):
    """Random actions (up to 1.5x the limits: clipped) and velocities on the shipped scenes
    (cables going slack and taut; a damped rope), float64: the output satisfies the BDF2
    equations to the Newton tolerance."""
    sc = load_scene(scene, num_particles=5, damping=0.5) if scene == "rope3d" else load_scene(scene)
    E = 3
    model = sc.build(num_envs=E, device=device, dtype="float64")
    sim = Simulator(model)
    vel = np.broadcast_to(sc.velocities, (E,) + sc.velocities.shape).copy()
    vel[:, ~sc.is_handle] += rng.normal(0.0, 1.0, size=(E, 1, sc.dim))
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    worst = 0.0
    for t in range(15):
        a = 1.5 * random_action(model, rng)
        set_action(model, ctrl, a)
        sim.step(s0, ctrl, s1, check=True)
        assert np.all(sim.residual.numpy() <= model.tol)
        worst = max(worst, bdf2_check(model, s0, a, s1))
        s0, s1 = s1, s0
    assert worst <= model.tol


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_newton_converges_stiff_double_pendulum_thrown_up(device, dtype):
    dt = 0.05
    b = SceneBuilder("double_pendulum2d", dim=2, dt=dt)
    h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0])
    p = b.add_particle([0.0, -0.5], mass=0.5, velocity=[0.0, 2.5])
    q = b.add_particle([0.0, -1.0], mass=0.5, velocity=[1.0, 2.5])
    b.add_spring(h, p, stiffness=1e5)
    b.add_spring(p, q, stiffness=1e5)
    sc = b.finalize()
    model = sc.build(num_envs=1, device=device, dtype=dtype)
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    sim.step(s0, model.control(), s1, check=False)
    # reference: the same step solved to 1e-11 m/s in float64 with a generous iteration budget
    b.set_solver(max_iters=500, tol=1e-11)
    ref_model = b.finalize().build(num_envs=1, device=device, dtype="float64")
    ref_sim = Simulator(ref_model)
    r0, r1 = ref_model.state(), ref_model.state()
    ref_sim.step(r0, ref_model.control(), r1, check=True)
    err = np.abs(s1.x.numpy().astype(np.float64) - r1.x.numpy()).max() / dt  # m/s

    assert sim.status.numpy()[0] == STATUS_OK
    assert sim.residual.numpy()[0] <= model.tol
    assert err <= 2 * model.tol


def test_newton_converges_very_stiff_small_swings(device):
    """k = 1e6 N/m, small swings, float64: the last Newton steps (~1e-10 m) change Phi by less
    than the rounding of its spring terms (~beta k |l - L| eps), far above eps |Phi|. The line
    search must accept them (round-off-aware noise scale) instead of stagnating at ~1e-8 m/s
    (which gave STATUS_MAX_ITERS in ~3% of these envs before that fix)."""
    dt, k, E = 0.02, 1e6, 256
    b = SceneBuilder("stiff_pendulum", dim=2, dt=dt)
    h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0])
    p = b.add_particle([0.0, -1.0], mass=1.0)
    b.add_spring(h, p, stiffness=k, rest_length=1.0)
    model = b.finalize().build(num_envs=E, device=device, dtype="float64")
    sim = Simulator(model)
    th = np.random.default_rng(0).uniform(-0.05, 0.05, E)
    l = 1.0 + 9.81 * np.cos(th) / k  # radial equilibrium
    pos = np.zeros((E, 2, 2))
    pos[:, 1] = np.stack([l * np.sin(th), -l * np.cos(th)], axis=1)
    s0, s1 = model.state(positions=pos), model.state()
    ctrl = model.control()
    for _ in range(300):
        sim.step(s0, ctrl, s1, check=False)
        s0, s1 = s1, s0
    envs, steps, reasons = sim.failures()
    assert envs == [], f"{len(envs)} envs failed, e.g. env {envs[0]} at step {steps[0]}: {reasons[0]}"


# ------------------------------------------------------------------------------------------
# failure reporting
# ------------------------------------------------------------------------------------------

def _mixed_envs(dtype, device):
    """4 envs of pendulum2d with max_iters=1: envs 0 and 2 hang at rest in static equilibrium
    (converged without a Newton step), envs 1 and 3 swing (need several iterations)."""
    sc = pendulum2d_like(0.02, max_iters=1)
    model = sc.build(num_envs=4, device=device, dtype=dtype)
    k, m, g = 2e4, 1.0, 9.81
    pos = np.broadcast_to(sc.positions, (4, 2, 2)).copy()
    pos[:, 1, 1] = -(1.0 + m * g / k)
    vel = np.zeros((4, 2, 2))
    vel[1, 1] = [1.5, 0.3]
    vel[3, 1] = [-0.7, 0.0]
    return model, model.state(positions=pos, velocities=vel), model.state()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonconvergence_raises_with_check(device, dtype):
    model, s0, s1 = _mixed_envs(dtype, device)
    sim = Simulator(model)
    with pytest.raises(SimulationError, match=r"2 environment\(s\) failed: env 1 at step 0: Newton did not "
                                              r"converge within max_iters, env 3 at step 0") as info:
        sim.step(s0, model.control(), s1, check=True)
    assert info.value.envs == [1, 3]
    assert info.value.steps == [0, 0]
    assert all("max_iters" in r for r in info.value.reasons)
    np.testing.assert_array_equal(sim.status.numpy(), [STATUS_OK, STATUS_MAX_ITERS, STATUS_OK, STATUS_MAX_ITERS])
    np.testing.assert_array_equal(sim.iterations.numpy(), [0, 1, 0, 1])
    res = sim.residual.numpy()
    assert np.all(res[[0, 2]] <= model.tol) and np.all(res[[1, 3]] > model.tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonconvergence_recorded_without_check(device, dtype):
    model, s0, s1 = _mixed_envs(dtype, device)
    sim = Simulator(model)
    ctrl = model.control()
    assert sim.failures() == ([], [], [])
    sim.check()  # nothing failed yet
    for t in range(3):
        sim.step(s0, ctrl, s1, check=False)  # never raises
        s0, s1 = s1, s0
    envs, steps, reasons = sim.failures()
    assert envs == [1, 3]
    assert steps == [0, 0]  # sticky: the first failure of each env
    assert all("max_iters" in r for r in reasons)
    with pytest.raises(SimulationError, match=r"env 1 at step 0.*env 3 at step 0") as info:
        sim.check()
    assert info.value.envs == [1, 3]
    with pytest.raises(SimulationError, match=r"env 1 at step 2"):
        sim.check(last_step_only=True)
    sim.clear_failures()
    assert sim.failures() == ([], [], [])
    sim.check()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_state_is_reported(device, dtype):
    """A NaN smuggled into the state (bypassing State.reset's validation) is flagged per env."""
    sc = load_scene("pendulum2d")
    model = sc.build(num_envs=3, device=device, dtype=dtype)
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    x = s0.x.numpy()
    x[1, 1, 0] = np.nan
    s0.x.assign(x)
    with pytest.raises(SimulationError, match=r"1 environment\(s\) failed: env 1 at step 0: non-finite"):
        sim.step(s0, model.control(), s1, check=True)
    np.testing.assert_array_equal(sim.status.numpy(), [STATUS_OK, STATUS_NONFINITE, STATUS_OK])
    assert np.all(np.isfinite(s1.flat()[[0, 2]]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_absurd_configuration_never_silent(device, dtype):
    """Finite but absurd inputs that overflow inside the step give a non-zero status, and no env
    ever returns non-finite values with status 0."""
    big = 1e30 if dtype == "float32" else 1e200
    sc = load_scene("pendulum2d")
    E = 4
    model = sc.build(num_envs=E, device=device, dtype=dtype)
    sim = Simulator(model)
    pos = np.broadcast_to(sc.positions, (E, 2, 2)).copy()
    pos[:, 1, 0] += 0.3
    vel = np.zeros((E, 2, 2))
    pos[1, 1, 1] = -big      # bob absurdly far away: spring energy overflows
    vel[2, 1, 0] = big       # absurd speed: the inertial target overflows
    model.set_stiffness([[2e4], [2e4], [2e4], [big]])  # env 3: stiffness**2 * ... overflows
    s0, s1 = model.state(positions=pos, velocities=vel), model.state()
    sim.step(s0, model.control(), s1, check=False)
    status = sim.status.numpy()
    assert status[0] == STATUS_OK
    assert status[1] != STATUS_OK and status[2] != STATUS_OK
    flat = s1.flat()
    for e in range(E):
        if not np.all(np.isfinite(flat[e])):
            assert status[e] != STATUS_OK, f"env {e}: non-finite output with status 0"
    envs, _, _ = sim.failures()
    assert set(envs) >= {1, 2}
    with pytest.raises(SimulationError, match=r"env 1 at step 0.*env 2 at step 0"):
        sim.check()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_action_without_check_is_reported(device, dtype):
    sc = load_scene("pendulum2d")
    model = sc.build(num_envs=2, device=device, dtype=dtype)
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    ctrl = model.control()
    set_action(model, ctrl, [[[0.0, 0.0]], [[np.nan, 0.0]]])
    with pytest.raises(ActionError):
        sim.step(s0, ctrl, s1, check=True)  # validated: fine
    sim.step(s0, ctrl, s1, check=False)
    handle = s1.x.numpy()[1, 0]
    # either the NaN is flagged, or it reached the state (and is then flagged) -- never a silent
    # substitution by a finite command
    assert sim.status.numpy()[1] != STATUS_OK or not np.all(np.isfinite(handle))
