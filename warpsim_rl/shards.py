"""Every CPU core: per-environment launches split into contiguous shards of environments.

Warp's CPU backend runs one launch on one core. Every kernel of the engine works one environment
per thread and writes only that environment's rows, so the ``E`` environments can be split into
``threads`` contiguous shards ``[e0, e1)`` and launched concurrently: each shard is its own launch
on *views* of the per-environment arrays (offsets into the same memory, no copies), from a
persistent thread pool (a Warp CPU launch releases the GIL). Outputs are bitwise identical for
every thread count; per-env diagnostics (status, iterations, the sticky failure record) live in
per-env arrays, so they stay exact from any shard.

On CUDA a launch already spans the device: one shard, ``threads = 1``.

:class:`EnvShards` holds the bounds and the pool; the callers (``Simulator.launch``,
``Differentiator.vjp`` / ``jacobians``, ``Model.start_history``) build each shard's arguments with
:func:`env_rows` (arrays whose first axis is the environment), :func:`env_columns` (the
env-minor scratch layout of :func:`warpsim_rl.model.scratch_array`) and the model's
``data_shard`` / ``state_data``.
"""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor

import warp as wp

__all__ = ["EnvShards", "LaunchSite", "default_threads", "shard_bounds", "env_rows", "env_columns", "check_threads"]

_POOLS: dict[int, ThreadPoolExecutor] = {}


