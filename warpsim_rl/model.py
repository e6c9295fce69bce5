"""Batched simulation data: static :class:`Model`, per-step :class:`State`, per-step :class:`Control`.

Shapes use ``E`` environments, ``n`` particles, ``m`` springs, ``h`` handles, ``dim`` in {2, 3};
``vec`` is Warp's ``vector(dim, dtype)``. Arrays live on ``model.device`` in ``model.dtype``.
"""

from __future__ import annotations

import numpy as np
import warp as wp

from .kernels.contact import GEOM_BOX, GEOM_PLANE
from .kernels.data import kernel_structs
from .shards import EnvShards, check_threads, default_threads, env_columns, env_rows
from .scene import Scene, SceneError
from .util import resolve_device, resolve_dtype, wp_vec_type

#: the ModelData fields with one row per environment (sliced per shard)
PER_ENV_DATA = frozenset({"rest_length", "contact_stiffness", "friction"})

__all__ = ["Model", "State", "Control"]


def scratch_array(rows: int, envs: int, dtype, device) -> wp.array:
    """A (rows, envs) per-environment work array. On GPUs the env index is the fastest one (so
    neighbouring threads touch neighbouring addresses); on the CPU, where one thread walks a
    whole environment, each env's rows are contiguous instead (a transposed view), which avoids
    one cache line and one TLB entry per element."""
    if device.is_cpu:
        return wp.zeros((envs, rows), dtype=dtype, device=device).transpose()
    return wp.zeros((rows, envs), dtype=dtype, device=device)


def band_width(scene: Scene) -> int:
    """Half-bandwidth of the Newton matrix in the natural free-particle DOF order."""
    dim = scene.dim
    free = np.full(scene.num_particles, -1, dtype=np.int64)
    free[scene.free_particles] = np.arange(len(scene.free_particles))
    B = dim - 1
    for i, j in scene.springs:
        if free[i] >= 0 and free[j] >= 0:
            B = max(B, (abs(int(free[i]) - int(free[j])) + 1) * dim - 1)
    return min(B, scene.num_dofs - 1)


