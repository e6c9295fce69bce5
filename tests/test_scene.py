"""Scenes: the TOML loader and the Python SceneBuilder agree; Model/State/Control arrays have
the documented shapes and dtypes; per-environment parameters."""

import dataclasses

import numpy as np
import pytest
import warp as wp

from warpsim_rl import Scene, SceneBuilder, Simulator, load_scene, scene_names
from warpsim_rl.model import band_width

SHIPPED = ["cable_payload2d", "cloth_table", "double_pendulum3d", "pendulum2d", "pendulum3d", "rope3d",
           "wall_pendulum2d"]


def assert_scenes_identical(a: Scene, b: Scene):
    """Every field equal but the free-text ``description`` (the TOML files have one, the
    builder calls here do not)."""
    for f in dataclasses.fields(Scene):
        if f.name == "description":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray):
            assert isinstance(vb, np.ndarray), f.name
            assert va.dtype == vb.dtype, (f.name, va.dtype, vb.dtype)
            assert va.shape == vb.shape, (f.name, va.shape, vb.shape)
            np.testing.assert_array_equal(va, vb, err_msg=f.name)
        else:
            assert va == vb, (f.name, va, vb)


def build_pendulum2d():
    b = SceneBuilder("pendulum2d", dim=2, dt=0.02, gravity=[0.0, -9.81])
    h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0], name="handle")
    p = b.add_particle([0.0, -1.0], mass=1.0, name="bob")
    b.add_spring(h, p, stiffness=2.0e4, kind="bilateral")
    return b.finalize()


def build_cable_payload2d():
    b = SceneBuilder("cable_payload2d", dim=2, dt=0.02, gravity=[0.0, -9.81])
    b.add_handle([-0.5, 0.0], velocity_limit=[2.0, 2.0], name="left")
    b.add_handle([0.5, 0.0], velocity_limit=[2.0, 2.0], name="right")
    b.add_particle([0.0, -0.8], mass=1.0, name="payload")
    b.add_spring("left", "payload", stiffness=5.0e4, kind="cable")
    b.add_spring("right", "payload", stiffness=5.0e4, kind="cable")
    return b.finalize()


def build_rope3d(num_particles=10, particle_mass=0.05, stiffness=5.0e3, damping=0.0, length=1.0):
    b = SceneBuilder("rope3d", dim=3, dt=0.02, gravity=[0.0, -9.81, 0.0])
    b.parameters = dict(num_particles=num_particles, particle_mass=particle_mass, stiffness=stiffness,
                        damping=damping, length=length)
    b.add_handle([0.0, 0.0, 0.0], velocity_limit=[2.0, 2.0, 2.0], name="handle")
    b.add_chain("handle", [0.0, -1.0, 0.0], segments=num_particles, mass=particle_mass,
                stiffness=stiffness, damping=damping, kind="cable", name="rope")
    return b.finalize()


def test_scene_names():
    assert scene_names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenes_load(name):
    sc = load_scene(name)
    assert sc.name == name
    assert sc.num_particles == len(sc.particle_names)
    assert sc.num_dofs == (~sc.is_handle).sum() * sc.dim
    assert np.all(sc.masses[~sc.is_handle] > 0) and np.all(sc.masses[sc.is_handle] == 0)
    # default rest lengths are the initial distances
    d = np.linalg.norm(sc.positions[sc.springs[:, 0]] - sc.positions[sc.springs[:, 1]], axis=1)
    np.testing.assert_allclose(sc.rest_length, d, rtol=1e-15)


@pytest.mark.parametrize("name,builder", [
    ("pendulum2d", build_pendulum2d),
    ("cable_payload2d", build_cable_payload2d),
    ("rope3d", build_rope3d),
])
def test_toml_equals_builder(name, builder):
    assert_scenes_identical(load_scene(name), builder())


