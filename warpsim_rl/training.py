"""The training loop behind ``train.py``: epochs, evaluation on the test bed, logs, plots,
checkpoints and exact resume.

Outputs in ``run.out_dir`` (:data:`RUN_FILES`):

* ``config.json`` — the resolved configuration: ``{"run": RunConfig fields, "algo": the
  algorithm's config fields}``; written first, so a run interrupted before its first checkpoint
  can still be resumed (it starts again from epoch 0 with this configuration);
* ``metrics.csv`` — one row per epoch (training metrics, evaluation metrics when evaluated,
  ``time/epoch_s``, ``time/train_s`` — the training time so far, evaluation excluded, over every
  session —, their CPU-time counterparts ``time/epoch_cpu_s`` and ``time/train_cpu_s`` (this
  process, all its threads), and ``env_steps``, the environment steps simulated for training so
  far);
* ``tb/`` — the same scalars for TensorBoard (``tensorboard --logdir runs``), plus the untrained
  policy's test-bed evaluation at step 0;
* ``learning_curve.png`` — test-bed reward (from epoch 0) and training return over epochs;
* ``checkpoint.pt`` — written atomically after every epoch (every registered module, optimiser,
  buffer and random generator of the algorithm, the configuration, the epoch, the metrics so
  far, the untrained policy's evaluation and the training time so far); ``--resume`` continues
  from it bit-identically on the CPU;
* ``results.json`` — the final test-bed evaluation at the top level (mean and std over the 1000
  held-out initial states of reward, terminal kinetic energy, distance to target and action
  magnitude, PODS Figs. 8–10, and ``diverged``), the untrained policy's evaluation under
  ``"untrained"`` (epoch 0), the learning curve under ``"curve"`` (one entry per epoch from 0:
  ``epoch``, ``time/train_s``, ``time/train_cpu_s``, ``env_steps``, ``train/return_before``,
  ``eval/reward`` where evaluated), ``train_time_s`` (the whole run, over every session of a resumed run, evaluation
  included), ``train_time_s_this_session``, and with a budget ``budget_s``, ``budget_clock``
  and ``first_epoch_s`` on that clock (an epoch longer than the budget means the budget cannot
  measure this run);
* ``eval.usdc`` — the first ``usd_envs`` final evaluation rollouts as time-sampled USD.

Under ``torchrun`` (:mod:`warpsim_rl.distributed`, docs/distributed.md) only rank 0 reads the
checkpoint to resume (and broadcasts it) and writes these files; an epoch's ``time/epoch_s`` is
the slowest rank's, ``time/epoch_cpu_s`` and ``env_steps`` are sums over the ranks, and
``dist/bytes`` / ``dist/collectives`` are rank 0's collective payload of the epoch. A failed
collective (a rank died) raises :class:`~warpsim_rl.distributed.DistributedError` naming the run
folder, the epoch its checkpoint holds and how to resume.

Every file is written with the permissions the umask gives (``0666 & ~umask``; folders
``0777 & ~umask``). A folder that already holds any of these files is refused (resume it, or pass
``overwrite=True``, which deletes exactly those files first). Ctrl-C raises
:class:`TrainingInterrupted` (a ``KeyboardInterrupt``) saying which epoch was interrupted, which
epoch the checkpoint holds and how to resume; a Ctrl-C that Python dropped (raised inside a
finaliser) still stops the run after the epoch (:class:`_CtrlC`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path

import torch

from .algos import ALGORITHMS, EVAL_KEYS, RunConfig, algo_config, evaluate, make_algorithm
from . import distributed
from .algos.config import AlgoConfig
from .core import StepCore
from .tasks import make_task
from .usd import atomic_write
from .viz.curves import plot_learning_curve

__all__ = ["train", "CheckpointError", "RunExistsError", "TrainingInterrupted", "RUN_FILES", "load_checkpoint",
           "configs_from_checkpoint", "load_policy"]

#: the files and folder a run writes into its output folder (and the only ones ``overwrite`` deletes)
RUN_FILES = ("tb", "metrics.csv", "checkpoint.pt", "results.json", "config.json", "learning_curve.png", "eval.usdc")

#: the keys of each entry of ``results.json``'s ``"curve"``
CURVE_KEYS = ("epoch", "time/train_s", "time/train_cpu_s", "env_steps", "train/return_before", "eval/reward")


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is missing, unreadable or belongs to another configuration."""


