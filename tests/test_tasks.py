"""Tasks: registry, equilibrium targets, initial-state sampling and test beds, reward and its
analytic derivatives (against finite differences, float64)."""

import dataclasses
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from warpsim_rl.tasks import (CONTACT_SYSTEMS, SYSTEMS, TASKS, InitialStateDistribution, Weights, equilibrium,
                              make_task, reward, system_kinds, task_names)

ALL = task_names()


# -- registry -----------------------------------------------------------------------------------

def test_registry_names():
    assert len(ALL) == 14
    assert set(ALL) == {f"{s}-{k}" for s in SYSTEMS for k in system_kinds(s)}
    assert all(system_kinds(s) == ("stop", "stop-origin") for s in SYSTEMS if s != "cloth_table")
    assert system_kinds("cloth_table") == ("stop", "place")
    assert set(CONTACT_SYSTEMS) == {"cloth_table", "wall_pendulum2d"} <= set(SYSTEMS)
    assert "pendulum2d-stop" in ALL and "cloth_table-place" in ALL
    with pytest.raises(ValueError, match="known systems"):
        system_kinds("pendulum4d")


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError) as e:
        make_task("pendulum4d-stop")
    msg = str(e.value)
    assert "pendulum4d-stop" in msg and all(n in msg for n in ALL)


def test_make_task_overrides():
    t = make_task("pendulum2d-stop", horizon=50)
    assert t.horizon == 50 and TASKS["pendulum2d-stop"].horizon == 100
    with pytest.raises(ValueError, match="unknown Task field"):
        make_task("pendulum2d-stop", horizn=50)
    with pytest.raises(ValueError, match="horizon"):
        make_task("pendulum2d-stop", horizon=0)
    with pytest.raises(ValueError, match="w_v"):
        Weights(0.0, 0.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="angular_speed"):
        InitialStateDistribution(0.1, 0.0, (2.0, 1.0))


@pytest.mark.parametrize("name", ALL)
def test_task_definition(name):
    t = make_task(name)
    sc = t.scene
    h, k, d = t.num_handles, t.num_payload, t.dim
    assert t.obs_dim == (h + 2 * k) * d and t.action_dim == h * d
    assert t.dt == sc.dt == 0.02 and 50 <= t.horizon <= 150
    assert set(t.payload.tolist()) | set(t.handles.tolist()) == set(range(sc.num_particles))
    assert np.all(t.action_limits > 0)
    w = t.weights
    if t.kind == "stop":
        assert w.w_p == 0 and w.w_x == 0 and w.w_v > 0 and t.init.handle_offset == 0
    elif t.kind == "stop-origin":
        assert min(w.w_p, w.w_x, w.w_v) > 0 and t.init.handle_offset > 0
    else:  # place: the handles may end anywhere
        assert t.kind == "place" and w.w_p == 0 and min(w.w_x, w.w_v) > 0 and t.init.handle_offset > 0
    assert w.w_a > 0
    lay = t.observation_layout
    assert lay["payload_vel"].stop == t.obs_dim


# -- equilibrium ----------------------------------------------------------------------------------

@pytest.mark.parametrize("system", SYSTEMS)
def test_target_is_static_equilibrium(system):
    """Forces on every payload particle balance at the target (spring forces + gravity)."""
    t = make_task(f"{system}-stop")
    sc, x = t.scene, np.asarray(t.rest_positions)
    f = np.zeros_like(x)
    f[:] = sc.masses[:, None] * sc.gravity[None]
    for s, (i, j) in enumerate(sc.springs):
        dvec = x[j] - x[i]
        ln = np.linalg.norm(dvec)
        stretch = ln - sc.rest_length[s]
        if sc.is_cable[s] and stretch <= 0:
            continue
        fs = sc.stiffness[s] * stretch * dvec / ln
        f[i] += fs
        f[j] -= fs
    assert np.abs(f[t.payload]).max() < 1e-8
    np.testing.assert_array_equal(x[t.handles], t.home)


