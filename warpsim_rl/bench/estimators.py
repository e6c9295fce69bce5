"""Bias and variance of the zeroth-, first- and alpha-order gradient estimators (Suh et al. 2022)
on a smooth, a stiff and a contact scene, and the ball-with-wall experiment on the wall strike.

    python -m warpsim_rl.bench estimators --quick --json      # ~1 min on a CPU
    python -m warpsim_rl.bench estimators --json --plots docs/images

Study (:func:`study`). Every problem is an *open-loop* control problem at fixed parameters:
``theta`` (P, h*dim) holds the handle velocities of ``P`` segments of ``segment`` steps each
(piecewise-constant actions, ``d = P * h * dim`` numbers), the objective is the task return
(PODS Eq. 15) of the rollout from one fixed initial state, ``f(theta) = V(clip(actions(theta)))``,
and the noise is on the parameters, ``w ~ N(0, sigma^2 I_d)`` (every segment's action is
perturbed). The gradient of ``F(theta) = E f(theta + w)`` at ``theta = 0`` (handle at rest) is
estimated by

* ZoBG, FoBG: pools of ``R * N`` per-sample estimates, split into ``R`` estimates of ``N`` samples;
* AoBG: the ``r``-th ZoBG and FoBG estimates (independent batches) combined by the confidence
  rule, ``gamma = gamma_rel * ||reference||``, ``delta = 0.05``, ``L`` = the empirical spread;

against a *reference*: an independent, much larger sample of FoBG (``n_ref_fo``) where the
dynamics are continuous (smooth and stiff scenes: FoBG is then an unbiased estimate of grad F and
has far less variance than ZoBG) and of ZoBG (``n_ref_zo``) on the contact scene (time-stepped
impacts make ``f`` piecewise with jumps that FoBG cannot see, so only ZoBG is unbiased there).
Both references are always computed, and their disagreement is reported in units of its standard
error (``ref_z``): a large ``ref_z`` is FoBG's bias. Problems: ``pendulum2d`` (smooth), ``rope3d``
at several segment stiffnesses (stiff), ``wall_pendulum2d`` at several wall stiffnesses (contact:
the bob swings into the wall) and the 1-parameter wall strike below at ``u = 0.5`` (contact).

Reported per (scene, stiffness, sigma) and estimator, relative to ``||reference||``:
``bias_rel = ||mean_r g_r - ref||`` (with ``bias_floor_rel``, the value expected from sampling
noise alone — bias is significant only well above it), ``var_rel`` = trace of the covariance of
one N-sample estimate (``s^2 / N`` from the pools for ZoBG/FoBG, the spread over the ``R``
estimates for AoBG), ``rmse_rel = sqrt(mean_r ||g_r - ref||^2)``; for AoBG also the mean alpha
and how often each case of the rule applied.

Wall strike (:func:`wall_strike`), after Suh et al.'s ball thrown at a wall: the bob of
``wall_pendulum2d`` hangs at rest; the handle moves right at ``u`` m/s for the first ``K`` steps
and stops; the objective is the bob's leftward speed at ``t = T dt`` minus an effort penalty,
``f(u) = -v_x(T) - c sum_t |a_t|^2``. Without contact the best is a gentle push (``u ~ 0.5``,
``f ~ 0.05``); pushing harder (``u > 1.02``) strikes the wall, which sends the bob back fast
(``f ~ 0.4``). Gradient ascent on ``F_sigma(u)`` from ``u = 0`` with each estimator (same step
size, the same clip of every step, ``seeds`` independent runs batched as environments) shows
where each settles.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
import zlib

import numpy as np
import torch

from .. import estimators as est
from ..autodiff import GradientError
from ..core import StepCore
from ..tasks import Task, make_task
from .common import git_revision, machine_info, progress_bar, stderr_log

__all__ = ["OpenLoopProblem", "StrikeProblem", "make_problems", "study_config", "study", "wall_strike", "run",
           "add_arguments", "from_args"]

DTYPE = torch.float64


class _SimCache:
    """Step cores of one task, one per batch size (float64, CPU/device given)."""

    def __init__(self, task: Task, device="cpu"):
        self.task, self.device = task, device
        self._cores: dict[int, StepCore] = {}
        self.failed = 0

    def get(self, M: int) -> StepCore:
        if M not in self._cores:
            if len(self._cores) >= 4:
                self._cores.pop(next(iter(self._cores)))
            self._cores[M] = StepCore(self.task, M, self.device, "float64")
        return self._cores[M]

    def count_failures(self, core: StepCore) -> torch.Tensor:
        """Count the envs that failed in the rollout just run; returns their (M,) bool mask."""
        mask = core.failures()
        self.failed += int(mask.sum())
        return mask


def _chunked(prob, rows: torch.Tensor) -> torch.Tensor:
    """``prob._f`` over ``rows`` in chunks of ``prob.chunk`` environments; sets
    ``prob.last_failed`` (M,) to the rows whose Newton solve failed."""
    prob._failed_parts = []
    if rows.shape[0] <= prob.chunk:
        out = prob._f(rows)
    else:
        out = torch.cat([prob._f(rows[i:i + prob.chunk]) for i in range(0, rows.shape[0], prob.chunk)])
    prob.last_failed = torch.cat(prob._failed_parts)
    return out


# ------------------------------------------------------------------------------------------------
# Problems
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class OpenLoopProblem:
    """``f(theta)``: the return of ``task`` from one initial state under piecewise-constant handle
    velocities ``theta`` (P, h*dim), each row held for ``segment`` steps (see the module doc)."""

    name: str
    kind: str                 # "smooth" | "stiff" | "contact"
    task: Task
    segment: int
    positions: np.ndarray     # (n, dim)
    velocities: np.ndarray    # (n, dim)
    stiffness: float | None = None
    chunk: int = 2048
    device: str = "cpu"

    def __post_init__(self):
        self.sims = _SimCache(self.task, self.device)
        self.num_segments = self.task.horizon // self.segment

    @property
    def theta0(self) -> torch.Tensor:
        return torch.zeros(self.num_segments, self.task.action_dim, dtype=DTYPE)

    @property
    def dim(self) -> int:
        return self.theta0.numel()

    def _f(self, rows: torch.Tensor) -> torch.Tensor:
        M = rows.shape[0]
        task = self.task
        core = self.sims.get(M)
        s = core.initial_state(np.broadcast_to(self.positions, (M,) + self.positions.shape).copy(),
                               np.broadcast_to(self.velocities, (M,) + self.velocities.shape).copy())
        acts = rows.reshape(M, self.num_segments, task.num_handles, task.dim)
        V = torch.zeros(M, dtype=rows.dtype)
        for t in range(task.horizon):
            tr = core.step(s, acts[:, min(t // self.segment, self.num_segments - 1)])
            s = tr.state
            V = V + tr.reward
        self._failed_parts.append(self.sims.count_failures(core))
        return V

    def f(self, rows: torch.Tensor) -> torch.Tensor:
        """Batch-separable objective on rows (M, P, h*dim) -> (M,), chunked over environments.
        ``last_failed`` (M,) marks the rows whose Newton solve failed in this call."""
        return _chunked(self, rows)


@dataclasses.dataclass
class StrikeProblem:
    """The wall strike (module doc): ``f(u) = -v_x(T) - c sum_t |a_t|^2`` with the handle moving
    right at ``u`` m/s during the first ``push_steps`` steps; ``u`` has shape (1,)."""

    wall_stiffness: float = 1.0e4
    horizon: int = 60
    push_steps: int = 10
    effort: float = 0.015
    u0: float = 0.5
    device: str = "cpu"
    chunk: int = 8192
    name: str = "wall_strike"
    kind: str = "contact"

    def __post_init__(self):
        self.task = _wall_task(self.wall_stiffness)
        self.scene = self.task.scene
        self.sims = _SimCache(self.task, self.device)
        self.bob = int(self.scene.free_particles[0])
        self.stiffness = self.wall_stiffness
        self.segment = self.push_steps

    @property
    def theta0(self) -> torch.Tensor:
        """The study's point: ``u0`` (default 0.5 m/s, the no-contact local optimum)."""
        return torch.tensor([self.u0], dtype=DTYPE)

    @property
    def dim(self) -> int:
        return 1

    def f(self, rows: torch.Tensor) -> torch.Tensor:
        """Batch-separable objective on rows (M, 1) -> (M,); ``last_failed`` as in
        :meth:`OpenLoopProblem.f`."""
        return _chunked(self, rows)

    def _f(self, rows: torch.Tensor) -> torch.Tensor:
        M = rows.shape[0]
        core = self.sims.get(M)
        s = core.initial_state()
        u = rows.reshape(M)
        push = torch.stack([u, torch.zeros_like(u)], -1)[:, None, :]
        rest = torch.zeros_like(push)
        cost = torch.zeros(M, dtype=rows.dtype)
        for t in range(self.horizon):
            tr = core.step(s, push if t < self.push_steps else rest)  # the objective is not the task's reward
            s = tr.state
            cost = cost + self.effort * tr.action.square().sum((1, 2))
        self._failed_parts.append(self.sims.count_failures(core))
        return -s[1][:, self.bob, 0] - cost


