"""D3PG (warpsim_rl/algos/d3pg.py): the Eq. 2 target gradient against autograd through a
differentiable step, the stored / recomputed Jacobian blocks against the simulator, the DDPG
special case, Pop-Art, training progress, exact resume, and the paper's motivating example
(warpsim_rl/bench/d3pg.py)."""

import copy

import numpy as np
import pytest
import torch

from warpsim_rl.algos import RunConfig, algo_config, evaluate, make_algorithm
from warpsim_rl.algos.d3pg import (D3PG, D3PGConfig, QCritic, chain_through_step, critic_loss_on_batch,
                                   history_partners, observed_indices, td_target)
from warpsim_rl.bench.d3pg import critic_error_curve
from warpsim_rl.core import StepCore
from warpsim_rl.tasks import TASKS, make_task
from test_algorithm_contract import _equal


def _algo(env="pendulum2d-stop", num_envs=4, horizon=12, seed=3, dtype="float64", **opts):
    run = RunConfig(env=env, algo="d3pg", num_envs=num_envs, horizon=horizon, dtype=dtype, seed=seed)
    return make_algorithm(make_task(env, horizon=horizon), run, algo_config("d3pg", **opts))


def _state_and_action(algo, steps=5):
    """A state a few steps into a rollout (non-trivial BDF2 history) and an action inside the
    limits (the clip's derivative is 1 there)."""
    traj = algo.core.rollout(algo.policy, algo.initial_state(), steps)
    state = traj.states[-1]
    limit = algo.policy.limit
    action = (algo.explore(algo.core.observe(state))).clamp(-0.9 * limit, 0.9 * limit)
    return state, action


@pytest.mark.parametrize("state_gradient", ["shifted", "fixed"])
def test_target_gradient_is_autograd_through_one_differentiable_step(state_gradient):
    algo = _algo(batch_size=16, state_gradient=state_gradient)
    algo.train_epoch()  # trained networks and normalisers (not the initial weights)
    assert algo.jacobian_mode == "store"
    state, action = _state_and_action(algo)
    core, gamma = algo.core, algo.cfg.gamma
    # the algorithm: stored fields of the transition, Eq. 2 in observation coordinates
    tr = core.step(state, action, jacobians=True)
    f = algo.transitions(state, core.observe(state), tr)
    y, dy_dnext = td_target(algo.target_policy, algo.target_critic, f["reward"], f["next_obs"], gamma, f["dr_dnext"])
    dy = chain_through_step(dy_dnext, f["dnext_dinput"], f["dr_da"])
    dy_dobs, dy_da = dy[:, :algo.task.obs_dim], dy[:, algo.task.obs_dim:]
    # autograd through the simulator's implicit adjoint and the target networks
    s = tuple(t.clone().requires_grad_(True) for t in state)
    a = action.clone().requires_grad_(True)
    nxt = core.step(s, a)
    o1 = core.observe(nxt.state)
    y_ref = nxt.reward + gamma * algo.target_critic(o1, algo.target_policy(o1))
    *g_state, g_a = torch.autograd.grad(y_ref.sum(), (*s, a))
    g_markov = core.layout.flatten(g_state, "markov")
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dy_da, g_a, rtol=1e-8, atol=1e-10)
    expect = g_markov[:, algo.obs_idx]
    if state_gradient == "shifted":  # the payload's history moves with it: add its gradient
        cols, partners = history_partners(core.layout)
        expect[:, cols] += g_markov[:, partners]
    torch.testing.assert_close(dy_dobs, expect, rtol=1e-8, atol=1e-10)
    # the Markov state holds every input the step depends on (the full gradient has nothing else)
    full = core.layout.flatten(g_state, "full")
    assert float(full.abs().sum()) == pytest.approx(float(g_markov.abs().sum()), rel=1e-12)
    # the unobserved BDF2 history does carry gradient: it is what the critic cannot fit
    hidden = torch.ones(g_markov.shape[1], dtype=torch.bool)
    hidden[algo.obs_idx] = False
    assert g_markov[:, hidden].abs().max() > 1e-3


