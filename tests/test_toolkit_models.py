"""Shared pieces of the algorithm toolkit: networks (models.py), the replay buffer (buffers.py),
learning-rate schedules (schedules.py), TD(lambda) targets and masked means (returns.py)."""

import io
import math

import pytest
import torch
from torch import distributions as D
from torch import nn

from warpsim_rl.algos.buffers import ReplayBuffer, memory_bytes
from warpsim_rl.algos.models import (MLPPolicy, SquashedGaussianActor, TwinQCritic, ValueCritic,
                                     hard_update, mlp, soft_update)
from warpsim_rl.algos.returns import masked_mean, td_lambda_targets
from warpsim_rl.algos.schedules import LR_SCHEDULES

LIMIT = torch.tensor([0.5, 1.5, 3.0])  # log-limits do not sum to 0


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("hidden, normalize, gain", [((64, 64), True, 0.1), ((32,), False, 0.5), ((), True, 1.0)])
def test_mlp_policy_weights_and_names_unchanged_by_the_shared_builder(hidden, normalize, gain):
    """MLPPolicy built through mlp() draws the same torch RNG numbers in the same order as the
    original inline construction (golden runs compare trained weights bitwise)."""
    torch.manual_seed(3)
    layers, width = [], 5
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    last = nn.Linear(width, 3)
    nn.init.orthogonal_(last.weight, gain=gain)
    nn.init.zeros_(last.bias)
    reference = nn.Sequential(*layers, last)
    after_reference = torch.rand(4)
    torch.manual_seed(3)
    pol = MLPPolicy(5, 3, LIMIT, hidden, normalize=normalize, init_gain=gain)
    assert torch.equal(torch.rand(4), after_reference)  # same number of draws
    ref_sd = reference.state_dict()
    net_sd = pol.net.state_dict()
    assert list(net_sd) == list(ref_sd)
    assert all(torch.equal(net_sd[k], ref_sd[k]) for k in ref_sd)
    expected = ["limit", *(f"net.{k}" for k in ref_sd)]
    expected += ["normalizer.mean", "normalizer.var", "normalizer.count"] if normalize else []
    assert list(pol.state_dict()) == expected
    assert repr(pol.net) == repr(reference)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="'swish'"):
        mlp(2, 1, (4,), "swish")


def _actor64(log_std):
    torch.manual_seed(0)
    actor = SquashedGaussianActor(4, 3, LIMIT, (16, 16), normalize=False, init_gain=1.0).double()
    with torch.no_grad():
        actor.log_std.copy_(torch.as_tensor(log_std, dtype=torch.float64))
    return actor


def test_squashed_gaussian_log_prob_matches_torch_change_of_variables():
    actor = _actor64([math.log(0.3), math.log(0.7), 0.2])
    obs = torch.randn(500, 4, dtype=torch.float64)
    torch.manual_seed(1)
    action, log_prob = actor(obs)
    mean = actor.net(obs)
    base = D.Normal(mean, actor.log_std.exp())
    ref = D.Independent(D.TransformedDistribution(base, [D.TanhTransform(), D.AffineTransform(0.0, actor.limit)]), 1)
    assert log_prob.shape == (500,)
    torch.testing.assert_close(log_prob, ref.log_prob(action), rtol=1e-9, atol=1e-9)
    # the mode's density, for deterministic actions
    a_det, lp_det = actor(obs, deterministic=True)
    torch.testing.assert_close(a_det, actor.mean_action(obs), rtol=0, atol=0)
    torch.testing.assert_close(lp_det, ref.log_prob(a_det), rtol=1e-9, atol=1e-9)


