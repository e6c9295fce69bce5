"""Tasks: the PODS systems × {"stop", "stop-origin"} (PODS, Mora et al. ICML 2021, Sec. 4), and
the contact systems: ``cloth_table`` × {"stop", "place"} (PODS Fig. 5: lay a cloth on a table) and
``wall_pendulum2d`` × {"stop", "stop-origin"} (a pendulum next to a stiff wall).

A :class:`Task` is a scene plus everything that turns it into a control problem: the reward
weights of PODS Eq. 15, the horizon, the action limits, the initial-state distribution and a test
bed of 1000 initial states fixed by a seed. ``docs/envs.md`` lists every registered task and
explains each parameter choice.

Reward (PODS Eq. 15), per environment and step ``t``::

    r_t = - w_p ||p||^2 - w_x ||x||^2 - w_v ||v||^2 - w_a ||a_t||^2

* ``p`` (h, dim): handle positions relative to their *home* positions (the handle positions of
  the scene file; for the single-handle systems that is the world origin);
* ``x`` (k, dim): payload positions relative to their *target*: the static equilibrium of the
  payload hanging under the handles at home ("the origin" of "stop at origin"), or, for "place",
  the payload laid flat on the table (``contact_scenes.cloth_place_target``);
* ``v`` (k, dim): payload velocities (world frame);
* ``a`` (h, dim): the action *as executed*, i.e. the commanded handle velocities clipped per axis
  to the action limits (the simulator clips the same way, so this is what the system did).

``p``, ``x`` and ``v`` are taken from the state *after* the step (``s_{t+1}``): every term of
``r_t`` then depends on ``a_t``, and the final state of a rollout is penalised. The payload is
every free (non-handle) particle. Norms are over the stacked vectors (sums over particles); the
registered weights divide by the particle counts so that systems of different size are
comparable (see :func:`task_names` and ``docs/envs.md``).

``c = -r`` is a diagonal quadratic, so its Hessian is constant: :meth:`Task.reward_derivatives`
returns the gradients of ``r`` with respect to the full simulator state
``s = [x, v, x_prev, v_prev]`` and the action, and the constant Hessian diagonals that PODS'
Gauss-Newton step (Eq. 13-14) needs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import deque
from typing import Any

import numpy as np

from .scene import Scene, load_scene

__all__ = [
    "Weights",
    "InitialStateDistribution",
    "Task",
    "TASKS",
    "TASK_KINDS",
    "SYSTEMS",
    "CONTACT_SYSTEMS",
    "system_kinds",
    "make_task",
    "task_names",
    "reward",
    "reward_gradients",
    "equilibrium",
    "TEST_BED_SIZE",
]

TASK_KINDS = ("stop", "stop-origin", "place")
#: Every system with registered tasks: the PODS systems, then the contact systems.
SYSTEMS = ("pendulum2d", "pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth_table",
           "wall_pendulum2d")
#: The systems with frictional contact (planes, boxes; docs/contact.md).
CONTACT_SYSTEMS = ("cloth_table", "wall_pendulum2d")
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
    offset ``U(-handle_offset, handle_offset)`` per axis. Handles start at rest.
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
        name: registry name, ``<system>-<kind>``.
        scene_name: shipped scene (``scenes/<scene_name>.toml``); ``scene_params`` overrides its
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
        (:func:`warpsim_rl.contact_scenes.cloth_place_target`). Observations report payload
        positions relative to it (every kind)."""
        if self.kind == "place":
            fn = _place_target_function(self.scene.name)
            out = np.asarray(fn(self.scene, tuple(float(o) for o in self.place_offset)),
                             dtype=np.float64)[self.payload]
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
        return _sample(self, int(n), rng)

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
        E, n, d = x.shape
        p, xr, vp = self.parts(x, v)
        gp, gx, gv, ga = reward_gradients(p, xr, vp, action, self.weights)
        if layout == "full":
            c = self.constants(x.device, x.dtype)
            dx = torch.zeros_like(x)
            dx[:, c["handles"]] = gp
            dx[:, c["payload"]] = gx
            dv = torch.zeros_like(v)
            dv[:, c["payload"]] = gv
            zeros = torch.zeros(E, 2 * n * d, dtype=x.dtype, device=x.device)
            dr_ds = torch.cat([dx.reshape(E, -1), dv.reshape(E, -1), zeros], dim=1)
        else:
            zeros = torch.zeros(E, 2 * self.num_payload * d, dtype=x.dtype, device=x.device)
            dr_ds = torch.cat([gx.reshape(E, -1), gv.reshape(E, -1), zeros, gp.reshape(E, -1)], dim=1)
        return {
            "dr_ds": dr_ds,
            "dr_da": ga.reshape(E, -1),
            "d2r_ds2": torch.as_tensor(self.state_hessian_diagonal(layout), dtype=x.dtype, device=x.device),
            "d2r_da2": torch.full((self.action_dim,), -2.0 * self.weights.w_a, dtype=x.dtype, device=x.device),
        }

    def state_hessian_diagonal(self, layout: str = "full") -> np.ndarray:
        """float64 constant diagonal of ``d²r/ds²`` in ``layout`` (see :meth:`reward_derivatives`)."""
        n, d, w = self.num_particles, self.dim, self.weights
        if layout == "markov":
            kd, hd = self.num_payload * d, self.num_handles * d
            return np.concatenate([np.full(kd, -2.0 * w.w_x), np.full(kd, -2.0 * w.w_v), np.zeros(2 * kd),
                                   np.full(hd, -2.0 * w.w_p)])
        if layout != "full":
            raise ValueError(f"layout = {layout!r}: must be 'full' or 'markov'")
        hx = np.zeros((n, d))
        hx[self.handles] = -2.0 * w.w_p
        hx[self.payload] = -2.0 * w.w_x
        hv = np.zeros((n, d))
        hv[self.payload] = -2.0 * w.w_v
        return np.concatenate([hx.ravel(), hv.ravel(), np.zeros(2 * n * d)])

    def clip_mask(self, action):
        """1 where a commanded action (E, h*dim) lies strictly inside the limits, else 0:
        the derivative of the per-axis clip."""
        lim = self.constants(action.device, action.dtype)["limit"].reshape(-1)
        return (action.reshape(action.shape[0], -1).abs() < lim).to(action.dtype)


