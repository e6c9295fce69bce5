"""Exact derivatives of the simulator: implicit-function-theorem adjoints on ``wp.Tape``, dense
per-step Jacobians, and a zero-copy ``torch.autograd.Function`` bridge.

* :meth:`Differentiator.vjp` / :meth:`Differentiator.jacobians` launch the kernels of
  ``kernels/adjoint.py`` (one factorisation of the exact Hessian per env and step; no
  differentiation through Newton iterations).
* :meth:`Differentiator.step_tape` advances Warp ``State`` objects and records the step's
  adjoint on a ``wp.Tape`` (``tape.record_func``), so ``tape.backward()`` through a T-step
  rollout fills ``state.x.grad`` etc. Use distinct ``State`` objects per step: the adjoint reads
  the forward values at backward time.
* :func:`step` / :class:`TorchSimulator` take torch tensors: ``loss.backward()`` works through
  any number of steps; :meth:`TorchSimulator.rollout` returns the states it is asked for
  (``keep``) and optionally checkpoints segments (:func:`recomputed`: their forward passes are
  recomputed in the backward pass) for long horizons, in time linear in T.

Failures are never silent: a backward pass through a step whose Newton solve did not converge,
or whose exact Hessian is not positive definite at the solution, raises :class:`GradientError`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import warp as wp
from torch.utils.checkpoint import checkpoint

from .kernels.adjoint import adjoint_kernels
from .kernels.bdf2 import STATUS_NAMES, STATUS_OK
from .kernels.linalg import fixed_band
from .model import Control, Model, State, scratch_array
from .shards import env_columns, env_rows
from .sim import ActionError, Simulator
from .views import TensorViews

__all__ = ["Differentiator", "GradientError", "TorchSimulator", "recomputed"]


class GradientError(RuntimeError):
    """The derivative of a step cannot be computed (non-converged step or singular Hessian)."""


class Differentiator:
    """Adjoint and Jacobian launches for one :class:`~warpsim_rl.sim.Simulator`.

    Scratch is allocated once. ``ok`` (E,) int32 holds, after each launch, 1 where the exact
    Hessian factorised."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        m = self.model = sim.model
        E, d = m.num_envs, m.device
        self.kernels = adjoint_kernels(m.dtype, m.dim, m.num_geometries > 0, fixed_band(m.band))
        self._scratch = m.newton_scratch()
        self._scratch_sizes = (m.num_dofs, m.band)
        self._W = None  # (N * N, E) inverse of the Hessian, allocated by the first jacobians()
        self._adj_xh = wp.zeros((E, m.num_particles), dtype=m.vec, device=d)
        self._adj_vh = wp.zeros((E, m.num_particles), dtype=m.vec, device=d)
        self.ok = wp.zeros(E, dtype=wp.int32, device=d)

    def vjp(self, arrays_in, action, arrays_out, adj_out, adj_in, adj_action, adj_stiffness, adj_mass,
            stiffness=None, mass=None) -> None:
        """Accumulate ``(ds'/d(s, a, k, m))^T adj_out`` into ``adj_in`` (4 arrays), ``adj_action``,
        ``adj_stiffness`` (E, m) and ``adj_mass`` (E, n). ``arrays_out`` are the converged outputs
        of the forward step from ``arrays_in``/``action``."""
        m = self._checked_model()
        mass = m.mass if mass is None else mass
        stiffness = m.stiffness if stiffness is None else stiffness

        def args(e0, e1):
            def rows(arrays):
                return m.state_data([env_rows(a, e0, e1) for a in arrays])

            own = self._own_views(e0, e1)
            return ([m.data_shard(e0, e1), env_rows(mass, e0, e1), env_rows(stiffness, e0, e1), rows(arrays_in),
                     env_rows(action, e0, e1), rows(arrays_out), rows(adj_out), own["scratch"], own["adj_xh"],
                     own["adj_vh"]],
                    [rows(adj_in), *(env_rows(a, e0, e1) for a in (adj_action, adj_stiffness, adj_mass)), own["ok"]])

        m.shards.launch(self.kernels.bdf2_vjp, args, self._site("vjp"))

    def jacobians(self, arrays_in, action, arrays_out, A: wp.array, B: wp.array,
                  stiffness=None, mass=None) -> None:
        """Write ``A = ds'/ds`` (E, ns, ns) and ``B = ds'/da`` (E, ns, na) on the Markov state
        ``s = [x_f, v_f, x_prev_f, v_prev_f, x_h]`` (``model.num_state``; docs/api.md). Every
        entry is written (the buffers need no zeroing); envs whose exact Hessian does not
        factorise (``ok[e] == 0``) get zeros."""
        m = self._checked_model()
        if self._W is None:
            self._W = scratch_array(m.num_dofs * m.num_dofs, m.num_envs, m.dtype, m.device)
        mass = m.mass if mass is None else mass
        stiffness = m.stiffness if stiffness is None else stiffness

        def args(e0, e1):
            return ([m.data_shard(e0, e1), env_rows(mass, e0, e1), env_rows(stiffness, e0, e1),
                     m.state_data([env_rows(a, e0, e1) for a in arrays_in]), env_rows(action, e0, e1),
                     m.state_data([env_rows(a, e0, e1) for a in arrays_out]), self._own_views(e0, e1)["scratch"],
                     self._own_views(e0, e1)["W"]],
                    [env_rows(A, e0, e1), env_rows(B, e0, e1), self._own_views(e0, e1)["ok"]])

        m.shards.launch(self.kernels.bdf2_jacobian, args, self._site("jacobian"))

    def _own_views(self, e0: int, e1: int) -> dict:
        """Views of environments ``[e0, e1)`` of this differentiator's own arrays (scratch, handle
        adjoints, ``ok``, the Jacobian's ``W``), built once per range."""
        views = self.__dict__.setdefault("_views", {})
        key = (e0, e1, self._W is not None)
        if key not in views:
            m = self.model
            views[key] = {"scratch": m.scratch_shard(self._scratch, e0, e1),
                          "adj_xh": env_rows(self._adj_xh, e0, e1), "adj_vh": env_rows(self._adj_vh, e0, e1),
                          "ok": env_rows(self.ok, e0, e1),
                          "W": env_columns(self._W, e0, e1) if self._W is not None else None}
        return views[key]

    def _site(self, name: str):
        """The :class:`~warpsim_rl.shards.LaunchSite` of the ``name`` launch for the current shards."""
        shards = self.model.shards
        sites = self.__dict__.setdefault("_sites", {})
        if name not in sites or sites[name][0] is not shards:
            sites[name] = (shards, shards.site())
        return sites[name][1]

    def _checked_model(self) -> Model:
        m = self.model
        if (m.num_dofs, m.band) != self._scratch_sizes:
            raise ValueError(f"model.band = {m.band}: changed after this Differentiator sized its scratch for "
                             f"{self._scratch_sizes[1]}; build a new one")
        return m

    def check_ok(self, what: str) -> None:
        """Raise :class:`GradientError` naming the envs whose exact Hessian did not factorise."""
        bad = np.flatnonzero(self.ok.numpy() == 0)
        if bad.size:
            raise GradientError(f"{what}: exact Hessian not positive definite at the solution in env(s) "
                                f"{bad[:8].tolist()}{' ...' if bad.size > 8 else ''}; the step is not "
                                f"differentiable there (buckled bilateral spring?)")

    # -- wp.Tape ------------------------------------------------------------------------------
    def step_tape(self, tape: wp.Tape, state_in: State, control: Control, state_out: State,
                  check: bool = True) -> None:
        """Forward step ``state_in -> state_out`` plus a tape entry for its adjoint.

        On ``tape.backward()`` the gradients in ``state_out``'s arrays flow into ``state_in``'s,
        ``control.action.grad`` and, when allocated, ``model.stiffness.grad``/``model.mass.grad``
        (see :meth:`~warpsim_rl.model.Model.enable_parameter_grads`). Arrays need
        ``requires_grad=True``."""
        for name, arr in (("state_in", state_in.x), ("state_out", state_out.x), ("control", control.action)):
            if arr.grad is None:
                raise ValueError(f"{name}: arrays need requires_grad=True (model.state(requires_grad=True))")
        self.sim.step(state_in, control, state_out, check=check)
        status = wp.clone(self.sim.status)
        m = self.model

        def backward():
            _raise_if_failed(status.numpy(), "tape backward")
            k_grad = m.stiffness.grad if m.stiffness.grad is not None else _scratch_like(self, "k", m.stiffness)
            m_grad = m.mass.grad if m.mass.grad is not None else _scratch_like(self, "m", m.mass)
            self.vjp(state_in.arrays(), control.action, state_out.arrays(),
                     [a.grad for a in state_out.arrays()], [a.grad for a in state_in.arrays()],
                     control.action.grad, k_grad, m_grad)
            self.check_ok("tape backward")

        tape.record_func(backward=backward, arrays=[*state_in.arrays(), control.action])


