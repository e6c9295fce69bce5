"""The command line of the benchmarks: one subcommand per benchmark (:mod:`warpsim_rl.bench`).
The benchmark modules are imported only when their subcommand runs. Every subcommand shows its
progress on stderr (``--quiet``: none) and prints its result on stdout (``--json``: one JSON
object, nothing else). Options shared by several subcommands are defined once: :func:`_common`
(sizes, device, output) and :func:`_simulator_options` / :func:`_simulator_kwargs` (the
simulator benchmarks ``throughput`` and ``gradients``)."""

from __future__ import annotations

import argparse

from ..util import parse_params
from .common import emit

__all__ = ["main", "parser"]

_DTYPES = ["float32", "float64"]


def _common(p: argparse.ArgumentParser, envs: int | None = None, steps: int | None = None,
            repeats: int | None = None, device: bool = True) -> argparse.ArgumentParser:
    """The options most subcommands share (``--json`` and ``--quiet`` on every one)."""
    if envs is not None:
        p.add_argument("--envs", type=int, default=envs, help=f"environments (default {envs})")
    if steps is not None:
        p.add_argument("--steps", type=int, default=steps, help=f"steps per pass (default {steps})")
    if device:
        p.add_argument("--device", default="cpu", help="Warp device (default cpu)")
        p.add_argument("--dtype", default="float32", choices=_DTYPES)
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats,
                       help=f"timed passes; the median is reported (default {repeats})")
    p.add_argument("--json", action="store_true", help="print one JSON object (stdout carries nothing else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    return p


def _simulator_options(p: argparse.ArgumentParser, envs: int, steps: int, repeats: int) -> argparse.ArgumentParser:
    """The options of the simulator benchmarks (``throughput``, ``gradients``), read back by
    :func:`_simulator_kwargs`: add an option of both here and there."""
    p.add_argument("--scene", required=True)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="scene parameter override, e.g. num_particles=20")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads launching shards of the envs (default: the available cores)")
    return _common(p, envs=envs, steps=steps, repeats=repeats)


def _simulator_kwargs(args) -> dict:
    """The keyword arguments of :func:`~warpsim_rl.bench.sim.throughput` and
    :func:`~warpsim_rl.bench.sim.gradients` from the options of :func:`_simulator_options`."""
    return {"scene": args.scene, "envs": args.envs, "steps": args.steps, "device": args.device, "dtype": args.dtype,
            "scene_params": parse_params(args.param), "repeats": args.repeats, "progress": not args.quiet,
            "threads": args.threads}


def _keep_option(text: str) -> str | int:
    """``--keep``: ``all``, ``last`` or an integer (validated by ``TorchSimulator.kept_steps``)."""
    return int(text) if text.lstrip("+-").isdigit() else text


def _gradients(args) -> dict:
    """``gradients``: one horizon (:func:`~warpsim_rl.bench.sim.gradients`), or the horizon sweep
    (:func:`~warpsim_rl.bench.sim.horizon_sweep`) for several ``--steps`` or ``--sweep``."""
    from .sim import gradients, horizon_sweep

    kwargs = _simulator_kwargs(args)
    if args.sweep or len(args.steps) > 1:
        return horizon_sweep(**kwargs, checkpoint_every=args.checkpoint_every, keep=args.keep)
    if args.checkpoint_every is not None or args.keep is not None:
        raise ValueError("gradients: --checkpoint-every and --keep apply to the horizon sweep only "
                         "(several --steps, or --sweep)")
    return gradients(**{**kwargs, "steps": args.steps[0]})