def _wall_task(stiffness: float) -> Task:
    """The registered ``wall_pendulum2d-stop`` task with the wall at ``stiffness`` N/m."""
    return make_task("wall_pendulum2d-stop", scene_params=(("wall_stiffness", float(stiffness)),))


def make_problems(quick: bool, horizon: int = 40, segment: int = 10) -> list:
    """The study's problems. pendulum2d and the wall scene start from the bob at the bottom moving
    right at 1.5 m/s (it swings out to x = 0.47 m: past the wall at 0.4 m, so it strikes it);
    rope3d from the first state of its initial-state distribution (seed 0). Last, the wall strike
    (:class:`StrikeProblem`, d = 1) at ``u = 0.5``, its no-contact local optimum."""
    out = []
    pend = make_task("pendulum2d-stop", horizon=horizon)
    pos = np.array(pend.scene.positions, dtype=np.float64)
    vel = np.zeros_like(pos)
    vel[pend.payload, 0] = 1.5
    out.append(OpenLoopProblem("pendulum2d", "smooth", pend, segment, pos, vel))
    rope_k = (5.0e3, 5.0e5) if quick else (5.0e3, 5.0e4, 5.0e5)
    for k in rope_k:
        task = make_task("rope3d-stop", horizon=horizon, scene_params=(("stiffness", k),))
        p, v = task.sample_initial_states(1, 0)
        out.append(OpenLoopProblem("rope3d", "stiff", task, segment, p[0], v[0], stiffness=k, chunk=1024))
    wall_k = (1.0e3, 1.0e6) if quick else (1.0e2, 1.0e3, 1.0e4, 1.0e5, 1.0e6)
    for k in wall_k:
        task = dataclasses.replace(_wall_task(k), horizon=horizon)
        out.append(OpenLoopProblem("wall_pendulum2d", "contact", task, segment, pos, vel, stiffness=k))
    for k in ((1.0e3, 1.0e6) if quick else (1.0e3, 1.0e4, 1.0e5, 1.0e6)):
        out.append(StrikeProblem(k))
    return out


