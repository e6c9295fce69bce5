"""Data-parallel training over processes and machines (``torchrun``, ``torch.distributed``).

``torchrun --nproc_per_node=N train.py ...`` starts ``N`` processes (ranks); ``train.py`` sees
``WORLD_SIZE`` in its environment and calls :func:`init_from_environment` (backend gloo on the
CPU, NCCL on CUDA with ``cuda:LOCAL_RANK``, :func:`local_device`). Each rank simulates a contiguous block of the
``num_envs`` environments (:func:`env_slice`; ``num_envs`` is the global count) on its own device
and the algorithms exchange only what must be shared:

* every rank draws the *global* batch of initial states from the same generator and keeps its
  block (drawing a few thousand initial states costs microseconds), so a seed gives the same
  environments for every world size and a checkpoint resumes under any world size;
* losses are each rank's share of the global loss (a sum over its envs divided by the global
  count, :func:`global_count`) and gradients are *summed* with one flat all-reduce
  (``Algorithm.all_reduce_gradients``), so an update equals the single-process one up to the
  order of floating-point summation;
* observation statistics are merged from every rank's count / mean / M2
  (:func:`merge_moments`); decisions (a policy check, a stop on a time budget) are taken on
  global sums, so every rank takes the same one;
* only rank 0 writes files (``warpsim_rl.training``).

Without a process group (one process) every function here is the identity and communicates
nothing. Every collective counts the bytes it moves (:data:`TRAFFIC`), and wraps a failure of the
process group (a rank that died, a timeout) into :class:`DistributedError`, which names this rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch

from .shards import shard_bounds

__all__ = ["DistributedError", "Traffic", "TRAFFIC", "init_from_environment", "leave", "is_distributed",
           "launched", "local_device", "rank", "world_size", "env_slice", "all_reduce", "broadcast_tensor", "all_gather_rows", "broadcast_object", "global_count",
           "merge_moments", "local_threads", "randn_rows", "GlobalRows", "TIMEOUT_ENV"]

#: environment variable holding the collectives' timeout in seconds (default 600): a rank that
#: waits longer than this for the others fails with a :class:`DistributedError`
TIMEOUT_ENV = "WARPSIM_DIST_TIMEOUT_S"


class DistributedError(RuntimeError):
    """A collective failed: another rank exited or is unreachable, or the timeout passed."""


@dataclasses.dataclass
class Traffic:
    """Bytes this rank handed to collectives since the last :meth:`reset` (the payload: an
    all-reduce of ``n`` bytes counts ``n``, whatever the backend's algorithm sends on the wire),
    and how many collectives."""

    bytes: int = 0
    calls: int = 0

    def add(self, nbytes: int) -> None:
        self.bytes += int(nbytes)
        self.calls += 1

    def reset(self) -> tuple[int, int]:
        """``(bytes, calls)`` so far, then zero."""
        out = (self.bytes, self.calls)
        self.bytes = self.calls = 0
        return out


#: the traffic counter of this process
TRAFFIC = Traffic()


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "600")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} = {raw!r}: must be a positive number of seconds")
    return value


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting
    ``WORLD_SIZE``) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment() -> None:
    """Join the process group ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) with the collectives' timeout of
    :data:`TIMEOUT_ENV`: gloo for CPU tensors and, where CUDA is available, NCCL for CUDA ones."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=_timeout_s())
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timeout)


