"""Per-environment banded Cholesky (``band_factor_solve_kernel``) and inverse
(``band_inverse_func``) against numpy.

Storage (kernels/linalg.py): ``A[i, j]`` (``j <= i <= j + B``) at ``H[i * (B + 1) + (i - j), e]``,
``H`` of shape ``(N * (B + 1), E)``; right-hand sides ``(N, E)``.
"""

import functools

import numpy as np
import pytest
import warp as wp

from warpsim_rl.kernels.linalg import (MAX_FIXED_BAND, MIN_FIXED_BAND, band_factor_solve_kernel, band_funcs,
                                       band_inverse_func, fixed_band)

DTYPES = {"float32": (wp.float32, np.float32), "float64": (wp.float64, np.float64)}


def to_band(A, B):
    """(E, N, N) symmetric -> (N*(B+1), E) lower band."""
    E, N, _ = A.shape
    H = np.zeros((N * (B + 1), E))
    for i in range(N):
        for d in range(min(B, i) + 1):
            H[i * (B + 1) + d] = A[:, i, i - d]
    return H


def factor_from_band(H, N, B):
    """(N*(B+1), E) factored band -> (E, N, N) Cholesky factors L. The factorisation stores
    ``1 / L[i, i]`` on the diagonal (kernels/linalg.py module doc)."""
    E = H.shape[1]
    L = np.zeros((E, N, N))
    for i in range(N):
        L[:, i, i] = 1.0 / H[i * (B + 1)]
        for d in range(1, min(B, i) + 1):
            L[:, i, i - d] = H[i * (B + 1) + d]
    return L


def random_spd_banded(rng, E, N, B):
    """Random symmetric matrices with half-bandwidth exactly B, made SPD by diagonal dominance
    (Gershgorin); the scale of the diagonal varies so that pivots are not all alike."""
    S = rng.normal(size=(E, N, N))
    S = 0.5 * (S + np.swapaxes(S, 1, 2))
    band = np.abs(np.subtract.outer(np.arange(N), np.arange(N))) <= B
    A = np.where(band, S, 0.0)
    off = np.abs(A).sum(axis=2) - np.abs(np.diagonal(A, axis1=1, axis2=2))
    idx = np.arange(N)
    A[:, idx, idx] = off + rng.uniform(0.1, 3.0, size=(E, N))
    return A


def factor_solve(A, rhs, B, dtype, device, same=False, garbage=0.0, band=None):
    wdt, ndt = DTYPES[dtype]
    E, N, _ = A.shape
    H = to_band(A, B)
    # unused slots (i - d < 0) of the first rows hold garbage: they must never be read
    for i in range(min(N, B)):
        for d in range(i + 1, B + 1):
            H[i * (B + 1) + d] = garbage
    Hw = wp.array(H.astype(ndt), dtype=wdt, device=device)
    r = wp.array(rhs.T.astype(ndt).copy(), dtype=wdt, device=device)
    out = r if same else wp.full((N, E), np.nan, dtype=wdt, device=device)
    ok = wp.full(E, -1, dtype=wp.int32, device=device)
    wp.launch(band_factor_solve_kernel(wdt, band), dim=E, device=device, inputs=[N, B, Hw, r, out, ok])
    return ok.numpy(), out.numpy().T.astype(np.float64), Hw.numpy().astype(np.float64)


