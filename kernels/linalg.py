"""Per-environment banded Cholesky factorisation and solves, one environment per thread.

Storage: a symmetric positive-definite ``N x N`` matrix with half-bandwidth ``B`` (``A[i, j] = 0``
for ``|i - j| > B``) keeps its lower band in a 2D array ``H`` of shape ``(N * (B + 1), E)``:
``A[i, j]`` (``j <= i <= j + B``) lives at ``H[i * (B + 1) + (i - j), e]``. The environment index
is the fastest-varying one so that neighbouring GPU threads touch neighbouring addresses (on the
CPU the arrays are transposed views, each env's rows contiguous: ``warpsim_rl.model.scratch_array``).
Dense storage is the special case ``B = N - 1``. The factorisation costs ``N B^2`` flops and
is done in place: the lower band becomes ``L`` with ``A = L L^T``, except that the diagonal holds
``1 / L[i, i]`` so that the solves multiply instead of divide.

:func:`band_inverse_func` forms the dense inverse from the factor (the Jacobian kernel of
``adjoint.py``). The loops with run-time trip counts (here and in the factorisation and solves)
are ``while`` loops: Warp's CPU backend compiles ``for i in range(n)`` into an iterator that
re-tests the sign of the step on every iteration, which on loops this short costs about as much
as their bodies (measured on x86-64). For half-bandwidths 3..16 (:func:`fixed_band`) a variant
compiled for that band replaces the loops over the band with unrolled ones: bitwise the same
results, 1.2-2x faster steps at B = 5..14.
"""


import functools
from types import SimpleNamespace

import warp as wp


# Half-bandwidths with their own compiled factorisation and solves (:func:`band_funcs` with
# ``band``): the loops over the band then have compile-time trip counts, which Warp unrolls up to
# its ``max_unroll`` of 16 (ranges of literals and names only), and the index arithmetic folds.
# Measured on x86-64 (one thread, per env, N = 60, B = 5, the anchor rope; docs/results.md,
# "Cheaper iterations"): factor 2.40 -> 0.70 us (float32) and 2.36 -> 1.02 us (float64), solve
# 0.92 -> 0.82 us; whole steps at B = 5..14 1.2-2.0x faster. B <= 2 gains nothing (N = 3: 0.037
# us against the generic 0.033), and at B = 17 (cloth_table), where Warp no longer unrolls, the
# step did not get faster (0.97 / 1.05x), unrolled by force 0.85x (code size): so B <= 2 and
# B > MAX_FIXED_BAND keep the generic loops.
MIN_FIXED_BAND = 3
MAX_FIXED_BAND = 16


def fixed_band(band: int) -> int | None:
    """The ``band`` argument of :func:`band_funcs` for a matrix of half-bandwidth ``band``: the band
    itself where a specialised variant pays (``MIN_FIXED_BAND <= band <= MAX_FIXED_BAND``), else
    ``None`` (the generic functions)."""
    return int(band) if MIN_FIXED_BAND <= band <= MAX_FIXED_BAND else None


def band_funcs(dtype, band: int | None = None) -> SimpleNamespace:
    """Warp functions for one scalar type. ``band=None``: for any half-bandwidth ``B`` (a run-time
    argument); ``band = b``: specialised to ``B = b`` (:func:`fixed_band`), where the functions'
    ``B`` argument must equal ``b``. Both variants do the same floating-point operations in the
    same order, so their results are bitwise identical (``tests/test_linalg.py``)."""
    if band is not None:
        return _fixed_band_funcs(dtype, int(band))
    return _generic_band_funcs(dtype)


