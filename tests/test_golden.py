"""A refactor changes no number: rollouts, gradients, Jacobians and short training runs equal,
bit for bit, the arrays recorded before the environment-core refactor
(``tests/data/record_golden*.py`` wrote them at commit ce10abe on the CPU).

The physics arrays are recomputed here through the same documented API; the training numbers go
through ``warpsim_rl.training.train`` with the per-algorithm configuration. Warp's CPU backend
and torch's CPU kernels are deterministic run to run, so any difference is a real change."""

import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).with_name("data")
sys.path.insert(0, str(DATA))

import record_golden  # noqa: E402
import record_golden_training  # noqa: E402

PHYSICS = np.load(DATA / "golden_physics.npz")
TRAINING = np.load(DATA / "golden_training.npz")
CASES = sorted({k.rsplit("/", 1)[0] for k in PHYSICS.files})


def _assert_bitwise(stored, key, value):
    want = stored[key]
    assert value.shape == want.shape and value.dtype == want.dtype, (key, value.shape, want.shape)
    if not np.array_equal(value, want, equal_nan=True):
        diff = np.abs(value.astype(np.float64) - want.astype(np.float64))
        pytest.fail(f"{key}: max |difference| {np.nanmax(diff):.3e} at {np.unravel_index(np.nanargmax(diff), diff.shape)}")


@pytest.mark.parametrize("case", CASES)
def test_rollouts_and_gradients_bitwise(case):
    scene, dtype = case.split("/")
    got = record_golden.golden_rollout(scene, dtype)
    assert {f"{case}/{k}" for k in got} == {k for k in PHYSICS.files if k.startswith(case + "/")}
    for key, val in got.items():
        _assert_bitwise(PHYSICS, f"{case}/{key}", val)


@pytest.mark.parametrize("algo", record_golden_training.ALGOS)
def test_training_bitwise(algo):
    got = record_golden_training.record_one(algo)
    want = {k for k in TRAINING.files if k.startswith(algo + "/")}
    assert {k for k in got} >= want, sorted(want - set(got))
    for key in sorted(want):
        _assert_bitwise(TRAINING, key, np.asarray(got[key]))
