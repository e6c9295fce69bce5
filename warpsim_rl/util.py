"""Small shared helpers: device and dtype resolution, Warp vector types, ``NAME=VALUE`` options."""

from __future__ import annotations

import functools
import json

import warp as wp

_DTYPES = {"float32": wp.float32, "float64": wp.float64}
wp.config.log_level = 30  # warnings only: no init banner or per-module compile lines


@functools.cache
def _init() -> None:

    wp.init()


def resolve_device(device=None) -> wp.Device:
    """A Warp device from ``None`` (Warp's default), a name like ``"cpu"``/``"cuda:0"``, a Warp
    device or a torch device. Unknown names raise ``ValueError`` listing the available ones."""
    _init()
    if device is None:
        return wp.get_device()
    if isinstance(device, wp.Device):
        return device
    name = str(device)
    if name == "cuda":
        name = "cuda:0"
    try:
        return wp.get_device(name)
    except Exception:
        known = [str(d) for d in wp.get_devices()]
        raise ValueError(f"device = {device!r}: not available; available devices: {known}") from None


def resolve_dtype(dtype) -> type:
    """``wp.float32``/``wp.float64`` from a name, numpy/torch dtype or Warp type."""
    if dtype in (wp.float32, wp.float64):
        return dtype
    name = str(dtype).replace("torch.", "").replace("numpy.", "").replace("<class '", "").replace("'>", "")
    if name.startswith("warp"):
        name = name.rsplit(".", 1)[-1]
    if name in ("float", "float32"):
        return wp.float32
    if name in ("double", "float64"):
        return wp.float64
    raise ValueError(f"dtype = {dtype!r}: must be one of {list(_DTYPES)}")


def dtype_name(dtype) -> str:
    return "float32" if resolve_dtype(dtype) == wp.float32 else "float64"


def wp_vec_type(dim: int, dtype):
    """The Warp vector type the kernels use for ``dim`` and ``dtype``."""
    from .kernels.elements import element_funcs

    return element_funcs(dtype, dim).vec


def parse_params(items) -> dict:
    """``{"NAME": value}`` from ``NAME=VALUE`` strings (the ``--param`` options of the command
    lines): each value is read as JSON (``20``, ``1e4``, ``true``, ``[1, 2]``), else kept as a
    string. ``ValueError`` for an item without ``=`` or without a name."""
    params = {}
    for kv in items or []:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise ValueError(f"--param {kv!r}: expected NAME=VALUE")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return params
