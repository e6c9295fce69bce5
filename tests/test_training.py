"""PODS / BPTT internals and the train.py entry point."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from warpsim_rl.algos import RunConfig, algo_config, make_algorithm
from warpsim_rl.algos.trajectory import gauss_newton_direction, gauss_newton_riccati, value_gradient
from warpsim_rl.core import StepCore
from warpsim_rl.tasks import make_task
from warpsim_rl.training import CheckpointError, train

ROOT = Path(__file__).resolve().parents[1]


def _tiny_problem(task_name="pendulum2d-stop-origin", T=4, E=2):
    task = make_task(task_name, horizon=T)
    ro = StepCore(task, E, "cpu", "float64")
    pos, vel = task.sample_initial_states(E, 7)
    s0 = ro.initial_state(pos, vel)
    rng = np.random.default_rng(3)
    acts = torch.tensor(rng.uniform(-0.5, 0.5, size=(T, E, task.num_handles, task.dim)), dtype=torch.float64)
    return task, ro, s0, acts


def _jacobian_rollout(task, ro, s0, acts):
    T = acts.shape[0]
    state, As, Bs, dr_ds, dr_da = tuple(s0), [], [], [], []
    for t in range(T):
        state, A, B = ro.tsim.jacobians(*state, acts[t])
        d = task.reward_derivatives(state[0], state[1], acts[t], layout="markov")
        As.append(A)
        Bs.append(B)
        dr_ds.append(d["dr_ds"])
        dr_da.append(d["dr_da"])
    return torch.stack(As), torch.stack(Bs), torch.stack(dr_ds), torch.stack(dr_da), d


def test_value_gradient_matches_autograd():
    task, ro, s0, acts = _tiny_problem()
    A, B, dr_ds, dr_da, _ = _jacobian_rollout(task, ro, s0, acts)
    grad = value_gradient(A, B, dr_ds, dr_da)
    leaf = acts.clone().requires_grad_(True)
    states = ro.tsim.rollout(s0, leaf)
    V = sum(task.reward(states[t + 1][0], states[t + 1][1], leaf[t]) for t in range(acts.shape[0])).sum()
    V.backward()
    np.testing.assert_allclose(grad.numpy(), leaf.grad.reshape(grad.shape).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solve", [gauss_newton_direction, gauss_newton_riccati])
def test_gauss_newton_step_equals_dense_reference(solve):
    """H = J^T C_ss J + C_aa with J = ds/da_bar from torch's dense Jacobian of the whole rollout
    (an independent computation), solved with numpy; both solvers."""
    task, ro, s0, acts = _tiny_problem()
    T, E = acts.shape[0], acts.shape[1]
    A, B, dr_ds, dr_da, d = _jacobian_rollout(task, ro, s0, acts)
    c_ss, c_aa = -d["d2r_ds2"], -d["d2r_da2"]
    grad = value_gradient(A, B, dr_ds, dr_da)
    step = solve(A, B, grad, c_ss, c_aa, damping=1e-6)
    na = task.action_dim
    for e in range(E):
        def states_of(a_flat, e=e):
            a = acts.clone()
            a[:, e] = a_flat.reshape(T, task.num_handles, task.dim)
            traj = ro.tsim.rollout(s0, a)
            return torch.cat([ro.layout.flatten(traj[t + 1], "markov")[e] for t in range(T)])

        J = torch.autograd.functional.jacobian(states_of, acts[:, e].reshape(-1)).numpy()  # (T ns, T na)
        ns = J.shape[0] // T
        C = np.tile(c_ss.numpy(), T)
        H = J.T @ (C[:, None] * J) + np.diag(np.tile(c_aa.numpy(), T)) + 1e-6 * np.eye(T * na)
        g = grad[:, e].reshape(-1).numpy()
        ref = np.linalg.solve(H, g)
        np.testing.assert_allclose(step[:, e].reshape(-1).numpy(), ref, rtol=1e-7, atol=1e-10)
        assert ns == ro.model.num_state


@pytest.mark.parametrize("T, E, ns, na", [(1, 2, 3, 1), (7, 3, 6, 2), (60, 4, 12, 4)])
def test_riccati_solver_equals_the_factored_gauss_newton_matrix(T, E, ns, na):
    """On random linear-quadratic problems (float64; some state costs zero, as the tasks' are), the
    Riccati recursion gives the step of forming and factoring H, to round-off."""
    gen = torch.Generator().manual_seed(T)
    A = torch.eye(ns, dtype=torch.float64) \
        + 0.2 * torch.randn(T, E, ns, ns, generator=gen, dtype=torch.float64) / ns ** 0.5
    B = torch.randn(T, E, ns, na, generator=gen, dtype=torch.float64)
    grad = torch.randn(T, E, na, generator=gen, dtype=torch.float64)
    c_ss = torch.rand(ns, generator=gen, dtype=torch.float64)
    c_ss[::2] = 0.0
    c_aa = torch.full((na,), 0.02, dtype=torch.float64)
    for damping in (1e-6, 1.0):
        dense = gauss_newton_direction(A, B, grad, c_ss, c_aa, damping)
        riccati = gauss_newton_riccati(A, B, grad, c_ss, c_aa, damping)
        torch.testing.assert_close(riccati, dense, rtol=1e-8, atol=1e-10 * float(dense.abs().max()))


def test_gauss_newton_step_is_accurate_in_float32_on_the_cable():
    """The cable's Gauss-Newton matrix is ill-conditioned (largest eigenvalue ~1e8 at the untrained
    policy against the damping of 1, docs/data/gn_solver.txt), so H formed in float32 loses its
    small-curvature directions and the factored step was wrong by ~1000x in most rollouts. PODS'
    default solve (Riccati, no H) stays close to the float64 solve of the same (float32) gradient."""
    task = make_task("cable_payload2d-stop")
    pods = make_algorithm(task, RunConfig(num_envs=8, seed=0), algo_config("pods2"))
    assert pods.cfg.gn_solver == "riccati"
    s0 = pods.initial_state()
    traj = pods.core.rollout(pods.policy, s0, task.horizon, jacobians=True)
    d = [pods.core.reward_derivatives(traj.states[t + 1], traj.actions[t]) for t in range(task.horizon)]
    dr_ds, dr_da = torch.stack([x["dr_ds"] for x in d]), torch.stack([x["dr_da"] for x in d])
    c_ss, c_aa = -d[-1]["d2r_ds2"], -d[-1]["d2r_da2"]
    grad = value_gradient(traj.A, traj.B, dr_ds, dr_da)
    A, B = traj.A.double(), traj.B.double()
    ref = gauss_newton_direction(A, B, grad.double(), c_ss.double(), c_aa.double(), 1.0)
    step = pods.trajectory.direction(traj)  # float32, the chosen solver
    err = (step.double() - ref).norm(dim=(0, 2)) / ref.norm(dim=(0, 2))
    assert float(err.median()) < 1e-2 and float(err.max()) < 0.5, err  # the dense float32 step: ~1e3 / ~1e5


def test_gn_solver_validation():
    with pytest.raises(ValueError, match="gn_solver = 'lu'"):
        algo_config("pods2", gn_solver="lu")


@pytest.mark.parametrize("algo", ["pods2", "pods1"])
def test_line_search_never_accepts_a_worse_rollout(algo):
    run = RunConfig(env="pendulum2d-stop", algo=algo, num_envs=16)
    task = make_task(run.env, horizon=30)
    pods = make_algorithm(task, run, algo_config(algo, line_search=4, regression_steps=2))
    pos, vel = task.sample_initial_states(run.num_envs, 11)
    s0 = pods.core.initial_state(pos, vel)
    traj = pods.core.rollout(pods.policy, s0, task.horizon, jacobians=algo == "pods2", leaf_actions=algo == "pods1")
    res = pods.trajectory.line_search(s0, traj, pods.trajectory.direction(traj))
    acts, improved, new_ret = res.actions, res.improved, res.returns_after
    base = traj.returns.detach()
    assert torch.all(new_ret >= base)
    assert bool(improved.any())
    # the chosen actions really achieve the reported returns (replayed independently)
    replay = StepCore(task, run.num_envs, "cpu", "float32").open_loop(
        s0, acts.reshape(task.horizon, run.num_envs, task.num_handles, task.dim))
    torch.testing.assert_close(replay.returns[improved], new_ret[improved])
    assert torch.all(replay.returns >= base - 1e-4 * base.abs())


def _files(out):
    return {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}


class _Crash(Exception):
    pass


def test_resume_continues_bit_identically(tmp_path, monkeypatch):
    """A run killed during epoch 3 and resumed from its epoch-2 checkpoint ends bit-identical to
    an uninterrupted run (weights, observation statistics, optimiser, lr schedule, metrics)."""
    base = dict(env="pendulum2d-stop", algo="pods2", num_envs=16, horizon=20, eval_every=0, usd_envs=0, epochs=4)
    cfg = algo_config("pods2", regression_steps=5)
    train(RunConfig(**base, out=str(tmp_path / "straight")), cfg, progress=False)
    from warpsim_rl.algos import PODS

    cls = PODS
    original = cls.train_epoch
    calls = []

    def crashing(self):
        calls.append(1)
        if len(calls) == 3:
            raise _Crash
        return original(self)

    monkeypatch.setattr(cls, "train_epoch", crashing)
    with pytest.raises(_Crash):
        train(RunConfig(**base, out=str(tmp_path / "split")), cfg, progress=False)
    monkeypatch.setattr(cls, "train_epoch", original)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["epoch"] == 2
    train(None, resume=str(tmp_path / "split"), progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 4
    for k, v in a["algorithm"]["modules"]["policy"].items():
        assert torch.equal(v, b["algorithm"]["modules"]["policy"][k]), k
    # training metrics identical (the split run also evaluated at its end, epoch 2)
    for k, v in a["algorithm"]["optimizers"]["policy"]["state"].items():
        assert torch.equal(v["exp_avg"], b["algorithm"]["optimizers"]["policy"]["state"][k]["exp_avg"]), k
    assert a["history"][-1]["epoch"] == b["history"][-1]["epoch"] == 4

    def train_rows(hist):
        return [{k: v for k, v in h.items() if not k.startswith(("time/", "eval/"))} for h in hist]

    assert train_rows(a["history"]) == train_rows(b["history"])


def test_resume_with_fewer_epochs_than_done_is_refused_and_writes_nothing(tmp_path):
    """``--resume RUN --epochs 1`` on a run at epoch 2 would train nothing: refused, naming the
    value and the epoch, before any file changes; ``--epochs 2`` (its own count) re-evaluates."""
    out = tmp_path / "run"
    train(RunConfig(env="pendulum2d-stop", algo="pods2", num_envs=4, horizon=8, eval_every=0, usd_envs=0, epochs=2,
                    out=str(out)), algo_config("pods2", regression_steps=2), progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    with pytest.raises(ValueError, match=r"epochs = 1: the run in .* is already at epoch 2; resume it with --epochs N >= 2"):
        train(None, resume=str(out), epochs=1, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    assert train(None, resume=str(out), epochs=2, progress=False)["epochs"] == 2


def test_observation_normalizer_matches_batch_statistics():
    from warpsim_rl.algos.models import MLPPolicy, ObservationNormalizer

    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=[0.0, 3.0, -1.0], scale=[0.01, 2.0, 0.5], size=(n, 3)) for n in (5, 100, 37)]
    norm = ObservationNormalizer(3, min_std=0.05, clip=4.0).double()
    for b in batches:
        norm.update(torch.tensor(b))
    full = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean.numpy(), full.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(norm.var.numpy(), full.var(0), rtol=1e-10)
    assert float(norm.count) == len(full)
    obs = torch.tensor([[1.0, 3.0, -1.0], [0.0, 100.0, 0.0]], dtype=torch.float64)
    z = norm(obs)
    std = np.maximum(full.std(0), 0.05)  # the first feature's std (0.01) is floored
    expect = np.clip((obs.numpy() - full.mean(0)) / std, -4.0, 4.0)
    np.testing.assert_allclose(z.numpy(), expect, rtol=1e-9)
    # forward passes never change the statistics; they are part of the state dict
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm(torch.tensor(full))
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())
    pol = MLPPolicy(3, 2, torch.ones(2), normalize=True)
    assert {"normalizer.mean", "normalizer.var", "normalizer.count"} <= set(pol.state_dict())
    pol.observe(torch.tensor(full, dtype=torch.float32))
    assert float(pol.normalizer.count) == len(full)
    plain = MLPPolicy(3, 2, torch.ones(2), normalize=False)
    plain.observe(torch.ones(4, 3))  # a no-op
    x = torch.randn(4, 3)
    assert torch.equal(plain(x), 1.0 * torch.tanh(plain.net(x)))


@pytest.mark.parametrize("algo, schedule, expected", [
    ("pods2", None, [1.0, 0.75, 0.5, 0.25]),      # PODS' default: linear decay to 0
    ("bptt", None, [1.0, 1.0, 1.0, 1.0]),          # BPTT's default: constant
    ("bptt", "linear", [1.0, 0.75, 0.5, 0.25]),
    ("pods1", "constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_learning_rate_schedule(algo, schedule, expected):
    run = RunConfig(algo=algo, epochs=4, num_envs=2)
    cfg = algo_config(algo, lr=0.02, **({"lr_schedule": schedule} if schedule else {}))
    alg = make_algorithm(make_task("pendulum2d-stop", horizon=3), run, cfg)
    got = []
    for epoch in range(4):
        alg.begin_epoch(epoch)
        got.append(alg.optimizer.param_groups[0]["lr"] / 0.02)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("algo, field, value, match", [
    ("pods2", "lr_schedule", "cosine", "lr_schedule = 'cosine'"),
    ("bptt", "normalize_obs", 1, "normalize_obs = 1"),
    ("pods2", "gn_damping", -1.0, "gn_damping = -1.0"),
    ("pods1", "order", 3, "order = 3"),
    ("zobg", "alpha_delta", 1.0, "alpha_delta = 1.0"),
    ("fobg", "samples", 0, "samples = 0"),
    ("bptt", "hidden", (64, 0), "hidden"),
    ("bptt", "lr", float("nan"), "lr = nan"),
])
def test_algorithm_config_rejects_bad_values(algo, field, value, match):
    with pytest.raises(ValueError, match=match):
        algo_config(algo, **{field: value})


@pytest.mark.parametrize("field, value, match", [
    ("env", "nope-stop", "valid environments"),
    ("num_envs", 0, "num_envs = 0"),
    ("horizon", 0, "horizon = 0"),
    ("dtype", "float16", "dtype = 'float16'"),
    ("eval_every", -1, "eval_every = -1"),
])
def test_run_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{field: value})


def test_algorithm_config_rejects_an_option_of_another_algorithm():
    with pytest.raises(ValueError, match=r"algo 'bptt': unknown option\(s\) \['line_search'\]"):
        algo_config("bptt", line_search=4)


def test_resume_from_missing_or_corrupted_checkpoint_overwrites_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        train(None, resume=str(tmp_path / "nope"), progress=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run / "metrics.csv").write_text("epoch\n1\n")
    before = _files(run)
    with pytest.raises(CheckpointError, match="corrupted"):
        train(None, resume=str(run), progress=False)
    assert _files(run) == before
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_py_subprocess_writes_every_output(tmp_path):
    out = tmp_path / "run"
    r = _run(["--epochs", "2", "--num-envs", "8", "--horizon", "20", "--regression-steps", "3",
              "--eval-every", "1", "--usd-envs", "2", "--out", str(out), "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "metrics.csv", "learning_curve.png", "checkpoint.pt", "results.json", "eval.usdc"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert any((out / "tb").iterdir())
    res = json.loads((out / "results.json").read_text())
    for k in ("reward", "terminal_kinetic_energy", "distance_to_target", "action_magnitude"):
        assert np.isfinite(res[k]) and np.isfinite(res[k + "_std"])
    assert res["test_bed_size"] == 1000
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch")


def test_train_py_bad_input(tmp_path):
    r = _run(["--env", "nope-stop", "--out", str(tmp_path / "x")], tmp_path)
    assert r.returncode == 2 and "valid environments" in r.stderr and "pendulum2d-stop" in r.stderr
    r = _run(["--algo", "nope"], tmp_path)
    assert r.returncode == 2 and "pods2" in r.stderr and "bptt" in r.stderr
    assert not (tmp_path / "x").exists()
    r = _run(["--lr-schedule", "cosine"], tmp_path)
    assert r.returncode == 2 and "linear" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    r = _run(["--config", str(bad)], tmp_path)
    assert r.returncode != 0 and "malformed TOML" in r.stderr


@pytest.mark.parametrize("check,fallback", [(True, "none"), (True, "gradient"), (False, "none")])
def test_policy_check_restores_a_worse_regressed_policy(check, fallback):
    """With ``policy_check`` a regression that lowers the closed-loop return on the epoch's initial
    states is undone (weights, observation statistics, Adam state), also after the fallback's BPTT
    pass when its step lowers the return too (here along the reversed closed-loop gradient);
    without the check the bad policy stays."""
    from warpsim_rl.algos import PODS

    alg = PODS(make_task("pendulum2d-stop", horizon=20), RunConfig(num_envs=8, horizon=20),
               algo_config("pods2", regression_steps=3, policy_check=check, check_fallback=fallback))
    alg.train_epoch()  # Adam has state, the normaliser has statistics
    before = {k: v.clone() for k, v in alg.policy.state_dict().items()}
    adam = {k: v.clone() for k, v in alg.optimizer.state_dict()["state"][0].items()}
    original, gradient = alg.regress, alg._closed_loop_gradient
    reversed_calls = []

    def reversed_gradient(state0):
        reversed_calls.append(1)
        return {k: -g for k, g in gradient(state0).items()}

    alg._closed_loop_gradient = reversed_gradient

    def sabotage(X, Y):
        loss = original(X, Y)
        with torch.no_grad():  # a regression gone wrong: actions far off
            alg.policy.net[-1].bias.add_(3.0)
        return loss

    alg.regress = sabotage
    m = alg.train_epoch()
    after = alg.policy.state_dict()
    if check:
        assert m["train/policy_accepted"] == 0 and m["train/policy_gain"] < 0
        assert m["train/policy_fallback"] == 0.0 and len(reversed_calls) == (fallback == "gradient")
        assert all(torch.equal(before[k], after[k]) for k in before)  # weights and normaliser
        state = alg.optimizer.state_dict()["state"][0]
        assert all(torch.equal(state[k], adam[k]) for k in adam)
    else:
        assert "train/policy_accepted" not in m
        assert not torch.equal(before["net.4.bias"], after["net.4.bias"])


@pytest.mark.parametrize("backtracks,step", [(2, 0.5), (0, 0.0)])
def test_policy_check_backtracks_on_the_regression_step(backtracks, step):
    """A full regression step that lowers the return is halved until it does not (here the
    closed-loop return peaks at half the step), or undone when no halving is allowed."""
    import copy
    from types import SimpleNamespace

    from warpsim_rl.algos import PODS

    E = 8
    alg = PODS(make_task("pendulum2d-stop", horizon=20), RunConfig(num_envs=E, horizon=20),
               algo_config("pods2", regression_steps=3, check_backtracks=backtracks))
    alg.train_epoch()
    saved = (copy.deepcopy(alg.policy.state_dict()), copy.deepcopy(alg.optimizer.state_dict()))
    b0 = alg.policy.net[-1].bias.detach().clone()
    with torch.no_grad():
        alg.policy.net[-1].bias.add_(2.0)  # the "regressed" policy: the full step
    tried = []

    def fake_rollout(policy, state0, horizon, **kw):  # the return is best at a bias shift of 0.5
        shift = float((policy.net[-1].bias - b0).mean())
        tried.append(shift)
        return SimpleNamespace(returns=torch.full((E,), -abs(shift - 0.5), dtype=torch.float64),
                               failed=torch.zeros(E, dtype=torch.bool))

    alg.core.rollout = fake_rollout
    old = torch.full((E,), -0.5, dtype=torch.float64)  # the old policy's return (shift 0)
    m = alg._check_policy(None, old, torch.zeros(E, dtype=torch.bool), saved)
    assert m["train/policy_step"] == step and m["train/policy_accepted"] == int(step > 0)
    assert tried == ([2.0, 1.0] if backtracks else [2.0])
    after = alg.policy.state_dict()
    if step:
        assert torch.allclose(after["net.4.bias"], b0 + 1.0, rtol=0, atol=1e-6)
        assert all(torch.equal(after[k], saved[0][k]) for k in after if k != "net.4.bias" and "normalizer" not in k)
    else:
        assert all(torch.equal(after[k], saved[0][k]) for k in after)


def test_an_old_run_resumes_with_the_behaviour_it_ran_with():
    """A stored PODS configuration from before ``check_fallback`` / ``gn_solver`` existed resumes
    with the behaviour it ran with (no fallback, the dense solve), not today's defaults; a stored
    value wins, and an algorithm without such fields gets its own defaults."""
    from warpsim_rl.training import configs_from_checkpoint

    run = dataclasses.asdict(RunConfig(algo="pods2"))
    _, cfg = configs_from_checkpoint({"config": {"run": run, "algo": {"line_search": 4}}})
    assert (cfg.check_fallback, cfg.gn_solver, cfg.check_backtracks, cfg.line_search) == ("none", "dense", 0, 4)
    assert algo_config("pods2").check_fallback == "gradient"
    _, cfg = configs_from_checkpoint({"config": {"run": run, "algo": {"check_fallback": "gradient"}}})
    assert (cfg.check_fallback, cfg.gn_solver) == ("gradient", "dense")
    _, cfg = configs_from_checkpoint({"config": {"run": dataclasses.asdict(RunConfig(algo="bptt")), "algo": {}}})
    assert cfg == algo_config("bptt")


def test_policy_check_falls_back_to_the_closed_loop_gradient():
    """``check_fallback = "gradient"``: when every halving of a (sabotaged) regression step lowers
    the return, the step kept is ``beta (target / |g|^2) g`` from the old weights — ``g`` the
    closed-loop gradient of the batch return (recomputed here by autograd through a fresh
    rollout), ``target`` the trajectory-space step's mean gain — and it does not lower the batch
    return."""
    from warpsim_rl.algos import PODS

    alg = PODS(make_task("pendulum2d-stop", horizon=20), RunConfig(num_envs=8, horizon=20, dtype="float64"),
               algo_config("pods2", regression_steps=3, check_fallback="gradient"))
    alg.train_epoch()
    params = dict(alg.policy.named_parameters())
    seen = {}
    original_check, original_regress = alg._check_policy, alg.regress

    def sabotage(X, Y):
        loss = original_regress(X, Y)
        with torch.no_grad():
            alg.policy.net[-1].bias.add_(3.0)
        return loss

    def capture(state0, old, old_failed, saved, target):
        seen.update(state0=state0, old={k: saved[0][k].clone() for k in params}, target=target)
        return original_check(state0, old, old_failed, saved, target)

    alg.regress, alg._check_policy = sabotage, capture
    m = alg.train_epoch()
    assert m["train/policy_step"] == 0.0 and m["train/policy_accepted"] == 1
    assert m["train/policy_fallback"] in (1.0, 0.5, 0.25) and m["train/policy_gain"] >= 0.0
    kept = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(seen["old"][k])
    traj = alg.core.rollout(alg.policy, seen["state0"], 20, graph=True)
    grad = torch.autograd.grad(traj.returns.mean(), list(params.values()))
    g = torch.cat([x.reshape(-1) for x in grad])
    step = torch.cat([(kept[k] - seen["old"][k]).reshape(-1) for k in params])
    assert seen["target"] > 0.0  # the line search improved the batch
    torch.testing.assert_close(step, m["train/policy_fallback"] * seen["target"] * g / g.square().sum(),
                               rtol=1e-9, atol=1e-12)


def test_failed_environments_do_not_enter_the_observation_statistics():
    """BPTT observes only the environments whose rollout did not fail (a failed state may be
    non-finite and would poison the normaliser for the rest of the run)."""
    from warpsim_rl.algos import BPTT

    T, E = 5, 4
    alg = BPTT(make_task("pendulum2d-stop", horizon=T), RunConfig(algo="bptt", num_envs=E), algo_config("bptt"))
    original = alg.core.rollout

    def failing(*args, **kwargs):
        traj = original(*args, **kwargs)
        traj.obs = traj.obs.detach().clone()
        traj.obs[:, 1] = float("nan")  # what a diverged environment may leave behind
        traj.failed[1] = True
        return traj

    alg.core.rollout = failing
    alg.train_epoch()
    norm = alg.policy.normalizer
    assert float(norm.count) == T * (E - 1)
    assert torch.isfinite(norm.mean).all() and torch.isfinite(norm.var).all()


# ------------------------------------------------------------------------------------------------
# The command line: run options, per-algorithm options, TOML configs, resume
# ------------------------------------------------------------------------------------------------

def test_cli_builds_the_run_and_the_algorithm_config(tmp_path):
    from warpsim_rl.train import configs_from_args

    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('env = "pendulum3d-stop"\nnum_envs = 32\n[algo]\nname = "zobg"\nsamples = 3\nsigma = 0.1\n')
    _, run, cfg = configs_from_args(["--config", str(cfg_file), "--sigma", "0.3", "--seed", "4"])
    assert (run.env, run.algo, run.num_envs, run.seed) == ("pendulum3d-stop", "zobg", 32, 4)
    assert (cfg.method, cfg.samples, cfg.sigma, cfg.lr) == ("zobg", 3, 0.3, 3e-3)  # flag beats file
    _, run, cfg = configs_from_args(["--algo", "bptt", "--gradient-steps", "2", "--hidden", "16", "8"])
    assert run.algo == "bptt" and cfg.gradient_steps == 2 and cfg.hidden == (16, 8)


@pytest.mark.parametrize("text, match", [
    ('line_search = 4\n', r"'line_search' is an algorithm option now: write it as 'line_search' in the \[algo\]"),
    ('pg_samples = 4\n', r"'pg_samples' is an algorithm option now: write it as 'samples'"),
    ('nonsense = 1\n', r"unknown field 'nonsense'"),
    ('[algo]\nname = "bptt"\nline_search = 4\n', r"algo 'bptt': unknown option\(s\) \['line_search'\]"),
    ('[algo]\nname = "pods1"\norder = 2\n', r"order = 2: algo 'pods1' is defined by order = 1"),
])
def test_cli_rejects_old_or_wrong_toml(tmp_path, text, match):
    from warpsim_rl.train import configs_from_args

    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        configs_from_args(["--config", str(f)])


def test_cli_help_lists_the_chosen_algorithms_options(capsys):
    from warpsim_rl.train import main

    with pytest.raises(SystemExit):
        main(["--algo", "pods1", "--help"])
    import re

    def flags(text):
        return set(re.findall(r"^\s+(--[a-z-]+)", text, flags=re.M))

    out = capsys.readouterr().out
    assert {"--line-search", "--gn-damping", "--env"} <= flags(out) and "--order" not in flags(out)
    assert "regression learning rate" in out  # the field docstrings are the help texts
    with pytest.raises(SystemExit):
        main(["--algo", "fobg", "--help"])
    got = flags(capsys.readouterr().out)
    assert "--samples" in got and "--line-search" not in got and "--method" not in got


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys):
    from warpsim_rl.train import main

    assert main(["--resume", str(tmp_path), "--env", "rope3d-stop"]) == 2
    err = capsys.readouterr().err
    assert "--env rope3d-stop cannot change it" in err


# ------------------------------------------------------------------------------------------------
# Run folders: Ctrl-C, refusing to overwrite, results.json, file modes
# ------------------------------------------------------------------------------------------------

TINY = ["--num-envs", "4", "--horizon", "8", "--regression-steps", "2", "--eval-every", "0", "--usd-envs", "0",
        "--no-progress"]


def _interrupt_at(monkeypatch, call):
    """PODS.train_epoch raises KeyboardInterrupt (what Ctrl-C does) on its ``call``-th call."""
    from warpsim_rl.algos import PODS

    original, calls = PODS.train_epoch, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(PODS, "train_epoch", interrupted)
    return lambda: monkeypatch.setattr(PODS, "train_epoch", original)


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C: one line (interrupted epoch, checkpoint epoch, the --resume command), exit 130; the
    folder resumes. Interrupted before the first checkpoint, --resume starts it again from its
    config.json. (Before: a KeyboardInterrupt traceback, nothing about resuming.)"""
    from warpsim_rl.train import main

    out = tmp_path / "intr"
    restore = _interrupt_at(monkeypatch, 2)
    assert main([*TINY, "--epochs", "3", "--out", str(out)]) == 130
    restore()
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted at epoch 2 of 3; checkpoint written at epoch 1; resume with "
                   f"`python train.py --resume {out}`")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert main(["--resume", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [c["epoch"] for c in res["curve"]] == [0, 1, 2, 3] and res["resumed_from_epoch"] == 1

    early = tmp_path / "early"
    restore = _interrupt_at(monkeypatch, 1)
    assert main([*TINY, "--epochs", "2", "--out", str(early)]) == 130
    restore()
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted at epoch 1 of 2; no checkpoint written yet; resume with "
                          f"`python train.py --resume {early}`") and "\n" not in err
    assert not (early / "checkpoint.pt").exists() and (early / "config.json").is_file()
    assert main(["--resume", str(early), "--no-progress"]) == 0
    assert torch.load(early / "checkpoint.pt", weights_only=False)["epoch"] == 2
    assert len(list((early / "tb").glob("events.out.tfevents.*"))) == 1  # the restart replaced the first's


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGINT") or sys.platform == "win32", reason="POSIX signals")
def test_sigint_to_train_py_prints_one_line_and_exits_130(tmp_path):
    """The real thing: SIGINT to a running ``train.py`` once its first checkpoint exists."""
    import signal
    import time

    out = tmp_path / "intr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT back to its default in the child, whatever this process inherited (a shell starts
    # background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "--epochs", "100000", "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    assert line.startswith("interrupted at epoch ") and f"checkpoint written at epoch {saved};" in line
    assert line.endswith(f"resume with `python train.py --resume {out}`")


def test_ctrl_c_dropped_by_a_finaliser_still_stops_the_run(tmp_path, capsys, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside ``__del__`` (it prints "Exception ignored"
    and goes on); train() records the SIGINT itself and stops after the epoch, with the usual one
    line and nothing else. (Before: the run ignored that Ctrl-C, the cause of train.py hanging
    after SIGINT about once in ten runs.)"""
    import signal

    from warpsim_rl.algos.pods import PODS
    from warpsim_rl.train import main

    class Dropper:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100000):  # the SIGINT handler runs in here: its KeyboardInterrupt is dropped
                pass

    epoch = PODS.train_epoch
    calls = []

    def train_epoch(self):
        calls.append(1)
        if len(calls) == 2:
            Dropper()  # collected at once: its __del__ runs here
        return epoch(self)

    monkeypatch.setattr(PODS, "train_epoch", train_epoch)
    out = tmp_path / "run"
    # Python's own handler, whatever this process inherited: a shell starts background jobs with
    # SIGINT ignored, and train() then rightly leaves it ignored (the signal would be lost)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main([*TINY, "--epochs", "5", "--out", str(out)]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert len(calls) == 2 and "Exception ignored" not in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted at epoch 2 of 5; checkpoint written at epoch 2;")


def test_a_run_folder_is_not_overwritten_unless_asked(tmp_path, capsys):
    """Re-running into a run folder is refused (nothing touched); --overwrite deletes the run's own
    files and nothing else, leaving one TensorBoard event file. (Before: silently overwritten, two
    event files over the same steps.)"""
    from warpsim_rl.train import main

    out = tmp_path / "run"
    args = [*TINY, "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    (out / "tb" / "README").write_text("mine too")
    before = _files(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"out = '{out}' already holds a training run" in err and "--overwrite" in err
    assert f"python train.py --resume {out}" in err
    assert _files(out) == before
    with pytest.raises(ValueError, match="already holds a training run"):
        train(RunConfig(num_envs=4, horizon=8, epochs=1, out=str(out)), progress=False)
    assert main(["--resume", str(out), "--overwrite"]) == 2
    assert "--overwrite would delete it" in capsys.readouterr().err
    old_ckpt = (out / "checkpoint.pt").stat().st_mtime_ns
    assert main([*args, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "tb" / "README").read_text() == "mine too"
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert (out / "checkpoint.pt").stat().st_mtime_ns != old_ckpt
    # an empty or unrelated folder is not a run
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("x")
    assert main([*TINY, "--epochs", "1", "--out", str(other)]) == 0


def test_results_hold_the_untrained_evaluation_the_curve_and_the_whole_training_time(tmp_path, monkeypatch):
    """results.json: the untrained policy's test-bed evaluation (epoch 0), the curve epoch by epoch
    and, after a resume, the time of the whole run and of this session. (Before: only the final
    evaluation, and the resumed part's time.)"""
    from warpsim_rl.algos import evaluate

    run = RunConfig(num_envs=4, horizon=8, epochs=3, eval_every=2, usd_envs=0, out=str(tmp_path / "r"))
    cfg = algo_config("pods2", regression_steps=2)
    fresh = make_algorithm(make_task("pendulum2d-stop", horizon=8), run, cfg)
    want = evaluate(fresh.task, fresh.policy)
    restore = _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt, match="interrupted at epoch 3 of 3; checkpoint written at epoch 2"):
        train(run, cfg, progress=False)
    restore()
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    res = train(None, resume=str(tmp_path / "r"), progress=False)
    assert res == json.loads((tmp_path / "r" / "results.json").read_text())
    untrained = res["untrained"]
    assert untrained["epoch"] == 0
    for k in ("reward", "reward_std", "terminal_kinetic_energy", "distance_to_target", "action_magnitude",
              "diverged"):
        assert untrained[k] == want[k], k
    hist = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["history"]
    assert res["curve"][0] == {"epoch": 0, "time/train_s": 0.0, "time/train_cpu_s": 0.0, "env_steps": 0,
                               "eval/reward": want["reward"]}
    assert res["curve"][1:] == [{k: h[k] for k in ("epoch", "time/train_s", "time/train_cpu_s", "env_steps",
                                                   "train/return_before", "eval/reward") if k in h}
                                for h in hist]
    assert [("eval/reward" in c) for c in res["curve"]] == [True, False, True, True]
    assert res["reward"] == res["curve"][-1]["eval/reward"]  # the top level is the final evaluation
    assert res["resumed_from_epoch"] == 2
    assert res["train_time_s"] == pytest.approx(ckpt["train_time_s"] + res["train_time_s_this_session"])
    assert ckpt["train_time_s"] >= sum(h["time/epoch_s"] for h in ckpt["history"]) > 0


def test_run_files_follow_the_umask_and_the_usd_seed_is_an_integer(tmp_path):
    """One permission policy for every run file (0666 & ~umask, folders 0777 & ~umask), and
    eval.usdc records the seed as the integer the CLI export writes. (Before: checkpoint, metrics,
    results and config 0600 while eval.usdc and tb/ followed the umask; the seed a string.)"""
    from pxr import Usd

    from warpsim_rl.usd import main as usd_main

    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        train(RunConfig(num_envs=4, horizon=8, epochs=1, eval_every=0, usd_envs=2, seed=3, out=str(out)),
              algo_config("pods2", regression_steps=2), progress=False)
        assert usd_main(["--scene", "pendulum2d", "--envs", "1", "--steps", "2", "--seed", "3",
                         "--out", str(tmp_path / "cli.usda")]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert set(RUN_NAMES) <= {p.split("/")[-1] for p in modes} | {"run"}
    assert {p: m for p, m in modes.items() if m != (0o750 if (tmp_path / p).is_dir() else 0o640)} == {}
    assert (tmp_path / "cli.usda").stat().st_mode & 0o777 == 0o640
    stages = [Usd.Stage.Open(str(p)) for p in (out / "eval.usdc", tmp_path / "cli.usda")]
    meta, cli = (st.GetRootLayer().customLayerData["warpsim_rl"] for st in stages)
    assert meta["seed"] == 3 and type(meta["seed"]) is int
    assert cli["seed"] == 3 and type(cli["seed"]) is type(meta["seed"])
    assert (meta["env"], meta["algo"], meta["actions"]) == ("pendulum2d-stop", "pods2", "policy")


RUN_NAMES = ("tb", "metrics.csv", "checkpoint.pt", "results.json", "config.json", "learning_curve.png", "eval.usdc")


def test_default_output_folder_of_a_custom_scene_is_a_plain_name(tmp_path):
    from warpsim_rl.algos.config import RunConfig

    scene = tmp_path / "crane.toml"
    scene.write_text((Path(__file__).resolve().parents[1] / "scenes" / "pendulum2d.toml").read_text())
    run = RunConfig(env=f"{scene}:stop-origin", algo="bptt", seed=2)
    assert run.out_dir == "runs/crane-stop-origin-bptt-s2"


def test_train_py_lists_the_tasks_and_scenes(capsys):
    from warpsim_rl.tasks import task_names
    from warpsim_rl.train import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in task_names():
        assert name in out
    assert "rope3d" in out and "horizon" in out.lower()


def test_scene_params_reach_the_task_and_bad_ones_name_themselves(tmp_path):
    """``--scene-params NAME=VALUE`` overrides the task's scene (here the wall's stiffness), is
    stored in config.json and survives the round trip; a malformed entry or an unknown name is a
    ValueError naming it, before anything runs."""
    from warpsim_rl.training import _task_of

    run = RunConfig(env="wall_pendulum2d-stop", scene_params=("wall_stiffness=1e5",), num_envs=4, epochs=1,
                    usd_envs=0, eval_every=0, out=str(tmp_path / "run"))
    assert _task_of(run).scene.contact.stiffness == 1e5
    assert _task_of(RunConfig(env="wall_pendulum2d-stop")).scene.contact.stiffness == 1e4
    train(run, progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert saved["scene_params"] == ["wall_stiffness=1e5"] and RunConfig(**saved) == run
    with pytest.raises(ValueError, match=r"scene_params: 'wall_stiffness': expected NAME=NUMBER"):
        RunConfig(env="wall_pendulum2d-stop", scene_params=("wall_stiffness",))
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['wall_stifness'\]"):
        RunConfig(env="wall_pendulum2d-stop", scene_params=("wall_stifness=1e5",))


@pytest.mark.parametrize("field,value,message", [
    ("device", "", r"device = '': expected a device name"),
    ("out", "", r"out = '': expected a folder path"),
    ("algo", 3, r"algo = 3: expected an algorithm name"),
])
def test_run_config_refuses_a_bad_device_out_or_algo(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{field: value})
