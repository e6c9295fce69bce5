"""Record the golden arrays that ``tests/test_golden.py`` compares against bitwise.

    python tests/data/record_golden.py            # writes tests/data/golden_physics.npz

Run it only to re-baseline after an intended change of the numbers (say so in the commit).
Every shipped scene, float32 and float64: a 60-step rollout of 4 test-bed initial states under
fixed pseudo-random actions (some beyond the action limits, to exercise the clip) through the
documented torch API (``TorchSimulator``), with per-env stiffness and mass as autograd inputs;
records the final state, the gradients of a fixed random linear functional of the final state
with respect to the actions, the initial state, stiffness and mass, and the step Jacobians of
the first and last steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.scene import scene_names
from warpsim_rl.tasks import make_task

STEPS = 60
ENVS = 4


def scene_task(scene: str):
    """The "stop" task of ``scene`` (its test bed gives the initial states)."""
    return make_task(f"{scene}-stop")


def golden_rollout(scene: str, dtype: str) -> dict[str, np.ndarray]:
    task = scene_task(scene)
    model = task.scene.build(num_envs=ENVS, device="cpu", dtype=dtype)
    ts = TorchSimulator(model, check=False)
    tdt = ts.torch_dtype
    pos, vel = task.test_bed()
    x0 = ts.initial_state(pos[:ENVS], vel[:ENVS])
    x0 = tuple(t.clone().requires_grad_(True) for t in x0)
    rng = np.random.default_rng(7)
    lim = np.asarray(task.scene.velocity_limit, dtype=np.float64).reshape(1, 1, model.num_handles, model.dim)
    acts = 1.2 * lim * np.sin(np.cumsum(rng.normal(0.0, 0.4, (STEPS, ENVS, model.num_handles, model.dim)), axis=0))
    actions = torch.tensor(acts, dtype=tdt, requires_grad=True)
    k = torch.tensor(np.tile(task.scene.stiffness, (ENVS, 1)), dtype=tdt, requires_grad=True)
    m = torch.tensor(np.tile(task.scene.masses, (ENVS, 1)), dtype=tdt, requires_grad=True)
    states = [x0]
    for t in range(STEPS):
        states.append(ts.step(*states[-1], actions[t], k, m, validate=False))
    w = [torch.tensor(rng.normal(size=tuple(s.shape)), dtype=tdt) for s in states[-1]]
    loss = sum((a * b).sum() for a, b in zip(states[-1], w))
    loss.backward()
    out = {f"final_{i}": s.detach().numpy() for i, s in enumerate(states[-1])}
    out["grad_actions"] = actions.grad.numpy()
    out.update({f"grad_x0_{i}": s.grad.numpy() for i, s in enumerate(x0)})
    out["grad_stiffness"] = k.grad.numpy()
    out["grad_mass"] = m.grad.numpy()
    for name, t in (("first", 0), ("last", STEPS - 1)):
        with torch.no_grad():
            _, A, B = ts.jacobians(*(s.detach() for s in states[t]), actions[t].detach(), k.detach(), m.detach(),
                                   validate=False)
        out[f"A_{name}"], out[f"B_{name}"] = A.numpy(), B.numpy()
    return out


def machine() -> str:
    """The CPU the arrays are computed on, as far as it decides their bits: Warp compiles CPU
    kernels with ``-march=native``, so another CPU model (other vector units, other tuning) may
    round differently. Architecture, vendor, family, model and a digest of the CPU flags."""
    import hashlib
    import platform

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            info.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    flags = hashlib.sha1(" ".join(sorted(info.get("flags", "").split())).encode()).hexdigest()[:12]
    return " | ".join([platform.machine(), info.get("vendor_id", platform.processor()), info.get("cpu family", ""),
                       info.get("model", ""), info.get("model name", ""), f"flags {flags}"])


def record_all() -> dict[str, np.ndarray]:
    data = {"_machine": np.array(machine())}
    for scene in scene_names():
        for dtype in ("float32", "float64"):
            for key, val in golden_rollout(scene, dtype).items():
                data[f"{scene}/{dtype}/{key}"] = val
    return data


if __name__ == "__main__":
    path = Path(__file__).with_name("golden_physics.npz")
    np.savez_compressed(path, **record_all())
    print(f"wrote {path}", file=sys.stderr)