class Model:
    """Static scene arrays for ``num_envs`` environments (Newton's Model).

    Attributes:
        scene: the :class:`~warpsim_rl.scene.Scene` it was built from.
        num_envs, num_particles, num_springs, num_handles, dim: sizes.
        num_dofs: ``N``, free particles × dim (unknowns of one Newton solve).
        band: ``B``, half-bandwidth of the Newton matrix (``B = N - 1`` is dense).
        dt: time step in s. gravity: ``vec`` in m/s².
        mass: (E, n) kg, per environment (handles: 0, unused).
        free_index: (n,) int32, DOF block of each particle, -1 for handles.
        handle_particle: (h,) int32 particle index of each handle (action order).
        handle_index: (n,) int32 handle number of each particle, -1 for free particles.
        num_state: ``ns = 4 N + h dim``, size of the Markov state ``[x_f, v_f, x_prev_f, v_prev_f, x_h]``.
        num_actions: ``na = h dim``.
        velocity_limit: (h,) vec, m/s.
        spring_i, spring_j: (m,) int32 end particles.
        stiffness: (E, m) N/m, per environment. rest_length: (E, m) m, per environment.
        damping: (m,) N·s/m. has_damping: 1 if any spring is damped. is_cable: (m,) int32 (1 = tension only).
        num_geometries: ``G``, planes then boxes (contact obstacles, ``kernels/contact.py``).
        geo_kind: (G,) int32, 0 = plane, 1 = box. geo_a: (G,) vec, plane normal / box centre.
        geo_b: (G,) vec, box half extents (0 for planes). geo_r: (G,) plane offset / box edge radius.
        contact_stiffness: (E, G) N/m, per environment. friction: (E, G) Coulomb coefficients, per
        environment. contact_width: smoothing width (m). contact_eps_v: friction smoothing
        velocity (m/s). has_friction: 1 if any geometry has friction > 0 (in any env).
        max_iters, tol, line_search_max, lte_fraction: Newton settings (tol in m/s; lte_fraction
            the error-controlled stop, :class:`~warpsim_rl.scene.SolverSettings`).
        threads: CPU threads that launch the per-environment kernels, each on a contiguous shard
            of the environments (``warpsim_rl/shards.py``; default: the cores available to the
            process; always 1 on CUDA). Results are bitwise identical for every value.
        data: the ``ModelData`` struct the kernels take (``kernels/data.py``): references to
            the arrays above (all but ``mass`` and ``stiffness``, which are separate kernel
            arguments) and copies of the scalars, under the same names. Assigning one of those
            attributes of the model (``model.tol = 1e-9``, ``model.band = ...``, a new array)
            updates ``data`` too; in-place writes (``set_friction``, ``velocity_limit.assign(...)``)
            keep the same arrays. Change the model's attributes, not ``data``'s.
    """

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_data_fields", ()):
            setattr(self.data, name, value)  # keep the kernels' struct in step (a wrong type raises here)
            for (e0, e1), shard in self.__dict__.get("_data_shards", {}).items():
                setattr(shard, name, env_rows(value, e0, e1) if name in PER_ENV_DATA else value)
        super().__setattr__(name, value)

    def __init__(self, scene: Scene, num_envs: int = 1, device=None, dtype="float32", threads: int | None = None):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise SceneError(f"num_envs = {num_envs!r}: must be an integer >= 1")
        self.scene = scene
        self.device = resolve_device(device)
        self.threads = check_threads(threads) or default_threads(self.device)
        self.dtype = resolve_dtype(dtype)
        self.np_dtype = np.float32 if self.dtype == wp.float32 else np.float64
        self.vec = wp_vec_type(scene.dim, self.dtype)
        self.num_envs = int(num_envs)
        self.dim = scene.dim
        self.num_particles = scene.num_particles
        self.num_springs = scene.num_springs
        self.num_handles = scene.num_handles
        self.num_dofs = scene.num_dofs
        self.band = band_width(scene)
        self.dt = float(scene.dt)
        for field in ("dt", "gravity", "positions", "velocities", "masses", "stiffness", "rest_length",
                      "damping", "velocity_limit"):
            _check_cast(getattr(scene, field), self.np_dtype, f"scene.{field}", positive=field in ("dt", "stiffness"))
        _check_cast(np.where(scene.is_handle, 1.0, scene.masses), self.np_dtype, "scene.masses", positive=True)
        self.gravity = self.vec(*scene.gravity.astype(self.np_dtype))
        solver = scene.solver
        self.max_iters = solver.max_iters
        self.line_search_max = solver.line_search_max
        self.lte_fraction = float(solver.lte_fraction)
        self.tol = solver.tol if solver.tol is not None else (1e-4 if self.dtype == wp.float32 else 1e-9)

        E, d = self.num_envs, self.device
        free = np.full(scene.num_particles, -1, dtype=np.int32)
        free[scene.free_particles] = np.arange(len(scene.free_particles), dtype=np.int32)
        self.free_index = wp.array(free, dtype=wp.int32, device=d)
        self.handle_particle = wp.array(scene.handles, dtype=wp.int32, device=d)
        hidx = np.full(scene.num_particles, -1, dtype=np.int32)
        hidx[scene.handles] = np.arange(scene.num_handles, dtype=np.int32)
        self.handle_index = wp.array(hidx, dtype=wp.int32, device=d)
        # Markov state of the Jacobians: [x_f, v_f, x_prev_f, v_prev_f, x_h] (see kernels/adjoint.py)
        self.num_state = 4 * self.num_dofs + self.num_handles * self.dim
        self.num_actions = self.num_handles * self.dim
        self.velocity_limit = wp.array(scene.velocity_limit.astype(self.np_dtype).reshape(-1, self.dim),
                                       dtype=self.vec, device=d)
        self.mass = wp.array(np.tile(scene.masses.astype(self.np_dtype), (E, 1)), dtype=self.dtype, device=d)
        self.spring_i = wp.array(scene.springs[:, 0].copy(), dtype=wp.int32, device=d)
        self.spring_j = wp.array(scene.springs[:, 1].copy(), dtype=wp.int32, device=d)
        self.stiffness = wp.array(np.tile(scene.stiffness.astype(self.np_dtype), (E, 1)), dtype=self.dtype, device=d)
        self.rest_length = wp.array(np.tile(scene.rest_length.astype(self.np_dtype), (E, 1)), dtype=self.dtype, device=d)
        self.damping = wp.array(scene.damping.astype(self.np_dtype), dtype=self.dtype, device=d)
        self.has_damping = int(np.any(scene.damping > 0))
        self.is_cable = wp.array(scene.is_cable.astype(np.int32), dtype=wp.int32, device=d)
        # contact geometry: planes, then boxes
        cs = scene.contact
        G = len(scene.planes) + len(scene.boxes)
        self.num_geometries = G
        kind = np.array([GEOM_PLANE] * len(scene.planes) + [GEOM_BOX] * len(scene.boxes), dtype=np.int32)
        ga = np.zeros((G, self.dim))
        gb = np.zeros((G, self.dim))
        gr = np.zeros(G)
        gk = np.zeros(G)
        gmu = np.zeros(G)
        for i, geo in enumerate(list(scene.planes) + list(scene.boxes)):
            if i < len(scene.planes):
                ga[i], gr[i] = geo.normal, geo.offset
            else:
                ga[i], gb[i], gr[i] = geo.center, geo.half_extents, geo.radius
            gk[i] = cs.stiffness if geo.stiffness is None else geo.stiffness
            gmu[i] = cs.friction if geo.friction is None else geo.friction
        for field, vals, pos in (("geometry", np.concatenate([ga.ravel(), gb.ravel(), gr]), False),
                                 ("contact.stiffness", gk, True),
                                 ("contact.width", np.array([cs.width]), False),
                                 ("contact.eps_v", np.array([cs.eps_v]), True)):
            _check_cast(vals, self.np_dtype, field, positive=pos)
        self.geo_kind = wp.array(kind, dtype=wp.int32, device=d)
        self.geo_a = wp.array(ga.astype(self.np_dtype), dtype=self.vec, device=d)
        self.geo_b = wp.array(gb.astype(self.np_dtype), dtype=self.vec, device=d)
        self.geo_r = wp.array(gr.astype(self.np_dtype), dtype=self.dtype, device=d)
        self.contact_stiffness = wp.array(np.tile(gk.astype(self.np_dtype), (E, 1)).reshape(E, G), dtype=self.dtype,
                                          device=d)
        self.friction = wp.array(np.tile(gmu.astype(self.np_dtype), (E, 1)).reshape(E, G), dtype=self.dtype, device=d)
        self.contact_width = float(cs.width)
        self.contact_eps_v = float(cs.eps_v)
        self.has_friction = int(np.any(gmu > 0))
        # the kernels' view of all of the above but mass and stiffness (kernels/data.py)
        self._structs = kernel_structs(self.dtype, self.dim)
        self.data = self._structs.ModelData()
        for name in self._structs.ModelData.vars:
            setattr(self.data, name, getattr(self, name))
        self._data_fields = frozenset(self._structs.ModelData.vars)

    # -- per-environment parameters ------------------------------------------------------------
    def enable_parameter_grads(self) -> None:
        """Allocate ``stiffness.grad`` and ``mass.grad`` so ``wp.Tape`` rollouts (see
        :meth:`warpsim_rl.autodiff.Differentiator.step_tape`) accumulate parameter gradients."""
        self.stiffness.requires_grad = True
        self.mass.requires_grad = True

    def set_stiffness(self, values) -> None:
        """Per-env stiffness: array-like broadcastable to (E, m), N/m, all > 0."""
        self._set_param("stiffness", self.stiffness, values, (self.num_envs, self.num_springs), positive=True)

    def set_contact_stiffness(self, values) -> None:
        """Per-env penalty stiffness of every geometry (planes, then boxes): broadcastable to
        (E, G), N/m, all > 0 (e.g. a sweep of wall stiffness across environments)."""
        self._set_param("contact.stiffness", self.contact_stiffness, values, (self.num_envs, self.num_geometries),
                        positive=True)

    def set_friction(self, values) -> None:
        """Per-env Coulomb coefficients of every geometry: broadcastable to (E, G), all >= 0."""
        shape = (self.num_envs, self.num_geometries)
        vals = _broadcast_param(values, shape, "friction")
        bad = np.argwhere(~(vals >= 0))
        if bad.size:
            e, k = bad[0]
            raise SceneError(f"friction[{e}, {k}] = {float(vals[e, k])!r}: must be >= 0")
        self._set_param("friction", self.friction, vals, shape, positive=False)
        self.has_friction = int(np.any(vals > 0))

    def start_history(self, x_new: wp.array, v_new: wp.array, mask: wp.array, state: "State") -> None:
        """Write ``x_new``/``v_new`` (E, n) vec and their BDF2 start-up history into ``state`` for
        the envs with ``mask[e] != 0`` (see :meth:`State.reset`); one launch per shard."""
        from .kernels.bdf2 import bdf2_kernels

        scratch = self.__dict__.get("_startup_scratch")
        if scratch is None or scratch.H.shape[0] != self.num_dofs * (self.band + 1):
            scratch = self._startup_scratch = self.newton_scratch()

        def args(e0, e1):
            return ([self.data_shard(e0, e1), env_rows(self.mass, e0, e1), env_rows(self.stiffness, e0, e1),
                     env_rows(x_new, e0, e1), env_rows(v_new, e0, e1), env_rows(mask, e0, e1),
                     self.scratch_shard(scratch, e0, e1)],
                    [self.state_data([env_rows(a, e0, e1) for a in state.arrays()])])

        shards = self.shards
        if self.__dict__.get("_startup_site", (None,))[0] is not shards:
            self._startup_site = (shards, shards.site())
        shards.launch(bdf2_kernels(self.dtype, self.dim, self.num_geometries > 0).startup, args, self._startup_site[1])

    # -- environment shards (warpsim_rl/shards.py) ----------------------------------------------
    @property
    def shards(self) -> EnvShards:
        """The :class:`~warpsim_rl.shards.EnvShards` of ``threads`` (rebuilt when it changes)."""
        threads = check_threads(self.threads) or default_threads(self.device)  # None: the available cores
        shards = self.__dict__.get("_shards")
        if shards is None or shards.requested != threads:
            shards = self._shards = EnvShards(self.num_envs, threads, self.device)
        return shards

    def data_shard(self, e0: int, e1: int):
        """The ``ModelData`` of environments ``[e0, e1)``: the per-env fields (``PER_ENV_DATA``)
        as views, everything else shared; kept in step with the model like :attr:`data`."""
        if (e0, e1) == (0, self.num_envs):
            return self.data
        shards = self.__dict__.setdefault("_data_shards", {})
        shard = shards.get((e0, e1))
        if shard is None:
            shard = self._structs.ModelData()
            for name in self._structs.ModelData.vars:
                value = getattr(self, name)
                setattr(shard, name, env_rows(value, e0, e1) if name in PER_ENV_DATA else value)
            shards[(e0, e1)] = shard
        return shard

    def scratch_shard(self, scratch, e0: int, e1: int):
        """A ``NewtonScratch`` of views of environments ``[e0, e1)`` of ``scratch``."""
        if (e0, e1) == (0, self.num_envs):
            return scratch
        shard = self._structs.NewtonScratch()
        for name in self._structs.NewtonScratch.vars:
            setattr(shard, name, env_columns(getattr(scratch, name), e0, e1))
        return shard

    def newton_scratch(self):
        """A fresh ``NewtonScratch`` struct for the kernels (``kernels/data.py``): the band
        ``H`` (N (B + 1), E) and the (N, E) arrays ``g``, ``dx``, ``base``, ``y_t``, ``x_hat``, ``u``, in
        the :func:`scratch_array` layout, sized for the current ``band``."""
        N, B, E, dt, d = self.num_dofs, self.band, self.num_envs, self.dtype, self.device
        scratch = self._structs.NewtonScratch()
        scratch.H = scratch_array(N * (B + 1), E, dt, d)
        for name in ("g", "dx", "base", "y_t", "x_hat", "u"):
            setattr(scratch, name, scratch_array(N, E, dt, d))
        return scratch

    def state_data(self, arrays):
        """The kernels' ``StateData`` struct of ``arrays = (x, v, x_prev, v_prev)``, (E, n) vec
        arrays referenced, not copied; trailing ones may be left out (null arrays) where a kernel
        does not read them (of the forward outputs the derivative kernels read ``x`` and ``v``)."""
        sd = self._structs.StateData()
        for name, arr in zip(("x", "v", "x_prev", "v_prev"), arrays):
            setattr(sd, name, arr)
        return sd

    def set_masses(self, values) -> None:
        """Per-env masses of all particles: broadcastable to (E, n), kg; free particles > 0."""
        shape = (self.num_envs, self.num_particles)
        vals = _broadcast_param(values, shape, "mass")
        free = ~self.scene.is_handle
        bad = np.argwhere(~(vals[:, free] > 0))
        if bad.size:
            e, k = bad[0]
            p = int(np.flatnonzero(free)[k])
            raise SceneError(f"mass[{e}, {p}] = {float(vals[e, p])!r}: must be > 0 for a free particle")
        # free masses that underflow to 0 in float32 are as invalid as 0
        _check_cast(np.where(free, vals, 1.0), self.np_dtype, "mass", positive=True)
        self._set_param("mass", self.mass, vals, shape, positive=False)

    def _set_param(self, name, arr, values, shape, positive):
        vals = _broadcast_param(values, shape, name)
        _check_cast(vals, self.np_dtype, name, positive=positive)
        arr.assign(wp.array(np.ascontiguousarray(vals, dtype=self.np_dtype), dtype=self.dtype, device=self.device))

    # -- states and controls -------------------------------------------------------------------
    def state(self, positions=None, velocities=None, requires_grad: bool = False) -> "State":
        """A fresh :class:`State`; ``positions``/``velocities`` (E, n, dim) or (n, dim) default to
        the scene's initial values. The BDF2 history is started from the forces at that state
        (:meth:`State.reset`: ``x_prev = x - dt v + dt^2/2 a``, ``v_prev = v - dt a``, ``a = 0``
        on particles touching geometry). ``requires_grad`` allocates gradient buffers (for
        ``wp.Tape`` rollouts; gradients reach the state's four arrays, not through the start-up:
        for ``d/d(x0, v0)`` use :meth:`warpsim_rl.autodiff.TorchSimulator.initial_state` with tensors)."""
        st = State(self, requires_grad=requires_grad)
        st.reset(positions, velocities)
        return st

    def control(self, requires_grad: bool = False) -> "Control":
        return Control(self, requires_grad=requires_grad)


