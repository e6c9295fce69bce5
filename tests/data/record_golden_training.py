"""Record the golden training numbers that ``tests/test_golden.py`` compares against bitwise.

    python tests/data/record_golden_training.py   # writes tests/data/golden_training.npz

Every algorithm registered when the goldens were recorded, 2 epochs of 8 environments on pendulum2d-stop (seed 0, float64 so
that summation-order noise cannot hide behind float32 round-off): the per-epoch training metrics,
the final test-bed evaluation and the final policy parameters and buffers. torch runs with
:data:`TORCH_THREADS` intra-op threads (the 2-core VM's default when recorded): torch's reductions
depend on the thread count, so recording and comparing pin it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ALGOS = ("pods2", "pods1", "bptt", "zobg", "fobg", "aobg")
TORCH_THREADS = 2
SETTINGS = dict(env="pendulum2d-stop", num_envs=8, epochs=2, seed=0, dtype="float64", eval_every=0, usd_envs=0)
#: algorithm fields that keep the run small (per algorithm family)
SMALL = {"pods2": dict(regression_steps=5, regression_batch=64, chunk=8),
         "pods1": dict(regression_steps=5, regression_batch=64, chunk=8),
         "bptt": {}, "zobg": dict(samples=2), "fobg": dict(samples=2), "aobg": dict(samples=2)}


def record_one(algo: str) -> dict[str, np.ndarray]:
    from warpsim_rl.algos import RunConfig, algo_config
    from warpsim_rl.training import load_checkpoint, train

    import torch

    data = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with tempfile.TemporaryDirectory() as out:
            res = train(RunConfig(algo=algo, out=out, **SETTINGS), algo_config(algo, **SMALL[algo]), progress=False)
            ckpt = load_checkpoint(out)
    finally:
        torch.set_num_threads(threads)
    for key in ("reward", "terminal_kinetic_energy", "distance_to_target", "action_magnitude"):
        data[f"{algo}/eval/{key}"] = np.array(res[key])
    for key in sorted({k for h in ckpt["history"] for k in h}):
        if key.startswith("train/"):
            data[f"{algo}/history/{key}"] = np.array([h.get(key, np.nan) for h in ckpt["history"]], dtype=float)
    for name, val in ckpt["algorithm"]["modules"]["policy"].items():
        data[f"{algo}/policy/{name}"] = val.detach().cpu().numpy()
    return data


def record_all() -> dict[str, np.ndarray]:
    from record_golden import machine

    return {"_machine": np.array(machine()), **{k: v for algo in ALGOS for k, v in record_one(algo).items()}}


if __name__ == "__main__":
    path = Path(__file__).with_name("golden_training.npz")
    np.savez_compressed(path, **record_all())
    print(f"wrote {path}", file=sys.stderr)
