"""SHAC (warpsim_rl/algos/shac.py): the window's actor gradient against an independent
re-implementation, the objective and the TD(lambda) targets against hand-worked windows with
resets, the shared stochastic actor, the non-finite-gradient error, exact resume over several
windows, and a short training run that beats the untrained policy."""

import copy
import math

import numpy as np
import pytest
import torch

from warpsim_rl.algos import RunConfig, evaluate
from warpsim_rl.algos.returns import td_lambda_targets
from warpsim_rl.algos.shac import SHAC, SHACConfig, window_objective
from warpsim_rl.tasks import make_task


def _shac(num_envs=4, horizon=10, dtype="float64", seed=3, **cfg):
    task = make_task("pendulum2d-stop", horizon=horizon)
    run = RunConfig(env="pendulum2d-stop", algo="shac", num_envs=num_envs, horizon=horizon, dtype=dtype, seed=seed,
                    epochs=8)
    return SHAC(task, run, SHACConfig(**cfg))


def _flat(tree, prefix=""):
    """``{path: leaf}`` of a nested state dict."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def _assert_same_state(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = fa[k], fb[k]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), k
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y), k
        else:
            assert x == y, k


# -- the actor gradient of one window ------------------------------------------------------------
def _reference_loss(algo, s0, steps, gamma):
    """SHAC's window loss written out in plain torch: the policy's layers, the normaliser formula,
    the reparameterised squashed Gaussian, the raw differentiable simulator step (no step core),
    the task's reward, explicit discounting and the target critic's value at the last state."""
    task, tsim = algo.task, algo.core.tsim
    pol, actor, critic = algo.policy, algo.actor, algo.target_critic
    mean, std = pol.normalizer.mean, pol.normalizer.var.sqrt().clamp_min(0.05)

    def normalized(obs):
        return ((obs - mean) / std).clamp(-10.0, 10.0)

    state, total = s0, 0.0
    for t in range(steps):
        obs = task.observation(state[0], state[1])
        mu = pol.net(normalized(obs))
        eps = torch.randn(mu.shape, dtype=mu.dtype)
        a = pol.limit * torch.tanh(mu + actor.log_std.exp() * eps)
        a = a.reshape(-1, task.num_handles, task.dim)
        state = tsim.step(*state, a)
        total = total + gamma ** t * task.reward(state[0], state[1], a)
    v = critic.net(normalized(task.observation(state[0], state[1]))).squeeze(-1)
    return -(total + gamma ** steps * v).mean() / steps


def test_actor_gradient_equals_a_plain_torch_reimplementation():
    algo = _shac(num_envs=3, horizon=5)
    gen = torch.Generator().manual_seed(0)
    algo.policy.observe(0.3 * torch.randn(50, algo.task.obs_dim, generator=gen, dtype=torch.float64) + 0.1)
    with torch.no_grad():
        algo.actor.log_std.copy_(torch.tensor([-0.7, -1.3], dtype=torch.float64))
    s0 = algo.initial_state()
    params = list(algo.actor.parameters())
    steps, gamma = 5, algo.cfg.gamma

    torch.manual_seed(7)
    win, failed = algo.rollout_window(s0, steps, torch.zeros(3, dtype=torch.bool))
    assert not failed.any()
    loss = algo.actor_loss(win, ~failed)
    got = torch.autograd.grad(loss, params)

    torch.manual_seed(7)
    ref = _reference_loss(algo, s0, steps, gamma)
    want = torch.autograd.grad(ref, params)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)

    # and a central difference of the reference loss along a random parameter direction (the
    # simulator's implicit adjoints included)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    slope = sum((g * d).sum() for g, d in zip(got, direction))
    eps, sides = 1e-6, []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        torch.manual_seed(7)
        with torch.no_grad():
            sides.append(_reference_loss(algo, s0, steps, gamma))
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    fd = (sides[0] - sides[1]) / (2 * eps)
    assert abs(float(fd - slope)) <= 1e-5 * abs(float(slope)) + 1e-9, (float(fd), float(slope))


# -- the objective and the targets with resets inside the window --------------------------------
def _window_with_resets():
    """3 steps, 3 envs: env 0 terminal at step 1, env 1 truncated at step 1 (pre-reset value
    100), env 2 runs through; gamma = 0.5; V(s_3) = 40."""
    rewards = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)[:, None].repeat(1, 3)
    dones = torch.zeros(3, 3, dtype=torch.bool)
    dones[1, 0] = True
    truncated = torch.zeros(3, 3, dtype=torch.bool)
    truncated[1, 1] = True
    bootstrap = torch.full((3, 3), float("nan"), dtype=torch.float64)
    bootstrap[1, 1] = 100.0
    return rewards, torch.full((3,), 40.0, dtype=torch.float64), dones, truncated, bootstrap


def test_window_objective_restarts_at_resets():
    r, last, d, tr, b = _window_with_resets()
    got = window_objective(r, last, 0.5, d, tr, b)
    # env 0: (1 + .5 * 2) [terminal, no bootstrap] + (4 + .5 * 40) = 2 + 24
    # env 1: (1 + .5 * 2 + .25 * 100) [time limit] + (4 + .5 * 40) = 27 + 24
    # env 2: 1 + .5 * 2 + .25 * 4 + .125 * 40 = 8
    torch.testing.assert_close(got, torch.tensor([26.0, 51.0, 8.0], dtype=torch.float64), rtol=0, atol=1e-12)
    # no resets: SHAC's window, sum_t gamma^t r_t + gamma^h V(s_h), for every env
    torch.testing.assert_close(window_objective(r, last, 0.5), torch.full((3,), 8.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="bootstrap"):
        window_objective(r, last, 0.5, d, tr)


def test_td_lambda_targets_hand_worked_with_a_terminal_reset():
    """4 steps, gamma 0.9, lambda 0.5, V = 10, 20, 30, 40, 50; env 0 ends (terminal) at step 1 and
    a new episode starts at step 2. Targets by hand from the forward view (Sutton & Barto Eq.
    12.9): G_t = (1 - lam) sum_n lam^(n-1) G_{t:t+n} + lam^(T-t-1) G_{t:T}."""
    gamma, lam = 0.9, 0.5
    r = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)[:, None].repeat(1, 2)
    v = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0], dtype=torch.float64)[:, None].repeat(1, 2)
    d = torch.zeros(4, 2, dtype=torch.bool)
    d[1, 0] = True
    got = td_lambda_targets(r, v, d, gamma, lam)
    # step 3: 4 + .9 * 50 = 49
    # step 2: .5 (3 + .9 * 40) + .5 (3 + .9 * 4 + .81 * 50) = 19.5 + 23.55 = 43.05
    # env 1, step 1: .5 (2 + .9 * 30) + .25 (2 + .9 * 3 + .81 * 40) + .25 (2 + 2.7 + .81 * 4 + .729 * 50)
    #              = 14.5 + 9.275 + 11.0975 = 34.8725
    # env 1, step 0: .5 (1 + 18) + .25 (1 + 1.8 + .81 * 30) + .125 (1 + 1.8 + 2.43 + .729 * 40)
    #              + .125 (1 + 1.8 + 2.43 + 2.916 + .6561 * 50) = 9.5 + 6.775 + 4.29875 + 5.118875 = 25.692625
    # env 0, step 1 (terminal): 2; step 0: .5 (1 + .9 * 20) + .5 (1 + .9 * 2) = 9.5 + 1.4 = 10.9
    expect = torch.tensor([[10.9, 25.692625], [2.0, 34.8725], [43.05, 43.05], [49.0, 49.0]], dtype=torch.float64)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-9)


# -- the algorithm ------------------------------------------------------------------------------
def test_windows_cover_the_horizon():
    assert _shac(horizon=100).windows() == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert _shac(horizon=10, horizon_window=4).windows() == [(0, 4), (4, 8), (8, 10)]


def test_the_stochastic_actor_is_built_around_the_policy():
    algo = _shac(horizon=8, horizon_window=4)
    assert algo.actor.net is algo.policy.net and algo.actor.normalizer is algo.policy.normalizer
    algo.begin_epoch(0)
    algo.train_epoch()
    obs = algo.core.observe(algo.initial_state())
    assert torch.equal(algo.actor.mean_action(obs), algo.policy(obs))
    assert not torch.equal(algo.actor.log_std, torch.full_like(algo.actor.log_std, algo.cfg.init_log_std))  # trained
    ids = [id(p) for p in algo.parameters()]
    assert len(ids) == len(set(ids))


def test_resume_is_bit_identical_over_several_windows():
    straight = _shac(horizon=10, horizon_window=4)
    straight.begin_epoch(0)
    straight.train_epoch()
    saved = copy.deepcopy(straight.state_dict())
    straight.begin_epoch(1)
    m1 = straight.train_epoch()
    resumed = _shac(horizon=10, horizon_window=4)
    resumed.load_state_dict(saved)
    resumed.begin_epoch(1)
    m2 = resumed.train_epoch()
    assert m1 == m2
    _assert_same_state(straight.state_dict(), resumed.state_dict())
    assert straight.env_steps == resumed.env_steps == 2 * 10 * 4


def test_a_non_finite_gradient_raises_naming_the_window_and_epoch():
    algo = _shac(horizon=8, horizon_window=4)
    algo.policy.net[0].weight.register_hook(lambda g: g * float("nan"))
    algo.begin_epoch(2)
    with pytest.raises(FloatingPointError, match=r"window 1/2 \(steps 0\.\.3\) of epoch 3 is not finite"):
        algo.train_epoch()


@pytest.mark.parametrize("field, value", [("horizon_window", 0), ("gamma", 0.0), ("gamma", 1.5), ("lam", -0.1),
                                          ("critic_iterations", 0), ("minibatches", 0), ("target_tau", 0.0),
                                          ("max_grad_norm", 0.0), ("init_log_std", 3.0), ("critic_hidden", ()),
                                          ("betas", (0.9,)), ("critic_lr", -1.0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}"):
        SHACConfig(**{field: value})


def test_shac_beats_the_untrained_policy_on_pendulum2d_stop():
    task = make_task("pendulum2d-stop")
    epochs = 8
    run = RunConfig(env=task.name, algo="shac", num_envs=64, dtype="float32", seed=0, epochs=epochs)
    algo = SHAC(task, run, SHACConfig())
    before = evaluate(task, algo.policy)["reward"]
    for epoch in range(epochs):
        algo.begin_epoch(epoch)
        m = algo.train_epoch()
        assert m["train/diverged"] == 0 and math.isfinite(m["train/critic_loss"])
    after = evaluate(task, algo.policy)["reward"]
    # measured: -106.6 -> -24.4 (seed 0); the margin is generous
    assert after > before + 30.0, (before, after)
