"""Data-parallel training under torchrun (warpsim_rl.distributed): 2 ranks x E/2 envs against
1 rank x E envs (PODS 2nd order, BPTT, SHAC), resume across world sizes, rank-0-only files, a
killed rank.

The multi-process tests run ``python -m torch.distributed.run --standalone --nproc_per_node=2
train.py`` (gloo on the CPU, one Warp thread per rank) in float64. Two ranks compute the same
per-env physics bit for bit as one process; what differs is the order of floating-point sums in
the gradient all-reduce and the pooled statistics (about 1e-16 relative per operation), carried
through a few Adam steps and closed-loop rollouts: parameters agree to ~1e-16 absolute here, and
the tests allow 1e-9 relative, far below any change a real bug makes (a rank's gradient counted
twice or dropped changes them at 1e-3 or more).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from warpsim_rl import distributed

ROOT = Path(__file__).resolve().parents[1]
#: 7 envs: the ranks hold 4 and 3
BASE = ["--num-envs", "7", "--horizon", "10", "--eval-every", "1", "--usd-envs", "0",
        "--no-progress", "--dtype", "float64", "--lr-schedule", "constant"]  # constant: runs extended by resume
PODS = [*BASE, "--algo", "pods2", "--regression-steps", "3", "--regression-batch", "16"]
BPTT = [*BASE, "--algo", "bptt", "--gradient-steps", "2"]
SHAC = [*BASE, "--algo", "shac", "--horizon-window", "4", "--critic-iterations", "2", "--minibatches", "3"]
RTOL = 1e-9


# -- one process: the helpers are the identity -----------------------------------------------------

def test_env_slice_covers_the_envs_in_rank_order():
    assert [distributed.env_slice(7, 2, r) for r in range(2)] == [(0, 4), (4, 7)]
    assert [distributed.env_slice(5, 3, r) for r in range(3)] == [(0, 2), (2, 4), (4, 5)]
    assert distributed.env_slice(9) == (0, 9)
    with pytest.raises(ValueError, match="num_envs = 1: fewer environments than the 2 ranks"):
        distributed.env_slice(1, 2, 0)


def test_one_process_collectives_are_the_identity_and_count_nothing():
    distributed.TRAFFIC.reset()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert distributed.all_reduce(x.clone()).equal(x)
    assert distributed.all_gather_rows(x).equal(x)
    n, mean, var = distributed.merge_moments(x)
    assert n == 5 and mean.equal(x.mean(0)) and var.equal(x.var(0, unbiased=False))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert int(distributed.global_count(torch.tensor([True, False, True]))) == 2
    assert distributed.TRAFFIC.reset() == (0, 0)


def test_global_rows_split_the_single_process_minibatch_exactly():
    """The minibatches of PODS' regression and SHAC's critic under torchrun: the rows the ranks
    select for a global index set are, together, the single-process rows (each once)."""
    T, counts = 5, [3, 0, 4]  # rollouts kept per rank (a rank may keep none)
    N = sum(counts)
    global_rows = np.arange(T * N).reshape(T, N)  # time-major over every rank's rollouts
    idx = torch.randint(T * N, (40,), generator=torch.Generator().manual_seed(0))
    picked = []
    first = 0
    for c in counts:
        pairs = distributed.GlobalRows.__new__(distributed.GlobalRows)
        pairs.columns, pairs.first, pairs.N, pairs.total = c, first, N, T * N
        local = pairs.local(idx).numpy()
        local_rows = global_rows[:, first:first + c].reshape(-1)  # this rank's X, time-major
        picked.extend(local_rows[local].tolist())
        first += c
    assert sorted(picked) == sorted(idx.tolist())


def test_an_algorithm_without_data_parallel_support_refuses_a_process_group(monkeypatch):
    from warpsim_rl.algos import RunConfig, algo_config, make_algorithm
    from warpsim_rl.tasks import make_task

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    run = RunConfig(env="pendulum2d-stop", algo="sac", num_envs=4)
    with pytest.raises(ValueError, match=r"algo = 'sac' runs in one process only; under torchrun \(world size 2\) "
                                         r"use one of \['bptt', 'pods1', 'pods2', 'shac'\]"):
        make_algorithm(make_task("pendulum2d-stop"), run, algo_config("sac"))


# -- torchrun ------------------------------------------------------------------------------------------

def _torchrun(args, cwd, timeout=300, env=None, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _single(args):
    from warpsim_rl.train import main

    assert main(args) == 0


def _ckpt(folder):
    return torch.load(Path(folder) / "checkpoint.pt", weights_only=False)


def _assert_same_run(a, b):
    """Policies (weights and observation statistics) and every non-timing metric agree to RTOL."""
    ca, cb = _ckpt(a), _ckpt(b)
    assert ca["epoch"] == cb["epoch"]
    pa, pb = ca["algorithm"]["modules"]["policy"], cb["algorithm"]["modules"]["policy"]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=RTOL, atol=RTOL, msg=k)
    for ha, hb in zip(ca["history"], cb["history"], strict=True):
        for k, v in ha.items():
            if k.startswith(("time/", "dist/")):
                continue
            np.testing.assert_allclose(hb[k], v, rtol=RTOL, atol=RTOL, err_msg=f"epoch {ha['epoch']} {k}")
    assert ca["algorithm"]["buffers"]["env_steps"] == cb["algorithm"]["buffers"]["env_steps"]
    assert ca["algorithm"]["generators"]["rng"] == cb["algorithm"]["generators"]["rng"]


def _files(folder):
    folder = Path(folder)
    return sorted(str(p.relative_to(folder).parent if p.parent.name == "tb" else p.relative_to(folder))
                  for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def pods_runs(tmp_path_factory):
    """PODS 2nd order: one process for 2, 3 and 4 epochs (the 4 by resuming the 3), and on 2 ranks
    for 3 epochs."""
    tmp = tmp_path_factory.mktemp("dist")
    _single([*PODS, "--epochs", "2", "--out", str(tmp / "one2")])
    _single([*PODS, "--epochs", "3", "--out", str(tmp / "one3")])
    shutil.copytree(tmp / "one3", tmp / "one4")
    _single(["--resume", str(tmp / "one4"), "--epochs", "4", "--no-progress"])
    two = _torchrun([*PODS, "--epochs", "3", "--out", str(tmp / "two3")], cwd=tmp)
    return tmp, two


def test_pods2_on_two_ranks_equals_one_process(pods_runs):
    tmp, two = pods_runs
    _assert_same_run(tmp / "one3", tmp / "two3")
    history = _ckpt(tmp / "two3")["history"]
    assert all(h["dist/bytes"] > 0 and h["dist/collectives"] > 0 for h in history)
    # only rank 0 wrote: the same files as one process, one TensorBoard event file, one results print
    assert _files(tmp / "two3") == _files(tmp / "one3")
    assert len(list((tmp / "two3" / "tb").glob("events.out.tfevents.*"))) == 1
    assert two.stdout.count('"algo": "pods2"') == 1


def test_resume_across_world_sizes(pods_runs):
    tmp, _ = pods_runs
    # 1 rank -> 2 ranks: the 2-epoch run continued on two ranks equals 3 epochs in one process
    shutil.copytree(tmp / "one2", tmp / "one2-two3")
    _torchrun(["--resume", str(tmp / "one2-two3"), "--epochs", "3", "--no-progress"], cwd=tmp)
    _assert_same_run(tmp / "one3", tmp / "one2-two3")
    # 2 ranks -> 1 rank: the 2-rank run continued in one process equals 4 epochs in one process
    shutil.copytree(tmp / "two3", tmp / "two3-one4")
    _single(["--resume", str(tmp / "two3-one4"), "--epochs", "4", "--no-progress"])
    _assert_same_run(tmp / "one4", tmp / "two3-one4")


def test_bptt_on_two_ranks_equals_one_process(tmp_path):
    _single([*BPTT, "--epochs", "3", "--out", str(tmp_path / "one")])
    _torchrun([*BPTT, "--epochs", "3", "--out", str(tmp_path / "two")], cwd=tmp_path)
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_shac_on_two_ranks_equals_one_process(tmp_path):
    """SHAC: the stochastic actor's noise, the windows' actor loss, the critic's shuffled
    minibatches and the observation statistics are global (10 steps in windows of 4: a shorter
    last window too)."""
    _single([*SHAC, "--epochs", "3", "--out", str(tmp_path / "one")])
    _torchrun([*SHAC, "--epochs", "3", "--out", str(tmp_path / "two")], cwd=tmp_path)
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    one, two = (_ckpt(tmp_path / k)["algorithm"]["modules"] for k in ("one", "two"))
    for name in ("critic", "target_critic", "actor"):
        for k in one[name]:
            torch.testing.assert_close(one[name][k], two[name][k], rtol=RTOL, atol=RTOL, msg=f"{name}.{k}")


def test_an_skrl_baseline_under_torchrun_fails_cleanly_before_skrl_joins_a_group(tmp_path):
    """skrl 2.1's config joins an NCCL process group by itself when first used under torchrun
    (which fails on a CPU machine with "initialize the default process group twice"); the
    baselines refuse before touching skrl, with the usual error, and write nothing."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           "--algo", "sac", "--num-envs", "4", "--epochs", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: algo = 'sac' runs in one process only; under torchrun (world size 2) use one of" in proc.stderr
    assert "process group twice" not in proc.stderr and not out.exists()


def test_a_killed_rank_stops_the_others_with_a_clear_error_and_a_valid_checkpoint(tmp_path):
    from warpsim_rl.training import load_checkpoint

    out = tmp_path / "run"
    proc = _torchrun([*PODS, "--eval-every", "0", "--epochs", "100000", "--out", str(out)], cwd=tmp_path,
                     env={distributed.TIMEOUT_ENV: "30"}, wait=False)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        rank1 = [w for w in workers if b"RANK=1" in Path(f"/proc/{w}/environ").read_bytes().split(b"\0")]
        assert len(rank1) == 1, workers
        os.kill(int(rank1[0]), signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=90)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and waited < 60
    assert "error: rank 0 of 2: " in err and "another rank exited or is unreachable" in err
    assert f"resume with `python train.py --resume {out}`" in err
    ckpt = load_checkpoint(out)  # the last checkpoint stays valid (atomic writes)
    assert ckpt["epoch"] >= 1 and len(ckpt["history"]) == ckpt["epoch"]
