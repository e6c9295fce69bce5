"""The "place" task kind: where the payload must end up, and the scripted motion that gets it there.

* :func:`cloth_place_target`: ``cloth_table``'s cloth laid flat on the table, optionally shifted
  (the target of ``cloth_table-place``);
* :func:`cloth_lay_actions`: handle velocities that lay the cloth flat on the table: lower the
  held edge until the hanging edge touches the table, then move it down and back (-z) along a
  45 degree line, so that the cloth is laid down progressively (the task's reference solution);
* :func:`place_target`: the target of a scene that has one (:data:`PLACE_TARGETS`), for
  :attr:`warpsim_rl.tasks.spec.Task.target`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..scene import Scene

__all__ = ["cloth_lay_actions", "cloth_place_target", "place_target", "PLACE_TARGETS"]


def cloth_lay_actions(scene: Scene, steps: int, drop: float = 0.1, speed: float = 0.3) -> np.ndarray:
    """(steps, 2, 3) handle velocities laying ``cloth_table``'s cloth: lower the held edge by
    ``drop`` m at 0.5 m/s until the hanging edge touches the table, then move it down and towards
    -z at ``speed`` m/s per axis (a 45 degree line), so that the cloth's hanging part stays
    vertical under the handles while the part on the table grows at ``speed``; stop when the held
    edge reaches the table top. Clipped to the handle limits."""
    dt = scene.dt
    length = float(scene.parameters["spacing"]) * (int(scene.parameters["rows"]) - 1)
    t_drop = drop / 0.5
    t_lay = length / speed
    acts = np.zeros((steps, scene.num_handles, 3))
    for t in range(steps):
        tt = (t + 0.5) * dt
        if tt < t_drop:
            acts[t] = [0.0, -0.5, 0.0]
        elif tt < t_drop + t_lay:
            acts[t] = [0.0, -speed, -speed]
    return np.clip(acts, -scene.velocity_limit[None], scene.velocity_limit[None])


def cloth_place_target(scene: Scene, offset=(0.0, 0.0)) -> np.ndarray:
    """(n, 3) positions of ``cloth_table``'s cloth laid flat on the table top, held edge (row 0,
    the handles) towards -z: particle ``(r, c)`` at ``x`` as in the scene, ``y`` = the table top,
    ``z = handle_z - (rows - 1 - r) spacing`` (row ``rows - 1`` lands under the initial handles),
    shifted by ``offset = (dx, dz)``. :func:`cloth_lay_actions` ends within 2 cm of it (0.2 mm in y)."""
    rows, cols = int(scene.parameters["rows"]), int(scene.parameters["cols"])
    sp, hz = float(scene.parameters["spacing"]), float(scene.parameters["handle_z"])
    box = scene.boxes[0]
    top = box.center[1] + box.half_extents[1]
    x = np.array(scene.positions, dtype=np.float64)
    r = np.repeat(np.arange(rows), cols)
    x[: rows * cols, 1] = top
    x[: rows * cols, 2] = hz - (rows - 1 - r) * sp
    x[: rows * cols, 0] += offset[0]
    x[: rows * cols, 2] += offset[1]
    return x


#: Scene name -> ``f(scene, (dx, dz)) -> (n, dim)``: the scenes with a "place" target.
PLACE_TARGETS: dict[str, Callable[[Scene, tuple[float, float]], np.ndarray]] = {"cloth_table": cloth_place_target}


def place_target(scene: Scene, offset=(0.0, 0.0)) -> np.ndarray:
    """(n, dim) positions of the "place" target of ``scene`` shifted by ``offset = (dx, dz)``;
    ``ValueError`` if the scene has none (:data:`PLACE_TARGETS`)."""
    if scene.name not in PLACE_TARGETS:
        raise ValueError(f"kind 'place' needs a place target; scene {scene.name!r} has none "
                         f"(scenes with one: {sorted(PLACE_TARGETS)})")
    return PLACE_TARGETS[scene.name](scene, offset)
