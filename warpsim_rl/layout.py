"""State layouts: the one place that knows how a state tuple ``(x, v, x_prev, v_prev)`` maps to
the flat vectors the rest of the code uses — the full state, the Markov state of the per-step
Jacobians and the observation — and back (for gradients and constant Hessian diagonals).

Used by the step core (``warpsim_rl.core``), the tasks' reward derivatives
(:meth:`warpsim_rl.tasks.Task.reward_derivatives`), the torch bridge's
:meth:`~warpsim_rl.autodiff.TorchSimulator.markov_state` and the torch environment's
:meth:`~warpsim_rl.envs.WarpSimEnv.flat_state`.
"""

from __future__ import annotations

import numpy as np
import torch

from .scene import Scene

__all__ = ["StateLayout"]


class StateLayout:
    """The state vectors of one scene and the maps between them (torch, batched over envs).

    * **full** ``s = [x, v, x_prev, v_prev]``: the four (E, n, dim) blocks, each row-major, in
      that order (size ``4 n dim``; handles included) — :meth:`warpsim_rl.model.State.flat`.
    * **Markov** ``s = [x_f, v_f, x_prev_f, v_prev_f, x_h]``: free particles (= the payload), then
      handle positions (size ``ns = 4 k dim + h dim``) — the state of the per-step Jacobians
      ``A = ds'/ds``, ``B = ds'/da`` (:meth:`~warpsim_rl.autodiff.TorchSimulator.jacobians`).
    * **observation** ``[x_h - home, x_f - target, v_f]`` (size ``h dim + 2 k dim``) —
      :meth:`warpsim_rl.tasks.Task.observation`, linear in the state: :meth:`observation_jacobian`
      is its constant 0/1 matrix on either state.

    The payload is every free particle, in index order; handles are in action order.
    """

    KINDS = ("full", "markov")

    def __init__(self, scene: Scene):
        self.payload = np.asarray(scene.free_particles, dtype=np.int64)
        self.handles = np.asarray(scene.handles, dtype=np.int64)
        self.num_particles, self.dim = int(scene.num_particles), int(scene.dim)
        self.num_payload, self.num_handles = len(self.payload), len(self.handles)
        self.full_size = 4 * self.num_particles * self.dim
        self.markov_size = 4 * self.num_payload * self.dim + self.num_handles * self.dim
        self.obs_size = (self.num_handles + 2 * self.num_payload) * self.dim
        self._index: dict = {}

    def _indices(self, device):
        key = str(device)
        if key not in self._index:
            self._index[key] = (torch.as_tensor(self.payload, device=device),
                                torch.as_tensor(self.handles, device=device))
        return self._index[key]

    def flatten(self, state, kind: str = "full") -> torch.Tensor:
        """(E, size) vector of a state tuple ``(x, v, x_prev, v_prev)`` in layout ``kind``."""
        E = state[0].shape[0]
        if kind == "full":
            return torch.cat([t.reshape(E, -1) for t in state], dim=1)
        if kind == "markov":
            free, hnd = self._indices(state[0].device)
            return torch.cat([t[:, free].reshape(E, -1) for t in state] + [state[0][:, hnd].reshape(E, -1)], dim=1)
        raise ValueError(f"layout = {kind!r}: must be one of {self.KINDS}")

    def from_xv(self, gx: torch.Tensor, gv: torch.Tensor, gp: torch.Tensor, kind: str = "full") -> torch.Tensor:
        """Assemble a state-shaped vector (E, size) that is ``gx`` (E, k, dim) on payload positions,
        ``gv`` (E, k, dim) on payload velocities, ``gp`` (E, h, dim) on handle positions and zero
        elsewhere (the shape of the reward's state gradient)."""
        E, d = gx.shape[0], self.dim
        if kind == "markov":
            zeros = torch.zeros(E, 2 * self.num_payload * d, dtype=gx.dtype, device=gx.device)
            return torch.cat([gx.reshape(E, -1), gv.reshape(E, -1), zeros, gp.reshape(E, -1)], dim=1)
        if kind != "full":
            raise ValueError(f"layout = {kind!r}: must be one of {self.KINDS}")
        free, hnd = self._indices(gx.device)
        n = self.num_particles
        dx = torch.zeros(E, n, d, dtype=gx.dtype, device=gx.device)
        dx[:, hnd] = gp
        dx[:, free] = gx
        dv = torch.zeros(E, n, d, dtype=gx.dtype, device=gx.device)
        dv[:, free] = gv
        zeros = torch.zeros(E, 2 * n * d, dtype=gx.dtype, device=gx.device)
        return torch.cat([dx.reshape(E, -1), dv.reshape(E, -1), zeros], dim=1)

    def diagonal_from_xv(self, hx: float, hv: float, hp: float, kind: str = "full") -> np.ndarray:
        """float64 vector of the layout's size: ``hx`` on payload positions, ``hv`` on payload
        velocities, ``hp`` on handle positions, 0 elsewhere (a diagonal Hessian)."""
        n, d, k, h = self.num_particles, self.dim, self.num_payload, self.num_handles
        if kind == "markov":
            return np.concatenate([np.full(k * d, hx), np.full(k * d, hv), np.zeros(2 * k * d), np.full(h * d, hp)])
        if kind != "full":
            raise ValueError(f"layout = {kind!r}: must be one of {self.KINDS}")
        x = np.zeros((n, d))
        x[self.handles] = hp
        x[self.payload] = hx
        v = np.zeros((n, d))
        v[self.payload] = hv
        return np.concatenate([x.ravel(), v.ravel(), np.zeros(2 * n * d)])

    def observation_jacobian(self, kind: str = "markov", dtype=torch.float64, device="cpu") -> torch.Tensor:
        """Constant ``d obs / d s`` (obs_size, size) in layout ``kind`` (the observation is the
        state minus constants, so the matrix holds only zeros and ones)."""
        k, h, d, n = self.num_payload, self.num_handles, self.dim, self.num_particles
        size = self.markov_size if kind == "markov" else self.full_size
        if kind not in self.KINDS:
            raise ValueError(f"layout = {kind!r}: must be one of {self.KINDS}")
        J = torch.zeros(self.obs_size, size, dtype=dtype, device=device)
        rows = torch.arange(self.obs_size)
        if kind == "markov":
            cols = torch.cat([torch.arange(4 * k * d, 4 * k * d + h * d), torch.arange(0, 2 * k * d)])
        else:
            def block(particles, offset):
                return torch.cat([offset + int(p) * d + torch.arange(d) for p in particles]) if len(particles) \
                    else torch.zeros(0, dtype=torch.long)

            cols = torch.cat([block(self.handles, 0), block(self.payload, 0), block(self.payload, n * d)])
        J[rows, cols] = 1.0
        return J