def test_squashed_gaussian_density_integrates_to_the_bin_widths():
    """Monte-Carlo check of the normalisation, including the log(limit) term: for samples
    a_i ~ pi, E[1{a in bin} / pi(a)] = the bin's width (importance sampling of the uniform)."""
    torch.manual_seed(0)
    actor = SquashedGaussianActor(2, 1, torch.tensor([2.5]), (8,), normalize=False, init_gain=1.0).double()
    with torch.no_grad():
        actor.net[-1].bias.fill_(0.4)
        actor.log_std.fill_(math.log(0.8))
    n, bins = 400_000, 25
    action, log_prob = actor(torch.zeros(n, 2, dtype=torch.float64))
    edges = torch.linspace(-2.5, 2.5, bins + 1, dtype=torch.float64)
    which = torch.bucketize(action[:, 0], edges[1:-1])
    counts = torch.bincount(which, minlength=bins)
    width = torch.bincount(which, weights=(-log_prob).exp(), minlength=bins) / n
    busy = counts > 4000
    assert busy.sum() >= 10
    torch.testing.assert_close(width[busy], torch.full_like(width[busy], 5.0 / bins), rtol=0.05, atol=0)


def test_squashed_gaussian_actions_stay_within_limits_and_log_prob_stays_finite():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(4, 3, LIMIT, (16,), normalize=True, log_std_max=2.0)
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([30.0, -30.0, 0.0]))  # tanh saturates in float32
        actor.log_std.fill_(10.0)  # clamped to log_std_max
    obs = 100.0 * torch.randn(10_000, 4)
    action, log_prob = actor(obs)
    assert (action.abs() <= LIMIT).all()
    assert torch.isfinite(log_prob).all()
    assert (action[:, 0] == LIMIT[0]).any()  # saturated, yet a finite log-likelihood
    # the clamp: the sample spread is that of exp(log_std_max), not exp(10)
    actor.net[-1].bias.data.zero_()
    u = torch.atanh((actor(torch.zeros(20_000, 4))[0][:, 2] / LIMIT[2]).double().clamp(-1 + 1e-7, 1 - 1e-7))
    assert u.std() < 2 * math.exp(2.0)


def test_squashed_gaussian_mean_network_is_an_mlp_policy():
    """Same arguments and seed -> same initial mean network as MLPPolicy; a trained MLPPolicy's
    weights load into the actor and its evaluation action then equals the policy's."""
    torch.manual_seed(7)
    pol = MLPPolicy(4, 3, LIMIT, (16, 8))
    torch.manual_seed(7)
    actor = SquashedGaussianActor(4, 3, LIMIT, (16, 8))
    assert set(actor.state_dict()) == set(pol.state_dict()) | {"log_std"}
    assert all(torch.equal(v, actor.state_dict()[k]) for k, v in pol.state_dict().items())
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(torch.randn_like(p))
    obs = torch.randn(64, 4)
    pol.observe(obs)
    missing, unexpected = actor.load_state_dict(pol.state_dict(), strict=False)
    assert missing == ["log_std"] and unexpected == []
    assert torch.equal(actor.mean_action(obs), pol(obs))
    # reparameterised: the log-likelihood and actions carry gradients to the mean net and log_std
    action, log_prob = actor(obs)
    (log_prob.mean() + action.sum()).backward()
    assert actor.log_std.grad is not None and actor.net[0].weight.grad.abs().sum() > 0


def test_critics_shapes_heads_and_normalisers():
    torch.manual_seed(0)
    q = TwinQCritic(4, 3, (32, 32))
    obs, act = torch.randn(7, 5, 4), torch.randn(7, 5, 3)
    q1, q2 = q(obs, act)
    assert q1.shape == q2.shape == (7, 5)
    assert not torch.allclose(q1, q2)  # independent heads
    assert not torch.equal(q.q1[0].weight, q.q2[0].weight)
    assert torch.equal(q.min_q(obs, act), torch.minimum(q1, q2))
    v = ValueCritic(4, (32,))
    assert v(obs).shape == (7, 5)
    assert isinstance(v.normalizer, nn.Identity) and "normalizer.mean" not in v.state_dict()
    v.observe(obs)  # a no-op
    vn = ValueCritic(4, (32,), normalize=True)
    vn.observe(obs)
    assert float(vn.normalizer.count) == 35
    torch.testing.assert_close(vn(obs), vn.net(vn.normalizer(obs)).squeeze(-1))


# ---------------------------------------------------------------- target networks


def _twin(seed):
    torch.manual_seed(seed)
    net = TwinQCritic(3, 2, (8,), normalize=True)
    net.observe(torch.randn(50, 3) * (seed + 1))
    return net