def _scratch_like(diff: Differentiator, key: str, arr: wp.array) -> wp.array:
    """Throw-away gradient buffer for a parameter whose gradient was not requested."""
    name = f"_discard_{key}"
    buf = getattr(diff, name, None)
    if buf is None:
        buf = wp.zeros_like(arr, requires_grad=False)
        setattr(diff, name, buf)
    buf.zero_()
    return buf


def _raise_if_failed(st: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(st != STATUS_OK)
    if bad.size:
        reasons = sorted({STATUS_NAMES[int(c)] for c in st[bad]})
        raise GradientError(f"{what}: cannot differentiate a step that did not converge in env(s) "
                            f"{bad[:8].tolist()}{' ...' if bad.size > 8 else ''} ({'; '.join(reasons)})")


# ------------------------------------------------------------------------------------------
# torch bridge
# ------------------------------------------------------------------------------------------

class _StepFunction(torch.autograd.Function):
    """One BDF2 step on torch tensors; backward = implicit adjoint (kernels/adjoint.py)."""

    @staticmethod
    def forward(ctx, tsim, x, v, xp, vp, action, stiffness, mass):
        outs = [torch.empty_like(x) for _ in range(4)]
        wins = [tsim._wp(t) for t in (x, v, xp, vp)]
        wouts = [tsim._wp(t) for t in outs]
        wa = tsim._wp(action)
        wk = tsim._wp_scalar(stiffness) if stiffness is not None else None
        wm = tsim._wp_scalar(mass) if mass is not None else None
        with tsim.stream_scope():
            tsim.sim.launch(wins, wa, wouts, stiffness=wk, mass=wm, cache=False)
        status = tsim.status_view.clone()
        if tsim.check:
            tsim.sim.check(last_step_only=True)
        ctx.tsim = tsim
        ctx.status = status
        ctx.has_k = stiffness is not None
        ctx.has_m = mass is not None
        ctx.save_for_backward(x, v, xp, vp, action, outs[0], outs[1],
                              stiffness if stiffness is not None else torch.empty(0),
                              mass if mass is not None else torch.empty(0))
        return tuple(outs)

    @staticmethod
    def backward(ctx, gx, gv, gxp, gvp):
        tsim = ctx.tsim
        x, v, xp, vp, action, x1, v1, k, mass = ctx.saved_tensors
        if not tsim.zero_failed_grads:
            _raise_if_failed(ctx.status.cpu().numpy(), "backward")
        grads_out = [g.contiguous() if g is not None else torch.zeros_like(x) for g in (gx, gv, gxp, gvp)]
        grads_in = [torch.zeros_like(x) for _ in range(4)]
        g_action = torch.zeros_like(action)
        model = tsim.model
        g_k = torch.zeros((model.num_envs, model.num_springs), dtype=x.dtype, device=x.device)
        g_m = torch.zeros((model.num_envs, model.num_particles), dtype=x.dtype, device=x.device)
        d = tsim.diff
        with tsim.stream_scope():
            d.vjp([tsim._wp(t) for t in (x, v, xp, vp)], tsim._wp(action), [tsim._wp(x1), tsim._wp(v1)],
                  [tsim._wp(g) for g in grads_out], [tsim._wp(g) for g in grads_in], tsim._wp(g_action),
                  tsim._wp_scalar(g_k), tsim._wp_scalar(g_m),
                  stiffness=tsim._wp_scalar(k) if ctx.has_k else None,
                  mass=tsim._wp_scalar(mass) if ctx.has_m else None)
        if tsim.zero_failed_grads:
            # envs whose step failed or whose Hessian did not factor contribute nothing
            bad = (ctx.status != STATUS_OK) | (tsim.hessian_ok_view == 0)
            keep = (~bad).to(x.dtype)
            grads_in = [torch.where(bad[:, None, None], torch.zeros_like(g), g) for g in grads_in]
            g_action = torch.where(bad[:, None, None], torch.zeros_like(g_action), g_action)
            g_k, g_m = g_k * keep[:, None], g_m * keep[:, None]
        else:
            d.check_ok("backward")
        return (None, *grads_in, g_action, g_k if ctx.has_k else None, g_m if ctx.has_m else None)


class _Recomputed(torch.autograd.Function):
    """``run(*tensors)`` as one graph node, recomputed in the backward pass (:func:`recomputed`)."""

    @staticmethod
    def forward(ctx, run, *tensors):
        ctx.set_materialize_grads(False)
        ctx.run = run
        ctx.save_for_backward(*tensors)
        return tuple(run(*tensors))

    @staticmethod
    def backward(ctx, *grads):
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:])]
            outs = ctx.run(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        wanted = [t for t in inputs if t.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                   if pairs and wanted else [None] * len(wanted))
        return (None, *(next(got) if t.requires_grad else None for t in inputs))


def recomputed(run, *tensors) -> tuple:
    """``run(*tensors)`` (a function returning a tuple of tensors) as one autograd node that saves
    only ``tensors`` and recomputes ``run`` on a graph in the backward pass: a checkpointed
    segment of a rollout (:meth:`TorchSimulator.rollout`, ``StepCore.open_loop``).

    Unlike ``torch.utils.checkpoint(use_reentrant=False)`` the forward pass builds no per-step
    nodes: each would hold memory until the backward pass, and their small long-lived allocations
    fragment the heap between the freed (E, n, dim) states, so that the resident set still grew
    linearly in T. Gradients reach only ``tensors`` (pass everything differentiable explicitly,
    not through a closure); they are bitwise those of the plain graph, except that a tensor
    used in several segments gets one summed gradient per segment (a different summation order
    for shared parameters such as a stiffness)."""
    return _Recomputed.apply(run, *tensors)


class TorchSimulator:
    """The simulator on torch tensors, differentiable with ``torch.autograd``.

    Tensors: positions/velocities/history ``(E, n, dim)``, actions ``(E, h, dim)``, optional
    per-env ``stiffness`` (E, m) and ``mass`` (E, n), all on ``model.device`` in ``model.dtype``
    (zero-copy, through cached descriptors: :mod:`warpsim_rl.views`). ``check=True`` raises
    :class:`~warpsim_rl.sim.SimulationError` on a non-converged forward step (one host sync per
    step). A backward pass through a step that failed in some env raises :class:`GradientError`,
    unless ``zero_failed_grads=True``: then those envs' gradient rows are zero (the step core's
    mode, which freezes failed envs and keeps them out of every loss).
    """

    def __init__(self, model: Model, check: bool = True, zero_failed_grads: bool = False):
        self.model = model
        self.zero_failed_grads = bool(zero_failed_grads)
        self._layout = None  # StateLayout, built by the first markov_state()
        self.sim = Simulator(model)
        self.diff = Differentiator(self.sim)
        self.check = check
        self.torch_device = torch.device(wp.device_to_torch(model.device))
        self.torch_dtype = torch.float32 if model.dtype == wp.float32 else torch.float64
        self._views = TensorViews(model.device)
        #: (E,) int32 live torch views (no copies) of the last step's status and of the last
        #: derivative launch's Hessian flags (``Simulator.status``, ``Differentiator.ok``)
        self.status_view = wp.to_torch(self.sim.status)
        self.hessian_ok_view = wp.to_torch(self.diff.ok)

    def stream_scope(self):
        """Run Warp launches on torch's current CUDA stream (a no-op on the CPU), so kernels and
        torch ops on the same tensors stay ordered."""
        if self.model.device.is_cuda:
            return wp.ScopedStream(wp.stream_from_torch(self.torch_device))
        return contextlib.nullcontext()

    def _wp(self, t: torch.Tensor) -> wp.array:
        """The (E, n) vec array of an (E, n, dim) tensor (a cached descriptor, :mod:`warpsim_rl.views`)."""
        return self._views(t, self.model.vec)

    def _wp_scalar(self, t: torch.Tensor) -> wp.array:
        """The array of a tensor of the model's scalar type, of the same shape (a cached descriptor)."""
        return self._views(t, self.model.dtype)

    def _validate(self, name: str, t, shape) -> torch.Tensor:
        err = ActionError if name == "action" else ValueError
        if not isinstance(t, torch.Tensor):
            raise err(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype != self.torch_dtype:
            raise err(f"{name}.dtype = {t.dtype}: expected {self.torch_dtype}")
        if t.device != self.torch_device:
            raise err(f"{name}.device = {t.device}: expected {self.torch_device}")
        if tuple(t.shape) != shape:
            raise err(f"{name}.shape = {tuple(t.shape)}: expected {shape}")
        return t.contiguous()

    def initial_state(self, positions=None, velocities=None) -> tuple[torch.Tensor, ...]:
        """``(x, v, x_prev, v_prev)`` torch tensors of a fresh state: ``positions``/``velocities``
        (E, n, dim) or (n, dim), default the scene's; handles start at rest; the BDF2 history
        comes from the forces at that state (``Model.state``, ``kernels.bdf2`` ``startup``:
        ``x_prev = x - dt v + dt^2/2 a``, ``v_prev = v - dt a``, ``a = 0`` on particles touching
        geometry).

        Host data (numpy, lists) gives constant tensors. Torch tensors (in the model's dtype, on
        its device) give a state differentiable with respect to them: the forward values are the
        start-up kernel's (the same as from host data), and the backward pass differentiates the
        start-up, ``d(x_prev, v_prev)/d(x, v)`` through the spring, cable, damping and gravity
        forces (:func:`_startup_history`), so ``loss.backward()`` through a rollout from this
        state reaches ``positions`` and ``velocities`` (handle velocities get zero gradient: they
        are reset to 0). Masses and stiffnesses are not differentiated here."""
        if not any(isinstance(t, torch.Tensor) for t in (positions, velocities)):
            st = self.model.state(positions, velocities)
            return tuple(wp.to_torch(a).clone() for a in st.arrays())
        x, v = _initial_tensors(self, positions, velocities)
        return _StartupFunction.apply(self, x, v)

    def step(self, x, v, x_prev, v_prev, action, stiffness=None, mass=None, validate: bool = True):
        """One differentiable step; returns ``(x', v', x_prev', v_prev')``."""
        m = self.model
        shp = (m.num_envs, m.num_particles, m.dim)
        if validate:
            x, v, x_prev, v_prev = (self._validate(nm, t, shp) for nm, t in
                                    zip(("x", "v", "x_prev", "v_prev"), (x, v, x_prev, v_prev)))
            action = self._validate("action", action, (m.num_envs, max(m.num_handles, 1), m.dim))
            if not bool(torch.isfinite(action).all()):
                bad = (~torch.isfinite(action)).flatten(1).any(1).nonzero().flatten()[:8].tolist()
                raise ActionError(f"action: non-finite values in env(s) {bad}")
            if stiffness is not None:
                stiffness = self._validate("stiffness", stiffness, (m.num_envs, m.num_springs))
            if mass is not None:
                mass = self._validate("mass", mass, (m.num_envs, m.num_particles))
        return _StepFunction.apply(self, x, v, x_prev, v_prev, action, stiffness, mass)

    def rollout(self, state, actions, stiffness=None, mass=None, checkpoint_every: int | None = None,
                keep: str | int | None = None) -> list:
        """Differentiable rollout of ``actions`` (T, E, h, dim) from ``state = (x, v, xp, vp)``.

        Returns only the states ``keep`` asks for, in step order, as a list of ``(x, v, xp, vp)``
        tuples of (E, n, dim) tensors; :meth:`kept_steps` gives their step indices, and
        ``states[-1]`` is always the state at step T. ``keep``: ``"all"`` (the T+1 states),
        ``"last"`` (step T only) or an int ``K >= 1`` (steps 0, K, 2K, ... and T); the default
        ``None`` is ``"all"``, or the segment boundaries (``keep=checkpoint_every``) when
        checkpointing.

        ``checkpoint_every=K`` (``None``: off) runs each K-step segment as one graph node
        (:func:`recomputed`) that keeps only its input state and recomputes the segment in
        the backward pass: one extra forward pass for O(T/K + K) states of memory, as long as
        ``keep`` asks for no more than the boundaries (``"last"`` or a multiple of K); every
        other kept state lives as long as the returned list. Gradients are bitwise those of the
        plain rollout. Where ``stiffness`` or ``mass`` requires grad, segments go through
        ``torch.utils.checkpoint`` instead (it keeps the per-step summation order of their
        gradients, but also a graph node per step: memory still grows with T). Without
        checkpointing the backward pass holds every state (O(T)); ``keep`` then bounds memory
        only where nothing requires grad.

        Time is linear in T: the actions enter the graph through one ``unbind``, whose backward
        stacks the T per-step action gradients once (a per-step ``actions[t]`` would allocate a
        zero (T, E, h, dim) gradient for every step: O(T^2))."""
        T = actions.shape[0]
        every = _positive_int("checkpoint_every", checkpoint_every, none_ok=True)
        kept = set(self.kept_steps(T, keep, every))
        rows = actions.unbind(0)
        state = tuple(state)
        states = [state] if 0 in kept else []
        for t0, t1 in _segments(T, every or max(T, 1)):
            inner = {t - t0 for t in range(t0 + 1, t1) if t in kept}
            out = self._run_segment(every is not None, rows[t0:t1], inner, stiffness, mass, state)
            *inner_states, state = _as_states(out)
            states += inner_states
            if t1 in kept:
                states.append(state)
        return states

    def _run_segment(self, checkpointed: bool, rows, inner: set[int], stiffness, mass, state) -> tuple:
        """:meth:`_segment` on the graph (plain), as one recomputed node (:func:`recomputed`) or,
        where ``stiffness``/``mass`` require grad, through ``torch.utils.checkpoint``."""
        if not checkpointed:
            return self._segment(rows, inner, stiffness, mass, *state)
        if any(p is not None and p.requires_grad for p in (stiffness, mass)):
            return checkpoint(self._segment, rows, inner, stiffness, mass, *state, use_reentrant=False)
        return recomputed(lambda *t: self._segment(t[4:], inner, stiffness, mass, *t[:4]), *state, *rows)

    def _segment(self, rows, inner: set[int], stiffness, mass, *state) -> tuple:
        """``len(rows)`` steps from the flat state ``(x, v, xp, vp)`` with the actions ``rows[i]``
        (E, h, dim). Returns, flat, the states after the i-th step for each ``i`` in ``inner``
        (1 <= i < len(rows)), then the last state."""
        out = []
        for i, action in enumerate(rows, 1):
            state = self.step(*state, action, stiffness, mass)
            if i in inner:
                out += state
        return (*out, *state)

    @staticmethod
    def kept_steps(T: int, keep: str | int | None = None, checkpoint_every: int | None = None) -> list[int]:
        """Step indices (0 .. T) of the states :meth:`rollout` returns for ``T`` actions with these
        ``keep`` and ``checkpoint_every``. ``ValueError`` naming a bad ``keep``/``checkpoint_every``."""
        every = _positive_int("checkpoint_every", checkpoint_every, none_ok=True)
        if keep is None:
            keep = "all" if every is None else every
        if isinstance(keep, str) and keep in ("all", "last"):
            return list(range(T + 1)) if keep == "all" else [T]
        stride = _positive_int("keep", keep, none_ok=False)
        steps = list(range(0, T + 1, stride))
        return steps if steps[-1] == T else steps + [T]

    def jacobians(self, x, v, x_prev, v_prev, action, stiffness=None, mass=None, validate: bool = True):
        """One forward step and its Jacobians: returns ``(next_state, A, B)`` with
        ``A`` (E, ns, ns) and ``B`` (E, ns, na) torch tensors on the Markov state (docs/api.md)."""
        m = self.model
        with torch.no_grad():
            nxt = self.step(x, v, x_prev, v_prev, action, stiffness, mass, validate=validate)
        A = torch.empty((m.num_envs, m.num_state, m.num_state), dtype=self.torch_dtype, device=self.torch_device)
        B = torch.empty((m.num_envs, m.num_state, m.num_actions), dtype=self.torch_dtype, device=self.torch_device)
        inputs = [t.contiguous() for t in (x, v, x_prev, v_prev)]  # bound: a descriptor keeps no copy alive
        action = action.contiguous()
        with self.stream_scope():
            self.diff.jacobians(
                [self._wp(t) for t in inputs], self._wp(action),
                [self._wp(nxt[0]), self._wp(nxt[1])], self._wp_scalar(A), self._wp_scalar(B),
                stiffness=self._wp_scalar(stiffness) if stiffness is not None else None,
                mass=self._wp_scalar(mass) if mass is not None else None)
        if self.check:
            self.diff.check_ok("jacobians")
        return nxt, A, B

    def markov_state(self, x, v, x_prev, v_prev) -> torch.Tensor:
        """Flatten a state to the Markov vector ``s`` (E, ns) used by :meth:`jacobians`
        (:class:`~warpsim_rl.layout.StateLayout`)."""
        if self._layout is None:
            from .layout import StateLayout

            self._layout = StateLayout(self.model.scene)
        return self._layout.flatten((x, v, x_prev, v_prev), "markov")


def _positive_int(name: str, value, none_ok: bool) -> int | None:
    """``value`` as an int >= 1 (``None`` passes when ``none_ok``); ``ValueError`` naming ``name``
    and the value otherwise (bools, floats, zero and negative numbers included)."""
    if value is None and none_ok:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1:
        return int(value)
    what = {"keep": "'all', 'last' or a positive int K (every K-th state)",
            "checkpoint_every": "None (no checkpointing) or a positive int (steps per segment)"}[name]
    raise ValueError(f"{name} = {value!r}: expected {what}")


def _segments(T: int, every: int) -> list[tuple[int, int]]:
    """``[(0, K), (K, 2K), ..., (., T)]``: the step ranges of a rollout of ``T`` steps in segments
    of ``every = K`` steps (none when T is 0)."""
    return [(t0, min(T, t0 + every)) for t0 in range(0, T, every)]


def _as_states(flat) -> list[tuple]:
    """A flat sequence of tensors, four per state, as a list of ``(x, v, xp, vp)`` tuples."""
    return [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]


# ------------------------------------------------------------------------------------------
# differentiable start-up (TorchSimulator.initial_state with torch tensors)
# ------------------------------------------------------------------------------------------

def _initial_tensors(tsim: TorchSimulator, positions, velocities) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, v)`` (E, n, dim) tensors of :meth:`TorchSimulator.initial_state`'s arguments (tensors
    kept on the autograd graph, broadcast from (n, dim); host data and ``None`` (the scene's values)
    become constants), with the handle velocities set to 0. ``ValueError`` naming a wrong dtype,
    device, shape or a non-finite entry."""
    from .scene import SceneError

    m = tsim.model
    shape = (m.num_envs, m.num_particles, m.dim)
    out = []
    for name, t, default in (("positions", positions, m.scene.positions), ("velocities", velocities,
                                                                             m.scene.velocities)):
        if not isinstance(t, torch.Tensor):
            from .model import _broadcast_state

            host = _broadcast_state(default if t is None else t, shape, name, m.np_dtype)
            t = torch.as_tensor(host.astype(m.np_dtype), device=tsim.torch_device)
        if t.dtype != tsim.torch_dtype:
            raise ValueError(f"{name}.dtype = {t.dtype}: expected {tsim.torch_dtype}")
        if t.device != tsim.torch_device:
            raise ValueError(f"{name}.device = {t.device}: expected {tsim.torch_device}")
        if tuple(t.shape) not in (shape, shape[1:]):
            raise ValueError(f"{name}.shape = {tuple(t.shape)}: expected {shape} or {shape[1:]}")
        t = t.expand(shape)
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            idx = [int(i) for i in bad.nonzero()[0]]
            raise SceneError(f"{name}{idx} = {float(t[tuple(idx)])!r}: must be finite")
        out.append(t)
    x, v = out
    handle = torch.as_tensor(m.scene.is_handle, device=tsim.torch_device)
    v = torch.where(handle[None, :, None], torch.zeros((), dtype=v.dtype, device=v.device), v)
    return x.contiguous(), v.contiguous()


def _startup_history(model: Model, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_prev, v_prev)`` of the BDF2 start-up as a torch expression of ``x``, ``v`` (E, n, dim):
    ``x_prev = x - h v + h^2/2 a``, ``v_prev = v - h a`` with ``a = M^-1 f(x, v) + gravity`` of the
    springs (cables only when taut), the stretch damping along the current spring direction and
    gravity on the free particles, ``a = 0`` on handles and on particles within half the contact
    width of a plane or box (the rule of ``kernels.bdf2`` ``startup``, which computes the same
    values on the device; this expression is what the backward pass of
    :meth:`TorchSimulator.initial_state` differentiates, with the model's masses, stiffnesses and
    rest lengths as constants)."""
    dev, dt = x.device, x.dtype
    E, n, d = x.shape
    h = float(model.dt)

    def tt(arr, dtype=None):
        return wp.to_torch(arr).to(device=dev, dtype=dtype or dt)

    si = wp.to_torch(model.spring_i).to(dev).long()
    sj = wp.to_torch(model.spring_j).to(dev).long()
    k, L, c = tt(model.stiffness), tt(model.rest_length), tt(model.damping)
    cable = wp.to_torch(model.is_cable).to(dev) != 0
    mass = tt(model.mass)
    zero = torch.zeros((), dtype=dt, device=dev)
    dvec = x[:, si] - x[:, sj]                                       # (E, m, dim)
    length = torch.linalg.vector_norm(dvec, dim=-1)
    u = dvec / length.clamp_min(1.0e-30)[..., None]
    spring = torch.where(cable & (length <= L), zero, k * (length - L))
    rate = ((v[:, si] - v[:, sj]) * u).sum(-1)
    damped = (c > 0) & (~cable | (length > L)) & (length > 0)
    tension = spring + torch.where(damped, c * rate, zero)           # dU/dl + dD/d(rate), (E, m)
    grad_i = tension[..., None] * u                                  # gradient w.r.t. x_i; -it on x_j
    f = torch.zeros_like(x).index_add(1, si, -grad_i).index_add(1, sj, grad_i)
    free = torch.as_tensor(~model.scene.is_handle, device=dev)
    gravity = torch.as_tensor(np.asarray(model.scene.gravity, dtype=model.np_dtype), device=dev)
    a = f / torch.where(free, mass, torch.ones((), dtype=dt, device=dev))[..., None] + gravity
    keep = free[None, :].expand(E, n) & ~_in_contact_band(model, x.detach())
    a = torch.where(keep[..., None], a, zero)
    return x - h * v + (0.5 * h * h) * a, v - h * a


def _in_contact_band(model: Model, x: torch.Tensor) -> torch.Tensor:
    """(E, n) bool: particles closer than half the contact width to some plane or box (signed
    distance of ``kernels.contact`` ``signed_distance``), whose start-up acceleration is 0."""
    E, n, _ = x.shape
    near = torch.zeros((E, n), dtype=torch.bool, device=x.device)
    if model.num_geometries == 0:
        return near
    kind = model.geo_kind.numpy()
    ga, gb, gr = (torch.as_tensor(a.numpy(), dtype=x.dtype, device=x.device) for a in
                  (model.geo_a, model.geo_b, model.geo_r))
    half = 0.5 * float(model.contact_width)
    for g in range(model.num_geometries):
        if kind[g] == 0:  # plane: n . x - offset
            dist = (x * ga[g]).sum(-1) - gr[g]
        else:  # rounded box: inner box of half extents b - r, grown by r
            q = (x - ga[g]).abs() - (gb[g] - gr[g])
            outside = torch.linalg.vector_norm(q.clamp_min(0.0), dim=-1)
            dist = torch.where(outside > 0, outside, q.max(-1).values) - gr[g]
        near |= dist < half
    return near


class _StartupFunction(torch.autograd.Function):
    """The BDF2 start-up of :meth:`TorchSimulator.initial_state` on torch tensors: forward = the
    ``startup`` kernel (``Model.start_history``), backward = the vector-Jacobian product of
    :func:`_startup_history`."""

    @staticmethod
    def forward(ctx, tsim, x, v):
        m = tsim.model
        st = State(m)
        mask = wp.array(np.ones(m.num_envs, dtype=np.int32), dtype=wp.int32, device=m.device)
        with tsim.stream_scope():
            m.start_history(tsim._wp(x), tsim._wp(v), mask, st)
        ctx.tsim = tsim
        ctx.save_for_backward(x, v)
        return tuple(wp.to_torch(a).clone() for a in st.arrays())

    @staticmethod
    def backward(ctx, gx, gv, gxp, gvp):
        x, v = ctx.saved_tensors
        with torch.enable_grad():
            xg, vg = x.detach().requires_grad_(True), v.detach().requires_grad_(True)
            xp, vp = _startup_history(ctx.tsim.model, xg, vg)
            pairs = [(o, g) for o, g in ((xg, gx), (vg, gv), (xp, gxp), (vp, gvp)) if g is not None]
            if not pairs:
                return None, None, None
            grads = torch.autograd.grad([o for o, _ in pairs], [xg, vg], [g for _, g in pairs], allow_unused=True)
        return None, *grads