def test_equilibrium_matches_analytic_sag():
    t = make_task("pendulum2d-stop")
    sc = t.scene
    sag = sc.masses[1] * 9.81 / sc.stiffness[0]
    np.testing.assert_allclose(t.target[0], [0.0, -1.0 - sag], atol=1e-12)
    rope = make_task("rope3d-stop")
    x = equilibrium(rope.scene)
    top = np.linalg.norm(x[1] - x[0]) - rope.scene.rest_length[0]
    total_weight = rope.scene.masses.sum() * 9.81
    np.testing.assert_allclose(top, total_weight / rope.scene.stiffness[0], rtol=1e-9)


# -- initial states -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_sampling_deterministic_and_physical(name):
    t = make_task(name)
    p1, v1 = t.sample_initial_states(64, seed=7)
    p2, v2 = t.sample_initial_states(64, seed=7)
    p3, _ = t.sample_initial_states(64, seed=8)
    assert p1.dtype == np.float64 and p1.shape == (64, t.num_particles, t.dim) and v1.shape == p1.shape
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(v1, v2)
    assert not np.array_equal(p1, p3)
    # a Generator continues its stream; the first draws equal those of the integer seed
    g = np.random.default_rng(7)
    pa, _ = t.sample_initial_states(64, g)
    pb, _ = t.sample_initial_states(64, g)
    np.testing.assert_array_equal(pa, p1)
    assert not np.array_equal(pa, pb)

    sc, rest = t.scene, np.asarray(t.rest_positions)
    # no spring starts stretched beyond its equilibrium length
    L = np.linalg.norm(rest[sc.springs[:, 1]] - rest[sc.springs[:, 0]], axis=-1)
    ln = np.linalg.norm(p1[:, sc.springs[:, 1]] - p1[:, sc.springs[:, 0]], axis=-1)
    assert np.all(ln - L <= 1e-12)
    # handles start at rest; the payload moves ("stop" starts with non-zero velocity)
    assert np.all(v1[:, t.handles] == 0)
    speed = np.linalg.norm(v1[:, t.payload], axis=-1).max(axis=1)
    assert np.all(speed > 0.1)
    # handles at home (stop) or displaced within the offset (stop-origin, place), the system moves with them
    off = p1[:, t.handles] - t.home
    if t.init.handle_offset == 0:
        assert np.all(off == 0)
    else:
        assert np.all(np.abs(off) <= t.init.handle_offset + 1e-12)
        assert np.abs(off).max() > 0.3 * t.init.handle_offset
    # velocities are a rigid rotation: no spring is stretching at the start
    rate = np.einsum("npd,npd->np", p1[:, sc.springs[:, 1]] - p1[:, sc.springs[:, 0]],
                     v1[:, sc.springs[:, 1]] - v1[:, sc.springs[:, 0]])
    taut = np.abs(ln - L) < 1e-9
    assert np.all(np.abs(rate[taut]) < 1e-9)


def _digest(name):
    p, v = make_task(name).test_bed()
    return hashlib.sha256(p.tobytes() + v.tobytes()).hexdigest()