class RunExistsError(ValueError):
    """The output folder already holds a training run (and neither resume nor overwrite was asked)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`. ``str()`` is the one line ``train.py`` prints.

    Attributes:
        out: the run folder.
        epoch: the 1-based epoch that was running, or ``None`` (interrupted while setting up,
            or after the last epoch while writing the results).
        saved_epoch: the epoch the checkpoint on disk holds, or ``None`` (no checkpoint yet).
        epochs: the run's total number of epochs.
    """

    def __init__(self, out, epoch: int | None, saved_epoch: int | None, epochs: int):
        self.out, self.epoch, self.saved_epoch, self.epochs = str(out), epoch, saved_epoch, epochs
        super().__init__(self.message)

    @property
    def message(self) -> str:
        resume = f"resume with `python train.py --resume {shlex.quote(self.out)}`"
        if self.epoch is not None:
            where = f"interrupted at epoch {self.epoch} of {self.epochs}"
        elif self.saved_epoch is not None and self.saved_epoch >= self.epochs:
            where = f"interrupted after epoch {self.epochs} of {self.epochs}, while writing the results"
        else:
            where = f"interrupted before epoch {(self.saved_epoch or 0) + 1} of {self.epochs} (setting up)"
        if self.saved_epoch is None:
            return (f"{where}; no checkpoint written yet; {resume} (it starts again from epoch 0 with the "
                    f"saved config.json)")
        tail = " (to write the results)" if self.saved_epoch >= self.epochs else ""
        return f"{where}; checkpoint written at epoch {self.saved_epoch}; {resume}{tail}"

    def __str__(self) -> str:
        return self.message


def load_checkpoint(path: str | Path, what: str = "resume") -> dict:
    """Read a checkpoint written by :func:`train` (a ``checkpoint.pt`` or its run folder); raises
    :class:`CheckpointError` clearly, its message starting with ``what``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupted file
        raise CheckpointError(f"{what}: checkpoint {str(path)!r} is corrupted or not a checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or not {"config", "epoch", "algorithm", "history"} <= set(ckpt):
        raise CheckpointError(f"{what}: {str(path)!r} is not a warpsim_rl checkpoint")
    if not {"run", "algo"} <= set(ckpt["config"]):
        raise CheckpointError(f"{what}: {str(path)!r} was written before per-algorithm configurations "
                              f"(flat TrainConfig); it cannot be used by this version")
    return ckpt


def configs_from_checkpoint(ckpt: dict) -> tuple[RunConfig, AlgoConfig]:
    """The run and algorithm configurations a checkpoint (or a ``config.json``) was written with;
    an algorithm field the stored configuration predates gets the behaviour it ran with
    (``Config.LEGACY``), not today's default."""
    run = RunConfig(**ckpt["config"]["run"])
    stored = ckpt["config"]["algo"]
    legacy = ALGORITHMS[run.algo][0].Config.LEGACY if run.algo in ALGORITHMS else {}
    return run, algo_config(run.algo, **{**{k: v for k, v in legacy.items() if k not in stored}, **stored})


def _task_of(run: RunConfig):
    overrides = {"horizon": run.horizon} if run.horizon else {}
    if run.scene_params:
        overrides["scene_params"] = run.scene_overrides()
    return make_task(run.env, **overrides)


