"""Anchor benchmark against NVIDIA Newton: ``python -m warpsim_rl.bench anchor``.

The same mass-spring problems are simulated by warpsim_rl (implicit BDF2, Newton's method) and by
Newton's explicit ``SolverSemiImplicit`` (symplectic Euler substeps), and both are compared with a
tight reference, scipy's DOP853 at ``rtol = atol = 1e-12`` on the same ODE (same masses, springs,
gravity; no damping anywhere):

* ``rope_k1e4`` / ``rope_k1e5``: a 1 m, 1 kg rope of 20 free points (0.05 kg each) below a fixed
  top point, joined by 20 bilateral springs of k = 1e4 / 1e5 N/m at their rest length, released at
  rest at 30 degrees from the vertical;
* ``pendulum``: a 1 kg bob on a 1 m spring of k = 1e4 N/m below a fixed point, released at rest at
  30 degrees;
* (not in the default run) ``rope_k1e4_prestretched``, ``pendulum_prestretched``: the same with
  the springs stretched at the start to the tension that holds the weight below them along the
  chain, so that the release barely excites the stiff stretch modes (``Chain.prestretch``).

Everything is 3D (Newton is), y up, g = 9.81 m/s². Per engine and time step ``dt`` of a sweep:

* ``traj_err_m``: the largest distance between a particle and its reference position, over all
  particles and all sample times (every ``SAMPLE_INTERVAL`` = 0.01 s of ``duration``; every
  ``dt`` for the steps longer than that), in m; ``err_1s_m``: the same at t = 1 s only. From a
  one-world run.
* ``sim_s_per_s``: the throughput, **world-seconds of simulated time per wall second**:
  ``worlds x simulated seconds / wall seconds`` of a timed run of ``worlds`` identical worlds
  started from that engine's own state at t = duration / 2 (median of ``repeats`` passes, each
  long enough to take about ``min_time_s``). ``env_steps_per_s = sim_s_per_s / dt`` (Newton: a
  step is one substep).

The throughput at equal accuracy (:func:`rate_at_accuracy`) is read off each engine's sweep for
the error levels 1e-2, 1e-3, 1e-4 m by log-log interpolation between the two swept ``dt`` whose
errors bracket the level, or is the rate of the fastest ``dt`` meeting it when every swept ``dt``
does (a lower bound, marked ``>=``); it is ``None`` when none does.

One CPU thread for both: warpsim_rl's model is built with ``threads=1``; Newton launches each
kernel once per substep, which Warp's CPU backend runs on one core. Newton runs in float32 only;
``dtype`` applies to warpsim_rl. Newton is optional (``pip install .[anchor]``); without it only
the warpsim_rl and reference columns are filled.

:func:`gradients` compares the gradient of a rollout loss with respect to every action (the top
point's commanded velocity) through both engines: warpsim_rl's implicit adjoints
(``TorchSimulator``) and Newton's ``wp.Tape`` through its substeps, against central differences
of the reference; each measurement runs in a fresh process, so that its peak memory is its own.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import warp as wp

from ..scene import Scene, SceneBuilder
from .common import git_revision, machine_info, progress_bar

__all__ = ["Chain", "PROBLEMS", "DEFAULT_PROBLEMS", "VARIANTS", "LEVELS", "SAMPLE_INTERVAL", "GRADIENT_SUBSTEPS",
           "GRADIENT_LEVELS", "chain", "chain_forces", "chain_energy", "reference_trajectory", "reference_driven",
           "trajectory_errors", "rate_at_accuracy", "warpsim_scene", "newton_available", "newton_model",
           "smooth_actions", "warpsim_gradient", "newton_gradient", "gradients", "anchor", "markdown_table",
           "gradients_markdown"]

SAMPLE_INTERVAL = 0.01  # s between the sample times at which trajectories are compared
LEVELS = (1e-2, 1e-3, 1e-4)  # m: error levels of the equal-accuracy comparison
GRAVITY = 9.81  # m/s², along -y


@dataclasses.dataclass(frozen=True)
class Chain:
    """A chain of ``points`` free particles below a fixed point (particle 0 at the origin), joined
    by ``points`` bilateral springs at their rest length, straight and at rest at ``angle_deg``
    from the vertical (in the x-y plane, y up).

    Attributes:
        name: problem name.
        points: free particles (>= 1); 1 is a pendulum.
        mass: total mass of the free particles in kg (``mass / points`` each).
        length: chain length in m (``length / points`` per spring).
        stiffness: k of every spring in N/m.
        angle_deg: initial angle from the downward vertical in degrees.
        worlds: worlds of the timed runs (the default of the benchmark).
        warpsim_dts: the time steps (s) of warpsim_rl's default sweep, coarsest first.
        newton_dts: the substeps (s) of Newton's default sweep, coarsest first.
        prestretch: start each spring stretched to the tension that holds the weight below it
            along the chain (``g cos(angle)`` times that mass), instead of at its rest length:
            the release then barely excites the stiff stretch modes, which otherwise ring,
            undamped, through the whole reference trajectory.
    """

    name: str
    points: int
    mass: float
    length: float
    stiffness: float
    angle_deg: float
    worlds: int
    warpsim_dts: tuple[float, ...]
    newton_dts: tuple[float, ...]
    prestretch: bool = False

    def __post_init__(self):
        if int(self.points) != self.points or self.points < 1:
            raise ValueError(f"Chain.points = {self.points!r}: must be an integer >= 1")
        for field in ("mass", "length", "stiffness"):
            if not getattr(self, field) > 0.0:
                raise ValueError(f"Chain.{field} = {getattr(self, field)!r}: must be > 0")

    @property
    def positions(self) -> np.ndarray:
        """(points + 1, 3) initial positions in m; row 0 is the fixed point."""
        a = math.radians(self.angle_deg)
        seg = np.full(self.points, self.rest_length)
        if self.prestretch:
            below = (self.points - np.arange(self.points)) * (self.mass / self.points)  # kg below spring i
            seg = seg + GRAVITY * math.cos(a) * below / self.stiffness
        s = np.concatenate([[0.0], np.cumsum(seg)])
        return np.stack([s * math.sin(a), -s * math.cos(a), np.zeros_like(s)], axis=1)

    @property
    def masses(self) -> np.ndarray:
        """(points + 1,) masses in kg; 0 for the fixed point."""
        m = np.full(self.points + 1, self.mass / self.points)
        m[0] = 0.0
        return m

    @property
    def springs(self) -> np.ndarray:
        """(points, 2) particle indices of the springs, top first."""
        i = np.arange(self.points)
        return np.stack([i, i + 1], axis=1)

    @property
    def rest_length(self) -> float:
        """Rest length of every spring in m."""
        return self.length / self.points


def chain(name: str, points: int, stiffness: float, worlds: int, warpsim_dts, newton_dts,
          prestretch: bool = False) -> Chain:
    """A 1 kg, 1 m chain of the benchmark released at 30 degrees."""
    return Chain(name, points, 1.0, 1.0, stiffness, 30.0, worlds, tuple(warpsim_dts), tuple(newton_dts), prestretch)


# Every swept dt is 0.01 s times or divided by an integer. Symplectic Euler is stable below
# dt = 2 / omega_max: 2.2 ms on the k = 1e4 rope, 0.71 ms on the k = 1e5 rope, 20 ms on the
# pendulum, so Newton's coarsest dt here are the largest stable ones on that grid.
_WARPSIM_DTS = (0.05, 0.02, 0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)
PROBLEMS = {
    "rope_k1e4": chain("rope_k1e4", 20, 1e4, 1024, _WARPSIM_DTS, (2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5)),
    "rope_k1e5": chain("rope_k1e5", 20, 1e5, 1024, _WARPSIM_DTS, (0.01 / 15, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5)),
    "pendulum": chain("pendulum", 1, 1e4, 4096, _WARPSIM_DTS, (0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5)),
}
# Not in the default run: the same chains released with their springs prestretched (Chain.prestretch).
VARIANTS = {
    "rope_k1e4_prestretched": dataclasses.replace(PROBLEMS["rope_k1e4"], name="rope_k1e4_prestretched",
                                                  prestretch=True),
    "pendulum_prestretched": dataclasses.replace(PROBLEMS["pendulum"], name="pendulum_prestretched", prestretch=True),
}
DEFAULT_PROBLEMS = tuple(PROBLEMS)
PROBLEMS.update(VARIANTS)


# -- the reference ---------------------------------------------------------------------------------
def _incidence(problem: Chain) -> np.ndarray:
    """(springs, particles) matrix D with the stretch vector of spring s = (D x)[s] = x_j - x_i."""
    D = np.zeros((problem.points, problem.points + 1))
    s = np.arange(problem.points)
    D[s, problem.springs[:, 0]] = -1.0
    D[s, problem.springs[:, 1]] = 1.0
    return D


def chain_forces(problem: Chain, x: np.ndarray) -> np.ndarray:
    """(points + 1, 3) spring forces in N on the particles at positions ``x`` (points + 1, 3) m."""
    D = _incidence(problem)
    d = D @ x
    length = np.linalg.norm(d, axis=1, keepdims=True)
    tension = problem.stiffness * (length - problem.rest_length) / length * d
    return -D.T @ tension


def chain_energy(problem: Chain, x: np.ndarray, v: np.ndarray) -> float:
    """Total energy in J (kinetic + spring + gravity) at positions/velocities (points + 1, 3)."""
    m = problem.masses
    length = np.linalg.norm(_incidence(problem) @ x, axis=1)
    kinetic = 0.5 * (m * (v ** 2).sum(1)).sum()
    elastic = 0.5 * problem.stiffness * ((length - problem.rest_length) ** 2).sum()
    return float(kinetic + elastic + GRAVITY * (m * x[:, 1]).sum())


def _chain_rhs(problem: Chain, top0: np.ndarray, top_velocity: np.ndarray) -> Callable:
    """The ODE right-hand side ``f(t, y)`` of the free particles, ``y = [x (3 n), v (3 n)]`` in m
    and m/s, with the top point at ``top0 + top_velocity t`` (m, m/s)."""
    D = _incidence(problem)
    Df, Dt = D[:, 1:], D[:, :1]
    inv_m = 1.0 / problem.masses[1:, None]
    k, L, n = problem.stiffness, problem.rest_length, problem.points
    g = np.array([0.0, -GRAVITY, 0.0])
    top0, top_velocity = np.asarray(top0, dtype=float), np.asarray(top_velocity, dtype=float)

    def rhs(t, y):
        x, v = y[:3 * n].reshape(n, 3), y[3 * n:]
        d = Df @ x + Dt @ (top0 + top_velocity * t)[None]
        length = np.sqrt((d * d).sum(1, keepdims=True))
        acc = -(Df.T @ (k * (1.0 - L / length) * d)) * inv_m + g
        return np.concatenate([v, acc.ravel()])

    return rhs


def reference_trajectory(problem: Chain, times: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """(len(times), points + 1, 3) positions in m at ``times`` (s, increasing, from 0) of the
    exact ODE, integrated by scipy's DOP853 at ``rtol`` and ``atol = rtol`` (m, m/s)."""
    from scipy.integrate import solve_ivp

    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or len(times) == 0 or times[0] < 0.0 or np.any(np.diff(times) <= 0.0):
        raise ValueError("times: a non-empty increasing 1-D array from t >= 0 expected")
    n = problem.points
    rhs = _chain_rhs(problem, problem.positions[0], np.zeros(3))
    y0 = np.concatenate([problem.positions[1:].ravel(), np.zeros(3 * n)])
    sol = solve_ivp(rhs, (0.0, float(times[-1])), y0, method="DOP853", t_eval=times, rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"reference of {problem.name}: {sol.message}")
    x = sol.y[:3 * n].T.reshape(len(times), n, 3)
    fixed = np.broadcast_to(problem.positions[:1], (len(times), 1, 3))
    return np.concatenate([fixed, x], axis=1)