# ------------------------------------------------------------------------------------------------
# Reward on parts (torch)
# ------------------------------------------------------------------------------------------------

def _sq(t):
    return t.reshape(t.shape[0], -1).square().sum(dim=1)


def reward(p, x, v, a, weights: Weights):
    """PODS Eq. 15: ``-w_p|p|² - w_x|x|² - w_v|v|² - w_a|a|²`` per env (E,), for torch tensors
    with a leading env dimension (any trailing shape): handle positions relative to home ``p``,
    payload positions relative to target ``x``, payload velocities ``v``, executed actions ``a``."""
    w = weights
    return -(w.w_p * _sq(p) + w.w_x * _sq(x) + w.w_v * _sq(v) + w.w_a * _sq(a))


def reward_gradients(p, x, v, a, weights: Weights):
    """Gradients of :func:`reward` w.r.t. ``(p, x, v, a)``, shaped like them: ``-2 w ·``."""
    w = weights
    return -2.0 * w.w_p * p, -2.0 * w.w_x * x, -2.0 * w.w_v * v, -2.0 * w.w_a * a


# ------------------------------------------------------------------------------------------------
# Static equilibrium (host, float64)
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# Initial-state sampling (host, float64, vectorised over samples)
# ------------------------------------------------------------------------------------------------

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


def _sample(task: Task, n: int, rng: np.random.Generator):
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


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------

