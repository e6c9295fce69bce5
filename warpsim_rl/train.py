"""Train a policy on a warpsim_rl task (``python train.py`` or ``python -m warpsim_rl.train``).

    python train.py                                   # PODS 2nd order on pendulum2d-stop, CPU, ~1-2 min
    python train.py --env double_pendulum3d-stop-origin --algo pods2 --num-envs 512 --epochs 50
    python train.py --algo bptt --seed 1 --out runs/bptt-s1
    python train.py --config my_run.toml --seed 3     # flags override the file
    python train.py --resume runs/pendulum2d-stop-pods2-s0 --epochs 60

Every field of ``warpsim_rl.algos.TrainConfig`` is a flag (``--num-envs`` for ``num_envs``);
``--config FILE.toml`` reads the same names (underscores) from a TOML file. Outputs (metrics.csv,
TensorBoard logs, learning_curve.png, checkpoint.pt, results.json, eval.usdc) go to ``--out``
(default ``runs/<env>-<algo>-s<seed>``); see ``warpsim_rl/training.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib

from warpsim_rl.algos import ALGORITHMS, TrainConfig
from warpsim_rl.algos.base import LR_SCHEDULES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file with TrainConfig fields")
    p.add_argument("--resume", help="run folder or checkpoint.pt to continue (its own config is used)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    doc = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, f in doc.items():
        flag = "--" + name.replace("_", "-")
        if name == "hidden":
            p.add_argument(flag, type=int, nargs="+", default=None, help="policy MLP widths")
        elif isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default: {f.default!r})")
        else:
            typ = type(f.default)
            extra = {}
            if name == "algo":
                extra["choices"] = sorted(ALGORITHMS)
            elif name == "lr_schedule":
                extra["choices"] = LR_SCHEDULES
            p.add_argument(flag, type=typ, default=None, help=f"(default: {f.default!r})", **extra)
    return p


def config_from_args(args) -> TrainConfig:
    """Defaults, then the TOML file, then explicit flags."""
    values = {}
    if args.config:
        try:
            with open(args.config, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SystemExit(f"error: --config {args.config!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"error: --config {args.config!r}: malformed TOML: {e}") from None
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        bad = sorted(set(data) - known)
        if bad:
            raise SystemExit(f"error: --config {args.config!r}: unknown field(s) {bad}; known: {sorted(known)}")
        values.update(data)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    return TrainConfig(**values)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from warpsim_rl.training import CheckpointError, train

    cfg = config_from_args(args)
    try:
        if args.resume:
            results = train(cfg, resume=args.resume, epochs=args.epochs, progress=not args.no_progress)
        else:
            cfg.validate()
            results = train(cfg, progress=not args.no_progress)
    except (ValueError, CheckpointError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