def trajectory_errors(traj: np.ndarray, ref: np.ndarray, times: np.ndarray, at: float = 1.0) -> dict:
    """``{"traj_err_m", "err_1s_m"}``: the largest particle distance (m) between ``traj`` and
    ``ref`` (both (S, n, 3) at ``times`` (S,) s) over all particles and times, and at the sample
    time ``at`` (``None`` when ``at`` is not one of ``times``). Non-finite positions give inf."""
    if traj.shape != ref.shape or traj.shape[0] != len(times):
        raise ValueError(f"trajectory {traj.shape}, reference {ref.shape} and {len(times)} times disagree")
    dist = np.linalg.norm(traj.astype(np.float64) - ref, axis=2).max(axis=1)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    hit = np.flatnonzero(np.isclose(times, at, rtol=0.0, atol=1e-9))
    return {"traj_err_m": float(dist.max()), "err_1s_m": float(dist[hit[0]]) if len(hit) else None}


def rate_at_accuracy(points: list[tuple[float, float]], level: float) -> dict | None:
    """The throughput at error ``level`` from a sweep's ``points`` ``[(error, rate), ...]``.

    Among the points meeting the level (``error <= level``), the fastest is taken; if a faster
    point misses the level, the rate is interpolated linearly in (log error, log rate) between that
    fastest meeting point and the slowest of the faster missing ones: ``{"rate", "how":
    "interpolated"}``. If no faster point misses the level, the fastest meeting rate is a lower
    bound: ``"how": "bound"``. ``None`` when no point meets the level."""
    if not level > 0.0:
        raise ValueError(f"level = {level!r}: must be > 0")
    pts = [(float(e), float(r)) for e, r in points if r > 0.0 and not math.isnan(e)]
    meeting = [p for p in pts if p[0] <= level]
    if not meeting:
        return None
    e0, r0 = max(meeting, key=lambda p: p[1])
    missing = [p for p in pts if p[0] > level and p[1] > r0]
    if not missing:
        return {"rate": r0, "how": "bound"}
    e1, r1 = min(missing, key=lambda p: p[1])
    if not math.isfinite(e1) or e0 <= 0.0:
        return {"rate": r0, "how": "bound"}
    w = (math.log(level) - math.log(e0)) / (math.log(e1) - math.log(e0))
    return {"rate": math.exp(math.log(r0) + w * (math.log(r1) - math.log(r0))), "how": "interpolated"}


