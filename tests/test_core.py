"""The step core: one physics path for the environment and the algorithms, the state layouts,
resets inside a window, gradient cuts, checkpointed rollouts and frozen failed envs."""

import numpy as np
import pytest
import torch
import warp as wp

from warpsim_rl.algos import RunConfig, algo_config, make_algorithm
from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.core import StepCore, task_model
from warpsim_rl.envs import WarpSimEnv
from warpsim_rl.tasks import make_task

E, T = 5, 12


def _actions(task, scale, seed=0):
    rng = np.random.default_rng(seed)
    lim = np.asarray(task.action_limits)
    return torch.tensor(scale * lim * rng.uniform(-1.0, 1.0, (T, E, task.num_handles, task.dim)), dtype=torch.float64)


@pytest.mark.parametrize("name, limit", [
    ("pendulum2d-stop", None),
    ("pendulum2d-stop", ((0.7, 1.3),)),                 # differs from the scene's limits
    ("cable_payload2d-stop-origin", ((0.5, 0.4), (0.3, 0.9))),
    ("double_pendulum3d-stop", None),
])
def test_env_and_algorithm_rollouts_are_one_physics_path(name, limit):
    task = make_task(name, **({"action_limit": limit} if limit else {}))
    acts = _actions(task, 1.6)  # a third of the commands beyond the limits
    pos, vel = task.test_bed()
    pos, vel = pos[:E], vel[:E]

    env = WarpSimEnv(task, E, dtype="float64", auto_reset=False)
    env.reset(initial_state=(pos, vel))
    env_states, env_rewards = [], []
    for t in range(T):
        _, r, _, _, info = env.step(acts[t])
        env_states.append(tuple(s.clone() for s in env.state_tensors()))
        env_rewards.append(r)
        assert not bool(info["diverged"].any())

    core = StepCore(task, E, "cpu", "float64")
    traj = core.open_loop(core.initial_state(pos, vel), acts)

    # an algorithm's core is built from the task object it is given (custom limits included)
    algo = make_algorithm(task, RunConfig(algo="bptt", num_envs=E, dtype="float64"), algo_config("bptt"))
    calls = iter(range(T))
    closed = algo.core.rollout(lambda obs: acts[next(calls)].reshape(E, -1), algo.core.initial_state(pos, vel), T)

    for t in range(T):
        for a, b, c in zip(env_states[t], traj.states[t + 1], closed.states[t + 1]):
            assert torch.equal(a, b) and torch.equal(b, c), t
        assert torch.equal(env_rewards[t], traj.rewards[t]) and torch.equal(traj.rewards[t], closed.rewards[t])
    # the handles moved at the task's limit, and the reward saw the executed action
    lim = torch.tensor(np.asarray(task.action_limits))
    executed = torch.clamp(acts[0], -lim, lim)
    h = torch.as_tensor(task.handles)
    dx = (traj.states[1][0][:, h] - traj.states[0][0][:, h]) / task.dt
    torch.testing.assert_close(dx, executed, rtol=1e-9, atol=1e-9)
    assert torch.equal(traj.actions[0], executed)


def test_task_model_writes_the_task_limits():
    task = make_task("pendulum2d-stop", action_limit=((5.0, 5.0),))
    m = task_model(task, 2)
    np.testing.assert_array_equal(m.velocity_limit.numpy(), [[5.0, 5.0]])
    assert np.any(task.scene.velocity_limit != 5.0)


