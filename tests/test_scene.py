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
    for f in dataclasses.fields(Scene):
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