# -- warpsim_rl ------------------------------------------------------------------------------------
def warpsim_scene(problem: Chain, dt: float, velocity_limit: float = 2.0) -> Scene:
    """The warpsim_rl scene of ``problem`` at time step ``dt`` (s): the fixed point is a handle
    (held still by zero actions; ``velocity_limit`` m/s per axis for commanded motion), the springs
    bilateral and undamped."""
    b = SceneBuilder(f"anchor_{problem.name}", dim=3, dt=dt, gravity=[0.0, -GRAVITY, 0.0])
    pos = problem.positions
    prev = b.add_handle(pos[0], velocity_limit=[velocity_limit] * 3, name="top")
    for i in range(1, problem.points + 1):
        p = b.add_particle(pos[i], mass=problem.mass / problem.points, name=f"p{i}")
        b.add_spring(prev, p, problem.stiffness, rest_length=problem.rest_length, kind="bilateral")
        prev = p
    return b.finalize()


def _intervals(duration: float) -> int:
    """Sample intervals in ``duration`` s (a positive whole number of them, else ``ValueError``)."""
    samples = round(duration / SAMPLE_INTERVAL)
    if samples < 1 or not math.isclose(samples * SAMPLE_INTERVAL, duration, rel_tol=1e-9):
        raise ValueError(f"duration = {duration!r}: must be a positive multiple of {SAMPLE_INTERVAL} s")
    return samples


def _grid(dt: float) -> tuple[int, int]:
    """``(steps, stride)`` of a time step ``dt`` (s) on the sample grid: ``dt = SAMPLE_INTERVAL /
    steps`` (stride 1) or ``dt = stride x SAMPLE_INTERVAL`` (steps 1); the engine's trajectory is
    sampled every ``stride`` intervals, after ``steps`` steps."""
    if not dt > 0.0:
        raise ValueError(f"dt = {dt!r}: must be > 0")
    if dt <= SAMPLE_INTERVAL:
        steps = round(SAMPLE_INTERVAL / dt)
        if math.isclose(SAMPLE_INTERVAL / steps, dt, rel_tol=1e-6):
            return steps, 1
    else:
        stride = round(dt / SAMPLE_INTERVAL)
        if math.isclose(stride * SAMPLE_INTERVAL, dt, rel_tol=1e-6):
            return 1, stride
    raise ValueError(f"dt = {dt!r}: must be {SAMPLE_INTERVAL} s times or divided by an integer")


class _WarpsimEngine:
    """warpsim_rl on ``problem`` at time step ``dt`` (s), ``worlds`` worlds, one thread, zero
    actions (the top point stays put)."""

    name = "warpsim_rl"

    def __init__(self, problem: Chain, dt: float, worlds: int, dtype: str):
        from ..sim import Simulator

        self.dt = dt
        self.model = warpsim_scene(problem, self.dt).build(num_envs=worlds, device="cpu", dtype=dtype, threads=1)
        self.sim = Simulator(self.model)
        self.bufs = [self.model.state(), self.model.state()]
        self.ctrl = self.model.control()

    def positions(self) -> np.ndarray:
        """(n, 3) positions of world 0 in m (host copy)."""
        return self.bufs[0].x.numpy()[0].astype(np.float64)

    def advance(self, steps: int) -> None:
        """``steps`` steps of all worlds, no host sync."""
        s0, s1 = self.bufs
        for _ in range(steps):
            self.sim.step(s0, self.ctrl, s1, check=False)
            s0, s1 = s1, s0
        self.bufs[:] = [s0, s1]

    def snapshot(self) -> list[np.ndarray]:
        """The full state of world 0 (x, v, x_prev, v_prev), host copies of (n, 3)."""
        return [a.numpy()[0].copy() for a in self.bufs[0].arrays()]

    def restore(self, snap: list[np.ndarray]) -> None:
        """Every world set to the state ``snap`` of :meth:`snapshot`."""
        E = self.model.num_envs
        for arr, value in zip(self.bufs[0].arrays(), snap):
            arr.assign(np.broadcast_to(value, (E,) + value.shape).copy())

    def failures(self) -> int:
        """Worlds whose Newton solve failed in some step since the engine was built."""
        return len(self.sim.failures()[0])


# -- Newton ----------------------------------------------------------------------------------------
def newton_available() -> bool:
    """Whether the ``newton`` package (NVIDIA Newton, ``pip install .[anchor]``) is installed."""
    import importlib.util

    return importlib.util.find_spec("newton") is not None


def newton_model(problem: Chain, worlds: int, requires_grad: bool = False):
    """Newton ``Model`` of ``worlds`` copies of ``problem`` on the CPU: particle 0 of each world is
    kinematic (mass 0), the springs undamped with the problem's rest length (``add_spring`` sets
    the initial distance; it is overwritten), particle radius 0 (no particle contact)."""
    import newton

    world = newton.ModelBuilder(up_axis=newton.Axis.Y, gravity=(0.0, -GRAVITY, 0.0))
    for p, m in zip(problem.positions, problem.masses):
        world.add_particle(tuple(float(c) for c in p), (0.0, 0.0, 0.0), float(m), radius=0.0)
    for i, j in problem.springs:
        world.add_spring(int(i), int(j), ke=problem.stiffness, kd=0.0, control=0.0)
        world.spring_rest_length[-1] = problem.rest_length
    builder = newton.ModelBuilder(up_axis=newton.Axis.Y, gravity=(0.0, -GRAVITY, 0.0))
    builder.replicate(world, copy_count=worlds)
    model = builder.finalize(device="cpu", requires_grad=requires_grad)
    if model.particle_grid is not None:
        raise RuntimeError("Newton model has particle contact enabled; the benchmark needs it off")
    return model


