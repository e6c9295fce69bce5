"""Training comparison: ``python -m warpsim_rl.bench compare`` trains several algorithms over
seeds at equal epochs and collects the test-bed learning curves (PODS Fig. 3 / Table 1 style)."""

from __future__ import annotations

import csv

import numpy as np

from .common import progress_bar

__all__ = ["compare"]


def compare(env: str, algos: list[str], seeds: list[int], epochs: int, num_envs: int, out: str,
            eval_every: int = 5, device="cpu", dtype="float32", png: str | None = None, progress=False) -> dict:
    """Train every algorithm with every seed at equal epochs (``train.py`` runs under ``out``) and
    collect the test-bed learning curves and final results; ``png``: the learning-curve figure
    (:func:`warpsim_rl.viz.curves.plot_compare`). ``progress``: a bar over the runs on stderr, with
    each run's own epoch bar below it."""
    from ..algos import RunConfig
    from ..training import train

    runs = []
    configs = [(algo, seed) for algo in algos for seed in seeds]
    with progress_bar(progress, len(configs), f"compare {env}", unit="run") as bar:
        for algo, seed in configs:
            bar.set_postfix_str(f"{algo} seed {seed}")
            run = RunConfig(env=env, algo=algo, seed=seed, epochs=epochs, num_envs=num_envs,
                            eval_every=eval_every, device=device, dtype=dtype, usd_envs=0,
                            out=f"{out}/{env}-{algo}-s{seed}")
            # each algorithm with its registered defaults; re-running the comparison replaces its runs
            res = train(run, progress=bool(progress), overwrite=True)
            with open(f"{run.out}/metrics.csv") as f:
                curve = [(int(r["epoch"]), float(r["eval/reward"])) for r in csv.DictReader(f) if r.get("eval/reward")]
            runs.append({"algo": algo, "seed": seed, "results": res, "curve": curve})
            bar.update()
    summary = {}
    for algo in algos:
        final = np.array([r["results"]["reward"] for r in runs if r["algo"] == algo])
        summary[algo] = {"final_reward_mean": float(final.mean()), "final_reward_std": float(final.std()),
                         "final_reward_per_seed": final.tolist(),
                         "train_time_s_mean": float(np.mean([r["results"]["train_time_s"] for r in runs
                                                             if r["algo"] == algo]))}
        for key in ("terminal_kinetic_energy", "distance_to_target", "action_magnitude"):
            summary[algo][key + "_mean"] = float(np.mean([r["results"][key] for r in runs if r["algo"] == algo]))
    if png:
        from ..viz.curves import plot_compare

        plot_compare(env, algos, runs, png)
    return {"benchmark": "compare", "env": env, "epochs": epochs, "num_envs": num_envs, "seeds": seeds,
            "device": device, "dtype": dtype, "summary": summary, "runs": runs}
