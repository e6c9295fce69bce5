"""A grid of training runs at equal budget: rows (tasks) × columns (algorithms) × seeds.

The runner behind ``bench table1`` (PODS Table 1) and ``bench nonsmooth`` (the non-smooth
study). A *cell* is one ``train.py`` run (:func:`warpsim_rl.training.train`) of one column's
algorithm, with that column's fixed settings and the registry's defaults otherwise, on one row's
task (with the row's scene-parameter overrides), for one seed, under a training budget of
``budget_s`` seconds (evaluation excluded) — by default of the cell's CPU time
(``clock = "cpu"``), so that cells sharing a busy machine still get equal compute (on an idle core
it equals the wall time) — on one Warp thread and one torch thread, evaluated on the task's
1000-state test bed every ``budget_s / 10`` of training, at the finer early times
:data:`EARLY_EVALUATIONS` × ``budget_s`` and at the end; its learning curve is recorded against
training time and against env steps.

Cells run in subprocesses, ``jobs`` side by side (one per core). Every finished cell is written
to the cache (a JSON file, atomically) and never re-run (a cell that raised is recorded as
``status = "error"`` and run again by the next call); a cell that was stopped mid-way (Ctrl-C, a
killed process) resumes from its run folder's checkpoint. A cell whose first epoch alone is
longer than the budget is recorded with ``status = "budget_too_small"``, not as a result; one whose
first epoch is still running after twice the budget (plus a minute for the set-up) is stopped
there (:class:`FirstEpochWatchdog`) and recorded so, with ``first_epoch_over_s``.

A CPU-time budget is equal compute only on one kind of host. A cache grows over several sittings,
and a sitting may get a slower machine (2026-12-02: a VM 1.6-2.1x slower at the engine's steps
than the one of the earlier cells). So every cell records the speed of its host,
:func:`host_speed`, measured in its own process just before it trains, and :func:`host_spread`
names the cells whose host was more than 40 % slower or faster than the cache's median (above the
27 % that two processes on the two vCPUs of that VM cost each other).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from ..usd import atomic_write
from .common import git_revision, machine_info, stderr_log

__all__ = ["run_grid", "run_cell", "cell_pool", "FirstEpochWatchdog", "cell_key", "check_names", "clock_key",
           "reach_bracket", "stats", "too_small", "plot_row", "host_speed", "host_spread", "hosts_text"]


def check_names(names, valid, what: str) -> list[str]:
    """``names`` (default: all of ``valid``), each checked; ValueError listing the valid ones."""
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


#: fractions of the budget after which a cell is evaluated besides every tenth: 1/160 ... 1/20
#: (1.9, 3.8, 7.5 and 15 s of a 300-s budget), so that a method reaching a reward within the first
#: tenth is timed to within a factor of about 2 where its epochs are shorter than the spacing
#: (:func:`reach_bracket`), not just "by 30 s"
EARLY_EVALUATIONS = (1 / 160, 1 / 80, 1 / 40, 1 / 20)

#: seconds a cell may spend before its first epoch starts (set-up, the untrained policy's
#: evaluation) on top of the watchdog's twice the budget
SETUP_ALLOWANCE_S = 60.0


class FirstEpochWatchdog:
    """Stops a run whose first epoch alone overruns the budget, instead of letting it finish an
    epoch that may take many times the budget (a PODS epoch of 4000 cloth rollouts is about an hour
    of one core): once ``limit_s`` seconds of ``clock`` ('cpu': this process's CPU time, all
    threads; 'wall') have passed and no epoch has been written to ``metrics`` (the run's
    metrics.csv), it interrupts the main thread (as Ctrl-C: the run stops with
    :class:`~warpsim_rl.training.TrainingInterrupted`) and sets ``fired``. Checked every
    ``interval_s``; a context manager. A process started in the background (``cmd &``) inherits
    SIGINT ignored, and then Python's interrupt does nothing: inside the main thread the
    watchdog installs Python's own SIGINT handler for its duration (restoring the old one after),
    so it stops the run there too (before, a background Table 1 runner let a 4000-rollout cloth
    epoch run on for most of an hour)."""

    def __init__(self, metrics: Path, limit_s: float, clock: str = "cpu", interval_s: float = 2.0):
        import threading

        self.metrics, self.limit_s, self.interval_s = Path(metrics), float(limit_s), float(interval_s)
        self._now = time.process_time if clock == "cpu" else time.perf_counter
        self.fired = False
        self.spent_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="first-epoch-watchdog", daemon=True)

    def _watch(self) -> None:
        import _thread

        start = self._now()
        while not self._stop.wait(self.interval_s):
            if self.metrics.exists():
                return  # an epoch finished: the budget check of train() takes over
            self.spent_s = self._now() - start
            if self.spent_s > self.limit_s:
                self.fired = True
                _thread.interrupt_main()
                return

    def __enter__(self):
        import signal
        import threading

        self._restore = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            self._restore = signal.signal(signal.SIGINT, signal.default_int_handler)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import signal

        self._stop.set()
        self._thread.join()
        if self._restore is not None:
            signal.signal(signal.SIGINT, self._restore)
        return False


def host_speed() -> dict:
    """This process's speed, on one core, at the two kinds of work a cell does (about 1 s, not part
    of any budget): ``warp_env_steps_per_s``, BDF2 steps of 4096 pendulum2d envs on one launch
    thread (the median of 5 passes of 25 steps, :func:`warpsim_rl.bench.sim.throughput`), and
    ``torch_adam_steps_per_s``, Adam steps of a 64 x 64 MLP on 2048 samples (the actor's size and
    a typical minibatch) on one torch thread, the median of 5 passes of 10 steps. Both per second
    of wall time, which on a core of its own equals the CPU time."""
    import torch

    from .sim import throughput

    warp_rate = throughput("pendulum2d", 4096, steps=25, repeats=5, threads=1, device="cpu")["env_steps_per_s"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                  torch.nn.Linear(64, 2))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x, y = torch.randn(2048, 8, generator=gen), torch.randn(2048, 2, generator=gen)

        def steps(n):
            for _ in range(n):
                opt.zero_grad()
                (net(x) - y).square().mean().backward()
                opt.step()

        steps(2)  # warm-up
        passes = []
        for _ in range(5):
            t0 = time.perf_counter()
            steps(10)
            passes.append(10 / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    return {"warp_env_steps_per_s": float(warp_rate), "torch_adam_steps_per_s": float(np.median(passes))}


def host_spread(cells, tolerance: float = 0.4) -> dict:
    """Which of ``cells`` (cache entries) ran on a host of another speed than the others: for each
    :func:`host_speed` measure, the median over the cells that recorded one (``reference``), and
    the keys of the cells more than ``tolerance`` below it in either measure (``slower``) or above
    it (``faster``), each with its ratios to the reference, over the measures every measured cell
    has; ``unmeasured``: the cells run before cells recorded their host's speed."""
    cells = list(cells)
    measured = [c for c in cells if c.get("host_speed")]
    out = {"reference": None, "slower": {}, "faster": {}, "unmeasured": len(cells) - len(measured),
           "tolerance": tolerance}
    if not measured:
        return out
    keys = sorted(set.intersection(*(set(c["host_speed"]) for c in measured)))
    ref = {k: float(np.median([c["host_speed"][k] for c in measured])) for k in keys}
    out["reference"] = ref
    for c in measured:
        ratio = {k: c["host_speed"][k] / ref[k] for k in keys}
        name = cell_key(c["row"], c["column"], c["seed"])
        if min(ratio.values()) < 1 - tolerance:
            out["slower"][name] = ratio
        elif max(ratio.values()) > 1 + tolerance:
            out["faster"][name] = ratio
    return out