def load_policy(checkpoint, device="cpu", dtype: str | None = None):
    """The trained policy of a checkpoint (``checkpoint.pt`` or its run folder).

    Returns ``(task, run, policy, epoch)``: the task it was trained on (with the run's horizon),
    its :class:`~warpsim_rl.algos.RunConfig`, the deterministic actor (``obs -> action``, on
    ``device`` in ``dtype``, default the run's) in eval mode, and the epoch of the checkpoint.
    The actor is built by the run's algorithm (``Algorithm.make_actor``), so its architecture is
    the one trained; torch's global random state is left as it was."""
    ckpt = load_checkpoint(checkpoint, what="policy")
    run, cfg = configs_from_checkpoint(ckpt)
    run = dataclasses.replace(run, num_envs=1, device=device, dtype=dtype or run.dtype, out=None)
    task = _task_of(run)
    with torch.random.fork_rng(devices=[]):
        algo = make_algorithm(task, run, cfg)
    policy = algo.policy
    try:
        policy.load_state_dict(ckpt["algorithm"]["modules"]["policy"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"policy: {str(checkpoint)!r} holds no policy this version can load ({e})") from None
    return task, run, policy.eval(), int(ckpt["epoch"])


def _eval_metrics(ev: dict) -> dict:
    out = {f"eval/{k}": ev[k] for k in EVAL_KEYS}
    out.update({f"eval/{k}_std": ev[k + "_std"] for k in EVAL_KEYS})
    out["eval/diverged"] = ev["diverged"]
    return out


def _run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def _clear_run_files(out: Path) -> None:
    """Delete the files of :data:`RUN_FILES` in ``out`` (in ``tb/`` only TensorBoard's event
    files; ``tb/`` itself when that leaves it empty), nothing else."""
    for name in RUN_FILES:
        p = out / name
        if name == "tb":
            if p.is_dir() and not p.is_symlink():
                for f in p.glob("events.out.tfevents.*"):
                    f.unlink()
                if not any(p.iterdir()):
                    p.rmdir()
            continue
        if p.is_file() or p.is_symlink():
            p.unlink()


def _refuse_existing(out: Path) -> None:
    found = _run_files(out)
    if found:
        q = shlex.quote(str(out))
        raise RunExistsError(
            f"out = {str(out)!r} already holds a training run ({', '.join(found)}); continue it with "
            f"`python train.py --resume {q}` (--epochs N to extend it), choose another --out, or pass "
            f"--overwrite to replace it (that deletes {', '.join(n + '/' if n == 'tb' else n for n in RUN_FILES)} "
            f"there and nothing else)")


def _resume_source(resume) -> tuple[dict | None, RunConfig, AlgoConfig, Path]:
    """``(checkpoint or None, run, cfg, folder)`` of ``resume``: a checkpoint, or the
    ``config.json`` of a run interrupted before its first checkpoint (then ``None``)."""
    path = Path(resume)
    folder = path.parent if path.is_file() else path
    if path.is_dir() and not (path / "checkpoint.pt").exists() and (path / "config.json").is_file() \
            and not (path / "results.json").exists():
        try:
            saved = json.loads((path / "config.json").read_text())
            run, cfg = configs_from_checkpoint({"config": saved})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"resume: {str(path)!r} has no checkpoint.pt and its config.json is "
                                  f"unreadable ({e})") from None
        return None, run, cfg, folder
    if path.is_dir() and not (path / "checkpoint.pt").exists() and not (path / "config.json").exists():
        raise CheckpointError(f"resume: {str(path)!r} holds neither checkpoint.pt nor config.json: no run to "
                              f"resume there (a run stopped before it wrote its configuration): start it "
                              f"again with its original flags")
    ckpt = load_checkpoint(resume)
    run, cfg = configs_from_checkpoint(ckpt)
    return ckpt, run, cfg, folder