def test_toml_equals_builder_with_parameters():
    a = load_scene("rope3d", num_particles=7, damping=0.3, stiffness=1.0e4)
    assert_scenes_identical(a, build_rope3d(num_particles=7, damping=0.3, stiffness=1.0e4))


def test_toml_from_path_equals_by_name(tmp_path):
    from importlib import resources
    text = (resources.files("warpsim_rl.scenes") / "cable_payload2d.toml").read_text()
    p = tmp_path / "copy.toml"
    p.write_text(text)
    assert_scenes_identical(load_scene(p), load_scene("cable_payload2d"))
    assert_scenes_identical(load_scene(str(p)), build_cable_payload2d())


@pytest.mark.parametrize("n", [1, 3, 30])
def test_rope3d_num_particles(n):
    sc = load_scene("rope3d", num_particles=n)
    assert sc.num_particles == n + 1
    assert sc.num_springs == n
    assert sc.num_handles == 1
    assert sc.num_dofs == 3 * n
    assert sc.parameters["num_particles"] == n
    assert sc.particle_names == ("handle",) + tuple(f"rope{i}" for i in range(1, n + 1))
    np.testing.assert_array_equal(sc.springs, np.stack([np.arange(n), np.arange(1, n + 1)], axis=1))
    np.testing.assert_allclose(sc.positions[-1], [0.0, -1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(sc.rest_length, 1.0 / n, rtol=1e-12)
    np.testing.assert_array_equal(sc.masses[1:], 0.05)
    assert np.all(sc.is_cable)
    # a chain couples neighbouring particles only: half-bandwidth 2*dim - 1 (dense if shorter)
    assert band_width(sc) == min(2 * 3 - 1, 3 * n - 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["cable_payload2d", "double_pendulum3d", "rope3d"])
def test_model_arrays(device, dtype, name):
    sc = load_scene(name)
    E = 3
    model = sc.build(num_envs=E, device=device, dtype=dtype)
    wdt = {"float32": wp.float32, "float64": wp.float64}[dtype]
    ndt = {"float32": np.float32, "float64": np.float64}[dtype]
    n, m, h, dim = sc.num_particles, sc.num_springs, sc.num_handles, sc.dim
    assert model.dtype == wdt and model.np_dtype == ndt
    assert model.vec == wp.types.vector(length=dim, dtype=wdt)
    assert (model.num_envs, model.num_particles, model.num_springs, model.num_handles, model.dim) == (E, n, m, h, dim)
    assert model.num_dofs == sc.num_dofs and model.band == band_width(sc)
    assert model.dt == sc.dt
    assert model.tol == (1e-4 if dtype == "float32" else 1e-9)
    assert model.max_iters == sc.solver.max_iters and model.line_search_max == sc.solver.line_search_max

    def check(arr, shape, dtype, value=None):
        assert arr.shape == shape, (arr.shape, shape)
        assert arr.dtype == dtype
        assert arr.device == model.device
        if value is not None:
            np.testing.assert_array_equal(arr.numpy(), np.asarray(value).astype(arr.numpy().dtype))

    check(model.mass, (E, n), wdt, np.tile(sc.masses, (E, 1)))
    check(model.stiffness, (E, m), wdt, np.tile(sc.stiffness, (E, 1)))
    check(model.rest_length, (E, m), wdt, np.tile(sc.rest_length, (E, 1)))
    check(model.damping, (m,), wdt, sc.damping)
    check(model.is_cable, (m,), wp.int32, sc.is_cable.astype(np.int32))
    check(model.spring_i, (m,), wp.int32, sc.springs[:, 0])
    check(model.spring_j, (m,), wp.int32, sc.springs[:, 1])
    check(model.handle_particle, (h,), wp.int32, sc.handles)
    check(model.velocity_limit, (h,), model.vec)
    np.testing.assert_array_equal(model.velocity_limit.numpy(), sc.velocity_limit.astype(ndt))
    fi = np.full(n, -1)
    fi[sc.free_particles] = np.arange(len(sc.free_particles))
    check(model.free_index, (n,), wp.int32, fi)
    np.testing.assert_array_equal(np.array(model.gravity), sc.gravity.astype(ndt))

    st = model.state()
    for a in st.arrays():
        check(a, (E, n), model.vec)
    x, v, xp, vp = (a.numpy() for a in st.arrays())
    np.testing.assert_array_equal(x, np.broadcast_to(sc.positions.astype(ndt), (E, n, dim)))
    np.testing.assert_array_equal(v, np.broadcast_to(sc.velocities.astype(ndt), (E, n, dim)))
    check(model.control().action, (E, max(h, 1)), model.vec, np.zeros((E, max(h, 1), dim)))
    assert st.flat().shape == (E, 4 * n * dim) and st.flat().dtype == ndt


def test_state_reset_history(device):
    """reset(): x_prev = x - dt v + dt^2/2 a, v_prev = v - dt a with the acceleration a of the
    forces at the state (computed here in numpy); handles get zero velocity and a = 0;
    env_mask resets a subset."""
    sc = load_scene("pendulum2d")
    E = 3
    model = sc.build(num_envs=E, device=device, dtype="float64")
    rng = np.random.default_rng(0)
    pos = np.broadcast_to(sc.positions, (E, 2, 2)) + rng.normal(size=(E, 2, 2))
    vel = rng.normal(size=(E, 2, 2))
    st = model.state(pos, vel)
    x, v, xp, vp = (a.numpy().copy() for a in st.arrays())
    np.testing.assert_array_equal(x, pos)
    np.testing.assert_array_equal(v[:, 0], 0.0)         # handle
    np.testing.assert_array_equal(v[:, 1], vel[:, 1])
    d = x[:, 1] - x[:, 0]
    length = np.linalg.norm(d, axis=-1, keepdims=True)
    k, L, m = sc.stiffness[0], sc.rest_length[0], sc.masses[1]
    acc = np.zeros_like(x)
    acc[:, 1] = sc.gravity - k * (length - L) * d / length / m
    np.testing.assert_allclose(xp, pos - sc.dt * v + 0.5 * sc.dt**2 * acc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vp, v - sc.dt * acc, rtol=0, atol=1e-11)
    st.reset(env_mask=[False, True, False])
    x2 = st.x.numpy()
    np.testing.assert_array_equal(x2[[0, 2]], pos[[0, 2]])
    np.testing.assert_array_equal(x2[1], sc.positions)
    np.testing.assert_array_equal(st.v.numpy()[1], 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_env_stiffness_and_masses(device, dtype):
    """set_stiffness / set_masses per env: stored per env and honoured by the step — each env
    matches a single-env scene built with its own values, bitwise."""
    sc = load_scene("pendulum2d")
    ks = np.array([5e3, 2e4, 8e4])
    ms = np.array([0.5, 1.0, 3.0])
    E = len(ks)
    model = sc.build(num_envs=E, device=device, dtype=dtype)
    model.set_stiffness(ks[:, None])
    model.set_masses(np.stack([np.zeros(E), ms], axis=1))
    np.testing.assert_array_equal(model.stiffness.numpy(), ks[:, None].astype(model.np_dtype))
    np.testing.assert_array_equal(model.mass.numpy()[:, 1], ms.astype(model.np_dtype))
    # broadcasting a scalar sets every env
    other = sc.build(num_envs=2, device=device, dtype=dtype)
    other.set_stiffness(7.0e3)
    np.testing.assert_array_equal(other.stiffness.numpy(), np.full((2, 1), 7.0e3, dtype=other.np_dtype))

    sim = Simulator(model)
    vel = np.zeros((E, 2, 2))
    vel[:, 1] = [1.0, 0.5]
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    for _ in range(10):
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
    for e in range(E):
        b = SceneBuilder("pendulum2d", dim=2, dt=sc.dt)
        h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0])
        p = b.add_particle([0.0, -1.0], mass=ms[e], velocity=[1.0, 0.5])
        b.add_spring(h, p, stiffness=ks[e])
        single = b.finalize().build(num_envs=1, device=device, dtype=dtype)
        ssim = Simulator(single)
        a0, a1 = single.state(), single.state()
        for _ in range(10):
            ssim.step(a0, single.control(), a1)
            a0, a1 = a1, a0
        np.testing.assert_array_equal(a0.flat()[0], s0.flat()[e])
    # the parameters matter: the envs differ
    x = s0.x.numpy()
    assert not np.array_equal(x[0], x[1]) and not np.array_equal(x[1], x[2])


def test_solver_settings_reach_model():
    b = SceneBuilder("s", dim=2, dt=0.01)
    h = b.add_handle([0.0, 0.0], [1.0, 1.0])
    p = b.add_particle([0.0, -1.0], 1.0)
    b.add_spring(h, p, 1e3)
    b.set_solver(max_iters=7, tol=1e-6, line_search_max=3)
    model = b.finalize().build(num_envs=1, device="cpu", dtype="float32")
    assert (model.max_iters, model.tol, model.line_search_max) == (7, 1e-6, 3)


def test_geometry_and_scene_accessors():
    b = SceneBuilder("geo", dim=3, dt=0.01)
    b.add_handle([0.0, 1.0, 0.0], [1.0, 1.0, 1.0], name="h")
    b.add_particle([0.0, 0.0, 0.0], 1.0, name="p")
    b.add_spring("h", "p", 1e3)
    b.add_plane([0.0, 2.0, 0.0], offset=-1.0)
    b.add_box([0.0, -0.5, 0.0], [0.5, 0.1, 0.5])
    sc = b.finalize()
    assert sc.planes[0].normal == (0.0, 1.0, 0.0) and sc.planes[0].offset == -1.0
    assert sc.boxes[0].half_extents == (0.5, 0.1, 0.5)
    assert sc.particle_index("p") == 1
    np.testing.assert_array_equal(sc.free_particles, [1])
    assert sc.free_particles.dtype == np.int32


def _startup_scene():
    """Every term of the start-up force: a stretched damped spring, a taut damped cable, a slack
    cable, a compressed bilateral spring, gravity, and a particle inside the floor's contact band
    (``a = 0`` there)."""
    b = SceneBuilder("startup_grad", dim=2, dt=0.02)
    b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0], name="h")
    b.add_particle([0.1, -0.5], mass=0.5, name="a")
    b.add_particle([0.3, -0.9], mass=0.7, name="b")
    b.add_particle([0.6, -1.4998], mass=0.3, name="c")  # 0.2 mm above the floor, band 0.5 mm
    b.add_spring("h", "a", stiffness=800.0, rest_length=0.45, damping=3.0)
    b.add_spring("a", "b", stiffness=1500.0, rest_length=0.4, kind="cable", damping=2.0)
    b.add_spring("b", "c", stiffness=1200.0, rest_length=0.7, kind="cable")
    b.add_spring("a", "c", stiffness=300.0, rest_length=1.2)
    b.add_plane([0.0, 1.0], offset=-1.5)
    return b.finalize()


