"""The non-smooth study: ``python -m warpsim_rl.bench nonsmooth``.

Does the analytic gradient degrade as contact stiffens, and does AGPO's switch (docs/algorithms.md)
keep it from doing so? Rows (:data:`ROWS`): ``wall_pendulum2d-stop`` with the wall at 1e3, 1e5 and
1e6 N/m (``scene_params``) and ``cloth_table-place``; columns (:data:`COLUMNS`): AGPO, SHAC, BPTT,
PODS 2nd order and AoBG (Suh et al.'s alpha-order estimator), each with its registry defaults.
Every cell is a training run at equal budget, cached and resumable
(:func:`warpsim_rl.bench.grid.run_grid`, default 300 s of the cell's CPU time, seeds 0–2).

Beside the training table, :func:`gradient_variance` measures the mechanism directly: at each
seed's untrained actor (the same for every column), the spread of the analytic policy gradient of
the batch return over ``groups`` disjoint groups of environments, for the full horizon (BPTT's
objective) and for the first ``window`` steps (default 32, SHAC's ``horizon_window``; without the
critic's bootstrap, which is untrained there): ``var_rel = sum_i Var_groups(g_i) / |mean g|^2`` (the
variance of one group's estimate relative to the squared mean gradient; > 1: one group's estimate
is mostly noise). The estimators' own bias and variance on the same wall (ZoBG, FoBG, AoBG) are
``python -m warpsim_rl.bench estimators``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..usd import atomic_write
from .grid import check_names, host_spread, hosts_text, plot_row, run_grid, stats, too_small

__all__ = ["ROWS", "COLUMNS", "nonsmooth", "gradient_variance", "group_gradients", "report"]

#: row -> (task, scene parameter overrides)
ROWS = {
    "wall 1e3 N/m": ("wall_pendulum2d-stop", ("wall_stiffness=1e3",)),
    "wall 1e5 N/m": ("wall_pendulum2d-stop", ("wall_stiffness=1e5",)),
    "wall 1e6 N/m": ("wall_pendulum2d-stop", ("wall_stiffness=1e6",)),
    "cloth on the table": ("cloth_table-place", ()),
}

#: column -> (algorithm, run settings): the registry's defaults (256 envs), PODS with Table 1's 500
COLUMNS = {
    "AGPO": ("agpo", {}),
    "SHAC": ("shac", {}),
    "BPTT": ("bptt", {}),
    "PODS": ("pods2", {"num_envs": 500}),
    "AoBG": ("aobg", {}),
}

_SLUGS = {"wall 1e3 N/m": "wall1e3", "wall 1e5 N/m": "wall1e5", "wall 1e6 N/m": "wall1e6",
          "cloth on the table": "cloth"}


def nonsmooth(rows=None, cols=None, seeds=(0, 1, 2), budget_s: float = 300.0, jobs: int = 1,
              cache: str | None = None, runs_dir: str | None = None, progress: bool = True,
              clock: str = "cpu") -> dict:
    """Run the missing cells of the study into ``cache`` (default ``runs/nonsmooth.json``)."""
    return run_grid("nonsmooth", ROWS, COLUMNS, rows, cols, seeds, budget_s, jobs, cache or "runs/nonsmooth.json",
                    runs_dir, progress, clock, slugs=_SLUGS)


def gradient_variance(rows=None, seeds=(0, 1, 2), num_envs: int = 256, groups: int = 8, window: int = 32) -> list:
    """Per row and seed (module doc): ``var_rel`` of the full-horizon and of the ``window``-step
    analytic gradient over ``groups`` groups of ``num_envs // groups`` envs, at the untrained
    actor, float64; the envs whose Newton solve failed are left out (and counted)."""
    from ..algos import RunConfig, make_algorithm
    from ..training import _task_of

    rows = check_names(rows, ROWS, "row")
    if num_envs % groups:
        raise ValueError(f"num_envs = {num_envs}: must be a multiple of groups = {groups}")
    out = []
    for row in rows:
        env, params = ROWS[row]
        for seed in seeds:
            run = RunConfig(env=env, algo="bptt", seed=seed, num_envs=num_envs, dtype="float64", threads=1,
                            scene_params=params)
            task = _task_of(run)
            alg = make_algorithm(task, run)
            state0 = alg.initial_state()
            entry = {"row": row, "seed": seed, "num_envs": num_envs, "groups": groups}
            for name, horizon in (("full", task.horizon), ("window", min(window, task.horizon))):
                G, failed = group_gradients(alg, state0, horizon, groups)
                mean = G.mean(0)
                var = G.var(0, unbiased=True).sum()
                entry[name] = {"horizon": horizon, "var_rel": float(var / mean.square().sum().clamp_min(1e-300)),
                               "mean_norm": float(mean.norm()), "failed_envs": int(failed.sum())}
            out.append(entry)
    return out


def group_gradients(alg, state0, horizon: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, failed)``: row ``g`` of ``G`` (groups, parameters) is the gradient of the mean return
    over the ``g``-th contiguous group of envs (those that did not fail) of ``alg``'s policy,
    rolled out ``horizon`` steps from ``state0`` through the simulator's adjoints; ``failed`` (E,)."""
    traj = alg.core.rollout(alg.policy, state0, horizon, graph=True)
    ok = ~traj.failed
    params = list(alg.policy.parameters())
    E = ok.shape[0]
    rows = []
    for g in range(groups):
        sl = slice(g * E // groups, (g + 1) * E // groups)
        ret = (traj.returns[sl] * ok[sl]).sum() / ok[sl].sum().clamp_min(1)
        grad = torch.autograd.grad(ret, params, retain_graph=g + 1 < groups, allow_unused=True)
        rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                               for x, p in zip(grad, params)]))
    return torch.stack(rows), traj.failed