class State:
    """Per-step simulator state (double-buffer two of these).

    Attributes:
        x: (E, n) vec, positions at t_k (m).
        v: (E, n) vec, velocities at t_k (m/s); for handles the last commanded velocity.
        x_prev: (E, n) vec, positions at t_{k-1} (BDF2 history).
        v_prev: (E, n) vec, velocities at t_{k-1}.
    """

    def __init__(self, model: Model, requires_grad: bool = False):
        self.model = model
        shape = (model.num_envs, model.num_particles)
        self.x, self.v, self.x_prev, self.v_prev = (
            wp.zeros(shape, dtype=model.vec, device=model.device, requires_grad=requires_grad) for _ in range(4))

    def arrays(self):
        return (self.x, self.v, self.x_prev, self.v_prev)

    def reset(self, positions=None, velocities=None, env_mask=None) -> None:
        """Set positions/velocities (host data, (E, n, dim) or (n, dim)) for all envs, or for the
        envs where the boolean ``env_mask`` (E,) is true. Handles start at rest. The BDF2 history
        is started from the forces at that state (``kernels.bdf2`` ``startup``:
        ``x_prev = x - dt v + dt^2/2 a``, ``v_prev = v - dt a``, with ``a`` the acceleration of the
        spring, damping and gravity forces; ``a = 0`` on particles within half the contact width of
        a plane or box), one launch, no read-back."""
        m = self.model
        shape = (m.num_envs, m.num_particles, m.dim)
        x = _broadcast_state(positions if positions is not None else m.scene.positions, shape, "positions", m.np_dtype)
        v = _broadcast_state(velocities if velocities is not None else m.scene.velocities, shape, "velocities",
                             m.np_dtype)
        v = v.copy()
        v[:, m.scene.is_handle] = 0.0
        if env_mask is None:
            mask = np.ones(m.num_envs, dtype=np.int32)
        else:
            mask = np.asarray(env_mask, dtype=bool)
            if mask.shape != (m.num_envs,):
                raise SceneError(f"env_mask: shape {mask.shape} != ({m.num_envs},)")
            mask = mask.astype(np.int32)
        m.start_history(wp.array(x, dtype=m.vec, device=m.device), wp.array(v, dtype=m.vec, device=m.device),
                        wp.array(mask, dtype=wp.int32, device=m.device), self)

    def assign(self, other: "State") -> None:
        """Copy ``other`` into this state (device copy, no host round trip)."""
        for a, b in zip(self.arrays(), other.arrays()):
            wp.copy(a, b)

    def flat(self) -> np.ndarray:
        """Host copy of the full state vector ``s = [x, v, x_prev, v_prev]``, shape (E, 4 n dim)."""
        E = self.model.num_envs
        return np.concatenate([a.numpy().reshape(E, -1) for a in self.arrays()], axis=1)