def test_initial_state_differentiable_wrt_physical_state():
    """TorchSimulator.initial_state(x0, v0) with tensors: forward = the start-up kernel (bitwise
    the host-data path), and d loss / d(x0, v0) through the start-up history and a short rollout
    matches central differences in float64 (it used to be a host round trip, off the graph)."""
    import torch

    from warpsim_rl.autodiff import TorchSimulator

    sc = _startup_scene()
    E = 2
    ts = TorchSimulator(sc.build(num_envs=E, device="cpu", dtype="float64"))
    rng = np.random.default_rng(3)
    jitter = 0.01 * rng.normal(size=(E, 4, 2)) * np.array([1.0, 1.0, 1.0, 0.0])[None, :, None]
    x0 = torch.tensor(sc.positions[None] + jitter)
    v0 = torch.tensor(rng.normal(size=(E, 4, 2)))
    acts = torch.tensor(0.3 * rng.normal(size=(3, E, 1, 2)))
    w = [torch.tensor(rng.normal(size=(E, 4, 2))) for _ in range(8)]

    def loss(x, v):
        s0 = ts.initial_state(x, v)
        return sum((wi * t).sum() for wi, t in zip(w, list(s0) + list(ts.rollout(s0, acts)[-1])))

    host = ts.initial_state(x0.numpy(), v0.numpy())
    for a, b in zip(ts.initial_state(x0, v0), host):
        assert torch.equal(a, b)
    assert not any(t.requires_grad for t in host)
    xg, vg = x0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
    loss(xg, vg).backward()
    eps = 1e-6
    for which, grad in ((0, xg.grad), (1, vg.grad)):
        fd = torch.zeros_like(grad)
        for idx in np.ndindex(*grad.shape):
            args_p, args_m = [x0.clone(), v0.clone()], [x0.clone(), v0.clone()]
            args_p[which][idx] += eps
            args_m[which][idx] -= eps
            fd[idx] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))
    assert torch.all(vg.grad[:, 0] == 0)  # handles start at rest whatever v0 says
    # the start-up's force term is differentiated: d(w . x_prev)/dx0 is not just w (x_prev = x - dt v)
    xr = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((w[2] * ts.initial_state(xr, v0)[2]).sum(), xr)
    assert (g - w[2])[:, 1:3].abs().min() > 1e-3
    # ... except in the contact band (particle 3), where a = 0: x_prev = x - dt v exactly
    (g,) = torch.autograd.grad((w[2][:, 3] * ts.initial_state(xr, v0)[2][:, 3]).sum(), xr)
    assert torch.equal(g[:, 3], w[2][:, 3]) and torch.all(g[:, :3] == 0)
    # (n, dim) positions broadcast over the envs, also differentiably
    xs = torch.tensor(sc.positions, requires_grad=True)
    ts.initial_state(xs)[2].sum().backward()
    assert xs.grad.shape == (4, 2) and torch.isfinite(xs.grad).all()
    with pytest.raises(ValueError, match=r"positions\.dtype = torch\.float32: expected torch\.float64"):
        ts.initial_state(x0.float())


