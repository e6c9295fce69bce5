"""The batched torch environment: reset/step semantics, auto-reset, clipping, divergence
handling, bad input, every task's random episode, the differentiable rollout, the benchmark hook."""

import warnings

import numpy as np
import pytest
import torch
import warp as wp

from warpsim_rl import ActionError
from warpsim_rl.envs import WarpSimEnv
from warpsim_rl.tasks import make_task, task_names

ALL = task_names()


def _rand_actions(env, gen, scale=1.5):
    lim = env.task.constants(env.device, env.dtype)["limit"].reshape(-1)
    return ((torch.rand(env.num_envs, env.action_dim, generator=gen, dtype=env.dtype) * 2 - 1) * lim * scale).to(env.device)


@pytest.mark.parametrize("name", ALL)
def test_random_episode_no_nan(name):
    """Every registered task runs a full episode of random actions (beyond the limits too)."""
    env = WarpSimEnv(name, 8, seed=3)
    obs, _ = env.reset()
    gen = torch.Generator().manual_seed(0)
    assert obs.shape == (8, env.obs_dim) and obs.dtype == torch.float32
    for t in range(env.horizon):
        obs, r, term, trunc, info = env.step(_rand_actions(env, gen))
        assert torch.isfinite(obs).all() and torch.isfinite(r).all()
        assert torch.isfinite(info["final_observation"]).all()
        assert r.shape == (8,) and term.dtype == torch.bool and trunc.dtype == torch.bool
        if t < env.horizon - 1:
            assert not trunc.any()
    assert (trunc | term).all()
    assert torch.all(env.episode_step == 0)  # auto-reset started new episodes


def test_observation_layout_and_reward(device):
    env = WarpSimEnv("double_pendulum3d-stop-origin", 4, device=device, seed=0, dtype="float64")
    obs, _ = env.reset()
    t = env.task
    x, v, _, _ = env.state_tensors()
    xn, vn = x.cpu().numpy(), v.cpu().numpy()
    lay = t.observation_layout
    o = obs.cpu().numpy()
    np.testing.assert_allclose(o[:, lay["handle_pos"]], (xn[:, t.handles] - t.home).reshape(4, -1))
    np.testing.assert_allclose(o[:, lay["payload_pos"]], (xn[:, t.payload] - t.target).reshape(4, -1))
    np.testing.assert_allclose(o[:, lay["payload_vel"]], vn[:, t.payload].reshape(4, -1))
    a = torch.full((4, 3), 0.3, dtype=torch.float64, device=env.device)
    obs1, r, _, _, info = env.step(a)
    x1, v1, _, _ = env.state_tensors()
    torch.testing.assert_close(r, t.reward(x1, v1, a.reshape(4, 1, 3)))
    torch.testing.assert_close(obs1, t.observation(x1, v1))
    # the handle moved by dt * a
    torch.testing.assert_close(obs1[:, lay["handle_pos"]] - obs[:, lay["handle_pos"]],
                               torch.full((4, 3), 0.3 * t.dt, dtype=torch.float64, device=env.device))


def test_reset_deterministic_under_seed():
    a = WarpSimEnv("rope3d-stop", 16, seed=11)
    b = WarpSimEnv("rope3d-stop", 16, seed=11)
    oa, _ = a.reset()
    ob, _ = b.reset()
    torch.testing.assert_close(oa, ob, rtol=0, atol=0)
    oa2, _ = a.reset()
    assert not torch.equal(oa, oa2)  # the generator continues
    oa3, _ = a.reset(seed=11)
    torch.testing.assert_close(oa3, oa, rtol=0, atol=0)
    # the states are the task's samples for that seed
    pos, vel = a.task.sample_initial_states(16, 11)
    x, v, xp, vp = a.state_tensors()
    np.testing.assert_array_equal(x.numpy(), pos.astype(np.float32))
    np.testing.assert_array_equal(v.numpy()[:, a.task.payload], vel[:, a.task.payload].astype(np.float32))


