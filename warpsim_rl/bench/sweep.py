"""Hyper-parameter sweep at a fixed training budget: ``python -m warpsim_rl.bench sweep``.

Trains one algorithm on one task for every point of a grid (``--grid name=v1,v2,...``,
repeatable; ``num_envs`` is a run setting, every other name an option of the algorithm's config)
under the same training budget, on one CPU thread, and reports the final test-bed reward of each
point, best first. This is how the baselines' table settings were chosen (docs/results.md).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import time

from .common import stderr_log

__all__ = ["sweep", "parse_grid"]


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["batch_size=256,1024", "noise_std=0.1,0.2"]`` -> ``{"batch_size": [256, 1024], ...}``
    (values parsed as Python literals, else kept as strings)."""
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"grid {item!r}: expected NAME=V1,V2,...")
        parsed = []
        for v in values.split(","):
            try:
                parsed.append(ast.literal_eval(v))
            except (ValueError, SyntaxError):
                parsed.append(v)
        grid[name] = parsed
    return grid


def sweep(env: str, algo: str, grid: dict[str, list], budget_s: float, seed: int = 0, out: str = "runs/sweep",
          progress: bool = True, clock: str = "wall") -> dict:
    """Train ``algo`` on ``env`` for every point of ``grid`` under ``budget_s`` seconds of
    training each (on ``clock``: 'wall' or 'cpu', :class:`~warpsim_rl.algos.RunConfig`'s
    ``budget_clock``); returns the points sorted by final test-bed reward (best first)."""
    import torch

    from ..algos import RunConfig, algo_config
    from ..training import train

    torch.set_num_threads(1)
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    log = stderr_log(progress)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    results = []
    for i, point in enumerate(points, 1):
        run_kw = {k: v for k, v in point.items() if k in run_fields}
        cfg = algo_config(algo, **{k: v for k, v in point.items() if k not in run_fields})
        tag = "-".join(f"{k}{v}" for k, v in point.items())
        run = RunConfig(env=env, algo=algo, seed=seed, epochs=1_000_000, budget_s=budget_s, budget_clock=clock,
                        eval_every=0, usd_envs=0, threads=1, out=f"{out}/{env}-{algo}-{tag}", **run_kw)
        t0 = time.perf_counter()
        res = train(run, cfg, progress=False, overwrite=True)
        results.append({"point": point, "reward": res["reward"], "reward_std": res["reward_std"],
                        "epochs": res["epochs"], "env_steps": res["curve"][-1].get("env_steps"),
                        "wall_s": time.perf_counter() - t0})
        log(f"[{i}/{len(points)}] {algo} {point}: reward {res['reward']:.2f} after {res['epochs']} epochs")
    results.sort(key=lambda r: -r["reward"])
    return {"benchmark": "sweep", "env": env, "algo": algo, "budget_s": budget_s, "budget_clock": clock, "seed": seed,
            "grid": grid,
            "results": results}


def add_arguments(p) -> None:
    p.add_argument("--env", default="pendulum2d-stop")
    p.add_argument("--algo", required=True)
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="values of a run setting (num_envs) or an algorithm option (repeatable)")
    p.add_argument("--budget-s", type=float, default=60.0, help="training budget per point (default 60)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="clock of the budget (default wall)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/sweep")
