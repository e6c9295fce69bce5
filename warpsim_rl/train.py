"""Train a policy on a warpsim_rl task (``python train.py`` or ``python -m warpsim_rl.train``).

    python train.py                                   # PODS 2nd order on pendulum2d-stop, CPU
    python train.py --env double_pendulum3d-stop-origin --algo pods2 --num-envs 512 --epochs 50
    python train.py --algo bptt --seed 1 --out runs/bptt-s1
    python train.py --algo zobg --help                # the options of one algorithm
    python train.py --config my_run.toml --seed 3     # flags override the file
    python train.py --resume runs/pendulum2d-stop-pods2-s0 --epochs 60
    torchrun --standalone --nproc_per_node=2 train.py --num-envs 512   # data-parallel (docs/distributed.md)

Run options are the fields of ``warpsim_rl.algos.RunConfig``; algorithm options are the fields of
the chosen algorithm's config dataclass (``--line-search`` for ``line_search``). A TOML config
holds run fields at the top and the algorithm's in an ``[algo]`` table::

    env = "rope3d-stop"
    num_envs = 512
    [algo]
    name = "pods2"
    line_search = 8

Outputs (config.json, metrics.csv, TensorBoard logs in tb/, learning_curve.png, checkpoint.pt,
results.json, eval.usdc) go to ``--out`` (default ``runs/<env>-<algo>-s<seed>``); see
``warpsim_rl/training.py``. results.json holds the final test-bed evaluation, the untrained
policy's ("untrained", epoch 0), the learning curve ("curve") and the training time (the whole
run, and this session's part after a resume).

A folder that already holds a run is refused: continue it with ``--resume``, or pass
``--overwrite`` to delete its run files (tb/, metrics.csv, checkpoint.pt, results.json,
config.json, learning_curve.png, eval.usdc; nothing else) and start again.

Ctrl-C stops the run with one line — the epoch it interrupted, the epoch the checkpoint holds,
the ``--resume`` command — and exit status 130. A run interrupted before its first checkpoint
resumes from its config.json (from epoch 0). Errors exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import types
import typing

from . import distributed
from .algos import ALGORITHMS, RunConfig
from .algos.config import field_docs

__all__ = ["main", "configs_from_args"]

#: fields of the former flat TrainConfig and where they live now (for the error on an old TOML)
_MOVED = {"hidden": "hidden", "normalize_obs": "normalize_obs", "lr": "lr", "lr_schedule": "lr_schedule",
          "regression_steps": "regression_steps", "regression_batch": "regression_batch",
          "policy_check": "policy_check", "line_search": "line_search", "first_order_step": "first_order_step",
          "gn_damping": "gn_damping", "chunk": "chunk", "bptt_steps": "gradient_steps",
          "max_grad_norm": "max_grad_norm", "pg_samples": "samples", "pg_sigma": "sigma",
          "aobg_gamma": "alpha_gamma", "aobg_delta": "alpha_delta"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(cls, f: dataclasses.Field):
    """The scalar type of a config field (``X | None`` -> ``X``; tuples of ints -> int)."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return tuple, typing.get_args(hint)[0]
    return hint, None


def _add_fields(group, defaults, skip=()) -> None:
    """One flag per field of the dataclass instance ``defaults`` (its values are the defaults
    shown: the registry's preset for an algorithm), except ``skip``."""
    cls = type(defaults)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ, item = _field_type(cls, f)
        default = getattr(defaults, f.name)
        text = docs.get(f.name, "") + ("" if default is None else f" (default: {default!r})")
        if typ is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typ is tuple:
            group.add_argument(_flag(f.name), type=item, nargs="+", default=None, help=text)
        else:
            extra = {"choices": sorted(ALGORITHMS)} if (cls is RunConfig and f.name == "algo") else {}
            group.add_argument(_flag(f.name), type=typ, default=None, help=text, **extra)


def _pre_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    p.add_argument("--resume")
    p.add_argument("--algo")
    return p