class _NewtonEngine:
    """Newton's ``SolverSemiImplicit`` on ``problem`` at substep ``dt`` (s), ``worlds`` worlds."""

    name = "newton"

    def __init__(self, problem: Chain, dt: float, worlds: int):
        import newton

        self.dt = dt
        self.n = problem.points + 1
        self.model = newton_model(problem, worlds)
        self.solver = newton.solvers.SolverSemiImplicit(self.model)
        self.bufs = [self.model.state(), self.model.state()]
        self.control = self.model.control()

    def positions(self) -> np.ndarray:
        return self.bufs[0].particle_q.numpy()[: self.n].astype(np.float64)

    def advance(self, steps: int) -> None:
        s0, s1 = self.bufs
        for _ in range(steps):
            s0.clear_forces()
            self.solver.step(s0, s1, self.control, None, self.dt)
            s0, s1 = s1, s0
        self.bufs[:] = [s0, s1]

    def snapshot(self) -> list[np.ndarray]:
        s = self.bufs[0]
        return [s.particle_q.numpy()[: self.n].copy(), s.particle_qd.numpy()[: self.n].copy()]

    def restore(self, snap: list[np.ndarray]) -> None:
        reps = self.bufs[0].particle_q.shape[0] // self.n
        for arr, value in zip((self.bufs[0].particle_q, self.bufs[0].particle_qd), snap):
            arr.assign(np.tile(value, (reps, 1)))

    def failures(self) -> int:
        q = self.bufs[0].particle_q.numpy().reshape(-1, self.n, 3)
        return int((~np.isfinite(q).all(axis=(1, 2))).sum())


def _make_engine(engine: str, problem: Chain, dt: float, worlds: int, dtype: str):
    """The engine ``"warpsim_rl"`` (in ``dtype``) or ``"newton"`` on ``problem`` at ``dt`` s."""
    if engine == "warpsim_rl":
        return _WarpsimEngine(problem, dt, worlds, dtype)
    if engine == "newton":
        return _NewtonEngine(problem, dt, worlds)
    raise ValueError(f"engine = {engine!r}: must be 'warpsim_rl' or 'newton'")