@functools.cache
def _generic_band_funcs(dtype) -> SimpleNamespace:
    """:func:`band_funcs` for any half-bandwidth."""

    @wp.func
    def band_add(H: wp.array2d(dtype=dtype), e: int, B: int, i: int, j: int, value: dtype):
        """``A[i, j] += value`` for ``i >= j`` (the caller passes the lower entry only)."""
        H[i * (B + 1) + (i - j), e] = H[i * (B + 1) + (i - j), e] + value

    @wp.func
    def band_cholesky(H: wp.array2d(dtype=dtype), e: int, N: int, B: int):
        """In-place ``A = L L^T`` (diagonal stored inverted); returns 1 on success, 0 if a pivot is
        not positive."""
        w = B + 1
        j = int(0)
        while j < N:
            s = H[j * w, e]
            k = wp.max(0, j - B)
            while k < j:
                ljk = H[j * w + (j - k), e]
                s = s - ljk * ljk
                k += 1
            if not (s > dtype(0.0)):
                return 0
            inv_d = dtype(1.0) / wp.sqrt(s)
            H[j * w, e] = inv_d
            i = j + 1
            i1 = wp.min(N, j + w)
            while i < i1:
                t = H[i * w + (i - j), e]
                k = wp.max(0, i - B)
                while k < j:
                    t = t - H[i * w + (i - k), e] * H[j * w + (j - k), e]
                    k += 1
                H[i * w + (i - j), e] = t * inv_d
                i += 1
            j += 1
        return 1

    @wp.func
    def band_solve(H: wp.array2d(dtype=dtype), e: int, N: int, B: int,
                   rhs: wp.array2d(dtype=dtype), out: wp.array2d(dtype=dtype)):
        """Solve ``L L^T out = rhs`` for one env with the factor from :func:`band_cholesky`.
        ``rhs`` and ``out`` are ``(N, E)``; they may be the same array."""
        w = B + 1
        i = int(0)
        while i < N:
            s = rhs[i, e]
            k = wp.max(0, i - B)
            while k < i:
                s = s - H[i * w + (i - k), e] * out[k, e]
                k += 1
            out[i, e] = s * H[i * w, e]
            i += 1
        i = N - 1
        while i >= 0:
            s = out[i, e]
            k = i + 1
            k1 = wp.min(N, i + w)
            while k < k1:
                s = s - H[k * w + (k - i), e] * out[k, e]
                k += 1
            out[i, e] = s * H[i * w, e]
            i -= 1

    return SimpleNamespace(band_add=band_add, band_cholesky=band_cholesky, band_solve=band_solve)


@functools.cache
def _fixed_band_funcs(dtype, band: int) -> SimpleNamespace:
    """:func:`band_funcs` with the half-bandwidth fixed at ``band``: the generic loops over
    ``k`` rewritten as loops over a compile-time range with the same order of ``k`` (guards for
    the matrix edges), so every result is bitwise that of the generic functions."""
    if not MIN_FIXED_BAND <= band <= MAX_FIXED_BAND:
        raise ValueError(f"band = {band!r}: a fixed-band variant needs {MIN_FIXED_BAND} <= band <= {MAX_FIXED_BAND}")
    generic = band_funcs(dtype)
    BAND = band
    W = band + 1  # also the end of the row loop: Warp unrolls ranges of literals and names only

    @wp.func
    def band_cholesky(H: wp.array2d(dtype=dtype), e: int, N: int, B: int):
        """:func:`band_funcs`' ``band_cholesky`` for ``B = BAND``."""
        j = int(0)
        while j < N:
            s = H[j * W, e]
            for q in range(BAND):  # k = j - BAND + q, the generic max(0, j - B) <= k < j
                k = j - BAND + q
                if k >= 0:
                    ljk = H[j * W + (BAND - q), e]
                    s = s - ljk * ljk
            if not (s > dtype(0.0)):
                return 0
            inv_d = dtype(1.0) / wp.sqrt(s)
            H[j * W, e] = inv_d
            for r in range(1, W):  # row i = j + r of the band below the pivot
                i = j + r
                if i < N:
                    t = H[i * W + r, e]
                    for q in range(BAND):  # k = i - BAND + q < j, i.e. q < BAND - r
                        if q < BAND - r:
                            k = i - BAND + q
                            if k >= 0:
                                t = t - H[i * W + (BAND - q), e] * H[j * W + (BAND - r - q), e]
                    H[i * W + r, e] = t * inv_d
            j += 1
        return 1

    @wp.func
    def band_solve(H: wp.array2d(dtype=dtype), e: int, N: int, B: int,
                   rhs: wp.array2d(dtype=dtype), out: wp.array2d(dtype=dtype)):
        """:func:`band_funcs`' ``band_solve`` for ``B = BAND``."""
        i = int(0)
        while i < N:
            s = rhs[i, e]
            for q in range(BAND):  # k = i - BAND + q
                k = i - BAND + q
                if k >= 0:
                    s = s - H[i * W + (BAND - q), e] * out[k, e]
            out[i, e] = s * H[i * W, e]
            i += 1
        i = N - 1
        while i >= 0:
            s = out[i, e]
            for q in range(BAND):  # k = i + 1 + q
                k = i + 1 + q
                if k < N:
                    s = s - H[k * W + (q + 1), e] * out[k, e]
            out[i, e] = s * H[i * W, e]
            i -= 1

    return SimpleNamespace(band_add=generic.band_add, band_cholesky=band_cholesky, band_solve=band_solve)


