"""PODS Table 1 on our tasks: ``python -m warpsim_rl.bench table1``.

Rows (:data:`ROWS`) are the paper's eight systems × tasks plus the cloth laid on the table;
columns (:data:`COLUMNS`) are PODS 500 and PODS 4000 (``k`` rollouts per epoch, PODS Sec. 4),
SAC, PPO, BPTT, DDPG and every other registered algorithm under its own name, each with its
registry defaults and the fixed column settings below — the same for every row, as the paper kept
its hyper-parameters. A cell is one ``train.py`` run (:func:`warpsim_rl.training.train`) of one
column on one row with one seed under the same training budget (``budget_s`` seconds, evaluation
excluded; by default of the cell's CPU time, ``clock="cpu"``, so that cells sharing a busy
machine still get equal compute — on an idle core it equals the wall time), on one CPU thread, evaluated on the row's 1000-state test bed at
``budget_s / 10`` intervals and at the end; its learning curve is recorded against training time
and against env steps.

Cells run in subprocesses, ``jobs`` side by side (one per core). Every finished cell is written
to the cache (a JSON file, atomically) and never re-run (a cell that raised is recorded as
``status = "error"`` and run again by the next call): ``--resume FILE`` continues a table over
several sittings, and a cell that was stopped mid-way (Ctrl-C, a killed process) resumes from its
run folder's checkpoint. A cell whose first epoch alone is longer than the budget is recorded with
``status = "budget_too_small"`` and reported as such, not as a result. :func:`report` turns the
cache into the markdown table, the claims checked row by row, and one reward-vs-time figure per
row.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..usd import atomic_write
from .common import git_revision, machine_info, stderr_log

__all__ = ["ROWS", "COLUMNS", "PAPER", "columns", "table1", "report"]

#: row name -> task (the paper's eight, then the cloth of PODS Sec. 4.2)
ROWS = {
    "2D Pendulum": "pendulum2d-stop",
    "3D Pendulum": "pendulum3d-stop",
    "3D Double Pendulum": "double_pendulum3d-stop",
    "2D Pendulum Stop Origin": "pendulum2d-stop-origin",
    "3D Pendulum Stop Origin": "pendulum3d-stop-origin",
    "3D Double Pendulum Stop Origin": "double_pendulum3d-stop-origin",
    "Cable driven payload": "cable_payload2d-stop",
    "Discrete rope": "rope3d-stop",
    "Cloth on the table": "cloth_table-place",
}

#: column -> (algorithm, run settings); algorithms not named here join as ``name -> (name, {})``.
#: The baselines' env counts come from the tuning sweep on pendulum2d-stop (docs/results.md)
COLUMNS = {
    "PODS 500": ("pods2", {"num_envs": 500}),
    "PODS 4000": ("pods2", {"num_envs": 4000}),
    "SAC": ("sac", {"num_envs": 16}),
    "PPO": ("ppo", {"num_envs": 64}),
    "BPTT": ("bptt", {"num_envs": 256}),
    "DDPG": ("ddpg", {"num_envs": 64}),
    "D3PG": ("d3pg", {"num_envs": 64}),  # DDPG plus the simulator's gradients: the DDPG column's env count
}

#: PODS Table 1 (Mora et al. 2021): row -> {column: (reward, compute hours)}; GPS is not ours
PAPER = {
    "2D Pendulum": {"PODS 500": (-17, 0.11), "PODS 4000": (-18, 0.15), "SAC": (-20, 4.8), "PPO": (-48, 1.1),
                    "GPS": (-37, 0.6)},
    "3D Pendulum": {"PODS 500": (-39, 0.22), "PODS 4000": (-44, 0.23), "SAC": (-45, 4.9), "PPO": (-199, 1.1),
                    "GPS": (-193, 1.07)},
    "3D Double Pendulum": {"PODS 500": (-180, 0.74), "PODS 4000": (-185, 0.57), "SAC": (-213, 10.9),
                           "PPO": (-470, 2.9), "GPS": (-365, 2.2)},
    "2D Pendulum Stop Origin": {"PODS 500": (-183, 0.11), "PODS 4000": (-184, 0.75), "SAC": (-191, 4.8),
                                "PPO": (-395, 1.2), "GPS": (-218, 0.6)},
    "3D Pendulum Stop Origin": {"PODS 500": (-291, 0.20), "PODS 4000": (-331, 0.24), "SAC": (-315, 4.9),
                                "PPO": (-997, 1.2), "GPS": (-546, 0.8)},
    "3D Double Pendulum Stop Origin": {"PODS 500": (-732, 1.01), "PODS 4000": (-737, 0.99), "SAC": (-836, 9.7),
                                       "PPO": (-2310, 2.9), "GPS": (-845, 2.9)},
    "Cable driven payload": {"PODS 500": (-13, 0.7), "PODS 4000": (-11, 0.5), "SAC": (-14, 8.2), "PPO": (-50, 2.5),
                             "GPS": (-13, 4.4)},
    "Discrete rope": {"PODS 500": (-3023, 1.77), "PODS 4000": (-2928, 1.34), "SAC": (-3030, 13.6),
                      "PPO": (-7730, 3.4), "GPS": (-2975, 6.4)},
}


def columns() -> dict[str, tuple[str, dict]]:
    """:data:`COLUMNS` followed by every other registered algorithm (its defaults)."""
    from ..algos import ALGORITHMS

    used = {algo for algo, _ in COLUMNS.values()}
    return {**COLUMNS, **{name: (name, {}) for name in ALGORITHMS if name not in used}}


def _check(names, valid, what: str) -> list[str]:
    names = list(valid) if names is None else list(names)
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"{what} {bad}: unknown; valid {what}s: {list(valid)}")
    return names


def cell_key(row: str, column: str, seed: int) -> str:
    return f"{row} | {column} | seed {seed}"


def _saved_config(folder: Path) -> dict | None:
    """The configuration of the run checkpointed in ``folder`` (``None``: no readable checkpoint)."""
    if not (folder / "checkpoint.pt").is_file():
        return None
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def run_cell(row: str, column: str, seed: int, budget_s: float, folder: str, clock: str = "cpu") -> dict:
    """One cell (see the module doc); returns its summary for the cache. A cell interrupted
    earlier (its ``folder`` holds a checkpoint of exactly this run) is resumed from that checkpoint
    — exactly, budget spent included — instead of started again."""
    import dataclasses

    import torch

    from ..algos import RunConfig, algo_config
    from ..training import train

    torch.set_num_threads(1)
    algo, settings = columns()[column]
    run = RunConfig(env=ROWS[row], algo=algo, seed=seed, epochs=1_000_000, budget_s=budget_s, budget_clock=clock,
                    eval_every=0, eval_every_s=budget_s / 10, usd_envs=0, threads=1, out=folder, **settings)
    config = {"run": dataclasses.asdict(run), "algo": dataclasses.asdict(algo_config(algo))}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    if _saved_config(Path(folder)) == json.loads(json.dumps(config)):
        res = train(run, resume=folder, progress=False)
    else:
        res = train(run, progress=False, overwrite=True)
    status = "ok" if res["first_epoch_s"] is not None and res["first_epoch_s"] <= budget_s else "budget_too_small"
    keep = ("reward", "reward_std", "terminal_kinetic_energy", "distance_to_target", "action_magnitude", "diverged",
            "epochs", "train_time_s", "first_epoch_s", "resumed_from_epoch")
    return {"row": row, "column": column, "algo": algo, "seed": seed, "budget_s": budget_s, "budget_clock": clock,
            "status": status, "revision": git_revision(),  # the code this cell ran (the cache's own file makes it -dirty)
            "settings": settings, "wall_s": time.perf_counter() - t0, "untrained_reward": res["untrained"]["reward"],
            "load_average": [load0, os.getloadavg()[0]],  # 1-minute load at start and end: the cores' contention
            **{k: res[k] for k in keep}, "curve": res["curve"]}


def _cached(cell: dict | None, budget_s: float, clock: str) -> bool:
    """Whether ``cell`` (from the cache) is a result of this budget and clock: an ``"error"`` cell
    is not (it is run again)."""
    return cell is not None and cell.get("status") != "error" and \
        (cell.get("budget_s"), cell.get("budget_clock")) == (budget_s, clock)


def _write_cache(path: Path, cache: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(cache, indent=1)))


def table1(rows=None, cols=None, seeds=(0, 1), budget_s: float = 300.0, jobs: int = 1, cache: str | None = None,
           runs_dir: str | None = None, progress: bool = True, clock: str = "cpu") -> dict:
    """Run the missing cells of ``rows`` × ``cols`` × ``seeds`` (names of :data:`ROWS` and
    :func:`columns`; default all) into the JSON ``cache`` (created if missing; cells already in it
    with the same budget and clock are kept), ``jobs`` at a time, each under ``budget_s`` seconds
    of ``clock`` ('cpu': the cell's CPU time, so cells that share the machine's cores with other
    work still get equal compute; 'wall': elapsed time). Each cell's run folder (checkpoint, logs)
    goes under ``runs_dir`` (default ``runs/<cache stem>``). Returns the cache."""
    rows = _check(rows, ROWS, "row")
    cols = _check(cols, columns(), "column")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s = {budget_s!r}: must be a positive number of seconds")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs = {jobs!r}: must be an integer >= 1")
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock = {clock!r}: must be 'cpu' or 'wall'")
    path = Path(cache or "runs/table1.json")
    data = json.loads(path.read_text()) if path.exists() else {}
    cells = data.setdefault("cells", {})
    data.setdefault("machine", {**machine_info(), "cpus": os.cpu_count()})
    data["revision"] = git_revision()
    folder = Path(runs_dir or Path("runs") / path.stem)  # the cells' run folders (checkpoints, logs): not the cache's
    todo = [(r, c, s) for s in seeds for r in rows for c in cols if not _cached(cells.get(cell_key(r, c, s)),
                                                                                  budget_s, clock)]
    log = stderr_log(progress)
    log(f"table1: {len(todo)} cells to run ({len(rows) * len(cols) * len(seeds) - len(todo)} cached in {path}), "
        f"budget {budget_s:g} s of {clock} time each, {jobs} at a time")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_cache(path, data)
    t_start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_cell, r, c, s, budget_s, str(folder / f"{ROWS[r]}-{c.replace(' ', '')}-s{s}"),
                               clock):
                   (r, c, s) for r, c, s in todo}
        try:
            for done, fut in enumerate(cf.as_completed(futures), 1):
                r, c, s = futures[fut]
                try:
                    cells[cell_key(r, c, s)] = fut.result()
                except cf.process.BrokenProcessPool:
                    # a worker was killed from outside (the machine, a session's end): not the cell's
                    # result; the unfinished cells stay out of the cache and resume from their checkpoints
                    raise RuntimeError(f"table1: a cell's process was killed ({r} | {c} | seed {s}); finished "
                                       f"cells are in {path}; continue with `python -m warpsim_rl.bench table1 "
                                       f"--resume {path} ...` (same options): the unfinished cells resume from "
                                       f"their checkpoints") from None
                except Exception as e:  # noqa: BLE001 - a failed cell is recorded, the table goes on
                    cells[cell_key(r, c, s)] = {"row": r, "column": c, "seed": s, "budget_s": budget_s,
                                                "budget_clock": clock, "status": "error",
                                                "error": f"{type(e).__name__}: {e}"}
                _write_cache(path, data)
                cell = cells[cell_key(r, c, s)]
                log(f"[{done}/{len(todo)}] {r} | {c} | seed {s}: {cell['status']}"
                    + (f", reward {cell['reward']:.2f} after {cell['epochs']} epochs" if "reward" in cell else "")
                    + f"  ({time.perf_counter() - t_start:.0f} s)")
        except KeyboardInterrupt:
            for fut in futures:
                fut.cancel()
            raise KeyboardInterrupt(f"table1 interrupted; finished cells are in {path}; continue with "
                                    f"`python -m warpsim_rl.bench table1 --resume {path} ...` (same options)") from None
    return data


# -- the report -------------------------------------------------------------------------------------

def _clock_key(cell: dict) -> str:
    """The curve's time key of the cell's budget clock."""
    return "time/train_cpu_s" if cell.get("budget_clock") == "cpu" else "time/train_s"


def _first_reach(cell: dict, target: float) -> float | None:
    """Training time (s, the cell's budget clock) of its first evaluation at or above ``target``
    (``None``: never)."""
    for point in cell["curve"]:
        if "eval/reward" in point and point["eval/reward"] >= target:
            return point[_clock_key(cell)]
    return None


def _stats(cells: list[dict], key: str) -> tuple[float, float]:
    vals = np.array([c[key] for c in cells], dtype=float)
    return float(vals.mean()), float(vals.std())


def report(data: dict, images: str | None = "docs/images") -> dict:
    """The markdown of the table (mean ± std over seeds), the paper's numbers, and the claims
    checked per row; one figure per row in ``images`` (``table1_<task>.png``; ``None``: none)."""
    cells = [c for c in data["cells"].values()]
    rows = [r for r in ROWS if any(c["row"] == r for c in cells)]
    cols = [c for c in columns() if any(x["column"] == c for x in cells)]
    by = {}
    for c in cells:
        by.setdefault((c["row"], c["column"]), []).append(c)
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    checks, figures = [], []
    for row in rows:
        cell_txt = []
        final = {}
        for col in cols:
            group = by.get((row, col), [])
            ok = [c for c in group if c.get("status") == "ok"]
            if not group:
                cell_txt.append("–")
            elif not ok:
                first = [c.get("first_epoch_s") for c in group if c.get("first_epoch_s")]
                cell_txt.append(f"budget too small (1 epoch {min(first):.0f} s)" if first else
                                group[0].get("status", "?"))
            else:
                mean, std = _stats(ok, "reward")
                final[col] = (mean, ok)
                cell_txt.append(f"{mean:.2f} ± {std:.2f} ({len(ok)})")
        lines.append(f"| {row} | " + " | ".join(cell_txt) + " |")
        checks.append(_claims(row, final))
        if images:
            figures.append(_plot_row(row, {col: by.get((row, col), []) for col in cols}, images))
    return {"table": "\n".join(lines), "claims": checks, "figures": figures}


def _claims(row: str, final: dict) -> dict:
    """PODS >= SAC > PPO in reward (the better PODS column), and each PODS column's training time
    to reach SAC's final mean reward (mean over seeds; ``None``: a seed never reached it) against
    SAC's own (its first evaluation at its final level)."""
    out = {"row": row}
    pods = {k: v for k, v in final.items() if k.startswith("PODS")}
    if pods and "SAC" in final:
        best = max(pods, key=lambda k: pods[k][0])
        out["best_pods"] = best
        out["pods_ge_sac"] = pods[best][0] >= final["SAC"][0]
        target = final["SAC"][0]
        reach = {"SAC": [_first_reach(c, target) for c in final["SAC"][1]]}
        reach.update({col: [_first_reach(c, target) for c in v[1]] for col, v in pods.items()})
        out["time_to_sac_final_s"] = {col: float(np.mean(t)) if all(x is not None for x in t) else None
                                      for col, t in reach.items()}
        t_sac = out["time_to_sac_final_s"]["SAC"]
        out["speedup_vs_sac"] = {col: (t_sac / max(t, 1e-9) if t is not None and t_sac is not None else None)
                                 for col, t in out["time_to_sac_final_s"].items() if col != "SAC"}
    if "SAC" in final and "PPO" in final:
        out["sac_gt_ppo"] = final["SAC"][0] > final["PPO"][0]
    for key in ("terminal_kinetic_energy", "distance_to_target"):
        out[key] = {col: _stats(v[1], key)[0] for col, v in final.items()}
    return out


def _plot_row(row: str, groups: dict, images: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    clock = "wall"
    for col, group in groups.items():
        ok = [c for c in group if c.get("status") == "ok"]
        for i, c in enumerate(ok):
            pts = [(p[_clock_key(c)], p["eval/reward"]) for p in c["curve"] if "eval/reward" in p]
            clock = c.get("budget_clock", "wall")
            t, r = zip(*pts)
            ax.plot(t, r, color=f"C{list(groups).index(col)}", alpha=0.85, label=col if i == 0 else None)
    ax.set_xlabel(f"training time [s, {clock} clock] (evaluation excluded)")
    ax.set_ylabel("test-bed reward (1000 states)")
    ax.set_title(f"{row} ({ROWS[row]})")
    ax.set_yscale("symlog", linthresh=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(images).mkdir(parents=True, exist_ok=True)
    path = str(Path(images) / f"table1_{ROWS[row]}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def from_args(args) -> dict:
    """The ``table1`` subcommand."""
    if args.quick:
        rows, cols, seeds, budget, jobs = ["2D Pendulum"], args.columns or ["PODS 500", "PPO"], [0], 4.0, 1
    else:
        rows, cols, seeds, budget, jobs = args.rows, args.columns, args.seeds, args.budget_s, args.jobs
    cache = args.resume or args.cache or ("runs/table1-quick.json" if args.quick else "runs/table1.json")
    if args.resume and not Path(args.resume).exists():
        raise ValueError(f"resume = {args.resume!r}: no such cache file")
    data = table1(rows, cols, seeds, budget, jobs, cache, progress=not args.quiet, clock=args.clock) \
        if not args.report_only else \
        json.loads(Path(cache).read_text())
    images = args.images or (None if args.quick else "docs/images")  # a smoke run leaves the docs' figures alone
    rep = report(data, None if args.no_figures else images)
    if args.markdown:
        atomic_write(Path(args.markdown), lambda tmp: Path(tmp).write_text(rep["table"] + "\n"))
    if not args.quiet:
        print(rep["table"], file=sys.stderr)
    return {"benchmark": "table1", "cache": cache, **rep}


def add_arguments(p) -> None:
    p.add_argument("--rows", nargs="+", default=None, help=f"rows (default all): {list(ROWS)}")
    p.add_argument("--columns", nargs="+", default=None,
                   help="columns (default all: the paper's, then every other registered algorithm)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--budget-s", type=float, default=300.0, help="training budget per cell in seconds of --clock (default 300)")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="clock of the budget: each cell's CPU time (default: equal compute on a shared machine) "
                        "or wall time")
    p.add_argument("--jobs", type=int, default=1, help="cells side by side, one per core (default 1)")
    p.add_argument("--cache", default=None,
                   help="cache of finished cells (default runs/table1.json; with --quick runs/table1-quick.json)")
    p.add_argument("--resume", default=None, metavar="FILE", help="continue the table cached in FILE")
    p.add_argument("--quick", action="store_true", help="CI smoke: one row, one seed, 4 s budget")
    p.add_argument("--report-only", action="store_true", help="report the cache without running cells")
    p.add_argument("--images", default=None,
                   help="folder of the per-row figures (default docs/images; with --quick none unless given)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--markdown", default=None, help="also write the table's markdown to this file")
