"""Helpers shared by the benchmarks: machine information, wall-clock timing, random inputs,
progress on stderr and the command-line output.

Timings exclude kernel compilation (each benchmark warms up first) and synchronise the device
before the clock starts and before it stops; rates are reported as the median over the timed
passes (the machines are shared VMs) and the best pass. Progress goes to stderr (a tqdm bar,
advanced outside the timed region), so stdout carries only the result.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import warp as wp
from tqdm import tqdm

__all__ = ["machine_info", "git_revision", "time_passes", "rates", "random_actions", "swing_velocities", "emit",
           "stderr_log", "progress_bar"]


def machine_info() -> dict:
    """``{"machine", "warp", "torch"}``: the processor and the library versions a result needs."""
    import torch

    return {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "warp": wp.__version__,
            "torch": torch.__version__}


def git_revision(package_dir: str | Path | None = None) -> str:
    """``<commit>[-dirty]`` of the code the benchmark runs: an installed package's build stamp
    (``REVISION``, written by setup.py when built from a git checkout), else ``git describe`` of
    the checkout the package is imported from (the checkout whose top folder holds the package);
    "" when neither exists. ``package_dir``: the
    package's folder (default: this package's)."""
    folder = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    stamp = folder / "REVISION"
    if stamp.is_file():
        return stamp.read_text().strip()
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10)
        # the package's own checkout (its folder's parent), not a repository that merely holds
        # an unstamped install (e.g. a virtual environment inside a checkout)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != folder.resolve().parent:
            return ""
        rev = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() if rev.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def time_passes(fn: Callable[[], object], repeats: int, device=None, setup: Callable[[], object] | None = None,
                on_pass: Callable[[], object] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``. ``setup()`` (untimed) runs before each
    call; with a Warp ``device`` it is synchronised before the clock starts and before it stops;
    ``on_pass()`` (untimed, e.g. a progress bar's ``update``) runs after each call."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        if device is not None:
            wp.synchronize_device(device)
        t0 = time.perf_counter()
        fn()
        if device is not None:
            wp.synchronize_device(device)
        times.append(time.perf_counter() - t0)
        if on_pass is not None:
            on_pass()
    return times


def rates(times: list[float], env_steps: int) -> dict:
    """``elapsed_s`` (median pass), ``env_steps_per_s`` (at the median) and
    ``env_steps_per_s_best`` (the fastest pass) of passes of ``env_steps`` environment steps."""
    elapsed = float(np.median(times))
    return {"elapsed_s": elapsed, "env_steps_per_s": env_steps / elapsed, "env_steps_per_s_best": env_steps / min(times)}


def random_actions(model, rng: np.random.Generator, count: int) -> list:
    """``count`` Warp arrays (E, h) of handle velocities uniform within the limits (zeros when the
    scene has no handle)."""
    lim = model.scene.velocity_limit
    acts = rng.uniform(-1.0, 1.0, size=(count, model.num_envs, max(model.num_handles, 1), model.dim))
    if model.num_handles:
        acts = acts * lim[None, None]
    else:
        acts[:] = 0.0
    return [wp.array(a.astype(model.np_dtype), dtype=model.vec, device=model.device) for a in acts]


def swing_velocities(scene, envs: int, rng: np.random.Generator, scale: float = 0.5) -> np.ndarray:
    """(E, n, dim) initial velocities: the scene's, plus one N(0, ``scale``) m/s velocity per env
    shared by all free particles (a rigid swing, so that Newton has work to do)."""
    vel = np.broadcast_to(scene.velocities, (envs,) + scene.velocities.shape).copy()
    vel[:, ~scene.is_handle] += rng.normal(0.0, scale, size=(envs, 1, scene.dim))
    return vel


def emit(result: dict, as_json: bool) -> None:
    """Print a benchmark result: one JSON object, or one ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def stderr_log(verbose: bool) -> Callable[[str], None]:
    """A progress logger: prints each message on stderr when ``verbose`` (above any open progress
    bar), else does nothing."""
    if verbose:
        return lambda msg: tqdm.write(msg, file=sys.stderr)
    return lambda msg: None


@contextlib.contextmanager
def progress_bar(progress: "bool | tqdm", total: int, desc: str, unit: str = "pass") -> Iterator[tqdm]:
    """A tqdm bar on stderr over ``total`` units of work, closed on exit.

    ``progress``: ``True`` (a new bar), ``False`` (a disabled one: nothing is printed) or an open
    bar of a calling benchmark, which is used as it is (the caller counted these units in its
    total and closes it). Bars are shown whether or not stderr is a terminal, so a long run is
    never silent; benchmarks advance them only outside their timed regions."""
    if isinstance(progress, tqdm):
        yield progress
        return
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()
