"""PODS' Gauss-Newton step: the dense factorisation of H against the Riccati recursion (2026-12-02).

    python docs/data/probe_gn_solver.py accuracy E TASK [TASK ...]   # at each task's untrained policy (seed 0)
    python docs/data/probe_gn_solver.py cost                          # random problems of the tasks' sizes

``accuracy``: one closed-loop rollout of E envs with its Jacobians (float32, as PODS runs; the
largest eigenvalue of each rollout's Gauss-Newton matrix, against the damping of 1, is printed with
the task), then the
step of each solver in float32 and in float64 (of the same float32 gradient), each compared with the
float64 Riccati step of the float64 gradient: relative error per rollout (median, max) and the
solver's CPU time per env. ``cost``: CPU time per env of both solvers in float32 on random
problems with the sizes (T, ns, na) of four tasks, one torch thread, best of 3.
"""
import sys
import time

import torch

from warpsim_rl.algos import RunConfig, algo_config, make_algorithm
from warpsim_rl.algos.trajectory import gauss_newton_direction, gauss_newton_riccati, value_gradient
from warpsim_rl.tasks import make_task

torch.set_num_threads(1)


def gauss_newton_matrix(A, B, c_ss):
    """``sum_t J_{t+1}^T diag(c_ss) J_{t+1}`` (E, T na, T na): H without the action cost and the
    damping, formed as gauss_newton_direction forms it."""
    T, E, ns, na = B.shape
    H = torch.zeros(E, T * na, T * na, dtype=B.dtype)
    J = torch.zeros(E, ns, T * na, dtype=B.dtype)
    for t in range(T):
        w = t * na
        if t > 0:
            J[:, :, :w] = torch.bmm(A[t], J[:, :, :w])
        J[:, :, w:w + na] = B[t]
        H[:, :w + na, :w + na] += torch.bmm(J[:, :, :w + na].transpose(1, 2) * c_ss, J[:, :, :w + na])
    return H


def accuracy(E, tasks):
    for name in tasks:
        task = make_task(name)
        pods = make_algorithm(task, RunConfig(num_envs=E, seed=0), algo_config("pods2"))
        traj = pods.core.rollout(pods.policy, pods.initial_state(), task.horizon, jacobians=True)
        d = [pods.core.reward_derivatives(traj.states[t + 1], traj.actions[t]) for t in range(task.horizon)]
        dr_ds, dr_da = torch.stack([x["dr_ds"] for x in d]), torch.stack([x["dr_da"] for x in d])
        c_ss, c_aa = -d[-1]["d2r_ds2"], -d[-1]["d2r_da2"]
        A, B = traj.A, traj.B
        g32 = value_gradient(A, B, dr_ds, dr_da)
        D = lambda x: x.double()
        ref = gauss_newton_riccati(D(A), D(B), value_gradient(D(A), D(B), D(dr_ds), D(dr_da)), D(c_ss), D(c_aa), 1.0)
        lam = torch.linalg.eigvalsh(gauss_newton_matrix(D(A), D(B), D(c_ss)))[:, -1]
        out = [f"{name} (E {E}; largest eigenvalue of H, float64, over the rollouts: median {float(lam.median()):.3g}, "
               f"max {float(lam.max()):.3g}; the damping is 1)"]
        for label, solve, cast in (("dense32", gauss_newton_direction, lambda x: x),
                                   ("riccati32", gauss_newton_riccati, lambda x: x),
                                   ("dense64", gauss_newton_direction, D), ("riccati64", gauss_newton_riccati, D)):
            t0 = time.process_time()
            step = solve(cast(A), cast(B), cast(g32), cast(c_ss), cast(c_aa), 1.0)
            cpu = time.process_time() - t0
            err = (step.double() - ref).norm(dim=(0, 2)) / ref.norm(dim=(0, 2))
            out.append(f"{label}: median {float(err.median()):.1e} max {float(err.max()):.1e} {cpu / E * 1e3:.2f} ms/env")
        print(" | ".join(out), flush=True)


def cost():
    gen = torch.Generator().manual_seed(0)
    sizes = {"cable_payload2d": (100, 256, 12, 4), "pendulum2d": (100, 256, 10, 2), "rope3d": (100, 64, 123, 3),
             "cloth_table": (150, 8, 318, 6)}
    for name, (T, E, ns, na) in sizes.items():
        A = torch.eye(ns) + 0.03 * torch.randn(T, E, ns, ns, generator=gen) / ns ** 0.5
        B = 0.1 * torch.randn(T, E, ns, na, generator=gen)
        g = torch.randn(T, E, na, generator=gen)
        c_ss = torch.rand(ns, generator=gen)
        c_ss[::2] = 0.0
        c_aa = torch.full((na,), 0.02)
        best = {}
        for solve in (gauss_newton_direction, gauss_newton_riccati):
            solve(A, B, g, c_ss, c_aa, 1.0)
            times = []
            for _ in range(3):
                t0 = time.process_time()
                solve(A, B, g, c_ss, c_aa, 1.0)
                times.append(time.process_time() - t0)
            best[solve.__name__] = min(times) / E * 1e3
        dense, riccati = best["gauss_newton_direction"], best["gauss_newton_riccati"]
        print(f"{name} (T {T}, E {E}, ns {ns}, na {na}): dense {dense:.2f} ms/env, riccati {riccati:.2f} ms/env, "
              f"dense / riccati {dense / riccati:.1f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "accuracy":
        accuracy(int(sys.argv[2]), sys.argv[3:])
    else:
        cost()
