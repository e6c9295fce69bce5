"""The benchmark command line (``python -m warpsim_rl.bench``): every subcommand is wired, and
the cheap ones run end to end at tiny sizes."""

import json

import pytest

from warpsim_rl import bench

SUBCOMMANDS = ["throughput", "gradients", "scaling", "envs", "compare", "estimators", "usd", "contact"]


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