def _trajectory(eng, steps: int, samples: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(samples + 1, n, 3) positions of world 0 at 0 and after every ``steps`` steps, and the
    engine state at the middle sample (the start of the timed runs)."""
    out, mid = [eng.positions()], None
    for s in range(1, samples + 1):
        eng.advance(steps)
        out.append(eng.positions())
        if s == samples // 2:
            mid = eng.snapshot()
    return np.stack(out), mid


def _time_engine(eng, steps_per_sample: int, snap, repeats: int, min_time_s: float) -> dict:
    """Median seconds per step of ``repeats`` passes from state ``snap``, each pass a whole number
    of samples (``steps_per_sample`` steps each) lasting about ``min_time_s``."""
    eng.restore(snap)
    t0 = time.perf_counter()
    eng.advance(steps_per_sample)  # warm-up: compilation, launch caches
    wp.synchronize_device("cpu")
    per_sample = time.perf_counter() - t0
    steps = max(1, math.ceil(min_time_s / max(per_sample, 1e-9))) * steps_per_sample
    times = []
    for _ in range(repeats):
        eng.restore(snap)
        wp.synchronize_device("cpu")
        t0 = time.perf_counter()
        eng.advance(steps)
        wp.synchronize_device("cpu")
        times.append(time.perf_counter() - t0)
    return {"timed_steps": steps, "step_s": float(np.median(times)) / steps, "step_s_best": min(times) / steps,
            "failed_worlds": eng.failures()}


# -- the sweep -------------------------------------------------------------------------------------
ENGINES = ("warpsim_rl", "newton")


def _sweep_row(engine: str, problem: Chain, dt: float, worlds: int, dtype: str, times: np.ndarray,
               ref: np.ndarray, repeats: int, min_time_s: float) -> dict:
    """Errors (one world; at the sample ``times`` (S,) s that are multiples of ``dt``, against the
    reference ``ref`` (S, n, 3) m) and throughput (``worlds`` worlds) of ``engine`` at ``dt`` s."""
    steps, stride = _grid(dt)
    if (len(times) - 1) % stride:
        raise ValueError(f"dt = {dt} s does not divide the duration {times[-1]} s")
    t0 = time.perf_counter()
    eng = _make_engine(engine, problem, dt, 1, dtype)
    traj, mid = _trajectory(eng, steps, (len(times) - 1) // stride)
    err = trajectory_errors(traj, ref[::stride], times[::stride])
    err_run_s = time.perf_counter() - t0
    err["failed_error_run"] = eng.failures()
    timing = _time_engine(_make_engine(engine, problem, dt, worlds, dtype), steps, mid, repeats, min_time_s)
    return {"engine": engine, "dt": dt, "sample_every_s": stride * SAMPLE_INTERVAL, **err, **timing,
            "sim_s_per_s": worlds * dt / timing["step_s"], "env_steps_per_s": worlds / timing["step_s"],
            "error_run_s": err_run_s}


def _at_accuracy(rows: list[dict], metric: str, level: float) -> dict | None:
    """:func:`rate_at_accuracy` of one engine's sweep ``rows`` for error ``metric`` (a row key)."""
    pts = [(r[metric], r["sim_s_per_s"]) for r in rows if r[metric] is not None]
    got = rate_at_accuracy(pts, level)
    if got is None:
        return None
    fastest_ok = max((r for r in rows if r[metric] is not None and r[metric] <= level), key=lambda r: r["sim_s_per_s"])
    return {**got, "dt_meeting": fastest_ok["dt"]}


def _ratio(a: dict | None, b: dict | None) -> dict | None:
    """warpsim_rl / Newton throughput ratio at one level: ``{"ratio", "how"}`` with ``how`` one of
    ``"="`` (both interpolated), ``">="`` (only warpsim_rl's rate is a lower bound), ``"<="``
    (only Newton's is), ``"?"`` (both are bounds); ``None`` when either engine misses the level."""
    if a is None or b is None:
        return None
    how = {("interpolated", "interpolated"): "=", ("bound", "interpolated"): ">=",
           ("interpolated", "bound"): "<=", ("bound", "bound"): "?"}[(a["how"], b["how"])]
    return {"ratio": a["rate"] / b["rate"], "how": how}


def _problem_result(problem: Chain, engines, duration, dtype, worlds, repeats, min_time_s, dts, bar) -> dict:
    """The sweeps of every engine on ``problem``, interleaved (warpsim_rl dt_i, Newton dt_i, ...),
    and the throughputs at equal accuracy."""
    samples = round(duration / SAMPLE_INTERVAL)
    times = np.arange(samples + 1) * SAMPLE_INTERVAL
    bar.set_postfix_str(f"{problem.name}: reference")
    t0 = time.perf_counter()
    ref = reference_trajectory(problem, times)
    ref_s = time.perf_counter() - t0
    rows: dict[str, list[dict]] = {e: [] for e in engines}
    for i in range(max(len(dts[e]) for e in engines)):
        for e in engines:
            if i < len(dts[e]):
                bar.set_postfix_str(f"{problem.name}: {e} dt = {dts[e][i]:.1e} s")
                rows[e].append(_sweep_row(e, problem, dts[e][i], worlds, dtype, times, ref, repeats, min_time_s))
                bar.update()
    levels = []
    for metric in ("traj_err_m", "err_1s_m") if duration >= 1.0 else ("traj_err_m",):
        for level in LEVELS:
            at = {e: _at_accuracy(rows[e], metric, level) for e in engines}
            entry = {"metric": metric, "level_m": level, **at}
            if len(engines) == 2:
                entry["ratio"] = _ratio(at["warpsim_rl"], at["newton"])
            levels.append(entry)
    return {"problem": {**dataclasses.asdict(problem), "rest_length": problem.rest_length,
                        "particle_mass": problem.mass / problem.points},
            "worlds": worlds, "reference_s": ref_s, "sweeps": rows, "at_accuracy": levels}


QUICK = {"duration": 0.1, "worlds": 8, "repeats": 1, "min_time_s": 0.01}


def anchor(problems=DEFAULT_PROBLEMS, duration: float = 2.0, dtype: str = "float32", worlds: int | None = None,
           repeats: int = 3, min_time_s: float = 0.5, engines=None, quick: bool = False, gradient_worlds: int = 256,
           directions: int = 3, with_gradients: bool = True, progress=False) -> dict:
    """The anchor benchmark (module docstring): per problem, each engine's dt sweep (errors against
    the DOP853 reference over ``duration`` s, throughput of ``worlds`` worlds, default the
    problem's) and the throughput at equal accuracy. ``engines``: default both when Newton is
    installed, else warpsim_rl only. ``quick``: a smoke run (0.1 s, 8 worlds, two dt per engine,
    one short timed pass; gradients on 4 worlds over 0.1 s, one dt per engine, one direction).
    ``dtype`` is warpsim_rl's (Newton is float32). ``with_gradients``: also :func:`gradients` on
    the k = 1e4 rope with ``gradient_worlds`` worlds over ``duration`` and ``directions`` directions."""
    if quick:
        duration, worlds = QUICK["duration"], QUICK["worlds"]
        repeats, min_time_s = QUICK["repeats"], QUICK["min_time_s"]
    engines = tuple(engines) if engines is not None else (ENGINES if newton_available() else ("warpsim_rl",))
    for e in engines:
        if e not in ENGINES:
            raise ValueError(f"engine {e!r}: must be one of {list(ENGINES)}")
    if "newton" in engines and not newton_available():
        raise RuntimeError("engine 'newton' needs the newton package: pip install '.[anchor]'")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype = {dtype!r}: must be 'float32' or 'float64'")
    if repeats < 1 or min_time_s < 0.0 or (worlds is not None and worlds < 1):
        raise ValueError("repeats >= 1, min_time_s >= 0 and worlds >= 1 expected")
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown:
        raise ValueError(f"unknown problem(s) {unknown}: choose from {list(PROBLEMS)}")
    _intervals(duration)  # validates duration
    chosen = [PROBLEMS[p] for p in problems]
    subs = {p.name: _sweep_dts(p, engines, duration, quick) for p in chosen}
    grad_subs = {e: GRADIENT_SUBSTEPS[e][:1] if quick else GRADIENT_SUBSTEPS[e] for e in engines}
    total = sum(len(s) for sub in subs.values() for s in sub.values())
    total += (1 + sum(len(s) for s in grad_subs.values())) if with_gradients else 0
    result = {"benchmark": "anchor", "duration_s": duration, "sample_interval_s": SAMPLE_INTERVAL, "dtype": dtype,
              "newton_dtype": "float32", "engines": list(engines), "repeats": repeats, "min_time_s": min_time_s,
              "threads": 1, "quick": quick, "levels_m": list(LEVELS),
              "throughput_unit": "world-seconds of simulated time per wall second (worlds x simulated s / wall s)",
              "reference": "scipy DOP853, rtol = atol = 1e-12", "problems": {}}
    with progress_bar(progress, total, "anchor", unit="run") as bar:
        for p in chosen:
            result["problems"][p.name] = _problem_result(p, engines, duration, dtype, worlds or p.worlds, repeats,
                                                         min_time_s, subs[p.name], bar)
        if with_gradients:
            result["gradients"] = gradients("rope_k1e4", 4 if quick else gradient_worlds, duration,
                                            1 if quick else directions, dtype, engines, grad_subs, progress=bar)
    result["markdown"] = markdown_table(result)
    if with_gradients:
        result["markdown"] += "\n\n" + gradients_markdown(result["gradients"])
    result.update(machine_info(), revision=git_revision(), newton=_newton_version(), load_average=_load_average())
    return result


def _sweep_dts(problem: Chain, engines, duration: float, quick: bool) -> dict:
    """The dt (s) of each engine's sweep that divide ``duration`` (quick: the two coarsest)."""
    table = {"warpsim_rl": problem.warpsim_dts, "newton": problem.newton_dts}
    fits = {e: [dt for dt in table[e] if _intervals(duration) % _grid(dt)[1] == 0] for e in engines}
    return {e: tuple(v[:2] if quick else v) for e, v in fits.items()}


def _newton_version() -> str | None:
    """The installed Newton version (``None`` without it)."""
    if not newton_available():
        return None
    import newton

    return newton.__version__


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- report ----------------------------------------------------------------------------------------
def _fmt_rate(at: dict | None) -> str:
    if at is None:
        return "not reached"
    return ("≥ " if at["how"] == "bound" else "") + f"{at['rate']:,.0f}"


def _fmt_ratio(r: dict | None) -> str:
    if r is None:
        return "—"
    if r["how"] == "?":
        return "? (both bounds)"
    return {"=": "", ">=": "≥ ", "<=": "≤ "}[r["how"]] + f"{r['ratio']:.2g}"


def markdown_table(result: dict) -> str:
    """Two markdown tables of an :func:`anchor` result: the throughput at equal accuracy per
    problem, error metric and level (and the warpsim_rl / Newton ratio), then every sweep row."""
    engines = result["engines"]
    names = {"warpsim_rl": f"warpsim_rl ({result['dtype']})", "newton": "Newton SemiImplicit (float32)"}
    metric_names = {"traj_err_m": f"trajectory (0–{result['duration_s']:g} s)", "err_1s_m": "at t = 1 s"}
    head = ["problem", "worlds", "error", "level (m)"] + [f"{names[e]} world-s/s" for e in engines]
    if len(engines) == 2:
        head.append("ratio warpsim_rl / Newton")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, pr in result["problems"].items():
        for entry in pr["at_accuracy"]:
            cells = [name, str(pr["worlds"]), metric_names[entry["metric"]], f"{entry['level_m']:g}"]
            cells += [_fmt_rate(entry[e]) for e in engines]
            if len(engines) == 2:
                cells.append(_fmt_ratio(entry["ratio"]))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| problem | engine | dt (s) | trajectory error (m) | error at 1 s (m) | world-s/s | env-steps/s |"
              " failed worlds |", "|---|---|---|---|---|---|---|---|"]
    for name, pr in result["problems"].items():
        for e in engines:
            for r in pr["sweeps"][e]:
                e1 = "—" if r["err_1s_m"] is None else f"{r['err_1s_m']:.2e}"
                lines.append(f"| {name} | {e} | {r['dt']:.2e} | {r['traj_err_m']:.2e} | {e1} | "
                             f"{r['sim_s_per_s']:,.1f} | {r['env_steps_per_s']:,.0f} | {r['failed_worlds']} |")
    return "\n".join(lines)



