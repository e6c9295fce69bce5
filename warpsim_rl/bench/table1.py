"""PODS Table 1 on our tasks: ``python -m warpsim_rl.bench table1``.

Rows (:data:`ROWS`) are the paper's eight systems × tasks plus the cloth laid on the table;
columns (:data:`COLUMNS`) are PODS 500 and PODS 4000 (``k`` rollouts per epoch, PODS Sec. 4),
SAC, PPO, BPTT, DDPG and every other registered algorithm under its own name, each with its
registry defaults and the fixed column settings below — the same for every row, as the paper kept
its hyper-parameters. Cells are run by :func:`warpsim_rl.bench.grid.run_grid`: one
``train.py`` run per row × column × seed under the same training budget (by default 300 s of the
cell's CPU time), cached, resumable, with a cell whose first epoch exceeds the budget reported as
such (see that module). :func:`report` turns the
cache into the markdown table, the claims checked row by row, and one reward-vs-time figure per
row.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..usd import atomic_write
from .grid import host_spread, hosts_text, plot_row, reach_bracket, run_grid, stats, too_small

__all__ = ["ROWS", "COLUMNS", "PAPER", "columns", "table1", "report", "claims_markdown"]

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


def table1(rows=None, cols=None, seeds=(0, 1), budget_s: float = 300.0, jobs: int = 1, cache: str | None = None,
           runs_dir: str | None = None, progress: bool = True, clock: str = "cpu", rerun=(),
           rerun_reason: str | None = None) -> dict:
    """Run the missing cells of ``rows`` × ``cols`` × ``seeds`` (names of :data:`ROWS` and
    :func:`columns`; default all) into the JSON ``cache`` (default ``runs/table1.json``), as
    :func:`~warpsim_rl.bench.grid.run_grid` does. Returns the cache."""
    return run_grid("table1", {r: (env, ()) for r, env in ROWS.items()}, columns(), rows, cols, seeds, budget_s, jobs,
                    cache or "runs/table1.json", runs_dir, progress, clock, slugs=ROWS, rerun=rerun,
                    rerun_reason=rerun_reason)


# -- the report -------------------------------------------------------------------------------------

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
                cell_txt.append(too_small(group))
            else:
                mean, std = stats(ok, "reward")
                final[col] = (mean, ok)
                cell_txt.append(f"{mean:.2f} ± {std:.2f} ({len(ok)})")
        lines.append(f"| {row} | " + " | ".join(cell_txt) + " |")
        checks.append(_claims(row, final))
        if images:
            figures.append(plot_row(f"{row} ({ROWS[row]})", {col: by.get((row, col), []) for col in cols},
                                    str(Path(images) / f"table1_{ROWS[row]}.png")))
    hosts = host_spread(cells)
    return {"table": "\n".join(lines), "claims": checks, "claims_table": claims_markdown(checks, cols),
            "figures": figures, "hosts": hosts, "hosts_text": hosts_text(hosts)}


def _number(x) -> str:
    """A claims-table number: ``—`` for none, 2 significant digits below 10, whole numbers above."""
    if x is None:
        return "—"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2g}"


def _bound(x: float, up: bool) -> str:
    """``x`` to 2 significant digits below 10 (whole numbers above), rounded outwards: down for a
    lower bound, up for an upper one, so the printed bracket still holds the computed one."""
    digits = 0 if x >= 10 or x <= 0 else 1 - math.floor(math.log10(x))  # decimals for 2 significant digits
    scaled = x * 10 ** digits
    value = (math.ceil(scaled) if up else math.floor(scaled)) / 10 ** digits
    return f"{value:.{digits}f}"


def _speedup_text(bracket: dict | None) -> str:
    """``lo–hi``, ``≥ lo`` (unbounded above) or ``—`` (undefined), rounded outwards."""
    if bracket is None:
        return "—"
    lo, hi = bracket["at_least"], bracket["at_most"]
    return f"≥ {_bound(lo, False)}" if hi is None else f"{_bound(lo, False)}–{_bound(hi, True)}"


def claims_markdown(checks: list, cols: list) -> str:
    """The claims table of :func:`report`: per row PODS ≥ SAC, SAC > PPO, the training times to
    SAC's final reward (s of the budget's clock, each column's first evaluation there), PODS'
    speed-up over SAC as the bracket its evaluations allow (:func:`_claims`), whether PODS is
    ≥ 10× sooner (True / False / ``?``, as :func:`_claims` decides), and the terminal kinetic
    energy of every column (J); ``—`` where a column or the quantity is missing."""
    pods_cols = [c for c in cols if c.startswith("PODS")]
    lines = ["| row | PODS ≥ SAC | SAC > PPO | time to SAC's final: " + " / ".join(["SAC"] + pods_cols)
             + " | speedup vs SAC: " + " / ".join(pods_cols) + " | PODS ≥ 10× sooner | terminal KE (J): "
             + " / ".join(cols) + " |", "|---|---|---|---|---|---|---|"]
    for c in checks:
        times, speed = c.get("time_to_sac_final_s", {}), c.get("speedup_vs_sac", {})
        ke = c["terminal_kinetic_energy"]
        lines.append(
            f"| {c['row']} | {c.get('pods_ge_sac', '—')} | {c.get('sac_gt_ppo', '—')} | "
            + " / ".join(_number(times.get(k)) for k in ["SAC"] + pods_cols) + " | "
            + " / ".join(_speedup_text(speed.get(k)) for k in pods_cols) + " | "
            + str(c.get("pods_10x_sooner", "—")) + " | "
            + " / ".join(_number(ke.get(k)) for k in cols) + " |")
    return "\n".join(lines)


def _claims(row: str, final: dict) -> dict:
    """PODS >= SAC > PPO in reward (the better PODS column, means over seeds), and each PODS
    column's training time to reach SAC's final reward against SAC's own time to its final level,
    seed by seed: a column's seed ``s`` is timed against SAC's seed ``s`` (the same initial actor);
    against the mean over seeds instead, SAC's worse seed would never reach its own target.

    Evaluations are discrete, so each time is only known to lie between the evaluation before the
    first one at the level and that one (:func:`~warpsim_rl.bench.grid.reach_bracket`). The
    speed-up is bracketed accordingly, over the seeds both have: at least SAC's mean earliest time
    over the column's mean latest, at most SAC's mean latest over the column's mean earliest
    (``at_most`` ``None``: unbounded, the column was there at its first evaluation). It is
    ``None`` where a seed never reached the level, where SAC's mean time is 0 (SAC ended at or
    below its first evaluation: it never improved, and there is nothing to be faster at), or where
    the column's is 0 (its untrained policy was there already). A SAC seed that never improved
    counts 0 for SAC and for the column on that seed.
    ``pods_10x_sooner``: True if a PODS column's speed-up is at least 10, False if every defined
    one is below 10, ``"?"`` otherwise (``"—"``: none is defined)."""
    out = {"row": row}
    pods = {k: v for k, v in final.items() if k.startswith("PODS")}
    if pods and "SAC" in final:
        best = max(pods, key=lambda k: pods[k][0])
        out["best_pods"] = best
        out["pods_ge_sac"] = pods[best][0] >= final["SAC"][0]
        sac = {c["seed"]: c for c in final["SAC"][1]}
        sac_time = {seed: reach_bracket(c, c["reward"]) for seed, c in sac.items()}
        reach, speedup = {"SAC": list(sac_time.values())}, {}
        for col, v in pods.items():
            paired = [c for c in v[1] if c["seed"] in sac]
            reach[col] = [reach_bracket(c, sac[c["seed"]]["reward"]) for c in paired]
            t_sac = [sac_time[c["seed"]] for c in paired]  # SAC's times on the same seeds
            speedup[col] = None
            if paired and all(x is not None for x in reach[col] + t_sac):
                (sac_lo, sac_hi), (col_lo, col_hi) = np.mean(t_sac, axis=0), np.mean(reach[col], axis=0)
                if sac_hi > 0 and col_hi > 0:  # SAC improved; the column's untrained policy was not there yet
                    speedup[col] = {"at_least": float(sac_lo / col_hi),
                                    "at_most": float(sac_hi / col_lo) if col_lo > 0 else None}
        out["time_to_sac_final_s"] = {col: float(np.mean([x[1] for x in t])) if t and all(x is not None for x in t)
                                      else None for col, t in reach.items()}
        out["speedup_vs_sac"] = speedup
        known = [b for b in speedup.values() if b is not None]
        if not known:
            out["pods_10x_sooner"] = "—"
        elif any(b["at_least"] >= 10 for b in known):
            out["pods_10x_sooner"] = True
        elif all(b["at_most"] is not None and b["at_most"] < 10 for b in known):
            out["pods_10x_sooner"] = False
        else:
            out["pods_10x_sooner"] = "?"
    if "SAC" in final and "PPO" in final:
        out["sac_gt_ppo"] = final["SAC"][0] > final["PPO"][0]
    for key in ("terminal_kinetic_energy", "distance_to_target"):
        out[key] = {col: stats(v[1], key)[0] for col, v in final.items()}
    return out


def from_args(args) -> dict:
    """The ``table1`` subcommand."""
    if args.quick:
        rows, cols, seeds, budget, jobs = ["2D Pendulum"], args.columns or ["PODS 500", "PPO"], [0], 4.0, 1
    else:
        rows, cols, seeds, budget, jobs = args.rows, args.columns, args.seeds, args.budget_s, args.jobs
    cache = args.resume or args.cache or ("runs/table1-quick.json" if args.quick else "runs/table1.json")
    if args.resume and not Path(args.resume).exists():
        raise ValueError(f"resume = {args.resume!r}: no such cache file")
    data = table1(rows, cols, seeds, budget, jobs, cache, progress=not args.quiet, clock=args.clock,
                  rerun=args.rerun or (), rerun_reason=args.rerun_reason) \
        if not args.report_only else \
        json.loads(Path(cache).read_text())
    images = args.images or (None if args.quick else "docs/images")  # a smoke run leaves the docs' figures alone
    rep = report(data, None if args.no_figures else images)
    if args.markdown:
        text = rep["table"] + "\n\n" + rep["claims_table"] + "\n\n" + rep["hosts_text"] + "\n"
        atomic_write(Path(args.markdown), lambda tmp: Path(tmp).write_text(text))
    if not args.quiet:
        print(rep["table"], file=sys.stderr)
    return {"benchmark": "table1", "cache": cache, **rep}


def add_arguments(p) -> None:
    p.add_argument("--rows", nargs="+", default=None, help=f"rows (default all): {list(ROWS)}")
    p.add_argument("--columns", nargs="+", default=None,
                   help="columns (default all: the paper's, then every other registered algorithm)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--budget-s", type=float, default=300.0, help="training budget per cell in seconds of --clock (default 300)")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="clock of the budget: each cell's CPU time (default: equal compute on a shared machine) "
                        "or wall time")
    p.add_argument("--jobs", type=int, default=1, help="cells side by side, one per core (default 1)")
    p.add_argument("--cache", default=None,
                   help="cache of finished cells (default runs/table1.json; with --quick runs/table1-quick.json)")
    p.add_argument("--resume", default=None, metavar="FILE", help="continue the table cached in FILE")
    p.add_argument("--rerun", nargs="+", default=None, metavar="COLUMN",
                   help="run these columns' cached cells again from scratch (the old ones are kept in the cache's "
                        "'superseded' list); needs --rerun-reason")
    p.add_argument("--rerun-reason", default=None, help="why --rerun's cells are run again (stored with them)")
    p.add_argument("--quick", action="store_true", help="CI smoke: one row, one seed, 4 s budget")
    p.add_argument("--report-only", action="store_true", help="report the cache without running cells")
    p.add_argument("--images", default=None,
                   help="folder of the per-row figures (default docs/images; with --quick none unless given)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--markdown", default=None,
                   help="also write the markdown of the table and of the claims to this file")
