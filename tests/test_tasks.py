"""Tasks: registry, equilibrium targets, initial-state sampling and test beds, reward and its
analytic derivatives (against finite differences, float64)."""

import dataclasses
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from warpsim_rl.tasks import (SYSTEMS, TASKS, InitialStateDistribution, Weights, equilibrium, make_task,
                              reward, task_names)

ALL = task_names()


# -- registry -----------------------------------------------------------------------------------

def test_registry_names():
    assert len(ALL) == 10
    assert set(ALL) == {f"{s}-{k}" for s in SYSTEMS for k in ("stop", "stop-origin")}
    assert "pendulum2d-stop" in ALL


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
    assert t.dt == sc.dt == 0.02 and 50 <= t.horizon <= 100
    assert set(t.payload.tolist()) | set(t.handles.tolist()) == set(range(sc.num_particles))
    assert np.all(t.action_limits > 0)
    w = t.weights
    if t.kind == "stop":
        assert w.w_p == 0 and w.w_x == 0 and w.w_v > 0 and t.init.handle_offset == 0
    else:
        assert min(w.w_p, w.w_x, w.w_v) > 0 and t.init.handle_offset > 0
    assert w.w_a > 0
    lay = t.observation_layout
    assert lay["payload_vel"].stop == t.obs_dim


# -- equilibrium ----------------------------------------------------------------------------------

@pytest.mark.parametrize("system", SYSTEMS)
def test_target_is_static_equilibrium(system):
    """Forces on every payload particle balance at the target (spring forces + gravity)."""
    t = make_task(f"{system}-stop-origin")
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
    # handles at home (stop) or displaced within the offset (stop-origin), the system moves with them
    off = p1[:, t.handles] - t.home
    if t.kind == "stop":
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


@pytest.mark.parametrize("name", ["rope3d-stop-origin", "cable_payload2d-stop-origin"])
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
