"""PODS' trajectory-space step as a trajectory optimiser (Mora et al., ICML 2021, Sec. 3).

A batch of ``E`` open-loop action sequences ``a_bar`` (T, E, h*dim) from initial states ``s_0`` is
improved in one call of :meth:`TrajectoryOptimizer.improve` — no policy needed:

1. the value gradient ``dV/da_bar`` (PODS Eq. 5) from one adjoint pass (1st order), or from the
   per-step Jacobians by the adjoint recursion (:func:`value_gradient`, 2nd order);
2. the direction: 1st order (Eq. 6) the gradient scaled so that the largest change of a full step
   is ``first_order_step`` times the action limit; 2nd order (Eq. 13–14) the Gauss–Newton step
   ``(H + gn_damping I)^-1 dV/da_bar``, by a Riccati recursion without forming ``H``
   (:func:`gauss_newton_riccati`, the default) or by factoring ``H`` (:func:`gauss_newton_direction`);
3. a line search on ``alpha in {1, 1/2, ..., 2^-(line_search-1)}``, all candidates simulated at
   once as extra environments; a rollout keeps the best candidate that improves its return, or
   its old actions (so no rollout gets worse); actions are clipped to the limits.

PODS (:mod:`.pods`) runs steps 1–3 on the actions its policy executed, then regresses the policy
onto the result (Eq. 7).
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import StepCore, Trajectory
from .config import check_choice, check_int, check_positive

__all__ = ["TrajectoryStepConfig", "TrajectoryOptimizer", "TrajectoryStep", "value_gradient",
           "gauss_newton_direction", "gauss_newton_riccati", "GN_SOLVERS"]


def value_gradient(A: torch.Tensor, B: torch.Tensor, dr_ds: torch.Tensor, dr_da: torch.Tensor) -> torch.Tensor:
    """``dV/da_bar`` (T, E, na) by the adjoint recursion on the Markov state.

    ``A`` (T, E, ns, ns), ``B`` (T, E, ns, na): step Jacobians; ``dr_ds`` (T, E, ns): gradient of
    ``r_t`` w.r.t. ``s_{t+1}``; ``dr_da`` (T, E, na). With ``psi_{t+1} = dV/ds_{t+1}``:
    ``psi_T = dr_{T-1}/ds_T``, ``psi_{t+1} = dr_t/ds_{t+1} + A_{t+1}^T psi_{t+2}``, and
    ``dV/da_t = dr_t/da_t + B_t^T psi_{t+1}``."""
    T = A.shape[0]
    grad = torch.empty_like(dr_da)
    psi = dr_ds[T - 1]
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            psi = dr_ds[t] + torch.einsum("eji,ej->ei", A[t + 1], psi)
        grad[t] = dr_da[t] + torch.einsum("eji,ej->ei", B[t], psi)
    return grad


def gauss_newton_direction(A: torch.Tensor, B: torch.Tensor, grad: torch.Tensor, c_ss: torch.Tensor,
                           c_aa: torch.Tensor, damping: float = 1e-6) -> torch.Tensor:
    """Second-order PODS step ``(H + damping I)^-1 dV/da_bar`` (T, E, na), PODS Eq. 13–14.

    ``H = sum_{t} J_{t+1}^T diag(c_ss) J_{t+1} + diag(c_aa)`` with ``J_{t+1} = ds_{t+1}/da_bar``
    (ns x T na), ``J_1 = [B_0, 0, ...]``, ``J_{t+1} = A_t J_t + B_t E_t``; ``c_ss`` (ns,) and
    ``c_aa`` (na,) are the (constant, non-negative) Hessian diagonals of the cost ``c = -r``."""
    T, E, ns, na = B.shape
    n = T * na
    H = torch.zeros(E, n, n, dtype=B.dtype, device=B.device)
    J = torch.zeros(E, ns, n, dtype=B.dtype, device=B.device)
    for t in range(T):
        w = t * na  # J_t has non-zero columns only for steps < t
        if t > 0:
            J[:, :, :w] = torch.bmm(A[t], J[:, :, :w])
        J[:, :, w:w + na] = B[t]
        Jc = J[:, :, :w + na]
        H[:, :w + na, :w + na] += torch.bmm(Jc.transpose(1, 2) * c_ss[None, None, :], Jc)
    diag = c_aa.repeat(T) + damping
    H.diagonal(dim1=1, dim2=2).add_(diag)
    L, info = torch.linalg.cholesky_ex(H)
    rhs = grad.permute(1, 0, 2).reshape(E, n, 1)
    step = torch.cholesky_solve(rhs, L).reshape(E, T, na).permute(1, 0, 2)
    # a rollout whose H did not factor (should not happen: H is PSD + damping) takes a gradient step
    bad = info != 0
    if bool(bad.any()):
        step[:, bad] = grad[:, bad]
    return step


def gauss_newton_riccati(A: torch.Tensor, B: torch.Tensor, grad: torch.Tensor, c_ss: torch.Tensor,
                         c_aa: torch.Tensor, damping: float = 1e-6) -> torch.Tensor:
    """The step of :func:`gauss_newton_direction`, ``(H + damping I)^-1 dV/da_bar``, without forming
    ``H``: it is the minimiser of the linear-quadratic problem

        ``f(d) = 1/2 sum_t (u_{t+1}^T C_ss u_{t+1} + d_t^T R d_t) - sum_t g_t^T d_t``,
        ``u_0 = 0``, ``u_{t+1} = A_t u_t + B_t d_t``, ``R = diag(c_aa) + damping I``

    (its Hessian in ``d`` is ``H + damping I``, its gradient at 0 is ``-g``), solved exactly by the
    backward Riccati recursion of LQR with a linear control term: with ``S = C_ss + P_{t+1}``,
    ``Q_dd = R + B_t^T S B_t``, ``Q_du = B_t^T S A_t``, ``q_d = B_t^T p_{t+1} - g_t``, the step's
    policy is ``d_t = K_t u_t + k_t`` with ``K_t = -Q_dd^-1 Q_du``, ``k_t = -Q_dd^-1 q_d``, and
    ``P_t = A_t^T S A_t + Q_du^T K_t``, ``p_t = A_t^T p_{t+1} + Q_du^T k_t`` (``P_T = 0``,
    ``p_T = 0``); a forward pass from ``u_0 = 0`` gives ``d``. Cost per rollout
    ``O(T (ns^3 + ns^2 na + na^3))`` against ``O(T^2 ns na (ns + T na))`` to form and factor
    ``H``; the same step to round-off (measured costs in docs/results.md: 8-52x cheaper on the
    small-state tasks, 1.4x dearer on rope3d). ``Q_dd`` is at least ``R``, positive definite when
    ``c_aa + damping > 0``; a rollout whose ``Q_dd`` still does not factor (no action cost and no
    damping, or round-off) takes a gradient step, as there."""
    T, E, ns, na = B.shape
    C = torch.diag_embed(c_ss.expand(E, ns))
    R = torch.diag_embed((c_aa + damping).expand(E, na))
    P = torch.zeros(E, ns, ns, dtype=B.dtype, device=B.device)
    p = torch.zeros(E, ns, dtype=B.dtype, device=B.device)
    gains, offsets = [None] * T, [None] * T
    bad = torch.zeros(E, dtype=torch.bool, device=B.device)
    for t in range(T - 1, -1, -1):
        S = C + P
        SB = torch.bmm(S, B[t])  # (E, ns, na)
        Q_dd = R + torch.bmm(B[t].transpose(1, 2), SB)
        Q_du = torch.bmm(SB.transpose(1, 2), A[t])  # B^T S A (S symmetric)
        q_d = torch.einsum("esa,es->ea", B[t], p) - grad[t]
        L, info = torch.linalg.cholesky_ex(Q_dd)
        bad |= info != 0
        sol = torch.cholesky_solve(torch.cat([Q_du, q_d[:, :, None]], dim=2), L)
        K, k = -sol[:, :, :ns], -sol[:, :, ns]
        gains[t], offsets[t] = K, k
        if t > 0:
            P = torch.bmm(A[t].transpose(1, 2), torch.bmm(S, A[t])) + torch.bmm(Q_du.transpose(1, 2), K)
            P = 0.5 * (P + P.transpose(1, 2))
            p = torch.einsum("est,es->et", A[t], p) + torch.einsum("eas,ea->es", Q_du, k)
    step = torch.empty_like(grad)
    u = torch.zeros(E, ns, dtype=B.dtype, device=B.device)
    for t in range(T):
        step[t] = torch.einsum("eas,es->ea", gains[t], u) + offsets[t]
        u = torch.einsum("est,et->es", A[t], u) + torch.einsum("esa,ea->es", B[t], step[t])
    if bool(bad.any()):
        step[:, bad] = grad[:, bad]
    return step


GN_SOLVERS = ("riccati", "dense")


@dataclasses.dataclass
class TrajectoryStepConfig:
    """Options of the trajectory-space step (PODS Sec. 3)."""

    order: int = 2
    """1: first-order step (Eq. 6); 2: Gauss-Newton step (Eq. 13-14)"""
    line_search: int = 6
    """step sizes alpha = 1, 1/2, ..., tried in parallel as extra environments"""
    first_order_step: float = 0.05
    """1st order: largest change of a full step, as a fraction of the action limit"""
    gn_damping: float = 1.0
    """2nd order: Levenberg-Marquardt term added to H (docs/algorithms.md says why)"""
    gn_solver: str = "riccati"
    """2nd order: how (H + gn_damping I)^-1 dV/da_bar is solved — 'riccati': the equivalent
    linear-quadratic problem by a backward Riccati recursion, without forming H (the same step to
    round-off; its float32 step stays close to float64's on every task measured; the solve 8-52x
    cheaper on the small-state tasks, whole PODS epochs 2-9.5x); 'dense': form H and factor it
    (Cholesky) — in float32 wrong where H is ill-conditioned (the cable, the cloth:
    docs/algorithms.md)"""
    chunk: int = 256
    """2nd order: rollouts per batched Gauss-Newton solve (memory: chunk x T na ns numbers for the
    Riccati gains, chunk x (T na)^2 for the dense H)"""
    jacobian_memory_mb: float = 2048.0
    """2nd order: most memory (MiB) the per-step Jacobians A_t, B_t of one batch may take
    (T x E x ns x (ns + na) numbers); a larger batch records none in its rollout and computes
    them chunk by chunk of rollouts from the stored trajectory instead (one extra step per env and
    step, the same numbers)"""

    def __post_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"order = {self.order!r}: must be 1 or 2")
        check_int("line_search", self.line_search, 1)
        check_int("chunk", self.chunk, 1)
        check_positive("first_order_step", self.first_order_step)
        check_positive("gn_damping", self.gn_damping, allow_zero=True)
        check_positive("jacobian_memory_mb", self.jacobian_memory_mb)
        check_choice("gn_solver", self.gn_solver, GN_SOLVERS)


@dataclasses.dataclass
class TrajectoryStep:
    """Result of one trajectory-space step on E rollouts.

    Attributes:
        obs: (T, E, obs_dim) observations along the kept trajectories ``s(a_bar')``.
        actions: (T, E, na) kept actions ``a_bar'`` (the improved ones where ``improved``).
        improved: (E,) bool, a step size improved the return.
        returns_before, returns_after: (E,) returns of ``a_bar`` and of the kept actions.
        alpha: (E,) chosen step size (0 where none improved).
        failed: (E,) bool, the rollout of ``a_bar`` failed (Newton solve, or a singular Hessian
            for the Jacobians): its step must not be used.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    improved: torch.Tensor
    returns_before: torch.Tensor
    returns_after: torch.Tensor
    alpha: torch.Tensor
    failed: torch.Tensor


class TrajectoryOptimizer:
    """PODS' trajectory-space step for the ``E`` environments of ``core`` (module doc).

    ``search`` (built once) is a second :class:`~warpsim_rl.core.StepCore` of ``E * line_search``
    environments that simulates every line-search candidate in one batch."""

    def __init__(self, core: StepCore, cfg: TrajectoryStepConfig):
        self.core, self.cfg = core, cfg
        self.alphas = torch.tensor([0.5 ** i for i in range(cfg.line_search)], dtype=core.dtype, device=core.device)
        self.search = core.sibling(core.num_envs * cfg.line_search)
        m, E = core.model, core.num_envs
        per_env = core.task.horizon * m.num_state * (m.num_state + m.num_actions) * core.dtype.itemsize
        fit = max(1, int(cfg.jacobian_memory_mb * 2 ** 20 // per_env))
        #: rollouts whose Jacobians are computed at once: all E (recorded in the rollout) when
        #: they fit in ``jacobian_memory_mb``, else equal chunks of at most ``fit``
        self.jacobian_rows = E if fit >= E else -(-E // -(-E // fit))
        self._jacobian_core = None

    @property
    def records_jacobians(self) -> bool:
        """Whether the rollouts :meth:`direction` takes must record the Jacobians (2nd order, all
        of the batch's fitting in memory); otherwise :meth:`direction` computes them itself."""
        return self.cfg.order == 2 and self.jacobian_rows == self.core.num_envs

    def rollout(self, state0, actions: torch.Tensor) -> Trajectory:
        """Open-loop rollout of ``actions`` (T, E, na or h, dim) with what :meth:`direction` needs
        (1st order: leaf actions; 2nd order: the per-step Jacobians)."""
        T = actions.shape[0]
        if self.cfg.order == 1:
            leaves = [a.detach().reshape(self.core.action_shape).requires_grad_(True) for a in actions]
            traj = self.core.open_loop(state0, torch.stack(leaves))
            traj.leaves = leaves
            return traj
        with torch.no_grad():
            return self.core.open_loop(state0, actions.reshape(T, *self.core.action_shape),
                                       jacobians=self.records_jacobians)

    def direction(self, traj: Trajectory) -> torch.Tensor:
        """The improvement direction (T, E, na) of ``traj``'s actions: from its leaves' gradients
        (1st order; ``traj.returns.sum()`` is back-propagated here) or its Jacobians (2nd order,
        which are freed afterwards)."""
        core, cfg = self.core, self.cfg
        T, E = traj.actions.shape[0], core.num_envs
        if cfg.order == 1:
            traj.returns.sum().backward()
            grad = torch.stack([a.grad for a in traj.leaves]).reshape(T, E, -1)
            # scale so that the largest change of the full step is first_order_step x the limit
            lim = core.limit.reshape(-1)
            scale = cfg.first_order_step / (grad.abs() / lim).amax(dim=(0, 2)).clamp_min(1e-30)
            return grad * scale[None, :, None]
        dr_ds, dr_da = [], []
        for t in range(T):
            d = core.reward_derivatives(traj.states[t + 1], traj.actions[t])
            dr_ds.append(d["dr_ds"])
            dr_da.append(d["dr_da"])
        c_ss = -d["d2r_ds2"]
        c_aa = -d["d2r_da2"]
        dr_ds, dr_da = torch.stack(dr_ds), torch.stack(dr_da)
        step = torch.empty_like(dr_da)
        solve = gauss_newton_riccati if cfg.gn_solver == "riccati" else gauss_newton_direction
        for e0 in range(0, E, self.jacobian_rows):
            rows = slice(e0, min(E, e0 + self.jacobian_rows))
            if traj.A is not None:
                A, B = traj.A[:, rows], traj.B[:, rows]
            else:
                A, B, singular = self._chunk_jacobians(traj, rows)
                traj.failed[rows] |= singular
            grad = value_gradient(A, B, dr_ds[:, rows], dr_da[:, rows])
            for s in range(0, grad.shape[1], cfg.chunk):
                sl = slice(s, min(grad.shape[1], s + cfg.chunk))
                step[:, rows][:, sl] = solve(A[:, sl], B[:, sl], grad[:, sl], c_ss, c_aa, cfg.gn_damping)
        traj.A = traj.B = None  # free the Jacobians
        return step

    @torch.no_grad()
    def _chunk_jacobians(self, traj: Trajectory, rows: slice):
        """``A``, ``B`` (T, R, ...) and the singular mask (R,) of rollouts ``rows`` of ``traj``
        (recorded without Jacobians), by re-taking each stored step on a core of
        ``jacobian_rows`` envs (a last, smaller chunk is padded with copies of its last rollout).
        Every env's step is independent of the others', so these are the numbers the rollout
        would have recorded."""
        if self._jacobian_core is None:
            self._jacobian_core = self.core.sibling(self.jacobian_rows)
        core, n = self._jacobian_core, rows.stop - rows.start
        pad = torch.cat([torch.arange(rows.start, rows.stop, device=traj.actions.device),
                         torch.full((self.jacobian_rows - n,), rows.stop - 1, device=traj.actions.device)])
        As, Bs = [], []
        singular = torch.zeros(n, dtype=torch.bool, device=traj.actions.device)
        for t in range(traj.actions.shape[0]):
            tr = core.retake(tuple(x[pad] for x in traj.states[t]), traj.actions[t][pad])
            As.append(tr.A[:n])
            Bs.append(tr.B[:n])
            singular |= tr.singular[:n]
        return torch.stack(As), torch.stack(Bs), singular

    @torch.no_grad()
    def line_search(self, state0, traj: Trajectory, step: torch.Tensor) -> TrajectoryStep:
        """Per-rollout best improving ``alpha`` along ``step`` from ``traj``'s actions."""
        task, E, K = self.core.task, self.core.num_envs, len(self.alphas)
        T = traj.actions.shape[0]
        a0 = traj.actions.detach().reshape(T, E, -1)
        cand = a0[:, None] + self.alphas[None, :, None, None] * step[:, None]  # (T, K, E, na)
        cand = cand.reshape(T, K * E, task.num_handles, task.dim)
        s0 = tuple(t.detach().repeat(K, 1, 1) for t in state0)
        res = self.search.open_loop(s0, cand)
        ret = res.returns.reshape(K, E)
        ret = torch.where(res.failed.reshape(K, E), torch.full_like(ret, -torch.inf), ret)
        best, k_best = ret.max(dim=0)
        base = traj.returns.detach()
        improved = best > base
        idx = k_best * E + torch.arange(E, device=ret.device)
        return TrajectoryStep(
            obs=res.obs[:, idx], actions=res.actions[:, idx].reshape(T, E, -1), improved=improved,
            returns_before=base, returns_after=torch.where(improved, best, base),
            alpha=torch.where(improved, self.alphas[k_best], torch.zeros_like(best)), failed=traj.failed)

    def improve(self, state0, actions: torch.Tensor) -> TrajectoryStep:
        """One trajectory-space step on open-loop ``actions`` (T, E, na) from ``state0``."""
        traj = self.rollout(state0, actions)
        return self.line_search(state0, traj, self.direction(traj))
