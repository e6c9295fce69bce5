"""The contract every registered algorithm keeps (parametrised over ``ALGORITHMS``, so a new
algorithm is checked the moment its registry line exists):

* one epoch runs and returns the standard metrics, finite;
* save -> load -> next epoch is bit-identical to the uninterrupted run (metrics, every registered
  module, optimiser, buffer and generator);
* environments that fail stay out of the statistics and the training targets: with two envs of
  every core made to fail (NaN stiffness), metrics and weights stay finite and the failures are
  counted.
"""

import copy
import math

import numpy as np
import pytest
import torch
import warp as wp

from warpsim_rl.algos import ALGORITHMS, STANDARD_METRICS, RunConfig, algo_config, make_algorithm
from warpsim_rl.core import StepCore
from warpsim_rl.tasks import make_task

#: options that keep one epoch small, per algorithm class
SMALL = {"PODS": dict(regression_steps=3, regression_batch=64, line_search=3, chunk=8),
         "EstimatorPG": dict(samples=2), "BPTT": {}, "SACBaseline": dict(replay_size=600, batch_size=32),
         "DDPGBaseline": dict(replay_size=600, batch_size=32), "D3PG": dict(batch_size=32)}
#: algorithm classes that run in float32 only (skrl's memories hold float32)
FLOAT32 = {"PPOBaseline", "SACBaseline", "DDPGBaseline"}


def _make(name, num_envs=6, horizon=12):
    cls = ALGORITHMS[name][0]
    dtype = "float32" if cls.__name__ in FLOAT32 else "float64"
    run = RunConfig(env="pendulum2d-stop", algo=name, num_envs=num_envs, horizon=horizon, dtype=dtype, seed=3)
    task = make_task(run.env, horizon=horizon)
    return make_algorithm(task, run, algo_config(name, **SMALL.get(cls.__name__, {})))


def _cores(algo):
    """Every StepCore an algorithm owns (directly or one object down)."""
    found = []
    for v in vars(algo).values():
        for c in [v, *getattr(v, "__dict__", {}).values()]:
            if isinstance(c, StepCore) and all(c is not f for f in found):
                found.append(c)
    return found


def _snapshot(algo):
    return copy.deepcopy(algo.state_dict())


def _equal(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (path, a, b)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_one_epoch_reports_the_standard_metrics(name):
    algo = _make(name)
    algo.begin_epoch(0)
    m = algo.train_epoch()
    for key in STANDARD_METRICS:
        assert key in m, key
        assert math.isfinite(m[key]), (key, m[key])
    assert m["train/diverged"] == 0
    assert all(torch.isfinite(p).all() for p in algo.parameters())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_save_load_next_epoch_is_bit_identical(name):
    straight = _make(name)
    straight.begin_epoch(0)
    straight.train_epoch()
    saved = _snapshot(straight)
    straight.begin_epoch(1)
    m_straight = straight.train_epoch()

    resumed = _make(name)
    resumed.load_state_dict(saved)
    resumed.begin_epoch(1)
    m_resumed = resumed.train_epoch()
    timing = [k for k in m_straight if k.startswith("time/")]  # wall-clock measurements differ run to run
    _equal({k: v for k, v in m_straight.items() if k not in timing}, {k: v for k, v in m_resumed.items() if k not in timing})
    _equal(straight.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_failed_envs_stay_out_of_statistics_and_targets(name):
    algo = _make(name)
    for core in _cores(algo):
        wp.to_torch(core.model.stiffness)[:2] = float("nan")  # envs 0 and 1 of every batch fail
    algo.begin_epoch(0)
    m = algo.train_epoch()
    assert m["train/diverged"] >= 2
    assert math.isfinite(m["train/return_before"]), m
    for key, val in m.items():
        assert not (isinstance(val, float) and math.isinf(val)), (key, val)
    for p in algo.parameters():
        assert torch.isfinite(p).all()
    for buf in algo.policy.buffers():
        assert torch.isfinite(buf).all()  # the observation statistics saw no failed state


def test_registry_presets_are_valid_configs():
    for name, (cls, preset) in ALGORITHMS.items():
        cfg = algo_config(name)
        assert isinstance(cfg, cls.Config)
        for k, v in preset.items():
            assert getattr(cfg, k) == v, (name, k)