def test_soft_update_polyak_and_hard_update():
    src = _twin(1)
    snap = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731

    tgt = _twin(2)
    before = snap(tgt)
    soft_update(tgt, src, 0.0)
    params = dict(src.named_parameters())
    for k, v in tgt.state_dict().items():
        expect = before[k] if k in params else src.state_dict()[k]  # buffers are copied at any tau
        assert torch.equal(v, expect), k

    tgt = _twin(2)
    soft_update(tgt, src, 1.0)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in tgt.state_dict().items())

    tgt = _twin(2)
    before = snap(tgt)
    soft_update(tgt, src, 0.1)
    for k, v in tgt.state_dict().items():
        expect = 0.9 * before[k] + 0.1 * params[k].detach() if k in params else src.state_dict()[k]
        torch.testing.assert_close(v, expect, rtol=1e-6, atol=1e-7)
    assert not any(v.grad_fn for v in tgt.state_dict().values())

    tgt = _twin(2)
    hard_update(tgt, src)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in tgt.state_dict().items())

    with pytest.raises(ValueError, match="tau"):
        soft_update(tgt, src, 1.5)
    with pytest.raises(ValueError, match="normalizer"):
        hard_update(TwinQCritic(3, 2, (8,), normalize=False), src)


# ---------------------------------------------------------------- replay buffer

FIELDS = {"obs": (2,), "reward": (), "done": (), "A": (2, 2)}


def _transitions(ids):
    ids = torch.as_tensor(ids, dtype=torch.float32)
    return {"obs": torch.stack([ids, -ids], 1), "reward": ids, "done": ids > 3,
            "A": ids[:, None, None] * torch.eye(2)}


def test_replay_buffer_ring_wraps_around():
    buf = ReplayBuffer(5, FIELDS, dtypes={"done": torch.bool})
    buf.add(**_transitions([0, 1, 2]))
    assert len(buf) == 3
    assert buf.data["reward"][:3].tolist() == [0, 1, 2]
    buf.add(**_transitions([3, 4, 5, 6]))
    # rows 0..4: 3 and 4 fill rows 3, 4; 5 and 6 overwrite the oldest, rows 0 and 1
    assert len(buf) == 5
    assert buf.data["reward"].tolist() == [5, 6, 2, 3, 4]
    assert buf.data["obs"][:, 1].tolist() == [-5, -6, -2, -3, -4]
    assert buf.data["A"][:, 1, 1].tolist() == [5, 6, 2, 3, 4]
    assert buf.data["done"].tolist() == [True, True, False, False, True]
    assert buf.state_dict()["pos"] == 2
    # one batch larger than the capacity keeps its last 5 rows at the same places
    big = ReplayBuffer(5, FIELDS, dtypes={"done": torch.bool})
    big.add(**_transitions(range(7)))
    assert len(big) == 5 and big.state_dict()["pos"] == 2
    assert all(torch.equal(big.data[k], buf.data[k]) for k in FIELDS)


def test_replay_buffer_sampling_is_reproducible_and_consistent():
    buf = ReplayBuffer(16, FIELDS)
    buf.add(**_transitions(range(10)))
    a = buf.sample(32, torch.Generator().manual_seed(5))
    b = buf.sample(32, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in FIELDS)
    assert a["A"].shape == (32, 2, 2) and a["reward"].shape == (32,)
    assert ((a["reward"] >= 0) & (a["reward"] < 10)).all()  # only filled rows
    assert torch.equal(a["obs"][:, 0], a["reward"]) and torch.equal(a["A"][:, 0, 0], a["reward"])
    assert a["reward"].unique().numel() > 1
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, FIELDS).sample(1, torch.Generator())


