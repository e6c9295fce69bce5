"""Gradient error of the error-controlled Newton stop (SolverSettings.lte_fraction): the implicit
adjoint's directional derivative of a random linear function of the final rope positions against
a central finite difference of the actual forward map; float64, 100 steps of N(0, 0.1) m/s
handle actions, 6 random directions per setting.

    python docs/data/probe_lte_gradients.py
"""
import dataclasses

import numpy as np
import torch
import warp as wp
from probe_lte import ROPE

from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.scene import scene_from_dict

wp.config.quiet = True
scene = scene_from_dict(ROPE, "rope20")
T = 100
for dt in (0.02, 0.01, 0.005):
    for frac in (0.0, 0.1, 0.3):
        model = dataclasses.replace(scene, dt=dt).build(num_envs=1, dtype="float64", threads=1)
        model.lte_fraction = frac
        sim = TorchSimulator(model)
        state = sim.initial_state()
        rng = np.random.default_rng(0)
        a0 = torch.tensor(rng.normal(0, 0.1, (T, 1, 1, 3)))
        w = torch.tensor(rng.normal(0, 1, (1, scene.num_particles, 3)))

        def loss(a):
            return (sim.rollout(state, a)[-1][0] * w).sum()

        a = a0.clone().requires_grad_(True)
        loss(a).backward()
        errs = []
        for _ in range(6):
            d = torch.tensor(rng.normal(0, 1, a0.shape))
            d /= d.norm()
            with torch.no_grad():
                eps = 1e-6
                fd = float((loss(a0 + eps * d) - loss(a0 - eps * d)) / (2 * eps))
            errs.append(abs(float((a.grad * d).sum()) - fd) / max(abs(fd), 1e-12))
        print(f"dt {dt} lte_fraction {frac}: relative error of dL/da vs FD: median {np.median(errs):.2e} "
              f"max {max(errs):.2e}", flush=True)