def _prepare(run, cfg, resume, epochs, overwrite, threads):
    """The file side of :func:`train`'s start (rank 0 only under torchrun): the checkpoint or
    config.json to resume from, the checks of the output folder, and the config.json written.
    Returns ``(checkpoint or None, restart, run, cfg, created)``."""
    ckpt, restart = None, False
    if resume:
        if overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming continues the run, "
                             "overwrite would delete it")
        ckpt, run, cfg, folder = _resume_source(resume)
        restart = ckpt is None
        run = dataclasses.replace(run, out=str(folder))
    if epochs is not None:
        run = dataclasses.replace(run, epochs=epochs)
    if ckpt is not None and run.epochs < ckpt["epoch"]:
        raise ValueError(f"epochs = {run.epochs}: the run in {str(run.out_dir)!r} is already at epoch {ckpt['epoch']}; "
                         f"resume it with --epochs N >= {ckpt['epoch']} (N > {ckpt['epoch']} trains on)")
    if threads is not None:
        run = dataclasses.replace(run, threads=threads)
    if run.algo not in ALGORITHMS:
        raise ValueError(f"algo = {run.algo!r}: unknown; valid algorithms: {sorted(ALGORITHMS)}")
    cfg = algo_config(run.algo) if cfg is None else cfg
    expected = ALGORITHMS[run.algo][0].Config
    if not isinstance(cfg, expected):
        raise ValueError(f"algo = {run.algo!r} takes a {expected.__name__}, got a {type(cfg).__name__}")
    out = Path(run.out_dir)
    if ckpt is None and not (overwrite or restart):
        _refuse_existing(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"out = {str(out)!r}: not writable")
    if ckpt is None:
        _clear_run_files(out)
    cfg_dict = {"run": dataclasses.asdict(run), "algo": dataclasses.asdict(cfg)}
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg_dict, indent=2)))
    return ckpt, restart, run, cfg, created


def _on_lead(fn):
    """``fn()`` run on rank 0 only, its result — or the exception it raised, marked
    ``from_lead = True`` on the other ranks (rank 0 reports it) — on every rank. In one process:
    ``fn()``."""
    if not distributed.is_distributed():
        return fn()
    result = error = None
    if distributed.rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to every rank, raised there
            error = e
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        if distributed.rank() != 0:
            error.from_lead = True
        raise error
    return result