@pytest.mark.parametrize("n_first", [3, 12])  # filling / wrapped
def test_replay_buffer_state_dict_round_trip_resumes_exactly(n_first):
    buf = ReplayBuffer(8, FIELDS)
    buf.add(**_transitions(range(n_first)))
    gen = torch.Generator().manual_seed(0)
    buf.sample(4, gen)
    blob = io.BytesIO()
    torch.save({"buffer": buf.state_dict(), "gen": gen.get_state()}, blob)
    blob.seek(0)
    saved = torch.load(blob)
    assert saved["buffer"]["data"]["A"].shape[0] == min(n_first, 8)
    resumed, gen2 = ReplayBuffer(8, FIELDS), torch.Generator()
    resumed.load_state_dict(saved["buffer"])
    gen2.set_state(saved["gen"])
    assert len(resumed) == len(buf)
    for b, g in ((buf, gen), (resumed, gen2)):
        b.add(**_transitions([100, 101, 102]))
    x, y = buf.sample(16, gen), resumed.sample(16, gen2)
    assert all(torch.equal(x[k], y[k]) for k in FIELDS)
    assert all(torch.equal(buf.data[k], resumed.data[k]) for k in FIELDS)
    with pytest.raises(ValueError, match="capacity 8 saved"):
        ReplayBuffer(9, FIELDS).load_state_dict(saved["buffer"])