def test_state_layouts_and_observation_jacobian():
    task = make_task("cable_payload2d-stop-origin")
    core = StepCore(task, 3, "cpu", "float64")
    pos, vel = task.test_bed()
    traj = core.open_loop(core.initial_state(pos[:3], vel[:3]), _actions(task, 0.5)[:4, :3])
    s = traj.states[-1]
    lay = core.layout
    full, markov = lay.flatten(s, "full"), lay.flatten(s, "markov")
    assert full.shape == (3, lay.full_size) and markov.shape == (3, lay.markov_size)
    assert lay.markov_size == core.model.num_state
    torch.testing.assert_close(full, torch.cat([t.reshape(3, -1) for t in s], 1), rtol=0, atol=0)
    # the Markov state is what TorchSimulator's Jacobians act on
    assert torch.equal(markov, TorchSimulator(core.model).markov_state(*s))
    obs = core.observe(s)
    const = obs - lay.flatten(s, "markov") @ lay.observation_jacobian("markov").T
    const_full = obs - full @ lay.observation_jacobian("full").T
    target = torch.as_tensor(np.array(task.target)).reshape(-1)
    home = torch.as_tensor(np.array(task.home)).reshape(-1)
    expect = torch.cat([-home, -target, torch.zeros_like(target)])
    torch.testing.assert_close(const, expect.expand_as(const), rtol=0, atol=1e-12)
    torch.testing.assert_close(const_full, expect.expand_as(const), rtol=0, atol=1e-12)
    # reward derivatives in both layouts are the same vector, scattered
    d_full = core.reward_derivatives(s, traj.actions[-1], layout="full")["dr_ds"]
    d_markov = core.reward_derivatives(s, traj.actions[-1], layout="markov")["dr_ds"]
    grads = torch.autograd.functional.jacobian(
        lambda f: core.task.reward(*_unflat(f, s), traj.actions[-1]).sum(), full)
    torch.testing.assert_close(d_full, grads, rtol=1e-12, atol=1e-12)
    free, hnd = torch.as_tensor(task.payload), torch.as_tensor(task.handles)
    n, d = task.num_particles, task.dim
    g = d_full.reshape(3, 4, n, d)
    manual = torch.cat([g[:, 0, free].flatten(1), g[:, 1, free].flatten(1), g[:, 2, free].flatten(1),
                        g[:, 3, free].flatten(1), g[:, 0, hnd].flatten(1)], 1)
    assert torch.equal(d_markov, manual)


def _unflat(f, like):
    parts = f.reshape(f.shape[0], 4, *like[0].shape[1:])
    return parts[:, 0], parts[:, 1]


def test_reset_where_keeps_other_envs_graph_and_returns_pre_reset_obs():
    task = make_task("pendulum2d-stop")
    core = StepCore(task, 4, "cpu", "float64")
    pos, vel = task.test_bed()
    s0 = tuple(t.requires_grad_(True) for t in core.initial_state(pos[:4], vel[:4]))
    s1 = core.step(s0, torch.zeros(4, 1, 2, dtype=torch.float64)).state
    mask = torch.tensor([False, True, False, True])
    new, pre = core.reset_where(s1, mask, pos[10:12], vel[10:12])
    assert torch.equal(pre, core.observe(s1))
    fresh = core.initial_state(pos[[0, 10, 2, 11]], vel[[0, 10, 2, 11]])
    for a, b, c in zip(new, fresh, s1):
        assert torch.equal(a[mask], b[mask]) and torch.equal(a[~mask], c[~mask])
    new[0].sum().backward()
    g = s0[0].grad
    assert torch.all(g[mask] == 0) and torch.all(g[~mask].abs().sum((1, 2)) > 0)
    cut = core.cut(new)
    assert all(not t.requires_grad for t in cut)


def test_checkpointed_open_loop_matches_plain():
    task = make_task("double_pendulum3d-stop")
    core = StepCore(task, 2, "cpu", "float64")
    pos, vel = task.test_bed()
    s0 = core.initial_state(pos[:2], vel[:2])
    acts = _actions(task, 0.8)[:, :2]
    grads, returns = [], []
    for every in (None, 5):
        a = acts.clone().requires_grad_(True)
        traj = core.open_loop(s0, a, checkpoint_every=every)
        traj.returns.sum().backward()
        grads.append(a.grad)
        returns.append(traj.returns.detach())
        assert len(traj.states) == (T + 1 if every is None else 4)
    assert torch.equal(returns[0], returns[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_failed_env_is_frozen_recorded_and_has_zero_gradient():
    task = make_task("pendulum2d-stop")
    core = StepCore(task, 3, "cpu", "float64")
    pos, vel = task.test_bed()
    s0 = core.initial_state(pos[:3], vel[:3])
    wp.to_torch(core.model.stiffness)[1] = float("nan")
    a = _actions(task, 0.5)[:6, :3].requires_grad_(True)
    traj = core.open_loop(s0, a)
    assert traj.failed.tolist() == [False, True, False]
    for s in traj.states:
        assert all(torch.isfinite(t).all() for t in s)
        assert all(torch.equal(t[1], u[1]) for t, u in zip(s, s0))  # frozen at the start state
    assert torch.isfinite(traj.rewards).all()
    traj.rewards.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad[:, 0].abs().sum() > 0
    # through the simulator the failed env contributes nothing: only the reward's own action term
    # -w_a |a|^2 remains
    torch.testing.assert_close(a.grad[:, 1], -2.0 * task.weights.w_a * a.detach()[:, 1], rtol=1e-12, atol=0)
