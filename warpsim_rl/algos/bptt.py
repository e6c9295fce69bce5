"""Backpropagation through time: the baseline of PODS Fig. 3.

Each epoch rolls out ``pi_theta`` from ``k`` sampled initial states keeping the autograd graph
through the policy and the simulator (the implicit adjoints of ``warpsim_rl.autodiff``), and
takes ``gradient_steps`` Adam steps on ``-mean(V)`` over the envs that did not fail, with the
gradient norm clipped to ``max_grad_norm`` (BPTT is prone to exploding gradients; PODS Sec. 4).
"""

from __future__ import annotations

import dataclasses

import torch

from .. import distributed
from ..tasks import Task
from .base import Algorithm
from .config import AlgoConfig, RunConfig, check_int, check_positive

__all__ = ["BPTT", "BPTTConfig"]


@dataclasses.dataclass
class BPTTConfig(AlgoConfig):
    """BPTT options."""

    lr: float = 1e-2
    """Adam learning rate (tuned on pendulum2d-stop over {1e-3, 3e-3, 1e-2, 3e-2}, docs/results.md)"""
    lr_schedule: str = "constant"
    """kept constant (a linear decay was worse on pendulum2d-stop)"""
    gradient_steps: int = 1
    """gradient steps per epoch, each on a fresh differentiable rollout from the epoch's states"""
    max_grad_norm: float = 1.0
    """gradient-norm clip"""

    def __post_init__(self):
        super().__post_init__()
        check_int("gradient_steps", self.gradient_steps, 1)
        check_positive("max_grad_norm", self.max_grad_norm)


class BPTT(Algorithm):
    Config = BPTTConfig
    DISTRIBUTED = True

    def __init__(self, task: Task, run: RunConfig, cfg: BPTTConfig):
        super().__init__(task, run, cfg)
        self.optimizer = self.register_optimizer("policy", self.policy.parameters())

    def train_epoch(self) -> dict:
        cfg, task = self.cfg, self.task
        state0 = self.initial_state()
        for _ in range(cfg.gradient_steps):
            traj = self.core.rollout(self.policy, state0, task.horizon, graph=True)
            ok = ~traj.failed
            loss = -self.global_mean(traj.returns, ok)  # under torchrun: this rank's share
            self.optimizer.zero_grad()
            loss.backward()
            self.all_reduce_gradients()
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        # after the steps: the graph was built with the old statistics (in-place update); states of
        # failed environments are not observed
        self.policy.observe(traj.obs.detach()[:, ok])
        return {"train/return_before": self.global_value(self.global_mean(traj.returns.detach(), ok)),
                "train/grad_norm": float(norm), "train/diverged": int(distributed.global_count(traj.failed))}
