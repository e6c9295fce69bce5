"""The registered systems and tasks: :data:`TASKS`, :func:`make_task`, :func:`task_names`,
:func:`system_kinds` (``docs/envs.md`` explains every number)."""

from __future__ import annotations

import dataclasses

from ..scene import load_scene
from .spec import TASK_KINDS, InitialStateDistribution, Task, Weights

__all__ = ["SYSTEMS", "CONTACT_SYSTEMS", "TASKS", "system_kinds", "task_names", "make_task"]

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
