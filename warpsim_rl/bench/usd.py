"""USD export benchmark: ``python -m warpsim_rl.bench usd`` (also ``python -m warpsim_rl.usd --bench``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..scene import load_scene
from ..usd import SUFFIXES, export_rollout, record_rollout
from .common import progress_bar, time_passes

__all__ = ["bench_export"]


def bench_export(envs: int = 64, frames: int = 100, scene: str = "rope3d", suffix: str = ".usdc",
                 out_dir=None, repeats: int = 3, simulate: bool = True, progress=False) -> dict:
    """Time :func:`~warpsim_rl.usd.export_rollout` of ``envs`` environments over ``frames``
    simulated steps (``frames + 1`` time samples with the initial state) to a temporary ``suffix``
    file (one of :data:`~warpsim_rl.usd.SUFFIXES`) in ``out_dir`` (default: the system's temporary
    folder). The reported ``export_s`` is the median of ``repeats`` exports (validation, stage
    building and writing the file); ``simulate_s`` times the :func:`~warpsim_rl.usd.record_rollout`
    that produced the positions (it includes kernel compilation when Warp's cache is cold);
    ``simulate=False`` exports random positions instead. ``progress``: a bar on stderr (the
    rollout, then each export)."""
    from pxr import Usd

    if suffix.lower() not in SUFFIXES:
        raise ValueError(f"suffix = {suffix!r}: must be one of {list(SUFFIXES)}")
    sc = load_scene(scene)
    with progress_bar(progress, repeats + 1, f"usd {scene}") as bar:
        return _bench_export(sc, envs, frames, suffix, out_dir, repeats, simulate, bar, Usd)


def _bench_export(sc, envs, frames, suffix, out_dir, repeats, simulate, bar, Usd) -> dict:
    t0 = time.perf_counter()
    if simulate:
        positions = record_rollout(sc, envs, frames, seed=0, device="cpu").positions
    else:
        rng = np.random.default_rng(0)
        positions = sc.positions + rng.normal(0.0, 0.01, size=(frames + 1, envs) + sc.positions.shape)
    sim_s = time.perf_counter() - t0
    bar.update()
    with tempfile.TemporaryDirectory(dir=out_dir) as d:
        out = Path(d) / f"bench{suffix}"
        times = time_passes(lambda: export_rollout(sc, positions, out), repeats, on_pass=bar.update)
        size = out.stat().st_size
    return {"benchmark": "usd_export", "scene": sc.name, "envs": envs, "steps": frames,
            "time_samples": frames + 1, "format": suffix, "export_s": float(np.median(times)),
            "export_s_all": times, "file_bytes": size, "simulate_s": sim_s, "usd": ".".join(map(str, Usd.GetVersion()))}