def test_stored_and_recomputed_jacobian_blocks_are_the_simulators():
    kw = dict(num_envs=4, horizon=11, batch_size=48)  # 44 transitions < 48: no update, same rollouts
    store, recompute = _algo(jacobians="store", **kw), _algo(jacobians="recompute", **kw)
    for algo in (store, recompute):
        assert algo.train_epoch()["train/updates"] == 0
    b_s = store.buffer.sample(48, torch.Generator().manual_seed(0))
    b_r = recompute.buffer.sample(48, torch.Generator().manual_seed(0))
    for k in ("obs", "action", "reward", "next_obs", "dr_dnext", "dr_da"):
        assert torch.equal(b_s[k], b_r[k]), k
    b_r = recompute.recompute_jacobians(b_r)
    assert b_r["grad_ok"].all()
    torch.testing.assert_close(b_r["dnext_dinput"], b_s["dnext_dinput"], rtol=0, atol=1e-12)
    # against autograd through core.step, row by row of the next observation
    task, rows = store.task, 3
    core = StepCore(task, rows, "cpu", "float64")
    n, d = task.num_particles, task.dim
    s = tuple(t.contiguous().requires_grad_(True) for t in b_r["state"][:rows].reshape(rows, 4, n, d).unbind(1))
    a = b_r["action"][:rows].clone().requires_grad_(True)
    o1 = core.observe(core.step(s, a).state)
    torch.testing.assert_close(o1.detach(), b_r["next_obs"][:rows], rtol=0, atol=1e-12)
    idx, (cols, partners) = store.obs_idx, history_partners(task.layout)
    for i in range(task.obs_dim):
        *g_state, g_a = torch.autograd.grad(o1[:, i].sum(), (*s, a), retain_graph=True)
        g_markov = core.layout.flatten(g_state, "markov")
        g_obs = g_markov[:, idx]
        g_obs[:, cols] += g_markov[:, partners]  # state_gradient = "shifted"
        torch.testing.assert_close(b_s["dnext_dinput"][:rows, i], torch.cat([g_obs, g_a], 1), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("normalize_q", [False, True])
def test_zero_weights_give_the_plain_ddpg_critic_update(normalize_q):
    algo = _algo(w1=0.0, w2=0.0, batch_size=16, normalize_q=normalize_q)
    assert algo.jacobian_mode is None and set(algo.buffer.shapes) == {"obs", "action", "reward", "next_obs"}
    algo.train_epoch()
    batch = algo.buffer.sample(16, torch.Generator().manual_seed(1))
    nets = [copy.deepcopy(m) for m in (algo.critic, algo.target_critic, algo.q_stats)]
    opts = []
    for critic in (algo.critic, nets[0]):
        opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
        opt.load_state_dict(copy.deepcopy(algo.critic_opt.state_dict()))  # load_state_dict aliases the moments
        opts.append(opt)
    # the D3PG path
    loss, parts = critic_loss_on_batch(algo.critic, algo.target_policy, algo.target_critic, batch, algo.cfg.gamma,
                                       0.0, 0.0, algo.q_stats)
    assert set(parts) == {"value_loss", "q_target"}
    opts[0].zero_grad()
    loss.backward()
    opts[0].step()
    # DDPG written out: y = r + gamma Q'(o', pi'(o')), mean squared error (in units of sigma)
    critic, target, stats = nets
    with torch.no_grad():
        y = batch["reward"] + algo.cfg.gamma * target(batch["next_obs"], algo.target_policy(batch["next_obs"]))
    if normalize_q:
        stats.update(y[:, None])
        std = stats.var.sqrt().clamp_min(stats.min_std)[0]
        for net in (critic, target):  # Pop-Art: the function before the step is unchanged
            before = net(batch["obs"], batch["action"])
            net.set_output_scale(stats.mean[0], std)
            torch.testing.assert_close(net(batch["obs"], batch["action"]), before, rtol=1e-12, atol=1e-12)
    ref = ((critic(batch["obs"], batch["action"]) - y) / critic.q_std).square().mean()
    opts[1].zero_grad()
    ref.backward()
    opts[1].step()
    tol = dict(rtol=1e-12, atol=1e-12) if normalize_q else dict(rtol=0, atol=0)
    torch.testing.assert_close(loss.detach(), ref.detach(), **tol)
    for (k, p), q in zip(algo.critic.state_dict().items(), critic.state_dict().values()):
        torch.testing.assert_close(p, q, **tol, msg=k)
    for p, q in zip(algo.target_critic.state_dict().values(), target.state_dict().values()):
        torch.testing.assert_close(p, q, **tol)


def test_reward_depends_on_the_next_state_only_through_the_observation():
    """Every task: the observation selects Markov-state entries, and the reward's Markov
    gradient lives on them (so Eq. 2 needs only the observed Jacobian blocks)."""
    gen = np.random.default_rng(0)
    for name in TASKS:
        task = make_task(name)
        idx = observed_indices(task.layout)
        x, v = (torch.as_tensor(gen.normal(size=(3, task.num_particles, task.dim))) for _ in range(2))
        act = torch.as_tensor(gen.normal(size=(3, task.num_handles, task.dim)))
        dr = task.reward_derivatives(x, v, act, layout="markov")["dr_ds"]
        on_obs = torch.zeros_like(dr)
        on_obs[:, idx] = dr[:, idx]
        assert torch.equal(on_obs, dr), name


def test_storage_mode_follows_the_memory_budget():
    cfg = D3PGConfig()
    assert D3PG.resolve_jacobian_mode(make_task("pendulum2d-stop"), cfg) == "store"
    assert D3PG.resolve_jacobian_mode(make_task("cloth_table-stop"), cfg) == "recompute"
    assert D3PG.resolve_jacobian_mode(make_task("cloth_table-stop"), D3PGConfig(jacobians="store")) == "store"
    assert D3PG.resolve_jacobian_mode(make_task("cloth_table-stop"), D3PGConfig(w1=0.0, w2=0.0)) is None
    task = make_task("double_pendulum3d-stop")
    no, na = task.obs_dim, task.action_dim
    assert D3PG.memory_per_transition(task, "store") - D3PG.memory_per_transition(task, None) \
        == 4 * (no * (no + na) + no + na)


def test_popart_rescale_keeps_the_critic_function():
    torch.manual_seed(0)
    critic = QCritic(3, 2, torch.tensor([0.5, 2.0]), (8,)).double()
    obs, act = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    before = critic(obs, act)
    critic.set_output_scale(torch.tensor(-7.0, dtype=torch.float64), torch.tensor(3.5, dtype=torch.float64))
    torch.testing.assert_close(critic(obs, act), before, rtol=1e-13, atol=1e-13)
    assert float(critic.q_std) == 3.5


@pytest.mark.parametrize("field, value", [("tau", 1.5), ("gamma", 1.0), ("w2", -1.0), ("jacobians", "dense"),
                                          ("critic_hidden", (64, 0)), ("batch_size", 0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        D3PGConfig(**{field: value})


def test_resume_with_updates_is_bit_identical():
    """The contract test's epochs are too small to start updates; here they run (batch 16)."""
    kw = dict(num_envs=6, horizon=12, batch_size=16)
    straight = _algo(**kw)
    assert straight.train_epoch()["train/updates"] > 0
    saved = copy.deepcopy(straight.state_dict())
    m_straight = straight.train_epoch()
    resumed = _algo(**kw)
    resumed.load_state_dict(saved)
    _equal(m_straight, resumed.train_epoch())
    _equal(straight.state_dict(), resumed.state_dict())


def test_recompute_mode_trains_and_resumes():
    kw = dict(num_envs=4, horizon=8, batch_size=8, jacobians="recompute")
    straight = _algo(**kw)
    straight.train_epoch()
    saved = copy.deepcopy(straight.state_dict())
    m = straight.train_epoch()
    assert m["train/updates"] > 0 and np.isfinite(m["train/grad_o_loss"])
    resumed = _algo(**kw)
    resumed.load_state_dict(saved)
    _equal(m, resumed.train_epoch())


def test_a_few_epochs_improve_the_test_bed_reward():
    task = make_task("pendulum2d-stop")
    run = RunConfig(env="pendulum2d-stop", algo="d3pg", num_envs=64, seed=0)
    algo = make_algorithm(task, run, algo_config("d3pg"))
    untrained = evaluate(task, algo.policy)["reward"]
    for epoch in range(5):
        algo.begin_epoch(epoch)
        algo.train_epoch()
    trained = evaluate(task, algo.policy)
    assert trained["diverged"] == 0
    assert trained["reward"] > untrained + 15.0, (untrained, trained["reward"])


def test_motivating_example_state_gradients_speed_up_the_critic():
    """Sec. 3.3: the critic's error against the true Q of a fixed policy falls faster when it
    also fits the target's state gradient (w2 = 1) than without (DDPG)."""
    kw = dict(epochs=8, updates=100, grid=21, seed=0)
    ddpg, d3pg = critic_error_curve(0.0, 0.0, **kw), critic_error_curve(0.0, 1.0, **kw)
    assert ddpg[0] == d3pg[0]  # same initial critic
    assert d3pg[-1] < 0.9 * ddpg[-1], (ddpg, d3pg)
    assert d3pg[-1] < 0.5 * d3pg[0]
