"""The training loop behind ``train.py``: epochs, evaluation on the test bed, logs, plots,
checkpoints and exact resume.

Outputs in ``cfg.out``:

* ``config.json`` — the resolved configuration;
* ``metrics.csv`` — one row per epoch (training metrics, evaluation metrics when evaluated,
  wall-clock time);
* ``tb/`` — the same scalars for TensorBoard (``tensorboard --logdir runs``);
* ``learning_curve.png`` — test-bed reward and training return over epochs;
* ``checkpoint.pt`` — written atomically after every epoch (policy, optimiser, random
  generators, epoch, metrics so far); ``--resume`` continues from it bit-identically on the CPU;
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
import tempfile
import time
from pathlib import Path

import torch

from .algos import ALGORITHMS, TrainConfig
from .algos.rollout import Rollouts, evaluate
from .tasks import make_task

__all__ = ["train", "CheckpointError", "load_checkpoint"]

EVAL_KEYS = ("reward", "terminal_kinetic_energy", "distance_to_target", "action_magnitude")


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is missing, unreadable or belongs to another configuration."""


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    return ckpt


def _plot(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [h.get("train/return_before") for h in history]
    ax.plot(ep, tr, label="training batch return", alpha=0.6)
    ev = [(h["epoch"], h["eval/reward"], h["eval/reward_std"]) for h in history if "eval/reward" in h]
    if ev:
        e, m, s = zip(*ev)
        ax.errorbar(e, m, yerr=[0.5 * x for x in s], marker="o", capsize=3, label="test-bed reward (± ½ std)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("return (PODS Eq. 15)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _eval_metrics(ev: dict) -> dict:
    out = {f"eval/{k}": ev[k] for k in EVAL_KEYS}
    out.update({f"eval/{k}_std": ev[k + "_std"] for k in EVAL_KEYS})
    out["eval/diverged"] = ev["diverged"]
    return out


def train(cfg: TrainConfig, resume: str | None = None, epochs: int | None = None, progress: bool = True) -> dict:
    """Run training, or resume the run whose checkpoint is ``resume`` (its own configuration is
    used; ``epochs`` may extend it). Returns the final results (also in ``results.json``)."""
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        cfg = TrainConfig(**{**ckpt["config"], "hidden": tuple(ckpt["config"]["hidden"])})
        if not cfg.out:
            cfg.out = str(Path(resume).parent if Path(resume).is_file() else Path(resume))
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    cfg.validate()
    out = Path(cfg.out or f"runs/{cfg.env}-{cfg.algo}-s{cfg.seed}")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"out = {str(out)!r}: not writable")
    task = make_task(cfg.env, horizon=cfg.horizon) if cfg.horizon else make_task(cfg.env)
    algo = ALGORITHMS[cfg.algo](task, cfg)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        algo.load_state_dict(ckpt["algorithm"])
        history = ckpt["history"]
        start = ckpt["epoch"]
    cfg_dict = dataclasses.asdict(cfg)
    _atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg_dict, indent=2)))

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)
    eval_rollouts = Rollouts(task, task.test_bed_size, cfg.device, cfg.dtype)
    keys: list[str] = []
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, disable=not progress,
               desc=f"{cfg.algo} {cfg.env}", unit="epoch")
    t_run = time.perf_counter()
    for epoch in bar:
        t0 = time.perf_counter()
        algo.begin_epoch(epoch)
        row = {"epoch": epoch + 1, **algo.train_epoch()}
        row["time/epoch_s"] = time.perf_counter() - t0
        if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch + 1 == cfg.epochs:
            ev = evaluate(task, algo.policy, eval_rollouts)
            ev.pop("trajectory")
            row.update(_eval_metrics(ev))
        history.append(row)
        for k, v in row.items():
            if k != "epoch":
                writer.add_scalar(k, v, epoch + 1)
        keys = sorted({k for h in history for k in h} | {"epoch"}, key=lambda k: (k != "epoch", k))
        _atomic_write(out / "metrics.csv", lambda tmp: _write_csv(tmp, keys, history))
        state = {"config": cfg_dict, "epoch": epoch + 1, "algorithm": algo.state_dict(), "history": history}
        _atomic_write(out / "checkpoint.pt", lambda tmp, state=state: torch.save(state, tmp))
        bar.set_postfix({"return": f"{row.get('train/return_before', float('nan')):.2f}",
                         **({"test": f"{row['eval/reward']:.2f}"} if "eval/reward" in row else {})})
    writer.close()
    _plot(history, out / "learning_curve.png", f"{cfg.algo} on {cfg.env} (seed {cfg.seed})")
    final = evaluate(task, algo.policy, eval_rollouts)
    traj = final.pop("trajectory")
    results = {"env": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "epochs": cfg.epochs,
               "test_bed_size": task.test_bed_size, "train_time_s": time.perf_counter() - t_run,
               **{k: final[k] for k in sorted(final)}}
    _atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    if cfg.usd_envs:
        _export_usd(task, traj, out / "eval.usdc", cfg)
    return results


def _write_csv(path, keys, history):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for h in history:
            w.writerow(h)


def _export_usd(task, traj, path: Path, cfg: TrainConfig) -> None:
    import numpy as np

    from .usd import export_rollout

    k = min(cfg.usd_envs, traj.states[0][0].shape[0])
    positions = np.stack([s[0][:k].detach().cpu().numpy() for s in traj.states])
    export_rollout(task.scene, positions, path, dt=task.dt,
                   metadata={"env": cfg.env, "algo": cfg.algo, "seed": str(cfg.seed)})
