"""Warp descriptors of torch tensors, cached by memory address: the torch bridge's cheap
``wp.from_torch``.

A differentiable step hands Warp 9 tensors forward and 18 backward (11 and 20 with per-env
stiffnesses and masses). ``wp.from_torch`` builds a new ``wp.array`` for each (about 10-30 µs on
this project's CPU VM), so at small and moderate env counts the bridge's Python cost exceeded the
kernels' (docs/results.md, "The torch bridge's per-step cost"). A :class:`TensorViews` returns, for
a tensor, a descriptor ``wp.array`` of the same memory that does not own it, and keeps it: the next
tensor at the same address with the same shape, strides, dtype and device (the allocator reuses
freed blocks, step after step) gets the same object back. Reuse is sound because a descriptor means
nothing but "these bytes, read as this shape": whichever tensor now owns them, the caller keeps it
alive while the descriptor is used. A descriptor does not keep its tensor alive (``wp.from_torch``'s
array does): bind a temporary copy, e.g. of ``t.contiguous()``, to a name until the launch has run.
Do not record a launch with descriptors for later replay either: a replay would read whatever owns
the addresses by then.
"""

from __future__ import annotations

import collections

import torch
import warp as wp

__all__ = ["TensorViews"]


class TensorViews:
    """``views(t, dtype) -> wp.array``: a non-owning descriptor of tensor ``t`` read as Warp
    ``dtype`` (a scalar type, or a vector type whose length is ``t``'s last dimension), cached by
    ``(address, shape, strides, torch dtype, device, dtype)``; the least recently used of more than
    ``capacity`` is dropped.

    Only use the returned array while ``t`` (or whatever tensor owns its memory) is alive. Not
    thread-safe: one per simulator, called from the thread that steps it."""

    def __init__(self, device, capacity: int = 2048):
        self.device = wp.get_device(device)
        self._torch_device = torch.device(wp.device_to_torch(self.device))
        self.capacity = int(capacity)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, t: torch.Tensor, dtype) -> wp.array:
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, dtype)
        arr = self._cache.get(key)
        if arr is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return arr
        self.misses += 1
        arr = self._describe(t, dtype)
        self._cache[key] = arr
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return arr

    def _describe(self, t: torch.Tensor, dtype) -> wp.array:
        if t.device != self._torch_device:
            raise TypeError(f"a tensor on {t.device} cannot be read on Warp's {self.device}")
        scalar = getattr(dtype, "_wp_scalar_type_", dtype)
        if wp.dtype_from_torch(t.dtype) is not scalar:
            raise TypeError(f"a tensor of {t.dtype} cannot be read as {dtype}")
        length = dtype._length_ if wp.types.type_is_vector(dtype) else 1
        shape, strides = tuple(t.shape), tuple(s * t.element_size() for s in t.stride())
        if length > 1:
            if not shape or shape[-1] != length or t.stride()[-1] != 1:
                raise TypeError(f"tensor of shape {shape} and strides {t.stride()}: its last dimension must be "
                                f"{length} contiguous values to read it as {dtype}")
            shape, strides = shape[:-1], strides[:-1]
        if t.numel() == 0:
            return wp.empty(shape, dtype=dtype, device=self.device)
        return wp.array(ptr=t.data_ptr(), dtype=dtype, shape=shape, strides=strides, device=self.device,
                        copy=False)
