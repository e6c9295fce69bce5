"""The torch bridge's cached Warp descriptors (``warpsim_rl.views``): same memory, same values,
the same object for the same address, shape, strides and dtype, and a clear error for a tensor
that cannot be read as the dtype."""

import numpy as np
import pytest
import torch
import warp as wp

from warpsim_rl.views import TensorViews


def test_a_descriptor_reads_the_tensors_memory_and_is_reused(device):
    views = TensorViews(device)
    tdev = wp.device_to_torch(device)
    t = torch.arange(24.0, device=tdev).reshape(2, 4, 3)
    a = views(t, wp.vec3)
    assert a.shape == (2, 4) and a.ptr == t.data_ptr()
    np.testing.assert_array_equal(a.numpy(), t.cpu().numpy())
    assert views(t, wp.vec3) is a and views.hits == 1
    # a strided view of whole vectors, and the same memory read as scalars: other descriptors
    rows = views(t[:, 1:], wp.vec3)
    np.testing.assert_array_equal(rows.numpy(), t[:, 1:].cpu().numpy())
    flat = views(t, wp.float32)
    assert flat is not a and flat.shape == (2, 4, 3)
    # written through the descriptor by a kernel-side copy, seen by torch
    wp.copy(a, wp.array(np.ones((2, 4, 3), dtype=np.float32), dtype=wp.vec3, device=device))
    assert bool((t == 1).all())


def test_a_reused_address_gets_a_descriptor_of_the_new_tensor(device):
    """Whichever tensor owns an address now, the descriptor means the same bytes: a new tensor at
    the old one's address (same shape) reads its own values through the cached object."""
    views = TensorViews(device, capacity=4)
    tdev = wp.device_to_torch(device)
    old = torch.zeros(8, 3, device=tdev)
    first = views(old, wp.vec3)
    block = old.data_ptr()
    del old
    new = torch.full((8, 3), 5.0, device=tdev)
    got = views(new, wp.vec3)
    if new.data_ptr() == block:
        assert got is first
    np.testing.assert_array_equal(got.numpy(), np.full((8, 3), 5.0, dtype=np.float32))
    for k in range(6):  # the least recently used beyond the capacity is dropped
        views(torch.zeros(k + 1, 3, device=tdev), wp.vec3)
    assert len(views._cache) == 4


def test_a_tensor_that_is_not_the_dtype_is_refused(device):
    views = TensorViews(device)
    tdev = wp.device_to_torch(device)
    t = torch.zeros(4, 3, device=tdev)
    with pytest.raises(TypeError, match="torch.float32 cannot be read as"):
        views(t, wp.float64)
    with pytest.raises(TypeError, match="last dimension must be 2"):
        views(t, wp.vec2)
    with pytest.raises(TypeError, match="last dimension must be 3"):
        views(t.t().contiguous().t(), wp.vec3)
