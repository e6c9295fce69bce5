"""Physics of the BDF2 step against independent references.

(a) second-order convergence in dt against scipy's DOP853 (rtol 1e-11) on the same mass-spring
    ODE written in numpy, with a moving handle; (b) small-angle pendulum period; (c) free fall
    under slack cables; (d) batched == single-environment runs, bitwise; (e) planar motion stays
    planar; (f) energy of a free pendulum never grows and drifts only slightly.
"""

import numpy as np
import pytest
import warp as wp
from scipy.integrate import solve_ivp

from warpsim_rl import SceneBuilder, Simulator, load_scene

G = 9.81


def set_action(model, ctrl, a):
    ctrl.action.assign(wp.array(np.asarray(a, dtype=model.np_dtype), dtype=model.vec, device=model.device))


# ------------------------------------------------------------------------------------------
# (a) order of convergence
# ------------------------------------------------------------------------------------------

K_ORD, M_ORD, L_ORD = 500.0, 1.0, 1.0      # N/m, kg, m: spring mode ~3.6 Hz, resolved by all dt
TH0 = 0.4                                   # rad, initial angle (non-zero initial acceleration)
XB0 = np.array([L_ORD * np.sin(TH0), -L_ORD * np.cos(TH0)])
VB0 = np.array([0.5, 0.2])
T_END = 1.0
SEG = 0.1                                   # s, handle-velocity segments (a multiple of every dt)
DTS = [0.01, 0.005, 0.0025, 0.00125]


def handle_velocity(kind, t):
    """Commanded handle velocity on [t, t + dt): constant, or piecewise constant on the SEG grid."""
    if kind == "constant":
        return np.array([0.4, -0.3])
    seg = int(np.floor(t / SEG + 1e-9))
    return np.array([0.8 * np.sin(1.7 * seg + 0.3), 0.6 * np.cos(2.3 * seg)])


def ode_rhs(t, s, xh0, vh, c):
    """The mass-spring ODE (numpy): bob on a spring to a handle at xh0 + vh t."""
    x, v = s[:2], s[2:]
    xh = xh0 + vh * t
    d = x - xh
    l = np.linalg.norm(d)
    n = d / l
    f = -K_ORD * (l - L_ORD) * n + M_ORD * np.array([0.0, -G]) - c * (n @ (v - vh)) * n
    return np.concatenate([v, f / M_ORD])


def reference(kind, c, times):
    """Bob positions at ``times``, integrated segment by segment (the handle velocity jumps
    between segments) with DOP853's dense output."""
    times = np.asarray(times)
    out = np.zeros((len(times), 2))
    s = np.concatenate([XB0, VB0])
    xh = np.zeros(2)
    for k in range(int(round(T_END / SEG))):
        t0, t1 = k * SEG, (k + 1) * SEG
        vh = handle_velocity(kind, t0)
        r = solve_ivp(ode_rhs, (0.0, SEG), s, method="DOP853", rtol=1e-11, atol=1e-12,
                      dense_output=True, args=(xh, vh, c))
        assert r.success
        sel = (times > t0 + 1e-9) & (times <= t1 + 1e-9)
        out[sel] = r.sol(times[sel] - t0)[:2].T
        s = r.y[:, -1]
        xh = xh + vh * SEG
    return out


def exact_history(kind, c, dt):
    """(x, v) of the reference solution at t = -dt (handle moving with its first velocity)."""
    vh = handle_velocity(kind, 0.0)
    r = solve_ivp(ode_rhs, (0.0, -dt), np.concatenate([XB0, VB0]), method="DOP853", rtol=1e-12,
                  atol=1e-13, args=(np.zeros(2), vh, c))
    return r.y[:2, -1], r.y[2:, -1]