def default_threads(device=None) -> int:
    """The CPU cores available to this process (``os.sched_getaffinity``); 1 on CUDA."""
    if device is not None and wp.get_device(device).is_cuda:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def check_threads(threads) -> int | None:
    """``threads`` validated: ``None`` (the default) or an integer >= 1; ValueError naming it."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads = {threads!r}: must be an integer >= 1 (or None: the available cores)")
    return threads


def shard_bounds(num_envs: int, threads: int) -> list[tuple[int, int]]:
    """``min(threads, num_envs)`` contiguous ``(e0, e1)`` ranges covering ``[0, num_envs)``, sizes
    differing by at most one (the first ones larger)."""
    k = max(1, min(int(threads), int(num_envs)))
    base, extra = divmod(int(num_envs), k)
    bounds, e0 = [], 0
    for i in range(k):
        e1 = e0 + base + (1 if i < extra else 0)
        bounds.append((e0, e1))
        e0 = e1
    return bounds


def env_rows(arr: wp.array, e0: int, e1: int) -> wp.array:
    """The view of environments ``[e0, e1)`` of an array whose first axis is the environment
    (an array without elements, e.g. the (E, 0) contact parameters of a scene without geometry,
    is returned as it is: no kernel reads it)."""
    if arr.size == 0 or (e0 == 0 and e1 == arr.shape[0]):
        return arr
    return arr[e0:e1]


def env_columns(arr: wp.array, e0: int, e1: int) -> wp.array:
    """The view of environments ``[e0, e1)`` of a (rows, E) scratch array (env-minor layout)."""
    if arr.size == 0 or (e0 == 0 and e1 == arr.shape[1]):
        return arr
    return arr[:, e0:e1]


class LaunchSite:
    """Chooses, for one launch site (e.g. a simulator's step), between one launch over all
    environments and one launch per shard, by timing both.

    Handing a shard to another thread costs tens of microseconds (thread and GIL hand-offs; about
    80 µs per step on this project's 2-core VM with the other core idle), so sharding only pays
    when a launch is long: it does for rope3d at 64 envs, not for pendulum2d below ~2000 envs.
    The choice cannot change a result (both compute the same bits), so it is made by measurement
    and kept under review: the first ``2 * TRIALS`` calls alternate the two variants; after that
    every call runs the current choice except one in ``PROBE_EVERY``, which runs the other one.
    Each variant's estimate is the median of its last ``WINDOW`` timings, and the faster estimate
    is chosen after the trials and after every probe. A noisy moment during the trials therefore
    pins the slower variant until the ``TRIALS + 1``-th probe at most (about
    ``(TRIALS + 1) * PROBE_EVERY`` calls; a fixed choice re-timed every 2000 calls pinned it for
    2000, docs/results.md), a single outlier cannot flip the choice, old timings age out after
    ``WINDOW`` of them, and the probes run the slower variant on ``1 / PROBE_EVERY`` of the calls."""

    TRIALS = 3
    WINDOW = 9
    PROBE_EVERY = 64

    def __init__(self, threads: int):
        self.threads = threads
        self._times: dict[int, collections.deque] = {k: collections.deque(maxlen=self.WINDOW)
                                                     for k in (1, threads)}
        self._calls = 0
        self.choice = threads

    def _other(self, variant: int) -> int:
        return 1 if variant == self.threads else self.threads

    def variant(self) -> int:
        """The shard count for the next call (1 or ``threads``)."""
        if self.threads == 1:
            return 1
        if self._calls < 2 * self.TRIALS:
            return (1, self.threads)[self._calls % 2]
        if self._calls % self.PROBE_EVERY == 0:
            return self._other(self.choice)
        return self.choice

    def record(self, variant: int, seconds: float) -> None:
        """The wall time of a call made with ``variant``."""
        self._calls += 1
        self._times[variant].append(seconds)
        if self.threads == 1 or self._calls < 2 * self.TRIALS:
            return
        if (self._calls == 2 * self.TRIALS or variant != self.choice) and all(self._times.values()):
            # after the trials, after a probe (a caller that forces one variant leaves the other untimed)
            med = {k: sorted(v)[len(v) // 2] for k, v in self._times.items()}
            self.choice = min(med, key=med.get)


class EnvShards:
    """The shards of ``num_envs`` environments on ``device`` for ``threads`` threads.

    Attributes:
        bounds: list of ``(e0, e1)``; ``threads``: their number (<= ``requested``).
        whole: ``[(0, num_envs)]``, the single-launch variant.
    """

    def __init__(self, num_envs: int, threads: int, device):
        self.device = wp.get_device(device)
        self.requested = int(threads)
        self.bounds = shard_bounds(num_envs, 1 if self.device.is_cuda else self.requested)
        self.whole = [(0, int(num_envs))]
        self.threads = len(self.bounds)

    @property
    def single(self) -> bool:
        return self.threads == 1

    def site(self) -> LaunchSite:
        """A new :class:`LaunchSite` for these shards."""
        return LaunchSite(self.threads)

    def run(self, calls) -> None:
        """Run the callables (one per shard) concurrently: all but the first on the persistent
        pool, the first on the calling thread; re-raise the first exception."""
        calls = list(calls)
        if len(calls) == 1:
            calls[0]()
            return
        pool = _POOLS.get(self.threads)
        if pool is None:
            pool = _POOLS[self.threads] = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                              thread_name_prefix="warpsim-shard")
        futures = [pool.submit(c) for c in calls[1:]]
        try:
            calls[0]()
        finally:
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err

    def timed_run(self, site: LaunchSite, variants: dict) -> None:
        """Run ``variants[k]`` (the callables of the ``k``-shard variant) for the shard count the
        ``site`` chooses, and report the time to it."""
        k = site.variant()
        t0 = time.perf_counter()
        self.run(variants[k])
        site.record(k, time.perf_counter() - t0)

    def record(self, kernel, args, bounds=None) -> list:
        """One recorded launch (``wp.Launch``) per range of ``bounds`` (default the shards):
        ``args(e0, e1) -> (inputs, outputs)``."""
        cmds = []
        for e0, e1 in bounds or self.bounds:
            inputs, outputs = args(e0, e1)
            cmds.append(wp.launch(kernel, dim=e1 - e0, inputs=inputs, outputs=outputs, device=self.device,
                                  record_cmd=True))
        return cmds

    def launch(self, kernel, args, site: LaunchSite | None = None) -> None:
        """One launch over all envs, or one per shard (``args`` as in :meth:`record`), as ``site``
        chooses (without a site: the shards)."""
        if self.single:
            inputs, outputs = args(*self.whole[0])
            wp.launch(kernel, dim=self.whole[0][1], inputs=inputs, outputs=outputs, device=self.device)
            return
        if site is None:
            self.run([c.launch for c in self.record(kernel, args)])
            return
        k = site.variant()
        t0 = time.perf_counter()
        if k == 1:
            inputs, outputs = args(*self.whole[0])
            wp.launch(kernel, dim=self.whole[0][1], inputs=inputs, outputs=outputs, device=self.device)
        else:
            self.run([c.launch for c in self.record(kernel, args)])
        site.record(k, time.perf_counter() - t0)