def test_test_bed_fixed_and_identical_across_runs():
    t = make_task("double_pendulum3d-stop")
    p1, v1 = t.test_bed()
    p1[0] = 99.0  # a copy: the cached bed is unaffected
    p2, v2 = t.test_bed()
    assert p2.shape == (1000, t.num_particles, 3) and not np.any(p2 == 99.0)
    fresh = dataclasses.replace(t)  # a new object recomputes it
    p3, v3 = fresh.test_bed()
    np.testing.assert_array_equal(p2, p3)
    np.testing.assert_array_equal(v2, v3)
    assert not np.array_equal(p2, make_task("double_pendulum3d-stop-origin").test_bed()[0])
    # another interpreter (another run) produces bit-identical test beds
    here = {n: _digest(n) for n in ALL}
    code = ("import json, hashlib\nfrom warpsim_rl.tasks import make_task, task_names\n"
            "out = {}\nfor n in task_names():\n    p, v = make_task(n).test_bed()\n"
            "    out[n] = hashlib.sha256(p.tobytes() + v.tobytes()).hexdigest()\nprint(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    import json
    assert json.loads(res.stdout.strip().splitlines()[-1]) == here


# -- reward and derivatives ---------------------------------------------------------------------

def _random_state(t, E, gen):
    n, d = t.num_particles, t.dim
    x = torch.randn(E, n, d, dtype=torch.float64, generator=gen)
    v = torch.randn(E, n, d, dtype=torch.float64, generator=gen)
    a = torch.randn(E, t.num_handles, d, dtype=torch.float64, generator=gen)
    return x, v, a


@pytest.mark.parametrize("name", ALL)
def test_reward_matches_eq15(name):
    t = make_task(name)
    gen = torch.Generator().manual_seed(0)
    x, v, a = _random_state(t, 3, gen)
    r = t.reward(x, v, a)
    xn, vn, an = x.numpy(), v.numpy(), a.numpy()
    w = t.weights
    p = xn[:, t.handles] - t.home
    xr = xn[:, t.payload] - t.target
    vp = vn[:, t.payload]
    expect = -(w.w_p * (p ** 2).sum((1, 2)) + w.w_x * (xr ** 2).sum((1, 2)) + w.w_v * (vp ** 2).sum((1, 2))
               + w.w_a * (an ** 2).sum((1, 2)))
    np.testing.assert_allclose(r.numpy(), expect, rtol=1e-13)
    # the same from the observation, and with flat actions
    obs = t.observation(x, v)
    np.testing.assert_allclose(t.reward_from_observation(obs, a.reshape(3, -1)).numpy(), expect, rtol=1e-13)
    np.testing.assert_allclose(reward(*t.split_observation(obs), a, w).numpy(), expect, rtol=1e-13)


@pytest.mark.parametrize("name", ALL)
def test_reward_derivatives_vs_finite_differences(name):
    t = make_task(name)
    E, n, d = 2, t.num_particles, t.dim
    gen = torch.Generator().manual_seed(1)
    x, v, a = _random_state(t, E, gen)
    s = torch.cat([x.reshape(E, -1), v.reshape(E, -1), torch.randn(E, 2 * n * d, dtype=torch.float64,
                                                                    generator=gen)], dim=1)

    def r_of(s_, a_):
        return t.reward(s_[:, :n * d].reshape(E, n, d), s_[:, n * d:2 * n * d].reshape(E, n, d), a_)

    der = t.reward_derivatives(x, v, a)
    assert der["dr_ds"].shape == (E, 4 * n * d) and der["dr_da"].shape == (E, t.action_dim)
    eps = 1e-6
    fd_s = torch.zeros(E, s.shape[1], dtype=torch.float64)
    for i in range(s.shape[1]):
        e = torch.zeros_like(s)
        e[:, i] = eps
        fd_s[:, i] = (r_of(s + e, a) - r_of(s - e, a)) / (2 * eps)
    torch.testing.assert_close(der["dr_ds"], fd_s, rtol=1e-7, atol=1e-7)
    fd_a = torch.zeros(E, t.action_dim, dtype=torch.float64)
    af = a.reshape(E, -1)
    for i in range(t.action_dim):
        e = torch.zeros_like(af)
        e[:, i] = eps
        fd_a[:, i] = (r_of(s, (af + e).reshape(a.shape)) - r_of(s, (af - e).reshape(a.shape))) / (2 * eps)
    torch.testing.assert_close(der["dr_da"], fd_a, rtol=1e-7, atol=1e-7)

    # Hessian: finite differences of the analytic gradient are the constant diagonal
    def grad_s(s_):
        return t.reward_derivatives(s_[:, :n * d].reshape(E, n, d), s_[:, n * d:2 * n * d].reshape(E, n, d),
                                    a)["dr_ds"]
    H = torch.zeros(E, s.shape[1], s.shape[1], dtype=torch.float64)
    for i in range(s.shape[1]):
        e = torch.zeros_like(s)
        e[:, i] = eps
        H[:, :, i] = (grad_s(s + e) - grad_s(s - e)) / (2 * eps)
    expect = torch.diag_embed(der["d2r_ds2"].expand(E, -1))
    torch.testing.assert_close(H, expect, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(der["d2r_da2"], torch.full((t.action_dim,), -2 * t.weights.w_a, dtype=torch.float64))
    # autograd agrees too
    s_req = s.clone().requires_grad_()
    a_req = a.clone().requires_grad_()
    r_of(s_req, a_req).sum().backward()
    torch.testing.assert_close(s_req.grad, der["dr_ds"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_req.grad.reshape(E, -1), der["dr_da"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["rope3d-stop-origin", "cable_payload2d-stop-origin", "cloth_table-place",
                                  "wall_pendulum2d-stop-origin"])
def test_reward_derivatives_markov_layout(name):
    """The Markov layout [x_f, v_f, x_prev_f, v_prev_f, x_h] is a permutation/selection of the
    full one (that of autodiff.TorchSimulator.jacobians)."""
    t = make_task(name)
    E, n, d = 2, t.num_particles, t.dim
    gen = torch.Generator().manual_seed(2)
    x, v, a = _random_state(t, E, gen)
    full = t.reward_derivatives(x, v, a)
    mk = t.reward_derivatives(x, v, a, layout="markov")
    k, h = t.num_payload, t.num_handles
    assert mk["dr_ds"].shape == (E, 4 * k * d + h * d)
    blocks = full["dr_ds"].reshape(E, 4, n, d)
    pay, hnd = torch.as_tensor(t.payload), torch.as_tensor(t.handles)
    expect = torch.cat([blocks[:, j][:, pay].reshape(E, -1) for j in range(4)] + [blocks[:, 0][:, hnd].reshape(E, -1)], 1)
    torch.testing.assert_close(mk["dr_ds"], expect)
    dfull = full["d2r_ds2"].reshape(4, n, d)
    dexp = torch.cat([dfull[j][pay].reshape(-1) for j in range(4)] + [dfull[0][hnd].reshape(-1)])
    torch.testing.assert_close(mk["d2r_ds2"], dexp)
    with pytest.raises(ValueError, match="layout"):
        t.reward_derivatives(x, v, a, layout="bogus")


def test_clip_action_and_mask():
    t = make_task("cable_payload2d-stop")
    lim = float(t.action_limits[0, 0])
    a = torch.tensor([[3.0, -3.0, 0.5, -0.25]], dtype=torch.float64)
    np.testing.assert_allclose(t.clip_action(a).numpy(), [[lim, -lim, 0.5, -0.25]])
    np.testing.assert_allclose(t.clip_mask(a).numpy(), [[0, 0, 1, 1]])


# -- contact tasks (cloth_table, wall_pendulum2d) -------------------------------------------------

def _signed_distances(scene, x):
    """(N, k, G) signed distances of points x (N, k, dim) to every plane and box of ``scene``
    (numpy, the formulas of docs/contact.md)."""
    out = []
    for pl in scene.planes:
        out.append(x @ np.asarray(pl.normal) - pl.offset)
    for b in scene.boxes:
        c, he, r = np.asarray(b.center), np.asarray(b.half_extents), b.radius
        q = np.abs(x - c) - (he - r)
        o = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        out.append(np.where(o > 0, o - r, q.max(-1) - r))
    return np.stack(out, -1)


@pytest.mark.parametrize("name", [n for n in ALL if make_task(n).scene_name in CONTACT_SYSTEMS])
def test_initial_states_never_penetrate(name):
    """No free particle of any test-bed state starts inside a plane or box, nor within the
    penalty's smoothing band: every signed distance is >= w/2, where the contact force is 0."""
    t = make_task(name)
    sc = t.scene
    assert sc.planes or sc.boxes
    pos, _ = t.test_bed()
    d = _signed_distances(sc, pos[:, sc.free_particles])
    assert d.shape == (t.test_bed_size, t.num_payload, len(sc.planes) + len(sc.boxes))
    assert d.min() >= sc.contact.width / 2
    # the targets too ("place": laid on the table top, i.e. at distance 0, touching it)
    dt_ = _signed_distances(sc, np.asarray(t.target)[None])
    assert dt_.min() >= (0.0 if t.kind == "place" else sc.contact.width / 2) - 1e-12


def test_cloth_swings_rigidly_about_the_handle_line():
    """cloth_table's initial states: the cloth tilted rigidly about the line through its two
    handles by at most the swing angle, rotating about it at U(0.25, 0.75) rad/s; "place" then
    shifts everything by at most 5 cm per axis."""
    for name in ("cloth_table-stop", "cloth_table-place"):
        t = make_task(name)
        assert t.init.swing_about == "handle_line"
        pos, vel = t.sample_initial_states(200, seed=3)
        h0, h1 = t.handles
        shift = pos[:, h0] - t.home[0]
        np.testing.assert_allclose(pos[:, h1] - t.home[1], shift, atol=1e-14)  # handles move together
        assert np.abs(shift).max() <= t.init.handle_offset + 1e-15
        rest = np.asarray(t.rest_positions)
        axis = (t.home[1] - t.home[0]) / np.linalg.norm(t.home[1] - t.home[0])
        r0 = rest - t.home[0]
        r = pos - pos[:, h0][:, None]
        # coordinate along the line and distance to it are kept: a rotation about the line
        np.testing.assert_allclose(r @ axis, np.broadcast_to(r0 @ axis, r.shape[:2]), atol=1e-12)
        perp0 = r0 - np.outer(r0 @ axis, axis)
        perp = r - (r @ axis)[..., None] * axis
        np.testing.assert_allclose(np.linalg.norm(perp, axis=-1),
                                   np.broadcast_to(np.linalg.norm(perp0, axis=-1), r.shape[:2]), atol=1e-12)
        bottom = t.payload[-1]  # the last row hangs 0.6 m below the handles
        cosang = (perp[:, bottom] @ perp0[bottom]) / (np.linalg.norm(perp0[bottom]) ** 2)
        ang = np.arccos(np.clip(cosang, -1, 1))
        assert ang.max() <= t.init.swing_angle + 1e-9 and ang.max() > 0.8 * t.init.swing_angle
        # velocities: omega x r about the line, |omega| in the range, both signs
        omega = np.einsum("nd,nd->n", np.cross(axis, perp[:, bottom]), vel[:, bottom]) / np.linalg.norm(
            perp0[bottom]) ** 2
        np.testing.assert_allclose(vel[:, t.payload], np.cross(omega[:, None, None] * axis, perp[:, t.payload]),
                                   atol=1e-12)
        lo, hi = t.init.angular_speed
        assert np.all((np.abs(omega) >= lo - 1e-12) & (np.abs(omega) <= hi + 1e-12))
        assert (omega > 0).any() and (omega < 0).any()
    with pytest.raises(ValueError, match="swing_about"):
        InitialStateDistribution(0.1, 0.0, (0.5, 1.0), swing_about="tip")
    bad = make_task("pendulum3d-stop", init=InitialStateDistribution(0.1, 0.0, (0.5, 1.0), swing_about="handle_line"))
    with pytest.raises(ValueError, match="handle_line"):
        bad.sample_initial_states(2, 0)


def test_place_target():
    """cloth_table-place's target: the cloth laid flat on the table top (tasks.place's
    cloth_place_target), moved by place_offset; the target state has zero cost."""
    from warpsim_rl.tasks.place import cloth_place_target

    t = make_task("cloth_table-place")
    sc = t.scene
    top = sc.boxes[0].center[1] + sc.boxes[0].half_extents[1]
    assert t.target.shape == (26, 3) and not t.target.flags.writeable
    np.testing.assert_array_equal(t.target, cloth_place_target(sc)[t.payload])
    np.testing.assert_allclose(t.target[:, 1], top)
    assert np.ptp(t.target[:, 2]) == pytest.approx(0.6) and np.ptp(t.target[:, 0]) == pytest.approx(0.3)
    # the rest configuration (hanging, "stop"'s target) is not the place target
    np.testing.assert_array_equal(make_task("cloth_table-stop").target, np.asarray(t.rest_positions)[t.payload])
    moved = make_task("cloth_table-place", place_offset=(0.1, -0.05))
    np.testing.assert_allclose(moved.target - t.target, np.broadcast_to([0.1, 0.0, -0.05], t.target.shape),
                               atol=1e-15)
    # zero cost at the target, at rest, with any handle position (w_p = 0) and no action
    x = torch.tensor(cloth_place_target(sc), dtype=torch.float64)[None]
    x[:, t.handles] += 0.3
    v = torch.zeros_like(x)
    assert float(t.reward(x, v, torch.zeros(1, 2, 3, dtype=torch.float64))) == 0.0
    assert float(t.observation(x, v)[:, t.observation_layout["payload_pos"]].abs().max()) == 0.0
    with pytest.raises(ValueError, match="place target"):
        make_task("pendulum2d-stop", kind="place").target
    with pytest.raises(ValueError, match="place_offset"):
        make_task("cloth_table-place", place_offset=(0.1,))


def test_cloth_reference_policy_solves_place():
    """tasks.place.cloth_lay_actions (open loop, the scripted laying) earns a far better return
    than doing nothing on the first test-bed states of cloth_table-place: the task is solvable
    and its target is the laid cloth. No env diverges."""
    from warpsim_rl.tasks.place import cloth_lay_actions
    from warpsim_rl.envs import WarpSimEnv

    t = make_task("cloth_table-place")
    n = 3
    pos, vel = t.test_bed()
    env = WarpSimEnv(t, 2 * n, auto_reset=False)
    env.reset(initial_state=(np.concatenate([pos[:n]] * 2), np.concatenate([vel[:n]] * 2)))
    lay = torch.as_tensor(cloth_lay_actions(t.scene, t.horizon).reshape(t.horizon, 1, -1), dtype=torch.float32)
    ret = torch.zeros(2 * n, dtype=torch.float64)
    for k in range(t.horizon):
        a = torch.cat([lay[k].expand(n, -1), torch.zeros(n, t.action_dim)])
        _, r, term, _, _ = env.step(a)
        assert not term.any()
        ret += r.double()
    r_lay, r_zero = ret[:n], ret[n:]
    assert torch.all(r_lay > 0.4 * r_zero), (r_lay, r_zero)  # less than 40% of the cost
    x, _, _, _ = env.state_tensors()
    err = (x[:n, t.payload].double() - torch.tensor(np.array(t.target))).norm(dim=-1)
    assert float(err.mean()) < 0.1  # within the 5 cm per axis start offset + what the swing adds


def test_wall_pendulum_strikes_the_wall():
    """Left alone, a good part of wall_pendulum2d-stop's test bed strikes the wall within the
    horizon (57.9%): contact is part of the task."""
    from warpsim_rl.envs import WarpSimEnv

    t = make_task("wall_pendulum2d-stop")
    wall = t.scene.planes[0]
    pos, vel = t.test_bed()
    env = WarpSimEnv(t, t.test_bed_size, auto_reset=False)
    env.reset(initial_state=(pos, vel))
    struck = torch.zeros(t.test_bed_size, dtype=torch.bool)
    zero = torch.zeros(t.test_bed_size, t.action_dim)
    for _ in range(t.horizon):
        env.step(zero)
        x = env.state_tensors()[0][:, t.payload[0]].double()
        d = x @ torch.tensor(wall.normal, dtype=torch.float64) - wall.offset
        struck |= d < t.scene.contact.width / 2  # the penalty force is on
    assert 0.4 < float(struck.double().mean()) < 0.75


# -- listing: describe_tasks and python -m warpsim_rl.tasks ---------------------------------------

def test_describe_tasks_rows_and_cli():
    """Every registered task and every shipped scene is listed with its sizes, horizon, dt and a
    description, by describe_tasks() and by ``python -m warpsim_rl.tasks`` (text and JSON)."""
    import json

    from warpsim_rl import load_scene, scene_names
    from warpsim_rl.tasks import describe_tasks

    rows = describe_tasks()
    tasks = [r for r in rows if r["type"] == "task"]
    scenes = [r for r in rows if r["type"] == "scene"]
    assert [r["name"] for r in tasks] == ALL and [r["name"] for r in scenes] == scene_names()
    for r in tasks:
        t = make_task(r["name"])
        assert (r["scene"], r["dim"], r["handles"], r["payload"], r["obs_dim"], r["action_dim"], r["horizon"],
                r["dt"], r["kinds"], r["description"]) == (t.scene.name, t.dim, t.num_handles, t.num_payload,
                                                            t.obs_dim, t.action_dim, t.horizon, t.dt, (t.kind,),
                                                            t.description)
        assert r["description"] and "\n" not in r["description"]
    for r in scenes:
        sc = load_scene(r["name"])
        h, k = sc.num_handles, len(sc.free_particles)
        assert (r["handles"], r["payload"], r["obs_dim"], r["action_dim"], r["horizon"], r["dt"]) == \
            (h, k, (h + 2 * k) * sc.dim, h * sc.dim, None, sc.dt)
        assert r["description"] == sc.description != ""
        assert r["kinds"] == system_kinds(r["name"])
        # a scene's sizes are those of every task on it
        assert all((t["obs_dim"], t["action_dim"]) == (r["obs_dim"], r["action_dim"]) for t in tasks
                   if t["scene"] == r["name"])
    assert describe_tasks(["rope3d-stop"], scenes=False) == [next(r for r in tasks if r["name"] == "rope3d-stop")]

    run = lambda *a: subprocess.run([sys.executable, "-m", "warpsim_rl.tasks", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    out = run()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Tasks (14)" and f"Scenes ({len(scene_names())})" in lines
    for r in rows:
        line = next(ln for ln in lines if ln.split()[:1] == [r["name"]])
        cells = line.split()
        assert cells[1] == str(r["dim"]) and cells[5:8] == [str(r["obs_dim"]), str(r["action_dim"]),
                                                            str(r["horizon"]) if r["horizon"] else "-"]
        assert line.rstrip().endswith(r["description"])
    js = run("--json")
    assert js.returncode == 0 and json.loads(js.stdout) == json.loads(json.dumps(rows))
    bad = run("pendulum4d-stop")
    assert bad.returncode == 2 and "unknown task 'pendulum4d-stop'" in bad.stderr


def test_make_task_name_override():
    """``name`` is a Task field like any other (it used to collide with make_task's parameter)."""
    t = make_task("pendulum2d-stop", name="pendulum2d-short", horizon=50)
    assert (t.name, t.horizon, t.weights) == ("pendulum2d-short", 50, TASKS["pendulum2d-stop"].weights)
    assert make_task(t, name="again").name == "again"


# -- tasks on a user's scene file ("<path>.toml:<kind>") ------------------------------------------

def _docs_crane_toml() -> str:
    """The custom scene of docs/scenes.md ("Training on your own scene"), so the docs stay tested."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "scenes.md").read_text()
    section = text[text.index("## Training on your own scene"):]
    return section[section.index("```toml\n") + 8:section.index("\n```", section.index("```toml\n"))] + "\n"


def test_custom_scene_task_and_training(tmp_path):
    from warpsim_rl.algos.config import RunConfig
    from warpsim_rl.tasks import CUSTOM_SETTINGS, describe_tasks
    from warpsim_rl.training import train

    path = tmp_path / "crane2d.toml"
    path.write_text(_docs_crane_toml())
    stop, origin = make_task(f"{path}:stop"), make_task(f"{path}:stop-origin")
    for t, kind in ((stop, "stop"), (origin, "stop-origin")):
        assert (t.name, t.kind, t.scene_name, t.scene.name) == (f"{path}:{kind}", kind, str(path.resolve()), "crane2d")
        assert (t.obs_dim, t.action_dim, t.horizon, t.dt, t.test_bed_size) == (10, 2, 100, 0.02, 1000)
        assert t.description.startswith("2D crane: hook and load")
        assert t.test_bed_seed == CUSTOM_SETTINGS["test_bed_seed"] + (kind == "stop-origin")
        np.testing.assert_array_equal(t.action_limits, [[1.5, 0.0]])
        # the target is the static equilibrium under the trolley at home
        np.testing.assert_allclose(t.rest_positions, equilibrium(t.scene), atol=1e-12)
    # the registry's weights, normalised by 1 handle and 2 payload particles
    assert stop.weights == Weights(0.0, 0.0, 0.5, 0.01) and origin.weights == Weights(1.0, 0.5, 0.5, 0.01)
    # the registry's initial-state defaults; no offset along y, which the trolley cannot move
    assert (stop.init.swing_angle, stop.init.angular_speed, stop.init.handle_offset) == (0.4, (0.5, 1.5), 0.0)
    pos, vel = origin.test_bed()
    assert np.ptp(pos[:, 0, 0]) > 0.5 and np.all(pos[:, 0, 1] == 0.0)
    assert np.array_equal(origin.test_bed()[0], make_task(f"{path}:stop-origin").test_bed()[0])
    assert np.all(np.linalg.norm(vel[:, 1:], axis=-1).max(axis=1) > 0)
    assert make_task(f"{path}:stop", horizon=7, name="crane").horizon == 7
    assert [r["name"] for r in describe_tasks([f"{path}:stop"], scenes=False)] == [f"{path}:stop"]

    # train.py's path: RunConfig validates the env, training.train builds the task by name
    out = tmp_path / "run"
    res = train(RunConfig(env=f"{path}:stop", num_envs=4, epochs=1, eval_every=0, usd_envs=0, out=str(out),
                          horizon=5), progress=False)
    assert res["env"] == f"{path}:stop" and res["test_bed_size"] == 1000 and np.isfinite(res["reward"])
    assert (out / "results.json").is_file() and (out / "checkpoint.pt").is_file()


def test_custom_scene_task_errors(tmp_path):
    from warpsim_rl import SceneError
    from warpsim_rl.algos.config import RunConfig

    good = tmp_path / "crane2d.toml"
    good.write_text(_docs_crane_toml())
    no_handle = tmp_path / "free.toml"
    no_handle.write_text(_docs_crane_toml().replace("handle = true", "mass = 1.0")
                         .replace("velocity_limit = [1.5, 0.0]", ""))
    broken = tmp_path / "broken.toml"
    broken.write_text(_docs_crane_toml().replace("mass = 0.2", "mass = -0.2"))
    cases = [
        (f"{tmp_path / 'nothere.toml'}:stop", SceneError, r"scene file '.*nothere\.toml' does not exist"),
        (f"{good}:place", ValueError, r"unknown kind 'place' for a scene file; kinds: \['stop', 'stop-origin'\]"),
        (str(good), ValueError, r"a scene file needs a task kind: '.*crane2d\.toml:<kind>'"),
        (f"{no_handle}:stop", SceneError, r"scene 'crane2d' has no handle"),
        (f"{broken}:stop", SceneError, r"broken\.toml: particles\[1\]\.mass = -0\.2: must be > 0"),
    ]
    for env, err, match in cases:
        with pytest.raises(err, match=match):
            make_task(env)
        with pytest.raises(ValueError, match=r"env = '.*': .*" + match):
            RunConfig(env=env)
    with pytest.raises(ValueError, match=r"env = 'nope-stop': unknown; valid environments: .*'pendulum2d-stop'"):
        RunConfig(env="nope-stop")