def bdf2_errors(device, kind, c, history):
    times = 0.01 * np.arange(1, int(round(T_END / 0.01)) + 1)
    ref = reference(kind, c, times)
    errs = []
    for dt in DTS:
        b = SceneBuilder("order_pendulum", dim=2, dt=dt)
        h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0])
        p = b.add_particle(XB0, mass=M_ORD, velocity=VB0)
        b.add_spring(h, p, stiffness=K_ORD, rest_length=L_ORD, damping=c)
        model = b.finalize().build(num_envs=1, device=device, dtype="float64")
        sim = Simulator(model)
        s0, s1 = model.state(), model.state()
        if history == "exact":
            xp, vp = exact_history(kind, c, dt)
            for arr, val in ((s0.x_prev, xp), (s0.v_prev, vp)):
                a = arr.numpy()
                a[0, 1] = val
                arr.assign(a)
        # else: the documented start-up of State.reset (history from the initial forces)
        ctrl = model.control()
        stride = int(round(0.01 / dt))
        xs = []
        for i in range(int(round(T_END / dt))):
            set_action(model, ctrl, handle_velocity(kind, i * dt)[None, None])
            sim.step(s0, ctrl, s1, check=True)
            s0, s1 = s1, s0
            if (i + 1) % stride == 0:
                xs.append(s0.x.numpy()[0, 1].copy())
        errs.append(np.abs(np.array(xs) - ref).max())
    order = np.polyfit(np.log(DTS), np.log(errs), 1)[0]
    return np.array(errs), order


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["constant", "piecewise"])
def test_bdf2_second_order_exact_history(device, kind):
    """BDF2 itself, started from the exact history (x, v at t = -dt), converges with order 2."""
    errs, order = bdf2_errors(device, kind, 0.0, "exact")
    assert np.all(np.diff(errs) < 0), errs
    assert 1.8 <= order <= 2.3, (order, errs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["constant", "piecewise"])
def test_bdf2_second_order_documented_startup(device, kind):
    """The same from State.reset's start-up history (Taylor from the initial forces)."""
    errs, order = bdf2_errors(device, kind, 0.0, "startup")
    assert np.all(np.diff(errs) < 0), errs
    assert 1.8 <= order <= 2.3, (order, errs)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "stretch-rate damping acts along the spring direction at the start of the step (elements.py), "
    "an O(dt) lag of the force direction: with damping the step is first-order (measured ~1.0)"))
@pytest.mark.slow
def test_bdf2_second_order_with_damping(device):
    errs, order = bdf2_errors(device, "constant", 20.0, "exact")
    assert 1.8 <= order <= 2.3, (order, errs)


# ------------------------------------------------------------------------------------------
# (b) period
# ------------------------------------------------------------------------------------------

def pendulum_at_angle(dt, k, theta, L=1.0, m=1.0):
    """Bob at angle ``theta`` below a fixed handle, at its radial static equilibrium."""
    l = L + m * G * np.cos(theta) / k
    b = SceneBuilder("pendulum", dim=2, dt=dt)
    h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0])
    p = b.add_particle([l * np.sin(theta), -l * np.cos(theta)], mass=m)
    b.add_spring(h, p, stiffness=k, rest_length=L)
    return b.finalize()


def test_small_angle_period(device):
    dt, L = 0.01, 1.0
    sc = pendulum_at_angle(dt, 1e5, 0.05, L)  # stiff: 0.1 mm static stretch
    model = sc.build(num_envs=1, device=device, dtype="float64")
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    ctrl = model.control()
    xs = [sc.positions[1, 0]]
    for _ in range(1100):  # ~5.5 periods
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
        xs.append(s0.x.numpy()[0, 1, 0])
    xs = np.array(xs)
    i = np.flatnonzero(np.sign(xs[:-1]) != np.sign(xs[1:]))
    tc = (i - xs[i] / (xs[i + 1] - xs[i])) * dt  # linear interpolation of the zero crossings
    assert len(tc) >= 10
    period = 2 * (tc[-1] - tc[0]) / (len(tc) - 1)
    T0 = 2 * np.pi * np.sqrt(L / G)
    assert abs(period / T0 - 1) <= 0.01, (period, T0)
    # still swinging (BDF2's numerical damping is small at this dt)
    assert np.abs(xs[-200:]).max() > 0.9 * np.abs(xs[:200]).max()


# ------------------------------------------------------------------------------------------
# (c) free fall under slack cables
# ------------------------------------------------------------------------------------------

