"""Benchmarks: ``python -m warpsim_rl.bench SUBCOMMAND ... --json``.

Subcommands:
    throughput  env-steps/s of the batched BDF2 step for one scene (random actions within the
                handle limits), with Newton iteration statistics.
    gradients   cost of the reverse pass and of all per-step Jacobians of a rollout.
    envs        env-steps/s of the torch environment for every registered task.
    compare     train several algorithms over seeds at equal epochs; test-bed learning curves.
    scaling     throughput of ``rope3d`` as its particle count grows.
    estimators  bias/variance of the ZoBG/FoBG/AoBG gradient estimators; the wall strike
                (``warpsim_rl.bench_estimators``).

Timings exclude kernel compilation (one warm-up step) and synchronise the device before the
clock stops. The CPU backend of Warp runs kernels on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import warp as wp

from .scene import load_scene
from .sim import Simulator
from .util import dtype_name, resolve_device


def _random_actions(model, rng, count):
    lim = model.scene.velocity_limit
    acts = rng.uniform(-1.0, 1.0, size=(count, model.num_envs, max(model.num_handles, 1), model.dim))
    if model.num_handles:
        acts = acts * lim[None, None]
    else:
        acts[:] = 0.0
    return [wp.array(a.astype(model.np_dtype), dtype=model.vec, device=model.device) for a in acts]


def throughput(scene: str, envs: int, steps: int = 100, device=None, dtype="float32", seed: int = 0,
               scene_params: dict | None = None, repeats: int = 5, dense: bool = False) -> dict:
    """Measure env-steps/s of ``steps`` BDF2 steps of ``envs`` environments; the reported rate
    is the median over ``repeats`` timed passes (the machine is a shared VM)."""
    sc = load_scene(scene, **(scene_params or {}))
    model = sc.build(num_envs=envs, device=device, dtype=dtype)
    if dense:  # the dense Cholesky baseline: the full band
        model.band = model.num_dofs - 1
    sim = Simulator(model)
    rng = np.random.default_rng(seed)
    # perturb the initial velocities so that Newton has work to do
    vel = np.broadcast_to(sc.velocities, (envs,) + sc.velocities.shape).copy()
    vel[:, ~sc.is_handle] += rng.normal(0.0, 0.5, size=(envs, 1, sc.dim))  # a rigid swing per env
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    actions = _random_actions(model, rng, 8)
    wp.copy(ctrl.action, actions[0])
    sim.step(s0, ctrl, s1, check=False)  # compile + warm up
    wp.synchronize_device(model.device)
    iters = wp.zeros(envs, dtype=wp.int32, device=model.device)
    iters_total = 0
    max_iters = 0
    sim.clear_failures()
    times = []
    for _ in range(repeats):
        s0.reset(velocities=vel)
        wp.synchronize_device(model.device)
        t0 = time.perf_counter()
        for t in range(steps):
            wp.copy(ctrl.action, actions[t % len(actions)])
            sim.step(s0, ctrl, s1, check=False)
            s0, s1 = s1, s0
        wp.synchronize_device(model.device)
        times.append(time.perf_counter() - t0)
    elapsed = float(np.median(times))
    # iteration statistics from a separate, identical pass (kept out of the timed loop)
    s0.reset(velocities=vel)
    for t in range(steps):
        wp.copy(ctrl.action, actions[t % len(actions)])
        sim.step(s0, ctrl, s1, check=False)
        s0, s1 = s1, s0
        it = sim.iterations.numpy()
        iters_total += int(it.sum())
        max_iters = max(max_iters, int(it.max()))
    envs_failed, _, _ = sim.failures()
    dev = resolve_device(device)
    return {
        "benchmark": "throughput",
        "scene": scene,
        "envs": envs,
        "steps": steps,
        "particles": model.num_particles,
        "dofs": model.num_dofs,
        "band": model.band,
        "solver": "dense" if dense else "banded",
        "device": str(dev),
        "dtype": dtype_name(dtype),
        "elapsed_s": elapsed,
        "repeats": repeats,
        "env_steps_per_s": envs * steps / elapsed,
        "env_steps_per_s_best": envs * steps / min(times),
        "newton_iters_mean": iters_total / (envs * steps),
        "newton_iters_max": max_iters,
        "failed_envs": len(envs_failed),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "warp": wp.__version__,
    }


def _peak_mem_mb(device) -> float:
    """Peak memory of this process: resident set on the CPU, device allocations on CUDA."""
    if device.is_cuda:
        import torch

        return (torch.cuda.max_memory_allocated() + wp.get_mempool_used_mem_high(device)) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gradients(scene: str, envs: int, steps: int = 50, device=None, dtype="float32", seed: int = 0,
              repeats: int = 3, scene_params: dict | None = None) -> dict:
    """Cost of a T-step rollout's reverse pass (implicit adjoints) and of all its per-step
    Jacobians, relative to the forward rollout. Times are medians over ``repeats``.

    * ``forward_plain_s``: the rollout with double-buffered states (what plain simulation costs);
    * ``forward_s``: the rollout keeping all T+1 states for the reverse pass;
    * ``backward_s``: the reverse sweep over the stored trajectory (one adjoint launch per step);
    * ``jacobian_s``: A_t and B_t for all T steps into preallocated (T, E, ns, ns)/(T, E, ns, na).
    """
    from .autodiff import Differentiator

    sc = load_scene(scene, **(scene_params or {}))
    model = sc.build(num_envs=envs, device=device, dtype=dtype)
    sim = Simulator(model)
    diff = Differentiator(sim)
    rng = np.random.default_rng(seed)
    vel = np.broadcast_to(sc.velocities, (envs,) + sc.velocities.shape).copy()
    vel[:, ~sc.is_handle] += rng.normal(0.0, 0.5, size=(envs, 1, sc.dim))
    actions = _random_actions(model, rng, steps)
    traj = [model.state(velocities=vel) for _ in range(steps + 1)]
    adj = [model.state() for _ in range(2)]
    adj_a = wp.zeros_like(actions[0])
    adj_k = wp.zeros_like(model.stiffness)
    adj_m = wp.zeros_like(model.mass)
    A = wp.zeros((steps, envs, model.num_state, model.num_state), dtype=model.dtype, device=model.device)
    B = wp.zeros((steps, envs, model.num_state, model.num_actions), dtype=model.dtype, device=model.device)
    s0, s1 = model.state(velocities=vel), model.state()

    def run_plain():
        a, b = s0, s1
        a.reset(velocities=vel)
        for t in range(steps):
            sim.launch(a.arrays(), actions[t], b.arrays())
            a, b = b, a

    def run_stored():
        for t in range(steps):
            sim.launch(traj[t].arrays(), actions[t], traj[t + 1].arrays(), cache=False)

    def run_backward():
        for st in adj:
            for arr in st.arrays():
                arr.zero_()
        for t in range(steps - 1, -1, -1):
            g_out, g_in = adj[(steps - t) % 2], adj[(steps - t + 1) % 2]
            for arr in g_in.arrays():
                arr.zero_()
            diff.vjp(traj[t].arrays(), actions[t], traj[t + 1].arrays(), g_out.arrays(), g_in.arrays(),
                     adj_a, adj_k, adj_m)

    def run_jacobians():
        for t in range(steps):
            diff.jacobians(traj[t].arrays(), actions[t], traj[t + 1].arrays(), A[t], B[t])

    def timed(fn):
        fn()  # warm-up (compilation)
        wp.synchronize_device(model.device)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            wp.synchronize_device(model.device)
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    forward_plain = timed(run_plain)
    forward = timed(run_stored)
    sim.clear_failures()
    run_stored()
    envs_failed, _, _ = sim.failures()
    backward = timed(run_backward)
    jac = timed(run_jacobians)
    jac_ok = bool(diff.ok.numpy().all())
    dev = resolve_device(device)
    return {
        "benchmark": "gradients",
        "scene": scene,
        "envs": envs,
        "steps": steps,
        "dofs": model.num_dofs,
        "state_size": model.num_state,
        "action_size": model.num_actions,
        "device": str(dev),
        "dtype": dtype_name(dtype),
        "repeats": repeats,
        "forward_plain_s": forward_plain,
        "forward_s": forward,
        "backward_s": backward,
        "jacobian_s": jac,
        "backward_over_forward": backward / forward,
        "jacobian_over_forward": jac / forward,
        "backward_over_forward_plain": backward / forward_plain,
        "jacobian_over_forward_plain": jac / forward_plain,
        "jacobian_buffer_mb": (A.capacity + B.capacity) / 2**20,
        "trajectory_mb": sum(a.capacity for st in traj for a in st.arrays()) / 2**20,
        "peak_mem_mb": _peak_mem_mb(dev),
        "failed_envs": len(envs_failed),
        "jacobians_ok": jac_ok,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "warp": wp.__version__,
    }


def compare(env: str, algos: list[str], seeds: list[int], epochs: int, num_envs: int, out: str,
            eval_every: int = 5, device="cpu", dtype="float32", png: str | None = None) -> dict:
    """Train every algorithm with every seed at equal epochs (``train.py`` runs under ``out``) and
    collect the test-bed learning curves and final results (PODS Fig. 3 / Table 1 style)."""
    from .algos import TrainConfig
    from .training import train

    runs = []
    for algo in algos:
        for seed in seeds:
            cfg = TrainConfig(env=env, algo=algo, seed=seed, epochs=epochs, num_envs=num_envs,
                              eval_every=eval_every, device=device, dtype=dtype, usd_envs=0,
                              out=f"{out}/{env}-{algo}-s{seed}")
            res = train(cfg, progress=False)
            import csv

            with open(f"{cfg.out}/metrics.csv") as f:
                curve = [(int(r["epoch"]), float(r["eval/reward"])) for r in csv.DictReader(f) if r.get("eval/reward")]
            runs.append({"algo": algo, "seed": seed, "results": res, "curve": curve})
    summary = {}
    for algo in algos:
        final = np.array([r["results"]["reward"] for r in runs if r["algo"] == algo])
        summary[algo] = {"final_reward_mean": float(final.mean()), "final_reward_std": float(final.std()),
                         "final_reward_per_seed": final.tolist(),
                         "train_time_s_mean": float(np.mean([r["results"]["train_time_s"] for r in runs
                                                             if r["algo"] == algo]))}
        for key in ("terminal_kinetic_energy", "distance_to_target", "action_magnitude"):
            summary[algo][key + "_mean"] = float(np.mean([r["results"][key] for r in runs if r["algo"] == algo]))
    if png:
        _plot_compare(env, algos, runs, png)
    return {"benchmark": "compare", "env": env, "epochs": epochs, "num_envs": num_envs, "seeds": seeds,
            "device": device, "dtype": dtype, "summary": summary, "runs": runs}


def _plot_compare(env, algos, runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in algos:
        curves = [r["curve"] for r in runs if r["algo"] == algo]
        ep = [e for e, _ in curves[0]]
        vals = np.array([[v for _, v in c] for c in curves])
        m, s = vals.mean(0), vals.std(0)
        ax.plot(ep, m, marker="o", label=f"{algo} ({len(curves)} seeds)")
        ax.fill_between(ep, m - s, m + s, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test-bed reward (1000 initial states)")
    ax.set_title(env)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaling(envs: int, particles: list[int], steps: int, device=None, dtype="float32") -> dict:
    """rope3d throughput per particle count, with the banded solver and with the dense baseline
    (same kernel, full band) — the measurement behind the choice of the banded Cholesky."""
    rows = []
    for n in particles:
        for dense in (False, True):
            r = throughput("rope3d", envs, steps, device, dtype, scene_params={"num_particles": n}, repeats=3,
                           dense=dense)
            rows.append({"particles": n, "solver": "dense" if dense else "banded", "dofs": r["dofs"],
                         "band": r["band"], "env_steps_per_s": r["env_steps_per_s"],
                         "newton_iters_mean": r["newton_iters_mean"]})
    return {"benchmark": "scaling", "scene": "rope3d", "envs": envs, "steps": steps, "device": str(resolve_device(device)),
            "dtype": dtype_name(dtype), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m warpsim_rl.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="env-steps/s of one scene")
    t.add_argument("--scene", required=True)
    t.add_argument("--envs", type=int, default=4096)
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--device", default="cpu")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--repeats", type=int, default=5, help="timed passes; the median is reported")
    t.add_argument("--dense", action="store_true", help="dense Cholesky baseline (full band)")
    t.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="scene parameter override, e.g. num_particles=20")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    gr = sub.add_parser("gradients", help="reverse pass and Jacobian cost vs the forward rollout")
    gr.add_argument("--scene", required=True)
    gr.add_argument("--envs", type=int, default=4096)
    gr.add_argument("--steps", type=int, default=50)
    gr.add_argument("--device", default="cpu")
    gr.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    gr.add_argument("--repeats", type=int, default=3)
    gr.add_argument("--json", action="store_true")
    cp = sub.add_parser("compare", help="train algorithms over seeds at equal epochs (PODS Fig. 3)")
    cp.add_argument("--env", default="pendulum2d-stop")
    cp.add_argument("--algos", nargs="+", default=["pods2", "bptt", "pods1"])
    cp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    cp.add_argument("--epochs", type=int, default=30)
    cp.add_argument("--num-envs", type=int, default=256)
    cp.add_argument("--eval-every", type=int, default=5)
    cp.add_argument("--out", default="runs/compare")
    cp.add_argument("--png", default=None, help="learning-curve figure")
    cp.add_argument("--device", default="cpu")
    cp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    cp.add_argument("--json", action="store_true")
    en = sub.add_parser("envs", help="env-steps/s of the torch env for every registered task")
    en.add_argument("--envs", type=int, default=4096)
    en.add_argument("--steps", type=int, default=100)
    en.add_argument("--device", default="cpu")
    en.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    en.add_argument("--repeats", type=int, default=3)
    en.add_argument("--task", action="append", default=None, help="task name (repeatable; default: all)")
    en.add_argument("--json", action="store_true")
    s = sub.add_parser("scaling", help="rope3d throughput vs particle count")
    s.add_argument("--envs", type=int, default=1024)
    s.add_argument("--particles", type=int, nargs="+", default=[5, 10, 20, 40])
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    s.add_argument("--json", action="store_true")
    from . import bench_estimators

    bench_estimators.add_arguments(sub.add_parser("estimators", help="gradient-estimator bias/variance study"))
    args = p.parse_args(argv)
    if args.cmd == "throughput":
        params = {}
        for kv in args.param:
            k, _, v = kv.partition("=")
            params[k] = json.loads(v)
        out = throughput(args.scene, args.envs, args.steps, args.device, args.dtype, scene_params=params,
                         repeats=args.repeats, dense=args.dense)
    elif args.cmd == "compare":
        out = compare(args.env, args.algos, args.seeds, args.epochs, args.num_envs, args.out, args.eval_every,
                      args.device, args.dtype, args.png)
    elif args.cmd == "envs":
        from .envs.bench_envs import bench_envs

        out = bench_envs(args.envs, args.steps, args.device, args.dtype, args.task, args.repeats)
    elif args.cmd == "estimators":
        out = bench_estimators.from_args(args)
    elif args.cmd == "gradients":
        out = gradients(args.scene, args.envs, args.steps, args.device, args.dtype, repeats=args.repeats)
    else:
        out = scaling(args.envs, args.particles, args.steps, args.device, args.dtype)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
