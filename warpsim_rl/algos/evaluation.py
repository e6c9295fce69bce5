"""Evaluation on a task's fixed test bed: the same metrics for every algorithm (PODS Figs. 8–10).

The policy is any callable ``obs (E, obs_dim) -> action (E, h*dim)``; algorithms pass their
deterministic actor (a stochastic actor's mean). The statistics are over the test-bed envs whose
implicit solve did not fail, and ``diverged`` counts the others, so a method can neither hide
divergence nor turn every mean into NaN by one failed env.

Under torchrun each rank evaluates its block of the test bed (:func:`~warpsim_rl.distributed.env_slice`)
and the per-env values are gathered, so the statistics are those of the whole test bed.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..core import StepCore
from ..tasks import Task

__all__ = ["evaluate", "EVAL_KEYS"]

#: the metrics of :func:`evaluate` (each with a ``_std`` companion)
EVAL_KEYS = ("reward", "terminal_kinetic_energy", "distance_to_target", "action_magnitude")


@torch.no_grad()
def evaluate(task: Task, policy, core: StepCore | None = None, device="cpu", dtype="float32") -> dict:
    """Evaluate ``policy`` on the task's fixed test bed (PODS Figs. 8–10 metrics).

    Returns mean and std over the test bed of: ``reward`` (episode return), ``terminal_kinetic_energy``
    (J, payload at the last step), ``distance_to_target`` (m, mean over payload particles at the
    last step), ``action_magnitude`` (m/s, mean over steps of the action norm); ``diverged`` counts
    environments whose implicit solve failed (left out of the other statistics). ``core`` (a :class:`~warpsim_rl.core.StepCore` of
    ``task.test_bed_size`` envs; under torchrun of this rank's block of them) is reused across calls
    when given. Also returns the trajectory (``"trajectory"``; under torchrun this rank's block)."""
    pos, vel = task.test_bed()
    e0, e1 = distributed.env_slice(pos.shape[0])
    pos, vel = pos[e0:e1], vel[e0:e1]
    if core is None or core.num_envs != pos.shape[0]:
        core = StepCore(task, pos.shape[0], device, dtype)
    traj = core.rollout(policy, core.initial_state(pos, vel), task.horizon)
    x, v = traj.states[-1][0], traj.states[-1][1]
    c = task.constants(x.device, x.dtype)
    mass = torch.as_tensor(task.scene.masses[task.payload], dtype=x.dtype, device=x.device)
    vp = v.index_select(1, c["payload"])
    ke = 0.5 * (mass[None, :] * vp.square().sum(-1)).sum(-1)
    dist = (x.index_select(1, c["payload"]) - c["target"]).norm(dim=-1).mean(-1)
    act = traj.actions.flatten(2).norm(dim=-1).mean(0)
    values = distributed.all_gather_rows(torch.stack([traj.returns, ke, dist, act, traj.failed.to(ke.dtype)], 1))
    ok = values[:, 4] == 0
    out = {"diverged": int((~ok).sum())}
    for i, name in enumerate(("reward", "terminal_kinetic_energy", "distance_to_target", "action_magnitude")):
        val = values[:, i]
        out[name] = float(val[ok].mean())
        out[name + "_std"] = float(val[ok].std())
    out["trajectory"] = traj
    return out
