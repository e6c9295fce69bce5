"""Backpropagation through time: the baseline of PODS Fig. 3.

Each epoch rolls out ``pi_theta`` from ``k`` sampled initial states keeping the autograd graph
through the policy and the simulator (the implicit adjoints of ``warpsim_rl.autodiff``), and
takes ``bptt_steps`` Adam steps on ``-mean(V)`` with the gradient norm clipped to
``max_grad_norm`` (BPTT is prone to exploding gradients; PODS Sec. 4).
"""

from __future__ import annotations

import torch

from ..tasks import Task
from .base import Algorithm, TrainConfig

__all__ = ["BPTT"]


class BPTT(Algorithm):
    #: learning rate, constant (tuned on pendulum2d-stop over {1e-3, 3e-3, 1e-2, 3e-2} and against a
    #: linear decay, docs/results.md)
    DEFAULT_LR = 1e-2

    def __init__(self, task: Task, cfg: TrainConfig):
        super().__init__(task, cfg)
        self.make_optimizer(self.DEFAULT_LR, "constant")

    def train_epoch(self) -> dict:
        cfg, task = self.cfg, self.task
        pos, vel = task.sample_initial_states(cfg.num_envs, self.rng)
        state0 = self.rollouts.initial_state(pos, vel)
        for _ in range(cfg.bptt_steps):
            traj = self.rollouts.policy(self.policy, state0, task.horizon, graph=True)
            ok = ~traj.failed
            loss = -(traj.returns * ok).sum() / ok.sum().clamp_min(1)
            self.optimizer.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        # after the steps: the graph was built with the old statistics (in-place update); states of
        # failed environments are not observed
        self.policy.observe(traj.obs.detach()[:, ~traj.failed])
        return {"train/return_before": float(traj.returns.detach().mean()), "train/grad_norm": float(norm),
                "train/diverged": int(traj.failed.sum())}
