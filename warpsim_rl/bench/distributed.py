"""``bench distributed``: the epoch wall time of ``train.py`` in one process against ``torchrun``
with several processes on this machine, and the bytes each rank hands to collectives per epoch.

Every configuration is one real ``train.py`` run in a fresh temporary folder (one process:
``python train.py --threads T``; N processes: ``torchrun --standalone --nproc_per_node=N
train.py --threads T``), ``OMP_NUM_THREADS=1`` for every process. The epoch time is the median
over the epochs after the first (the first includes Warp's module loading) of ``time/epoch_s``
(under torchrun the slowest rank's); ``dist/bytes`` is rank 0's payload per epoch (the other ranks
send the same collectives)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import git_revision, machine_info, stderr_log

__all__ = ["processes"]

ROOT = Path(__file__).resolve().parents[2]


def _command(processes: int, args: list[str]) -> list[str]:
    train = str(ROOT / "train.py")
    if processes == 1:
        return [sys.executable, train, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", train,
            *args]


def processes(algos=("pods2", "pods1", "bptt", "shac"), counts=(1, 2), epochs: int = 8, env: str = "pendulum2d-stop",
              num_envs: int = 256, threads: int = 1, progress: bool = True) -> dict:
    """Run ``train.py`` for every algorithm in ``algos`` and process count in ``counts`` (see the
    module doc); returns the JSON-ready result."""
    if epochs < 2:
        raise ValueError(f"epochs = {epochs}: needs at least 2 (the first is left out of the median)")
    log = stderr_log(progress)
    out = {"env": env, "num_envs": num_envs, "epochs": epochs, "threads_per_process": threads,
           "machine": machine_info(), "revision": git_revision(), "results": {}}
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for algo in algos:
        row = out["results"].setdefault(algo, {})
        for n in counts:
            with tempfile.TemporaryDirectory() as tmp:
                args = ["--env", env, "--algo", algo, "--num-envs", str(num_envs), "--epochs", str(epochs),
                        "--eval-every", "0", "--usd-envs", "0", "--no-progress", "--threads", str(threads),
                        "--out", str(Path(tmp) / "run")]
                t0 = time.perf_counter()
                proc = subprocess.run(_command(n, args), cwd=tmp, env=env_vars, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"{algo} on {n} processes failed:\n{proc.stderr[-3000:]}")
                history = torch.load(Path(tmp) / "run" / "checkpoint.pt", weights_only=False)["history"]
            epoch_s = [h["time/epoch_s"] for h in history[1:]]
            row[str(n)] = {"epoch_s_median": statistics.median(epoch_s), "epoch_s": epoch_s,
                           "process_wall_s": wall,
                           "dist_bytes_per_epoch": statistics.median(h.get("dist/bytes", 0) for h in history[1:]),
                           "dist_collectives_per_epoch": statistics.median(h.get("dist/collectives", 0)
                                                                           for h in history[1:])}
            log(f"{algo} on {n} process(es): epoch {row[str(n)]['epoch_s_median']:.3f} s, "
                f"{row[str(n)]['dist_bytes_per_epoch']:.0f} B/epoch in collectives, whole run {wall:.1f} s")
        base = row[str(counts[0])]["epoch_s_median"]
        row["speedup"] = {str(n): base / row[str(n)]["epoch_s_median"] for n in counts}
    return out
