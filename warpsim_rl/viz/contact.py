"""Pictures of the contact scenes for ``docs/contact.md`` and ``docs/envs.md``, drawn with
:func:`warpsim_rl.viz.preview.render_preview`:

* ``env_cloth_table.png``: the scripted laying of the cloth
  (:func:`~warpsim_rl.tasks.place.cloth_lay_actions`) at two speeds, side view (z–y);
* ``env_cloth_table_top.png``: the slower laying from above (x–z);
* ``env_wall_pendulum2d.png``: the bob thrown into the wall at three wall stiffnesses.

``python -m warpsim_rl.viz docs/images`` renders them with the other documentation pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..scene import load_scene
from ..tasks.place import cloth_lay_actions
from .geometry import grid_faces
from .preview import render_preview

__all__ = ["render_contact_pictures"]


def render_contact_pictures(out_dir) -> list[Path]:
    """Render the three contact pictures (module doc) into ``out_dir``; returns the paths."""
    from ..sim import Simulator
    from ..usd import record_rollout

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    # cloth_table: two envs, the scripted laying and a variant sweeping twice as fast
    sc = load_scene("cloth_table")
    T = 125
    acts = np.stack([cloth_lay_actions(sc, T), cloth_lay_actions(sc, T, speed=0.6)], axis=1)
    xs = record_rollout(sc, 2, actions=acts).positions
    faces = grid_faces(sc.parameters["rows"], sc.parameters["cols"])
    paths.append(render_preview(sc, xs, out / "env_cloth_table.png", envs=2, frames=6, faces=faces, projection="zy",
                                title="cloth_table: laying the cloth on the table (side view, z-y); handles move "
                                      "down and back at 0.3 m/s (top) and 0.6 m/s (bottom)"))
    paths.append(render_preview(sc, xs[:, :1], out / "env_cloth_table_top.png", envs=1, frames=6, faces=faces,
                                projection="xz", title="cloth_table from above (x-z): the 0.3 m/s laying"))
    # wall_pendulum2d: the bob swung into the wall at three wall stiffnesses (one per env)
    sc = load_scene("wall_pendulum2d")
    vel = np.zeros((3,) + sc.velocities.shape)
    vel[:, 1] = [2.0, 0.0]
    model = sc.build(num_envs=3)
    model.set_contact_stiffness(np.array([[1e2], [1e3], [1e4]]))
    sim = Simulator(model)
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    xs = [s0.x.numpy().copy()]
    for _ in range(60):
        sim.step(s0, ctrl, s1)
        s0, s1 = s1, s0
        xs.append(s0.x.numpy().copy())
    paths.append(render_preview(sc, np.array(xs), out / "env_wall_pendulum2d.png", envs=3, frames=6,
                                title="wall_pendulum2d: bob thrown at 2 m/s into the wall at x = 0.4 m; "
                                      "rows: wall stiffness 1e2, 1e3, 1e4 N/m"))
    return paths