def report(data: dict, images: str | None = "docs/images") -> dict:
    """The markdown table (mean ± std over seeds), the stiffening check per column (reward at the
    stiffest wall minus at the softest), and one figure per row (``nonsmooth_<slug>.png``)."""
    cells = list(data["cells"].values())
    rows = [r for r in ROWS if any(c["row"] == r for c in cells)]
    cols = [c for c in COLUMNS if any(x["column"] == c for x in cells)]
    by = {}
    for c in cells:
        by.setdefault((c["row"], c["column"]), []).append(c)
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    means, figures = {}, []
    for row in rows:
        txt = []
        for col in cols:
            ok = [c for c in by.get((row, col), []) if c.get("status") == "ok"]
            group = by.get((row, col), [])
            if ok:
                mean, std = stats(ok, "reward")
                means[(row, col)] = mean
                txt.append(f"{mean:.2f} ± {std:.2f} ({len(ok)})")
            else:
                txt.append(too_small(group) if group else "–")
        lines.append(f"| {row} | " + " | ".join(txt) + " |")
        if images:
            figures.append(plot_row(f"{row} ({ROWS[row][0]})", {col: by.get((row, col), []) for col in cols},
                                    str(Path(images) / f"nonsmooth_{_SLUGS[row]}.png")))
    soft, stiff = "wall 1e3 N/m", "wall 1e6 N/m"
    stiffening = {col: means[(stiff, col)] - means[(soft, col)] for col in cols
                  if (soft, col) in means and (stiff, col) in means}
    hosts = host_spread(cells)
    return {"table": "\n".join(lines), "stiffening": stiffening, "figures": figures,
            "variance": data.get("variance"), "hosts": hosts, "hosts_text": hosts_text(hosts)}


def from_args(args) -> dict:
    """The ``nonsmooth`` subcommand."""
    cache = args.resume or args.cache or "runs/nonsmooth.json"
    if args.resume and not Path(args.resume).exists():
        raise ValueError(f"resume = {args.resume!r}: no such cache file")
    if args.report_only:
        data = json.loads(Path(cache).read_text())
    else:
        data = nonsmooth(args.rows, args.columns, args.seeds, args.budget_s, args.jobs, cache,
                         progress=not args.quiet, clock=args.clock)
        if not args.no_variance and data.get("variance") is None:
            data["variance"] = gradient_variance(args.rows, args.seeds)
            atomic_write(Path(cache), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
    rep = report(data, None if args.no_figures else (args.images or "docs/images"))
    if not args.quiet:
        print(rep["table"], file=sys.stderr)
    return {"benchmark": "nonsmooth", "cache": cache, **rep}


def add_arguments(p) -> None:
    p.add_argument("--rows", nargs="+", default=None, help=f"rows (default all): {list(ROWS)}")
    p.add_argument("--columns", nargs="+", default=None, help=f"columns (default all): {list(COLUMNS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget-s", type=float, default=300.0, help="training budget per cell in seconds of --clock")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"], help="clock of the budget (default cpu)")
    p.add_argument("--jobs", type=int, default=1, help="cells side by side, one per core (default 1)")
    p.add_argument("--cache", default=None, help="cache of finished cells (default runs/nonsmooth.json)")
    p.add_argument("--resume", default=None, metavar="FILE", help="continue the study cached in FILE")
    p.add_argument("--report-only", action="store_true", help="report the cache without running cells")
    p.add_argument("--no-variance", action="store_true", help="skip the gradient-variance measurement")
    p.add_argument("--images", default=None, help="folder of the per-row figures (default docs/images)")
    p.add_argument("--no-figures", action="store_true")