# -- gradients (item 6) ----------------------------------------------------------------------------
# The loss of a rollout of `duration` s: L = sum over worlds of |x_bottom(T)|^2 (m^2), x_bottom the
# last particle. The actions are the top point's commanded velocity (m/s), one per sample interval
# (0.01 s), held over its steps / substeps: the top point moves on the same piecewise-linear path
# in both engines and in the reference.
def smooth_actions(worlds: int, intervals: int, seed: int = 0, amplitude: float = 0.5) -> np.ndarray:
    """(intervals, worlds, 3) top-point velocities in m/s: per world and axis a sum of three
    sinusoids of random frequency (0.2-1.5 Hz) and phase, at most ``amplitude`` m/s."""
    if worlds < 1 or intervals < 1:
        raise ValueError(f"worlds = {worlds}, intervals = {intervals}: both must be >= 1")
    rng = np.random.default_rng(seed)
    t = (np.arange(intervals) + 0.5) * SAMPLE_INTERVAL
    f = rng.uniform(0.2, 1.5, size=(3, worlds, 3))
    ph = rng.uniform(0.0, 2.0 * np.pi, size=(3, worlds, 3))
    return amplitude / 3.0 * np.sin(2.0 * np.pi * f[:, None] * t[None, :, None, None] + ph[:, None]).sum(0)


