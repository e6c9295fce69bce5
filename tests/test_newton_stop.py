"""The error-controlled Newton stop (``SolverSettings.lte_fraction``): fewer iterations, the same
trajectory to a small fraction of the step's own discretisation error; 0 is the tight rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from warpsim_rl.scene import SceneError, SolverSettings, scene_from_dict

from warpsim_rl.sim import Simulator

ROPE = {
    "scene": {"name": "rope20", "dim": 3, "dt": 0.01, "gravity": [0.0, -9.81, 0.0]},
    "particles": [{"name": "top", "handle": True, "position": [0.0, 0.0, 0.0], "velocity_limit": [2.0, 2.0, 2.0]}],
    # 19 free points of 1/19 kg below a fixed top point, 1 m long, released at 30 degrees
    "chains": [{"name": "rope", "start": "top", "end": [0.5, -0.8660254, 0.0], "segments": 19,
                "mass": 1.0 / 19.0, "stiffness": 1.0e4, "kind": "bilateral"}],
}


def _rope(dt: float, lte_fraction: float = 0.0):
    return dataclasses.replace(scene_from_dict(ROPE, "rope20"), dt=dt,
                               solver=SolverSettings(lte_fraction=lte_fraction))


def _run(scene, seconds: float = 1.0):
    """Positions of env 0 every 0.01 s and the mean Newton iterations per step (float64)."""
    model = scene.build(num_envs=2, dtype="float64", threads=1)
    sim = Simulator(model)
    a, b, control = model.state(), model.state(), model.control()
    steps, every = int(round(seconds / scene.dt)), int(round(0.01 / scene.dt))
    xs, iters = [], 0
    for i in range(steps):
        sim.step(a, control, b)
        a, b = b, a
        iters += int(sim.iterations.numpy()[0])
        if (i + 1) % every == 0:
            xs.append(a.x.numpy()[0])
    return np.array(xs), iters / steps


def test_error_controlled_stop_saves_iterations_within_the_discretisation_error():
    tight, it_tight = _run(_rope(0.01))
    loose, it_loose = _run(_rope(0.01, lte_fraction=0.1))
    fine, _ = _run(_rope(0.0025))  # the discretisation error of `tight` is ~ |tight - fine| (order 2)
    discretisation = np.abs(tight - fine).max()
    assert it_loose <= 0.75 * it_tight, (it_loose, it_tight)  # measured 1.75 vs 2.94 (2 s, 256 envs)
    assert np.abs(loose - tight).max() <= 0.05 * discretisation, (np.abs(loose - tight).max(), discretisation)


def test_zero_is_the_tight_rule_and_bad_values_are_refused():
    assert SolverSettings().lte_fraction == 0.0
    model = _rope(0.01).build(num_envs=1, dtype="float64", threads=1)
    assert model.lte_fraction == 0.0 and model.data.lte_fraction == 0.0
    model.lte_fraction = 0.2  # the kernels' struct follows
    assert model.data.lte_fraction == pytest.approx(0.2)
    data = {**ROPE, "solver": {"lte_fraction": -0.1}}
    with pytest.raises(SceneError, match=r"solver.lte_fraction = -0.1: must be >= 0 \(0: off\)"):
        scene_from_dict(data, "rope20")
    assert scene_from_dict({**ROPE, "solver": {"lte_fraction": 0.1}}, "rope20").solver.lte_fraction == 0.1
