"""The :class:`Simulator`: advances all environments of a :class:`~warpsim_rl.model.Model` by one
implicit BDF2 step per launch, and reports per-environment convergence."""

from __future__ import annotations

import time

import numpy as np
import warp as wp

from .kernels.bdf2 import STATUS_NAMES, STATUS_OK, bdf2_kernels
from .kernels.linalg import fixed_band
from .model import Control, Model, State
from .shards import env_rows

__all__ = ["Simulator", "SimulationError", "ActionError"]


class SimulationError(RuntimeError):
    """One or more environments failed to converge. ``envs`` (list of env indices), ``steps``
    (step counter at the first failure of each) and ``reasons`` describe them."""

    def __init__(self, envs, steps, reasons):
        self.envs, self.steps, self.reasons = list(envs), list(steps), list(reasons)
        shown = ", ".join(f"env {e} at step {s}: {r}" for e, s, r in list(zip(envs, steps, reasons))[:8])
        more = f" (and {len(envs) - 8} more)" if len(envs) > 8 else ""
        super().__init__(f"{len(envs)} environment(s) failed: {shown}{more}")


class ActionError(ValueError):
    """An action has the wrong shape, dtype or device, or is not finite."""


class Simulator:
    """Batched implicit-BDF2 mass-spring simulator.

    Owns the per-environment Newton scratch (allocated once) and the per-environment
    diagnostics of the last step: ``status`` (E,) int32 (0 = converged, see
    ``kernels.bdf2.STATUS_NAMES``), ``iterations`` (E,) int32 Newton iterations,
    ``residual`` (E,) final ``max|dx|/dt`` in m/s; and the sticky ``first_failure_step`` (E,)
    int32 (-1 if the env never failed since :meth:`clear_failures`) with
    ``first_failure_status`` (E,).

    Usage::

        model = load_scene("pendulum2d").build(num_envs=4096, device="cpu")
        sim = Simulator(model)
        s0, s1 = model.state(), model.state()
        ctrl = model.control()
        for t in range(T):
            sim.step(s0, ctrl, s1, check=False)
            s0, s1 = s1, s0
        sim.check()   # raises SimulationError naming the envs that failed
    """

    def __init__(self, model: Model):
        self.model = model
        E, d, dt = model.num_envs, model.device, model.dtype
        # the factorisation specialised to this model's band (bitwise the generic one's results)
        self.kernels = bdf2_kernels(dt, model.dim, model.num_geometries > 0, fixed_band(model.band))
        self._scratch = model.newton_scratch()
        self._scratch_sizes = (model.num_dofs, model.band)
        self.status = wp.zeros(E, dtype=wp.int32, device=d)
        self.iterations = wp.zeros(E, dtype=wp.int32, device=d)
        self.residual = wp.zeros(E, dtype=dt, device=d)
        self.first_failure_step = wp.full(E, -1, dtype=wp.int32, device=d)
        self.first_failure_status = wp.zeros(E, dtype=wp.int32, device=d)
        self.step_count = 0
        self._launches: dict = {}

    # -- validation ---------------------------------------------------------------------------
    def _check_state(self, state: State, name: str) -> None:
        if not isinstance(state, State) or state.model is not self.model:
            if not isinstance(state, State) or state.x.shape != (self.model.num_envs, self.model.num_particles) \
                    or state.x.dtype != self.model.vec or state.x.device != self.model.device:
                raise ValueError(f"{name}: not a State of this model (shape/dtype/device differ)")

    def check_action(self, action: wp.array, finite: bool = True) -> None:
        """Raise :class:`ActionError` if ``action`` is not a (E, h) array of this model's vector
        type on its device, or (``finite=True``, one host sync) holds NaN/inf."""
        m = self.model
        want = (m.num_envs, max(m.num_handles, 1))
        if not isinstance(action, wp.array):
            raise ActionError(f"action: expected a warp array, got {type(action).__name__}")
        if action.device != m.device:
            raise ActionError(f"action.device = {action.device}: expected {m.device}")
        if not wp.types.types_equal(action.dtype, m.vec):
            raise ActionError(f"action.dtype = {wp.types.type_repr(action.dtype)}: expected "
                              f"{wp.types.type_repr(m.vec)} ({m.dim}-vectors of {m.dtype.__name__})")
        if tuple(action.shape) != want:
            raise ActionError(f"action.shape = {tuple(action.shape)}: expected {want} (envs, handles) of {m.dim}-vectors")
        if finite:
            a = action.numpy()
            bad = ~np.isfinite(a).all(axis=tuple(range(1, a.ndim)))
            if bad.any():
                envs = np.flatnonzero(bad)
                raise ActionError(f"action: non-finite values in env(s) {envs[:8].tolist()}"
                                  f"{' ...' if len(envs) > 8 else ''}, e.g. action[{envs[0]}] = {a[envs[0]].tolist()}")

    # -- stepping -----------------------------------------------------------------------------
    def step(self, state_in: State, control: Control, state_out: State, check: bool = True) -> None:
        """Advance every env by ``model.dt``: ``state_out = step(state_in, control.action)``.

        With ``check=True`` the action is validated (shape, dtype, device, finite) before the
        launch and convergence is checked after it (two host syncs); failures raise
        :class:`SimulationError`. With ``check=False`` nothing syncs: failures are recorded in
        ``first_failure_step`` for a later :meth:`check`.
        """
        self._check_state(state_in, "state_in")
        self._check_state(state_out, "state_out")
        if state_in is state_out:
            raise ValueError("state_out must be a different State than state_in (double-buffer them)")
        self.check_action(control.action, finite=check)
        self.launch(state_in.arrays(), control.action, state_out.arrays())
        if check:
            self.check(last_step_only=True)

    def launch(self, arrays_in, action: wp.array, arrays_out, stiffness: wp.array | None = None,
               mass: wp.array | None = None, cache: bool = True) -> None:
        """Low-level launch on raw arrays ``(x, v, x_prev, v_prev)`` (no validation).

        ``stiffness`` (E, m) and ``mass`` (E, n) default to the model's arrays. With ``cache``
        the launch is recorded once per combination of arrays (the two orders of a double
        buffer) and replayed, which keeps the per-step host overhead low; callers that wrap new
        arrays every step (the torch bridge) pass ``cache=False``."""
        m = self.model
        if (m.num_dofs, m.band) != self._scratch_sizes:
            raise ValueError(f"model.band = {m.band}: changed after this Simulator sized its scratch for "
                             f"{self._scratch_sizes[1]}; build a new Simulator")
        stiffness = m.stiffness if stiffness is None else stiffness
        mass = m.mass if mass is None else mass
        arrays = (*arrays_in, action, *arrays_out, stiffness, mass)
        shards = m.shards
        site = self._site(shards)
        k = site.variant()
        bounds = shards.whole if k == 1 else shards.bounds
        key = (k, shards.threads, *(id(a) for a in arrays))
        entry = self._launches.get(key) if cache else None
        if entry is None:
            scratch = self._scratch_shards(shards)

            # m.data (and its shards) are passed by reference: a replayed launch sees later
            # changes of the model's scalars (model.tol = ...) as a fresh one does
            def args(e0, e1):
                return ([m.data_shard(e0, e1), env_rows(mass, e0, e1), env_rows(stiffness, e0, e1),
                         m.state_data([env_rows(a, e0, e1) for a in arrays_in]), env_rows(action, e0, e1),
                         scratch[(e0, e1)], self.step_count],
                        [m.state_data([env_rows(a, e0, e1) for a in arrays_out]),
                         *(env_rows(a, e0, e1) for a in (self.status, self.iterations, self.residual,
                                                          self.first_failure_step, self.first_failure_status))])

            cmds = shards.record(self.kernels.bdf2_step, args, bounds)
            if cache:
                if len(self._launches) >= 16:
                    self._launches.pop(next(iter(self._launches)))
                # the entry keeps the arrays alive, so their ids cannot be reused while cached
                self._launches[key] = (cmds, arrays)
        else:
            cmds = entry[0]
        for cmd in cmds:
            cmd.set_param_by_name("step_index", self.step_count)
        t0 = time.perf_counter()
        shards.run([cmd.launch for cmd in cmds])
        site.record(k, time.perf_counter() - t0)
        self.step_count += 1

    def _site(self, shards):
        """The :class:`~warpsim_rl.shards.LaunchSite` of this simulator's step for ``shards``."""
        if getattr(self, "_step_site", (None,))[0] is not shards:
            self._step_site = (shards, shards.site())
        return self._step_site[1]

    def _scratch_shards(self, shards) -> dict:
        """The Newton scratch views of every shard and of the whole batch (built once per shard
        layout)."""
        if getattr(self, "_scratch_views", (None,))[0] is not shards:
            self._scratch_views = (shards, {b: self.model.scratch_shard(self._scratch, *b)
                                            for b in shards.bounds + shards.whole})
        return self._scratch_views[1]

    def clear_failures(self) -> None:
        """Forget recorded failures (e.g. after resetting the failed envs)."""
        self.first_failure_step.fill_(-1)
        self.first_failure_status.zero_()

    def failures(self):
        """``(envs, steps, reasons)`` of the envs that failed since :meth:`clear_failures`."""
        steps = self.first_failure_step.numpy()
        codes = self.first_failure_status.numpy()
        envs = np.flatnonzero(steps >= 0)
        return envs.tolist(), steps[envs].tolist(), [STATUS_NAMES[int(c)] for c in codes[envs]]

    def check(self, last_step_only: bool = False) -> None:
        """Raise :class:`SimulationError` if any env failed (in the last step only, or since
        :meth:`clear_failures`)."""
        if last_step_only:
            st = self.status.numpy()
            envs = np.flatnonzero(st != STATUS_OK)
            if envs.size:
                raise SimulationError(envs.tolist(), [self.step_count - 1] * len(envs),
                                      [STATUS_NAMES[int(c)] for c in st[envs]])
            return
        envs, steps, reasons = self.failures()
        if envs:
            raise SimulationError(envs, steps, reasons)