def train(run: RunConfig, cfg: AlgoConfig | None = None, resume: str | None = None, epochs: int | None = None,
          progress: bool = True, overwrite: bool = False, threads: int | None = None) -> dict:
    """Train ``run.algo`` with its configuration ``cfg`` (default: the registry's), or resume the
    run in folder (or checkpoint) ``resume`` with its own configuration (``epochs`` may extend
    it; the outputs stay in that folder). A folder that was interrupted before its first
    checkpoint is resumed from its ``config.json``, starting again at epoch 0.

    A new run refuses (:class:`RunExistsError`) an ``out_dir`` that already holds run files
    (:data:`RUN_FILES`) unless ``overwrite``, which deletes those files first. Ctrl-C raises
    :class:`TrainingInterrupted`. ``threads`` (resume only) replaces the run's CPU launch threads,
    which change no number. Returns the final results (also in ``results.json``)."""
    ckpt, restart, run, cfg, created = _on_lead(lambda: _prepare(run, cfg, resume, epochs, overwrite, threads))
    out = Path(run.out_dir)
    lead = distributed.rank() == 0
    cfg_dict = {"run": dataclasses.asdict(run), "algo": dataclasses.asdict(cfg)}
    if distributed.is_distributed():  # this rank's device and share of the cores (no number changes)
        run = dataclasses.replace(run, device=distributed.local_device(run.device),
                                  threads=run.threads or distributed.local_threads())

    start = ckpt["epoch"] if ckpt is not None else 0
    saved = start if ckpt is not None else None  # the epoch the checkpoint on disk holds
    epoch_now = None
    writer = bar = None
    ctrl_c = _CtrlC().__enter__()
    try:
        try:
            task = _task_of(run)
            algo = make_algorithm(task, run, cfg)
            algo.broadcast_parameters()
            bed = distributed.env_slice(task.test_bed_size)
            eval_core = StepCore(task, bed[1] - bed[0], run.device, run.dtype, run.threads)
        except Exception:
            if lead and ckpt is None and not restart:  # a new run that could not start leaves nothing behind
                (out / "config.json").unlink(missing_ok=True)
                if created:
                    try:
                        out.rmdir()
                    except OSError:
                        pass
            raise
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        t_run = time.perf_counter()
        history: list[dict] = []
        untrained = ckpt.get("untrained") if ckpt is not None else None
        before = 0.0
        if ckpt is not None:
            history = ckpt["history"]
            before = ckpt.get("train_time_s", sum(h.get("time/epoch_s", 0.0) for h in history))
        if untrained is None:
            # the untrained policy (a checkpoint of an older version: the same initial weights,
            # rebuilt by make_algorithm, evaluated before the checkpoint is loaded); evaluation
            # uses the fixed test bed and draws no random numbers
            ev = evaluate(task, algo.policy, eval_core)
            ev.pop("trajectory")
            untrained = {"epoch": 0, **{k: ev[k] for k in sorted(ev)}}
        if ckpt is not None:
            algo.load_state_dict(ckpt["algorithm"])
        if lead:
            writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)
            if not start:
                for k, v in _eval_metrics(untrained).items():
                    writer.add_scalar(k, v, 0)
        keys: list[str] = []
        final = None
        bar = tqdm(range(start, run.epochs), initial=start, total=run.epochs, disable=not (progress and lead),
                   desc=f"{run.algo} {run.env}", unit="epoch")
        clock_key = "time/train_s" if run.budget_clock == "wall" else "time/train_cpu_s"
        trained = {k: history[-1].get(k, 0.0) if history else 0.0 for k in ("time/train_s", "time/train_cpu_s")}
        for epoch in bar:
            spent = trained[clock_key]
            if run.budget_s is not None and spent >= run.budget_s:
                break
            epoch_now = epoch + 1
            t0, c0, steps0 = time.perf_counter(), time.process_time(), algo.env_steps
            fraction = None if run.budget_s is None else max(epoch / run.epochs, spent / run.budget_s)
            distributed.TRAFFIC.reset()
            algo.begin_epoch(epoch, fraction)
            row = {"epoch": epoch + 1, **algo.train_epoch()}
            row["time/epoch_s"] = time.perf_counter() - t0
            row["time/epoch_cpu_s"] = time.process_time() - c0
            if distributed.is_distributed():
                _merge_ranks(row, algo.core.counter, steps0)
            trained["time/train_s"] += row["time/epoch_s"]
            trained["time/train_cpu_s"] += row["time/epoch_cpu_s"]
            row.update(trained)
            row["env_steps"] = algo.env_steps
            now = trained[clock_key]
            crossed = (run.eval_every_s is not None and int(now // run.eval_every_s) > int(spent // run.eval_every_s)) \
                or any(spent < t <= now for t in run.eval_at_s)
            last = epoch + 1 == run.epochs or (run.budget_s is not None and now >= run.budget_s)
            if (run.eval_every and (epoch + 1) % run.eval_every == 0) or crossed or last:
                ev = evaluate(task, algo.policy, eval_core)
                traj = ev.pop("trajectory")
                if last:
                    final = (ev, traj)  # the final evaluation: the same policy, the same test bed
                row.update(_eval_metrics(ev))
            history.append(row)
            if lead:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                keys = sorted({k for h in history for k in h} | {"epoch"}, key=lambda k: (k != "epoch", k))
                atomic_write(out / "metrics.csv", lambda tmp: _write_csv(tmp, keys, history))
                state = {"config": cfg_dict, "epoch": epoch + 1, "algorithm": algo.state_dict(), "history": history,
                         "untrained": untrained, "train_time_s": before + time.perf_counter() - t_run}
                atomic_write(out / "checkpoint.pt", lambda tmp, state=state: torch.save(state, tmp))
            saved = epoch + 1
            ctrl_c.check()
            bar.set_postfix({"return": f"{row.get('train/return_before', float('nan')):.2f}",
                             **({"test": f"{row['eval/reward']:.2f}"} if "eval/reward" in row else {})})
        epoch_now = None
        if final is None:  # resumed at the end: nothing was trained in this session
            final = evaluate(task, algo.policy, eval_core)
            final = (final, final.pop("trajectory"))
        ev, traj = final
        session = time.perf_counter() - t_run
        start_row = {"epoch": 0, "train/return_before": float("nan"), "eval/reward": untrained["reward"],
                     "eval/reward_std": untrained["reward_std"]}
        if lead:
            plot_learning_curve([start_row, *history], out / "learning_curve.png",
                                f"{run.algo} on {run.env} (seed {run.seed})")
        first = ("time/epoch_s" if run.budget_clock == "wall" else "time/epoch_cpu_s")
        budget = {} if run.budget_s is None else {"budget_s": run.budget_s, "budget_clock": run.budget_clock,
                                                   "first_epoch_s": history[0][first] if history else None}
        results = {"env": run.env, "algo": run.algo, "seed": run.seed, "epochs": len(history), **budget,
                   "test_bed_size": task.test_bed_size, "train_time_s": before + session,
                   "train_time_s_this_session": session, "resumed_from_epoch": start,
                   **{k: ev[k] for k in sorted(ev)},
                   "untrained": untrained,
                   "curve": [{"epoch": 0, "time/train_s": 0.0, "time/train_cpu_s": 0.0, "env_steps": 0,
                              "eval/reward": untrained["reward"]},
                             *({k: h[k] for k in CURVE_KEYS if k in h and _finite(h[k])} for h in history)]}
        if lead:
            atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
            if run.usd_envs:
                _export_usd(task, traj, out / "eval.usdc", run, len(history))
    except KeyboardInterrupt:
        raise TrainingInterrupted(out, epoch_now, saved, run.epochs) from None
    except distributed.DistributedError as e:
        held = "no checkpoint yet" if saved is None else f"the checkpoint there holds epoch {saved}"
        raise distributed.DistributedError(f"{e}. Run folder {str(out)!r}: {held}; resume with `python train.py "
                                           f"--resume {shlex.quote(str(out))}` (under torchrun or not, any "
                                           f"world size)") from None
    finally:
        ctrl_c.__exit__()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return results


class _CtrlC:
    """Ctrl-C for the duration of :func:`train`, made reliable.

    Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to
    be; when that is inside a finaliser (``__del__`` of a Warp array, a weakref callback) Python
    prints "Exception ignored" and drops it, and the run goes on as if Ctrl-C never came. This
    handler raises the same ``KeyboardInterrupt`` and also records it, so :meth:`check` (called
    after every epoch) stops the run even when the first one was dropped, and the dropped one is
    not printed. Installed only where Python's own SIGINT handler is (the main thread, SIGINT not
    ignored); the previous handler and unraisable hook are restored on exit."""

    def __init__(self):
        self.requested = False
        self._installed = False

    def __enter__(self):
        import signal
        import sys
        import threading

        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        import signal
        import sys

        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = self._previous_hook
            self._installed = False
        return False

    def _handler(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def _unraisable(self, info) -> None:
        if not (self.requested and isinstance(info.exc_value, KeyboardInterrupt)):
            self._previous_hook(info)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C came and was dropped."""
        if self.requested:
            raise KeyboardInterrupt


def _merge_ranks(row: dict, counter, steps_before: int) -> None:
    """Under torchrun, make the epoch's row the run's: ``time/epoch_s`` the slowest rank's,
    ``time/epoch_cpu_s`` and the env steps the sums over the ranks (the step counter of every
    rank is set to the global count), so every rank takes the same budget and evaluation
    decisions; ``dist/bytes`` and ``dist/collectives`` the payload this rank handed to the
    epoch's collectives (:data:`~warpsim_rl.distributed.TRAFFIC`)."""
    row["dist/bytes"], row["dist/collectives"] = distributed.TRAFFIC.reset()
    wall = distributed.all_reduce(torch.tensor([row["time/epoch_s"]], dtype=torch.float64), "max")
    summed = distributed.all_reduce(torch.tensor([row["time/epoch_cpu_s"], counter.env_steps - steps_before],
                                                 dtype=torch.float64), "sum")
    row["time/epoch_s"], row["time/epoch_cpu_s"] = float(wall[0]), float(summed[0])
    counter.env_steps = steps_before + int(summed[1])


def _finite(v) -> bool:
    return not (isinstance(v, float) and not math.isfinite(v))


def _write_csv(path, keys, history):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for h in history:
            w.writerow(h)


def _export_usd(task, traj, path: Path, run: RunConfig, epochs: int) -> None:
    import numpy as np

    from .usd import export_rollout

    k = min(run.usd_envs, traj.states[0][0].shape[0])
    positions = np.stack([s[0][:k].detach().cpu().numpy() for s in traj.states])
    export_rollout(task.scene, positions, path, dt=task.dt,
                   metadata={"env": run.env, "algo": run.algo, "seed": run.seed, "epoch": epochs,
                             "actions": "policy", "initial_states": "test bed"})
