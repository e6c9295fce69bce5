"""Every Warp kernel of ``warpsim_rl.kernels`` compiles ahead of time to CUDA PTX (sm_80 and
sm_90) without a GPU, through the NVRTC that ships with warp-lang. This catches CUDA-only
compile errors on CPU-only machines (the CPU backend compiles different code).

Every variant the simulator can launch is compiled: float32/float64 x 2D/3D and, for the step,
start-up, potential, VJP and Jacobian kernels, with the contact terms compiled in (scenes with
geometry) and out (``contact=False``, scenes without). The factorisation and solves specialised
to one half-bandwidth (``linalg.fixed_band``, 3..16: one variant per band) are compiled at the
smallest and the largest band alone in both dtypes, and inside the step, VJP and Jacobian
kernels at the rope's band 5; the full cross product would take minutes for code that differs
in one constant. The tests skip only where this warp-lang
build has no NVRTC for the target architectures (a CPU-only build); any compile error fails."""

import itertools
import re
from pathlib import Path

import pytest
import warp as wp

import warpsim_rl.kernels as kernels_pkg
from warpsim_rl.kernels.adjoint import adjoint_kernels
from warpsim_rl.kernels.bdf2 import bdf2_kernels
from warpsim_rl.kernels.elements import spring_eval_kernel
from warpsim_rl.kernels.linalg import MAX_FIXED_BAND, MIN_FIXED_BAND, band_factor_solve_kernel

ARCHS = [80, 90]
DTYPES = {"float32": wp.float32, "float64": wp.float64}
DIMS = (2, 3)
CONTACT = {"contact": True, "nocontact": False}  # Simulator: contact = model.num_geometries > 0
# kernels of the step factories (one set per dtype, dim and contact flag)
STEP_KERNELS = {"bdf2": (bdf2_kernels, ("bdf2_step", "potential", "startup")),
                "adjoint": (adjoint_kernels, ("bdf2_vjp", "bdf2_jacobian"))}
# the kernels that factor or solve (the simulator builds them per fixed band), and the fixed bands
# compiled alone
BAND_KERNELS = ("bdf2_step", "bdf2_vjp", "bdf2_jacobian")
FIXED_BANDS = (MIN_FIXED_BAND, MAX_FIXED_BAND)


def _factories():
    """(file stem, kernel name, factory) of every kernel variant the package defines."""
    out = []
    for (dt, dtype), dim, (ct, contact) in itertools.product(DTYPES.items(), DIMS, CONTACT.items()):
        for stem, (make, names) in STEP_KERNELS.items():
            for name in names:
                out.append((stem, f"{name}[{dt},{dim}d,{ct}]",
                            lambda make=make, dtype=dtype, dim=dim, contact=contact, name=name:
                            getattr(make(dtype, dim, contact), name)))
    for (dt, dtype), dim in itertools.product(DTYPES.items(), DIMS):
        out.append(("elements", f"spring_eval[{dt},{dim}d]",
                    lambda dtype=dtype, dim=dim: spring_eval_kernel(dtype, dim)))
    for dt, dtype in DTYPES.items():
        out.append(("linalg", f"band_factor_solve[{dt}]", lambda dtype=dtype: band_factor_solve_kernel(dtype)))
        for band in FIXED_BANDS:
            out.append(("linalg", f"band_factor_solve[{dt},band{band}]",
                        lambda dtype=dtype, band=band: band_factor_solve_kernel(dtype, band)))
    for stem, (make, names) in STEP_KERNELS.items():
        for name in names:
            if name in BAND_KERNELS:
                out.append((stem, f"{name}[float32,3d,nocontact,band5]",
                            lambda make=make, name=name: getattr(make(wp.float32, 3, False, 5), name)))
    return out


FACTORIES = _factories()


def test_every_kernel_is_covered():
    """Each ``@wp.kernel`` in the kernels package is compiled below, and the step kernels in
    every (dtype, dim, contact) variant, so a new kernel or variant cannot slip past this test."""
    root = Path(kernels_pkg.__file__).parent
    for src in sorted(root.glob("*.py")):
        n_src = len(re.findall(r"^\s*@wp\.kernel\b", src.read_text(), flags=re.M))
        names = {name.split("[")[0] for stem, name, _ in FACTORIES if stem == src.stem}
        assert len(names) == n_src, f"{src.name}: {n_src} kernels in the source, {sorted(names)} tested"
    ids = {name for _, name, _ in FACTORIES}
    for _, names in STEP_KERNELS.values():
        for name, dt, dim, ct in itertools.product(names, DTYPES, DIMS, CONTACT):
            assert f"{name}[{dt},{dim}d,{ct}]" in ids


def _nvrtc_archs() -> set:
    """The CUDA architectures this warp-lang build's NVRTC can target (empty: no NVRTC, as in a
    CPU-only build)."""
    wp.init()
    supported = getattr(wp, "get_cuda_supported_archs", None)
    if supported is not None:
        return set(supported())
    import warp.context  # older warp-lang, before get_cuda_supported_archs

    runtime = warp.context.runtime
    if not runtime.is_cuda_enabled:
        return set()
    return set(getattr(runtime, "nvrtc_supported_archs", ARCHS))


@pytest.fixture(scope="module")
def nvrtc():
    """Skip (with the reason) only when NVRTC is missing for the target architectures. A
    compile error, whatever its message, is not a reason to skip: the tests fail on it."""
    missing = sorted(set(ARCHS) - _nvrtc_archs())
    if missing:
        pytest.skip(f"this warp-lang build has no NVRTC for {', '.join(f'sm_{a}' for a in missing)} "
                    f"(a CPU-only build?)")


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