def test_test_bed_identical_across_devices(device):
    """The test bed reaches every device bit-identically (host float64 -> device dtype)."""
    t = make_task("pendulum3d-stop-origin")
    pos, vel = t.test_bed()
    E = 32
    for dtype, npd in (("float32", np.float32), ("float64", np.float64)):
        env = WarpSimEnv(t, E, device=device, dtype=dtype)
        env.reset(initial_state=(pos[:E], vel[:E]))
        x, v, _, _ = env.state_tensors()
        np.testing.assert_array_equal(x.cpu().numpy(), pos[:E].astype(npd))
        np.testing.assert_array_equal(v.cpu().numpy(), vel[:E].astype(npd))
    with pytest.raises(ValueError, match="initial_state"):
        env.reset(initial_state=(pos[:3], vel[:3]))


def test_auto_reset():
    """Truncation at the horizon: the final observation is reported, the returned observation
    starts the next episode, the step counter restarts."""
    task = make_task("pendulum2d-stop", horizon=3)
    auto = WarpSimEnv(task, 5, seed=4)
    manual = WarpSimEnv(task, 5, seed=4, auto_reset=False)
    auto.reset()
    manual.reset()
    gen = torch.Generator().manual_seed(0)
    for t in range(3):
        a = _rand_actions(auto, gen)
        oa, ra, ta, tra, ia = auto.step(a)
        om, rm, tm, trm, im = manual.step(a)
        torch.testing.assert_close(ra, rm, rtol=0, atol=0)
        torch.testing.assert_close(tra, trm)
        assert "final_observation" not in im
        if t < 2:
            torch.testing.assert_close(oa, om, rtol=0, atol=0)
            assert not tra.any() and torch.all(ia["episode_step"] == t + 1)
    assert tra.all() and not ta.any() and ia["done"].all()
    torch.testing.assert_close(ia["final_observation"], om, rtol=0, atol=0)
    assert torch.all(auto.episode_step == 0) and torch.all(ia["episode_step"] == 3)
    assert torch.all(manual.episode_step == 3)
    # without auto-reset the episode keeps reporting truncation until reset
    _, _, _, trm, _ = manual.step(torch.zeros(5, 2))
    assert trm.all()
    # the new episode's first observation: the next samples of the same generator
    onew, _ = manual.reset()
    torch.testing.assert_close(oa, onew, rtol=0, atol=0)
    _, _, _, trm, _ = manual.step(torch.zeros(5, 2))
    assert not trm.any()


def test_partial_reset_keeps_other_envs():
    env = WarpSimEnv("cable_payload2d-stop-origin", 6, seed=0)
    env.reset()
    env.step(torch.zeros(6, 4))
    before = [t.clone() for t in env.state_tensors()]
    obs, info = env.reset(env_ids=torch.tensor([1, 4]))
    after = env.state_tensors()
    keep = torch.tensor([True, False, True, True, False, True])
    for b, a in zip(before, after):
        torch.testing.assert_close(a[keep], b[keep], rtol=0, atol=0)
        assert not torch.equal(a[~keep], b[~keep])
    assert info["env_ids"].tolist() == [1, 4]
    assert env.episode_step.tolist() == [1, 0, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="env_ids"):
        env.reset(env_ids=[7])


