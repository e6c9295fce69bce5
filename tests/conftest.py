"""Shared pytest fixtures: every kernel test runs on each available Warp device (CPU always,
CUDA when present), like Warp's own test-suite."""

import numpy as np
import pytest
import warp as wp

import warpsim_rl  # noqa: F401  (configures Warp logging)

wp.init()
DEVICES = ["cpu"] + [str(d) for d in wp.get_cuda_devices()]


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
