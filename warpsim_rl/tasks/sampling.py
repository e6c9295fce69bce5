"""Initial-state sampling (host, float64, vectorised over samples): the rest configuration swung
about the handle(s) and set rotating (:class:`~warpsim_rl.tasks.spec.InitialStateDistribution`)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from ..scene import Scene

if TYPE_CHECKING:
    from .spec import Task

__all__ = ["sample_states"]


def _horizontal_basis(gravity: np.ndarray, dim: int):
    """Unit vectors spanning the plane perpendicular to gravity (3D), or None (2D)."""
    if dim == 2:
        return None
    gh = gravity / np.linalg.norm(gravity) if np.linalg.norm(gravity) > 0 else np.array([0.0, -1.0, 0.0])
    trial = np.array([1.0, 0.0, 0.0]) if abs(gh[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = trial - (trial @ gh) * gh
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(gh, e1)
    return e1, e2


def _rotation(dim: int, angle: np.ndarray, axis: np.ndarray | None = None) -> np.ndarray:
    """(n, dim, dim) rotations: 2D by ``angle`` (n,); 3D about unit ``axis`` (n, 3) (Rodrigues)."""
    c, s = np.cos(angle), np.sin(angle)
    if dim == 2:
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    k = axis
    K = np.zeros(angle.shape + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -k[..., 2], k[..., 1]
    K[..., 1, 0], K[..., 1, 2] = k[..., 2], -k[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -k[..., 1], k[..., 0]
    eye = np.broadcast_to(np.eye(3), K.shape)
    return eye + s[..., None, None] * K + (1.0 - c)[..., None, None] * (K @ K)


def _cross_omega(dim: int, omega: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Rigid-rotation velocities ``omega × r`` for r (n, p, dim); omega (n,) in 2D, (n, 3) in 3D."""
    if dim == 2:
        return omega[:, None, None] * np.stack([-r[..., 1], r[..., 0]], -1)
    return np.cross(np.broadcast_to(omega[:, None, :], r.shape), r)


def _tree_edges(scene: Scene) -> list[tuple[int, int]]:
    """(child, parent) pairs in breadth-first order from the handles over the spring graph."""
    adj: dict[int, list[int]] = {i: [] for i in range(scene.num_particles)}
    for i, j in scene.springs:
        adj[int(i)].append(int(j))
        adj[int(j)].append(int(i))
    seen = set(int(h) for h in scene.handles)
    queue = deque(int(h) for h in scene.handles)
    edges = []
    while queue:
        p = queue.popleft()
        for c in adj[p]:
            if c not in seen:
                seen.add(c)
                edges.append((c, p))
                queue.append(c)
    return edges


def sample_states(task: Task, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` initial states ``(positions, velocities)`` (n, particles, dim) of ``task`` drawn from
    ``task.init`` with ``rng``; what :meth:`~warpsim_rl.tasks.spec.Task.sample_initial_states`
    returns (argument checks and seeding are there). All random numbers are drawn up front in a
    fixed order, so a seed gives the same states on every platform."""
    sc, dist = task.scene, task.init
    d, P = sc.dim, sc.num_particles
    rest = np.asarray(task.rest_positions)
    basis = _horizontal_basis(sc.gravity, d)
    # all random draws up front, in a fixed order (determinism)
    swing_u = rng.uniform(-1.0, 1.0, n)
    swing_dir = rng.uniform(0.0, 2.0 * np.pi, n)
    speed = rng.uniform(dist.angular_speed[0], dist.angular_speed[1], n)
    spin_dir = rng.uniform(0.0, 2.0 * np.pi, n)
    spin_sign = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    bend_u = rng.uniform(-1.0, 1.0, (n, P))
    bend_axis = rng.normal(size=(n, P, 3))
    pivot_u = rng.uniform(size=n)
    offset = rng.uniform(-1.0, 1.0, (n, d)) * dist.handle_offset
    # no offset along an axis that every handle has locked (limit 0): the handles could not move back
    offset *= np.any(np.asarray(task.action_limits) > 0, axis=0).astype(np.float64)

    def horizontal(angle):
        e1, e2 = basis
        return np.cos(angle)[:, None] * e1 + np.sin(angle)[:, None] * e2

    pos = np.broadcast_to(rest, (n, P, d)).copy()
    if dist.swing_about == "handle_line":
        # rigid swing about the line through the handles (they stay put: no spring changes length)
        handles = sc.handles.astype(np.int64)
        if d != 3 or len(handles) < 2:
            raise ValueError(f"{task.name}: swing_about='handle_line' needs a 3D scene with >= 2 handles")
        a = rest[handles[0]]
        line = rest[handles[-1]] - a
        line = line / np.linalg.norm(line)
        off_line = rest[handles] - a - np.outer((rest[handles] - a) @ line, line)
        if np.abs(off_line).max() > 1e-9:
            raise ValueError(f"{task.name}: swing_about='handle_line' needs all handles on one line")
        axis = np.broadcast_to(line, (n, 3))
        R = _rotation(3, dist.swing_angle * swing_u, axis)
        free = sc.free_particles
        pos[:, free] = a + np.einsum("nij,pj->npi", R, rest[free] - a)
        pivot = np.full(n, handles[0])
        omega = (spin_sign * speed)[:, None] * axis
    elif sc.num_handles == 1:
        h = int(sc.handles[0])
        theta = dist.swing_angle * swing_u
        R = {h: _rotation(d, theta, None if d == 2 else horizontal(swing_dir))}
        for child, parent in _tree_edges(sc):
            bend = dist.bend_angle * bend_u[:, child]
            if d == 2:
                B = _rotation(2, bend)
            else:
                ax = bend_axis[:, child]
                ax = ax / np.maximum(np.linalg.norm(ax, axis=1, keepdims=True), 1e-12)
                B = _rotation(3, bend, ax)
            R[child] = R[parent] @ B
            pos[:, child] = pos[:, parent] + np.einsum("nij,j->ni", R[child], rest[child] - rest[parent])
        pivot = np.full(n, h)
        omega = spin_sign * speed if d == 2 else (speed[:, None] * horizontal(spin_dir))
    else:
        # several handles: swing the payload about one handle, towards slack
        handles = sc.handles.astype(np.int64)
        pivot = handles[np.minimum((pivot_u * len(handles)).astype(np.int64), len(handles) - 1)]
        free = sc.free_particles
        axis = None if d == 2 else horizontal(swing_dir)
        theta = dist.swing_angle * np.abs(swing_u)
        cands = []
        for sign in (1.0, -1.0):
            R = _rotation(d, sign * theta, axis)
            c = pos.copy()
            r = rest[free][None] - rest[pivot][:, None]
            c[:, free] = rest[pivot][:, None] + np.einsum("nij,npj->npi", R, r)
            lengths = np.linalg.norm(c[:, sc.springs[:, 1]] - c[:, sc.springs[:, 0]], axis=-1)
            rest_len = np.linalg.norm(rest[sc.springs[:, 1]] - rest[sc.springs[:, 0]], axis=-1)
            cands.append((c, np.max(lengths - rest_len[None], axis=1)))
        use_plus = cands[0][1] <= cands[1][1]
        pos = np.where(use_plus[:, None, None], cands[0][0], cands[1][0])
        omega = spin_sign * speed if d == 2 else spin_sign[:, None] * speed[:, None] * axis
    vel = np.zeros((n, P, d))
    free = sc.free_particles
    vel[:, free] = _cross_omega(d, omega, pos[:, free] - pos[np.arange(n), pivot][:, None])
    pos += offset[:, None, :]
    return pos, vel

