"""Policy-optimisation algorithms on top of the differentiable simulator.

``ALGORITHMS`` maps the ``--algo`` names of ``train.py`` to constructors
``(task, cfg) -> Algorithm``:

* ``pods2`` / ``pods1`` — PODS second / first order (:mod:`.pods`);
* ``bptt`` — backpropagation through time (:mod:`.bptt`).
"""

from __future__ import annotations

from .base import Algorithm, TrainConfig
from .bptt import BPTT
from .pods import PODS

ALGORITHMS = {
    "pods2": lambda task, cfg: PODS(task, cfg, order=2),
    "pods1": lambda task, cfg: PODS(task, cfg, order=1),
    "bptt": BPTT,
}

__all__ = ["ALGORITHMS", "Algorithm", "TrainConfig", "PODS", "BPTT"]
