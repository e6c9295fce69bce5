"""Per-environment banded Cholesky factorisation and solves, one environment per thread.

Storage: a symmetric positive-definite ``N x N`` matrix with half-bandwidth ``B`` (``A[i, j] = 0``
for ``|i - j| > B``) keeps its lower band in a 2D array ``H`` of shape ``(N * (B + 1), E)``:
``A[i, j]`` (``j <= i <= j + B``) lives at ``H[i * (B + 1) + (i - j), e]``. The environment index
is the fastest-varying one so that neighbouring GPU threads touch neighbouring addresses.
Dense storage is the special case ``B = N - 1``. The factorisation costs ``N B^2`` flops and
is done in place: the lower band becomes ``L`` with ``A = L L^T``, except that the diagonal holds
``1 / L[i, i]`` so that the solves multiply instead of divide.
"""


import functools
from types import SimpleNamespace

import warp as wp


@functools.cache
def band_funcs(dtype) -> SimpleNamespace:
    """Warp functions for one scalar type."""

    @wp.func
    def band_add(H: wp.array2d(dtype=dtype), e: int, B: int, i: int, j: int, value: dtype):
        """``A[i, j] += value`` for ``i >= j`` (the caller passes the lower entry only)."""
        H[i * (B + 1) + (i - j), e] = H[i * (B + 1) + (i - j), e] + value

    @wp.func
    def band_cholesky(H: wp.array2d(dtype=dtype), e: int, N: int, B: int):
        """In-place ``A = L L^T`` (diagonal stored inverted); returns 1 on success, 0 if a pivot is
        not positive."""
        w = B + 1
        for j in range(N):
            s = H[j * w, e]
            for k in range(wp.max(0, j - B), j):
                ljk = H[j * w + (j - k), e]
                s = s - ljk * ljk
            if not (s > dtype(0.0)):
                return 0
            inv_d = dtype(1.0) / wp.sqrt(s)
            H[j * w, e] = inv_d
            for i in range(j + 1, wp.min(N, j + w)):
                t = H[i * w + (i - j), e]
                for k in range(wp.max(0, i - B), j):
                    t = t - H[i * w + (i - k), e] * H[j * w + (j - k), e]
                H[i * w + (i - j), e] = t * inv_d
        return 1

    @wp.func
    def band_solve(H: wp.array2d(dtype=dtype), e: int, N: int, B: int,
                   rhs: wp.array2d(dtype=dtype), out: wp.array2d(dtype=dtype)):
        """Solve ``L L^T out = rhs`` for one env with the factor from :func:`band_cholesky`.
        ``rhs`` and ``out`` are ``(N, E)``; they may be the same array."""
        w = B + 1
        for i in range(N):
            s = rhs[i, e]
            for k in range(wp.max(0, i - B), i):
                s = s - H[i * w + (i - k), e] * out[k, e]
            out[i, e] = s * H[i * w, e]
        for i in range(N - 1, -1, -1):
            s = out[i, e]
            for k in range(i + 1, wp.min(N, i + w)):
                s = s - H[k * w + (k - i), e] * out[k, e]
            out[i, e] = s * H[i * w, e]

    @wp.func
    def band_solve_rows(H: wp.array2d(dtype=dtype), e: int, N: int, B: int,
                        M: wp.array3d(dtype=dtype), row0: int, col: int, first: int):
        """In place ``M[e, row0:row0+N, col] <- (L L^T)^-1 M[e, row0:row0+N, col]`` (a column of a
        batched dense matrix, e.g. a Jacobian being assembled). Entries above row ``first`` of
        the right-hand side must be zero (the forward substitution starts there)."""
        w = B + 1
        for i in range(first, N):
            s = M[e, row0 + i, col]
            for k in range(wp.max(first, i - B), i):
                s = s - H[i * w + (i - k), e] * M[e, row0 + k, col]
            M[e, row0 + i, col] = s * H[i * w, e]
        for i in range(N - 1, -1, -1):
            s = M[e, row0 + i, col]
            for k in range(i + 1, wp.min(N, i + w)):
                s = s - H[k * w + (k - i), e] * M[e, row0 + k, col]
            M[e, row0 + i, col] = s * H[i * w, e]

    return SimpleNamespace(band_add=band_add, band_cholesky=band_cholesky, band_solve=band_solve,
                           band_solve_rows=band_solve_rows)


@functools.cache
def band_factor_solve_kernel(dtype):
    """Kernel: factor each env's banded matrix in place and solve one right-hand side.
    ``ok[e]`` is 1 on success. Used by tests and by the adjoint."""
    f = band_funcs(dtype)

    @wp.kernel(enable_backward=False, module="unique")
    def band_factor_solve(N: int, B: int, H: wp.array2d(dtype=dtype), rhs: wp.array2d(dtype=dtype),
                          out: wp.array2d(dtype=dtype), ok: wp.array(dtype=int)):
        e = wp.tid()
        ok[e] = f.band_cholesky(H, e, N, B)
        if ok[e] != 0:
            f.band_solve(H, e, N, B, rhs, out)

    return band_factor_solve