def local_device(device: str) -> str:
    """This rank's device for a run on ``device``: ``cuda:LOCAL_RANK`` for any CUDA device under
    torchrun (made the current CUDA device), ``device`` otherwise."""
    if not (is_distributed() and device.startswith("cuda")):
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def leave(code: int, barrier: bool = True) -> None:
    """End this rank's process with exit status ``code`` (does not return). With ``barrier`` (a
    run that ended normally on every rank) the ranks first wait for each other, so that none goes
    while another is still finishing (rank 0 writes the results last); after a failure there is
    nobody to wait for. Then stdout and stderr are flushed and the process ends with
    ``os._exit``, skipping the interpreter's teardown: tearing down gloo's threads at exit made a
    rank abort now and then ("terminate called without an active exception", SIGABRT; twice in
    CI under load, after the run had finished), which torchrun reports as a failed run. Every
    file the run writes is closed (atomically renamed) before this."""
    import sys

    dist = _dist()
    if barrier and dist is not None and dist.get_world_size() > 1:
        try:
            dist.barrier()
        except RuntimeError:  # a rank that failed meanwhile: leave anyway
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def local_threads() -> int:
    """The CPU threads for one rank's Warp launches: the cores available to the process divided
    by the ranks on this machine (``LOCAL_WORLD_SIZE``), at least 1."""
    from .shards import default_threads

    return max(1, default_threads() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def env_slice(num_envs: int, world: int | None = None, rank_: int | None = None) -> tuple[int, int]:
    """This rank's contiguous block ``[e0, e1)`` of ``num_envs`` environments (sizes differing by
    at most one, the first ranks larger); ValueError if there are fewer envs than ranks."""
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    if num_envs < world:
        raise ValueError(f"num_envs = {num_envs}: fewer environments than the {world} ranks; every rank needs one")
    return shard_bounds(num_envs, world)[rank_]


def _collective(name: str, fn, nbytes: int):
    TRAFFIC.add(nbytes)
    try:
        return fn()
    except RuntimeError as e:  # gloo / NCCL errors are RuntimeErrors (DistBackendError among them)
        raise DistributedError(f"rank {rank()} of {world_size()}: {name} failed ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}); another "
                               f"rank exited or is unreachable, or the {_timeout_s():g} s timeout "
                               f"({TIMEOUT_ENV}) passed") from None


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` over the ranks in place (``op`` 'sum', 'max' or 'min') and return it."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    _collective(f"all_reduce({op})", lambda: dist.all_reduce(tensor, ops[op]), tensor.numel() * tensor.element_size())
    return tensor


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s values of the contiguous ``tensor`` on every rank (in place)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return tensor
    _collective("broadcast", lambda: dist.broadcast(tensor, src), tensor.numel() * tensor.element_size())
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors concatenated along dim 0 in rank order (the rows may differ in number
    from rank to rank; the other dims must agree)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    sizes = all_reduce(_one_hot(tensor.shape[0], world, tensor.device), "sum").tolist()
    rows = max(sizes)
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    _collective("all_gather", lambda: dist.all_gather(parts, padded), padded.numel() * padded.element_size())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _one_hot(value: int, world: int, device) -> torch.Tensor:
    out = torch.zeros(world, dtype=torch.int64, device=device)
    out[rank()] = value
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (any picklable object) on every rank."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    _collective("broadcast_object", lambda: dist.broadcast_object_list(box, src), 0)
    return box[0]


def global_count(mask: torch.Tensor) -> torch.Tensor:
    """The number of true entries of the bool ``mask`` over every rank (a 0-dim int64 tensor)."""
    return all_reduce(mask.sum().to(torch.int64).reshape(1), "sum")[0]


def merge_moments(x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(n, mean, var)`` of the rows of ``x`` (n, dim) pooled over every rank (population
    variance), from each rank's count and sums: two all-reduces. On one process: ``x.mean(0)``
    and ``x.var(0, unbiased=False)`` exactly."""
    if not is_distributed():
        n = x.shape[0]
        return n, x.mean(0), x.var(0, unbiased=False)
    head = torch.cat([torch.tensor([x.shape[0]], dtype=x.dtype, device=x.device), x.sum(0)])
    all_reduce(head, "sum")
    n = int(head[0].item())
    mean = head[1:] / max(n, 1)
    m2 = all_reduce((x - mean).square().sum(0), "sum")
    return n, mean, m2 / max(n, 1)


def randn_rows(num_envs: int, env_slice: tuple[int, int], shape: tuple, dtype, device) -> torch.Tensor:
    """This rank's block ``[e0, e1)`` of a standard normal draw ``(num_envs, *shape)`` from torch's
    global generator: every rank draws the whole batch, so env ``e`` gets the same noise for every
    world size (in one process: ``torch.randn((num_envs, *shape))`` itself)."""
    noise = torch.randn((num_envs, *shape), dtype=dtype, device=device)
    e0, e1 = env_slice
    return noise if (e0, e1) == (0, num_envs) else noise[e0:e1]


class GlobalRows:
    """The global index of rows that every rank holds a block of, time-major: row ``i`` is step
    ``i // N`` of the ``(i % N)``-th of the ``N`` columns (envs) of all ranks in rank order, as
    when one process flattens a (steps, envs) tensor. Every rank draws the same global indices
    (a minibatch, a permutation) and :meth:`local` keeps the ones it holds.

    Args:
        columns: this rank's columns (its envs that contribute rows); one all-gather.
        steps: rows per column.
    """

    def __init__(self, columns: int, steps: int):
        counts = all_gather_rows(torch.tensor([columns], dtype=torch.int64))
        self.columns, self.first = columns, int(counts[:rank()].sum())
        self.N = int(counts.sum())
        self.total = self.N * steps

    def local(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's local row indices (into its own time-major flattening) of the global rows
        ``idx`` it holds, in the order of ``idx``."""
        t, j = idx // self.N, idx % self.N - self.first
        mine = (j >= 0) & (j < self.columns)
        return (t * self.columns + j)[mine]
