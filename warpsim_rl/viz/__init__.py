"""Pictures: every figure the project draws (matplotlib), and the helpers it shares with the USD
export.

* :mod:`~warpsim_rl.viz.geometry` — what every picture of a rollout shows: argument checks,
  spring tensions, the colour code, grid faces (shared with :mod:`warpsim_rl.usd`);
* :mod:`~warpsim_rl.viz.preview` — :func:`render_preview`, a PNG strip of snapshots of a rollout
  (``python -m warpsim_rl.usd --png``);
* :mod:`~warpsim_rl.viz.systems` — the system pictures of ``docs/envs.md`` (:func:`system_figure`,
  :func:`render_all`);
* :mod:`~warpsim_rl.viz.contact` — the contact-scene pictures (:func:`render_contact_pictures`);
* :mod:`~warpsim_rl.viz.curves` — learning curves: one run's (:func:`plot_learning_curve`, the
  ``learning_curve.png`` of ``train.py``) and over seeds (:func:`plot_compare`).

``python -m warpsim_rl.viz docs/images`` redraws the documentation pictures. The names above are
importable from ``warpsim_rl.viz`` directly; each module is imported on first use, so
``import warpsim_rl.viz`` loads neither matplotlib nor usd-core.
"""

from __future__ import annotations

import importlib

__all__ = ["render_preview", "system_figure", "render_all", "picture_name", "render_contact_pictures",
           "plot_compare", "plot_learning_curve", "grid_faces", "spring_tensions"]

_HOME = {"render_preview": "preview", "system_figure": "systems", "render_all": "systems",
         "picture_name": "systems", "render_contact_pictures": "contact", "plot_compare": "curves", "plot_learning_curve": "curves",
         "grid_faces": "geometry", "spring_tensions": "geometry"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
