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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """torch on one intra-op thread: the suite's networks are tiny (64 x 64), where a second
    thread costs more than it gives, and on a machine shared with other work an OpenMP team
    waiting for a descheduled thread slowed the training tests 10x. Results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