# ------------------------------------------------------------------------------------------------
# Bias / variance at fixed parameters
# ------------------------------------------------------------------------------------------------

def _pool(prob, sigma: float, n: int, method: str, gen: torch.Generator, chunk: int | None = None) -> est.Estimate:
    """``n`` per-sample estimates of ``method`` (``zobg`` or ``fobg``) at ``theta0``, in chunks.

    Samples whose Newton solve failed are dropped and replaced by fresh ones (counted in
    ``prob.sims.failed``): ZoBG rows are filtered; a FoBG chunk with failed samples (frozen by the
    step core, their gradient rows zero) is redone without them (same noise)."""
    chunk = chunk or prob.chunk
    theta = prob.theta0
    rows: list[torch.Tensor] = []
    have, attempts = 0, 0
    while have < n:
        attempts += 1
        if attempts > 10 * (n // chunk + 1):
            raise RuntimeError(f"{prob.name}: too many failed simulations while sampling {method}")
        m = max(min(chunk, n - have), 2)
        z = torch.randn((m,) + tuple(theta.shape), generator=gen, dtype=theta.dtype)
        r = est.smoothed_gradient(prob.f, theta, sigma, m, method, noise=z)
        bad = prob.last_failed[:m]
        if method == "zobg" and bool(prob.last_failed[m]):
            continue  # the noise-free baseline itself failed: drop the whole chunk
        if not bool(bad.any()):
            new = r.estimate.samples
        elif method == "zobg":
            new = r.estimate.samples[~bad]
        else:
            keep = ~bad
            if int(keep.sum()) < 2:
                continue
            redo = est.smoothed_gradient(prob.f, theta, sigma, int(keep.sum()), method, noise=z[keep])
            if bool(prob.last_failed.any()):
                continue
            new = redo.estimate.samples
        rows.append(new)
        have += int(new.shape[0])
    return est.Estimate(torch.cat(rows)[:n])


def _stats(ests: list[torch.Tensor], ref: torch.Tensor, ref_se: float, var_of_mean: float | None) -> dict:
    G = torch.stack(ests)  # (R, d)
    R = G.shape[0]
    nrm = float(ref.norm())
    mean = G.mean(0)
    var = float(G.var(0, unbiased=True).sum()) if var_of_mean is None else var_of_mean
    return {
        "bias_rel": float((mean - ref).norm()) / nrm,
        "bias_floor_rel": math.sqrt(var / R + ref_se ** 2) / nrm,
        "var_rel": var / nrm ** 2,
        "rmse_rel": float((G - ref).norm(dim=1).square().mean().sqrt()) / nrm,
    }


def study_config(prob: OpenLoopProblem, sigma: float, N: int, R: int, n_ref_fo: int, n_ref_zo: int,
                 gamma_rel: float = 1.0, delta: float = 0.05, seed: int = 0) -> dict:
    """One row of the study: bias and variance of the three estimators at ``theta0``."""
    t0 = time.perf_counter()
    # independent random numbers per row (a fluctuation of one draw must not repeat across rows)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{prob.name}|{prob.stiffness}|{sigma}".encode()))
    prob.sims.failed = 0
    ref_fo = _pool(prob, sigma, n_ref_fo, "fobg", gen)
    ref_zo = _pool(prob, sigma, n_ref_zo, "zobg", gen)
    use = "zobg" if prob.kind == "contact" else "fobg"
    ref_est = ref_zo if use == "zobg" else ref_fo
    ref = ref_est.grad
    ref_se = ref_est.stderr
    disc = float((ref_fo.grad - ref_zo.grad).norm())
    disc_se = math.sqrt(ref_fo.stderr ** 2 + ref_zo.stderr ** 2)
    P = N * R
    zo = _pool(prob, sigma, P, "zobg", gen)
    fo = _pool(prob, sigma, P, "fobg", gen)
    zo_r = [est.Estimate(zo.samples[r * N:(r + 1) * N]) for r in range(R)]
    fo_r = [est.Estimate(fo.samples[r * N:(r + 1) * N]) for r in range(R)]
    nrm = float(ref.norm())
    gamma = gamma_rel * nrm
    ao, choices = [], []
    for a, b in zip(zo_r, fo_r):
        e, c = est.alpha_order(a, b, gamma, delta)
        ao.append(e.grad)
        choices.append(c)
    res = {
        "zobg": _stats([e.grad for e in zo_r], ref, ref_se, zo.var / N),
        "fobg": _stats([e.grad for e in fo_r], ref, ref_se, fo.var / N),
        "aobg": _stats(ao, ref, ref_se, None),
    }
    res["zobg"]["per_sample_var_rel"] = zo.var / nrm ** 2
    res["fobg"]["per_sample_var_rel"] = fo.var / nrm ** 2
    res["aobg"]["alpha_mean"] = float(np.mean([c.alpha for c in choices]))
    res["aobg"]["eps_rel_mean"] = float(np.mean([c.eps for c in choices])) / nrm
    res["aobg"]["cases"] = {k: sum(c.case == k for c in choices) for k in ("zero", "interior", "clipped")}
    return {
        "scene": prob.name, "kind": prob.kind, "stiffness": prob.stiffness, "sigma": sigma, "d": prob.dim,
        "horizon": prob.horizon if isinstance(prob, StrikeProblem) else prob.task.horizon,
        "segment": prob.segment, "N": N, "R": R, "gamma_rel": gamma_rel,
        "delta": delta, "reference": use, "n_ref": {"fobg": n_ref_fo, "zobg": n_ref_zo}, "ref_norm": nrm,
        "ref_stderr_rel": ref_se / nrm, "ref_gap_rel": disc / nrm, "ref_z": disc / max(disc_se, 1e-300),
        "estimators": res, "failed_envs": prob.sims.failed, "time_s": time.perf_counter() - t0,
    }


def study(quick: bool = True, seed: int = 0, progress=None, problems=None) -> list[dict]:
    """All rows of the study (sizes in :data:`SIZES`; rope3d, 4x dearer per environment, has its
    own); ``progress(row)`` is called after each row; ``problems`` defaults to
    :func:`make_problems`."""
    sz = SIZES["quick" if quick else "full"]
    rows = []
    for prob in (make_problems(quick) if problems is None else problems):
        z = sz["rope"] if prob.name == "rope3d" else sz["strike"] if prob.name == "wall_strike" else sz["planar"]
        for sigma in sz["sigmas"]:
            row = study_config(prob, sigma, sz["N"], z["R"], z["ref_fo"], z["ref_zo"], sz["gamma_rel"], seed=seed)
            rows.append(row)
            if progress:
                progress(row)
    return rows


#: Study sizes. ``N`` samples per estimate, ``R`` estimates per estimator, reference sizes;
#: ``gamma_rel = 1``: AoBG may deviate from E[ZoBG] by at most ``||grad F||`` (w.p. 1 - delta),
#: which still guarantees an ascent direction.
SIZES = {
    "quick": {"sigmas": (0.1, 0.5), "N": 256, "gamma_rel": 1.0,
              "planar": {"R": 8, "ref_fo": 4096, "ref_zo": 32768},
              "rope": {"R": 4, "ref_fo": 512, "ref_zo": 2048},
              "strike": {"R": 8, "ref_fo": 8192, "ref_zo": 32768}},
    "full": {"sigmas": (0.05, 0.1, 0.2, 0.5), "N": 256, "gamma_rel": 1.0,
             "planar": {"R": 32, "ref_fo": 32768, "ref_zo": 262144},
             "rope": {"R": 8, "ref_fo": 4096, "ref_zo": 16384},
             "strike": {"R": 32, "ref_fo": 32768, "ref_zo": 131072}},
}

WALL = {
    "quick": {"stiffness": (1.0e4, 1.0e6), "sigma": 0.2, "N": 16, "seeds": 8, "iters": 40, "eta": 0.5,
              "max_step": 0.1, "gamma": 0.25, "n_eval": 256, "grid": 126, "grid_samples": 64},
    "full": {"stiffness": (1.0e3, 1.0e4, 1.0e5, 1.0e6), "sigma": 0.2, "N": 32, "seeds": 16, "iters": 60, "eta": 0.5,
             "max_step": 0.1, "gamma": 0.25, "n_eval": 1024, "grid": 251, "grid_samples": 256},
}


# ------------------------------------------------------------------------------------------------
# Wall strike: gradient ascent with each estimator
# ------------------------------------------------------------------------------------------------

def wall_strike(stiffness: float, sigma: float, N: int, seeds: int, iters: int, eta: float, max_step: float,
                gamma: float, n_eval: int, u0: float = 0.0, seed: int = 0, delta: float = 0.05,
                grid: int = 0, grid_samples: int = 64) -> dict:
    """Gradient ascent ``u <- u + clip(eta * g, -max_step, max_step)`` on ``F_sigma(u)`` from
    ``u0`` with ZoBG, FoBG and AoBG (``gamma`` absolute, in (m/s) per (m/s)), ``seeds`` runs of
    ``iters`` steps each; the seeds run as extra environments of one launch per step. Final
    values: ``f(u)`` (noise-free) and ``F_sigma(u)`` (``n_eval`` common samples)."""
    t0 = time.perf_counter()
    prob = StrikeProblem(stiffness)
    gen = torch.Generator().manual_seed(seed)
    out = {"stiffness": stiffness, "sigma": sigma, "N": N, "seeds": seeds, "iters": iters, "eta": eta,
           "max_step": max_step, "gamma": gamma, "delta": delta, "u0": u0, "methods": {}}
    w_eval = sigma * torch.randn(n_eval, 1, generator=gen, dtype=DTYPE)

    def F(us: torch.Tensor) -> torch.Tensor:  # (S,) -> (S,) smoothed value, common random numbers
        with torch.no_grad():
            rows = (us.reshape(-1, 1, 1) + w_eval[None]).reshape(-1, 1)
            return prob.f(rows).reshape(us.numel(), n_eval).mean(1)

    for method in est.METHODS:
        th = torch.full((seeds, 1), float(u0), dtype=DTYPE)
        hist_u, hist_alpha = [th.flatten().clone()], []
        for _ in range(iters):
            for attempt in range(3):  # a failed Newton solve has no gradient: redraw
                res = est.smoothed_gradients(prob.f, th, sigma, N, method, gamma=gamma, delta=delta,
                                             generator=gen)
                if method == "zobg" or not bool(prob.last_failed.any()):
                    break
                if attempt == 2:
                    raise GradientError(f"{prob.name}: failed Newton solves in 3 draws of {method}")
            g = torch.stack([r.grad for r in res])
            if method == "aobg":
                hist_alpha.append([r.alpha.alpha for r in res])
            th = th + torch.clamp(eta * g, -max_step, max_step)
            hist_u.append(th.flatten().clone())
        us = th.flatten()
        with torch.no_grad():
            f_end = prob.f(us.reshape(-1, 1))
        F_end = F(us)
        U = torch.stack(hist_u)  # (iters+1, seeds)
        F_hist = F(U[:: max(1, iters // 10)].reshape(-1)).reshape(-1, seeds)
        out["methods"][method] = {
            "u_final": us.tolist(), "f_final": f_end.tolist(), "F_final": F_end.tolist(),
            "u_mean": float(us.mean()), "u_std": float(us.std()), "f_mean": float(f_end.mean()),
            "f_std": float(f_end.std()), "F_mean": float(F_end.mean()), "F_std": float(F_end.std()),
            "u_history_mean": U.mean(1).tolist(),
            "F_history_iters": list(range(0, iters + 1, max(1, iters // 10))),
            "F_history_mean": F_hist.mean(1).tolist(),
        }
        if hist_alpha:
            out["methods"][method]["alpha_mean"] = float(np.mean(hist_alpha))
    if grid:
        u = torch.linspace(-0.5, 2.0, grid, dtype=DTYPE)
        with torch.no_grad():
            out["landscape"] = {"u": u.tolist(), "f": prob.f(u.reshape(-1, 1)).tolist()}
        wg = sigma * torch.randn(grid_samples, 1, generator=gen, dtype=DTYPE)
        with torch.no_grad():
            rows = (u.reshape(-1, 1, 1) + wg[None]).reshape(-1, 1)
            out["landscape"]["F"] = prob.f(rows).reshape(grid, grid_samples).mean(1).tolist()
        out["landscape"]["grid_samples"] = grid_samples
    out["failed_envs"] = prob.sims.failed
    out["time_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------------
# Tables (markdown)
# ------------------------------------------------------------------------------------------------

def study_table(rows: list[dict]) -> str:
    """Markdown table of the study: relative bias (noise floor) and relative variance."""
    head = ("| scene | k (N/m) | σ | d | ref | ‖ref‖ | ref z | ZoBG bias (floor) | ZoBG var | FoBG bias (floor) "
            "| FoBG var | AoBG bias (floor) | AoBG var | AoBG ᾱ |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        e = r["estimators"]
        k = "—" if r["stiffness"] is None else f"{r['stiffness']:.0e}"
        cells = [r["scene"], k, f"{r['sigma']:g}", str(r["d"]), r["reference"], f"{r['ref_norm']:.3g}",
                 f"{r['ref_z']:.1f}"]
        for m in est.METHODS:
            cells.append(f"{e[m]['bias_rel']:.3f} ({e[m]['bias_floor_rel']:.3f})")
            cells.append(f"{e[m]['var_rel']:.3g}")
        cells.append(f"{e['aobg']['alpha_mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wall_table(runs: list[dict]) -> str:
    """Markdown table of the wall strike: final u, f(u) and F_sigma(u), mean ± std over seeds."""
    lines = ["| wall k (N/m) | estimator | final u (m/s) | f(u) | F_σ(u) | mean α |", "|---|---|---|---|---|---|"]
    for r in runs:
        for m, d in r["methods"].items():
            a = f"{d['alpha_mean']:.2f}" if "alpha_mean" in d else "—"
            lines.append(f"| {r['stiffness']:.0e} | {m} | {d['u_mean']:.3f} ± {d['u_std']:.3f} | "
                         f"{d['f_mean']:.3f} ± {d['f_std']:.3f} | {d['F_mean']:.3f} ± {d['F_std']:.3f} | {a} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

_COLORS = {"zobg": "tab:blue", "fobg": "tab:red", "aobg": "tab:green"}


def plot_study(rows: list[dict], path: str) -> None:
    """Top: relative variance of one N-sample estimate vs sigma; bottom: relative bias in units of
    its noise floor (values near or below 1: no detectable bias)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    fig, axes = plt.subplots(2, len(scenes), figsize=(4.6 * len(scenes), 7.6), squeeze=False)
    styles = ["-", "--", ":", "-.", (0, (1, 3))]
    for j, scene in enumerate(scenes):
        sub = [r for r in rows if r["scene"] == scene]
        ks = sorted({r["stiffness"] for r in sub}, key=lambda v: -1 if v is None else v)
        sigmas = sorted({r["sigma"] for r in sub})
        for li, k in enumerate(ks):
            rr = sorted([r for r in sub if r["stiffness"] == k], key=lambda r: r["sigma"])
            sig = [r["sigma"] for r in rr]
            lab_k = "" if k is None else f", k={k:.0e}"
            for m in est.METHODS:
                e = [r["estimators"][m] for r in rr]
                axes[0, j].plot(sig, [x["var_rel"] for x in e], linestyle=styles[li % 5], marker="o",
                                color=_COLORS[m], label=f"{m}{lab_k}")
                axes[1, j].plot(sig, [max(x["bias_rel"] / x["bias_floor_rel"], 1e-2) for x in e],
                                linestyle=styles[li % 5], marker="o", color=_COLORS[m], label=f"{m}{lab_k}")
        axes[1, j].axhline(1.0, color="grey", lw=0.8)
        axes[1, j].axhline(3.0, color="grey", lw=0.8, ls=":")
        axes[0, j].set_title(f"{sub[0]['kind']}: {scene} (d={sub[0]['d']}, N={sub[0]['N']})", fontsize=10)
        axes[0, j].set_ylabel("tr Cov(N-sample estimate) / |ref|²")
        axes[1, j].set_ylabel("|mean − ref| / noise floor")
        for i in range(2):
            ax = axes[i, j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(sigmas))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel("σ (m/s)")
            ax.grid(alpha=0.3, which="both")
        axes[0, j].legend(fontsize=6, ncol=2 if len(ks) > 1 else 1)
    fig.suptitle("Gradient estimators at fixed open-loop parameters: variance (top) and bias in units of its "
                 "noise floor (bottom; dotted: 3)\nreference = large-sample FoBG (smooth, stiff), ZoBG (contact)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_wall(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(4.8 * len(runs), 7.0), squeeze=False)
    for j, r in enumerate(runs):
        ax = axes[0, j]
        if "landscape" in r:
            L = r["landscape"]
            ax.plot(L["u"], L["f"], color="k", lw=0.8, label="f(u) (noise-free)")
            ax.plot(L["u"], L["F"], color="purple", lw=1.5,
                    label=f"F_σ(u), σ={r['sigma']} ({L['grid_samples']} samples)")
        for m in est.METHODS:
            d = r["methods"][m]
            ax.scatter(d["u_final"], d["f_final"], color=_COLORS[m], s=18, zorder=3,
                       label=f"{m} final u (F̄={d['F_mean']:.3f})")
        ax.axvline(r["u0"], color="grey", ls=":", lw=0.8)
        ax.set_xlabel("handle push u (m/s)")
        ax.set_ylabel("−v_x(T) − effort (m/s)")
        ax.set_title(f"wall strike, wall stiffness {r['stiffness']:.0e} N/m")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1, j]
        for m in est.METHODS:
            d = r["methods"][m]
            ax.plot(d["F_history_iters"], d["F_history_mean"], marker="o", color=_COLORS[m],
                    label=f"{m}" + (f" (mean α={d['alpha_mean']:.2f})" if "alpha_mean" in d else ""))
        ax.set_xlabel("gradient-ascent iteration")
        ax.set_ylabel(f"F_σ(u), mean over {r['seeds']} seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------

def run(quick: bool = True, seed: int = 0, plots: str | None = None, verbose: bool = False,
        parts=("study", "wall"), progress=False) -> dict:
    """The whole benchmark; returns one JSON-able dict (plots written under ``plots``).
    ``progress``: a bar on stderr over the study's rows and the wall-strike runs; ``verbose``:
    also one line per row and run."""
    mode = "quick" if quick else "full"
    problems = make_problems(quick) if "study" in parts else []
    total = len(problems) * len(SIZES[mode]["sigmas"]) + (len(WALL[mode]["stiffness"]) if "wall" in parts else 0)
    with progress_bar(progress, total, f"estimators ({mode})", unit="row") as bar:
        return _run(quick, seed, plots, verbose, parts, problems, bar)


def _run(quick, seed, plots, verbose, parts, problems, bar) -> dict:
    t0 = time.perf_counter()
    revision = git_revision()  # at the start: the tree may change while a long run goes on
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    mode = "quick" if quick else "full"
    log = stderr_log(verbose)
    out: dict = {"benchmark": "estimators", "mode": mode, "seed": seed, "dtype": "float64", "device": "cpu",
                 "settings": {"study": SIZES[mode], "wall": WALL[mode]}}

    def row_done(r):
        log(f"{r['scene']:16s} k={r['stiffness']} σ={r['sigma']}: " + ", ".join(
            f"{m} bias {r['estimators'][m]['bias_rel']:.3f} var {r['estimators'][m]['var_rel']:.3g}"
            for m in est.METHODS) + f" α={r['estimators']['aobg']['alpha_mean']:.2f} ({r['time_s']:.1f}s)")
        bar.update()

    if "study" in parts:
        bar.set_postfix_str("study")
        out["study"] = study(quick, seed, progress=row_done, problems=problems)
    if "wall" in parts:
        w = WALL[mode]
        runs = []
        for k in w["stiffness"]:
            bar.set_postfix_str(f"wall strike k={k:g}")
            r = wall_strike(k, w["sigma"], w["N"], w["seeds"], w["iters"], w["eta"], w["max_step"], w["gamma"],
                            w["n_eval"], seed=seed, grid=w["grid"], grid_samples=w["grid_samples"])
            log(f"wall strike k={k:g}: " + ", ".join(
                f"{m} u={d['u_mean']:.2f} f={d['f_mean']:.3f} F={d['F_mean']:.3f}" for m, d in r["methods"].items())
                + f" ({r['time_s']:.1f}s)")
            bar.update()
            runs.append(r)
        out["wall_strike"] = {"runs": runs}
    if plots:
        os.makedirs(plots, exist_ok=True)
        files = []
        if "study" in out:
            p = os.path.join(plots, "estimators_bias_variance.png")
            plot_study(out["study"], p)
            files.append(p)
        if "wall_strike" in out:
            p = os.path.join(plots, "estimators_wall_strike.png")
            plot_wall(out["wall_strike"]["runs"], p)
            files.append(p)
        out["plots"] = files
    out["tables"] = {}
    if "study" in out:
        out["tables"]["study"] = study_table(out["study"])
    if "wall_strike" in out:
        out["tables"]["wall_strike"] = wall_table(out["wall_strike"]["runs"])
    out["time_s"] = time.perf_counter() - t0
    out.update(machine_info())
    out["git"] = revision
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m warpsim_rl.bench estimators`` (read back by :func:`from_args`)."""
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute on a CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plots", default=None, metavar="DIR", help="write estimators_*.png into DIR")
    p.add_argument("--only", choices=["study", "wall"], default=None, help="run one part only")
    p.add_argument("--verbose", action="store_true", help="also one result line per row on stderr")


def from_args(args) -> dict:
    """:func:`run` with the options of :func:`add_arguments`."""
    parts = (args.only,) if args.only else ("study", "wall")
    return run(args.quick, args.seed, args.plots, args.verbose, parts, progress=not getattr(args, "quiet", False))
