"""Every Warp kernel of ``warpsim_rl.kernels`` compiles ahead of time to CUDA PTX (sm_80 and
sm_90) without a GPU, through the NVRTC that ships with warp-lang. This catches CUDA-only
compile errors on CPU-only machines (the CPU backend compiles different code)."""

import importlib
import re
from pathlib import Path

import pytest
import warp as wp

import warpsim_rl.kernels as kernels_pkg
from warpsim_rl.kernels.bdf2 import bdf2_kernels
from warpsim_rl.kernels.elements import spring_eval_kernel
from warpsim_rl.kernels.linalg import band_factor_solve_kernel

ARCHS = [80, 90]
DTYPES = {"float32": wp.float32, "float64": wp.float64}


def _factories():
    """(file stem, kernel name, factory) of every kernel the package defines."""
    out = []
    for dt in DTYPES:
        for dim in (2, 3):
            out += [("bdf2", f"bdf2_step[{dt},{dim}d]", lambda dt=dt, dim=dim: bdf2_kernels(DTYPES[dt], dim).bdf2_step),
                    ("bdf2", f"potential[{dt},{dim}d]", lambda dt=dt, dim=dim: bdf2_kernels(DTYPES[dt], dim).potential),
                    ("bdf2", f"startup[{dt},{dim}d]", lambda dt=dt, dim=dim: bdf2_kernels(DTYPES[dt], dim).startup),
                    ("elements", f"spring_eval[{dt},{dim}d]", lambda dt=dt, dim=dim: spring_eval_kernel(DTYPES[dt], dim))]
        out.append(("linalg", f"band_factor_solve[{dt}]", lambda dt=dt: band_factor_solve_kernel(DTYPES[dt])))
    try:
        adjoint = importlib.import_module("warpsim_rl.kernels.adjoint")
    except ImportError:
        adjoint = None
    if adjoint is not None:
        for dt in DTYPES:
            for dim in (2, 3):
                for name in ("bdf2_vjp", "bdf2_jacobian"):
                    out.append(("adjoint", f"{name}[{dt},{dim}d]",
                                lambda dt=dt, dim=dim, name=name: getattr(adjoint.adjoint_kernels(DTYPES[dt], dim), name)))
    return out


FACTORIES = _factories()


def test_every_kernel_is_covered():
    """Each ``@wp.kernel`` in the kernels package is compiled below (one entry per dtype and
    dimension), so a new kernel cannot slip past this test unnoticed."""
    root = Path(kernels_pkg.__file__).parent
    for src in sorted(root.glob("*.py")):
        n_src = len(re.findall(r"^\s*@wp\.kernel\b", src.read_text(), flags=re.M))
        names = {name.split("[")[0] for stem, name, _ in FACTORIES if stem == src.stem}
        assert len(names) == n_src, f"{src.name}: {n_src} kernels in the source, {sorted(names)} tested"


@pytest.fixture(scope="module")
def nvrtc():
    """Skip (with the reason) when NVRTC cannot compile here; anything else is a failure."""
    probe = band_factor_solve_kernel(wp.float32)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            wp.compile_aot_module(probe.module, arch=ARCHS[0], use_ptx=True, module_dir=d)
        except Exception as e:  # pragma: no cover - depends on the installed warp build
            msg = str(e)
            if re.search(r"nvrtc|cuda|toolkit", msg, flags=re.I):
                pytest.skip(f"NVRTC is not usable in this warp-lang build: {msg}")
            raise


@pytest.mark.parametrize("stem,name,factory", FACTORIES, ids=[f[1] for f in FACTORIES])
def test_compile_ptx(nvrtc, tmp_path, stem, name, factory):
    kernel = factory()
    paths = wp.compile_aot_module(kernel.module, arch=ARCHS, use_ptx=True, module_dir=tmp_path)
    assert len(paths) == len(ARCHS)
    for arch, path in zip(ARCHS, paths):
        path = Path(path)
        assert path.is_file() and path.name.endswith(f".sm{arch}.ptx"), path
        ptx = path.read_bytes().decode("ascii", errors="replace")
        assert re.search(rf"^\.target sm_{arch}\b", ptx, flags=re.M), f"{path.name}: no .target sm_{arch}"
        entries = re.findall(r"\.entry\s+(\w+)\(", ptx)
        assert any(e.endswith("_cuda_kernel_forward") and kernel.key in e for e in entries), entries
        # enable_backward=False: no adjoint kernel is generated
        assert not any(e.endswith("_cuda_kernel_backward") for e in entries), entries
        if "float64" in name:
            assert re.search(r"\.f64\b", ptx), "a float64 kernel without f64 instructions"
