"""Scene description: particles, springs, handles, geometry — built in Python or read from TOML.

A :class:`Scene` is a validated, immutable, host-side (numpy) description of one environment.
:meth:`Scene.build` turns it into a batched :class:`~warpsim_rl.model.Model` on a Warp device.
The TOML loader drives the same :class:`SceneBuilder` calls as Python code, so both routes
produce identical scenes by construction (``tests/test_scene.py`` checks it).

Units: SI throughout (m, kg, s, N/m, N·s/m). Gravity acts along the scene's ``gravity`` vector;
the shipped scenes are y-up, 2D scenes live in the x–y plane.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "SceneError",
    "SceneBuilder",
    "Scene",
    "Plane",
    "Box",
    "ContactSettings",
    "SolverSettings",
    "load_scene",
    "scene_names",
    "SPRING_KINDS",
]

SPRING_KINDS = ("bilateral", "cable")


class SceneError(ValueError):
    """A scene (file or builder call) is invalid. The message names the field and the value."""


@dataclasses.dataclass(frozen=True)
class Plane:
    """Static half-space obstacle: free space is ``{x : normal·x >= offset}`` (unit ``normal``).

    ``stiffness`` (N/m) and ``friction`` (Coulomb coefficient) override the scene's
    :class:`ContactSettings` for this plane when not ``None``."""

    normal: tuple[float, ...]
    offset: float
    stiffness: float | None = None
    friction: float | None = None


@dataclasses.dataclass(frozen=True)
class Box:
    """Static axis-aligned box obstacle (e.g. a table): ``center`` and ``half_extents`` in m;
    ``radius`` (m, ``0 <= radius < min(half_extents)``) rounds its edges and corners (the box is
    the inner box of half extents ``half_extents - radius`` grown by ``radius``), which makes
    contact smooth where a particle slides over an edge. ``stiffness``/``friction`` override the
    scene's :class:`ContactSettings` when not ``None``."""

    center: tuple[float, ...]
    half_extents: tuple[float, ...]
    radius: float = 0.0
    stiffness: float | None = None
    friction: float | None = None


