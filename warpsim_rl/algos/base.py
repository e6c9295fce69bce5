"""The algorithm base: what every training algorithm shares (rsl_rl-style small algorithm files
over one contract).

An :class:`Algorithm` is built from a task, a :class:`~warpsim_rl.algos.config.RunConfig` and its
own config dataclass (``Algorithm.Config``). The base owns

* the :class:`~warpsim_rl.core.StepCore` of ``num_envs`` environments (``self.core``) — every
  algorithm steps the same core as the torch environment and the baselines;
* the deterministic actor ``self.policy`` (:class:`~warpsim_rl.algos.models.MLPPolicy`), created
  first under ``torch.manual_seed(seed)`` so that a seed gives every algorithm the same initial
  weights; the test bed evaluates it;
* registries of named **modules** (networks: actor, critics, targets), **optimisers** (each
  with a base learning rate and a schedule), **buffers** (anything with ``state_dict`` /
  ``load_state_dict``, e.g. a replay buffer) and **random generators** (numpy ``Generator``,
  ``torch.Generator`` or :data:`TORCH_GLOBAL_RNG`). Saving / loading (exact resume), parameter
  broadcast and the flat gradient all-reduce of data-parallel training work on those registries,
  so a new algorithm only registers its pieces.

Under ``torchrun`` (:mod:`warpsim_rl.distributed`) ``run.num_envs`` is the global count: the core
holds this rank's block ``self.env_slice`` of it, :meth:`Algorithm.initial_state` draws the global
batch and keeps the block, losses are each rank's share of the global loss
(:meth:`Algorithm.global_mean`) and :meth:`Algorithm.all_reduce_gradients` sums the gradients. An
algorithm written that way sets ``DISTRIBUTED = True``; the others refuse a world size above 1.

A subclass implements :meth:`train_epoch` (returning a metrics dict with at least
:data:`STANDARD_METRICS`) and, if it has extra pieces, registers them in ``__init__``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from .. import distributed
from ..core import StepCore
from ..tasks import Task
from .config import AlgoConfig, RunConfig
from .models import MLPPolicy
from .returns import masked_mean
from .schedules import LR_SCHEDULES

__all__ = ["Algorithm", "STANDARD_METRICS", "TORCH_GLOBAL_RNG"]

#: metrics every ``train_epoch`` returns: the mean return of the epoch's training rollouts over
#: the envs that did not fail, and how many envs failed
STANDARD_METRICS = ("train/return_before", "train/diverged")


class _TorchGlobalRNG:
    """Stands for torch's global generator (``torch.manual_seed`` / ``torch.randint`` without a
    generator) in the generator registry."""

    def get_state(self):
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_state(self, state) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


TORCH_GLOBAL_RNG = _TorchGlobalRNG()


def _generator_state(gen):
    if isinstance(gen, np.random.Generator):
        return gen.bit_generator.state
    return gen.get_state()


def _set_generator_state(gen, state) -> None:
    if isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state
    else:
        gen.set_state(state)


class Algorithm:
    """Base of the training algorithms (see the module doc)."""

    #: the algorithm's config dataclass (a subclass of AlgoConfig)
    Config: ClassVar[type[AlgoConfig]] = AlgoConfig
    #: whether the algorithm runs data-parallel under torchrun (see the module doc)
    DISTRIBUTED: ClassVar[bool] = False

    def __init__(self, task: Task, run: RunConfig, cfg: AlgoConfig):
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(cfg).__name__}")
        self.check_process_group(run)
        self.task, self.run, self.cfg = task, run, cfg
        #: this rank's block [e0, e1) of the run's num_envs environments ((0, num_envs) in one process)
        self.env_slice = distributed.env_slice(run.num_envs)
        self.core = StepCore(task, self.env_slice[1] - self.env_slice[0], run.device, run.dtype, run.threads)
        self.device, self.dtype = self.core.device, self.core.dtype
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.buffers: dict[str, Any] = {}
        self.generators: dict[str, Any] = {}
        self._schedules: dict[str, tuple[float, str]] = {}
        torch.manual_seed(run.seed)
        self.policy = self.register_module("policy", self.make_actor())
        self.rng = self.register_generator("rng", np.random.default_rng(run.seed))
        self.register_generator("torch", TORCH_GLOBAL_RNG)
        self.register_buffer("env_steps", self.core.counter)

    @classmethod
    def check_process_group(cls, run: RunConfig) -> None:
        """ValueError naming the algorithm if it runs under torchrun (world size above 1) without
        data-parallel support (``DISTRIBUTED``)."""
        if distributed.is_distributed() and not cls.DISTRIBUTED:
            from . import ALGORITHMS

            able = sorted(k for k, (c, _) in ALGORITHMS.items() if c.DISTRIBUTED)
            raise ValueError(f"algo = {run.algo!r} runs in one process only; under torchrun (world size "
                             f"{distributed.world_size()}) use one of {able}")

    @property
    def env_steps(self) -> int:
        """Environment steps simulated for training so far (:class:`~warpsim_rl.core.StepCounter`
        of ``self.core`` and its siblings; saved in checkpoints)."""
        return self.core.counter.env_steps

    # -- shared pieces ---------------------------------------------------------------------------
    def make_actor(self) -> MLPPolicy:
        """The deterministic actor every algorithm starts from (same widths and, per seed, same
        weights for every algorithm)."""
        return MLPPolicy(self.task.obs_dim, self.task.action_dim, self.core.limit, tuple(self.cfg.hidden),
                         normalize=self.cfg.normalize_obs).to(device=self.device, dtype=self.dtype)

    def initial_state(self, core: StepCore | None = None, copies: int = 1):
        """``num_envs`` initial states drawn from the task's distribution with ``self.rng`` (under
        torchrun: this rank's block ``env_slice`` of them), each repeated ``copies`` times
        (sample-major: env ``k * E + b`` for the ``E`` envs of the block), as the state tuple of
        ``core`` (default ``self.core``)."""
        pos, vel = self.task.sample_initial_states(self.run.num_envs, self.rng)
        e0, e1 = self.env_slice
        if (e0, e1) != (0, self.run.num_envs):  # under torchrun: this rank's block of the global draw
            pos, vel = pos[e0:e1], vel[e0:e1]
        if copies > 1:
            pos, vel = (np.tile(a, (copies, 1, 1)) for a in (pos, vel))
        return (core or self.core).initial_state(pos, vel)

    # -- registries ------------------------------------------------------------------------------
    def register_module(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        self._check_name(name, self.modules)
        self.modules[name] = module
        return module

    def register_optimizer(self, name: str, params, lr: float | None = None, schedule: str | None = None,
                           optimizer=torch.optim.Adam, **kwargs) -> torch.optim.Optimizer:
        """An optimiser over ``params`` (default Adam) at ``lr`` (default ``cfg.lr``), its
        learning rate set at each epoch by ``schedule`` (default ``cfg.lr_schedule``)."""
        lr = self.cfg.lr if lr is None else lr
        return self.adopt_optimizer(name, optimizer(params, lr=lr, **kwargs), lr, schedule)

    def adopt_optimizer(self, name: str, optimizer: torch.optim.Optimizer, lr: float,
                        schedule: str | None = None) -> torch.optim.Optimizer:
        """Register an optimiser built elsewhere (e.g. by an skrl agent) with base learning rate
        ``lr``, set at each epoch by ``schedule`` (default ``cfg.lr_schedule``)."""
        self._check_name(name, self.optimizers)
        schedule = self.cfg.lr_schedule if schedule is None else schedule
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"schedule = {schedule!r}: must be one of {sorted(LR_SCHEDULES)}")
        self.optimizers[name] = optimizer
        self._schedules[name] = (lr, schedule)
        return optimizer

    def register_buffer(self, name: str, buffer):
        self._check_name(name, self.buffers)
        self.buffers[name] = buffer
        return buffer

    def register_generator(self, name: str, generator):
        self._check_name(name, self.generators)
        self.generators[name] = generator
        return generator

    @staticmethod
    def _check_name(name: str, registry: dict) -> None:
        if name in registry:
            raise ValueError(f"{name!r} is already registered")

    # -- the epoch -------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, progress: float | None = None) -> None:
        """Set every optimiser's learning rate for 0-based ``epoch`` from its schedule, at
        ``progress`` through the run in [0, 1] (default ``epoch / run.epochs``; a run with a
        time budget passes the larger of that and its fraction of the budget spent)."""
        progress = epoch / self.run.epochs if progress is None else progress
        for name, opt in self.optimizers.items():
            base, schedule = self._schedules[name]
            lr = LR_SCHEDULES[schedule](base, progress)
            for group in opt.param_groups:
                group["lr"] = lr

    def train_epoch(self) -> dict:  # pragma: no cover - abstract
        """One epoch; returns metrics with at least :data:`STANDARD_METRICS`."""
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically: modules, optimisers, buffers, random
        generators."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "buffers": {k: b.state_dict() for k, b in self.buffers.items()},
            "generators": {k: _generator_state(g) for k, g in self.generators.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for part, registry in (("modules", self.modules), ("optimizers", self.optimizers),
                               ("buffers", self.buffers), ("generators", self.generators)):
            saved = state.get(part, {})
            if set(saved) != set(registry):
                raise ValueError(f"checkpoint {part} {sorted(saved)} do not match this algorithm's {sorted(registry)}")
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, b in self.buffers.items():
            b.load_state_dict(state["buffers"][k])
        for k, g in self.generators.items():
            _set_generator_state(g, state["generators"][k])

    # -- data-parallel training --------------------------------------------------------------------
    def parameters(self):
        """Every trainable parameter of the registered modules, in registration order, each once
        (a module may hold another registered one, e.g. a stochastic head around the actor)."""
        seen: set[int] = set()
        out = []
        for m in self.modules.values():
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def broadcast_parameters(self, src: int = 0) -> None:
        """Copy rank ``src``'s parameters and buffers of every registered module to all ranks
        (a no-op in one process)."""
        if not distributed.is_distributed():
            return
        for m in self.modules.values():
            for t in list(m.parameters()) + list(m.buffers()):
                flat = t.data.reshape(-1).clone() if not t.data.is_contiguous() else t.data
                distributed.broadcast_tensor(flat, src)
                if flat is not t.data:
                    t.data.copy_(flat.view_as(t.data))

    def all_reduce_gradients(self) -> None:
        """Sum the gradients of every registered parameter over the ranks with one flat
        all-reduce (rsl_rl's scheme; a no-op in one process). Each rank's loss must be its share
        of the global loss (:meth:`global_mean`), so that the sum is the global gradient."""
        if not distributed.is_distributed():
            return
        params = [p for p in self.parameters() if p.grad is not None]
        if not params:
            return
        flat = distributed.all_reduce(torch.cat([p.grad.reshape(-1) for p in params]), "sum")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    @staticmethod
    def global_mean(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """This rank's share of the mean of ``values`` over the entries where ``ok`` holds on every
        rank: ``sum_local(where(ok, values, 0)) / count_global(ok)`` (differentiable; summed over
        the ranks it is the global mean). In one process: :func:`~.returns.masked_mean` exactly."""
        if not distributed.is_distributed():
            return masked_mean(values, ok)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        return torch.where(ok, values, zero).sum() / distributed.global_count(ok.expand_as(values)).clamp_min(1)

    @staticmethod
    def global_value(share: torch.Tensor) -> float:
        """The sum over the ranks of a per-rank share (e.g. of :meth:`global_mean`) as a float."""
        return float(distributed.all_reduce(share.detach().reshape(1).clone(), "sum")[0])