def _free_fall(device, history):
    sc = load_scene("cable_payload2d")
    dt = sc.dt
    model = sc.build(num_envs=1, device=device, dtype="float64")
    sim = Simulator(model)
    ip = sc.particle_index("payload")
    v0 = np.array([0.05, 3.2])
    vel = sc.velocities.copy()
    vel[ip] = v0
    s0, s1 = model.state(velocities=vel), model.state()
    g = sc.gravity
    x0 = sc.positions[ip]
    if history == "exact":
        for arr, val in ((s0.x_prev, x0 - dt * v0 + 0.5 * g * dt * dt), (s0.v_prev, v0 - g * dt)):
            a = arr.numpy()
            a[0, ip] = val
            arr.assign(a)
    ctrl = model.control()  # handles at rest
    n = int(round(0.6 / dt))  # up and back down to about the start height
    xs, vs = [x0], [v0]
    for _ in range(n):
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
        x = s0.x.numpy()[0]
        # both cables slack throughout
        for s, (i, j) in enumerate(sc.springs):
            assert np.linalg.norm(x[i] - x[j]) < sc.rest_length[s]
        xs.append(x[ip].copy())  # numpy() of a CPU array is a view: copy
        vs.append(s0.v.numpy()[0, ip].copy())
    t = np.arange(n + 1)[:, None] * dt
    return np.array(xs), np.array(vs), x0 + v0 * t + 0.5 * g * t * t, v0 + g * t, dt


def test_free_fall_exact_with_consistent_history(device):
    """Slack cables exert nothing: with a consistent history BDF2 reproduces the parabola exactly."""
    xs, vs, x_ex, v_ex, _ = _free_fall(device, "exact")
    np.testing.assert_allclose(xs, x_ex, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vs, v_ex, rtol=0, atol=1e-11)


def test_free_fall_acceleration_is_g(device):
    """After the documented start-up the acceleration (second differences) is exactly g."""
    xs, vs, _, _, dt = _free_fall(device, "startup")
    acc = (xs[2:] - 2 * xs[1:-1] + xs[:-2]) / dt**2
    # the start-up transient decays like 3^-n (BDF2's parasitic root 1/3): 3^-15 ~ 7e-8
    np.testing.assert_allclose(acc[15:], np.broadcast_to([0.0, -G], acc[15:].shape), rtol=0, atol=1e-6 * G)
    assert np.abs(acc[:, 0]).max() <= 1e-9


