"""The training configuration and the pieces every algorithm shares.

:class:`TrainConfig` is one flat dataclass (CleanRL style): ``train.py`` turns every field into a
command-line flag and reads the same names from a TOML config file. :class:`Algorithm` owns the
task, the policy, a :class:`~warpsim_rl.algos.rollout.Rollouts` of ``num_envs`` environments, the
random generator of initial states and the optimiser, and knows how to save and restore all of
it (for exact resume).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..tasks import Task
from .policy import MLPPolicy
from .rollout import Rollouts

__all__ = ["TrainConfig", "Algorithm", "LR_SCHEDULES"]

#: learning-rate schedules; "" selects the algorithm's default
LR_SCHEDULES = ("", "constant", "linear")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Units: actions in m/s; ``horizon`` in steps."""

    env: str = "pendulum2d-stop"          #: registered task name
    algo: str = "pods2"                   #: see warpsim_rl.algos.ALGORITHMS
    num_envs: int = 256                   #: rollouts per epoch (PODS' k)
    epochs: int = 30                      #: training epochs
    device: str = "cpu"                   #: Warp/torch device
    dtype: str = "float32"                #: simulation and network precision
    seed: int = 0                         #: seeds initial states and network weights
    out: str = ""                         #: output folder ("" = runs/<env>-<algo>-s<seed>)
    horizon: int = 0                      #: rollout length (0 = the task's horizon)
    hidden: tuple = (64, 64)              #: policy MLP widths
    normalize_obs: bool = True            #: standardise observations with running statistics
    lr: float = 0.0                       #: Adam learning rate (0 = the algorithm's default)
    lr_schedule: str = ""                 #: "constant" or "linear" (to 0 over the epochs); "" = the algorithm's default
    regression_steps: int = 50            #: PODS: Adam steps on Eq. 7 per epoch
    regression_batch: int = 4096          #: PODS: minibatch of (state, action) pairs per Adam step
    policy_check: bool = True             #: PODS: keep a regressed policy only if its batch return did not drop
    line_search: int = 6                  #: PODS: step sizes alpha = 1, 1/2, ..., tried in parallel
    first_order_step: float = 0.05        #: PODS 1st order: largest change of a full step / limit
    gn_damping: float = 1.0               #: PODS 2nd order: Levenberg-Marquardt term added to H
    chunk: int = 256                      #: PODS 2nd order: rollouts per Gauss-Newton batch
    bptt_steps: int = 1                   #: BPTT: gradient steps per epoch
    max_grad_norm: float = 1.0            #: BPTT, zobg/fobg/aobg: gradient-norm clip
    pg_samples: int = 4                   #: zobg/fobg/aobg: noisy rollouts per initial state
    pg_sigma: float = 0.2                 #: zobg/fobg/aobg: action-noise std (m/s)
    aobg_gamma: float = 1000.0            #: aobg: tolerance gamma on |g_alpha - E g0| (units of dV/dtheta)
    aobg_delta: float = 0.05              #: aobg: confidence level delta of the ZoBG interval
    eval_every: int = 5                   #: epochs between test-bed evaluations (0 = only at the end)
    usd_envs: int = 16                    #: test-bed rollouts exported to USD at the end (0 = none)

    def validate(self) -> None:
        from . import ALGORITHMS
        from ..tasks import task_names

        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo = {self.algo!r}: unknown; valid algorithms: {sorted(ALGORITHMS)}")
        if self.env not in task_names():
            raise ValueError(f"env = {self.env!r}: unknown; valid environments: {task_names()}")
        for name in ("num_envs", "epochs", "regression_steps", "regression_batch", "line_search", "chunk",
                     "bptt_steps", "pg_samples"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} = {val!r}: must be an integer >= 1")
        for name in ("horizon", "eval_every", "usd_envs"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"{name} = {val!r}: must be an integer >= 0")
        if not 0.0 < self.aobg_delta < 1.0:
            raise ValueError(f"aobg_delta = {self.aobg_delta!r}: must be in (0, 1)")
        for name in ("first_order_step", "max_grad_norm", "pg_sigma", "aobg_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be > 0")
        for name in ("normalize_obs", "policy_check"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be true or false")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule = {self.lr_schedule!r}: must be one of {LR_SCHEDULES}")
        if not self.gn_damping >= 0:
            raise ValueError(f"gn_damping = {self.gn_damping!r}: must be >= 0")
        if not self.lr >= 0:
            raise ValueError(f"lr = {self.lr!r}: must be >= 0 (0 = the algorithm's default)")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype = {self.dtype!r}: must be 'float32' or 'float64'")


class Algorithm:
    """Base of the training algorithms: ``begin_epoch(epoch)``, ``train_epoch() -> metrics``,
    ``state_dict()``, ``load_state_dict()``; subclasses call :meth:`make_optimizer`."""

    optimizer: torch.optim.Optimizer

    def __init__(self, task: Task, cfg: TrainConfig):
        self.task, self.cfg = task, cfg
        self.rollouts = Rollouts(task, cfg.num_envs, cfg.device, cfg.dtype)
        self.device, self.dtype = self.rollouts.device, self.rollouts.dtype
        torch.manual_seed(cfg.seed)
        self.policy = MLPPolicy(task.obs_dim, task.action_dim, self.rollouts.limit, tuple(cfg.hidden),
                                 normalize=cfg.normalize_obs).to(
            device=self.device, dtype=self.dtype)
        self.rng = np.random.default_rng(cfg.seed)

    def make_optimizer(self, default_lr: float, default_schedule: str) -> None:
        """Adam on the policy weights at ``cfg.lr`` and ``cfg.lr_schedule``, or the algorithm's
        defaults where those are unset (0, "")."""
        self.base_lr = self.cfg.lr or default_lr
        self.lr_schedule = self.cfg.lr_schedule or default_schedule
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.base_lr)

    def begin_epoch(self, epoch: int) -> None:
        """Set the learning rate of 0-based ``epoch``: ``"linear"`` decays it as
        ``base_lr (1 - epoch / cfg.epochs)`` (CleanRL's ``anneal_lr``), ``"constant"`` keeps it."""
        frac = 1.0 - epoch / self.cfg.epochs if self.lr_schedule == "linear" else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * frac

    def train_epoch(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