def parser() -> argparse.ArgumentParser:
    """The ``python -m warpsim_rl.bench`` argument parser."""
    from . import __doc__ as doc
    from . import estimators

    p = argparse.ArgumentParser(prog="python -m warpsim_rl.bench", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="env-steps/s of one scene")
    t.add_argument("--dense", action="store_true", help="dense Cholesky baseline (full band)")
    _simulator_options(t, envs=4096, steps=100, repeats=5)
    gr = sub.add_parser("gradients", help="reverse pass and Jacobian cost vs the forward rollout")
    _simulator_options(gr, envs=4096, steps=None, repeats=3)
    gr.add_argument("--steps", type=int, nargs="+", default=[50],
                    help="steps per pass (default 50); several values (or --sweep): the horizon sweep, the torch "
                         "rollout and its backward pass per T, each T in a fresh process")
    gr.add_argument("--sweep", action="store_true", help="the horizon sweep also for a single --steps value")
    gr.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                    help="sweep only: TorchSimulator.rollout(checkpoint_every=K)")
    gr.add_argument("--keep", type=_keep_option, default=None, metavar="all|last|K",
                    help="sweep only: TorchSimulator.rollout(keep=...), the states the rollout returns")
    cp = sub.add_parser("compare", help="train algorithms over seeds at equal epochs (PODS Fig. 3)")
    cp.add_argument("--env", default="pendulum2d-stop")
    cp.add_argument("--algos", nargs="+", default=["pods2", "bptt", "pods1"])
    cp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cp.add_argument("--epochs", type=int, default=30)
    cp.add_argument("--num-envs", type=int, default=256)
    cp.add_argument("--eval-every", type=int, default=5)
    cp.add_argument("--out", default="runs/compare")
    cp.add_argument("--png", default=None, help="learning-curve figure")
    _common(cp)
    tb = sub.add_parser("table1", help="PODS Table 1: every algorithm on every row at an equal budget (CPU time by default)")
    from . import table1

    table1.add_arguments(tb)
    _common(tb, device=False)
    ns = sub.add_parser("nonsmooth", help="AGPO, SHAC, BPTT, PODS, AoBG on a stiffening wall and the cloth "
                                          "(equal budget) and the analytic gradient's variance")
    from . import nonsmooth

    nonsmooth.add_arguments(ns)
    _common(ns, device=False)
    wi = sub.add_parser("windows", help="a SHAC / AGPO epoch against the forward simulation of its steps")
    wi.add_argument("--task", default="pendulum2d-stop")
    wi.add_argument("--algo", default="shac", choices=["shac", "agpo"])
    wi.add_argument("--threads", type=int, default=None, help="CPU launch threads (default: the available cores)")
    _common(wi, envs=256, repeats=3)
    sw = sub.add_parser("sweep", help="hyper-parameter grid of one algorithm at a fixed wall-clock budget")
    from . import sweep

    sweep.add_arguments(sw)
    _common(sw, device=False)
    en = sub.add_parser("envs", help="env-steps/s of the torch env for every registered task")
    en.add_argument("--task", action="append", default=None, help="task name (repeatable; default: all)")
    en.add_argument("--envs", type=int, default=None,
                    help="environments of every task (default: 4096; 1024 for rope3d, 256 for cloth_table)")
    _common(en, steps=100, repeats=3)
    s = sub.add_parser("scaling", help="rope3d throughput vs particle count, banded and dense")
    s.add_argument("--particles", type=int, nargs="+", default=[5, 10, 20, 40])
    _common(s, envs=256, steps=20, repeats=3)
    es = sub.add_parser("estimators", help="gradient-estimator bias/variance study")
    estimators.add_arguments(es)
    _common(es, device=False)
    u = sub.add_parser("usd", help="time of the USD export of a rollout")
    u.add_argument("--scene", default="rope3d")
    u.add_argument("--format", default=".usdc", choices=[".usdc", ".usda", ".usd"], help="file format")
    u.add_argument("--no-simulate", action="store_true", help="export random positions instead of a rollout")
    _common(u, envs=64, steps=100, repeats=3, device=False)
    c = sub.add_parser("contact", help="Newton statistics of cloth_table: cables vs bilateral springs")
    c.add_argument("--kind", action="append", choices=["cable", "bilateral"], default=None,
                   help="cloth springs (repeatable; default: both)")
    c.add_argument("--dtype", action="append", choices=_DTYPES, default=None, help="repeatable; default: both")
    c.add_argument("--noise", type=float, default=0.3, help="action noise in m/s per component")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    _common(c, envs=64, steps=120, device=False)
    di = sub.add_parser("distributed", help="train.py epoch time in one process vs torchrun with N processes")
    di.add_argument("--algos", nargs="+", default=["pods2", "pods1", "bptt", "shac"])
    di.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    di.add_argument("--epochs", type=int, default=8, help="epochs per run (the first is left out)")
    di.add_argument("--env", default="pendulum2d-stop")
    di.add_argument("--num-envs", type=int, default=256, help="global env count (split across the processes)")
    di.add_argument("--threads", type=int, default=1, help="Warp CPU threads per process")
    _common(di, device=False)
    an = sub.add_parser("anchor", help="warpsim_rl vs NVIDIA Newton (SemiImplicit) at equal accuracy")
    from . import anchor

    anchor.add_arguments(an)
    _common(an, device=False)
    return p


def run(args) -> dict:
    """The result of the subcommand ``args.cmd``."""
    progress = not args.quiet
    if args.cmd == "throughput":
        from .sim import throughput

        return throughput(**_simulator_kwargs(args), dense=args.dense)
    if args.cmd == "gradients":
        return _gradients(args)
    if args.cmd == "scaling":
        from .sim import scaling

        return scaling(args.envs, args.particles, args.steps, args.device, args.dtype, repeats=args.repeats,
                       progress=progress)
    if args.cmd == "compare":
        from .compare import compare

        return compare(args.env, args.algos, args.seeds, args.epochs, args.num_envs, args.out, args.eval_every,
                       args.device, args.dtype, args.png, progress=progress)
    if args.cmd == "table1":
        from .table1 import from_args as table1_from_args

        return table1_from_args(args)
    if args.cmd == "nonsmooth":
        from .nonsmooth import from_args as nonsmooth_from_args

        return nonsmooth_from_args(args)
    if args.cmd == "windows":
        from .windows import window_epoch_cost

        return window_epoch_cost(args.task, args.envs, args.repeats, args.dtype, args.threads, args.algo)
    if args.cmd == "sweep":
        from .sweep import parse_grid, sweep

        return sweep(args.env, args.algo, parse_grid(args.grid), args.budget_s, args.seed, args.out, progress=progress,
                     clock=args.clock)
    if args.cmd == "envs":
        from .envs import bench_envs

        return bench_envs(args.envs, args.steps, args.device, args.dtype, args.task, args.repeats, progress=progress)
    if args.cmd == "estimators":
        from .estimators import from_args

        return from_args(args)
    if args.cmd == "usd":
        from .usd import bench_export

        return bench_export(args.envs, args.steps, args.scene, args.format, repeats=args.repeats,
                            simulate=not args.no_simulate, progress=progress)
    if args.cmd == "contact":
        from .contact import newton_stats

        return newton_stats(args.kind or ("cable", "bilateral"), args.dtype or _DTYPES, args.envs, args.steps,
                            args.noise, args.seed, args.device, progress=progress)
    if args.cmd == "distributed":
        from .distributed import processes

        return processes(args.algos, args.processes, args.epochs, args.env, args.num_envs, args.threads,
                         progress=progress)
    if args.cmd == "anchor":
        from .anchor import from_args as anchor_from_args

        return anchor_from_args(args)
    raise ValueError(f"unknown subcommand {args.cmd!r}")


def main(argv=None) -> int:
    """``python -m warpsim_rl.bench``: parse ``argv``, run the benchmark, print its result."""
    args = parser().parse_args(argv)
    emit(run(args), args.json)
    return 0