def band_factor_solve_kernel(dtype, band: int | None = None):
    """Kernel: factor each env's banded matrix in place and solve one right-hand side.
    ``ok[e]`` is 1 on success; ``band`` as in :func:`band_funcs`. Used by the tests."""
    return _band_factor_solve_kernel(dtype, None if band is None else int(band))


@functools.cache
def _band_factor_solve_kernel(dtype, band: int | None):
    f = band_funcs(dtype, band)

    @wp.kernel(enable_backward=False, module="unique")
    def band_factor_solve(N: int, B: int, H: wp.array2d(dtype=dtype), rhs: wp.array2d(dtype=dtype),
                          out: wp.array2d(dtype=dtype), ok: wp.array(dtype=int)):
        e = wp.tid()
        ok[e] = f.band_cholesky(H, e, N, B)
        if ok[e] != 0:
            f.band_solve(H, e, N, B, rhs, out)

    return band_factor_solve


@functools.cache
def band_inverse_func(dtype, block: int):
    """``band_inverse(H, e, N, B, W)`` for one scalar type: ``W = (L L^T)^-1`` with the factor
    from ``band_cholesky``, dense with both triangles, into ``W`` of shape ``(N * N, E)``: entry
    ``(i, j)`` at ``W[i * N + j, e]``.

    The columns go in blocks of ``block`` (``N`` must be a multiple; the Jacobian uses one
    particle's ``dim`` DOFs), each substitution step updating a ``block``-vector. Block column
    ``J`` is the forward substitution of the unit vectors ``e_J`` (zero above the block) followed
    by the back substitution down to the block's first row only; the rows above it follow by
    symmetry. About ``N^2 B`` multiply-adds in all (``N^3 / 3`` when dense): half as many as
    ``N`` full solves, a third when dense."""
    vec = wp.types.vector(length=block, dtype=dtype)

    @wp.func
    def get_row(W: wp.array2d(dtype=dtype), e: int, N: int, i: int, j0: int):
        r = vec()
        for d in range(block):
            r[d] = W[i * N + j0 + d, e]
        return r

    @wp.func
    def set_row(W: wp.array2d(dtype=dtype), e: int, N: int, i: int, j0: int, r: vec):
        for d in range(block):
            W[i * N + j0 + d, e] = r[d]

    @wp.func
    def band_inverse(H: wp.array2d(dtype=dtype), e: int, N: int, B: int, W: wp.array2d(dtype=dtype)):
        w = B + 1
        j0 = int(0)
        while j0 < N:
            # Z = L^-1 [e_j0 .. e_j0+block-1], zero above row j0
            i = j0
            while i < N:
                s = vec()
                for d in range(block):
                    if i == j0 + d:
                        s[d] = dtype(1.0)
                k = wp.max(j0, i - B)
                while k < i:
                    s = s - H[i * w + (i - k), e] * get_row(W, e, N, k, j0)
                    k += 1
                set_row(W, e, N, i, j0, s * H[i * w, e])
                i += 1
            # rows N-1 .. j0 of L^-T Z; below the diagonal block also mirrored into its rows
            i = N - 1
            while i >= j0:
                s = get_row(W, e, N, i, j0)
                k = i + 1
                k1 = wp.min(N, i + w)
                while k < k1:
                    s = s - H[k * w + (k - i), e] * get_row(W, e, N, k, j0)
                    k += 1
                s = s * H[i * w, e]
                set_row(W, e, N, i, j0, s)
                if i >= j0 + block:
                    for d in range(block):
                        W[(j0 + d) * N + i, e] = s[d]
                i -= 1
            # the diagonal block: exactly symmetric (its two triangles were computed separately)
            for a in range(block):
                for d in range(a):
                    W[(j0 + d) * N + j0 + a, e] = W[(j0 + a) * N + j0 + d, e]
            j0 += block

    return band_inverse