CASES = [(1, 0), (2, 1), (5, 0), (5, 2), (5, 4), (12, 2), (12, 5), (12, 11), (30, 5), (30, 29)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N,B", CASES)
def test_band_factor_solve_matches_numpy(device, dtype, N, B, rng):
    E = 3
    A = random_spd_banded(rng, E, N, B)
    rhs = rng.normal(size=(E, N))
    ok, x, Hf = factor_solve(A, rhs, B, dtype, device, garbage=np.nan)
    np.testing.assert_array_equal(ok, 1)

    x_ref = np.linalg.solve(A, rhs[..., None])[..., 0]
    L_ref = np.linalg.cholesky(A)
    L = factor_from_band(Hf, N, B)
    eps = np.finfo(DTYPES[dtype][1]).eps
    cond = np.linalg.cond(A).max()
    tol = 4 * N * eps * cond  # standard forward-error bound
    assert np.max(np.abs(x - x_ref)) <= tol * np.abs(x_ref).max()
    # residual of the original system
    res = np.einsum("eij,ej->ei", A, x) - rhs
    assert np.max(np.abs(res)) <= 4 * N * eps * np.abs(A).max() * np.abs(x).max()
    # the band now holds the Cholesky factor L (A = L L^T; L keeps A's bandwidth)
    np.testing.assert_allclose(L, L_ref, rtol=0, atol=tol * np.abs(L_ref).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_band_solve_in_place(device, dtype, rng):
    """``rhs`` and ``out`` may be the same array (the step kernel solves in place)."""
    N, B, E = 9, 3, 2
    A = random_spd_banded(rng, E, N, B)
    rhs = rng.normal(size=(E, N))
    ok, x, _ = factor_solve(A, rhs, B, dtype, device, same=True)
    np.testing.assert_array_equal(ok, 1)
    x_ref = np.linalg.solve(A, rhs[..., None])[..., 0]
    eps = np.finfo(DTYPES[dtype][1]).eps
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e3 * eps * np.abs(x_ref).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_band_not_positive_definite(device, dtype, rng):
    """Indefinite, singular and NaN matrices report ok = 0; their neighbours are unaffected."""
    N, B = 8, 2
    A = random_spd_banded(rng, 5, N, B)
    # env 1: shifted so that the smallest eigenvalue is negative (still symmetric, same band)
    lam = np.linalg.eigvalsh(A[1])
    A[1] -= np.eye(N) * (lam[0] + 0.5 * (lam[1] - lam[0]))
    assert np.linalg.eigvalsh(A[1])[0] < 0
    # env 2: negative first pivot; env 3: exactly singular (zero matrix); env 4: NaN entry
    A[2, 0, 0] = -1.0
    A[3] = 0.0
    A[4, 3, 3] = np.nan
    rhs = rng.normal(size=(5, N))
    ok, x, _ = factor_solve(A, rhs, B, dtype, device)
    np.testing.assert_array_equal(ok, [1, 0, 0, 0, 0])
    x_ref = np.linalg.solve(A[0], rhs[0])
    eps = np.finfo(DTYPES[dtype][1]).eps
    np.testing.assert_allclose(x[0], x_ref, rtol=0, atol=1e3 * eps * np.abs(x_ref).max())


FIXED_CASES = [(3, 3), (4, 3), (9, 3), (6, 5), (30, 5), (60, 5), (20, 8), (12, 11), (40, 16), (17, 16)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N,B", FIXED_CASES)
def test_fixed_band_is_bitwise_generic(device, dtype, N, B, rng):
    """The factorisation and solves specialised to one half-bandwidth (``band_funcs(dtype, B)``,
    which the simulator uses for 3 <= B <= 16) give bitwise the generic results: the factor, the
    solution and the pivot test, on SPD matrices and on ones that fail at some pivot; from the
    smallest band to the largest, with N <= B + 1 (dense) among them."""
    E = 6
    A = random_spd_banded(rng, E, N, B)
    for e, shift in ((1, 0.5), (2, 0.99)):  # indefinite: the pivot test fails somewhere inside
        lam = np.linalg.eigvalsh(A[e])
        A[e] -= np.eye(N) * (lam[0] + shift * (lam[1] - lam[0]))
    A[3, N - 1, N - 1] = -1.0  # fails at the last pivot
    rhs = rng.normal(size=(E, N))
    assert fixed_band(B) == B
    generic = factor_solve(A, rhs, B, dtype, device, garbage=np.nan)
    fixed = factor_solve(A, rhs, B, dtype, device, garbage=np.nan, band=B)
    np.testing.assert_array_equal(generic[0], [1, 0, 0, 0, 1, 1])
    for g, f in zip(generic, fixed):
        np.testing.assert_array_equal(f, g)


def test_fixed_band_range():
    """Which bands get a specialised variant, and a clear error for one that cannot."""
    assert [fixed_band(b) for b in (0, 1, 2)] == [None, None, None]
    assert fixed_band(MIN_FIXED_BAND) == MIN_FIXED_BAND and fixed_band(MAX_FIXED_BAND) == MAX_FIXED_BAND
    assert fixed_band(MAX_FIXED_BAND + 1) is None
    with pytest.raises(ValueError, match="band = 2"):
        band_funcs(wp.float32, 2)


@functools.cache
def _factor_inverse_kernel(wdt, block):
    la = band_funcs(wdt)
    band_inverse = band_inverse_func(wdt, block)

    @wp.kernel(enable_backward=False, module="unique")
    def factor_inverse(N: int, B: int, H: wp.array2d(dtype=wdt), W: wp.array2d(dtype=wdt),
                       ok: wp.array(dtype=int)):
        e = wp.tid()
        ok[e] = la.band_cholesky(H, e, N, B)
        if ok[e] != 0:
            band_inverse(H, e, N, B, W)

    return factor_inverse


INVERSE_CASES = [(N, B, block) for N, B in CASES + [(6, 5), (18, 5), (24, 3)] for block in (1, 2, 3)
                 if N % block == 0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N,B,block", INVERSE_CASES)
def test_band_inverse_matches_numpy(device, dtype, N, B, block, rng):
    """``band_inverse`` writes the whole inverse of the factored matrix, exactly symmetric, for
    column blocks of 1 (scalar), 2 or 3 (a 2D or 3D particle's DOFs)."""
    wdt, ndt = DTYPES[dtype]
    E = 3
    A = random_spd_banded(rng, E, N, B)
    Hb = to_band(A, B)
    for i in range(min(N, B)):  # unused slots of the first rows: never read
        Hb[i * (B + 1) + i + 1:(i + 1) * (B + 1)] = np.nan
    H = wp.array(Hb.astype(ndt), dtype=wdt, device=device)
    W = wp.full((N * N, E), np.nan, dtype=wdt, device=device)
    ok = wp.full(E, -1, dtype=wp.int32, device=device)
    wp.launch(_factor_inverse_kernel(wdt, block), dim=E, device=device, inputs=[N, B, H, W, ok])
    np.testing.assert_array_equal(ok.numpy(), 1)
    Winv = W.numpy().T.reshape(E, N, N).astype(np.float64)
    W_ref = np.linalg.inv(A)
    eps = np.finfo(ndt).eps
    tol = 4 * N * eps * np.linalg.cond(A).max()  # as for the solves
    assert np.max(np.abs(Winv - W_ref)) <= tol * np.abs(W_ref).max()
    np.testing.assert_array_equal(Winv, np.swapaxes(Winv, 1, 2))