@pytest.mark.parametrize("name", ["cloth_table", "rope3d", "double_pendulum3d"])
def test_startup_expression_matches_the_kernel(name):
    """The torch start-up that initial_state's backward differentiates computes the kernel's
    history (springs, cables, damping, gravity; a = 0 in the contact band of a rounded box)."""
    import torch

    from warpsim_rl.autodiff import TorchSimulator, _in_contact_band, _startup_history

    sc = load_scene(name, **({"damping": 0.5} if name == "rope3d" else {}))
    E = 3
    ts = TorchSimulator(sc.build(num_envs=E, device="cpu", dtype="float64"))
    rng = np.random.default_rng(5)
    x = np.broadcast_to(sc.positions, (E,) + sc.positions.shape) + 0.02 * rng.normal(size=(E,) + sc.positions.shape)
    if name == "cloth_table":  # two particles in the table's contact band, one inside the table
        top = sc.boxes[0].center[1] + sc.boxes[0].half_extents[1]
        x[:, 5, 1] = top + 2e-4
        x[:, 6, 1], x[:, 6, 2] = top - 0.01, 0.0
    x, v = torch.tensor(x), torch.tensor(rng.normal(size=x.shape))
    st = ts.initial_state(x, v)
    xp, vp = _startup_history(ts.model, st[0], st[1])
    torch.testing.assert_close(xp, st[2], rtol=0, atol=1e-12)
    torch.testing.assert_close(vp, st[3], rtol=0, atol=1e-9)   # v_prev carries dt / (beta m) round-off
    assert int(_in_contact_band(ts.model, st[0]).sum()) == (2 * E if name == "cloth_table" else 0)
