"""The training loop behind ``train.py``: epochs, evaluation on the test bed, logs, plots,
checkpoints and exact resume.

Outputs in ``run.out_dir``:

* ``config.json`` — the resolved configuration: ``{"run": RunConfig fields, "algo": the
  algorithm's config fields}``;
* ``metrics.csv`` — one row per epoch (training metrics, evaluation metrics when evaluated,
  wall-clock time);
* ``tb/`` — the same scalars for TensorBoard (``tensorboard --logdir runs``);
* ``learning_curve.png`` — test-bed reward and training return over epochs;
* ``checkpoint.pt`` — written atomically after every epoch (every registered module, optimiser,
  buffer and random generator of the algorithm, the configuration, the epoch and the metrics so
  far); ``--resume`` continues from it bit-identically on the CPU;
* ``results.json`` — final test-bed evaluation, mean and std over the 1000 held-out initial
  states of reward, terminal kinetic energy, distance to target and action magnitude
  (PODS Figs. 8–10);
* ``eval.usdc`` — the first ``usd_envs`` evaluation rollouts as time-sampled USD.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from .algos import ALGORITHMS, EVAL_KEYS, RunConfig, algo_config, evaluate, make_algorithm
from .algos.config import AlgoConfig
from .core import StepCore
from .tasks import make_task
from .usd import atomic_write
from .viz.curves import plot_learning_curve

__all__ = ["train", "CheckpointError", "load_checkpoint", "configs_from_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is missing, unreadable or belongs to another configuration."""


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`train`; raises :class:`CheckpointError` clearly."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"resume: checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupted file
        raise CheckpointError(f"resume: checkpoint {str(path)!r} is corrupted or not a checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or not {"config", "epoch", "algorithm", "history"} <= set(ckpt):
        raise CheckpointError(f"resume: {str(path)!r} is not a warpsim_rl checkpoint")
    if not {"run", "algo"} <= set(ckpt["config"]):
        raise CheckpointError(f"resume: {str(path)!r} was written before per-algorithm configurations "
                              f"(flat TrainConfig); it cannot be resumed by this version")
    return ckpt


def configs_from_checkpoint(ckpt: dict) -> tuple[RunConfig, AlgoConfig]:
    """The run and algorithm configurations a checkpoint was written with."""
    run = RunConfig(**ckpt["config"]["run"])
    return run, algo_config(run.algo, **ckpt["config"]["algo"])


def _eval_metrics(ev: dict) -> dict:
    out = {f"eval/{k}": ev[k] for k in EVAL_KEYS}
    out.update({f"eval/{k}_std": ev[k + "_std"] for k in EVAL_KEYS})
    out["eval/diverged"] = ev["diverged"]
    return out


def train(run: RunConfig, cfg: AlgoConfig | None = None, resume: str | None = None, epochs: int | None = None,
          progress: bool = True) -> dict:
    """Train ``run.algo`` with its configuration ``cfg`` (default: the registry's), or resume the
    run whose checkpoint is ``resume`` (its own configuration is used; ``epochs`` may extend
    it). Returns the final results (also in ``results.json``)."""
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        run, cfg = configs_from_checkpoint(ckpt)
        if run.out is None:
            run = dataclasses.replace(run, out=str(Path(resume).parent if Path(resume).is_file() else Path(resume)))
    if epochs is not None:
        run = dataclasses.replace(run, epochs=epochs)
    if run.algo not in ALGORITHMS:
        raise ValueError(f"algo = {run.algo!r}: unknown; valid algorithms: {sorted(ALGORITHMS)}")
    cfg = algo_config(run.algo) if cfg is None else cfg
    expected = ALGORITHMS[run.algo][0].Config
    if not isinstance(cfg, expected):
        raise ValueError(f"algo = {run.algo!r} takes a {expected.__name__}, got a {type(cfg).__name__}")
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"out = {str(out)!r}: not writable")
    task = make_task(run.env, horizon=run.horizon) if run.horizon else make_task(run.env)
    algo = make_algorithm(task, run, cfg)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        algo.load_state_dict(ckpt["algorithm"])
        history = ckpt["history"]
        start = ckpt["epoch"]
    cfg_dict = {"run": dataclasses.asdict(run), "algo": dataclasses.asdict(cfg)}
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg_dict, indent=2)))

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)
    eval_core = StepCore(task, task.test_bed_size, run.device, run.dtype)
    keys: list[str] = []
    bar = tqdm(range(start, run.epochs), initial=start, total=run.epochs, disable=not progress,
               desc=f"{run.algo} {run.env}", unit="epoch")
    t_run = time.perf_counter()
    for epoch in bar:
        t0 = time.perf_counter()
        algo.begin_epoch(epoch)
        row = {"epoch": epoch + 1, **algo.train_epoch()}
        row["time/epoch_s"] = time.perf_counter() - t0
        if (run.eval_every and (epoch + 1) % run.eval_every == 0) or epoch + 1 == run.epochs:
            ev = evaluate(task, algo.policy, eval_core)
            ev.pop("trajectory")
            row.update(_eval_metrics(ev))
        history.append(row)
        for k, v in row.items():
            if k != "epoch":
                writer.add_scalar(k, v, epoch + 1)
        keys = sorted({k for h in history for k in h} | {"epoch"}, key=lambda k: (k != "epoch", k))
        atomic_write(out / "metrics.csv", lambda tmp: _write_csv(tmp, keys, history))
        state = {"config": cfg_dict, "epoch": epoch + 1, "algorithm": algo.state_dict(), "history": history}
        atomic_write(out / "checkpoint.pt", lambda tmp, state=state: torch.save(state, tmp))
        bar.set_postfix({"return": f"{row.get('train/return_before', float('nan')):.2f}",
                         **({"test": f"{row['eval/reward']:.2f}"} if "eval/reward" in row else {})})
    writer.close()
    plot_learning_curve(history, out / "learning_curve.png", f"{run.algo} on {run.env} (seed {run.seed})")
    final = evaluate(task, algo.policy, eval_core)
    traj = final.pop("trajectory")
    results = {"env": run.env, "algo": run.algo, "seed": run.seed, "epochs": run.epochs,
               "test_bed_size": task.test_bed_size, "train_time_s": time.perf_counter() - t_run,
               **{k: final[k] for k in sorted(final)}}
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    if run.usd_envs:
        _export_usd(task, traj, out / "eval.usdc", run)
    return results


def _write_csv(path, keys, history):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for h in history:
            w.writerow(h)


def _export_usd(task, traj, path: Path, run: RunConfig) -> None:
    import numpy as np

    from .usd import export_rollout

    k = min(run.usd_envs, traj.states[0][0].shape[0])
    positions = np.stack([s[0][:k].detach().cpu().numpy() for s in traj.states])
    export_rollout(task.scene, positions, path, dt=task.dt,
                   metadata={"env": run.env, "algo": run.algo, "seed": str(run.seed)})