def hosts_text(spread: dict) -> str:
    """One paragraph of markdown on :func:`host_spread`'s result, for a report."""
    if spread["reference"] is None:
        return f"Hosts: none of the {spread['unmeasured']} cells recorded its host's speed."
    ref = spread["reference"]
    warp_rate, adam_rate = (ref.get(k, float("nan")) for k in ("warp_env_steps_per_s", "torch_adam_steps_per_s"))
    parts = [f"Hosts: the median cell's host ran {warp_rate / 1e6:.2f} M pendulum2d env-steps/s and "
             f"{adam_rate:.0f} Adam steps/s on one core."]
    for side in ("slower", "faster"):
        if spread[side]:
            parts.append(f"{len(spread[side])} cells ran on a host more than {spread['tolerance']:.0%} {side}: "
                         + "; ".join(f"{k} ({min(r.values()) if side == 'slower' else max(r.values()):.2f}×)"
                                     for k, r in sorted(spread[side].items())) + ".")
    if spread["unmeasured"]:
        parts.append(f"{spread['unmeasured']} cells ran before cells recorded their host's speed.")
    return " ".join(parts)


def run_cell(row: str, env: str, scene_params: tuple, column: str, algo: str, settings: dict, seed: int,
             budget_s: float, folder: str, clock: str = "cpu") -> dict:
    """One cell (module doc): ``algo`` with ``settings`` on ``env`` with the scene overrides
    ``scene_params`` (``NAME=VALUE`` strings); returns its summary for the cache. A cell
    interrupted earlier (its ``folder`` holds a checkpoint of exactly this run) is resumed from that
    checkpoint — exactly, budget spent included — instead of started again."""
    import dataclasses

    import torch

    from ..algos import RunConfig, algo_config
    from ..training import TrainingInterrupted, train

    torch.set_num_threads(1)
    run = RunConfig(env=env, algo=algo, seed=seed, epochs=1_000_000, budget_s=budget_s, budget_clock=clock,
                    eval_every=0, eval_every_s=budget_s / 10,
                    eval_at_s=tuple(budget_s * f for f in EARLY_EVALUATIONS), usd_envs=0, threads=1, out=folder,
                    scene_params=tuple(scene_params), **settings)
    config = {"run": dataclasses.asdict(run), "algo": dataclasses.asdict(algo_config(algo))}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    head = {"row": row, "column": column, "algo": algo, "seed": seed, "budget_s": budget_s, "budget_clock": clock,
            "revision": git_revision(),  # the code this cell ran (the cache's own file makes it -dirty)
            "settings": settings,
            "algo_config": json.loads(json.dumps(config["algo"])),  # every option, as the cache stores it
            "host_speed": host_speed()}
    if _saved_config(Path(folder)) == json.loads(json.dumps(config)):
        res = train(run, resume=folder, progress=False)
    else:
        with FirstEpochWatchdog(Path(folder) / "metrics.csv", 2 * budget_s + SETUP_ALLOWANCE_S, clock) as watchdog:
            try:
                res = train(run, progress=False, overwrite=True)
            except TrainingInterrupted:
                if not watchdog.fired:
                    raise
                return {**head, "status": "budget_too_small", "first_epoch_s": None,
                        "first_epoch_over_s": watchdog.spent_s, "wall_s": time.perf_counter() - t0,
                        "load_average": [load0, os.getloadavg()[0]]}
    status = "ok" if res["first_epoch_s"] is not None and res["first_epoch_s"] <= budget_s else "budget_too_small"
    keep = ("reward", "reward_std", "terminal_kinetic_energy", "distance_to_target", "action_magnitude", "diverged",
            "epochs", "train_time_s", "first_epoch_s", "resumed_from_epoch")
    return {**head, "status": status, "wall_s": time.perf_counter() - t0,
            "untrained_reward": res["untrained"]["reward"],
            "load_average": [load0, os.getloadavg()[0]],  # 1-minute load at start and end: the cores' contention
            **{k: res[k] for k in keep}, "curve": res["curve"]}


