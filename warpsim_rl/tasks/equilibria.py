"""Static equilibrium of a scene with its handles held (host, float64): the rest configuration
and the targets of the tasks."""

from __future__ import annotations

import numpy as np

from ..scene import Scene

__all__ = ["equilibrium"]


def equilibrium(scene: Scene, handle_positions=None, tol: float = 1e-10, max_iters: int = 200) -> np.ndarray:
    """(n, dim) static equilibrium of ``scene`` with its handles at ``handle_positions`` (h, dim)
    (default: their scene positions): the minimum of spring + gravity energy over the free
    particles, by Newton's method with a PSD-projected Hessian and backtracking, in float64.
    Converges to a gradient below ``tol`` N (raises ``RuntimeError`` otherwise)."""
    x = np.array(scene.positions, dtype=np.float64)
    if handle_positions is not None:
        x[scene.handles] = np.asarray(handle_positions, dtype=np.float64).reshape(-1, scene.dim)
    free = scene.free_particles
    d = scene.dim
    fidx = np.full(scene.num_particles, -1)
    fidx[free] = np.arange(len(free))
    N = len(free) * d
    m = scene.masses
    g = scene.gravity
    kmax = float(np.max(scene.stiffness)) if scene.num_springs else 1.0
    reg = 1e-9 * kmax

    def energy_grad_hess(xx, want_hess=True):
        E = -float(np.sum(m[free, None] * g[None, :] * xx[free]))
        G = np.zeros(N)
        H = np.zeros((N, N)) if want_hess else None
        for k in free:
            G[fidx[k] * d:(fidx[k] + 1) * d] -= m[k] * g
        for s, (i, j) in enumerate(scene.springs):
            dvec = xx[j] - xx[i]
            ln = float(np.linalg.norm(dvec))
            L = float(scene.rest_length[s])
            ks = float(scene.stiffness[s])
            if scene.is_cable[s] and ln <= L:
                continue
            E += 0.5 * ks * (ln - L) ** 2
            u = dvec / max(ln, 1e-300)
            f = ks * (ln - L) * u
            if fidx[j] >= 0:
                G[fidx[j] * d:(fidx[j] + 1) * d] += f
            if fidx[i] >= 0:
                G[fidx[i] * d:(fidx[i] + 1) * d] -= f
            if want_hess:
                uu = np.outer(u, u)
                K = ks * (uu + max(0.0, 1.0 - L / max(ln, 1e-300)) * (np.eye(d) - uu))
                for a_, sa in ((i, 1.0), (j, -1.0)):
                    for b_, sb in ((i, 1.0), (j, -1.0)):
                        if fidx[a_] >= 0 and fidx[b_] >= 0:
                            H[fidx[a_] * d:(fidx[a_] + 1) * d, fidx[b_] * d:(fidx[b_] + 1) * d] += sa * sb * K
        return E, G, H

    for _ in range(max_iters):
        E0, G, H = energy_grad_hess(x)
        if np.max(np.abs(G)) < tol:
            return x
        dx = np.linalg.solve(H + reg * np.eye(N), -G)
        alpha = 1.0
        for _ls in range(40):
            xt = x.copy()
            xt[free] += alpha * dx.reshape(-1, d)
            Et, _, _ = energy_grad_hess(xt, want_hess=False)
            if Et <= E0 + 1e-4 * alpha * float(G @ dx) or abs(Et - E0) < 1e-15 * max(1.0, abs(E0)):
                break
            alpha *= 0.5
        x = xt
    _, G, _ = energy_grad_hess(x, want_hess=False)
    if np.max(np.abs(G)) < 1e3 * tol:
        return x
    raise RuntimeError(f"{scene.name}: static equilibrium did not converge (|grad| = {np.max(np.abs(G)):.3e} N)")