#: Per-system settings (see docs/envs.md for the reasoning behind every number).
_SYSTEM_SETTINGS = {
    # system: (description, horizon, swing, bend, angular speed (min, max) rad/s)
    "pendulum2d": ("2D simple pendulum: 1 kg bob, 1 m stiff spring, planar handle",
                   100, 0.6, 0.0, (0.5, 1.5)),
    "pendulum3d": ("3D (spherical) pendulum: 1 kg bob, 1 m stiff spring, 3D handle",
                   100, 0.6, 0.0, (0.5, 1.5)),
    "double_pendulum3d": ("3D double pendulum: two 0.5 kg bobs on stiff 0.5 m springs",
                          100, 0.5, 0.5, (0.5, 1.5)),
    "cable_payload2d": ("2D 1 kg payload hung from two handles by stiff cables",
                        100, 0.4, 0.0, (0.5, 1.5)),
    "rope3d": ("3D rope: 10 × 0.05 kg masses on 0.1 m cable segments below a handle",
               100, 0.4, 0.15, (0.5, 1.5)),
    "cloth_table": ("3D cloth: 7 × 4 particles (0.1 kg, cable springs) held at two corners above a "
                    "table, frictional contact", 150, 0.3, 0.0, (0.25, 0.75)),
    "wall_pendulum2d": ("2D pendulum (pendulum2d) next to a stiff wall at x = 0.4 m (penalty contact)",
                        100, 0.35, 0.0, (0.5, 2.0)),
}
#: Task kinds per system (default: "stop" and "stop-origin").
_SYSTEM_KINDS = {"cloth_table": ("stop", "place")}
#: Initial-state swing mode per system (default "handle", see InitialStateDistribution).
_SYSTEM_SWING = {"cloth_table": "handle_line"}
#: Offsets (m, per axis) of the initial states, per system and kind (default: 0 for "stop",
#: _STOP_ORIGIN_OFFSET for "stop-origin"). The wall does not move with the offset, so the
#: wall pendulum's stays small enough that no state starts in the wall.
_SYSTEM_OFFSETS = {"wall_pendulum2d": {"stop-origin": 0.05}, "cloth_table": {"place": 0.05}}
#: Weights per kind before normalisation: (w_p per handle, w_x per payload particle, w_v per
#: payload particle); w_a = _ACTION_WEIGHT per handle for every kind.
_KIND_WEIGHTS = {"stop": (0.0, 0.0, 1.0), "stop-origin": (1.0, 1.0, 1.0), "place": (0.0, 1.0, 0.1)}
_KIND_GOALS = {"stop": ": bring the swinging payload to rest",
               "stop-origin": ": bring the payload to rest at the origin",
               "place": ": lay the cloth flat on the table at the target"}
_ACTION_WEIGHT = 0.01      # w_a per handle
_STOP_ORIGIN_OFFSET = 0.5  # m, per axis
_TEST_BED_SEEDS = {name: 1000 + 17 * i for i, name in enumerate(SYSTEMS)}


def _place_target_function(scene_name: str):
    """The function ``(scene, (dx, dz)) -> (n, dim)`` giving the "place" target of a scene."""
    from .contact_scenes import cloth_place_target

    targets = {"cloth_table": cloth_place_target}
    if scene_name not in targets:
        raise ValueError(f"kind 'place' needs a place target; scene {scene_name!r} has none "
                         f"(scenes with one: {sorted(targets)})")
    return targets[scene_name]


def system_kinds(system: str) -> tuple[str, ...]:
    """The task kinds registered for ``system`` (``("stop", "stop-origin")`` for most)."""
    if system not in _SYSTEM_SETTINGS:
        raise ValueError(f"unknown system {system!r}; known systems: {list(SYSTEMS)}")
    return _SYSTEM_KINDS.get(system, ("stop", "stop-origin"))


def _build_registry() -> dict[str, Task]:
    tasks = {}
    for system in SYSTEMS:
        desc, horizon, swing, bend, speed = _SYSTEM_SETTINGS[system]
        sc = load_scene(system)
        sc_h, sc_k = sc.num_handles, len(sc.free_particles)  # weights per handle / payload particle
        for kind in system_kinds(system):
            wp_, wx_, wv_ = _KIND_WEIGHTS[kind]
            w = Weights(w_p=wp_ / sc_h, w_x=wx_ / sc_k, w_v=wv_ / sc_k, w_a=_ACTION_WEIGHT / sc_h)
            offset = _SYSTEM_OFFSETS.get(system, {}).get(kind, _STOP_ORIGIN_OFFSET if kind == "stop-origin" else 0.0)
            name = f"{system}-{kind}"
            tasks[name] = Task(
                name=name, scene_name=system, kind=kind, weights=w, horizon=horizon,
                init=InitialStateDistribution(swing, bend, speed, offset, _SYSTEM_SWING.get(system, "handle")),
                test_bed_seed=_TEST_BED_SEEDS[system] + TASK_KINDS.index(kind),
                description=desc + _KIND_GOALS[kind])
    return tasks


#: All registered tasks by name, ``<system>-<kind>`` (:func:`system_kinds`).
TASKS: dict[str, Task] = _build_registry()


def task_names() -> list[str]:
    """Names of the registered tasks."""
    return list(TASKS)


def make_task(name: str | Task, **overrides) -> Task:
    """The registered task ``name``; keyword arguments replace fields (e.g. ``horizon=50``).
    An unknown name raises ``ValueError`` listing the known ones."""
    if isinstance(name, Task):
        task = name
    else:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; known tasks: {task_names()}")
        task = TASKS[name]
    if overrides:
        known = {f.name for f in dataclasses.fields(Task)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"make_task: unknown Task field(s) {bad} (known: {sorted(known)})")
        task = dataclasses.replace(task, **overrides)
    return task