def _parser(algo: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file: run fields at the top, algorithm fields in an [algo] table")
    p.add_argument("--resume", help="run folder or checkpoint.pt to continue with its own configuration "
                                    "(only --epochs and --threads may change), in that folder; a run stopped "
                                    "before its first checkpoint starts again from its config.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list every task and scene (sizes, horizon, dt) and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the output folder: delete its tb/, metrics.csv, "
                        "checkpoint.pt, results.json, config.json, learning_curve.png and eval.usdc "
                        "(nothing else) first; without it such a folder is refused")
    from .algos import algo_config, fixed_fields

    _add_fields(p.add_argument_group("run options"), RunConfig())
    cfg = algo_config(algo)
    _add_fields(p.add_argument_group(f"algorithm options ({algo}: {type(cfg).__name__}; "
                                     f"'--algo NAME --help' lists another algorithm's)"), cfg,
                skip=fixed_fields(algo))
    return p


def _read_toml(path: str) -> tuple[dict, dict]:
    """``(run fields, algo fields incl. 'name')`` of a TOML config; ValueError naming the problem."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--config {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {path!r}: malformed TOML: {e}") from None
    algo = data.pop("algo", {})
    if isinstance(algo, str):
        algo = {"name": algo}
    if not isinstance(algo, dict):
        raise ValueError(f"--config {path!r}: 'algo' must be a name or an [algo] table")
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    for key in sorted(set(data) - run_fields):
        if key in _MOVED:
            raise ValueError(f"--config {path!r}: '{key}' is an algorithm option now: write it as "
                             f"'{_MOVED[key]}' in the [algo] table (with name = \"...\")")
        raise ValueError(f"--config {path!r}: unknown field '{key}'; run fields: {sorted(run_fields)}, "
                         f"algorithm fields go in an [algo] table")
    return data, algo


def configs_from_args(argv=None):
    """``(args, RunConfig, algorithm config)`` from defaults, then the TOML file, then flags."""
    pre, _ = _pre_parser().parse_known_args(argv)
    run_vals, algo_vals = _read_toml(pre.config) if pre.config else ({}, {})
    name = pre.algo or algo_vals.pop("name", None) or run_vals.get("algo") or RunConfig.algo
    algo_vals.pop("name", None)
    if name not in ALGORITHMS:
        raise ValueError(f"algo = {name!r}: unknown; valid algorithms: {sorted(ALGORITHMS)}")
    args = _parser(name).parse_args(argv)
    cls = ALGORITHMS[name][0].Config
    for f in dataclasses.fields(RunConfig):
        if getattr(args, f.name) is not None:
            run_vals[f.name] = getattr(args, f.name)
    run_vals["algo"] = name
    for f in dataclasses.fields(cls):
        if getattr(args, f.name, None) is not None:
            algo_vals[f.name] = getattr(args, f.name)
    from .algos import algo_config

    try:
        run = RunConfig(**run_vals)
        cfg = algo_config(name, **algo_vals)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    return args, run, cfg


def _resume_args(argv) -> argparse.Namespace:
    """``--resume`` with at most ``--epochs``, ``--threads`` (changes no number) and
    ``--no-progress``; ValueError naming any other flag (the run continues with its own
    configuration)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--resume")
    p.add_argument("--epochs", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    args, rest = p.parse_known_args(argv)
    if args.overwrite:
        raise ValueError("--resume continues the run in its folder; --overwrite would delete it (drop one of them)")
    if rest:
        raise ValueError(f"--resume continues the run with its own configuration; {' '.join(rest)} cannot "
                         f"change it (only --epochs and --threads can)")
    return args


def main(argv=None) -> int:
    """``train.py``: 0 on success, 2 on an error (one ``error:`` line), 130 on Ctrl-C (one line
    saying where the run stopped and how to resume it)."""
    code, finished = _main(argv)
    if distributed.is_distributed():
        distributed.leave(code, barrier=finished)  # does not return
    return code


def _main(argv) -> tuple[int, bool]:
    """:func:`main`'s work: ``(exit status, whether the run ended normally)``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--list" in argv and not {"-h", "--help"} & set(argv):
        from .tasks import describe_tasks, format_task_rows

        print(format_task_rows(describe_tasks()))
        return 0, True
    resuming = any(a == "--resume" or a.startswith("--resume=") for a in argv) and not {"-h", "--help"} & set(argv)
    try:
        from .training import CheckpointError, TrainingInterrupted, train

        if distributed.launched():
            error = _join_process_group()
            if error:
                print(error, file=sys.stderr)
                return 2, False
        try:
            if resuming:
                args = _resume_args(argv)
                results = train(None, resume=args.resume, epochs=args.epochs, progress=not args.no_progress,
                                threads=args.threads)
            else:
                args, run, cfg = configs_from_args(argv)
                results = train(run, cfg, progress=not args.no_progress, overwrite=args.overwrite)
        except (ValueError, CheckpointError, PermissionError, distributed.DistributedError) as e:
            _report(f"error: {e}", e)
            return 2, False
        except TrainingInterrupted as e:
            _report(str(e), e)
            return 130, False
    except KeyboardInterrupt:
        _report("interrupted before the run started; run the same command again to start it", None)
        return 130, False
    if distributed.rank() == 0:
        print(json.dumps(results, indent=2))
    return 0, True


def _join_process_group() -> str | None:
    """Under torchrun: join the process group, and make SIGTERM (torchrun's way of stopping the
    other ranks when one fails) stop this rank like Ctrl-C. Returns an error line, or ``None``."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        distributed.init_from_environment()
    except (RuntimeError, ValueError) as e:  # a rendezvous that fails or times out, a bad timeout value
        return f"error: could not join the torchrun process group ({type(e).__name__}: {e})"
    signal.signal(signal.SIGTERM, stop)
    return None


def _report(line: str, error) -> None:
    """Print ``line`` on stderr: on rank 0 always; on another rank only an error of its own
    (not one rank 0 reports, nor an interruption), prefixed with its rank."""
    if distributed.rank() == 0:
        print(line, file=sys.stderr)
    elif isinstance(error, Exception) and not getattr(error, "from_lead", False):
        print(f"rank {distributed.rank()}: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
