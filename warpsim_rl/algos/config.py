"""Configuration: one run-level dataclass and one dataclass per algorithm (CleanRL style).

:class:`RunConfig` holds what every run has (task, algorithm name, environments, epochs, device,
precision, seed, output folder, horizon, evaluation cadence, USD export). Each algorithm defines
its own dataclass next to its code, derived from :class:`AlgoConfig` (the actor's widths and
observation normalisation — identical for every algorithm so that a seed gives every method the
same initial policy — and the learning rate and its schedule). Every field has a real default or
``None`` (documented), is validated in ``__post_init__`` with an error naming the field and the
value, and carries a docstring (the string right after it) that ``train.py --help`` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
from pathlib import PurePath
from typing import ClassVar

from ..shards import check_threads
from .schedules import LR_SCHEDULES

__all__ = ["RunConfig", "AlgoConfig", "field_docs", "check_int", "check_positive", "check_choice", "check_bool",
           "check_range", "check_unit", "check_widths"]


def check_int(name: str, value, minimum: int) -> None:
    """``value`` must be an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} = {value!r}: must be an integer >= {minimum}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    """``value`` must be a finite number ``> 0`` (or ``>= 0``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} = {value!r}: must be a finite number {'>= 0' if allow_zero else '> 0'}")


def check_range(name: str, value, low: float, high: float) -> None:
    """``value`` must lie in the open interval ``(low, high)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{name} = {value!r}: must be in ({low}, {high})")


def check_widths(name: str, widths) -> tuple[int, ...]:
    """``widths`` (a tuple or list of layer widths, each an integer >= 1) as a tuple."""
    if isinstance(widths, list):
        widths = tuple(widths)
    if not isinstance(widths, tuple) or not widths:
        raise ValueError(f"{name} = {widths!r}: expected one or more layer widths")
    for i, w in enumerate(widths):
        check_int(f"{name}[{i}]", w, 1)
    return widths


