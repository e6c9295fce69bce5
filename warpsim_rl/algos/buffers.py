"""A fixed-capacity ring buffer of transitions, kept on the training device.

Fields are named at construction, ``{name: per-transition shape}``, e.g. for D3PG::

    {"obs": (obs_dim,), "action": (na,), "reward": (), "next_obs": (obs_dim,), "done": (),
     "A": (ns, ns), "B": (ns, na)}      # A = ds'/ds, B = ds'/da of each transition

and one tensor ``(capacity, *shape)`` per field is allocated up front. :meth:`ReplayBuffer.add`
writes a batch of E transitions (one per environment) with one indexed copy per field;
:meth:`ReplayBuffer.sample` draws uniformly with replacement from a caller-owned
``torch.Generator``, so a run restored from :meth:`ReplayBuffer.state_dict` and the generator's
state samples exactly what the uninterrupted run would have. The write position and the fill
level are Python integers that depend only on batch sizes: nothing reads the device.

Jacobian fields dominate the memory: :func:`memory_bytes` gives the cost before allocating
(e.g. ``ns = 120``, ``na = 6`` in float32 at capacity 10^6: ``A`` takes 57.6 GB, ``B`` 2.88 GB).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ReplayBuffer", "memory_bytes"]


def _shapes(fields: dict) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in shape) for name, shape in fields.items()}


def memory_bytes(capacity: int, fields: dict, dtype: torch.dtype = torch.float32,
                 dtypes: dict | None = None) -> dict[str, int]:
    """Bytes each field of a :class:`ReplayBuffer` with these arguments allocates (a dict keyed
    like ``fields``; sum the values for the total)."""
    dtypes = dtypes or {}
    return {name: capacity * math.prod(shape) * dtypes.get(name, dtype).itemsize
            for name, shape in _shapes(fields).items()}


class ReplayBuffer:
    """Ring buffer of ``capacity`` transitions with preallocated per-field tensors.

    Args:
        capacity: number of transitions kept; older ones are overwritten first.
        fields: ``{name: shape}``, the shape of one transition's entry (``()`` for a scalar).
        device: where the tensors live (the simulator's / networks' device).
        dtype: dtype of every field, unless overridden in ``dtypes``.
        dtypes: per-field dtypes, e.g. ``{"done": torch.bool}``.
    """

    def __init__(self, capacity: int, fields: dict, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, dtypes: dict | None = None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity = {capacity!r}: must be an integer >= 1")
        if not fields:
            raise ValueError("fields: name at least one field")
        dtypes = dtypes or {}
        if unknown := sorted(set(dtypes) - set(fields)):
            raise ValueError(f"dtypes names fields that do not exist: {unknown}")
        self.capacity, self.device = capacity, torch.device(device)
        self.shapes = _shapes(fields)
        self.data = {name: torch.zeros((capacity, *shape), dtype=dtypes.get(name, dtype), device=self.device)
                     for name, shape in self.shapes.items()}
        self._pos = 0   # next row to write
        self._size = 0  # rows holding transitions

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes allocated by all fields."""
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def add(self, **batch: torch.Tensor) -> None:
        """Append E transitions: every field, as a tensor (E, *shape) (cast to the field's dtype
        and device). Rows are written at ``pos, pos + 1, ... (mod capacity)``; of a batch larger
        than the capacity only its last ``capacity`` rows are kept."""
        self._check_names(batch, "add")
        n = None
        for name, value in batch.items():
            shape = self.shapes[name]
            if value.dim() != len(shape) + 1 or tuple(value.shape[1:]) != shape:
                raise ValueError(f"ReplayBuffer.add: field {name!r} has shape {tuple(value.shape)}; "
                                 f"expected (E, {', '.join(map(str, shape))}) = (E, *{shape})")
            if n is None:
                n, first = value.shape[0], name
            elif value.shape[0] != n:
                raise ValueError(f"ReplayBuffer.add: field {name!r} has {value.shape[0]} rows, "
                                 f"field {first!r} has {n}")
        keep = min(n, self.capacity)
        rows = torch.arange(self._pos + n - keep, self._pos + n, device=self.device) % self.capacity
        for name, value in batch.items():
            dest = self.data[name]
            dest.index_copy_(0, rows, value[n - keep:].to(device=dest.device, dtype=dest.dtype))
        self._pos = (self._pos + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` transitions drawn uniformly with replacement: ``{name: (n, *shape)}``.

        The indices are drawn on ``generator``'s device (keep it on the buffer's device: a CPU
        generator for a CUDA buffer costs a host-to-device copy per call)."""
        if self._size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        idx = torch.randint(self._size, (n,), generator=generator, device=generator.device)
        idx = idx.to(self.device)
        return {name: t.index_select(0, idx) for name, t in self.data.items()}

    def state_dict(self) -> dict:
        """Filled rows and the ring position. While the buffer is full, ``data`` aliases the
        storage (save it before the next :meth:`add`); while filling, it holds copies of rows
        ``0 .. len - 1`` (so saving does not write the unfilled rest)."""
        full = self._size == self.capacity
        return {"capacity": self.capacity, "pos": self._pos, "size": self._size,
                "data": {name: t if full else t[: self._size].clone() for name, t in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"ReplayBuffer.load_state_dict: capacity {state['capacity']} saved, "
                             f"this buffer has {self.capacity}")
        self._check_names(state["data"], "load_state_dict")
        size = state["size"]
        for name, value in state["data"].items():
            if tuple(value.shape) != (size, *self.shapes[name]):
                raise ValueError(f"ReplayBuffer.load_state_dict: field {name!r} has shape "
                                 f"{tuple(value.shape)}; expected {(size, *self.shapes[name])}")
        for name, value in state["data"].items():
            self.data[name][:size].copy_(value)
        self._pos, self._size = state["pos"], size

    def _check_names(self, given: dict, where: str) -> None:
        if given.keys() != self.shapes.keys():
            missing, extra = sorted(self.shapes.keys() - given.keys()), sorted(given.keys() - self.shapes.keys())
            raise ValueError(f"ReplayBuffer.{where}: missing fields {missing}, unknown fields {extra}; "
                             f"the buffer holds {list(self.shapes)}")
