"""PODS / BPTT internals and the train.py entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from warpsim_rl.algos import ALGORITHMS, TrainConfig
from warpsim_rl.algos.pods import gauss_newton_direction, value_gradient
from warpsim_rl.algos.rollout import Rollouts
from warpsim_rl.tasks import make_task
from warpsim_rl.training import CheckpointError, train

ROOT = Path(__file__).resolve().parents[1]


def _tiny_problem(task_name="pendulum2d-stop-origin", T=4, E=2):
    task = make_task(task_name, horizon=T)
    ro = Rollouts(task, E, "cpu", "float64")
    pos, vel = task.sample_initial_states(E, 7)
    s0 = ro.initial_state(pos, vel)
    rng = np.random.default_rng(3)
    acts = torch.tensor(rng.uniform(-0.5, 0.5, size=(T, E, task.num_handles, task.dim)), dtype=torch.float64)
    return task, ro, s0, acts


def _jacobian_rollout(task, ro, s0, acts):
    T = acts.shape[0]
    state, As, Bs, dr_ds, dr_da = tuple(s0), [], [], [], []
    for t in range(T):
        state, A, B = ro.ts.jacobians(*state, acts[t])
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
    ro.open_loop  # noqa: B018 - the differentiable path below uses the same simulator
    states = ro.ts.rollout(s0, leaf)
    V = sum(task.reward(states[t + 1][0], states[t + 1][1], leaf[t]) for t in range(acts.shape[0])).sum()
    V.backward()
    np.testing.assert_allclose(grad.numpy(), leaf.grad.reshape(grad.shape).numpy(), rtol=1e-9, atol=1e-12)


def test_gauss_newton_step_equals_dense_reference():
    """H = J^T C_ss J + C_aa with J = ds/da_bar from torch's dense Jacobian of the whole rollout
    (an independent computation), solved with numpy."""
    task, ro, s0, acts = _tiny_problem()
    T, E = acts.shape[0], acts.shape[1]
    A, B, dr_ds, dr_da, d = _jacobian_rollout(task, ro, s0, acts)
    c_ss, c_aa = -d["d2r_ds2"], -d["d2r_da2"]
    grad = value_gradient(A, B, dr_ds, dr_da)
    step = gauss_newton_direction(A, B, grad, c_ss, c_aa, damping=1e-6)
    na = task.action_dim
    for e in range(E):
        def states_of(a_flat, e=e):
            a = acts.clone()
            a[:, e] = a_flat.reshape(T, task.num_handles, task.dim)
            traj = ro.ts.rollout(s0, a)
            return torch.cat([ro.ts.markov_state(*traj[t + 1])[e] for t in range(T)])

        J = torch.autograd.functional.jacobian(states_of, acts[:, e].reshape(-1)).numpy()  # (T ns, T na)
        ns = J.shape[0] // T
        C = np.tile(c_ss.numpy(), T)
        H = J.T @ (C[:, None] * J) + np.diag(np.tile(c_aa.numpy(), T)) + 1e-6 * np.eye(T * na)
        g = grad[:, e].reshape(-1).numpy()
        ref = np.linalg.solve(H, g)
        np.testing.assert_allclose(step[:, e].reshape(-1).numpy(), ref, rtol=1e-7, atol=1e-10)
        assert ns == ro.model.num_state


@pytest.mark.parametrize("algo", ["pods2", "pods1"])
def test_line_search_never_accepts_a_worse_rollout(algo):
    cfg = TrainConfig(env="pendulum2d-stop", algo=algo, num_envs=16, line_search=4, regression_steps=2)
    task = make_task(cfg.env, horizon=30)
    pods = ALGORITHMS[algo](task, cfg)
    pos, vel = task.sample_initial_states(cfg.num_envs, 11)
    s0 = pods.rollouts.initial_state(pos, vel)
    traj, step = pods._direction(s0)
    obs, acts, improved, new_ret, alpha = pods._line_search(s0, traj, step)
    base = traj.returns.detach()
    assert torch.all(new_ret >= base)
    assert bool(improved.any())
    # the chosen actions really achieve the reported returns (replayed independently)
    replay = Rollouts(task, cfg.num_envs, "cpu", "float32").open_loop(
        s0, acts.reshape(task.horizon, cfg.num_envs, task.num_handles, task.dim))
    torch.testing.assert_close(replay.returns[improved], new_ret[improved])
    assert torch.all(replay.returns >= base - 1e-4 * base.abs())


def _files(out):
    return {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}


class _Crash(Exception):
    pass


def test_resume_continues_bit_identically(tmp_path, monkeypatch):
    """A run killed during epoch 3 and resumed from its epoch-2 checkpoint ends bit-identical to
    an uninterrupted run (weights, observation statistics, optimiser, lr schedule, metrics)."""
    base = dict(env="pendulum2d-stop", algo="pods2", num_envs=16, horizon=20, regression_steps=5,
                eval_every=0, usd_envs=0, epochs=4)
    train(TrainConfig(**base, out=str(tmp_path / "straight")), progress=False)
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
        train(TrainConfig(**base, out=str(tmp_path / "split")), progress=False)
    monkeypatch.setattr(cls, "train_epoch", original)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["epoch"] == 2
    train(TrainConfig(), resume=str(tmp_path / "split"), progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 4
    for k, v in a["algorithm"]["policy"].items():
        assert torch.equal(v, b["algorithm"]["policy"][k]), k
    # training metrics identical (the split run also evaluated at its end, epoch 2)
    for k, v in a["algorithm"]["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["algorithm"]["optimizer"]["state"][k]["exp_avg"]), k
    assert a["history"][-1]["epoch"] == b["history"][-1]["epoch"] == 4

    def train_rows(hist):
        return [{k: v for k, v in h.items() if not k.startswith(("time/", "eval/"))} for h in hist]

    assert train_rows(a["history"]) == train_rows(b["history"])


def test_observation_normalizer_matches_batch_statistics():
    from warpsim_rl.algos.policy import MLPPolicy, ObservationNormalizer

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
    ("pods2", "", [1.0, 0.75, 0.5, 0.25]),      # PODS' default: linear decay to 0
    ("bptt", "", [1.0, 1.0, 1.0, 1.0]),          # BPTT's default: constant
    ("bptt", "linear", [1.0, 0.75, 0.5, 0.25]),
    ("pods1", "constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_learning_rate_schedule(algo, schedule, expected):
    cfg = TrainConfig(algo=algo, epochs=4, num_envs=2, lr=0.02, lr_schedule=schedule)
    alg = ALGORITHMS[algo](make_task("pendulum2d-stop", horizon=3), cfg)
    got = []
    for epoch in range(4):
        alg.begin_epoch(epoch)
        got.append(alg.optimizer.param_groups[0]["lr"] / 0.02)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("field, value, match", [
    ("lr_schedule", "cosine", "lr_schedule"),
    ("normalize_obs", 1, "normalize_obs"),
    ("gn_damping", -1.0, "gn_damping"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value}).validate()


def test_resume_from_missing_or_corrupted_checkpoint_overwrites_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        train(TrainConfig(), resume=str(tmp_path / "nope"), progress=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run / "metrics.csv").write_text("epoch\n1\n")
    before = _files(run)
    with pytest.raises(CheckpointError, match="corrupted"):
        train(TrainConfig(), resume=str(run), progress=False)
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


@pytest.mark.parametrize("check", [True, False])
def test_policy_check_restores_a_worse_regressed_policy(check):
    """With ``policy_check`` a regression that lowers the closed-loop return on the epoch's initial
    states is undone (weights, observation statistics, Adam state); without it the bad policy stays."""
    from warpsim_rl.algos import PODS

    cfg = TrainConfig(num_envs=8, horizon=20, regression_steps=3, policy_check=check)
    alg = PODS(make_task("pendulum2d-stop", horizon=20), cfg, order=2)
    alg.train_epoch()  # Adam has state, the normaliser has statistics
    before = {k: v.clone() for k, v in alg.policy.state_dict().items()}
    adam = alg.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    original = alg.regress

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
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert torch.equal(alg.optimizer.state_dict()["state"][0]["exp_avg"], adam)
    else:
        assert "train/policy_accepted" not in m
        assert not torch.equal(before["net.4.bias"], after["net.4.bias"])


def test_failed_environments_do_not_enter_the_observation_statistics():
    """BPTT observes only the environments whose rollout did not fail (a failed state may be
    non-finite and would poison the normaliser for the rest of the run)."""
    from warpsim_rl.algos import BPTT

    T, E = 5, 4
    alg = BPTT(make_task("pendulum2d-stop", horizon=T), TrainConfig(algo="bptt", num_envs=E))
    original = alg.rollouts.policy

    def failing(*args, **kwargs):
        traj = original(*args, **kwargs)
        traj.obs = traj.obs.detach().clone()
        traj.obs[:, 1] = float("nan")  # what a diverged environment may leave behind
        traj.failed[1] = True
        return traj

    alg.rollouts.policy = failing
    alg.train_epoch()
    norm = alg.policy.normalizer
    assert float(norm.count) == T * (E - 1)
    assert torch.isfinite(norm.mean).all() and torch.isfinite(norm.var).all()