def test_free_fall_positions_documented_startup(device):
    xs, _, x_ex, _, _ = _free_fall(device, "startup")
    np.testing.assert_allclose(xs, x_ex, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------
# (d) batch == single environments
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scene", ["cable_payload2d", "double_pendulum3d"])
def test_batch_equals_single_envs_bitwise(device, dtype, scene, rng):
    sc = load_scene(scene)
    E, T = 5, 20
    free = ~sc.is_handle
    pos = np.broadcast_to(sc.positions, (E,) + sc.positions.shape).copy()
    pos[:, free] += rng.normal(0.0, 0.05, size=(E, free.sum(), sc.dim))
    vel = np.zeros_like(pos)
    vel[:, free] = rng.normal(0.0, 1.0, size=(E, free.sum(), sc.dim))
    k = sc.stiffness[None] * rng.uniform(0.5, 2.0, size=(E, sc.num_springs))
    acts = rng.uniform(-1.5, 1.5, size=(T, E, sc.num_handles, sc.dim)) * sc.velocity_limit / 2.0

    batch = sc.build(num_envs=E, device=device, dtype=dtype)
    batch.set_stiffness(k)
    sim = Simulator(batch)
    s0, s1 = batch.state(pos, vel), batch.state()
    ctrl = batch.control()
    hist = []
    for t in range(T):
        set_action(batch, ctrl, acts[t])
        sim.step(s0, ctrl, s1, check=True)
        s0, s1 = s1, s0
        hist.append((s0.flat(), sim.iterations.numpy().copy(), sim.residual.numpy().copy()))

    for e in range(E):
        single = sc.build(num_envs=1, device=device, dtype=dtype)
        single.set_stiffness(k[e:e + 1])
        ssim = Simulator(single)
        a0, a1 = single.state(pos[e], vel[e]), single.state()
        sctrl = single.control()
        for t in range(T):
            set_action(single, sctrl, acts[t, e:e + 1])
            ssim.step(a0, sctrl, a1, check=True)
            a0, a1 = a1, a0
            flat, iters, res = hist[t]
            np.testing.assert_array_equal(a0.flat()[0], flat[e], err_msg=f"env {e} step {t}")
            assert ssim.iterations.numpy()[0] == iters[e]
            assert ssim.residual.numpy()[0] == res[e]
    # the envs really differ
    assert not np.array_equal(hist[-1][0][0], hist[-1][0][1])


# ------------------------------------------------------------------------------------------
# (e) planar motion
# ------------------------------------------------------------------------------------------

def test_2d_state_shape():
    sc = load_scene("pendulum2d")
    model = sc.build(num_envs=3, device="cpu", dtype="float32")
    st = model.state()
    assert st.x.numpy().shape == (3, 2, 2)
    assert model.control().action.numpy().shape == (3, 1, 2)
    assert st.flat().shape == (3, 4 * 2 * 2)


@pytest.mark.parametrize("scene2d,scene3d", [("pendulum2d", "pendulum3d"), ("double_pendulum2d", "double_pendulum3d")])
def test_planar_3d_motion_stays_planar(device, scene2d, scene3d, rng):
    sc3 = load_scene(scene3d)
    if scene2d == "double_pendulum2d":  # the 2D twin of the shipped 3D scene
        b = SceneBuilder(scene2d, dim=2, dt=sc3.dt, gravity=sc3.gravity[:2])
        b.add_handle(sc3.positions[0, :2], sc3.velocity_limit[0, :2])
        for p in (1, 2):
            b.add_particle(sc3.positions[p, :2], sc3.masses[p])
        for s, (i, j) in enumerate(sc3.springs):
            b.add_spring(int(i), int(j), sc3.stiffness[s], sc3.rest_length[s])
        sc2 = b.finalize()
    else:
        sc2 = load_scene(scene2d)
    E, T = 3, 40
    free = ~sc3.is_handle
    vel2 = np.zeros((E, sc2.num_particles, 2))
    vel2[:, free] = rng.normal(0.0, 1.0, size=(E, free.sum(), 2))
    acts2 = rng.uniform(-2.0, 2.0, size=(T, E, 1, 2))
    m2 = sc2.build(num_envs=E, device=device, dtype="float64")
    m3 = sc3.build(num_envs=E, device=device, dtype="float64")
    sims = Simulator(m2), Simulator(m3)
    st2 = [m2.state(velocities=vel2), m2.state()]
    st3 = [m3.state(velocities=np.concatenate([vel2, np.zeros((E, sc3.num_particles, 1))], axis=2)), m3.state()]
    c2, c3 = m2.control(), m3.control()
    for t in range(T):
        set_action(m2, c2, acts2[t])
        set_action(m3, c3, np.concatenate([acts2[t], np.zeros((E, 1, 1))], axis=2))
        sims[0].step(st2[0], c2, st2[1])
        sims[1].step(st3[0], c3, st3[1])
        st2.reverse()
        st3.reverse()
        x3 = st3[0].x.numpy()
        np.testing.assert_array_equal(x3[..., 2], 0.0)
        np.testing.assert_array_equal(st3[0].v.numpy()[..., 2], 0.0)
        np.testing.assert_allclose(x3[..., :2], st2[0].x.numpy(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# (f) energy
# ------------------------------------------------------------------------------------------

def test_free_pendulum_energy_drift(device):
    dt, k, theta = 0.005, 2e4, 0.5
    sc = pendulum_at_angle(dt, k, theta)
    model = sc.build(num_envs=1, device=device, dtype="float64")
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    ctrl = model.control()

    def energy(st):
        x, v = st.x.numpy()[0], st.v.numpy()[0]
        l = np.linalg.norm(x[1] - x[0])
        return 0.5 * v[1] @ v[1] - sc.gravity @ x[1] + 0.5 * k * (l - 1.0) ** 2

    E = [energy(s0)]
    n = int(round(3 * 2 * np.pi * np.sqrt(1.0 / G) / dt))  # 3 periods
    for _ in range(n):
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
        E.append(energy(s0))
    E = np.array(E)
    swing = G * (1 - np.cos(theta))  # J: the energy of the swing
    drift = (E[-1] - E[0]) / swing
    assert drift < 0, "BDF2 must not gain energy"
    assert drift > -5e-3, f"energy drift {drift:.2e} of the swing energy over 3 periods"
    # the second-order start-up history (State.reset) may move the first step's energy by its
    # O(dt^3) truncation error (1.4e-9 of the swing energy here); after that, never a gain
    assert E[1] - E[0] <= 1e-8 * swing, "start-up step gained energy beyond its truncation error"
    assert np.all(E[1:] <= E[1] + 1e-9 * swing), "energy rose above its value after the start-up step"
