"""Zeroth-, first- and alpha-order gradient estimators (Suh et al. 2022): closed-form checks, the
alpha rule by hand, the policy-gradient algorithms and the study's plumbing."""

import math

import numpy as np
import pytest
import torch

from warpsim_rl import estimators as est
from warpsim_rl.algos import RunConfig, algo_config, make_algorithm
from warpsim_rl.algos.estimator_pg import EstimatorPG, NoisyPolicy, policy_vjp_per_sample
from warpsim_rl.tasks import make_task

D = torch.float64


# ------------------------------------------------------------------------------------------------
# Closed-form smoothed gradients
# ------------------------------------------------------------------------------------------------

def _quadratic(d=5, seed=0):
    """f(theta) = -1/2 (theta - c)^T A (theta - c) + b^T theta; its Gaussian smoothing only shifts
    it by -sigma^2 tr(A) / 2, so grad F(theta) = -A (theta - c) + b exactly."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(d, d, generator=g, dtype=D)
    A = Q @ Q.T / d + torch.eye(d, dtype=D)
    c = torch.randn(d, generator=g, dtype=D)
    b = torch.randn(d, generator=g, dtype=D)

    def f(rows):
        r = rows - c
        return -0.5 * torch.einsum("mi,ij,mj->m", r, A, r) + rows @ b

    theta = torch.randn(d, generator=g, dtype=D)
    return f, theta, -A @ (theta - c) + b


def _z_scores(e: est.Estimate, truth: torch.Tensor) -> torch.Tensor:
    """Per-coordinate (mean - truth) / standard error of the mean."""
    se = e.samples.std(0, unbiased=True) / math.sqrt(e.n)
    return (e.grad - truth) / se


@pytest.mark.parametrize("method", ["zobg", "fobg"])
@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_unbiased_on_quadratic(method, sigma):
    f, theta, truth = _quadratic()
    r = est.smoothed_gradient(f, theta, sigma, 4000, method, generator=torch.Generator().manual_seed(1))
    z = _z_scores(r.estimate, truth)
    assert float(z.abs().max()) < 4.0, z  # unbiased within 4 standard errors, every coordinate
    # the total error is of the size of the root trace variance of the mean (not more)
    assert float((r.grad - truth).norm()) < 3.0 * r.estimate.stderr


def test_quadratic_check_can_fail():
    """The same criterion rejects a wrongly scaled ZoBG (sigma off by 2: the estimate / 4) and an
    FoBG taken at the wrong point."""
    f, theta, truth = _quadratic()
    g = torch.Generator().manual_seed(1)
    w = 0.5 * torch.randn(4000, theta.numel(), generator=g, dtype=D)
    vals = f(theta[None] + w)
    bad = est.zeroth_order(vals, f(theta[None])[0], w, sigma=1.0)  # true sigma is 0.5
    assert float(_z_scores(bad, truth).abs().max()) > 4.0
    r = est.smoothed_gradient(f, theta + 0.2, 0.5, 4000, "fobg", generator=torch.Generator().manual_seed(1))
    assert float(_z_scores(r.estimate, truth).abs().max()) > 4.0


@pytest.mark.parametrize("method", ["zobg", "fobg", "aobg"])
def test_estimates_the_smoothed_not_the_plain_gradient(method):
    """f = sum_j sin(theta_j): grad F = exp(-sigma^2 / 2) cos(theta) (61% of cos at sigma = 1)."""
    def f(rows):
        return rows.sin().sum(1)

    theta = torch.tensor([0.3, -1.0, 2.0], dtype=D)
    sigma = 1.0
    smoothed = math.exp(-sigma ** 2 / 2) * theta.cos()
    r = est.smoothed_gradient(f, theta, sigma, 20000, method, gamma=10.0,
                              generator=torch.Generator().manual_seed(2))
    assert float(_z_scores(r.estimate, smoothed).abs().max()) < 4.0
    assert float(_z_scores(r.estimate, theta.cos()).abs().max()) > 4.0


def test_fobg_rows_are_per_sample_gradients_and_batched_points_match():
    f, theta, _ = _quadratic(d=3)
    z = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(3), dtype=D)
    one = est.smoothed_gradients(f, theta[None], 0.3, 6, "fobg", noise=z)[0]
    rows = theta[None] + 0.3 * z[0]
    for i in range(6):
        x = rows[i].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(f(x[None]).sum(), x)
        torch.testing.assert_close(one.fo.samples[i], gi)
    # two points in one call give the same per-point results as separate calls
    thetas = torch.stack([theta, theta + 1.0])
    zz = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(4), dtype=D)
    both = est.smoothed_gradients(f, thetas, 0.3, 6, "aobg", gamma=5.0, noise=zz)
    for b in range(2):
        single = est.smoothed_gradient(f, thetas[b], 0.3, 6, "aobg", gamma=5.0, noise=zz[b])
        torch.testing.assert_close(both[b].grad, single.grad)
        assert both[b].alpha == single.alpha


# ------------------------------------------------------------------------------------------------
# The alpha rule
# ------------------------------------------------------------------------------------------------

def test_alpha_zero_when_confidence_interval_exceeds_gamma():
    c = est.choose_alpha(s0_sq=3.0, s1_sq=1.0, gap=0.01, eps=1.5, gamma=1.0)
    assert c.alpha == 0.0 and c.case == "zero"
    assert c.alpha_star == pytest.approx(0.75)


def test_alpha_interior_optimum():
    # alpha* = s0^2 / (s0^2 + s1^2) = 3 / 4; 0.75 * gap = 0.75 <= gamma - eps = 0.9
    c = est.choose_alpha(s0_sq=3.0, s1_sq=1.0, gap=1.0, eps=0.1, gamma=1.0)
    assert c.case == "interior" and c.alpha == pytest.approx(0.75)
    # it minimises alpha^2 s1^2 + (1 - alpha)^2 s0^2 over a grid
    grid = np.linspace(0, 1, 10001)
    assert grid[np.argmin(grid ** 2 * 1.0 + (1 - grid) ** 2 * 3.0)] == pytest.approx(0.75, abs=1e-4)


def test_alpha_clipped_to_the_bias_constraint():
    # 0.75 * 2 = 1.5 > gamma - eps = 0.9 -> alpha = 0.9 / 2 = 0.45, and the constraint is tight
    c = est.choose_alpha(s0_sq=3.0, s1_sq=1.0, gap=2.0, eps=0.1, gamma=1.0)
    assert c.case == "clipped" and c.alpha == pytest.approx(0.45)
    assert c.eps + c.alpha * c.gap == pytest.approx(c.gamma)


def test_alpha_edge_cases_and_validation():
    assert est.choose_alpha(0.0, 0.0, 0.0, 0.0, 1.0).alpha == 1.0  # both exact: first order
    assert est.choose_alpha(2.0, 0.0, 0.0, 0.5, 1.0).alpha == 1.0  # FoBG noiseless and agrees
    assert est.choose_alpha(3.0, 1.0, 0.0, 1.0, 1.0).case == "interior"  # eps == gamma is allowed
    for bad in (dict(gamma=0.0), dict(gap=-1.0), dict(eps=float("nan"))):
        kw = dict(s0_sq=1.0, s1_sq=1.0, gap=1.0, eps=0.1, gamma=1.0) | bad
        with pytest.raises(ValueError):
            est.choose_alpha(**kw)


def test_confidence_halfwidth_by_hand():
    # log((9 + 1) / 0.1) = log(100); sqrt(2 * 4 * log(100) / 100) + 2 * 3 * log(100) / 300
    lg = math.log(100.0)
    assert est.confidence_halfwidth(4.0, 100, 9, 0.1, 3.0) == pytest.approx(math.sqrt(8 * lg / 100) + 6 * lg / 300)
    with pytest.raises(ValueError):
        est.confidence_halfwidth(1.0, 10, 3, 1.5, 0.0)


def test_alpha_order_combines_independent_batches():
    g = torch.Generator().manual_seed(5)
    zo = est.Estimate(torch.randn(50, 4, generator=g, dtype=D) * 3.0 + 1.0)
    fo = est.Estimate(torch.randn(50, 4, generator=g, dtype=D) * 0.5 + 1.2)
    comb, c = est.alpha_order(zo, fo, gamma=50.0, delta=0.05)
    eps = est.confidence_halfwidth(zo.var, 50, 4, 0.05, zo.spread)
    ref = est.choose_alpha(zo.var, fo.var, float((fo.grad - zo.grad).norm()), eps, 50.0)
    assert c == ref and c.case == "interior"
    torch.testing.assert_close(comb.grad, c.alpha * fo.grad + (1 - c.alpha) * zo.grad)
    _, c0 = est.alpha_order(zo, fo, gamma=0.1)  # tiny tolerance: the ZoBG interval is wider
    assert c0.alpha == 0.0


def test_input_validation():
    f, theta, _ = _quadratic(d=2)
    with pytest.raises(ValueError, match="method"):
        est.smoothed_gradient(f, theta, 0.1, 8, "sobg")
    with pytest.raises(ValueError, match="sigma"):
        est.smoothed_gradient(f, theta, 0.0, 8, "zobg")
    with pytest.raises(ValueError, match="n ="):
        est.smoothed_gradient(f, theta, 0.1, 1, "fobg")
    with pytest.raises(ValueError, match="noise.shape"):
        est.smoothed_gradient(f, theta, 0.1, 4, "aobg", noise=torch.zeros(4, 2, dtype=D))


# ------------------------------------------------------------------------------------------------
# Through the simulator
# ------------------------------------------------------------------------------------------------

def test_zobg_and_fobg_agree_through_the_simulator():
    """Smooth open-loop problem (pendulum2d, 10 steps, 2 segments): the FoBG through the implicit
    adjoints and the ZoBG agree within their standard errors."""
    from warpsim_rl.bench.estimators import OpenLoopProblem

    task = make_task("pendulum2d-stop", horizon=10)
    pos = np.array(task.scene.positions)
    vel = np.zeros_like(pos)
    vel[task.payload, 0] = 1.5
    prob = OpenLoopProblem("pendulum2d", "smooth", task, 5, pos, vel)
    g = torch.Generator().manual_seed(0)
    fo = est.smoothed_gradient(prob.f, prob.theta0, 0.2, 256, "fobg", generator=g).fo
    zo = est.smoothed_gradient(prob.f, prob.theta0, 0.2, 4096, "zobg", generator=g).zo
    z = (fo.grad - zo.grad) / torch.sqrt(fo.samples.var(0) / fo.n + zo.samples.var(0) / zo.n)
    assert float(z.abs().max()) < 4.0, z
    assert float(fo.grad.norm()) > 10 * fo.stderr  # a real, resolved gradient
    assert prob.sims.failed == 0


# ------------------------------------------------------------------------------------------------
# Policy gradients (train.py --algo zobg | fobg | aobg)
# ------------------------------------------------------------------------------------------------

def test_policy_vjp_per_sample_matches_a_loop():
    torch.manual_seed(0)
    pol = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(D)
    obs = torch.randn(4, 3, 3, dtype=D)  # (T, M, obs_dim)
    cot = torch.randn(4, 3, 2, dtype=D)
    rows = policy_vjp_per_sample(pol, obs, cot)
    for i in range(3):
        gs = torch.autograd.grad((pol(obs[:, i]) * cot[:, i]).sum(), list(pol.parameters()))
        torch.testing.assert_close(rows[i], torch.cat([x.reshape(-1) for x in gs]))


def _algo(method, **kw):
    run = RunConfig(env="pendulum2d-stop", algo=method, num_envs=3, dtype="float64", horizon=6, usd_envs=0)
    cfg = algo_config(method, samples=2, sigma=0.3, hidden=(8,), **kw)
    task = make_task(run.env, horizon=run.horizon)
    return make_algorithm(task, run, cfg), task


def test_fobg_policy_gradient_equals_bptt_through_the_noisy_rollouts():
    algo, task = _algo("fobg")
    state = algo.rng.bit_generator.state
    fo, _ = algo.first_order()
    # replay the same initial states and noise, and differentiate the mean return directly
    algo.rng.bit_generator.state = state
    s0 = algo.initial_state(algo.fo_core, 2)
    noise = algo._noise(6)
    traj = algo.fo_core.rollout(NoisyPolicy(algo.policy, noise), s0, task.horizon, graph=True)
    grads = torch.autograd.grad(traj.returns.mean(), list(algo.policy.parameters()))
    torch.testing.assert_close(fo.grad, torch.cat([g.reshape(-1) for g in grads]))


def test_zobg_policy_gradient_is_the_likelihood_ratio():
    algo, task = _algo("zobg")
    B, K, sigma = 3, 2, 0.3
    state = algo.rng.bit_generator.state
    zo, stats = algo.zeroth_order()
    algo.rng.bit_generator.state = state
    s0 = algo.initial_state(algo.zo_core, K + 1)
    noise = algo._noise(B * (K + 1))
    noise[:, B * K:] = 0.0
    with torch.no_grad():
        traj = algo.zo_core.rollout(NoisyPolicy(algo.policy, noise), s0, task.horizon)
    V = traj.returns
    adv = V[:B * K] - V[B * K:].repeat(K)
    # 1/(N sigma^2) sum_i adv_i sum_h (d pi/d theta(o_ih))^T w_ih, one backward pass of a surrogate
    surrogate = (adv[None, :, None] * noise[:, :B * K] * algo.policy(traj.obs[:, :B * K])).sum() / (B * K * sigma ** 2)
    grads = torch.autograd.grad(surrogate, list(algo.policy.parameters()))
    torch.testing.assert_close(zo.grad, torch.cat([g.reshape(-1) for g in grads]))
    assert stats["failed"] == 0


@pytest.mark.parametrize("method", ["zobg", "fobg", "aobg"])
def test_training_epochs_run_and_report(method):
    algo, _ = _algo(method, alpha_gamma=1e6)
    before = [p.detach().clone() for p in algo.policy.parameters()]
    m = algo.train_epoch()
    assert m["train/diverged"] == 0 and math.isfinite(m["train/return_before"]) and m["train/grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.policy.parameters()))
    if method == "aobg":
        assert 0.0 < m["train/alpha"] <= 1.0  # huge gamma: the interior optimum
    # exact resume: a restored copy takes the same next step
    state = algo.state_dict()
    twin, _ = _algo(method, alpha_gamma=1e6)
    twin.load_state_dict(state)
    m1, m2 = algo.train_epoch(), twin.train_epoch()
    assert m1 == m2


def test_config_validation():
    for bad in (dict(samples=0), dict(sigma=0.0), dict(alpha_gamma=-1.0), dict(alpha_delta=1.0), dict(method="sobg")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            algo_config("aobg", **bad)
    with pytest.raises(TypeError, match="EstimatorConfig"):
        EstimatorPG(make_task("pendulum2d-stop"), RunConfig(), algo_config("bptt"))


# ------------------------------------------------------------------------------------------------
# The study's plumbing (tiny sizes)
# ------------------------------------------------------------------------------------------------

def test_study_row_and_wall_strike_smoke(tmp_path):
    from warpsim_rl.bench import estimators as be

    task = make_task("pendulum2d-stop", horizon=4)
    pos = np.array(task.scene.positions)
    prob = be.OpenLoopProblem("pendulum2d", "smooth", task, 2, pos, np.zeros_like(pos))
    row = be.study_config(prob, 0.2, N=8, R=3, n_ref_fo=32, n_ref_zo=64)
    for m in est.METHODS:
        assert all(math.isfinite(v) for k, v in row["estimators"][m].items() if isinstance(v, float))
    assert row["reference"] == "fobg" and row["d"] == 4 and row["failed_envs"] == 0
    assert "| pendulum2d |" in be.study_table([row])
    be.plot_study([row], str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 0
    r = be.wall_strike(1e4, 0.2, N=4, seeds=2, iters=2, eta=0.5, max_step=0.1, gamma=0.25, n_eval=8,
                       grid=5, grid_samples=4)
    assert set(r["methods"]) == set(est.METHODS) and r["failed_envs"] == 0
    be.plot_wall([r], str(tmp_path / "w.png"))
    assert "| 1e+04 | aobg |" in be.wall_table([r])


def test_failed_samples_are_left_out_of_the_first_order_estimate():
    """A sample whose Newton solve fails is frozen by the step core (finite return, zero gradient
    row) and dropped from the FoBG rows; the epoch still updates from the others."""
    import warp as wp

    algo, _ = _algo("fobg")
    wp.to_torch(algo.fo_core.model.stiffness)[0] = float("nan")  # sample 0 fails
    fo, stats = algo.first_order()
    assert stats["failed"] == 1 and fo.n == 3 * 2 - 1
    assert bool(torch.isfinite(fo.samples).all()) and float(fo.grad.norm()) > 0
    m = algo.train_epoch()
    assert m["train/diverged"] == 1 and math.isfinite(m["train/grad_norm"]) and m["train/grad_norm"] > 0


def test_study_pool_drops_failed_samples():
    """Samples whose simulation failed are replaced: ZoBG filters them, FoBG (whose failed rows
    the step core freezes, with zero gradient) is redone without them; the pool keeps its size."""
    from warpsim_rl.bench import estimators as be

    class Fake:
        name, chunk, theta0 = "fake", 64, torch.zeros(2, dtype=D)

        def __init__(self):
            self.sims = be._SimCache(None)

        def f(self, rows):
            bad = rows[:, 0] > 0.25  # "Newton failed" for these rows
            self.last_failed = bad
            self.sims.failed += int(bad.sum())
            v = -(rows - 1.0).square().sum(1)
            return torch.where(bad, torch.full_like(v, -5.0).detach(), v)  # frozen: a value, no gradient

    prob = Fake()
    g = torch.Generator().manual_seed(0)
    for method in ("zobg", "fobg"):
        pool = be._pool(prob, 0.2, 300, method, g)
        assert pool.n == 300 and bool(torch.isfinite(pool.samples).all())
        truth = torch.full((2,), 2.0, dtype=D)  # grad of -(theta - 1)^2 at 0 (truncation biases it)
        assert float((pool.grad - truth).norm()) < 1.0
    assert prob.sims.failed > 0


def test_bench_subcommand_is_wired(capsys):
    from warpsim_rl import bench

    with pytest.raises(SystemExit) as e:
        bench.main(["estimators", "--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out