def test_replay_buffer_errors_name_the_field_and_shape():
    buf = ReplayBuffer(5, FIELDS)
    batch = _transitions([0, 1])
    with pytest.raises(ValueError, match=r"field 'A' has shape \(2, 2, 3\).*\(E, 2, 2\)"):
        buf.add(**{**batch, "A": torch.zeros(2, 2, 3)})
    with pytest.raises(ValueError, match=r"field 'reward' has shape \(2, 1\).*\(E, \)"):
        buf.add(**{**batch, "reward": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match=r"field 'A' has 3 rows, field 'obs' has 2"):
        buf.add(**{**batch, "A": torch.zeros(3, 2, 2)})
    with pytest.raises(ValueError, match=r"missing fields \['A'\], unknown fields \['B'\]"):
        buf.add(**{k: v for k, v in batch.items() if k != "A"}, B=torch.zeros(2, 2, 1))
    assert len(buf) == 0


def test_replay_buffer_memory_estimate():
    fields = {"obs": (6,), "A": (120, 120), "B": (120, 6), "done": ()}
    est = memory_bytes(10**6, fields, dtypes={"done": torch.bool})
    assert est == {"obs": 24 * 10**6, "A": 57_600 * 10**6, "B": 2_880 * 10**6, "done": 10**6}
    small = {"obs": (6,), "A": (12, 12), "B": (12, 6), "done": ()}
    buf = ReplayBuffer(10, small, dtype=torch.float64, dtypes={"done": torch.bool})
    assert buf.nbytes == sum(memory_bytes(10, small, torch.float64, {"done": torch.bool}).values()) == 10 * (8 * 222 + 1)


# ---------------------------------------------------------------- schedules, targets, means


def test_lr_schedules():
    assert set(LR_SCHEDULES) == {"constant", "linear"}
    assert [LR_SCHEDULES["linear"](0.02, e / 4) for e in range(4)] == [0.02 * f for f in (1.0, 0.75, 0.5, 0.25)]
    assert [LR_SCHEDULES["constant"](0.02, e / 4) for e in range(4)] == [0.02] * 4
    assert LR_SCHEDULES["linear"](0.02, 1.5) == 0.0  # a budgeted run past its budget: not negative


def test_masked_mean_is_the_formula_bitwise():
    torch.manual_seed(0)
    values = torch.randn(257)
    ok = torch.rand(257) > 0.3
    assert torch.equal(masked_mean(values, ok), (values * ok).sum() / ok.sum().clamp_min(1))
    assert torch.equal(masked_mean(values, torch.zeros(257, dtype=torch.bool)), torch.tensor(0.0))
    torch.testing.assert_close(masked_mean(values, ok), values[ok].mean())
    # a NaN in an excluded entry (a failed env's return) stays out
    poisoned = values.clone()
    poisoned[~ok] = float("nan")
    assert torch.equal(masked_mean(poisoned, ok), masked_mean(values, ok))


def _window():
    """3 steps, 3 environments, gamma = lam = 0.5, r = (1, 2, 4), V(s_0..s_3) = (10, 20, 30, 40).
    env 0: terminal at step 1; env 1: time limit at step 1, V(pre-reset s_2) = 100; env 2: no reset."""
    rewards = torch.tensor([1.0, 2.0, 4.0])[:, None].repeat(1, 3)
    values = torch.tensor([10.0, 20.0, 30.0, 40.0])[:, None].repeat(1, 3)
    dones = torch.zeros(3, 3, dtype=torch.bool)
    dones[1, 0] = True
    truncated = torch.zeros(3, 3, dtype=torch.bool)
    truncated[1, 1] = True
    bootstrap = torch.full((3, 3), float("nan"))  # read only where truncated
    bootstrap[1, 1] = 100.0
    return rewards, values, dones, truncated, bootstrap


def test_td_lambda_targets_hand_worked_window():
    r, v, d, tr, b = _window()
    got = td_lambda_targets(r, v, d, 0.5, 0.5, truncated=tr, bootstrap=b)
    # step 2 (all): 4 + .5 (.5 * 40 + .5 * 40) = 24
    # env 0: step 1 terminal -> 2;               step 0: 1 + .5 (.5 * 20 + .5 * 2)    = 6.5
    # env 1: step 1 truncated -> 2 + .5 * 100 = 52; step 0: 1 + .5 (.5 * 20 + .5 * 52) = 19
    # env 2: step 1: 2 + .5 (.5 * 30 + .5 * 24) = 15.5; step 0: 1 + .5 (.5 * 20 + .5 * 15.5) = 9.875
    #        (= the truncated lambda-return (1 - lam)(G_{0:1} + lam G_{0:2}) + lam^2 G_{0:3}
    #         = .5 (11 + .5 * 9.5) + .25 * 8)
    expect = torch.tensor([[6.5, 19.0, 9.875], [2.0, 52.0, 15.5], [24.0, 24.0, 24.0]])
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    # lam = 0: one-step TD; lam = 1: discounted returns bootstrapped at truncation / window end
    torch.testing.assert_close(td_lambda_targets(r, v, d, 0.5, 0.0, tr, b),
                               torch.tensor([[11.0, 11.0, 11.0], [2.0, 52.0, 17.0], [24.0, 24.0, 24.0]]))
    torch.testing.assert_close(td_lambda_targets(r, v, d, 0.5, 1.0, tr, b),
                               torch.tensor([[2.0, 27.0, 8.0], [2.0, 52.0, 14.0], [24.0, 24.0, 24.0]]))
    # without the truncation, env 1 runs on like env 2 (post-reset values would leak in)
    torch.testing.assert_close(td_lambda_targets(r, v, d, 0.5, 0.5)[:, 1], expect[:, 2])


def test_td_lambda_limits_are_one_step_and_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    T, E, gamma = 12, 64, 0.9
    r = torch.randn(T, E, generator=gen, dtype=torch.float64)
    v = torch.randn(T + 1, E, generator=gen, dtype=torch.float64)
    u = torch.rand(T, E, generator=gen)
    d, tr = u < 0.1, (u >= 0.1) & (u < 0.2)
    b = torch.randn(T, E, generator=gen, dtype=torch.float64)
    nxt = torch.where(tr, b, v[1:])
    assert torch.equal(td_lambda_targets(r, v, d, gamma, 0.0, tr, b), torch.where(d, r, r + gamma * nxt))
    mc, ret = torch.empty_like(r), v[T]
    for t in reversed(range(T)):
        ret = torch.where(d[t], r[t], r[t] + gamma * torch.where(tr[t], b[t], ret))
        mc[t] = ret
    assert torch.equal(td_lambda_targets(r, v, d, gamma, 1.0, tr, b), mc)
    mid = td_lambda_targets(r, v, d, gamma, 0.7, tr, b)
    assert mid.shape == (T, E) and torch.isfinite(mid).all()


def test_td_lambda_rejects_bad_inputs():
    r, v, d, tr, b = _window()
    with pytest.raises(ValueError, match="dones must be a bool"):
        td_lambda_targets(r, v, d.float(), 0.5, 0.5)
    with pytest.raises(ValueError, match="values has shape"):
        td_lambda_targets(r, v[:-1], d, 0.5, 0.5)
    with pytest.raises(ValueError, match="bootstrap"):
        td_lambda_targets(r, v, d, 0.5, 0.5, truncated=tr)