class Control:
    """Per-step actions. ``action``: (E, h) vec — commanded handle velocities in m/s, clipped
    per axis to ``model.velocity_limit`` inside the step."""

    def __init__(self, model: Model, requires_grad: bool = False):
        self.model = model
        self.action = wp.zeros((model.num_envs, max(model.num_handles, 1)), dtype=model.vec, device=model.device,
                               requires_grad=requires_grad)


def _broadcast_param(value, shape, field) -> np.ndarray:
    """``value`` as float64 broadcast to ``shape``; SceneError naming ``field`` otherwise."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(f"{field} = {value!r}: expected numbers") from None
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise SceneError(f"{field}: shape {np.shape(value)} does not broadcast to {shape}") from None


def _check_cast(vals: np.ndarray, np_dtype, field, positive=False) -> None:
    """Raise SceneError naming the first entry of ``vals`` that is not finite (also after the
    cast to the model's ``np_dtype``, e.g. 1e39 overflows float32) or, with ``positive``, not
    > 0 (also after the cast: 1e-50 underflows float32 to 0)."""
    vals = np.asarray(vals, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        cast = vals.astype(np_dtype)
    for bad, why in ((~np.isfinite(vals), "must be finite"),
                     (~np.isfinite(cast), f"overflows {np.dtype(np_dtype).name}"),
                     ((~(vals > 0)) if positive else None, "must be > 0"),
                     ((~(cast > 0)) if positive else None, f"underflows to 0 in {np.dtype(np_dtype).name}")):
        if bad is not None and np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            at = f"{list(idx)}" if idx else ""
            raise SceneError(f"{field}{at} = {float(vals[idx])!r}: {why}")


def _broadcast_state(value, shape, field, np_dtype=np.float64) -> np.ndarray:
    arr = _broadcast_param(value, shape, field)
    _check_cast(arr, np_dtype, field)
    return np.array(arr)
