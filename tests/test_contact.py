"""Frictional contact (kernels/contact.py, docs/contact.md): scenes and validation, the contact
terms of the incremental potential against finite differences, physics (resting, incline
stick/slide, drop energy, Newton convergence with an independent check of the BDF2 equations),
and exact derivatives of contact steps against finite differences in float64.

Finite differences stay away from the switches of the contact model (penalty regimes at
``d = +-w/2``, friction regime at ``|v_T| = eps_v``, the faces/edges regions of a box): every
case asserts its margins to them first.
"""

import numpy as np
import pytest
import torch
import warp as wp

import warpsim_rl as ws
from warpsim_rl import SceneBuilder, SceneError, Simulator, load_scene
from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.kernels.bdf2 import MASS_FLOOR, bdf2_kernels
from warpsim_rl.scene import ContactSettings, scene_from_dict
from warpsim_rl.tasks.place import cloth_lay_actions, cloth_place_target
from warpsim_rl.usd import record_rollout
from warpsim_rl.viz.geometry import grid_faces

G = 9.81
F64 = wp.float64


# ------------------------------------------------------------------------------------------
# numpy reference of the contact model (module doc of kernels/contact.py)
# ------------------------------------------------------------------------------------------

def np_sdf(geo, x):
    """(d, n, C) of a Plane or Box at x."""
    x = np.asarray(x, dtype=np.float64)
    dim = x.shape[0]
    if isinstance(geo, ws.scene.Plane):
        n = np.asarray(geo.normal)
        return float(n @ x - geo.offset), n, np.zeros((dim, dim))
    c, he, r = np.asarray(geo.center), np.asarray(geo.half_extents), geo.radius
    sgn = np.where(x - c < 0, -1.0, 1.0)
    q = np.abs(x - c) - (he - r)
    o = np.maximum(q, 0.0)
    lo = np.linalg.norm(o)
    if lo > 0:
        n = sgn * o / lo
        return lo - r, n, (np.diag((q > 0).astype(float)) - np.outer(n, n)) / lo
    k = int(np.argmax(q))
    n = np.zeros(dim)
    n[k] = sgn[k]
    return float(q[k] - r), n, np.zeros((dim, dim))


def np_penalty(d, k, w):
    """(energy, lambda, E'') of the smoothed penalty."""
    s = -d
    if s <= -w / 2:
        return 0.0, 0.0, 0.0
    if s < w / 2:
        t = s + w / 2
        return k * t ** 3 / (6 * w), k * t * t / (2 * w), k * t / w
    return k * (s * s / 2 + w * w / 24), k * s, k


def np_f1(y, eps):
    return 2 * y / eps - y * y / eps ** 2 if y < eps else 1.0


def geometries(scene):
    return list(scene.planes) + list(scene.boxes)


def contact_force(model, e, x1, x0, vel):
    """Contact force (penalty + lagged friction) on one free particle (numpy, float64)."""
    sc = model.scene
    w, eps = sc.contact.width, sc.contact.eps_v
    ks, mus = model.contact_stiffness.numpy()[e], model.friction.numpy()[e]
    f = np.zeros_like(x1)
    for g, geo in enumerate(geometries(sc)):
        d, n, _ = np_sdf(geo, x1)
        f += np_penalty(d, ks[g], w)[1] * n
        if mus[g] > 0:
            d0, n0, _ = np_sdf(geo, x0)
            lam0 = np_penalty(d0, ks[g], w)[1]
            if lam0 > 0:
                vt = vel - (n0 @ vel) * n0
                y = np.linalg.norm(vt)
                if y > 0:
                    f -= mus[g] * lam0 * np_f1(y, eps) * vt / y
    return f


def switch_margins(model, states):
    """Smallest distances of (particle, geometry) pairs to the switches of the contact model
    over ``states`` (tuples of (E, n, dim) arrays ``x, v, xp, vp`` with the step's BDF2
    velocities in ``v``): ``(position margin in m, friction-velocity margin in m/s)``."""
    sc = model.scene
    w, eps = sc.contact.width, sc.contact.eps_v
    pos_m, vel_m = np.inf, np.inf
    for st in states:
        x, v = (np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64) for a in st[:2])
        for e in range(x.shape[0]):
            for p in sc.free_particles:
                for geo in geometries(sc):
                    d, n, _ = np_sdf(geo, x[e, p])
                    pos_m = min(pos_m, abs(d - w / 2), abs(d + w / 2))
                    if isinstance(geo, ws.scene.Box):
                        q = np.abs(x[e, p] - np.asarray(geo.center)) - (np.asarray(geo.half_extents) - geo.radius)
                        if d < w / 2:
                            pos_m = min(pos_m, float(np.abs(q).min()))
                    if d < w / 2:
                        vt = v[e, p] - (n @ v[e, p]) * n
                        vel_m = min(vel_m, abs(np.linalg.norm(vt) - eps))
    return pos_m, vel_m


# ------------------------------------------------------------------------------------------
# scenes and validation
# ------------------------------------------------------------------------------------------

CONTACT_TOML = """
[scene]
name = "c"
dim = 3
dt = 0.01

[parameters]
k = 2.0e3

[contact]
stiffness = "$k"
width = 2.0e-3
friction = 0.4
eps_v = 0.02

[[particles]]
position = [0.0, 0.5, 0.0]
mass = 1.0

[[planes]]
normal = [0.0, 2.0, 0.0]
point = [0.0, -0.5, 0.0]
friction = 0.0

[[boxes]]
center = [0.0, 0.0, 0.0]
half_extents = [1.0, 0.25, 1.0]
radius = 0.05
stiffness = 5.0e3
"""