def check_unit(name: str, value, low_open: bool = False) -> None:
    """``value`` must be a number in ``[0, 1]`` (``(0, 1]`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (0.0 < value if low_open else 0.0 <= value) and value <= 1.0
    if not ok:
        raise ValueError(f"{name} = {value!r}: must be in {'(0' if low_open else '[0'}, 1]")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} = {value!r}: must be one of {sorted(choices)}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} = {value!r}: must be true or false")


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass and its bases: the string literal that follows each
    annotated field in the class body (the convention of CleanRL's configs and tyro)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - classes without source
            continue
        body = tree.body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


@dataclasses.dataclass
class RunConfig:
    """What every training run has, whatever the algorithm."""

    env: str = "pendulum2d-stop"
    """registered task name (python -m warpsim_rl.tasks lists them; docs/envs.md), or PATH.toml:stop /
    PATH.toml:stop-origin for a scene file (docs/scenes.md)"""
    algo: str = "pods2"
    """algorithm (see docs/algorithms.md); its own options are listed under 'algorithm options'"""
    num_envs: int = 256
    """parallel environments (rollouts per epoch; PODS' k)"""
    epochs: int = 30
    """training epochs"""
    device: str = "cpu"
    """Warp/torch device ('cpu', 'cuda:0')"""
    dtype: str = "float32"
    """simulation and network precision: 'float32' or 'float64'"""
    seed: int = 0
    """seeds the initial states, the noise and the network weights"""
    out: str | None = None
    """output folder (default runs/<env>-<algo>-s<seed>)"""
    horizon: int | None = None
    """rollout length in steps (default: the task's horizon)"""
    eval_every: int = 5
    """epochs between test-bed evaluations (0: only at the end)"""
    usd_envs: int = 16
    """test-bed rollouts exported to eval.usdc at the end (0: none)"""
    threads: int | None = None
    """CPU threads launching the simulator on shards of the envs (default: the available cores; 1 on
    CUDA); results do not depend on it"""
    eval_every_s: float | None = None
    """evaluate after the first epoch that completes each further ``eval_every_s`` seconds of training
    time on ``budget_clock`` (in addition to ``eval_every``; for runs with a time budget, where epochs
    differ in length by orders of magnitude between algorithms)"""
    eval_at_s: tuple[float, ...] = ()
    """training times (s of ``budget_clock``) to evaluate after too, each after the first epoch that
    completes it (in addition to ``eval_every`` and ``eval_every_s``; e.g. a few early ones, so that
    a fast method's time to a reward is resolved finer than ``eval_every_s``)"""
    budget_s: float | None = None
    """training budget in seconds of ``budget_clock`` (evaluation excluded): the run stops after the
    epoch that reaches it, or at ``epochs``, whichever comes first; a linear learning-rate schedule
    then follows the larger of the epoch fraction and the budget fraction (so its numbers depend on
    timing)"""
    budget_clock: str = "wall"
    """the clock of ``budget_s`` and ``eval_every_s``: 'wall' (elapsed time) or 'cpu' (this process's
    CPU time: with one thread, the compute spent whatever else shares the machine)"""
    scene_params: tuple[str, ...] = ()
    """overrides of the task's scene parameters, NAME=VALUE each (e.g. wall_stiffness=1e5 for
    wall_pendulum2d; docs/scenes.md lists a scene's parameters)"""

    def __post_init__(self):
        from ..tasks import task_name_problem

        problem = task_name_problem(self.env)  # a registered name, or '<path>.toml:<kind>' (file checked)
        if problem is not None:
            raise ValueError(f"env = {self.env!r}: {problem}")
        self.scene_params = tuple(self.scene_params)  # a list when read back from config.json
        self.scene_overrides()  # the format, and the names against the scene's parameters
        check_int("num_envs", self.num_envs, 1)
        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0)
        check_int("eval_every", self.eval_every, 0)
        check_int("usd_envs", self.usd_envs, 0)
        if self.horizon is not None:
            check_int("horizon", self.horizon, 1)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        check_threads(self.threads)
        if self.eval_every_s is not None:
            check_positive("eval_every_s", self.eval_every_s)
        if not isinstance(self.eval_at_s, (list, tuple)):
            raise ValueError(f"eval_at_s = {self.eval_at_s!r}: expected a list of training times in seconds")
        self.eval_at_s = tuple(self.eval_at_s)  # a list when read back from config.json
        for i, t in enumerate(self.eval_at_s):
            check_positive(f"eval_at_s[{i}]", t)
        if self.budget_s is not None:
            check_positive("budget_s", self.budget_s)
        check_choice("budget_clock", self.budget_clock, ("wall", "cpu"))
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device = {self.device!r}: expected a device name such as 'cpu' or 'cuda:0'")
        if self.out is not None and (not isinstance(self.out, str) or not self.out):
            raise ValueError(f"out = {self.out!r}: expected a folder path")
        if not isinstance(self.algo, str):
            raise ValueError(f"algo = {self.algo!r}: expected an algorithm name")

    def scene_overrides(self) -> tuple[tuple[str, float], ...]:
        """``scene_params`` as ``(name, value)`` pairs for :func:`~warpsim_rl.tasks.make_task`;
        ValueError naming the entry that is not NAME=NUMBER or names no parameter of the scene."""
        pairs = []
        for item in self.scene_params:
            name, sep, value = str(item).partition("=")
            try:
                number = float(value)
            except ValueError:
                number = None
            if not sep or not name.strip() or number is None:
                raise ValueError(f"scene_params: {item!r}: expected NAME=NUMBER, e.g. wall_stiffness=1e5")
            pairs.append((name.strip(), number))
        if pairs:
            from ..scene import SceneError
            from ..tasks import make_task

            try:
                make_task(self.env, scene_params=tuple(pairs)).scene
            except SceneError as e:
                raise ValueError(f"scene_params = {list(self.scene_params)}: {e}") from None
        return tuple(pairs)

    @property
    def out_dir(self) -> str:
        """The output folder: ``out`` or ``runs/<env>-<algo>-s<seed>`` (for a custom scene
        ``path/to/crane.toml:stop``, ``<env>`` is ``crane-stop``)."""
        if self.out:
            return self.out
        env = self.env
        if ":" in env:
            path, kind = env.rsplit(":", 1)
            env = f"{PurePath(path).stem}-{kind}"
        return f"runs/{env}-{self.algo}-s{self.seed}"


@dataclasses.dataclass
class AlgoConfig:
    """Options every algorithm has: the actor network and its optimiser."""

    #: fields added after runs were first saved, each with the behaviour a stored configuration
    #: that lacks it ran with (:func:`warpsim_rl.training.configs_from_checkpoint` fills them in, so
    #: an old run resumes as it ran, not with a later default); a class attribute, not a field
    LEGACY: ClassVar[dict] = {}

    hidden: tuple[int, ...] = (64, 64)
    """actor MLP hidden widths (the same for every algorithm: identical initial policies per seed)"""
    normalize_obs: bool = True
    """standardise observations with running statistics (saved with the policy)"""
    lr: float = 1e-3
    """Adam learning rate of the actor"""
    lr_schedule: str = "constant"
    """'constant', or 'linear' (to 0 over the epochs, CleanRL's anneal_lr)"""

    def __post_init__(self):
        self.hidden = check_widths("hidden", self.hidden)
        check_bool("normalize_obs", self.normalize_obs)
        check_positive("lr", self.lr)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
