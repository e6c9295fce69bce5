"""Policy-optimisation algorithms on top of the differentiable simulator.

``ALGORITHMS`` maps the ``--algo`` names of ``train.py`` to constructors
``(task, cfg) -> Algorithm``:

* ``pods2`` / ``pods1`` — PODS second / first order (:mod:`.pods`);
* ``bptt`` — backpropagation through time (:mod:`.bptt`);
* ``zobg`` / ``fobg`` / ``aobg`` — zeroth- / first- / alpha-order policy gradients of the
  action-noise-smoothed return (Suh et al. 2022; :mod:`.estimator_pg`).
"""

from __future__ import annotations

from .base import Algorithm, TrainConfig
from .bptt import BPTT
from .estimator_pg import EstimatorPG
from .pods import PODS

ALGORITHMS = {
    "pods2": lambda task, cfg: PODS(task, cfg, order=2),
    "pods1": lambda task, cfg: PODS(task, cfg, order=1),
    "bptt": BPTT,
    "zobg": lambda task, cfg: EstimatorPG(task, cfg, "zobg"),
    "fobg": lambda task, cfg: EstimatorPG(task, cfg, "fobg"),
    "aobg": lambda task, cfg: EstimatorPG(task, cfg, "aobg"),
}

__all__ = ["ALGORITHMS", "Algorithm", "TrainConfig", "PODS", "BPTT", "EstimatorPG"]