def test_contact_toml_equals_builder():
    import tomllib
    sc = scene_from_dict(tomllib.loads(CONTACT_TOML))
    b = SceneBuilder("c", dim=3, dt=0.01)
    b.parameters = {"k": 2.0e3}
    b.set_contact(stiffness=2.0e3, width=2.0e-3, friction=0.4, eps_v=0.02)
    b.add_particle([0.0, 0.5, 0.0], 1.0)
    b.add_plane([0.0, 1.0, 0.0], offset=-0.5, friction=0.0)
    b.add_box([0.0, 0.0, 0.0], [1.0, 0.25, 1.0], radius=0.05, stiffness=5.0e3)
    ref = b.finalize()
    for f in ("planes", "boxes", "contact", "positions", "masses", "parameters"):
        va, vb = getattr(sc, f), getattr(ref, f)
        assert (np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb), f
    assert sc.contact == ContactSettings(2.0e3, 2.0e-3, 0.4, 0.02)
    assert sc.planes[0].normal == (0.0, 1.0, 0.0) and sc.planes[0].offset == -0.5
    assert sc.boxes[0].radius == 0.05 and sc.boxes[0].stiffness == 5.0e3 and sc.boxes[0].friction is None
    # per-geometry values with the scene's defaults filled in
    m = sc.build(num_envs=2, device="cpu", dtype="float64")
    np.testing.assert_array_equal(m.contact_stiffness.numpy(), [[2.0e3, 5.0e3]] * 2)
    np.testing.assert_array_equal(m.friction.numpy(), [[0.0, 0.4]] * 2)
    np.testing.assert_array_equal(m.geo_kind.numpy(), [0, 1])
    np.testing.assert_array_equal(m.geo_r.numpy(), [-0.5, 0.05])
    assert m.has_friction == 1 and m.num_geometries == 2
    assert load_scene("pendulum2d").build(num_envs=1).num_geometries == 0


def _tiny(dim=3):
    b = SceneBuilder("t", dim=dim, dt=0.01)
    b.add_handle([0.0] * dim, [1.0] * dim, name="h")
    return b


@pytest.mark.parametrize("call,match", [
    (lambda b: b.set_contact(stiffness=0.0), r"contact\.stiffness = 0\.0: must be > 0"),
    (lambda b: b.set_contact(width=-1e-3), r"contact\.width = -0\.001: must be >= 0"),
    (lambda b: b.set_contact(friction=-0.1), r"contact\.friction = -0\.1: must be >= 0"),
    (lambda b: b.set_contact(eps_v=0.0), r"contact\.eps_v = 0\.0: must be > 0"),
    (lambda b: b.set_contact(friction="high"), r"contact\.friction = 'high': expected a number"),
    (lambda b: b.add_plane([0, 1, 0], offset=1.0, point=[0, 1, 0]), r"planes\[0\]: give either offset"),
    (lambda b: b.add_plane([0, 1, 0], stiffness=-5.0), r"planes\[0\]\.stiffness = -5\.0: must be > 0"),
    (lambda b: b.add_box([0, 0, 0], [1, 1, 1], radius=1.0), r"boxes\[0\]\.radius = 1\.0: must be >= 0 and <"),
    (lambda b: b.add_box([0, 0, 0], [1, 1, 1], friction=-1.0), r"boxes\[0\]\.friction = -1\.0: must be >= 0"),
    (lambda b: b.add_grid([0, 0, 0], 0, 3, [1, 0, 0], [0, 1, 0], 1.0, 1e3),
     r"grids\.grid\.rows = 0: must be an integer >= 1"),
    (lambda b: b.add_grid([0, 0, 0], 2, 3, [1, 0, 0], [2, 0, 0], 1.0, 1e3), r"grids\.grid: col_step = .* are parallel"),
    (lambda b: b.add_grid([0, 0, 0], 2, 3, [1, 0, 0], [0, 1, 0], 1.0, 1e3, handles=[[0, 5]], velocity_limit=[1, 1, 1]),
     r"grids\.grid\.handles\[0\] = \[0, 5\]: outside the 2 x 3 grid"),
    (lambda b: b.add_grid([0, 0, 0], 2, 3, [1, 0, 0], [0, 1, 0], 1.0, 1e3, handles=[[0, 0]]),
     r"grids\.grid\.velocity_limit: required when the grid has handles"),
    (lambda b: b.add_grid([0, 0, 0], 2, 3, [1, 0, 0], [0, 1, 0], -1.0, 1e3), r"grids\.grid\.mass = -1\.0: must be > 0"),
    (lambda b: b.add_grid([0, 0, 0], 2, 3, [1, 0, 0], [0, 1, 0], 1.0, 1e3, anchor="middle"),
     r"grids\.grid\.anchor = 'middle'"),
])
def test_contact_and_grid_fields(call, match):
    with pytest.raises(SceneError, match=match):
        call(_tiny())


def test_contact_toml_errors():
    import tomllib
    bad = CONTACT_TOML.replace("eps_v = 0.02", "eps_v = 0.02\nmu = 0.3")
    with pytest.raises(SceneError, match=r"contact: unknown key\(s\) \['mu'\]"):
        scene_from_dict(tomllib.loads(bad))
    bad = CONTACT_TOML.replace("radius = 0.05", "radius = 0.3")
    with pytest.raises(SceneError,
                       match=r"boxes\[0\]\.radius = 0\.3: must be >= 0 and < the smallest half extent 0\.25"):
        scene_from_dict(tomllib.loads(bad))


def test_model_contact_setters():
    sc = scene_from_dict(__import__("tomllib").loads(CONTACT_TOML))
    m = sc.build(num_envs=3, device="cpu", dtype="float32")
    m.set_contact_stiffness([[1e3, 2e3], [3e3, 4e3], [5e3, 6e3]])
    np.testing.assert_array_equal(m.contact_stiffness.numpy()[2], [5e3, 6e3])
    with pytest.raises(SceneError, match=r"contact\.stiffness\[1, 0\] = 0\.0: must be > 0"):
        m.set_contact_stiffness([[1e3, 1e3], [0.0, 1e3], [1e3, 1e3]])
    with pytest.raises(SceneError, match=r"friction\[0, 1\] = -0\.5: must be >= 0"):
        m.set_friction([[0.1, -0.5]])
    m.set_friction(0.0)
    assert m.has_friction == 0


