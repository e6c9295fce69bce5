"""The registered systems and tasks: :data:`TASKS`, :func:`make_task`, :func:`task_names`,
:func:`system_kinds` (``docs/envs.md`` explains every number), tasks on a user's scene file
(``make_task("path/to/my_scene.toml:stop")``, :data:`CUSTOM_KINDS`, ``docs/scenes.md``) and
:func:`describe_tasks`, the listing behind ``python -m warpsim_rl.tasks``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..scene import Scene, SceneError, load_scene, scene_names
from .spec import TASK_KINDS, InitialStateDistribution, Task, Weights

__all__ = ["SYSTEMS", "CONTACT_SYSTEMS", "TASKS", "CUSTOM_KINDS", "CUSTOM_SETTINGS", "system_kinds", "task_names",
           "make_task", "custom_task", "parse_custom_task_name", "task_name_problem", "describe_tasks",
           "format_task_rows"]

#: Every system with registered tasks: the PODS systems, then the contact systems.
SYSTEMS = ("pendulum2d", "pendulum3d", "double_pendulum3d", "cable_payload2d", "rope3d", "cloth_table",
           "wall_pendulum2d")
#: The systems with frictional contact (planes, boxes; docs/contact.md).
CONTACT_SYSTEMS = ("cloth_table", "wall_pendulum2d")

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

#: Task kinds of a task on a user's scene file (``"<path>.toml:<kind>"``).
CUSTOM_KINDS = ("stop", "stop-origin")
#: Defaults of a task on a user's scene file (the swing of ``rope3d`` and ``cable_payload2d``,
#: the angular speeds and offsets of most shipped systems): ``horizon_s`` seconds of simulated time (the horizon is
#: ``round(horizon_s / dt)`` steps: 100 at dt = 0.02 s), swing ``U(-swing, swing)`` rad about
#: the handle, no bend, angular speed ``U(*angular_speed)`` rad/s; the offset of "stop-origin"
#: is ``_STOP_ORIGIN_OFFSET`` (0.5 m per axis), "stop" has none; the test bed is
#: ``TEST_BED_SIZE`` states from seed ``test_bed_seed + TASK_KINDS.index(kind)``. Weights as
#: for the shipped systems (``_KIND_WEIGHTS``, divided by the handle / payload counts). Any field
#: can be replaced: ``make_task("my.toml:stop", horizon=50, init=InitialStateDistribution(...))``.
CUSTOM_SETTINGS = {"horizon_s": 2.0, "swing": 0.4, "bend": 0.0, "angular_speed": (0.5, 1.5), "test_bed_seed": 2000}


def system_kinds(system: str) -> tuple[str, ...]:
    """The task kinds registered for ``system`` (``("stop", "stop-origin")`` for most)."""
    if system not in _SYSTEM_SETTINGS:
        raise ValueError(f"unknown system {system!r}; known systems: {list(SYSTEMS)}")
    return _SYSTEM_KINDS.get(system, ("stop", "stop-origin"))


def _kind_offset(system: str, kind: str) -> float:
    """Initial-state offset (m, per axis) of ``kind`` on ``system`` (:data:`_SYSTEM_OFFSETS`; the
    default for any other ``system``, e.g. ``""`` for a scene file)."""
    return _SYSTEM_OFFSETS.get(system, {}).get(kind, _STOP_ORIGIN_OFFSET if kind == "stop-origin" else 0.0)


def _make(name: str, scene: Scene, scene_name: str, kind: str, description: str, horizon: int, swing: float,
          bend: float, speed, offset: float, swing_about: str, test_bed_seed: int) -> Task:
    """The task of ``kind`` on ``scene`` (loaded from ``scene_name``): the weights of
    :data:`_KIND_WEIGHTS` divided by the scene's handle / payload particle counts, ``w_a`` =
    :data:`_ACTION_WEIGHT` per handle. Shared by the registry and :func:`custom_task`."""
    sc_h, sc_k = scene.num_handles, len(scene.free_particles)  # weights per handle / payload particle
    wp_, wx_, wv_ = _KIND_WEIGHTS[kind]
    w = Weights(w_p=wp_ / sc_h, w_x=wx_ / sc_k, w_v=wv_ / sc_k, w_a=_ACTION_WEIGHT / sc_h)
    return Task(
        name=name, scene_name=scene_name, kind=kind, weights=w, horizon=horizon,
        init=InitialStateDistribution(swing, bend, speed, offset, swing_about),
        test_bed_seed=test_bed_seed, description=description + _KIND_GOALS[kind])


def _build_registry() -> dict[str, Task]:
    tasks = {}
    for system in SYSTEMS:
        desc, horizon, swing, bend, speed = _SYSTEM_SETTINGS[system]
        sc = load_scene(system)
        for kind in system_kinds(system):
            name = f"{system}-{kind}"
            tasks[name] = _make(name, sc, system, kind, desc, horizon, swing, bend, speed, _kind_offset(system, kind),
                                _SYSTEM_SWING.get(system, "handle"), _TEST_BED_SEEDS[system] + TASK_KINDS.index(kind))
    return tasks


#: All registered tasks by name, ``<system>-<kind>`` (:func:`system_kinds`).
TASKS: dict[str, Task] = _build_registry()


def task_names() -> list[str]:
    """Names of the registered tasks."""
    return list(TASKS)


def parse_custom_task_name(name) -> tuple[str, str] | None:
    """``(path, kind)`` of a task name on a user's scene file, ``"<path>.toml:<kind>"`` (split at
    the last ``:``), or ``None`` for any other name. Checks nothing else."""
    if not isinstance(name, str) or ":" not in name:
        return None
    path, kind = name.rsplit(":", 1)
    if not path.endswith(".toml"):
        return None
    return path, kind


def custom_task(path: str | Path, kind: str, name: str | None = None) -> Task:
    """The task of ``kind`` (:data:`CUSTOM_KINDS`) on the scene file ``path``, with the defaults of
    :data:`CUSTOM_SETTINGS` (what ``make_task("<path>:<kind>")`` returns). ``name`` defaults to
    ``f"{path}:{kind}"``; the task's ``scene_name`` is the absolute path. Raises ``ValueError``
    (:class:`~warpsim_rl.scene.SceneError` for the file) naming the problem: no such file, an
    invalid scene, an unknown kind, a scene without handles (nothing to act on)."""
    spec = f"{path}:{kind}"
    if kind not in CUSTOM_KINDS:
        raise ValueError(f"task {spec!r}: unknown kind {kind!r} for a scene file; kinds: {list(CUSTOM_KINDS)}")
    p = Path(path)
    if not p.is_file():
        raise SceneError(f"task {spec!r}: scene file {str(p)!r} does not exist")
    sc = load_scene(p)
    if sc.num_handles == 0:
        raise SceneError(f"task {spec!r}: scene {sc.name!r} has no handle (a particle with handle = true), "
                         "so there is nothing to act on")
    cs = CUSTOM_SETTINGS
    desc = sc.description or f"scene {sc.name!r} from {p.name}"
    return _make(spec if name is None else name, sc, str(p.resolve()), kind, desc,
                 max(1, round(cs["horizon_s"] / sc.dt)), cs["swing"], cs["bend"], cs["angular_speed"],
                 _kind_offset("", kind), "handle", cs["test_bed_seed"] + TASK_KINDS.index(kind))


def _custom_hint(name) -> str:
    """What to write instead of ``name``, an unknown task name."""
    if isinstance(name, str) and name.endswith(".toml"):
        return (f"a scene file needs a task kind: '{name}:<kind>' with kind in {list(CUSTOM_KINDS)} "
                "(docs/scenes.md)")
    return f"or '<path>.toml:<kind>' for a scene file, kind in {list(CUSTOM_KINDS)} (docs/scenes.md)"


def _unknown_message(name) -> str:
    return f"unknown task {name!r}; known tasks: {task_names()}; {_custom_hint(name)}"


def make_task(name: str | Task, /, **overrides) -> Task:
    """The registered task ``name``, or the task ``"<path>.toml:<kind>"`` on a scene file
    (:func:`custom_task`); keyword arguments replace fields (e.g. ``horizon=50``, ``name="mine"``).
    An unknown name raises ``ValueError`` listing the known ones."""
    if isinstance(name, Task):
        task = name
    elif name in TASKS:
        task = TASKS[name]
    elif (custom := parse_custom_task_name(name)) is not None:
        task = custom_task(*custom)
    else:
        raise ValueError(_unknown_message(name))
    if overrides:
        known = {f.name for f in dataclasses.fields(Task)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"make_task: unknown Task field(s) {bad} (known: {sorted(known)})")
        task = dataclasses.replace(task, **overrides)
    return task


def task_name_problem(name) -> str | None:
    """``None`` if ``make_task(name)`` succeeds, else what is wrong (for ``RunConfig.env``): not a
    string; an unknown name (listing the valid ones); for ``"<path>.toml:<kind>"``, the problem
    with the file or the kind. Loads a scene file (to validate it), nothing else."""
    if not isinstance(name, str) or not name:
        return "expected a task name (docs/envs.md) or '<path>.toml:<kind>'"
    if name in TASKS:
        return None
    if parse_custom_task_name(name) is None:
        return f"unknown; valid environments: {task_names()}; {_custom_hint(name)}"
    try:
        make_task(name)
    except ValueError as e:
        return str(e)
    return None


def describe_tasks(names=None, scenes: bool = True) -> list[dict]:
    """Rows describing tasks and scenes, as ``python -m warpsim_rl.tasks`` prints them.

    ``names``: task names (registered or ``"<path>.toml:<kind>"``) to describe, default every
    registered task; ``scenes``: also one row per shipped scene (default). Each row is a dict:
    ``type`` ("task" or "scene"), ``name``, ``scene`` (scene name), ``dim``, ``handles`` and
    ``payload`` (particle counts), ``obs_dim``, ``action_dim``, ``horizon`` (steps; ``None`` for a scene),
    ``dt`` (s), ``kinds`` (the task's kind, or the kinds registered on the scene), ``description``
    (one line). A scene row's ``obs_dim``/``action_dim`` are those of every task on it. Builds
    no model and runs no kernel (task rows reuse the registry's task objects)."""
    rows = []
    for n in (task_names() if names is None else list(names)):
        t = make_task(n)
        sc = t.scene
        rows.append({"type": "task", "name": t.name, "scene": sc.name, "dim": t.dim,
                     "handles": t.num_handles, "payload": t.num_payload, "obs_dim": t.obs_dim,
                     "action_dim": t.action_dim, "horizon": t.horizon, "dt": t.dt, "kinds": (t.kind,),
                     "description": t.description})
    if scenes:
        for s in scene_names():
            sc = load_scene(s)
            h, k = sc.num_handles, len(sc.free_particles)
            kinds = system_kinds(s) if s in _SYSTEM_SETTINGS else ()
            rows.append({"type": "scene", "name": s, "scene": s, "dim": sc.dim, "handles": h, "payload": k,
                         "obs_dim": (h + 2 * k) * sc.dim, "action_dim": h * sc.dim, "horizon": None,
                         "dt": float(sc.dt), "kinds": tuple(kinds), "description": sc.description})
    return rows


_COLUMNS = (("name", "name"), ("dim", "dim"), ("particles", "handles + payload"), ("obs_dim", "obs"),
            ("action_dim", "action"), ("horizon", "horizon"), ("dt", "dt [s]"), ("description", "description"))


def format_task_rows(rows: list[dict]) -> str:
    """A plain-text table of :func:`describe_tasks` rows, what ``python -m warpsim_rl.tasks``
    prints: tasks, then scenes, each under a heading; ``-`` where a field does not apply (a scene
    has no horizon)."""
    out = []
    for kind, title in (("task", "Tasks"), ("scene", "Scenes")):
        part = [r for r in rows if r["type"] == kind]
        if not part:
            continue
        cells = [[h for _, h in _COLUMNS]]
        for r in part:
            r = {**r, "particles": f"{r['handles']} + {r['payload']}"}
            cells.append(["-" if r[k] is None else (f"{r[k]:g}" if k == "dt" else str(r[k])) for k, _ in _COLUMNS])
        widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
        if out:
            out.append("")
        out.append(f"{title} ({len(part)})")
        for i, c in enumerate(cells):
            out.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