def test_action_clipping_enforced():
    """Commanded velocities beyond the limits are clipped per axis (documented): the handle moves
    by dt * clip(a) and the reward's action term uses the clipped action."""
    env = WarpSimEnv("pendulum3d-stop", 3, dtype="float64", seed=0)
    obs0, _ = env.reset()
    lim = env.task.action_limits.reshape(-1)
    a = torch.tensor([[10.0, -10.0, 0.5], [-0.1, 2.5, -7.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    obs1, r, _, _, info = env.step(a)
    clipped = np.clip(a.numpy(), -lim, lim)
    np.testing.assert_array_equal(info["action"].numpy(), clipped)
    lay = env.task.observation_layout
    np.testing.assert_allclose((obs1 - obs0)[:, lay["handle_pos"]].numpy(), clipped * env.task.dt, atol=1e-14)
    x1, v1, _, _ = env.state_tensors()
    np.testing.assert_allclose(r.numpy(), env.task.reward(x1, v1, torch.as_tensor(clipped)).numpy(), rtol=1e-14)
    # the simulator records the clipped velocity as the handle velocity
    np.testing.assert_allclose(v1[:, env.task.handles].reshape(3, -1).numpy(), clipped)


def test_custom_action_limits_reach_the_kernel():
    task = make_task("pendulum2d-stop", action_limit=((0.5, 0.25),))
    env = WarpSimEnv(task, 2, dtype="float64", seed=0)
    obs0, _ = env.reset()
    env.validate = True
    obs1, _, _, _, info = env.step(torch.tensor([[3.0, -3.0], [0.1, 0.1]], dtype=torch.float64))
    np.testing.assert_allclose(info["action"].numpy(), [[0.5, -0.25], [0.1, 0.1]])
    np.testing.assert_allclose((obs1 - obs0)[:, :2].numpy(), [[0.01, -0.005], [0.002, 0.002]], atol=1e-14)


def test_bad_actions_raise():
    env = WarpSimEnv("cable_payload2d-stop", 4, seed=0)
    env.reset()
    good = torch.zeros(4, 4)
    env.step(good)
    env.step(good.reshape(4, 2, 2))
    with pytest.raises(ActionError, match=r"action.shape = \(4, 3\)"):
        env.step(torch.zeros(4, 3))
    with pytest.raises(ActionError, match=r"action.shape = \(3, 4\)"):
        env.step(torch.zeros(3, 4))
    with pytest.raises(ActionError, match="dtype"):
        env.step(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ActionError, match="device"):
        env.step(torch.zeros(4, 4, device="meta"))
    with pytest.raises(ActionError, match="torch.Tensor"):
        env.step(np.zeros((4, 4), dtype=np.float32))
    bad = torch.zeros(4, 4)
    bad[2, 1] = float("nan")
    with pytest.raises(ActionError, match=r"non-finite.*env\(s\) \[2\]"):
        env.step(bad)
    bad[2, 1] = float("inf")
    with pytest.raises(ActionError, match="non-finite"):
        env.step(bad)
    # a rejected action leaves the env untouched
    assert env.episode_step.tolist() == [2, 2, 2, 2]
    fresh = WarpSimEnv("cable_payload2d-stop", 4, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step(good)


def test_unknown_task_name():
    with pytest.raises(ValueError, match="known tasks"):
        WarpSimEnv("pendulum-stop", 2)


def test_diverged_env_terminates_without_nan():
    """An env whose implicit solve fails is terminated, rolled back to its last valid state and
    (auto-)reset; observations and rewards stay finite; the other envs are unaffected."""
    for auto in (True, False):
        env = WarpSimEnv("pendulum2d-stop", 4, seed=0, auto_reset=auto)
        ref = WarpSimEnv("pendulum2d-stop", 4, seed=0, auto_reset=auto)
        obs0, _ = env.reset()
        ref.reset()
        k = env.model.stiffness.numpy()
        k[1] = np.nan  # poisons env 1's energy: Newton reports a non-finite iterate
        env.model.stiffness.assign(wp.array(k, dtype=env.model.dtype, device=env.model.device))
        a = torch.full((4, 2), 0.2)
        obs, r, term, trunc, info = env.step(a)
        robs, rr, _, _, _ = ref.step(a)
        assert term.tolist() == [False, True, False, False] and not trunc.any()
        assert info["diverged"].tolist() == [False, True, False, False]
        assert torch.isfinite(obs).all() and torch.isfinite(r).all()
        keep = torch.tensor([True, False, True, True])
        torch.testing.assert_close(obs[keep], robs[keep], rtol=0, atol=0)
        torch.testing.assert_close(r[keep], rr[keep], rtol=0, atol=0)
        x, v, _, _ = env.state_tensors()
        assert torch.isfinite(x).all() and torch.isfinite(v).all()
        if auto:
            torch.testing.assert_close(info["final_observation"][1], obs0[1], rtol=0, atol=0)
            assert env.episode_step[1] == 0 and env.episode_step[0] == 1
        else:
            torch.testing.assert_close(obs[1], obs0[1], rtol=0, atol=0)  # rolled back


def test_flat_state_layout_matches_reward_derivatives():
    env = WarpSimEnv("rope3d-stop-origin", 2, dtype="float64", seed=0)
    env.reset()
    s = env.flat_state()
    np.testing.assert_array_equal(s.numpy(), env.state.flat())
    x, v, _, _ = env.state_tensors()
    der = env.task.reward_derivatives(x, v, torch.zeros(2, 3, dtype=torch.float64))
    assert der["dr_ds"].shape == s.shape


# -- differentiable rollouts --------------------------------------------------------------------

def _rollout_value(env, acts, init):
    return env.rollout_differentiable(acts, initial_state=init)["rewards"].sum()


def test_rollout_differentiable_gradient_vs_finite_differences():
    pytest.importorskip("warpsim_rl.autodiff")
    task = make_task("double_pendulum3d-stop-origin")
    env = WarpSimEnv(task, 2, dtype="float64", seed=0)
    pos, vel = task.test_bed()
    init = (pos[:2], vel[:2])
    T = 4
    gen = torch.Generator().manual_seed(5)
    acts = ((torch.rand(T, 2, 3, generator=gen, dtype=torch.float64) - 0.5) * 2).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-leaf .grad access inside wp.from_torch
        out = env.rollout_differentiable(acts, initial_state=init)
        assert out["rewards"].shape == (T, 2) and out["observations"].shape == (T + 1, 2, env.obs_dim)
        assert len(out["states"]) == T + 1
        out["rewards"].sum().backward()
        eps = 1e-6
        fd = torch.zeros_like(acts)
        with torch.no_grad():
            for idx in np.ndindex(*acts.shape):
                ap, am = acts.detach().clone(), acts.detach().clone()
                ap[idx] += eps
                am[idx] -= eps
                fd[idx] = (_rollout_value(env, ap, init) - _rollout_value(env, am, init)) / (2 * eps)
    torch.testing.assert_close(acts.grad, fd, rtol=1e-5, atol=1e-6)
    # the rollout's rewards equal the env's own stepping from the same states
    env.reset(initial_state=init)
    for t in range(T):
        _, r, _, _, _ = env.step(acts.detach()[t])
        torch.testing.assert_close(r, out["rewards"][t].detach(), rtol=1e-9, atol=1e-9)


def test_rollout_differentiable_policy():
    pytest.importorskip("warpsim_rl.autodiff")
    env = WarpSimEnv("pendulum2d-stop", 3, dtype="float64", seed=0)
    env.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(env.obs_dim, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, env.action_dim)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = env.rollout_differentiable(net, steps=5)
        out["rewards"].sum().backward()
    assert out["actions"].shape == (5, 3, 2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ActionError):
        env.rollout_differentiable(torch.zeros(5, 3, 7, dtype=torch.float64))


def test_bench_envs_hook():
    from warpsim_rl.bench.envs import bench_envs

    out = bench_envs(envs=8, steps=3, repeats=1, tasks=["pendulum2d-stop", "rope3d-stop-origin"])
    assert out["benchmark"] == "envs" and len(out["rows"]) == 2
    row = out["rows"][1]
    assert row["name"] == "rope3d-stop-origin" and row["obs_dim"] == 63 and row["action_dim"] == 3
    assert row["horizon"] == 100 and row["env_steps_per_s"] > 0


def test_system_pictures_render(tmp_path):
    """docs/images/env_*.png are drawn by the project's own code (warpsim_rl.viz.systems)."""
    pytest.importorskip("matplotlib")
    from warpsim_rl.viz.systems import render_all

    paths = render_all(tmp_path, systems=("cable_payload2d", "double_pendulum3d"))
    assert [p.name for p in paths] == ["env_cable_payload2d.png", "env_double_pendulum3d.png"]
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