def test_cloth_table_scene():
    sc = load_scene("cloth_table")
    rows, cols = sc.parameters["rows"], sc.parameters["cols"]
    assert (rows, cols) == (7, 4) and sc.num_particles == 28 and sc.num_handles == 2
    # the PODS state [handle positions, payload positions and velocities]: 3 (2 + 2 * 26) = 162
    assert 3 * (sc.num_handles + 2 * len(sc.free_particles)) == 162
    left, right = sc.particle_index("left"), sc.particle_index("right")
    np.testing.assert_array_equal(sc.handles, [left, right])
    assert (left, right) == (0, cols - 1)
    np.testing.assert_allclose(sc.positions[right] - sc.positions[left], [0.3, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(sc.positions[[left, right]].mean(axis=0), [0.0, 1.45, 0.25], atol=1e-12)
    np.testing.assert_allclose(sc.positions[-1, 1], 1.45 - 0.6, atol=1e-12)  # hangs down
    assert np.all(sc.is_cable)
    assert sc.num_springs == rows * (cols - 1) + (rows - 1) * cols + 2 * (rows - 1) * (cols - 1)
    np.testing.assert_allclose(sorted(set(np.round(sc.rest_length, 12))), [0.1, round(0.1 * np.sqrt(2), 12)])
    np.testing.assert_allclose(sc.masses.sum(), 0.1, rtol=1e-12)
    assert sc.boxes[0].radius > 0 and sc.boxes[0].friction == 0.5 and sc.planes[0].friction == 0.5
    model = sc.build(num_envs=1, device="cpu")
    assert model.num_dofs == 78 and model.band == 3 * (cols + 2) - 1
    big = load_scene("cloth_table", rows=9, cols=6, bend_stiffness=50.0)
    assert big.num_particles == 54 and big.num_dofs == 156
    assert big.num_springs == (9 * 5 + 8 * 6 + 2 * 8 * 5) + (9 * 4 + 7 * 6)  # + bending springs


def test_grid_toml_equals_builder():
    import tomllib
    text = """
[scene]
name = "g"
dim = 2
dt = 0.01
[[grids]]
name = "net"
origin = [0.0, 1.0]
anchor = "row0_center"
rows = 3
cols = 3
spacing = 0.2
col_step = [2.0, 0.0]
row_step = [0.0, -1.0]
mass = 0.7
stiffness = 100.0
shear_stiffness = 0.0
kind = "cable"
handles = [[0, 0], [0, -1]]
velocity_limit = [1.0, 1.0]
"""
    a = scene_from_dict(tomllib.loads(text))
    b = SceneBuilder("g", dim=2, dt=0.01)
    for c in range(3):
        if c in (0, 2):
            b.add_handle([-0.2 + 0.2 * c, 1.0], [1.0, 1.0], name=f"net_0_{c}")
        else:
            b.add_particle([-0.2 + 0.2 * c, 1.0], 0.1, name=f"net_0_{c}")
    for r in (1, 2):
        for c in range(3):
            b.add_particle([-0.2 + 0.2 * c, 1.0 - 0.2 * r], 0.1, name=f"net_{r}_{c}")
    # springs in add_grid's order: per cell, right then down (both ends handles: skipped)
    idx = np.arange(9).reshape(3, 3)
    for r in range(3):
        for c in range(3):
            if c + 1 < 3 and not (r == 0 and {c, c + 1} == {0, 2}):
                b.add_spring(int(idx[r, c]), int(idx[r, c + 1]), 100.0, kind="cable")
            if r + 1 < 3:
                b.add_spring(int(idx[r, c]), int(idx[r + 1, c]), 100.0, kind="cable")
    ref = b.finalize()
    for f in ("positions", "masses", "is_handle", "springs", "rest_length", "is_cable", "handles"):
        np.testing.assert_allclose(getattr(a, f), getattr(ref, f), atol=1e-12, err_msg=f)
    assert a.particle_names == ref.particle_names


# ------------------------------------------------------------------------------------------
# the contact terms of Phi against finite differences
# ------------------------------------------------------------------------------------------

def _block_scene(dim, mu, box=False, radius=0.05, w=1e-3, k=1e4, theta=0.0, eps_v=1e-2, name="block"):
    """A 0.5 kg block on a soft spring (300 N/m) to a handle, on an inclined plane or on a box."""
    b = SceneBuilder(name, dim=dim, dt=0.01)
    z = [0.0] * (dim - 2)
    h = b.add_handle([-0.3, 0.05] + z, [2.0] * dim)
    p = b.add_particle([0.0, 0.0] + z, 0.5)
    b.add_spring(h, p, 300.0)
    if box:
        b.add_box([0.0, -0.5] + z, [1.0, 0.5] + [1.0] * (dim - 2), radius=radius)
    else:
        b.add_plane([-np.sin(theta), np.cos(theta)] + z, 0.0)
    b.set_contact(stiffness=k, width=w, friction=mu, eps_v=eps_v)
    return b.finalize()


def potential(model, xq, x_in, v_in, xp_in, vp_in, v_handle, project):
    m, d = model, model.device
    E, N, B = m.num_envs, m.num_dofs, m.band
    K = bdf2_kernels(F64, m.dim)
    arr = lambda a: wp.array(np.ascontiguousarray(a), dtype=m.vec, device=d)  # noqa: E731
    sc = m.newton_scratch()
    sc.H.fill_(7.0)
    phi = wp.zeros(E, dtype=F64, device=d)
    wp.launch(K.potential, dim=E, device=d, inputs=[
        m.data, m.mass, m.stiffness, arr(xq), m.state_data([arr(a) for a in (x_in, v_in, xp_in, vp_in)]),
        arr(v_handle), int(project), sc, phi])
    Hb = sc.H.numpy()
    Hd = np.zeros((E, N, N))
    for i in range(N):
        for j in range(max(0, i - B), i + 1):
            Hd[:, i, j] = Hd[:, j, i] = Hb[i * (B + 1) + (i - j)]
    return phi.numpy(), sc.g.numpy().T.copy(), Hd


@pytest.mark.parametrize("case", ["plane3d_slide", "plane2d_ramp", "box3d_edge", "box2d_edge", "box3d_corner"])
def test_potential_contact_fd(device, case, rng):
    """Phi's gradient and exact Hessian (project=0) against central differences, with the
    penalty, its curvature on rounded box edges and lagged friction all active; the projected
    Newton matrix is PSD and >= MASS_FLOOR M."""
    dim = 2 if "2d" in case else 3
    w = 1e-2 if "ramp" in case else 1e-3
    sc = _block_scene(dim, 0.4, box="box" in case, w=w)
    n = sc.num_particles
    x_in = sc.positions.copy()
    if "box" in case:  # on the rounded edge (or corner) of the box, 0.3 mm deep
        c = np.array([1.0 - 0.05, -0.05] + ([0.95] if "corner" in case else [0.0])[: dim - 2])
        u = np.ones(dim) if "corner" in case else np.array([1.0, 1.0] + [0.0] * (dim - 2))
        x_in[1] = c + 0.0497 * u / np.linalg.norm(u)
    else:
        x_in[1, 1] = -0.0003 if "ramp" in case else -0.002
    xq = x_in.copy()
    xq[1] += 0.004 * rng.normal(size=dim) * np.array([1.0, 0.1] + [1.0] * (dim - 2))
    v_in = np.zeros((n, dim))
    v_in[1] = rng.normal(size=dim)
    xp_in = x_in - sc.dt * v_in
    vp_in = v_in.copy()
    vh = np.zeros((n, dim))
    N = sc.num_dofs
    E = 1 + 2 * N
    model = sc.build(num_envs=E, device=device, dtype="float64")
    EPS = 1e-7
    XQ = np.repeat(xq[None], E, axis=0)
    for r in range(N):
        XQ[1 + 2 * r, 1, r] += EPS
        XQ[2 + 2 * r, 1, r] -= EPS
    rep = lambda a: np.repeat(a[None], E, axis=0)  # noqa: E731
    margin, vmargin = switch_margins(model, [(XQ, rep(v_in))] + [(rep(x_in), rep(v_in))])
    assert margin > 10 * EPS
    phi, g, H = potential(model, XQ, rep(x_in), rep(v_in), rep(xp_in), rep(vp_in), rep(vh), 0)
    # friction active (lagged contact at x_in), sliding faster than eps_v
    kappa = 1.5 / sc.dt
    x_hat = 4 / 3 * x_in - 1 / 3 * xp_in
    vel = kappa * (xq[1] - x_hat[1])
    n0 = np_sdf(geometries(sc)[0], x_in[1])[1]
    assert np.linalg.norm(vel - (vel @ n0) * n0) > 0.05
    g_fd = (phi[1::2] - phi[2::2]) / (2 * EPS)
    H_fd = ((g[1::2] - g[2::2]) / (2 * EPS)).T
    np.testing.assert_allclose(g[0], g_fd, rtol=0, atol=1e-6 * np.abs(g[0]).max())
    np.testing.assert_allclose(H[0], H_fd, rtol=0, atol=1e-6 * np.abs(H[0]).max())
    # the contact part of the gradient is beta times the negated force of an independent numpy
    # evaluation: compare with the same scene without geometry
    beta = 4 * sc.dt ** 2 / 9
    f_c = contact_force(model, 0, xq[1], x_in[1], vel)
    bare = SceneBuilder("bare", dim=dim, dt=sc.dt)
    bare.add_handle(sc.positions[0], [2.0] * dim)
    bare.add_particle(sc.positions[1], 0.5)
    bare.add_spring(0, 1, 300.0)
    _, g_bare, _ = potential(bare.finalize().build(num_envs=1, device=device, dtype="float64"), XQ[:1],
                             x_in[None], v_in[None], xp_in[None], vp_in[None], vh[None], 0)
    np.testing.assert_allclose(g[0] - g_bare[0], -beta * f_c, rtol=1e-10, atol=1e-14)
    # projected Newton matrix
    _, g1, H1 = potential(model, XQ, rep(x_in), rep(v_in), rep(xp_in), rep(vp_in), rep(vh), 1)
    np.testing.assert_array_equal(g1[0], g[0])
    M = np.eye(N) * sc.masses[1]
    assert np.linalg.eigvalsh(H1[0] - MASS_FLOOR * M).min() > -1e-12 * np.abs(H1[0]).max()
    if "edge" in case or "corner" in case:
        # the edge's curvature is in the Hessian; below the cap MASS_FLOOR leaves it exact
        assert np.abs(np_sdf(geometries(sc)[0], xq[1])[2]).max() > 1.0
        np.testing.assert_allclose(H1[0], H[0], rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------
# physics
# ------------------------------------------------------------------------------------------

def _table(dim=3, k=1e4, w=1e-3, mu=0.5, eps_v=1e-2, dt=0.01, radius=0.02):
    b = SceneBuilder("table", dim=dim, dt=dt)
    b.add_particle([0.0, 0.8] + [0.0] * (dim - 2), 0.2)
    b.add_plane([0.0, 1.0] + [0.0] * (dim - 2), 0.0)
    b.add_box([0.0, 0.375] + [0.0] * (dim - 2), [0.5, 0.375] + [0.4] * (dim - 2), radius=radius)
    b.set_contact(stiffness=k, width=w, friction=mu, eps_v=eps_v)
    return b.finalize()


def _run(model, s0, steps, actions=None):
    sim = Simulator(model)
    s1 = model.state()
    c = model.control()
    xs, vs = [s0.x.numpy().copy()], [s0.v.numpy().copy()]
    for t in range(steps):
        sim.step(s0, c, s1)
        s0, s1 = s1, s0
        xs.append(s0.x.numpy().copy())
        vs.append(s0.v.numpy().copy())
    return np.array(xs), np.array(vs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dim", [2, 3])
def test_resting_on_table(device, dtype, dim):
    """A particle resting on the table top (or the floor) stays there: its penetration is the
    static one of the penalty, at most max(m g / k, w / 2) (the documented tolerance), and it
    neither drifts nor moves."""
    E = 4
    sc = _table(dim)
    model = sc.build(num_envs=E, device=device, dtype=dtype)
    k_env = np.array([1e3, 1e4, 1e5, 1e4])
    model.set_contact_stiffness(k_env[:, None])
    m, w = 0.2, sc.contact.width
    # static penetration: lambda(s) = m g (linear beyond w / 2, cubic ramp below)
    s_eq = np.where(m * G >= k_env * w / 2, m * G / k_env, np.sqrt(2 * w * m * G / k_env) - w / 2)
    tol = np.maximum(m * G / k_env, w / 2)
    assert np.all(s_eq <= tol)
    surface = np.array([0.75, 0.75, 0.75, 0.0])
    pos = np.zeros((E, 1, dim))
    pos[:, 0, 0] = [0.0, 0.3, -0.2, 0.7]  # the last one on the floor, beside the table
    pos[:, 0, 1] = surface - s_eq
    xs, vs = _run(model, model.state(pos), 200)
    pen = surface[None] - xs[:, :, 0, 1]
    assert np.all(pen <= tol[None] + (1e-9 if dtype == "float64" else 1e-6)), (pen.max(axis=0), tol)
    # at rest: no drift, no motion
    assert np.abs(xs[:, :, 0] - pos[None, :, 0]).max() <= (1e-9 if dtype == "float64" else 2e-6)
    assert np.abs(vs).max() <= (1e-7 if dtype == "float64" else 1e-4)


@pytest.mark.parametrize("dim", [2, 3])
def test_incline_stick_and_slide(device, dim):
    """On a plane inclined by theta a particle sticks when tan(theta) < mu (it creeps below
    eps_v, the friction smoothing velocity) and otherwise slides with a = g (sin - mu cos)."""
    theta = 0.4  # tan = 0.423
    mus = np.array([0.0, 0.2, 0.35, 0.6, 0.9])
    E = len(mus)
    eps_v = 1e-2
    sc = _block_scene(dim, 0.5, theta=theta, eps_v=eps_v, name="incline")
    b = SceneBuilder("incline", dim=dim, dt=0.01)
    z = [0.0] * (dim - 2)
    n = np.array([-np.sin(theta), np.cos(theta)] + z)
    t = np.array([np.cos(theta), np.sin(theta)] + z)
    b.add_particle((-2e-4 * n).tolist(), 1.0)
    b.add_plane(n.tolist(), 0.0)
    b.set_contact(stiffness=1e5, width=1e-3, friction=0.5, eps_v=eps_v)
    sc = b.finalize()
    model = sc.build(num_envs=E, device=device, dtype="float64")
    model.set_friction(mus[:, None])
    xs, vs = _run(model, model.state(), 120)
    vt = vs[:, :, 0] @ t
    acc = (vt[-1] - vt[60]) / (60 * sc.dt)
    expect = -G * (np.sin(theta) - mus * np.cos(theta))
    for e, mu in enumerate(mus):
        if np.tan(theta) < mu:
            assert np.abs(vt[5:, e]).max() < eps_v, (mu, np.abs(vt[:, e]).max())
            # creep speed of the smoothed friction: f1(y) = tan(theta) / mu
            y = eps_v * (1 - np.sqrt(1 - np.tan(theta) / mu))
            np.testing.assert_allclose(-vt[-1, e], y, rtol=2e-2)
        else:
            np.testing.assert_allclose(acc[e], expect[e], rtol=1e-3)
    # normal direction: resting on the plane within the documented tolerance
    pen = -(xs[:, :, 0] @ n)
    assert pen.max() <= max(G * np.cos(theta) / 1e5, 1e-3 / 2) * 1.01


def _consistent_free_fall_state(model, pos, vel):
    """State whose BDF2 history is the exact free-fall trajectory (no start-up error)."""
    st = model.state(pos, vel)
    g = np.asarray(model.scene.gravity)
    h = model.dt
    st.x_prev.assign(wp.array(pos - h * vel + 0.5 * h * h * g, dtype=model.vec, device=model.device))
    st.v_prev.assign(wp.array(vel - h * g, dtype=model.vec, device=model.device))
    return st


def test_drop_energy_never_increases(device):
    """Drops onto the floor and onto the table (faces, rounded edges), with and without friction,
    with contact stiffness in the documented range dt sqrt(k / m) <= 4 and many impact phases:
    the mechanical energy of every flight phase is at most that of the previous one (contact
    never adds energy), in float64."""
    E = 24
    rng = np.random.default_rng(7)
    m, dt = 0.2, 0.01
    k_max = (4.0 / dt) ** 2 * m
    sc = _table(3, k=k_max, w=1e-3, mu=0.5, dt=dt)
    model = sc.build(num_envs=E, device=device, dtype="float64")
    ks = k_max * rng.uniform(0.05, 1.0, size=E)
    model.set_contact_stiffness(np.stack([ks, ks], axis=1))
    model.set_friction(np.where(np.arange(E) % 2 == 0, 0.0, 0.5)[:, None])
    pos = np.zeros((E, 1, 3))
    pos[:, 0, 0] = rng.uniform(-0.7, 0.7, size=E)  # table top, edges and floor
    pos[:, 0, 1] = 0.95 + rng.uniform(0.0, 0.1, size=E)
    pos[:, 0, 2] = rng.uniform(-0.3, 0.3, size=E)
    vel = np.zeros((E, 1, 3))
    vel[:, 0, [0, 2]] = rng.uniform(-0.5, 0.5, size=(E, 2))
    xs, vs = _run(model, _consistent_free_fall_state(model, pos, vel), 200)
    energy = 0.5 * m * (vs[:, :, 0] ** 2).sum(-1) + m * G * xs[:, :, 0, 1]  # (T+1, E)
    w = sc.contact.width
    dist = np.array([[min(np_sdf(geo, xs[t, e, 0])[0] for geo in geometries(sc)) for e in range(E)]
                     for t in range(len(xs))])
    free = dist >= w / 2
    bounces = 0
    for e in range(E):
        phases, cur = [], []
        for t in range(len(xs)):
            if t >= 4 and free[t - 4:t + 1, e].all():  # BDF2's parasitic mode decayed by 3^-4
                cur.append(energy[t, e])
            elif not free[t, e] and cur:
                phases.append(max(cur))
                cur = []
        if cur:
            phases.append(max(cur))
        assert phases[0] == pytest.approx(energy[0, e], rel=1e-12)
        bounces += len(phases) - 1
        for a, b in zip(phases, phases[1:]):
            assert b <= a * (1 + 1e-9), (e, phases)
    assert bounces >= E  # every env bounced at least once


def bdf2_residual(model, s_in, s_out):
    """Independent check of the BDF2 equations with springs and contact (numpy, float64):
    ``max |x' - y - beta f / m| / h`` over the free particles."""
    sc, h = model.scene, model.dt
    beta, kappa = 4 * h * h / 9, 1.5 / h
    x, v, xp, vp = (a.numpy().astype(np.float64) for a in s_in.arrays())
    x1 = s_out.x.numpy().astype(np.float64)
    x_hat = 4 / 3 * x - 1 / 3 * xp
    y = x_hat + 2 * h / 3 * (4 / 3 * v - 1 / 3 * vp)
    k_all, L_all, m_all = model.stiffness.numpy(), model.rest_length.numpy(), model.mass.numpy()
    worst = 0.0
    for e in range(model.num_envs):
        f = m_all[e][:, None] * sc.gravity[None, :]
        for s, (i, j) in enumerate(sc.springs):
            d = x1[e, i] - x1[e, j]
            ln = np.linalg.norm(d)
            if not (sc.is_cable[s] and ln <= L_all[e, s]):
                fs = -k_all[e, s] * (ln - L_all[e, s]) * d / ln
                f[i] += fs
                f[j] -= fs
        for p in sc.free_particles:
            f[p] += contact_force(model, e, x1[e, p], x[e, p], kappa * (x1[e, p] - x_hat[e, p]))
            r = x1[e, p] - y[e, p] - beta * f[p] / m_all[e, p]
            worst = max(worst, np.abs(r).max() / h)
    return worst


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_newton_converges_with_contact(device, dtype):
    """Particles on springs dragged by handles over the table (faces and rounded edges) and
    dropped onto it and the floor, with friction: every step converges and satisfies the BDF2
    equations with the contact forces of an independent numpy evaluation."""
    E = 16
    rng = np.random.default_rng(3)
    b = SceneBuilder("drag", dim=3, dt=0.02)
    h = b.add_handle([0.0, 1.2, 0.0], [1.0, 1.0, 1.0])
    p = b.add_particle([0.0, 0.9, 0.0], 0.1)
    q = b.add_particle([0.1, 0.8, 0.0], 0.05)
    b.add_spring(h, p, 200.0, kind="cable")
    b.add_spring(p, q, 500.0)
    b.add_plane([0.0, 1.0, 0.0], 0.0)
    b.add_box([0.0, 0.375, 0.0], [0.5, 0.375, 0.4], radius=0.02)
    b.set_contact(stiffness=500.0, width=1e-3, friction=0.6, eps_v=1e-2)
    sc = b.finalize()
    model = sc.build(num_envs=E, device=device, dtype=dtype)
    sim = Simulator(model)
    s0, s1 = model.state(), model.state()
    ctrl = model.control()
    worst, iters = 0.0, []
    in_contact = 0
    for t in range(60):
        a = rng.uniform(-1.0, 1.0, size=(E, 1, 3)) * np.array([0.8, 0.6, 0.8])
        a[:, 0, 1] -= 0.4 if t < 30 else -0.2
        ctrl.action.assign(wp.array(a.astype(model.np_dtype), dtype=model.vec, device=model.device))
        sim.step(s0, ctrl, s1)  # raises SimulationError on any non-converged env
        assert np.all(sim.status.numpy() == 0)
        iters.append(sim.iterations.numpy().copy())
        if dtype == "float64" and t % 3 == 0:
            worst = max(worst, bdf2_residual(model, s0, s1))
        x = s1.x.numpy()
        in_contact += sum(min(np_sdf(g_, x[e, i])[0] for g_ in geometries(sc)) < 1e-3
                          for e in range(E) for i in (1, 2))
        s0, s1 = s1, s0
    assert in_contact > 100  # contact was active in many steps
    if dtype == "float64":
        assert worst <= 1e-7
    assert np.mean(iters) < 10


# ------------------------------------------------------------------------------------------
# derivatives
# ------------------------------------------------------------------------------------------

E_FD = 2


def _unflatten(ts, s, like):
    m = ts.model
    sc = m.scene
    N, d = m.num_dofs, m.dim
    out = [t.clone() for t in like]
    for k in range(4):
        out[k][:, sc.free_particles] = s[:, k * N:(k + 1) * N].reshape(m.num_envs, -1, d)
    out[0][:, sc.handles] = s[:, 4 * N:].reshape(m.num_envs, -1, d)
    return tuple(out)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _fd_case(name):
    """(scene, positions, velocities, action, warm-up steps) of one derivative test case."""
    dim = 2 if "2d" in name else 3
    z = [0.0] * (dim - 2)
    if name.startswith("wall_pendulum2d"):
        sc = load_scene("wall_pendulum2d", wall_friction=0.3)
        pos = sc.positions.copy()
        pos[1] = [0.4 + 0.004, -np.sqrt(1 - 0.404 ** 2)]  # 4 mm into the wall
        vel = np.zeros_like(pos)
        vel[1] = [0.5, 0.6]
        return sc, pos, vel, np.array([[0.3, -0.2]]), 0
    if name.startswith("plane"):
        sc = _block_scene(dim, 0.8 if "stick" in name else 0.4, w=1e-2 if "ramp" in name else 1e-4)
        pos = sc.positions.copy()
        pos[1, 1] = 0.001 if "ramp" in name else -0.0008
        vel = np.zeros_like(pos)
        if "stick" in name:
            act = np.array([[0.01, 0.0] + z])
        else:
            act = np.array([[0.5, 0.0] + [0.2] * (dim - 2)])
            vel[1] = [0.3, 0.0] + [0.1] * (dim - 2)
        return sc, pos, vel, act, 3 if "stick" in name else 1
    # box: top face or rounded edge
    sc = _block_scene(dim, 0.4, box=True, radius=0.05)
    pos = sc.positions.copy()
    vel = np.zeros_like(pos)
    if "edge" in name:
        c = np.array([1.0 - 0.05, -0.05] + z)
        u = np.array([1.0, 1.0] + z) / np.sqrt(2)
        pos[1] = c + 0.0497 * u
        vel[1] = [0.2, -0.2] + [0.3] * (dim - 2)
    else:
        pos[1, 1] = -0.0008
        vel[1] = [0.3, 0.0] + [0.1] * (dim - 2)
    return sc, pos, vel, np.array([[0.5, 0.0] + [0.2] * (dim - 2)]), 0


FD_CASES = ["plane3d_slide", "plane2d_slide", "plane3d_stick", "plane3d_ramp", "box3d_top", "box3d_edge",
            "box2d_edge", "wall_pendulum2d"]


def _fd_setup(name, device):
    sc, pos, vel, act, warm = _fd_case(name)
    model = sc.build(num_envs=E_FD, device=device, dtype="float64")
    model.tol = 1e-12
    ts = TorchSimulator(model)
    state = ts.initial_state(positions=pos, velocities=vel)
    a = torch.tensor(np.broadcast_to(act, (E_FD, model.num_handles, model.dim)).copy(), dtype=torch.float64,
                     device=state[0].device)
    a[1] *= 0.8  # two different envs
    for _ in range(warm):
        state = ts.step(*state, a)
    return ts, state, a


@pytest.mark.parametrize("name", FD_CASES)
def test_contact_step_jacobians_match_finite_differences(name, device):
    EPS = 1e-6
    ts, state, a = _fd_setup(name, device)
    nxt, A, B = ts.jacobians(*state, a)
    # contact active at the start and the end of the step, away from every switch
    pm, vm = switch_margins(ts.model, [state, nxt])
    assert pm > 1e-4 and vm > 1e-3, (pm, vm)
    w = ts.model.scene.contact.width
    for st in (state, nxt):
        x = st[0].cpu().numpy()
        assert all(min(np_sdf(g_, x[e, 1])[0] for g_ in geometries(ts.model.scene)) < w / 2 for e in range(E_FD))
    s0 = ts.markov_state(*state)
    Afd = torch.zeros_like(A)
    for c in range(A.shape[2]):
        sp, sm = s0.clone(), s0.clone()
        sp[:, c] += EPS
        sm[:, c] -= EPS
        op = ts.markov_state(*ts.step(*_unflatten(ts, sp, state), a))
        om = ts.markov_state(*ts.step(*_unflatten(ts, sm, state), a))
        Afd[:, :, c] = (op - om) / (2 * EPS)
    Bfd = torch.zeros_like(B)
    flat = a.reshape(E_FD, -1)
    for c in range(B.shape[2]):
        ap, am = flat.clone(), flat.clone()
        ap[:, c] += EPS
        am[:, c] -= EPS
        op = ts.markov_state(*ts.step(*state, ap.reshape(a.shape)))
        om = ts.markov_state(*ts.step(*state, am.reshape(a.shape)))
        Bfd[:, :, c] = (op - om) / (2 * EPS)
    assert _rel(A, Afd) < 1e-6
    assert _rel(B, Bfd) < 1e-6
    # the VJP is the transposed Jacobian
    leaves = [t.clone().requires_grad_(True) for t in state]
    al = a.clone().requires_grad_(True)
    out = ts.step(*leaves, al)
    u = torch.tensor(np.random.default_rng(1).normal(size=(E_FD, ts.model.num_state)), dtype=torch.float64,
                     device=a.device)
    (ts.markov_state(*out) * u).sum().backward()
    assert _rel(ts.markov_state(*(t.grad for t in leaves)), torch.einsum("eij,ei->ej", A, u)) < 1e-12
    assert _rel(al.grad.reshape(E_FD, -1), torch.einsum("eij,ei->ej", B, u)) < 1e-12


def test_sliding_rollout_gradient_matches_finite_differences(device):
    """30 steps of a block dragged over the floor with friction, sliding all along: directional
    derivatives of a loss on every state w.r.t. the initial state and the actions."""
    T = 30
    sc = _block_scene(3, 0.4, w=1e-4, k=1e4)
    model = sc.build(num_envs=E_FD, device=device, dtype="float64")
    model.tol = 1e-12
    ts = TorchSimulator(model)
    pos = sc.positions.copy()
    pos[1, 1] = -0.5 * G / 1e4
    vel = np.zeros_like(pos)
    vel[1] = [0.4, 0.0, 0.1]
    state = ts.initial_state(positions=pos, velocities=vel)
    rng = np.random.default_rng(5)
    acts = torch.tensor(np.array([0.6, 0.0, 0.2]) + 0.05 * rng.normal(size=(T, E_FD, 1, 3)), dtype=torch.float64)
    acts[..., 1] = 0.0
    w = torch.tensor(rng.normal(size=(T, E_FD, sc.num_particles, 3)), dtype=torch.float64)

    def loss(st, ac):
        states = ts.rollout(st, ac)
        return sum((s[0] * w[t]).sum() + 0.1 * (s[1] * w[t]).sum() for t, s in enumerate(states[1:]))

    with torch.no_grad():
        traj = ts.rollout(state, acts)
    pm, vm = switch_margins(model, traj)
    assert pm > 1e-5 and vm > 0.05, (pm, vm)
    leaves = [t.clone().requires_grad_(True) for t in state]
    al = acts.clone().requires_grad_(True)
    loss(leaves, al).backward()
    eps = 1e-6
    for grads, base, which in (([t.grad for t in leaves], list(state), "state"), ([al.grad], [acts], "actions")):
        dirs = [torch.tensor(rng.normal(size=g.shape), dtype=torch.float64) for g in grads]
        if which == "actions":
            dirs[0][..., 1] = 0.0
        analytic = sum((g * d).sum() for g, d in zip(grads, dirs))
        with torch.no_grad():
            pert = lambda s: [b_ + s * eps * d for b_, d in zip(base, dirs)]  # noqa: E731
            if which == "state":
                fd = (loss(pert(1), acts) - loss(pert(-1), acts)) / (2 * eps)
            else:
                fd = (loss(state, pert(1)[0]) - loss(state, pert(-1)[0])) / (2 * eps)
        assert abs(float(analytic - fd)) <= 1e-6 * abs(float(fd)) + 1e-9, (which, float(analytic), float(fd))


def test_cloth_table_rollout_gradients_finite(device):
    """Gradients of a placement loss through a 60-step cloth_table rollout (the cloth being laid
    on the table, contact and friction active) are finite and non-zero, for every action."""
    T, E = 60, 2
    sc = load_scene("cloth_table")
    model = sc.build(num_envs=E, device=device, dtype="float64")
    ts = TorchSimulator(model)
    state = ts.initial_state()
    lay = cloth_lay_actions(sc, T)[:, None] + 0.05 * np.random.default_rng(0).normal(size=(T, E, 2, 3))
    acts = torch.tensor(lay, dtype=torch.float64)
    al = acts.clone().requires_grad_(True)
    x0 = state[0].clone().requires_grad_(True)
    states = ts.rollout((x0, *state[1:]), al, checkpoint_every=20)
    x = states[-1][0]
    top = 0.75
    free = torch.as_tensor(sc.free_particles)
    # on the table at the end
    assert float((x[:, free, 1] - top).abs().min().detach()) < 2e-3
    target = torch.tensor(sc.positions, dtype=torch.float64)[None].clone()
    target[..., 1] = top
    loss = ((x - target) ** 2).sum() + 0.1 * (states[-1][1] ** 2).sum()
    loss.backward()
    assert torch.isfinite(al.grad).all() and torch.isfinite(x0.grad).all()
    assert (al.grad.abs().flatten(2).sum(-1) > 0).all()  # every step's action matters


def test_wall_stiffness_per_env(device):
    """wall_pendulum2d with the wall stiffness swept across environments: stiffer walls are
    penetrated less; gradients through the impact are finite."""
    sc = load_scene("wall_pendulum2d")
    ks = np.array([1e2, 1e3, 1e4, 4e4])
    E = len(ks)
    model = sc.build(num_envs=E, device=device, dtype="float64")
    model.set_contact_stiffness(ks[:, None])
    ts = TorchSimulator(model)
    vel = np.zeros_like(sc.positions)
    vel[1] = [2.0, 0.0]  # reaches the wall at x = 0.4 after ~0.2 s
    state = ts.initial_state(velocities=vel)
    a = torch.zeros((30, E, 1, 2), dtype=torch.float64, requires_grad=True)
    states = ts.rollout(state, a)
    xmax = torch.stack([s[0][:, 1, 0] for s in states]).max(dim=0).values.detach().numpy()
    assert np.all(xmax > 0.4) and np.all(np.diff(xmax) < 0)
    sum(s[0][:, 1, 0].sum() for s in states).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_scripted_laying_puts_the_cloth_flat_on_the_table(device):
    """cloth_lay_actions lays cloth_table's cloth flat on the table top (float32): every free
    particle ends within 2 mm of the top, on the table, as a 0.6 m x 0.3 m rectangle."""
    sc = load_scene("cloth_table")
    xs = record_rollout(sc, 1, actions=cloth_lay_actions(sc, 125), device=device).positions
    x = xs[-1, 0]
    free = sc.free_particles
    assert np.abs(x[free, 1] - 0.75).max() < 2e-3
    assert np.all(np.abs(x[free, 0]) < 0.5) and np.all(np.abs(x[free, 2]) < 0.4)
    np.testing.assert_allclose(x[:, 2].max() - x[:, 2].min(), 0.6, atol=0.02)
    np.testing.assert_allclose(x[:, 0].max() - x[:, 0].min(), 0.3, atol=0.02)
    # ... at the placement target
    assert np.abs(x[free] - cloth_place_target(sc)[free]).max() < 0.03
    assert grid_faces(7, 4).shape == (18, 4)