def cell_pool(jobs: int) -> cf.ProcessPoolExecutor:
    """The worker processes of the cells: ``jobs`` spawned processes that end with this one
    (:func:`end_with_parent`). The kernel signals a worker when the *thread* that started it ends;
    ``concurrent.futures`` starts the workers in ``submit``, so submit from a thread that outlives
    the pool (``run_grid`` submits from its own)."""
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=end_with_parent,
                                  initargs=(os.getpid(),))


def end_with_parent(parent: int) -> None:
    """Initializer of a cell's worker process: end it when the grid's process ``parent`` ends.

    A runner killed from outside (``kill``, a session's end) used to leave its cells running as
    orphans, which went on writing into their run folders while a new runner resumed the same
    cells there. On Linux the kernel now sends the worker SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``), and a worker whose parent died before that took effect exits.
    A cell writes its files atomically, so the killed cell resumes from its last checkpoint."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
            import warnings

            warnings.warn(f"prctl(PR_SET_PDEATHSIG) failed (errno {ctypes.get_errno()}): this cell's process "
                          f"may outlive its runner", RuntimeWarning, stacklevel=1)
    if os.getppid() != parent:
        os._exit(1)


def _cached(cell: dict | None, budget_s: float, clock: str) -> bool:
    """Whether ``cell`` (from the cache) is a result of this budget and clock: an ``"error"`` cell
    is not (it is run again)."""
    return cell is not None and cell.get("status") != "error" and \
        (cell.get("budget_s"), cell.get("budget_clock")) == (budget_s, clock)


def _write_cache(path: Path, cache: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(cache, indent=1)))


def run_grid(name: str, rows: dict, cols: dict, row_names=None, col_names=None, seeds=(0, 1),
             budget_s: float = 300.0, jobs: int = 1, cache: str = "runs/grid.json", runs_dir: str | None = None,
             progress: bool = True, clock: str = "cpu", slugs: dict | None = None, rerun=(),
             rerun_reason: str | None = None) -> dict:
    """Run the missing cells of ``row_names`` × ``col_names`` × ``seeds`` (default: every row of
    ``rows``, name -> ``(env, scene_params)``, and every column of ``cols``, name -> ``(algo,
    settings)``) into the JSON ``cache`` (created if missing; cells already in it with the same
    budget and clock are kept), ``jobs`` at a time, each under ``budget_s`` seconds of ``clock``
    ('cpu' or 'wall'). Each cell's run folder (checkpoint, logs) is
    ``<runs_dir>/<slug>-<column>-s<seed>`` (``runs_dir`` default ``runs/<cache stem>``, the slug
    ``slugs[row]`` or the row name). ``name`` is the benchmark's, for messages.

    ``rerun``: columns whose cached cells (of these rows and seeds) are run again from scratch, e.g.
    after a change to their method: each is moved, with ``rerun_reason`` (required) and the date,
    to the cache's ``superseded`` list, and its run folder is renamed ``<folder>.superseded-<k>``
    so that the new run does not resume from it. A cell already superseded for the same reason is
    not superseded again, so the same command continues an interrupted re-run. Returns the cache."""
    row_names = check_names(row_names, rows, "row")
    col_names = check_names(col_names, cols, "column")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s = {budget_s!r}: must be a positive number of seconds")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs = {jobs!r}: must be an integer >= 1")
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock = {clock!r}: must be 'cpu' or 'wall'")
    rerun = check_names(list(rerun), cols, "rerun column") if rerun else []
    if set(rerun) - set(col_names):  # superseded but never run again: the table would lose them
        raise ValueError(f"rerun = {rerun!r}: {sorted(set(rerun) - set(col_names))} are not among the columns "
                         f"to run {col_names}")
    if rerun and not (isinstance(rerun_reason, str) and rerun_reason.strip()):
        raise ValueError(f"rerun_reason = {rerun_reason!r}: say why the cells of {rerun} are run again")
    path = Path(cache)
    data = json.loads(path.read_text()) if path.exists() else {}
    cells = data.setdefault("cells", {})
    data.setdefault("machine", {**machine_info(), "cpus": os.cpu_count()})
    data["revision"] = git_revision()
    folder = Path(runs_dir or Path("runs") / path.stem)  # the cells' run folders (checkpoints, logs): not the cache's
    slug = {r: (slugs or {}).get(r, r.replace(" ", "_")) for r in row_names}

    def run_folder(r, c, s) -> Path:
        return folder / f"{slug[r]}-{c.replace(' ', '')}-s{s}"

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    done_before = {cell_key(x["row"], x["column"], x["seed"]) for x in data.get("superseded", [])
                   if x.get("superseded_because") == rerun_reason}
    for r, c, s in [(r, c, s) for s in seeds for r in row_names for c in rerun
                    if cell_key(r, c, s) in cells and cell_key(r, c, s) not in done_before]:
        data.setdefault("superseded", []).append({**cells.pop(cell_key(r, c, s)), "superseded": stamp,
                                                  "superseded_because": rerun_reason})
        old = run_folder(r, c, s)
        if old.exists():
            k = 1
            while old.with_name(f"{old.name}.superseded-{k}").exists():
                k += 1
            old.rename(old.with_name(f"{old.name}.superseded-{k}"))
    todo = [(r, c, s) for s in seeds for r in row_names for c in col_names
            if not _cached(cells.get(cell_key(r, c, s)), budget_s, clock)]
    log = stderr_log(progress)
    log(f"{name}: {len(todo)} cells to run ({len(row_names) * len(col_names) * len(seeds) - len(todo)} cached in "
        f"{path}), budget {budget_s:g} s of {clock} time each, {jobs} at a time")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_cache(path, data)
    t_start = time.perf_counter()
    with cell_pool(jobs) as pool:
        futures = {pool.submit(run_cell, r, *rows[r], c, *cols[c], s, budget_s, str(run_folder(r, c, s)), clock):
                   (r, c, s)
                   for r, c, s in todo}
        try:
            for done, fut in enumerate(cf.as_completed(futures), 1):
                r, c, s = futures[fut]
                try:
                    cells[cell_key(r, c, s)] = fut.result()
                except cf.process.BrokenProcessPool:
                    # a worker was killed from outside (out of memory, a session's end): not the
                    # cell's result; the unfinished cells stay out of the cache and resume from
                    # their checkpoints
                    raise RuntimeError(f"{name}: a cell's process was killed ({r} | {c} | seed {s}); finished "
                                       f"cells are in {path}; continue with `python -m warpsim_rl.bench {name} "
                                       f"--resume {path} ...` (same options): the unfinished cells resume from "
                                       f"their checkpoints") from None
                except Exception as e:  # noqa: BLE001 - a failed cell is recorded, the grid goes on
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
            raise KeyboardInterrupt(f"{name} interrupted; finished cells are in {path}; continue with "
                                    f"`python -m warpsim_rl.bench {name} --resume {path} ...` (same options)") from None
    return data


# -- reporting helpers ------------------------------------------------------------------------------

def clock_key(cell: dict) -> str:
    """The curve's time key of the cell's budget clock."""
    return "time/train_cpu_s" if cell.get("budget_clock") == "cpu" else "time/train_s"


def reach_bracket(cell: dict, target: float) -> tuple[float, float] | None:
    """When the cell first reached ``target``, as far as its evaluations tell: ``(before, at)``,
    the training times (s, the cell's budget clock) of the evaluation before its first one at or
    above ``target`` and of that one (``(0, 0)``: the untrained policy is there; ``None``: never)."""
    before = 0.0
    for point in cell["curve"]:
        if "eval/reward" in point:
            if point["eval/reward"] >= target:
                return before, point[clock_key(cell)]
            before = point[clock_key(cell)]
    return None


def stats(cells: list[dict], key: str) -> tuple[float, float]:
    """Mean and standard deviation of ``key`` over ``cells``."""
    vals = np.array([c[key] for c in cells], dtype=float)
    return float(vals.mean()), float(vals.std())


def too_small(group: list[dict]) -> str:
    """The table text of a cell group with no ok cell: the budget was too small for one epoch
    (its length, or the time after which it was stopped), or the cells' status."""
    first = [c["first_epoch_s"] for c in group if c.get("first_epoch_s")]
    if first:
        return f"budget too small (1 epoch {min(first):.0f} s)"
    over = [c["first_epoch_over_s"] for c in group if c.get("first_epoch_over_s")]
    if over:
        return f"budget too small (1 epoch > {min(over):.0f} s)"
    return group[0].get("status", "?")


def plot_row(title: str, groups: dict, path: str) -> str:
    """Test-bed reward against training time of every ok cell of ``groups`` (column -> cells),
    one colour per column, to the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    clock = "wall"
    for col, group in groups.items():
        ok = [c for c in group if c.get("status") == "ok"]
        for i, c in enumerate(ok):
            pts = [(p[clock_key(c)], p["eval/reward"]) for p in c["curve"] if "eval/reward" in p]
            clock = c.get("budget_clock", "wall")
            t, r = zip(*pts)
            ax.plot(t, r, color=f"C{list(groups).index(col)}", alpha=0.85, label=col if i == 0 else None)
    ax.set_xlabel(f"training time [s, {clock} clock] (evaluation excluded)")
    ax.set_ylabel("test-bed reward (1000 states)")
    ax.set_title(title)
    ax.set_yscale("symlog", linthresh=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
