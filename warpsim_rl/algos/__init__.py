"""Policy-optimisation algorithms on top of the step core.

``ALGORITHMS`` maps the ``--algo`` names of ``train.py`` to ``(class, preset)``: the
:class:`~warpsim_rl.algos.base.Algorithm` subclass and the values of its ``Config`` that differ
from the dataclass defaults for that name. Adding an algorithm is one file (its ``Config``
dataclass and its ``Algorithm`` subclass) plus one line here (docs/algorithms.md).

* ``pods2`` / ``pods1`` — PODS second / first order (:mod:`.pods`, trajectory step in
  :mod:`.trajectory`);
* ``bptt`` — backpropagation through time (:mod:`.bptt`);
* ``zobg`` / ``fobg`` / ``aobg`` — zeroth- / first- / alpha-order policy gradients of the
  action-noise-smoothed return (Suh et al. 2022; :mod:`.estimator_pg`);
* ``ppo`` / ``sac`` / ``ddpg`` — skrl's agents on the same step core, the model-free baselines of
  PODS Table 1 (:mod:`.skrl_baselines`);
* ``shac`` — short-horizon actor-critic (Xu et al. 2022; :mod:`.shac`); ``agpo`` — SHAC's windows
  with a twin-Q surrogate replacing the analytic gradient where its batch variance is larger
  (after Gao et al. 2024; :mod:`.agpo`);
* ``d3pg`` — DDPG whose critic also fits the simulator's gradients of its TD target (Qiao et al.,
  ICLR 2020 submission; :mod:`.d3pg`).
"""

from __future__ import annotations

import dataclasses

from .agpo import AGPO, AGPOConfig
from .base import STANDARD_METRICS, Algorithm
from .bptt import BPTT, BPTTConfig
from .config import AlgoConfig, RunConfig
from .d3pg import D3PG, D3PGConfig
from .estimator_pg import EstimatorConfig, EstimatorPG
from .evaluation import EVAL_KEYS, evaluate
from .pods import PODS, PODSConfig
from .shac import SHAC, SHACConfig
from .skrl_baselines import DDPGBaseline, DDPGConfig, PPOBaseline, PPOConfig, SACBaseline, SACConfig
from .trajectory import TrajectoryOptimizer, TrajectoryStepConfig

#: ``--algo`` name -> (Algorithm subclass, preset overrides of its Config)
ALGORITHMS: dict[str, tuple[type[Algorithm], dict]] = {
    "pods2": (PODS, {"order": 2}),
    "pods1": (PODS, {"order": 1}),
    "bptt": (BPTT, {}),
    "zobg": (EstimatorPG, {"method": "zobg", "lr": 3e-3}),
    "fobg": (EstimatorPG, {"method": "fobg"}),
    "aobg": (EstimatorPG, {"method": "aobg"}),
    "ppo": (PPOBaseline, {}),
    "sac": (SACBaseline, {}),
    "ddpg": (DDPGBaseline, {}),
    "d3pg": (D3PG, {}),
    "shac": (SHAC, {}),
    "agpo": (AGPO, {}),
}


def fixed_fields(name: str) -> dict:
    """The preset fields that define algorithm ``name`` (e.g. PODS' ``order``, the estimators'
    ``method``): every preset field that is not a shared ``AlgoConfig`` option. They cannot be
    overridden (``--algo pods1 --order 2`` would be PODS 2 under another name)."""
    shared = {f.name for f in dataclasses.fields(AlgoConfig)}
    return {k: v for k, v in ALGORITHMS[name][1].items() if k not in shared}


def algo_config(name: str, **overrides) -> AlgoConfig:
    """The config of algorithm ``name``: its class's defaults, then the registry's preset, then
    ``overrides`` (validated; unknown fields raise naming the algorithm's fields)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo = {name!r}: unknown; valid algorithms: {sorted(ALGORITHMS)}")
    cls, preset = ALGORITHMS[name]
    known = {f.name for f in dataclasses.fields(cls.Config)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"algo {name!r}: unknown option(s) {bad}; its options: {sorted(known)}")
    for key, value in fixed_fields(name).items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{key} = {overrides[key]!r}: algo {name!r} is defined by {key} = {value!r}; "
                             f"choose another algorithm name instead")
    return cls.Config(**{**preset, **overrides})


def make_algorithm(task, run: RunConfig, cfg: AlgoConfig | None = None) -> Algorithm:
    """The algorithm ``run.algo`` on ``task`` (``cfg`` defaults to :func:`algo_config`)."""
    cls, _ = ALGORITHMS[run.algo] if run.algo in ALGORITHMS else (None, None)
    if cls is None:
        raise ValueError(f"algo = {run.algo!r}: unknown; valid algorithms: {sorted(ALGORITHMS)}")
    return cls(task, run, cfg if cfg is not None else algo_config(run.algo))


__all__ = ["ALGORITHMS", "STANDARD_METRICS", "EVAL_KEYS", "Algorithm", "AlgoConfig", "RunConfig", "PODS",
           "PODSConfig", "BPTT", "BPTTConfig", "EstimatorPG", "EstimatorConfig", "PPOBaseline", "PPOConfig", "SACBaseline", "SACConfig",
           "DDPGBaseline", "DDPGConfig", "D3PG", "D3PGConfig", "SHAC", "SHACConfig", "AGPO",
           "AGPOConfig", "TrajectoryOptimizer",
           "TrajectoryStepConfig", "algo_config", "fixed_fields", "make_algorithm", "evaluate"]