def reference_driven(problem: Chain, top_velocity: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """(A + 1, points + 1, 3) positions (m) at the sample times 0, 0.01, ... of the chain whose top
    point moves at ``top_velocity`` (A, 3) m/s, constant over each sample interval; DOP853 at
    ``rtol = atol`` restarted at every interval boundary (the path has a kink there)."""
    from scipy.integrate import solve_ivp

    vel = np.asarray(top_velocity, dtype=float)
    if vel.ndim != 2 or vel.shape[1] != 3:
        raise ValueError(f"top_velocity.shape = {vel.shape}: expected (intervals, 3)")
    n = problem.points
    top = problem.positions[0].astype(float)
    y = np.concatenate([problem.positions[1:].ravel(), np.zeros(3 * n)])
    out = [problem.positions.copy()]
    for a in vel:
        sol = solve_ivp(_chain_rhs(problem, top, a), (0.0, SAMPLE_INTERVAL), y, method="DOP853", rtol=rtol, atol=rtol)
        if not sol.success:
            raise RuntimeError(f"driven reference of {problem.name}: {sol.message}")
        y = sol.y[:, -1]
        top = top + a * SAMPLE_INTERVAL
        out.append(np.concatenate([top[None], y[:3 * n].reshape(n, 3)]))
    return np.stack(out)


def bottom_loss(positions: np.ndarray) -> float:
    """|x_bottom|^2 in m^2 of one world's final positions (n, 3)."""
    return float((np.asarray(positions, dtype=float)[-1] ** 2).sum())


def reference_directional_derivatives(problem: Chain, top_velocity: np.ndarray, directions: np.ndarray,
                                      eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Central differences ``(L(a + eps u) - L(a - eps u)) / (2 eps)`` of the reference loss (m² per
    m/s) for each direction ``u`` of ``directions`` (D, A, 3), and the reference trajectory (A + 1,
    n, 3) at ``top_velocity`` (A, 3)."""
    traj = reference_driven(problem, top_velocity)
    fd = [(bottom_loss(reference_driven(problem, top_velocity + eps * u)[-1])
           - bottom_loss(reference_driven(problem, top_velocity - eps * u)[-1])) / (2.0 * eps) for u in directions]
    return np.array(fd), traj


def _rss_reset() -> int | None:
    """Reset the process's peak resident set (Linux ``/proc/self/clear_refs``) and return the
    current one in bytes; ``None`` where that is not possible."""
    try:
        import gc

        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm("VmRSS")
    except OSError:
        return None


def _vm(key: str) -> int:
    """A ``/proc/self/status`` memory entry in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _peak_extra_mb(base: int | None) -> float | None:
    """MiB of the peak resident set since :func:`_rss_reset` above its ``base``."""
    return None if base is None else (_vm("VmHWM") - base) / 2**20


def warpsim_gradient(problem: Chain, actions: np.ndarray, substeps: int, dtype: str = "float32") -> dict:
    """The gradient of L (sum over worlds of |x_bottom(T)|^2) with respect to ``actions``
    (A, W, 3) m/s through a warpsim_rl rollout of A sample intervals at dt = 0.01 s / ``substeps``
    (``TorchSimulator.rollout``, implicit adjoints, one thread): ``grad`` (A, W, 3), world 0's
    positions at the sample times ``traj0`` (A + 1, n, 3), ``loss`` (world 0), ``forward_s``,
    ``backward_s``, ``peak_mb`` (resident-set growth over the rollout)."""
    import torch

    from ..autodiff import TorchSimulator

    A, W = actions.shape[:2]
    model = warpsim_scene(problem, SAMPLE_INTERVAL / substeps).build(num_envs=W, device="cpu", dtype=dtype, threads=1)
    ts = TorchSimulator(model, check=False)
    tdt = ts.torch_dtype

    def run(intervals: int):
        state = ts.initial_state()
        a = torch.tensor(actions[:intervals, :, None, :], dtype=tdt, requires_grad=True)
        t0 = time.perf_counter()
        states = ts.rollout(state, a.repeat_interleave(substeps, dim=0), keep=substeps)
        loss = states[-1][0][:, -1].square().sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        return a, states, t1 - t0, t2 - t1

    run(1)  # compilation of the step and adjoint kernels
    base = _rss_reset()
    a, states, fwd, bwd = run(A)
    peak = _peak_extra_mb(base)
    failed = len(ts.sim.failures()[0])
    traj0 = np.stack([s[0][0].detach().numpy().astype(np.float64) for s in states])
    return {"grad": a.grad[:, :, 0].numpy().astype(np.float64), "traj0": traj0, "loss": bottom_loss(traj0[-1]),
            "forward_s": fwd, "backward_s": bwd, "peak_mb": peak, "failed_worlds": failed}


@wp.kernel
def _newton_apply_action(qd_in: wp.array(dtype=wp.vec3), actions: wp.array2d(dtype=wp.vec3), row: int,
                         per_world: int, qd_out: wp.array(dtype=wp.vec3)):
    """qd_out = qd_in with the top particle of each world moving at its action of ``row``."""
    i = wp.tid()
    if i % per_world == 0:
        qd_out[i] = actions[row, i // per_world]
    else:
        qd_out[i] = qd_in[i]


@wp.kernel
def _newton_bottom_loss(q: wp.array(dtype=wp.vec3), per_world: int, loss: wp.array(dtype=float)):
    """loss[0] += |x_bottom|^2 of each world."""
    w = wp.tid()
    p = q[w * per_world + per_world - 1]
    wp.atomic_add(loss, 0, wp.dot(p, p))


def newton_gradient(problem: Chain, actions: np.ndarray, substeps: int) -> dict:
    """As :func:`warpsim_gradient`, through Newton's ``SolverSemiImplicit`` at substep 0.01 s /
    ``substeps`` on a ``wp.Tape`` (float32). As in Newton's differentiable-simulation examples the
    states of every substep are allocated once, before the timed rollout (``setup_s``, not in
    ``forward_s``); each substep's input state is its own (positions shared with the previous
    output) with the top-particle velocities set to the action by a recorded kernel, so the tape
    sees no overwrite."""
    import newton

    A, W = actions.shape[:2]
    n = problem.points + 1
    dt = SAMPLE_INTERVAL / substeps
    model = newton_model(problem, W, requires_grad=True)
    solver = newton.solvers.SolverSemiImplicit(model)
    control = model.control()

    def allocate(steps: int) -> tuple[list, list]:
        """``steps + 1`` output states (the first the initial one) and ``steps`` input states."""
        posts = [model.state(requires_grad=True)]
        pres = []
        for _ in range(steps):
            pre = newton.State()
            pre.particle_q = posts[-1].particle_q
            pre.particle_qd = wp.empty_like(model.particle_q, requires_grad=True)
            pre.particle_f = wp.zeros_like(model.particle_q, requires_grad=True)
            post = newton.State()
            post.particle_q = wp.empty_like(model.particle_q, requires_grad=True)
            post.particle_qd = wp.empty_like(model.particle_q, requires_grad=True)
            pres.append(pre)
            posts.append(post)
        return pres, posts

    def run(intervals: int):
        t0 = time.perf_counter()
        act = wp.array(actions[:intervals].astype(np.float32), dtype=wp.vec3, requires_grad=True)
        loss = wp.zeros(1, dtype=float, requires_grad=True)
        pres, posts = allocate(intervals * substeps)
        tape = wp.Tape()
        t1 = time.perf_counter()
        with tape:
            for k, (pre, post) in enumerate(zip(pres, posts[1:])):
                pre.clear_forces()
                wp.launch(_newton_apply_action, dim=W * n, inputs=[posts[k].particle_qd, act, k // substeps, n],
                          outputs=[pre.particle_qd])
                solver.step(pre, post, control, None, dt)
            wp.launch(_newton_bottom_loss, dim=W, inputs=[posts[-1].particle_q, n], outputs=[loss])
        t2 = time.perf_counter()
        tape.backward(loss)
        t3 = time.perf_counter()
        return act, [p.particle_q for p in posts[::substeps]], t1 - t0, t2 - t1, t3 - t2

    run(1)  # compilation, including the adjoint kernels
    base = _rss_reset()
    act, samples, setup, fwd, bwd = run(A)
    peak = _peak_extra_mb(base)
    traj = np.stack([q.numpy().reshape(W, n, 3)[0].astype(np.float64) for q in samples])
    failed = int((~np.isfinite(samples[-1].numpy().reshape(W, n, 3)).all(axis=(1, 2))).sum())
    return {"grad": act.grad.numpy().astype(np.float64), "traj0": traj, "loss": bottom_loss(traj[-1]),
            "setup_s": setup, "forward_s": fwd, "backward_s": bwd, "peak_mb": peak, "failed_worlds": failed}


def _worker_init() -> None:
    """Start of a measurement process: one torch thread, and its stdout is stderr (the parent's
    stdout carries the JSON result only)."""
    import os

    import torch

    os.dup2(2, 1)
    torch.set_num_threads(1)


def _gradient_run(engine: str, problem: Chain, actions: np.ndarray, substeps: int, dtype: str) -> dict:
    """One engine's :func:`warpsim_gradient` or :func:`newton_gradient`."""
    if engine == "warpsim_rl":
        return warpsim_gradient(problem, actions, substeps, dtype)
    if engine == "newton":
        return newton_gradient(problem, actions, substeps)
    raise ValueError(f"engine = {engine!r}: must be 'warpsim_rl' or 'newton'")


def _isolated(fn: Callable, *args):
    """``fn(*args)`` in a fresh process (spawned; see :func:`_worker_init`), so that the peak memory
    it measures is its own and not pages left over from earlier measurements."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init) as ex:
        return ex.submit(fn, *args).result()


GRADIENT_SUBSTEPS = {"warpsim_rl": (2, 5, 10, 20), "newton": (5, 10, 20)}
GRADIENT_LEVELS = (("traj_err_m", 3e-3), ("traj_err_m", 1e-3), ("grad_rel_err", 5e-2), ("grad_rel_err", 1e-2))


def gradients(problem: str = "rope_k1e4", worlds: int = 256, duration: float = 2.0, directions: int = 3,
              dtype: str = "float32", engines=None, substeps: dict | None = None, seed: int = 0,
              isolate: bool = True, progress=False) -> dict:
    """The gradient comparison: per engine and dt of the sweep ``substeps`` (default
    ``GRADIENT_SUBSTEPS``), the time of the forward rollout and of the reverse pass of L (sum over
    ``worlds`` worlds of the bottom particle's |x(T)|^2, T = ``duration``) with respect to every
    action (one per 0.01 s and world, smooth random top-point velocities), the peak resident-set
    growth, world 0's trajectory error against the driven reference (m) and ``grad_rel_err``,
    the normwise relative error ``|g.U - fd| / |fd|`` of world 0's derivatives along
    ``directions`` random smooth unit directions U (sums of sinusoids, as the actions) against
    central differences ``fd`` of the reference loss (float64); ``grad_rel_errs`` per direction.
    ``selected``: per level of ``GRADIENT_LEVELS``, each engine's fastest dt meeting it and the
    time ratio. ``isolate``: each measurement in a
    fresh process (default; else in this one, and ``peak_mb`` is ``None``: pages freed by earlier
    measurements would hide the growth)."""
    if problem not in PROBLEMS:
        raise ValueError(f"problem = {problem!r}: choose from {list(PROBLEMS)}")
    if directions < 1 or worlds < 1:
        raise ValueError(f"directions = {directions}, worlds = {worlds}: both must be >= 1")
    pr = PROBLEMS[problem]
    intervals = _intervals(duration)
    engines = tuple(engines) if engines is not None else (ENGINES if newton_available() else ("warpsim_rl",))
    substeps = substeps or {e: GRADIENT_SUBSTEPS[e] for e in engines}
    actions = smooth_actions(worlds, intervals, seed)
    dirs = smooth_actions(directions, intervals, seed + 1).transpose(1, 0, 2)  # smooth: what the rope responds to
    dirs /= np.linalg.norm(dirs.reshape(directions, -1), axis=1)[:, None, None]
    total = 1 + sum(len(substeps[e]) for e in engines)
    with progress_bar(progress, total, "anchor gradients", unit="run") as bar:
        bar.set_postfix_str("reference and finite differences")
        t0 = time.perf_counter()
        fd, ref = reference_directional_derivatives(pr, actions[:, 0], dirs)
        ref_s = time.perf_counter() - t0
        bar.update()
        rows = {e: [] for e in engines}
        for i in range(max(len(substeps[e]) for e in engines)):
            for e in engines:
                if i >= len(substeps[e]):
                    continue
                n = substeps[e][i]
                bar.set_postfix_str(f"{e} dt = {SAMPLE_INTERVAL / n:.1e} s")
                got = _isolated(_gradient_run, e, pr, actions, n, dtype) if isolate else \
                    {**_gradient_run(e, pr, actions, n, dtype), "peak_mb": None}
                dd = np.einsum("dai,ai->d", dirs, got["grad"][:, 0])
                rel = np.abs(dd - fd) / np.abs(fd)
                normwise = float(np.linalg.norm(dd - fd) / np.linalg.norm(fd))
                rows[e].append({"engine": e, "substeps": n, "dt": SAMPLE_INTERVAL / n,
                                "traj_err_m": trajectory_errors(got["traj0"], ref, np.arange(intervals + 1)
                                                                * SAMPLE_INTERVAL)["traj_err_m"],
                                "loss_err": abs(got["loss"] - bottom_loss(ref[-1])),
                                "grad_rel_err": normwise, "grad_rel_errs": rel.tolist(),
                                "directional_derivatives": dd.tolist(), "setup_s": got.get("setup_s", 0.0),
                                "forward_s": got["forward_s"],
                                "backward_s": got["backward_s"], "total_s": got["forward_s"] + got["backward_s"],
                                "peak_mb": got["peak_mb"], "failed_worlds": got["failed_worlds"]})
                bar.update()
    selected = [_gradient_selection(rows, key, level) for key, level in GRADIENT_LEVELS]
    return {"problem": problem, "worlds": worlds, "duration_s": duration, "actions": intervals,
            "loss": "sum over worlds of |x_bottom(T)|^2 (m^2)", "directions": directions, "fd_eps": 1e-3,
            "reference_fd": fd.tolist(), "reference_s": ref_s, "dtype": dtype, "rows": rows,
            "levels": GRADIENT_LEVELS, "selected": selected}


def _gradient_selection(rows: dict, key: str, level: float) -> dict:
    """Each engine's fastest row of ``rows`` with ``key <= level`` (``None`` if none) and the
    warpsim_rl / Newton time ratio (``None`` unless both engines have one)."""
    best = {e: min((r for r in rs if r[key] <= level), key=lambda r: r["total_s"], default=None)
            for e, rs in rows.items()}
    pick = {e: None if r is None else {k: r[k] for k in ("dt", "traj_err_m", "grad_rel_err", "total_s", "peak_mb")}
            for e, r in best.items()}
    both = len(best) == 2 and all(r is not None for r in best.values())
    ratio = best["warpsim_rl"]["total_s"] / best["newton"]["total_s"] if both else None
    return {"metric": key, "level": level, **pick, "time_ratio": ratio}


def gradients_markdown(g: dict) -> str:
    """A markdown table of a :func:`gradients` result: one row per engine and dt."""
    lines = [f"Gradient of {g['loss']} over {g['duration_s']:g} s w.r.t. {g['actions']} x {g['worlds']} top-point "
             f"velocity actions ({g['problem']}, {g['worlds']} worlds, one thread; warpsim_rl {g['dtype']}, "
             "Newton float32):", "",
             "| engine | dt (s) | trajectory error (m) | gradient rel. error vs FD ("
             f"{g['directions']} directions, normwise) | forward (s) | backward (s) | total (s) | "
             "setup (s), not in total | peak memory (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for rows in g["rows"].values():
        for r in rows:
            mem = "—" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
            lines.append(f"| {r['engine']} | {r['dt']:.1e} | {r['traj_err_m']:.2e} | {r['grad_rel_err']:.2e} | "
                         f"{r['forward_s']:.2f} | {r['backward_s']:.2f} | {r['total_s']:.2f} | {r['setup_s']:.2f} | "
                         f"{mem} |")
    if len(g["rows"]) == 2:
        names = {"traj_err_m": "trajectory error (m)", "grad_rel_err": "gradient rel. error"}
        lines += ["", "| selected by | level | warpsim_rl dt (s) / total (s) / MiB | Newton dt (s) / total (s) / MiB | "
                  "time ratio warpsim_rl / Newton |", "|---|---|---|---|---|"]
        for sel in g["selected"]:
            cells = []
            for e in ("warpsim_rl", "newton"):
                r = sel[e]
                mem = "—" if r is None or r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
                cells.append("not reached" if r is None else f"{r['dt']:.1e} / {r['total_s']:.2f} / {mem}")
            ratio = "—" if sel["time_ratio"] is None else f"{sel['time_ratio']:.2g}"
            lines.append(f"| {names[sel['metric']]} | {sel['level']:g} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines)

# -- command line ----------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """The ``anchor`` subcommand's own options (``--json``/``--quiet`` come from the CLI)."""
    p.add_argument("--problem", action="append", choices=list(PROBLEMS), default=None,
                   help=f"problem (repeatable; default {', '.join(DEFAULT_PROBLEMS)})")
    p.add_argument("--engine", action="append", choices=list(ENGINES), default=None,
                   help="engine (repeatable; default both, warpsim_rl only without newton)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="warpsim_rl precision (Newton is float32)")
    p.add_argument("--duration", type=float, default=2.0, help="simulated seconds of the error runs (default 2)")
    p.add_argument("--worlds", type=int, default=None,
                   help="worlds of the timed runs (default: rope 1024, pendulum 4096)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per dt; the median is reported (default 3)")
    p.add_argument("--min-time-s", type=float, default=0.5, help="wall seconds of one timed pass (default 0.5)")
    p.add_argument("--gradient-worlds", type=int, default=256, help="worlds of the gradient comparison (default 256)")
    p.add_argument("--directions", type=int, default=3,
                   help="random directions of the finite-difference check of the gradients (default 3)")
    p.add_argument("--no-gradients", action="store_true", help="skip the gradient comparison")
    p.add_argument("--quick", action="store_true", help="CI smoke: 0.1 s, 8 worlds, two dt per engine")


def from_args(args) -> dict:
    """The ``anchor`` subcommand."""
    return anchor(tuple(args.problem or DEFAULT_PROBLEMS), args.duration, args.dtype, args.worlds, args.repeats,
                  args.min_time_s, args.engine, args.quick, args.gradient_worlds, args.directions,
                  not args.no_gradients, progress=not args.quiet)
