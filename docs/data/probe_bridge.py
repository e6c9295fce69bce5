"""Per-step CPU cost of a differentiable step through the torch bridge (docs/results.md, "The torch
bridge's per-step cost"): ``python docs/data/probe_bridge.py TASK E``.

32 steps of ``StepCore.step`` with fixed random actions (seed 0) from the task's scene state, then
``backward()`` of the summed reward; prints one JSON line with the µs of CPU (``time.process_time``)
per step of the forward pass (with the autograd graph) and of the backward pass, the median of 7
windows after 3 warm-up windows, and the sum of the action gradient (float64) to compare versions.
One torch thread, one Warp thread."""

import json
import sys
import time

import torch

from warpsim_rl.core import StepCore
from warpsim_rl.tasks import make_task

STEPS = 32

torch.set_num_threads(1)
task, num_envs = make_task(sys.argv[1]), int(sys.argv[2])
core = StepCore(task, num_envs, threads=1)
actions = torch.randn(STEPS, num_envs, task.action_dim, generator=torch.Generator().manual_seed(0)) * 0.3
state0 = core.initial_state()


def window():
    a = actions.clone().requires_grad_(True)
    state, total = state0, 0.0
    t0 = time.process_time()
    for t in range(STEPS):
        tr = core.step(state, a[t])
        state, total = tr.state, total + tr.reward.sum()
    t1 = time.process_time()
    total.backward()
    t2 = time.process_time()
    return (t1 - t0) / STEPS * 1e6, (t2 - t1) / STEPS * 1e6, float(a.grad.double().sum())


for _ in range(3):
    window()
forward, backward, grad_sum = zip(*[window() for _ in range(7)])
print(json.dumps({"task": task.name, "num_envs": num_envs, "forward_us_per_step": sorted(forward)[3],
                  "backward_us_per_step": sorted(backward)[3], "action_grad_sum": grad_sum[-1]}))
