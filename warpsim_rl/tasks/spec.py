"""The task specification: :class:`Task` (a scene plus reward weights, horizon, action limits,
initial-state distribution and test bed), :class:`Weights` (PODS Eq. 15) and
:class:`InitialStateDistribution` (see the package doc, :mod:`warpsim_rl.tasks`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from ..scene import Scene, load_scene
from .equilibria import equilibrium
from .place import place_target
from .rewards import reward, reward_gradients
from .sampling import sample_states

__all__ = ["Weights", "InitialStateDistribution", "Task", "TASK_KINDS", "SWING_MODES", "TEST_BED_SIZE"]

TASK_KINDS = ("stop", "stop-origin", "place")
#: Swing modes of :class:`InitialStateDistribution`.
SWING_MODES = ("handle", "handle_line")
TEST_BED_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Weights:
    """Reward weights of PODS Eq. 15 (all >= 0; the reward is minus the weighted squares)."""

    w_p: float
    w_x: float
    w_v: float
    w_a: float

    def __post_init__(self):
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
                raise ValueError(f"Weights.{f.name} = {val!r}: must be a finite number >= 0")


@dataclasses.dataclass(frozen=True)
class InitialStateDistribution:
    """Initial states: the payload's rest configuration, swung about the handle and set moving.

    Single-handle systems (pendulums, rope): the whole rest configuration is tilted about the
    handle by an angle ``U(-swing_angle, swing_angle)`` (2D: in the plane; 3D: about a uniformly
    random horizontal axis); every segment of the spring tree is further rotated relative to its
    parent by ``U(-bend_angle, bend_angle)`` (3D: about a uniformly random axis). Segment lengths
    are kept at their equilibrium values, so no spring starts violently stretched. The system then
    rotates rigidly about the handle with angular speed ``U(*angular_speed)`` (2D: random sign;
    3D: about a uniformly random horizontal axis).

    Several handles (``cable_payload2d``): the payload is swung about one randomly chosen handle
    by ``U(0, swing_angle)``, in the direction that slackens the other cables (never stretches
    them), and set rotating about that handle with angular speed ``U(*angular_speed)``, random sign.

    ``swing_about="handle_line"`` (3D, several handles on one line: ``cloth_table``): the whole
    payload is tilted rigidly about the line through the handles by ``U(-swing_angle, swing_angle)``
    and set rotating about it with angular speed ``U(*angular_speed)``, random sign. The handles
    lie on the axis, so every spring keeps its length (swinging about one handle would stretch the
    springs to the other one).

    ``handle_offset`` > 0 ("stop-origin", "place") then shifts the whole system, handles included, by an
    offset ``U(-handle_offset, handle_offset)`` per axis, except along an axis that every handle has
    locked (action limit 0: the handles could not move back; no shipped task locks an axis).
    Handles start at rest.
    """

    swing_angle: float
    bend_angle: float
    angular_speed: tuple[float, float]
    handle_offset: float = 0.0
    swing_about: str = "handle"

    def __post_init__(self):
        if self.swing_about not in SWING_MODES:
            raise ValueError(f"InitialStateDistribution.swing_about = {self.swing_about!r}: must be one of "
                             f"{list(SWING_MODES)}")
        for name in ("swing_angle", "bend_angle", "handle_offset"):
            val = getattr(self, name)
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
                raise ValueError(f"InitialStateDistribution.{name} = {val!r}: must be a finite number >= 0")
        lo, hi = self.angular_speed
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(f"InitialStateDistribution.angular_speed = {self.angular_speed!r}: "
                             "expected (min, max) with 0 <= min <= max")


@dataclasses.dataclass(frozen=True)
class Task:
    """One control task. Immutable; derive variants with :func:`dataclasses.replace` or
    ``make_task(name, horizon=50)``.

    Attributes:
        name: registry name, ``<system>-<kind>``, or ``<path>.toml:<kind>`` for a task on a scene
            file (:func:`~warpsim_rl.tasks.registry.custom_task`).
        scene_name: shipped scene (``scenes/<scene_name>.toml``) or the path of a scene file
            (:func:`~warpsim_rl.scene.load_scene` takes either); ``scene_params`` overrides its
            ``[parameters]`` as ``((name, value), ...)``.
        kind: ``"stop"``, ``"stop-origin"`` or ``"place"`` (``TASK_KINDS``).
        weights: :class:`Weights` of Eq. 15.
        horizon: episode length in steps (the episode is truncated after it).
        init: :class:`InitialStateDistribution`.
        test_bed_seed: seed of the fixed test bed (:meth:`test_bed`).
        action_limit: per-handle, per-axis limit on the commanded handle velocity in m/s,
            ``((lx, ly[, lz]), ...)``; ``None`` takes the scene's ``velocity_limit``.
        test_bed_size: number of test-bed states.
        description: one line.
        place_offset: ``(dx, dz)`` in m, shift of the "place" target on the table (kind "place"
            only; see :attr:`target`).
    """

    name: str
    scene_name: str
    kind: str
    weights: Weights
    horizon: int
    init: InitialStateDistribution
    test_bed_seed: int
    scene_params: tuple[tuple[str, Any], ...] = ()
    action_limit: tuple[tuple[float, ...], ...] | None = None
    test_bed_size: int = TEST_BED_SIZE
    description: str = ""
    place_offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"Task.kind = {self.kind!r}: must be one of {list(TASK_KINDS)}")
        off = tuple(self.place_offset)
        if len(off) != 2 or not all(isinstance(o, (int, float)) and math.isfinite(o) for o in off):
            raise ValueError(f"Task.place_offset = {self.place_offset!r}: expected (dx, dz), finite, in m")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"Task.horizon = {self.horizon!r}: must be an integer >= 1")
        if isinstance(self.test_bed_size, bool) or not isinstance(self.test_bed_size, int) or self.test_bed_size < 1:
            raise ValueError(f"Task.test_bed_size = {self.test_bed_size!r}: must be an integer >= 1")

    # -- the system ------------------------------------------------------------------------------
    @functools.cached_property
    def scene(self) -> Scene:
        """The :class:`~warpsim_rl.scene.Scene` (loaded once per task object)."""
        return load_scene(self.scene_name, **dict(self.scene_params))

    @functools.cached_property
    def layout(self):
        """The :class:`~warpsim_rl.layout.StateLayout` of the scene (full, Markov, observation)."""
        from ..layout import StateLayout

        return StateLayout(self.scene)

    @property
    def dim(self) -> int:
        return self.scene.dim

    @property
    def dt(self) -> float:
        return float(self.scene.dt)

    @property
    def num_particles(self) -> int:
        return self.scene.num_particles

    @property
    def handles(self) -> np.ndarray:
        """(h,) particle indices of the handles, in action order."""
        return self.scene.handles.astype(np.int64)

    @property
    def payload(self) -> np.ndarray:
        """(k,) particle indices of the payload: every free particle."""
        return self.scene.free_particles.astype(np.int64)

    @property
    def num_handles(self) -> int:
        return int(self.scene.num_handles)

    @property
    def num_payload(self) -> int:
        return int(self.payload.shape[0])

    @property
    def action_dim(self) -> int:
        """Flat action size ``h * dim``."""
        return self.num_handles * self.dim

    @property
    def obs_dim(self) -> int:
        """Flat observation size ``h * dim + 2 * k * dim``."""
        return (self.num_handles + 2 * self.num_payload) * self.dim

    @property
    def state_dim(self) -> int:
        """Size of the full simulator state ``s = [x, v, x_prev, v_prev]``: ``4 * n * dim``."""
        return 4 * self.num_particles * self.dim

    @property
    def observation_layout(self) -> dict[str, slice]:
        """Slices of the flat observation: ``handle_pos`` (h*dim, relative to home),
        ``payload_pos`` (k*dim, relative to target), ``payload_vel`` (k*dim)."""
        hd, kd = self.num_handles * self.dim, self.num_payload * self.dim
        return {"handle_pos": slice(0, hd), "payload_pos": slice(hd, hd + kd),
                "payload_vel": slice(hd + kd, hd + 2 * kd)}

    @functools.cached_property
    def action_limits(self) -> np.ndarray:
        """(h, dim) float64 per-axis action limits in m/s."""
        sc = self.scene
        if self.action_limit is None:
            lim = np.array(sc.velocity_limit, dtype=np.float64).reshape(sc.num_handles, sc.dim)
        else:
            lim = np.array(self.action_limit, dtype=np.float64)
            if lim.shape != (sc.num_handles, sc.dim) or not np.all(np.isfinite(lim)) or np.any(lim < 0):
                raise ValueError(f"{self.name}: action_limit = {self.action_limit!r}: expected "
                                 f"{sc.num_handles} handle(s) × {sc.dim} finite values >= 0")
        lim.setflags(write=False)
        return lim

    @functools.cached_property
    def home(self) -> np.ndarray:
        """(h, dim) home positions of the handles (their scene positions)."""
        out = self.scene.positions[self.scene.handles].astype(np.float64)
        out.setflags(write=False)
        return out

    @functools.cached_property
    def rest_positions(self) -> np.ndarray:
        """(n, dim) static equilibrium of the whole system with the handles at home."""
        out = equilibrium(self.scene, self.home)
        out.setflags(write=False)
        return out

    @functools.cached_property
    def target(self) -> np.ndarray:
        """(k, dim) payload target positions. "stop", "stop-origin": the payload's rest positions
        under the handles at home (only "stop-origin" rewards reaching them, ``w_x > 0``).
        "place": the payload laid flat on the table, shifted by :attr:`place_offset`
        (:func:`warpsim_rl.tasks.place.cloth_place_target`). Observations report payload
        positions relative to it (every kind)."""
        if self.kind == "place":
            offset = tuple(float(o) for o in self.place_offset)
            out = np.asarray(place_target(self.scene, offset), dtype=np.float64)[self.payload]
        else:
            out = np.asarray(self.rest_positions)[self.payload]
        out.setflags(write=False)
        return out

    # -- initial states --------------------------------------------------------------------------
    def sample_initial_states(self, n: int, seed=None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` initial states ``(positions, velocities)``, float64 arrays (n, particles, dim),
        drawn from :attr:`init` with ``seed`` (an int, a ``numpy.random.Generator`` or ``None``).
        Deterministic for a given integer seed on every platform (numpy PCG64 on the host)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n = {n!r}: must be an integer >= 0")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return sample_states(self, int(n), rng)

    def test_bed(self) -> tuple[np.ndarray, np.ndarray]:
        """The task's fixed test bed: :attr:`test_bed_size` (1000) initial states from
        :attr:`test_bed_seed`; identical across runs, machines and devices (host numpy)."""
        pos, vel = self._test_bed
        return pos.copy(), vel.copy()

    @functools.cached_property
    def _test_bed(self):
        return self.sample_initial_states(self.test_bed_size, np.random.default_rng(self.test_bed_seed))

    # -- observation and reward (torch) ----------------------------------------------------------
    def constants(self, device=None, dtype=None) -> dict:
        """Torch constants on ``device``/``dtype``: ``home`` (h, dim), ``target`` (k, dim),
        ``limit`` (h, dim), ``handles`` (h,) and ``payload`` (k,) index tensors. Cached."""
        import torch

        key = (str(torch.device(device) if device is not None else torch.device("cpu")), str(dtype))
        cache = self.__dict__.setdefault("_torch_constants", {})
        if key not in cache:
            dt = dtype if dtype is not None else torch.float32
            cache[key] = {
                "home": torch.tensor(np.array(self.home), dtype=dt, device=device),
                "target": torch.tensor(np.array(self.target), dtype=dt, device=device),
                "limit": torch.tensor(np.array(self.action_limits), dtype=dt, device=device),
                "handles": torch.tensor(self.handles, dtype=torch.long, device=device),
                "payload": torch.tensor(self.payload, dtype=torch.long, device=device),
            }
        return cache[key]

    def parts(self, x, v):
        """``(p, x_rel, v_payload)`` from full positions/velocities (E, n, dim) (torch)."""
        c = self.constants(x.device, x.dtype)
        p = x.index_select(1, c["handles"]) - c["home"]
        xr = x.index_select(1, c["payload"]) - c["target"]
        vp = v.index_select(1, c["payload"])
        return p, xr, vp

    def observation(self, x, v):
        """Flat observation (E, obs_dim) from full positions/velocities (E, n, dim):
        ``[handle positions - home (h*dim), payload positions - target (k*dim),
        payload velocities (k*dim)]``."""
        import torch

        p, xr, vp = self.parts(x, v)
        return torch.cat([p.flatten(1), xr.flatten(1), vp.flatten(1)], dim=1)

    def split_observation(self, obs):
        """``(p, x_rel, v_payload)`` as (E, h, dim), (E, k, dim), (E, k, dim) views of ``obs``."""
        lay, d = self.observation_layout, self.dim
        E = obs.shape[0]
        return (obs[:, lay["handle_pos"]].reshape(E, -1, d), obs[:, lay["payload_pos"]].reshape(E, -1, d),
                obs[:, lay["payload_vel"]].reshape(E, -1, d))

    def clip_action(self, action):
        """Clip actions (E, h, dim) or (E, h*dim) per axis to the limits (torch)."""
        import torch

        lim = self.constants(action.device, action.dtype)["limit"]
        shaped = action.reshape(action.shape[0], self.num_handles, self.dim)
        return torch.clamp(shaped, -lim, lim).reshape(action.shape)

    def reward(self, x, v, action):
        """PODS Eq. 15 reward (E,) from the state after the step — full positions and
        velocities (E, n, dim) — and the executed action (E, h, dim) or (E, h*dim)."""
        p, xr, vp = self.parts(x, v)
        return reward(p, xr, vp, action, self.weights)

    def reward_from_observation(self, obs, action):
        """The same reward from a flat observation (E, obs_dim)."""
        p, xr, vp = self.split_observation(obs)
        return reward(p, xr, vp, action, self.weights)

    def reward_derivatives(self, x, v, action, layout: str = "full") -> dict:
        """Analytic derivatives of :meth:`reward` (torch, same device/dtype as ``x``).

        ``layout="full"`` (default): the full simulator state ``s = [x, v, x_prev, v_prev]``,
        flattened per env as the four (E, n, dim) blocks, each row-major, concatenated in that
        order (the layout of :meth:`warpsim_rl.State.flat`; handles included), size ``4 n dim``.
        ``layout="markov"``: the Markov state of ``warpsim_rl.autodiff.TorchSimulator.jacobians``,
        ``s = [x_f, v_f, x_prev_f, v_prev_f, x_h]`` (free particles = payload, then handle
        positions), size ``4 k dim + h dim``, so that the Gauss-Newton matrix
        ``J^T C_ss J + C_aa`` can be formed from those Jacobians directly. Returns:

        * ``dr_ds`` (E, state size): gradient w.r.t. ``s`` (zero on ``x_prev``, ``v_prev`` and
          handle velocities);
        * ``dr_da`` (E, h*dim): gradient w.r.t. the executed action, ``-2 w_a a``;
        * ``d2r_ds2`` (state size,): the constant diagonal of the (diagonal) Hessian w.r.t. ``s``:
          ``-2 w_p`` on handle positions, ``-2 w_x`` on payload positions, ``-2 w_v`` on payload
          velocities, 0 elsewhere;
        * ``d2r_da2`` (h*dim,): ``-2 w_a``.

        The cost ``c = -r`` has the negated (positive semi-definite) values. For a *commanded*
        action outside the limits, chain with the clip: its derivative is 1 inside the box and 0
        outside (:meth:`clip_mask`).
        """
        import torch

        if layout not in ("full", "markov"):
            raise ValueError(f"layout = {layout!r}: must be 'full' or 'markov'")
        E = x.shape[0]
        p, xr, vp = self.parts(x, v)
        gp, gx, gv, ga = reward_gradients(p, xr, vp, action, self.weights)
        return {
            "dr_ds": self.layout.from_xv(gx, gv, gp, layout),
            "dr_da": ga.reshape(E, -1),
            "d2r_ds2": torch.as_tensor(self.state_hessian_diagonal(layout), dtype=x.dtype, device=x.device),
            "d2r_da2": torch.full((self.action_dim,), -2.0 * self.weights.w_a, dtype=x.dtype, device=x.device),
        }

    def state_hessian_diagonal(self, layout: str = "full") -> np.ndarray:
        """float64 constant diagonal of ``d²r/ds²`` in ``layout`` (see :meth:`reward_derivatives`)."""
        w = self.weights
        return self.layout.diagonal_from_xv(-2.0 * w.w_x, -2.0 * w.w_v, -2.0 * w.w_p, layout)

    def clip_mask(self, action):
        """1 where a commanded action (E, h*dim) lies strictly inside the limits, else 0:
        the derivative of the per-axis clip."""
        lim = self.constants(action.device, action.dtype)["limit"].reshape(-1)
        return (action.reshape(action.shape[0], -1).abs() < lim).to(action.dtype)


