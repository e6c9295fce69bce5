"""The benchmark command line (``python -m warpsim_rl.bench``): every subcommand is wired, and
the cheap ones run end to end at tiny sizes."""

import dataclasses
import json
import os
import signal
import sys

import pytest

from warpsim_rl import bench
from warpsim_rl.algos import algo_config

SUBCOMMANDS = ["throughput", "gradients", "scaling", "envs", "compare", "estimators", "usd", "contact", "table1", "windows",
               "sweep"]


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([cmd, "--help"])
    assert e.value.code == 0
    assert "--json" in capsys.readouterr().out


def _run(capsys, *argv) -> dict:
    assert bench.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_throughput_runs(capsys):
    out = _run(capsys, "throughput", "--scene", "rope3d", "--envs", "4", "--steps", "3", "--repeats", "1",
               "--param", "num_particles=3")
    assert out["benchmark"] == "throughput" and out["particles"] == 4 and out["env_steps_per_s"] > 0
    assert out["failed_envs"] == 0 and {"machine", "warp", "torch"} <= set(out)


def test_usd_export_runs(capsys, tmp_path):
    pytest.importorskip("pxr")
    out = _run(capsys, "usd", "--envs", "2", "--steps", "2", "--repeats", "1", "--format", ".usda")
    assert out["benchmark"] == "usd_export" and out["time_samples"] == 3 and out["file_bytes"] > 0
    from warpsim_rl.usd import main as usd_main  # the old entry point still benchmarks

    assert usd_main(["--bench", "--envs", "2", "--steps", "2", "--out", str(tmp_path / "x.usda")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == ".usda"


def test_contact_stats_run(capsys):
    out = _run(capsys, "contact", "--kind", "cable", "--dtype", "float32", "--envs", "2", "--steps", "3")
    (row,) = out["rows"]
    assert row["kind"] == "cable" and row["dtype"] == "float32" and row["iters_mean"] > 0


# ------------------------------------------------------------------------------------------------
# Progress on stderr, the result alone on stdout (issue 13, item 10)
# ------------------------------------------------------------------------------------------------

TINY = {
    "throughput": ["--scene", "pendulum2d", "--envs", "4", "--steps", "2", "--repeats", "2"],
    "gradients": ["--scene", "rope3d", "--param", "num_particles=3", "--envs", "2", "--steps", "2",
                  "--repeats", "1"],
    "scaling": ["--envs", "2", "--steps", "2", "--particles", "3", "--repeats", "1"],
    "envs": ["--task", "pendulum2d-stop", "--task", "cloth_table-stop", "--envs", "2", "--steps", "2",
             "--repeats", "1"],
    "usd": ["--envs", "2", "--steps", "2", "--repeats", "1", "--format", ".usda"],
    "contact": ["--kind", "cable", "--dtype", "float32", "--envs", "2", "--steps", "3"],
}
BAR = {"throughput": "throughput pendulum2d", "gradients": "gradients rope3d", "scaling": "scaling rope3d",
       "envs": "envs", "usd": "usd rope3d", "contact": "contact cloth_table"}


def _run_both(capsys, argv) -> tuple[dict, str]:
    """Run ``argv``; stdout must be exactly one JSON object; returns it and stderr."""
    assert bench.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and out.count("\n") == 1, out
    return json.loads(out), err


@pytest.mark.parametrize("cmd", sorted(TINY))
def test_progress_on_stderr_json_alone_on_stdout(cmd, capsys):
    if cmd == "usd":
        pytest.importorskip("pxr")
    res, err = _run_both(capsys, [cmd, *TINY[cmd], "--json"])
    assert res["benchmark"] in (cmd, "usd_export")
    bars = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith(BAR[cmd] + ":")]
    assert bars and "100%" in bars[-1], err  # one bar, run to its end
    _, quiet = _run_both(capsys, [cmd, *TINY[cmd], "--json", "--quiet"])
    assert "%|" not in quiet, quiet


def test_estimators_progress(capsys, monkeypatch):
    """The estimator study (minutes at its real sizes) shows a bar over its rows and runs."""
    import numpy as np

    from warpsim_rl.bench import estimators as be
    from warpsim_rl.tasks import make_task

    task = make_task("pendulum2d-stop", horizon=4)
    pos = np.array(task.scene.positions)
    tiny = {"R": 3, "ref_fo": 32, "ref_zo": 64}
    monkeypatch.setitem(be.SIZES, "quick", {"sigmas": (0.2,), "N": 8, "gamma_rel": 1.0, "planar": tiny,
                                            "rope": tiny, "strike": tiny})
    monkeypatch.setitem(be.WALL, "quick", {"stiffness": (1.0e4,), "sigma": 0.2, "N": 4, "seeds": 2, "iters": 2,
                                           "eta": 0.5, "max_step": 0.1, "gamma": 0.25, "n_eval": 8, "grid": 0,
                                           "grid_samples": 4})
    monkeypatch.setattr(be, "make_problems", lambda quick: [
        be.OpenLoopProblem("pendulum2d", "smooth", task, 2, pos, np.zeros_like(pos))])
    res, err = _run_both(capsys, ["estimators", "--quick", "--json"])
    assert len(res["study"]) == 1 and len(res["wall_strike"]["runs"]) == 1
    assert "estimators (quick): 100%" in err and "2/2" in err, err


def test_compare_progress(capsys, monkeypatch, tmp_path):
    """compare shows a bar over its runs and lets each training show its epochs."""
    from pathlib import Path

    import warpsim_rl.training

    seen = []

    def fake_train(run, progress=True, overwrite=False):
        seen.append(progress)
        assert overwrite  # a re-run of the comparison replaces its runs
        Path(run.out).mkdir(parents=True)
        (Path(run.out) / "metrics.csv").write_text("epoch,eval/reward\n1,-2.0\n")
        return {"reward": -2.0, "train_time_s": 0.1, "terminal_kinetic_energy": 0.0, "distance_to_target": 0.0,
                "action_magnitude": 0.0}

    monkeypatch.setattr(warpsim_rl.training, "train", fake_train)
    res, err = _run_both(capsys, ["compare", "--algos", "pods2", "bptt", "--seeds", "0", "--out", str(tmp_path),
                                  "--json"])
    assert res["summary"]["bptt"]["final_reward_mean"] == -2.0 and seen == [True, True]
    assert "compare pendulum2d-stop: 100%" in err and "2/2" in err, err


def test_default_sizes():
    """The defaults that keep every README invocation under 2 minutes on a 2-core CPU VM
    (README, Benchmarks): per-task env counts for ``envs``, 256 envs for ``scaling``."""
    from warpsim_rl.bench.cli import parser
    from warpsim_rl.bench.envs import default_envs

    p = parser()
    assert p.parse_args(["envs"]).envs is None
    assert [default_envs(t) for t in ("pendulum2d-stop", "rope3d-stop", "cloth_table-place")] == [4096, 1024, 256]
    sc = p.parse_args(["scaling"])
    assert (sc.envs, sc.steps, sc.repeats, sc.particles) == (256, 20, 3, [5, 10, 20, 40])
    assert p.parse_args(["envs", "--envs", "4096"]).envs == 4096  # the large run, behind a flag


def test_envs_rows_report_their_size(capsys):
    from warpsim_rl.bench.envs import bench_envs

    out = bench_envs(steps=1, repeats=1, tasks=["cloth_table-stop"])
    assert out["envs"] is None and out["rows"][0]["envs"] == 256
    assert capsys.readouterr().err == ""  # the library call is silent unless asked


def test_table1_caches_cells_reports_budget_too_small_and_rejects_bad_names(tmp_path, capsys):
    """Two real cells (subprocesses): a PPO cell that trains, a PODS 500 cell whose first epoch
    is longer than its budget (recorded as such, not as a result); a second call runs nothing."""
    from warpsim_rl.bench.table1 import report, table1

    cache = tmp_path / "t1.json"
    data = table1(["2D Pendulum"], ["PPO"], [0], budget_s=4.0, cache=str(cache), progress=True)
    tiny = table1(["2D Pendulum"], ["PODS 500"], [0], budget_s=0.01, cache=str(tmp_path / "tiny.json"))
    ppo = data["cells"]["2D Pendulum | PPO | seed 0"]
    assert ppo["status"] == "ok" and ppo["epochs"] >= 1 and ppo["curve"][-1]["time/train_cpu_s"] >= 4.0
    assert ppo["host_speed"]["warp_env_steps_per_s"] > 1e4 and ppo["host_speed"]["torch_adam_steps_per_s"] > 1
    assert json.loads(json.dumps(ppo["algo_config"])) == json.loads(json.dumps(dataclasses.asdict(algo_config("ppo"))))
    assert tiny["cells"]["2D Pendulum | PODS 500 | seed 0"]["status"] == "budget_too_small"
    again = table1(["2D Pendulum"], ["PPO"], [0], budget_s=4.0, cache=str(cache), progress=True)
    assert again["cells"] == data["cells"]
    assert "0 cells to run (1 cached" in capsys.readouterr().err
    # a cell recorded as an error is run again; its finished run folder is resumed, not retrained
    cache.write_text(json.dumps(data | {"cells": {"2D Pendulum | PPO | seed 0": {**ppo, "status": "error"}}}))
    rerun = table1(["2D Pendulum"], ["PPO"], [0], budget_s=4.0, cache=str(cache), progress=False)
    resumed = rerun["cells"]["2D Pendulum | PPO | seed 0"]
    assert resumed["status"] == "ok" and resumed["resumed_from_epoch"] == ppo["epochs"] == resumed["epochs"]
    assert resumed["reward"] == ppo["reward"] and resumed["curve"] == ppo["curve"]
    rep = report(json.loads(cache.read_text()) | {"cells": {**data["cells"], **tiny["cells"]}},
                 images=str(tmp_path / "img"))
    assert "budget too small" in rep["table"] and (tmp_path / "img" / "table1_pendulum2d-stop.png").is_file()
    with pytest.raises(ValueError, match=r"row \['2D Pendullum'\]: unknown; valid rows: \['2D Pendulum'"):
        table1(["2D Pendullum"], ["PPO"], [0], cache=str(cache))
    with pytest.raises(ValueError, match=r"column \['SACC'\]: unknown; valid columns: \['PODS 500'"):
        table1(["2D Pendulum"], ["SACC"], [0], cache=str(cache))
    with pytest.raises(ValueError, match="budget_s = 0: must be a positive"):
        table1(["2D Pendulum"], ["PPO"], [0], budget_s=0, cache=str(cache))


def test_host_spread_names_the_cells_of_a_slower_or_faster_host():
    """The reference is the median over the cells that measured their host; a cell more than 40 %
    off in either measure is named with its ratio (one 27 % off, what two processes on two vCPUs
    cost each other, is not); older cells are counted as unmeasured."""
    from warpsim_rl.bench.grid import host_spread, hosts_text

    def cell(seed, warp, torch_rate):
        return {"row": "r", "column": "c", "seed": seed,
                "host_speed": {"warp_env_steps_per_s": warp, "torch_adam_steps_per_s": torch_rate}}

    cells = [cell(0, 2.0e6, 100.0), cell(1, 2.2e6, 110.0), cell(2, 1.0e6, 100.0), cell(3, 2.0e6, 150.0),
             cell(4, 1.46e6, 105.0), {"row": "r", "column": "c", "seed": 5}]
    spread = host_spread(cells)
    assert spread["reference"] == {"warp_env_steps_per_s": 2.0e6, "torch_adam_steps_per_s": 105.0}
    assert list(spread["slower"]) == ["r | c | seed 2"]
    assert spread["slower"]["r | c | seed 2"]["warp_env_steps_per_s"] == 0.5
    assert list(spread["faster"]) == ["r | c | seed 3"] and spread["unmeasured"] == 1
    text = hosts_text(spread)
    assert "r | c | seed 2 (0.50×)" in text and "r | c | seed 3 (1.43×)" in text and "1 cells ran before" in text
    assert "more than 40% slower" in text
    assert host_spread(cells[-1:])["reference"] is None and "none of the 1 cells" in hosts_text(host_spread(cells[-1:]))


def test_table1_rerun_supersedes_cached_cells_once(tmp_path):
    """``rerun`` moves a column's cached cell to the cache's ``superseded`` list with its reason and
    runs it again from scratch (its old run folder renamed, not resumed); the same command again
    supersedes nothing twice and runs nothing; a re-run needs a reason and a known column."""
    from warpsim_rl.bench.table1 import table1

    cache, runs, key = tmp_path / "t1.json", tmp_path / "runs", "2D Pendulum | PPO | seed 0"
    args = (["2D Pendulum"], ["PPO"], [0])
    old = table1(*args, budget_s=4.0, cache=str(cache), runs_dir=str(runs), progress=False)["cells"][key]
    with pytest.raises(ValueError, match="rerun_reason = None: say why"):
        table1(*args, budget_s=4.0, cache=str(cache), runs_dir=str(runs), rerun=["PPO"])
    with pytest.raises(ValueError, match=r"rerun column \['SACC'\]: unknown"):
        table1(*args, budget_s=4.0, cache=str(cache), runs_dir=str(runs), rerun=["SACC"], rerun_reason="x")
    with pytest.raises(ValueError, match=r"\['SAC'\] are not among the columns to run \['PPO'\]"):
        table1(*args, budget_s=4.0, cache=str(cache), runs_dir=str(runs), rerun=["SAC"], rerun_reason="x")
    assert json.loads(cache.read_text())["cells"][key] == old  # nothing moved by a refused call
    new = table1(*args, budget_s=4.0, cache=str(cache), runs_dir=str(runs), rerun=["PPO"],
                 rerun_reason="a changed method", progress=False)
    cell = new["cells"][key]
    assert cell["status"] == "ok" and not cell["resumed_from_epoch"] and cell["wall_s"] != old["wall_s"]
    (gone,) = new["superseded"]
    assert gone["superseded_because"] == "a changed method" and {k: gone[k] for k in old} == old
    assert (runs / "pendulum2d-stop-PPO-s0.superseded-1").is_dir() and (runs / "pendulum2d-stop-PPO-s0").is_dir()
    again = table1(*args, budget_s=4.0, cache=str(cache), runs_dir=str(runs), rerun=["PPO"],
                   rerun_reason="a changed method", progress=False)
    assert again["cells"] == new["cells"] and len(again["superseded"]) == 1


def test_nonsmooth_cells_use_their_wall_and_group_gradients_average_to_the_batch_gradient(tmp_path):
    """A non-smooth study cell trains on its row's wall stiffness (the scene override reaches the
    run); the group gradients behind ``var_rel`` average to the gradient of the batch's mean return
    (equal groups, no failures), computed here by one autograd call."""
    import torch

    from warpsim_rl.algos import RunConfig, make_algorithm
    from warpsim_rl.bench.nonsmooth import gradient_variance, group_gradients, nonsmooth
    from warpsim_rl.training import _task_of

    data = nonsmooth(["wall 1e5 N/m"], ["BPTT"], [0], budget_s=1.0, cache=str(tmp_path / "ns.json"),
                     runs_dir=str(tmp_path / "runs"), progress=False)
    cell = data["cells"]["wall 1e5 N/m | BPTT | seed 0"]
    assert cell["status"] == "ok" and cell["epochs"] >= 1
    saved = json.loads((tmp_path / "runs" / "wall1e5-BPTT-s0" / "config.json").read_text())["run"]
    assert saved["scene_params"] == ["wall_stiffness=1e5"] and saved["env"] == "wall_pendulum2d-stop"

    run = RunConfig(env="wall_pendulum2d-stop", algo="bptt", num_envs=8, dtype="float64", threads=1,
                    horizon=30, scene_params=("wall_stiffness=1e5",))
    alg = make_algorithm(_task_of(run), run)
    s0 = alg.initial_state()
    G, failed = group_gradients(alg, s0, 30, 4)
    assert G.shape[0] == 4 and not bool(failed.any())
    traj = alg.core.rollout(alg.policy, s0, 30, graph=True)
    whole = torch.cat([g.reshape(-1) for g in torch.autograd.grad(traj.returns.mean(), list(alg.policy.parameters()))])
    torch.testing.assert_close(G.mean(0), whole, rtol=1e-10, atol=1e-12)
    (row,) = gradient_variance(["wall 1e5 N/m"], seeds=[0], num_envs=16, groups=4, window=10)
    assert row["window"]["horizon"] == 10 and 0.0 < row["full"]["var_rel"] < float("inf")


def test_first_epoch_watchdog_stops_a_run_that_overruns_and_spares_one_that_writes_an_epoch(tmp_path):
    """The watchdog interrupts the main thread once ``limit_s`` of CPU time has passed with no
    metrics written, and does nothing once metrics.csv exists."""
    import time

    from warpsim_rl.bench.grid import FirstEpochWatchdog

    metrics = tmp_path / "metrics.csv"
    with pytest.raises(KeyboardInterrupt):
        with FirstEpochWatchdog(metrics, limit_s=0.3, interval_s=0.05) as dog:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 30:  # busy: CPU time passes
                sum(range(1000))
    assert dog.fired and dog.spent_s > 0.3 and time.perf_counter() - t0 < 10
    metrics.write_text("epoch\n1\n")
    with FirstEpochWatchdog(metrics, limit_s=0.1, interval_s=0.05) as dog:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            sum(range(1000))
    assert not dog.fired


def test_first_epoch_watchdog_stops_a_run_started_with_sigint_ignored(tmp_path):
    """A runner started in the background (``cmd &``) has SIGINT ignored, and Python's interrupt
    of the main thread does nothing there: the watchdog still stops the run, and leaves SIGINT
    ignored afterwards."""
    import time

    from warpsim_rl.bench.grid import FirstEpochWatchdog

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            with FirstEpochWatchdog(tmp_path / "metrics.csv", limit_s=0.3, interval_s=0.05) as dog:
                while time.perf_counter() - t0 < 20:
                    sum(range(1000))
        assert dog.fired and time.perf_counter() - t0 < 10
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_cell_whose_first_epoch_overruns_is_stopped_and_recorded_as_budget_too_small(tmp_path, monkeypatch):
    """PODS 4000 on the pendulum under a 0.5 s budget (and no set-up allowance): the watchdog
    stops the first epoch after 1 s of CPU; the cell is 'budget_too_small' with the time it ran,
    and the run wrote no results."""
    from warpsim_rl.bench import grid

    monkeypatch.setattr(grid, "SETUP_ALLOWANCE_S", 0.0)
    folder = tmp_path / "cell"
    cell = grid.run_cell("2D Pendulum", "pendulum2d-stop", (), "PODS 4000", "pods2", {"num_envs": 4000}, 0, 0.5,
                         str(folder), "cpu")
    assert cell["status"] == "budget_too_small" and cell["first_epoch_s"] is None
    assert cell["first_epoch_over_s"] > 1.0 and not (folder / "results.json").exists()
    assert grid.too_small([cell]) == f"budget too small (1 epoch > {cell['first_epoch_over_s']:.0f} s)"


_ORPHAN_RUNNER = '''
import os, sys, time
from warpsim_rl.bench.grid import cell_pool

def cell(path):
    open(path + ".tmp", "w").write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)

if __name__ == "__main__":
    with cell_pool(1) as pool:
        pool.submit(cell, sys.argv[1]).result()
'''


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_a_cell_worker_ends_when_its_runner_is_killed(tmp_path):
    """A grid runner killed from outside takes its cell workers with it: an orphaned worker went
    on writing the run folder from which a new runner resumed the same cell. Without
    ``end_with_parent`` the worker below would sleep on for two minutes."""
    import subprocess
    import time

    script, pidfile = tmp_path / "runner.py", tmp_path / "worker.pid"
    script.write_text(_ORPHAN_RUNNER)
    runner = subprocess.Popen([sys.executable, str(script), str(pidfile)])
    worker = None
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pidfile.exists(), "the worker never started"
        worker = int(pidfile.read_text())
        assert _alive(worker)
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "the cell's worker outlived its runner"
    finally:
        if runner.poll() is None:
            runner.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def _curve_cell(seed, curve, ke=0.0):
    """A finished cell with the test-bed rewards ``curve`` ((time, reward) pairs from time 0)."""
    return {"seed": seed, "budget_clock": "cpu", "reward": curve[-1][1], "terminal_kinetic_energy": ke,
            "distance_to_target": 0.0, "curve": [{"time/train_cpu_s": t, "eval/reward": r} for t, r in curve]}


def test_reach_bracket_is_the_evaluation_before_and_the_first_at_the_level():
    from warpsim_rl.bench.grid import reach_bracket

    cell = _curve_cell(0, [(0, -40.0), (2, -30.0), (4, -20.0), (8, -25.0), (30, -19.0)])
    cell["curve"].insert(2, {"time/train_cpu_s": 3.0})  # an epoch without an evaluation: not a bound
    assert reach_bracket(cell, -20.0) == (2.0, 4.0)
    assert reach_bracket(cell, -19.5) == (8.0, 30.0)
    assert reach_bracket(cell, -45.0) == (0.0, 0.0)
    assert reach_bracket(cell, -10.0) is None


def test_table1_time_to_sac_final_pairs_the_seeds_and_brackets_the_speedup():
    """PODS' time to SAC's final reward is taken seed by seed against the same seed's SAC (two
    seeds: PODS there at 30 and 20 s, its evaluations before at 15 and 10 s; SAC at its final level
    from 300 and 250 s, evaluations before at 150 and 0 s); the speed-up lies between
    mean(150, 0) / mean(30, 20) and mean(300, 250) / mean(15, 10). Against the mean over the seeds,
    SAC's worse seed would never reach its target and no speed-up would be defined."""
    from warpsim_rl.bench.table1 import _claims

    sac = [_curve_cell(0, [(0, -40.0), (150, -20.0), (300, -14.5)]), _curve_cell(1, [(0, -40.0), (250, -13.6), (300, -13.6)])]
    pods = [_curve_cell(0, [(0, -40.0), (15, -16.0), (30, -14.0), (300, -11.0)]),
            _curve_cell(1, [(0, -40.0), (10, -15.0), (20, -13.5), (40, -13.0), (300, -11.0)])]
    claims = _claims("2D Pendulum", {"SAC": (-14.05, sac), "PODS 500": (-11.0, pods)})
    assert claims["pods_ge_sac"] is True
    assert claims["time_to_sac_final_s"] == {"SAC": 275.0, "PODS 500": 25.0}
    assert claims["speedup_vs_sac"]["PODS 500"] == pytest.approx({"at_least": 75.0 / 25.0, "at_most": 275.0 / 12.5})
    assert claims["pods_10x_sooner"] == "?"
    # a column with seed 0 only is compared with SAC's seed 0 (150-300 s), not SAC's mean over both
    claims = _claims("2D Pendulum", {"SAC": (-14.05, sac), "PODS 500": (-11.0, pods[:1])})
    assert claims["speedup_vs_sac"]["PODS 500"] == pytest.approx({"at_least": 150.0 / 30.0, "at_most": 300.0 / 15.0})
    # there at its first evaluation: unbounded above; at least 10x: the claim holds
    fast = [_curve_cell(0, [(0, -40.0), (10, -12.0), (300, -11.0)])]
    claims = _claims("2D Pendulum", {"SAC": (-14.05, sac), "PODS 500": (-11.0, fast)})
    assert claims["speedup_vs_sac"]["PODS 500"] == pytest.approx({"at_least": 15.0, "at_most": None})
    assert claims["pods_10x_sooner"] is True
    # slower than a tenth of SAC's earliest time on every column: the claim fails
    slow = [_curve_cell(0, [(0, -40.0), (60, -20.0), (90, -14.0), (300, -11.0)])]
    claims = _claims("2D Pendulum", {"SAC": (-14.05, sac), "PODS 500": (-11.0, slow)})
    assert claims["speedup_vs_sac"]["PODS 500"] == pytest.approx({"at_least": 150.0 / 90.0, "at_most": 5.0})
    assert claims["pods_10x_sooner"] is False


def test_table1_claims_table_and_no_speedup_over_a_sac_that_never_improved():
    """SAC ending at or below its first evaluation (time to its final 0 s) gives no speed-up (not
    0 or infinity); the claims table prints it as "—", one line per row, PODS columns missing too."""
    from warpsim_rl.bench.table1 import _claims, claims_markdown

    sac = [_curve_cell(0, [(0, -35.6), (150, -50.0), (300, -64.2)], ke=0.25)]
    pods = [_curve_cell(0, [(0, -35.6), (30, -22.8), (300, -22.8)], ke=0.25)]
    claims = _claims("Cable driven payload", {"SAC": (-64.2, sac), "PODS 500": (-22.8, pods), "PPO": (-17.8, pods)})
    assert claims["time_to_sac_final_s"] == {"SAC": 0.0, "PODS 500": 0.0}
    assert claims["speedup_vs_sac"] == {"PODS 500": None}
    assert claims["pods_ge_sac"] is True and claims["sac_gt_ppo"] is False
    cloth = _claims("Cloth on the table", {"SAC": (-13.8, sac), "PPO": (-11.9, sac)})
    md = claims_markdown([claims, cloth], ["PODS 500", "SAC", "PPO"]).splitlines()
    assert md[0].startswith("| row | PODS ≥ SAC | SAC > PPO | time to SAC's final: SAC / PODS 500 | speedup vs SAC: PODS 500 "
                            "| PODS ≥ 10× sooner |")
    assert md[2] == "| Cable driven payload | True | False | 0 / 0 | — | — | 0.25 / 0.25 / 0.25 |"
    assert md[3] == "| Cloth on the table | — | False | — / — | — | — | — / 0.25 / 0.25 |"
    assert claims["pods_10x_sooner"] == "—"


def test_git_revision_prefers_an_installed_build_stamp(tmp_path):
    """An installed package's REVISION stamp (setup.py) is its revision; a folder that is neither
    stamped nor in a git checkout has none; this checkout's is git's own."""
    import subprocess

    from warpsim_rl.bench.common import git_revision

    (tmp_path / "REVISION").write_text("0123abc\n")
    assert git_revision(tmp_path) == "0123abc"
    (tmp_path / "REVISION").unlink()
    assert git_revision(tmp_path) == ""
    here = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    assert git_revision() == here


def test_speedup_brackets_are_printed_rounded_outwards():
    """A lower bound of 9.96 must not print as 10, nor an upper bound of 9.91 as 9.9."""
    from warpsim_rl.bench.table1 import _speedup_text

    assert _speedup_text({"at_least": 9.96, "at_most": 9.91}) == "9.9–10.0"
    assert _speedup_text({"at_least": 44.7, "at_most": 97.2}) == "44–98"
    assert _speedup_text({"at_least": 0.934, "at_most": None}) == "≥ 0.93"
    assert _speedup_text(None) == "—"
