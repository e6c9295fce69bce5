"""The torch bridge's cached Warp descriptors (``warpsim_rl.views``): same memory, same values,
the same object for the same address, shape, strides and dtypes, a clear error for a tensor that
cannot be read as the dtype, and no stale descriptor when the inputs are temporary copies."""

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
    # written through the descriptor by a Warp copy, seen by torch
    wp.copy(a, wp.array(np.ones((2, 4, 3), dtype=np.float32), dtype=wp.vec3, device=device))
    assert bool((t == 1).all())


def test_another_tensor_at_the_same_address_gets_the_descriptor_and_its_own_values(device):
    """Whichever tensor owns an address now, the descriptor means the same bytes: a different
    tensor object over the same memory (same shape and strides) gets the cached object and reads
    what that memory holds now."""
    views = TensorViews(device)
    tdev = wp.device_to_torch(device)
    base = torch.zeros(8, 3, device=tdev)
    first = views(base, wp.vec3)
    other = base.view(8, 3)  # a new tensor object, same address
    other.fill_(5.0)
    got = views(other, wp.vec3)
    assert got is first
    np.testing.assert_array_equal(got.numpy(), np.full((8, 3), 5.0, dtype=np.float32))


def test_a_hit_does_not_skip_the_type_checks(device):
    """The cache key holds the tensor's dtype and device: an int32 tensor over the bytes of a cached
    float32 one is refused, not read through the float32 descriptor."""
    views = TensorViews(device)
    tdev = wp.device_to_torch(device)
    t = torch.zeros(16, device=tdev)
    views(t, wp.float32)
    with pytest.raises(TypeError, match="torch.int32 cannot be read as"):
        views(t.view(torch.int32), wp.float32)


def test_a_tensor_on_another_device_is_refused():
    views = TensorViews("cuda:0" if wp.get_cuda_device_count() else "cpu")
    other = torch.zeros(4, 3, device="cpu" if views.device.is_cuda else "meta")
    with pytest.raises(TypeError, match="cannot be read on Warp's"):
        views(other, wp.vec3)


def test_the_least_recently_used_descriptor_is_dropped(device):
    views = TensorViews(device, capacity=3)
    tdev = wp.device_to_torch(device)
    keep = [torch.zeros(k + 1, 3, device=tdev) for k in range(5)]
    first = views(keep[0], wp.vec3)
    views(keep[1], wp.vec3)
    views(keep[2], wp.vec3)
    assert views(keep[0], wp.vec3) is first  # a hit makes it the most recent
    views(keep[3], wp.vec3)  # drops keep[1], the least recent
    views(keep[4], wp.vec3)  # drops keep[2]
    assert len(views._cache) == 3
    assert views(keep[0], wp.vec3) is first
    misses = views.misses
    views(keep[1], wp.vec3)
    assert views.misses == misses + 1


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


def test_jacobians_of_non_contiguous_inputs_equal_those_of_contiguous_ones(device):
    """``TorchSimulator.jacobians`` copies non-contiguous inputs; the copies must live through the
    launch (a descriptor does not keep them alive). The frictional cloth reads its input state
    directly (friction partials), float64."""
    from warpsim_rl.autodiff import TorchSimulator
    from warpsim_rl.scene import load_scene

    model = load_scene("cloth_table").build(num_envs=2, device=device, dtype="float64", threads=1)
    ts = TorchSimulator(model)
    state = ts.initial_state()
    for _ in range(3):  # onto the table, where friction acts
        state = ts.step(*state, torch.zeros((2, max(model.num_handles, 1), model.dim), dtype=torch.float64,
                                            device=ts.torch_device))
    action = 0.1 * torch.ones((2, max(model.num_handles, 1), model.dim), dtype=torch.float64, device=ts.torch_device)
    ref = ts.jacobians(*state, action)
    strided = [torch.stack([t, t], dim=-1)[..., 0] for t in state]  # same values, not contiguous
    assert not any(t.is_contiguous() for t in strided)
    got = ts.jacobians(*strided, torch.stack([action, action], dim=-1)[..., 0])
    for a, b in zip([*ref[0], ref[1], ref[2]], [*got[0], got[1], got[2]]):
        assert torch.equal(a, b)
