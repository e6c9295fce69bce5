"""Tasks: the PODS systems × {"stop", "stop-origin"} (PODS, Mora et al. ICML 2021, Sec. 4), and
the contact systems: ``cloth_table`` × {"stop", "place"} (PODS Fig. 5: lay a cloth on a table) and
``wall_pendulum2d`` × {"stop", "stop-origin"} (a pendulum next to a stiff wall).

A :class:`Task` is a scene plus everything that turns it into a control problem: the reward
weights of PODS Eq. 15, the horizon, the action limits, the initial-state distribution and a test
bed of 1000 initial states fixed by a seed. ``docs/envs.md`` lists every registered task and
explains each parameter choice.

Reward (PODS Eq. 15), per environment and step ``t``::

    r_t = - w_p ||p||^2 - w_x ||x||^2 - w_v ||v||^2 - w_a ||a_t||^2

* ``p`` (h, dim): handle positions relative to their *home* positions (the handle positions of
  the scene file; for the single-handle systems that is the world origin);
* ``x`` (k, dim): payload positions relative to their *target*: the static equilibrium of the
  payload hanging under the handles at home ("the origin" of "stop at origin"), or, for "place",
  the payload laid flat on the table (:func:`~warpsim_rl.tasks.place.cloth_place_target`);
* ``v`` (k, dim): payload velocities (world frame);
* ``a`` (h, dim): the action *as executed*, i.e. the commanded handle velocities clipped per axis
  to the action limits (the simulator clips the same way, so this is what the system did).

``p``, ``x`` and ``v`` are taken from the state *after* the step (``s_{t+1}``): every term of
``r_t`` then depends on ``a_t``, and the final state of a rollout is penalised. The payload is
every free (non-handle) particle. Norms are over the stacked vectors (sums over particles); the
registered weights divide by the particle counts so that systems of different size are
comparable (see :func:`task_names` and ``docs/envs.md``).

``c = -r`` is a diagonal quadratic, so its Hessian is constant: :meth:`Task.reward_derivatives`
returns the gradients of ``r`` with respect to the full simulator state
``s = [x, v, x_prev, v_prev]`` and the action, and the constant Hessian diagonals that PODS'
Gauss-Newton step (Eq. 13-14) needs.

Modules:

* :mod:`~warpsim_rl.tasks.spec` — :class:`Task`, :class:`Weights`, :class:`InitialStateDistribution`;
* :mod:`~warpsim_rl.tasks.rewards` — :func:`reward` and :func:`reward_gradients` on the parts;
* :mod:`~warpsim_rl.tasks.sampling` — the initial-state sampler behind
  :meth:`Task.sample_initial_states`;
* :mod:`~warpsim_rl.tasks.equilibria` — :func:`equilibrium`, the static equilibrium (targets);
* :mod:`~warpsim_rl.tasks.place` — the "place" target of ``cloth_table`` and the scripted laying
  that reaches it;
* :mod:`~warpsim_rl.tasks.registry` — the registered systems and tasks, :func:`make_task`, tasks
  on a user's scene file (``make_task("path/to/my_scene.toml:stop")``, :func:`custom_task`) and
  :func:`describe_tasks` (``python -m warpsim_rl.tasks`` prints it).
"""

from __future__ import annotations

from .equilibria import equilibrium
from .registry import (CONTACT_SYSTEMS, CUSTOM_KINDS, CUSTOM_SETTINGS, SYSTEMS, TASKS, custom_task, describe_tasks,
                       format_task_rows, make_task, parse_custom_task_name, system_kinds, task_name_problem, task_names)
from .rewards import reward, reward_gradients
from .spec import TASK_KINDS, TEST_BED_SIZE, InitialStateDistribution, Task, Weights

__all__ = [
    "Weights",
    "InitialStateDistribution",
    "Task",
    "TASKS",
    "TASK_KINDS",
    "SYSTEMS",
    "CONTACT_SYSTEMS",
    "system_kinds",
    "make_task",
    "task_names",
    "custom_task",
    "parse_custom_task_name",
    "task_name_problem",
    "describe_tasks",
    "format_task_rows",
    "CUSTOM_KINDS",
    "CUSTOM_SETTINGS",
    "reward",
    "reward_gradients",
    "equilibrium",
    "TEST_BED_SIZE",
]