@dataclasses.dataclass(frozen=True)
class ContactSettings:
    """Contact between free particles and the scene's planes and boxes (``docs/contact.md``).

    Attributes:
        stiffness: penalty stiffness ``k`` in N/m (default for every plane and box). A particle of
            mass ``m`` resting on a surface penetrates ``m g / k`` (or less than ``width / 2``).
        width: smoothing width ``w`` in m of the penalty (>= 0): the normal force ramps up
            smoothly (C1) from 0 at distance ``w / 2`` above the surface to ``k w / 2`` at
            ``w / 2`` below it, then grows linearly; 0 gives a plain quadratic penalty (its
            Hessian jumps at the surface).
        friction: Coulomb coefficient ``mu`` >= 0 (default for every plane and box; 0: frictionless).
        eps_v: friction smoothing velocity in m/s (> 0): below it the friction force ramps from 0
            to ``mu lambda`` (IPC's mollifier), so "sticking" creeps at a speed below ``eps_v``.
    """

    stiffness: float = 1.0e4
    width: float = 1.0e-3
    friction: float = 0.0
    eps_v: float = 1.0e-2


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Newton solver settings for the implicit BDF2 step.

    Attributes:
        max_iters: Newton iterations before a step is reported as not converged.
        tol: convergence tolerance on ``max|Δx| / dt`` of the Newton step, in m/s
            (``None``: 1e-4 for float32, 1e-9 for float64).
        line_search_max: maximum backtracking halvings per Newton iteration.
        lte_fraction: error-controlled stopping (dimensionless, >= 0): a step also converges once
            its Newton correction ``max|Δx|`` is at most this fraction of the step's own
            truncation-error estimate ``(2/9) dt max|v' - 2 v + v_prev|`` (BDF2's error constant;
            at least one Newton solve). 0 (the default): ``tol`` alone, the tight mode whose
            converged steps the implicit adjoint differentiates exactly.
    """

    max_iters: int = 30
    tol: float | None = None
    line_search_max: int = 12
    lte_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class Scene:
    """Validated single-environment scene. Arrays are numpy, shapes use ``n`` particles,
    ``m`` springs, ``h`` handles, ``dim`` in {2, 3}.

    Attributes:
        name: scene name.
        dim: spatial dimension (2 or 3).
        dt: time step in s.
        gravity: (dim,) gravitational acceleration in m/s².
        positions: (n, dim) initial positions in m.
        velocities: (n, dim) initial velocities in m/s.
        masses: (n,) masses in kg (0 for handles; handles are kinematic).
        is_handle: (n,) bool.
        particle_names: n names ("" when unnamed).
        springs: (m, 2) int32 particle indices.
        stiffness: (m,) N/m.
        rest_length: (m,) m.
        damping: (m,) N·s/m, acting on the stretch rate.
        is_cable: (m,) bool — tension-only springs.
        handles: (h,) int32 particle index of each handle, in action order.
        velocity_limit: (h, dim) per-axis commanded-speed limit in m/s (0 locks an axis).
        planes, boxes: static obstacles (contact with the free particles).
        contact: :class:`ContactSettings` (penalty stiffness, smoothing width, friction).
        solver: Newton settings.
        parameters: the parameters the scene was generated with (for procedural scenes).
        description: one line (the TOML's ``scene.description``; "" when not given). Free text:
            nothing reads it but listings (``python -m warpsim_rl.tasks``).
    """

    name: str
    dim: int
    dt: float
    gravity: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray
    is_handle: np.ndarray
    particle_names: tuple[str, ...]
    springs: np.ndarray
    stiffness: np.ndarray
    rest_length: np.ndarray
    damping: np.ndarray
    is_cable: np.ndarray
    handles: np.ndarray
    velocity_limit: np.ndarray
    planes: tuple[Plane, ...] = ()
    boxes: tuple[Box, ...] = ()
    contact: ContactSettings = ContactSettings()
    solver: SolverSettings = SolverSettings()
    parameters: dict = dataclasses.field(default_factory=dict)
    description: str = ""

    @property
    def num_particles(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_springs(self) -> int:
        return int(self.springs.shape[0])

    @property
    def num_handles(self) -> int:
        return int(self.handles.shape[0])

    @property
    def free_particles(self) -> np.ndarray:
        """Indices of the dynamic (non-handle) particles, in DOF order."""
        return np.flatnonzero(~self.is_handle).astype(np.int32)

    @property
    def num_dofs(self) -> int:
        """Unknowns of one Newton solve: free particles × dim."""
        return int(self.free_particles.shape[0]) * self.dim

    def particle_index(self, name: str) -> int:
        try:
            return self.particle_names.index(name)
        except ValueError:
            raise SceneError(f"{self.name}: no particle named {name!r}") from None

    def build(self, num_envs: int = 1, device=None, dtype="float32", threads: int | None = None):
        """Batched :class:`~warpsim_rl.model.Model` of ``num_envs`` copies on ``device``
        (``threads``: CPU launch threads, default the available cores)."""
        from .model import Model

        return Model(self, num_envs=num_envs, device=device, dtype=dtype, threads=threads)


def _is_number(v) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` to Python, not a coordinate)."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _vec(value: Any, dim: int, field: str, *, finite: bool = True) -> tuple[float, ...]:
    """``dim`` real numbers from a list, tuple or 1-D array. Every entry must itself be a number
    (a string such as ``"-0.5"`` or a boolean is rejected, naming ``field[index]``, like the
    scalar fields of :func:`_number`), and finite unless ``finite=False``."""
    seq = value.tolist() if hasattr(value, "tolist") and not isinstance(value, (list, tuple)) else value
    if not isinstance(seq, (list, tuple)):
        raise SceneError(f"{field} = {value!r}: expected {dim} numbers")
    if len(seq) != dim:
        raise SceneError(f"{field} = {value!r}: expected {dim} numbers for a {dim}D scene")
    for i, v in enumerate(seq):
        if not _is_number(v):
            kind = "boolean" if isinstance(v, (bool, np.bool_)) else type(v).__name__
            raise SceneError(f"{field}[{i}] = {v!r}: expected a number, got a {kind} ({field} = {value!r})")
    out = tuple(float(v) for v in seq)
    if finite:
        for i, v in enumerate(out):
            if not math.isfinite(v):
                raise SceneError(f"{field} = {value!r}: must be finite ({field}[{i}] = {v!r})")
    return out


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SceneError(f"{field} = {value!r}: expected a number")
    if not math.isfinite(float(value)):
        raise SceneError(f"{field} = {value!r}: must be finite")
    return float(value)


class SceneBuilder:
    """Imperative construction of a :class:`Scene`; every call validates its arguments.

    Example::

        b = SceneBuilder("my_pendulum", dim=2, dt=0.02)
        h = b.add_handle([0.0, 0.0], velocity_limit=[2.0, 2.0], name="handle")
        p = b.add_particle([0.0, -1.0], mass=1.0, name="bob")
        b.add_spring(h, p, stiffness=2e4)
        scene = b.finalize()
    """

    def __init__(self, name: str, dim: int, dt: float, gravity: Sequence[float] | None = None,
                 description: str = ""):
        if dim not in (2, 3):
            raise SceneError(f"scene.dim = {dim!r}: must be 2 or 3")
        dt = _number(dt, "scene.dt")
        if dt <= 0.0:
            raise SceneError(f"scene.dt = {dt!r}: must be > 0")
        if not isinstance(description, str):
            raise SceneError(f"scene.description = {description!r}: expected a string")
        self.name = str(name)
        self.description = description
        self.dim = int(dim)
        self.dt = dt
        if gravity is None:
            gravity = [0.0, -9.81] + [0.0] * (dim - 2)
        self.gravity = _vec(gravity, dim, "scene.gravity")
        self._pos: list[tuple[float, ...]] = []
        self._vel: list[tuple[float, ...]] = []
        self._mass: list[float] = []
        self._handle: list[bool] = []
        self._names: list[str] = []
        self._vlimit: dict[int, tuple[float, ...]] = {}
        self._springs: list[tuple[int, int]] = []
        self._k: list[float] = []
        self._rest: list[float] = []
        self._damp: list[float] = []
        self._cable: list[bool] = []
        self._planes: list[Plane] = []
        self._boxes: list[Box] = []
        self.contact = ContactSettings()
        self.solver = SolverSettings()
        self.parameters: dict = {}

    # -- particles ---------------------------------------------------------------------------
    def _field(self, kind: str, index: int, key: str) -> str:
        return f"{kind}[{index}].{key}"

    def add_particle(self, position, mass: float, velocity=None, name: str = "") -> int:
        """Add a free (dynamic) particle; returns its index."""
        i = len(self._pos)
        pos = _vec(position, self.dim, self._field("particles", i, "position"))
        m = _number(mass, self._field("particles", i, "mass"))
        if m <= 0.0:
            raise SceneError(f"{self._field('particles', i, 'mass')} = {mass!r}: must be > 0 for a free particle")
        vel = _vec(velocity if velocity is not None else [0.0] * self.dim, self.dim,
                   self._field("particles", i, "velocity"))
        self._append_particle(pos, vel, m, False, name)
        return i

    def add_handle(self, position, velocity_limit, name: str = "") -> int:
        """Add a kinematic handle driven by a velocity action; returns its particle index.

        ``velocity_limit`` is the per-axis bound on the commanded speed in m/s (0 locks the axis).
        """
        i = len(self._pos)
        pos = _vec(position, self.dim, self._field("particles", i, "position"))
        lim = _vec(velocity_limit, self.dim, self._field("particles", i, "velocity_limit"))
        if any(v < 0.0 for v in lim):
            raise SceneError(f"{self._field('particles', i, 'velocity_limit')} = {list(lim)}: must be >= 0")
        self._append_particle(pos, (0.0,) * self.dim, 0.0, True, name)
        self._vlimit[i] = lim
        return i

    def _append_particle(self, pos, vel, mass, handle, name):
        i = len(self._pos)
        if name and name in self._names:
            raise SceneError(f"particles[{i}].name = {name!r}: duplicate name")
        self._pos.append(pos)
        self._vel.append(vel)
        self._mass.append(mass)
        self._handle.append(handle)
        self._names.append(str(name))

    def resolve(self, ref, field: str) -> int:
        """Particle index from an int index or a particle name."""
        if isinstance(ref, str):
            if ref not in self._names or ref == "":
                raise SceneError(f"{field} = {ref!r}: no particle with that name (known: {[n for n in self._names if n]})")
            return self._names.index(ref)
        if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)):
            raise SceneError(f"{field} = {ref!r}: expected a particle index or name")
        if not 0 <= int(ref) < len(self._pos):
            raise SceneError(f"{field} = {ref!r}: particle index out of range [0, {len(self._pos)})")
        return int(ref)

    # -- springs -----------------------------------------------------------------------------
    def add_spring(self, i, j, stiffness: float, rest_length: float | None = None,
                   damping: float = 0.0, kind: str = "bilateral") -> int:
        """Connect particles ``i`` and ``j`` (index or name). ``rest_length`` defaults to the
        initial distance; ``kind`` is ``"bilateral"`` or ``"cable"`` (tension only)."""
        s = len(self._springs)
        f = lambda key: self._field("springs", s, key)  # noqa: E731
        a = self.resolve(i, f("particles[0]"))
        b = self.resolve(j, f("particles[1]"))
        if a == b:
            raise SceneError(f"{f('particles')} = [{i!r}, {j!r}]: a spring cannot join particle {a} to itself")
        k = _number(stiffness, f("stiffness"))
        if k <= 0.0:
            raise SceneError(f"{f('stiffness')} = {stiffness!r}: must be > 0")
        c = _number(damping, f("damping"))
        if c < 0.0:
            raise SceneError(f"{f('damping')} = {damping!r}: must be >= 0")
        if kind not in SPRING_KINDS:
            raise SceneError(f"{f('kind')} = {kind!r}: must be one of {list(SPRING_KINDS)}")
        dist = float(np.linalg.norm(np.subtract(self._pos[a], self._pos[b])))
        if rest_length is None:
            if dist <= 1e-9:
                raise SceneError(
                    f"{f('rest_length')}: particles {a} and {b} coincide, so the default rest length "
                    f"(their distance, {dist!r}) is zero; move them apart or give rest_length")
            L = dist
        else:
            L = _number(rest_length, f("rest_length"))
            if L < 0.0:
                raise SceneError(f"{f('rest_length')} = {rest_length!r}: must be >= 0")
            if L == 0.0 and dist <= 1e-9:
                raise SceneError(f"{f('rest_length')} = 0 with coincident particles {a} and {b}: the spring has no direction")
        if self._handle[a] and self._handle[b]:
            raise SceneError(f"{f('particles')} = [{i!r}, {j!r}]: both ends are handles; the spring would do nothing")
        self._springs.append((a, b))
        self._k.append(k)
        self._rest.append(L)
        self._damp.append(c)
        self._cable.append(kind == "cable")
        return s

    def add_chain(self, start, end, segments: int, mass: float, stiffness: float,
                  damping: float = 0.0, kind: str = "bilateral", name: str = "chain") -> list[int]:
        """A straight chain of ``segments`` springs from particle ``start`` (index or name) to the
        point ``end``, adding ``segments`` new particles of ``mass`` kg each (the last at ``end``).
        Returns the new particle indices."""
        field = f"chains.{name}"
        if isinstance(segments, bool) or not isinstance(segments, (int, np.integer)) or segments < 1:
            raise SceneError(f"{field}.segments = {segments!r}: must be an integer >= 1")
        a = self.resolve(start, f"{field}.start")
        p0 = np.asarray(self._pos[a])
        p1 = np.asarray(_vec(end, self.dim, f"{field}.end"))
        prev, new = a, []
        for s in range(1, segments + 1):
            p = self.add_particle(p0 + (p1 - p0) * s / segments, mass, name=f"{name}{s}")
            self.add_spring(prev, p, stiffness, damping=damping, kind=kind)
            new.append(p)
            prev = p
        return new

    def add_grid(self, origin, rows: int, cols: int, col_step, row_step, mass: float, stiffness: float,
                 shear_stiffness: float | None = None, bend_stiffness: float = 0.0, damping: float = 0.0,
                 kind: str = "bilateral", handles=(), handle_names=None, velocity_limit=None,
                 anchor: str = "first", spacing: float | None = None, name: str = "grid") -> np.ndarray:
        """A rectangular ``rows x cols`` grid of particles (a cloth), returned as the (rows, cols)
        array of particle indices.

        Particle ``(r, c)`` sits at ``origin + c col_step + r row_step`` (``anchor="first"``:
        ``origin`` is particle (0, 0)) or at ``origin + (c - (cols - 1) / 2) col_step + r row_step``
        (``anchor="row0_center"``: ``origin`` is the middle of row 0). Particles are created row by
        row (natural grid order, so the Newton matrix has a half-bandwidth of about
        ``(cols + 1) dim``: make ``cols`` the shorter side) and named ``f"{name}_{r}_{c}"``.
        With ``spacing`` (m), ``col_step`` and ``row_step`` are directions only: they are
        normalised and scaled to that length.

        ``handles`` lists ``(r, c)`` grid positions (negative indices count from the end) that are
        kinematic handles with per-axis ``velocity_limit`` (m/s) and optional ``handle_names`` (in
        the order of ``handles``); like all handles they enter the action in particle order.
        ``mass`` is the total mass in kg of the free particles, shared equally.
        Springs (``kind``, ``damping`` for all): structural ones between grid neighbours
        (``stiffness``), shear ones along both diagonals of every cell (``shear_stiffness``,
        default ``stiffness``; 0 leaves them out) and, when ``bend_stiffness > 0``, bending ones
        between second neighbours along rows and columns. Springs between two handles are left out.
        """
        field = f"grids.{name}"
        is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
        for key, val in (("rows", rows), ("cols", cols)):
            if not is_int(val) or val < 1:
                raise SceneError(f"{field}.{key} = {val!r}: must be an integer >= 1")
        if rows * cols < 2:
            raise SceneError(f"{field}: rows = {rows!r}, cols = {cols!r}: a grid needs at least 2 particles")
        o = np.asarray(_vec(origin, self.dim, f"{field}.origin"))
        cs = np.asarray(_vec(col_step, self.dim, f"{field}.col_step"))
        rs = np.asarray(_vec(row_step, self.dim, f"{field}.row_step"))
        if cols > 1 and np.linalg.norm(cs) < 1e-9:
            raise SceneError(f"{field}.col_step = {list(cs)}: must be non-zero")
        if rows > 1 and np.linalg.norm(rs) < 1e-9:
            raise SceneError(f"{field}.row_step = {list(rs)}: must be non-zero")
        if spacing is not None:
            sp = _number(spacing, f"{field}.spacing")
            if sp <= 0.0:
                raise SceneError(f"{field}.spacing = {spacing!r}: must be > 0")
            cs = sp * cs / max(float(np.linalg.norm(cs)), 1e-300)
            rs = sp * rs / max(float(np.linalg.norm(rs)), 1e-300)
        if rows > 1 and cols > 1 and np.linalg.norm(np.cross(np.pad(cs, (0, 3 - self.dim)),
                                                            np.pad(rs, (0, 3 - self.dim)))) < 1e-12:
            raise SceneError(f"{field}: col_step = {list(cs)} and row_step = {list(rs)} are parallel")
        if anchor not in ("first", "row0_center"):
            raise SceneError(f"{field}.anchor = {anchor!r}: must be 'first' or 'row0_center'")
        if anchor == "row0_center":
            o = o - 0.5 * (cols - 1) * cs
        total = _number(mass, f"{field}.mass")
        if total <= 0.0:
            raise SceneError(f"{field}.mass = {mass!r}: must be > 0")
        k_shear = stiffness if shear_stiffness is None else shear_stiffness
        for key, val in (("shear_stiffness", k_shear), ("bend_stiffness", bend_stiffness)):
            if _number(val, f"{field}.{key}") < 0.0:
                raise SceneError(f"{field}.{key} = {val!r}: must be >= 0")
        cells = set()
        hlist = list(handles) if handles is not None else []
        for h_i, rc in enumerate(hlist):
            if not isinstance(rc, (list, tuple)) or len(rc) != 2 or not all(is_int(v) for v in rc):
                raise SceneError(f"{field}.handles[{h_i}] = {rc!r}: expected [row, col]")
            r, c = int(rc[0]), int(rc[1])
            if not (-rows <= r < rows and -cols <= c < cols):
                raise SceneError(f"{field}.handles[{h_i}] = {list(rc)}: outside the {rows} x {cols} grid")
            cell = (r % rows, c % cols)
            if cell in cells:
                raise SceneError(f"{field}.handles[{h_i}] = {list(rc)}: duplicate handle")
            cells.add(cell)
        order = {((int(r) % rows), (int(c) % cols)): h_i for h_i, (r, c) in enumerate(hlist)}
        if hlist and velocity_limit is None:
            raise SceneError(f"{field}.velocity_limit: required when the grid has handles")
        if handle_names is not None:
            if not isinstance(handle_names, (list, tuple)) or len(handle_names) != len(hlist) \
                    or not all(isinstance(v, str) and v for v in handle_names):
                raise SceneError(f"{field}.handle_names = {handle_names!r}: expected {len(hlist)} non-empty names")
        if len(cells) == rows * cols:
            raise SceneError(f"{field}.handles: every particle of the grid is a handle")
        m_each = total / (rows * cols - len(cells))
        # handles are created in the grid order; the action order follows the scene's particle order
        idx = np.zeros((rows, cols), dtype=np.int64)
        for r in range(rows):
            for c in range(cols):
                pos = o + c * cs + r * rs
                if (r, c) in order:
                    h_i = order[(r, c)]
                    nm = handle_names[h_i] if handle_names is not None else f"{name}_{r}_{c}"
                    idx[r, c] = self.add_handle(pos, velocity_limit, name=nm)
                else:
                    idx[r, c] = self.add_particle(pos, m_each, name=f"{name}_{r}_{c}")
        pairs = []
        for r in range(rows):
            for c in range(cols):
                if c + 1 < cols:
                    pairs.append(((r, c), (r, c + 1), stiffness))
                if r + 1 < rows:
                    pairs.append(((r, c), (r + 1, c), stiffness))
        if k_shear > 0:
            for r in range(rows - 1):
                for c in range(cols - 1):
                    pairs.append(((r, c), (r + 1, c + 1), k_shear))
                    pairs.append(((r, c + 1), (r + 1, c), k_shear))
        if bend_stiffness > 0:
            for r in range(rows):
                for c in range(cols):
                    if c + 2 < cols:
                        pairs.append(((r, c), (r, c + 2), bend_stiffness))
                    if r + 2 < rows:
                        pairs.append(((r, c), (r + 2, c), bend_stiffness))
        for a, b, k in pairs:
            if a in cells and b in cells:
                continue
            self.add_spring(int(idx[a]), int(idx[b]), k, damping=damping, kind=kind)
        return idx

    # -- geometry and settings ---------------------------------------------------------------
    def add_plane(self, normal, offset: float | None = None, point=None, stiffness: float | None = None,
                  friction: float | None = None) -> None:
        """Static half-space obstacle: free space ``{x : n·x >= offset}`` with ``n`` the normalised
        ``normal``. Give ``offset`` (default 0) or a ``point`` on the plane (``offset = n·point``).
        ``stiffness``/``friction`` override :meth:`set_contact`'s values for this plane."""
        i = len(self._planes)
        n = np.asarray(_vec(normal, self.dim, f"planes[{i}].normal"))
        norm = float(np.linalg.norm(n))
        if norm < 1e-12:
            raise SceneError(f"planes[{i}].normal = {list(n)}: must be non-zero")
        n = n / norm
        if point is not None and offset is not None:
            raise SceneError(f"planes[{i}]: give either offset = {offset!r} or point = {point!r}, not both")
        if point is not None:
            off = float(n @ np.asarray(_vec(point, self.dim, f"planes[{i}].point")))
        else:
            off = _number(0.0 if offset is None else offset, f"planes[{i}].offset")
        k, mu = self._contact_overrides(f"planes[{i}]", stiffness, friction)
        self._planes.append(Plane(tuple(float(v) for v in n), off, k, mu))

    def add_box(self, center, half_extents, radius: float = 0.0, stiffness: float | None = None,
                friction: float | None = None) -> None:
        """Static axis-aligned box obstacle (a table is a box standing on the floor); ``radius``
        rounds its edges (``0 <= radius < min(half_extents)``)."""
        i = len(self._boxes)
        c = _vec(center, self.dim, f"boxes[{i}].center")
        he = _vec(half_extents, self.dim, f"boxes[{i}].half_extents")
        if any(v <= 0 for v in he):
            raise SceneError(f"boxes[{i}].half_extents = {list(he)}: must be > 0")
        r = _number(radius, f"boxes[{i}].radius")
        if not 0.0 <= r < min(he):
            raise SceneError(f"boxes[{i}].radius = {radius!r}: must be >= 0 and < the smallest half extent {min(he)!r}")
        k, mu = self._contact_overrides(f"boxes[{i}]", stiffness, friction)
        self._boxes.append(Box(c, he, r, k, mu))

    @staticmethod
    def _contact_overrides(field, stiffness, friction):
        k = mu = None
        if stiffness is not None:
            k = _number(stiffness, f"{field}.stiffness")
            if k <= 0.0:
                raise SceneError(f"{field}.stiffness = {stiffness!r}: must be > 0")
        if friction is not None:
            mu = _number(friction, f"{field}.friction")
            if mu < 0.0:
                raise SceneError(f"{field}.friction = {friction!r}: must be >= 0")
        return k, mu

    def set_contact(self, stiffness: float | None = None, width: float | None = None,
                    friction: float | None = None, eps_v: float | None = None) -> None:
        """Contact settings of the scene (:class:`ContactSettings`); ``None`` keeps a value."""
        cur = self.contact
        vals = {}
        for key, val, ok, why in (("stiffness", stiffness, lambda v: v > 0, "must be > 0"),
                                  ("width", width, lambda v: v >= 0, "must be >= 0"),
                                  ("friction", friction, lambda v: v >= 0, "must be >= 0"),
                                  ("eps_v", eps_v, lambda v: v > 0, "must be > 0")):
            if val is None:
                vals[key] = getattr(cur, key)
                continue
            num = _number(val, f"contact.{key}")
            if not ok(num):
                raise SceneError(f"contact.{key} = {val!r}: {why}")
            vals[key] = num
        self.contact = ContactSettings(**vals)

    def set_solver(self, max_iters: int | None = None, tol: float | None = None,
                   line_search_max: int | None = None, lte_fraction: float | None = None) -> None:
        cur = self.solver
        is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
        if max_iters is not None and (not is_int(max_iters) or max_iters < 1):
            raise SceneError(f"solver.max_iters = {max_iters!r}: must be an integer >= 1")
        if tol is not None and (_number(tol, "solver.tol") <= 0):
            raise SceneError(f"solver.tol = {tol!r}: must be > 0")
        if line_search_max is not None and (not is_int(line_search_max) or line_search_max < 0):
            raise SceneError(f"solver.line_search_max = {line_search_max!r}: must be an integer >= 0")
        if lte_fraction is not None and (_number(lte_fraction, "solver.lte_fraction") < 0):
            raise SceneError(f"solver.lte_fraction = {lte_fraction!r}: must be >= 0 (0: off)")
        self.solver = SolverSettings(
            max_iters=cur.max_iters if max_iters is None else int(max_iters),
            tol=cur.tol if tol is None else float(tol),
            line_search_max=cur.line_search_max if line_search_max is None else int(line_search_max),
            lte_fraction=cur.lte_fraction if lte_fraction is None else float(lte_fraction),
        )

    def finalize(self) -> Scene:
        """Validate the whole scene and return the immutable :class:`Scene`."""
        n = len(self._pos)
        if n == 0:
            raise SceneError(f"{self.name}: scene has no particles")
        if not any(not h for h in self._handle):
            raise SceneError(f"{self.name}: scene has no free particle to simulate")
        handles = np.array([i for i in range(n) if self._handle[i]], dtype=np.int32)
        vlim = np.array([self._vlimit[int(i)] for i in handles], dtype=np.float64).reshape(-1, self.dim)
        return Scene(
            name=self.name,
            dim=self.dim,
            dt=self.dt,
            gravity=np.array(self.gravity, dtype=np.float64),
            positions=np.array(self._pos, dtype=np.float64).reshape(n, self.dim),
            velocities=np.array(self._vel, dtype=np.float64).reshape(n, self.dim),
            masses=np.array(self._mass, dtype=np.float64),
            is_handle=np.array(self._handle, dtype=bool),
            particle_names=tuple(self._names),
            springs=np.array(self._springs, dtype=np.int32).reshape(-1, 2),
            stiffness=np.array(self._k, dtype=np.float64),
            rest_length=np.array(self._rest, dtype=np.float64),
            damping=np.array(self._damp, dtype=np.float64),
            is_cable=np.array(self._cable, dtype=bool),
            handles=handles,
            velocity_limit=vlim,
            planes=tuple(self._planes),
            boxes=tuple(self._boxes),
            contact=self.contact,
            solver=self.solver,
            parameters=dict(self.parameters),
            description=self.description,
        )


# ------------------------------------------------------------------------------------------
# TOML loading
# ------------------------------------------------------------------------------------------

_TOP_KEYS = {"scene", "parameters", "solver", "contact", "particles", "grids", "springs", "chains", "planes",
             "boxes"}
_SCENE_KEYS = {"name", "description", "dim", "dt", "gravity"}
_PARTICLE_KEYS = {"name", "position", "mass", "velocity", "handle", "velocity_limit"}
_SPRING_KEYS = {"particles", "stiffness", "rest_length", "damping", "kind"}
_CHAIN_KEYS = {"name", "start", "end", "segments", "mass", "stiffness", "damping", "kind"}
_GRID_KEYS = {"name", "origin", "anchor", "rows", "cols", "col_step", "row_step", "spacing", "mass", "stiffness",
              "shear_stiffness", "bend_stiffness", "damping", "kind", "handles", "handle_names", "velocity_limit"}
_CONTACT_KEYS = {"stiffness", "width", "friction", "eps_v"}
_PLANE_KEYS = {"normal", "offset", "point", "stiffness", "friction"}
_BOX_KEYS = {"center", "half_extents", "radius", "stiffness", "friction"}


def _scene_dir():
    return resources.files("warpsim_rl.scenes")


def scene_names() -> list[str]:
    """Names of the scenes shipped in ``scenes/``."""
    return sorted(p.name[:-5] for p in _scene_dir().iterdir() if p.name.endswith(".toml"))


def _substitute(value, params: dict, field: str, used: set | None = None):
    """Replace ``"$name"`` strings by parameter values, recursively; the names of the
    parameters used are added to ``used``."""
    if isinstance(value, str) and value.startswith("$"):
        key = value[1:]
        if key not in params:
            raise SceneError(f"{field} = {value!r}: unknown parameter (known: {sorted(params)})")
        if used is not None:
            used.add(key)
        return params[key]
    if isinstance(value, list):
        return [_substitute(v, params, f"{field}[{i}]", used) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, params, f"{field}.{k}" if field else k, used) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _entry(name: str, refs: dict, params: dict, overrides: dict):
    """Re-raise a :class:`SceneError` from the builder calls of TOML entry ``name`` (``"scene"``,
    ``"chains[0]"``, ...) naming the ``"$parameters"`` that entry used: the overrides passed to
    :func:`load_scene` among them, or else all of them (the builder names only the derived field,
    e.g. ``particles[1].mass`` for a chain built from ``$particle_mass``)."""
    try:
        yield
    except SceneError as e:
        used = sorted(refs.get(name, ()))
        given = [k for k in used if k in overrides]
        if not used:
            raise
        if given:
            why = ", ".join(f"{k} = {params[k]!r}" for k in given)
            note = f"{name} uses the parameter override{'s' if len(given) > 1 else ''} {why}"
        else:
            why = ", ".join(f"{k} = {params[k]!r}" for k in used)
            note = f"{name} uses [parameters] {why}"
        raise SceneError(f"{e} ({note})") from None


def _check_keys(table: dict, allowed: set, field: str):
    if not isinstance(table, dict):
        raise SceneError(f"{field} = {table!r}: expected a table")
    extra = set(table) - allowed
    if extra:
        raise SceneError(f"{field}: unknown key(s) {sorted(extra)} (allowed: {sorted(allowed)})")


def _require(table: dict, key: str, field: str):
    if key not in table:
        raise SceneError(f"{field}.{key}: missing")
    return table[key]


def scene_from_dict(data: dict, source: str = "<dict>", **overrides) -> Scene:
    """Build a :class:`Scene` from a parsed TOML document. ``overrides`` replace entries of the
    ``[parameters]`` table (unknown ones raise)."""
    try:
        return _scene_from_dict(data, **overrides)
    except SceneError as e:
        raise SceneError(f"{source}: {e}") from None


def _scene_from_dict(data: dict, **overrides) -> Scene:
    _check_keys(data, _TOP_KEYS, "<top level>")
    params = dict(data.get("parameters", {}))
    unknown = set(overrides) - set(params)
    if unknown:
        raise SceneError(f"parameters: unknown override(s) {sorted(unknown)} (known: {sorted(params)})")
    params.update(overrides)
    # substitute "$name" per entry, recording which parameters each entry uses (error messages)
    refs: dict[str, set] = {}
    subst = {}
    for key, val in data.items():
        if key == "parameters":
            continue
        if isinstance(val, list):
            subst[key] = []
            for i, item in enumerate(val):
                refs[f"{key}[{i}]"] = used = set()
                subst[key].append(_substitute(item, params, f"{key}[{i}]", used))
        else:
            refs[key] = used = set()
            subst[key] = _substitute(val, params, key, used)
    data = subst

    def entry(name):
        return _entry(name, refs, params, overrides)

    sc = data.get("scene")
    if sc is None:
        raise SceneError("[scene]: missing table")
    _check_keys(sc, _SCENE_KEYS, "scene")
    with entry("scene"):
        b = SceneBuilder(_require(sc, "name", "scene"), dim=_require(sc, "dim", "scene"),
                         dt=_require(sc, "dt", "scene"), gravity=sc.get("gravity"),
                         description=sc.get("description", ""))
    b.parameters = params
    if "solver" in data:
        _check_keys(data["solver"], {"max_iters", "tol", "line_search_max", "lte_fraction"}, "solver")
        with entry("solver"):
            b.set_solver(**data["solver"])
    if "contact" in data:
        _check_keys(data["contact"], _CONTACT_KEYS, "contact")
        with entry("contact"):
            b.set_contact(**data["contact"])
    for i, p in enumerate(data.get("particles", [])):
        f = f"particles[{i}]"
        _check_keys(p, _PARTICLE_KEYS, f)
        if not isinstance(p.get("handle", False), bool):
            raise SceneError(f"{f}.handle = {p['handle']!r}: expected true or false")
        with entry(f):
            if p.get("handle", False):
                for bad in ("mass", "velocity"):
                    if bad in p:
                        raise SceneError(f"{f}.{bad}: a handle is kinematic and takes no {bad}")
                b.add_handle(_require(p, "position", f), _require(p, "velocity_limit", f), name=p.get("name", ""))
            else:
                if "velocity_limit" in p:
                    raise SceneError(f"{f}.velocity_limit: only handles (handle = true) take a velocity limit")
                b.add_particle(_require(p, "position", f), _require(p, "mass", f), p.get("velocity"),
                               name=p.get("name", ""))
    for i, gr in enumerate(data.get("grids", [])):
        f = f"grids[{i}]"
        _check_keys(gr, _GRID_KEYS, f)
        opt = {k: gr[k] for k in ("shear_stiffness", "bend_stiffness", "damping", "kind", "handles", "handle_names",
                                  "velocity_limit", "anchor", "spacing") if k in gr}
        with entry(f):
            b.add_grid(_require(gr, "origin", f), _require(gr, "rows", f), _require(gr, "cols", f),
                       _require(gr, "col_step", f), _require(gr, "row_step", f), _require(gr, "mass", f),
                       _require(gr, "stiffness", f), name=gr.get("name", f"grid{i}"), **opt)
    for i, c in enumerate(data.get("chains", [])):
        f = f"chains[{i}]"
        _check_keys(c, _CHAIN_KEYS, f)
        with entry(f):
            b.add_chain(_require(c, "start", f), _require(c, "end", f), _require(c, "segments", f),
                        _require(c, "mass", f), _require(c, "stiffness", f), c.get("damping", 0.0),
                        c.get("kind", "bilateral"), name=c.get("name", f"chain{i}_"))
    for i, s in enumerate(data.get("springs", [])):
        f = f"springs[{i}]"
        _check_keys(s, _SPRING_KEYS, f)
        ends = _require(s, "particles", f)
        if not isinstance(ends, list) or len(ends) != 2:
            raise SceneError(f"{f}.particles = {ends!r}: expected two particle indices or names")
        with entry(f):
            b.add_spring(ends[0], ends[1], _require(s, "stiffness", f), s.get("rest_length"),
                         s.get("damping", 0.0), s.get("kind", "bilateral"))
    for i, p in enumerate(data.get("planes", [])):
        f = f"planes[{i}]"
        _check_keys(p, _PLANE_KEYS, f)
        with entry(f):
            b.add_plane(_require(p, "normal", f), p.get("offset"), p.get("point"), p.get("stiffness"),
                        p.get("friction"))
    for i, bx in enumerate(data.get("boxes", [])):
        f = f"boxes[{i}]"
        _check_keys(bx, _BOX_KEYS, f)
        with entry(f):
            b.add_box(_require(bx, "center", f), _require(bx, "half_extents", f), bx.get("radius", 0.0),
                      bx.get("stiffness"), bx.get("friction"))
    return b.finalize()


def load_scene(name_or_path: str | Path, **parameters) -> Scene:
    """Load a shipped scene by name (see :func:`scene_names`) or a TOML file by path.

    Keyword arguments override the scene's ``[parameters]`` (e.g. ``num_particles=30`` for
    ``rope3d``).
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SceneError(f"scene file {str(path)!r} does not exist")
        text, source = path.read_text(), str(path)
    else:
        names = scene_names()
        if str(name_or_path) not in names:
            raise SceneError(f"unknown scene {str(name_or_path)!r}; known scenes: {names}")
        res = _scene_dir() / f"{name_or_path}.toml"
        text, source = res.read_text(), f"scenes/{name_or_path}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SceneError(f"{source}: malformed TOML: {e}") from None
    return scene_from_dict(data, source, **parameters)
