"""Simulator benchmarks: ``python -m warpsim_rl.bench throughput|gradients|scaling``.

* :func:`throughput`: env-steps/s of the batched BDF2 step for one scene (random actions within
  the handle limits), with Newton iteration statistics;
* :func:`gradients`: cost of the reverse pass and of all per-step Jacobians of a rollout;
* :func:`horizon_sweep`: forward and backward time and peak memory of the torch rollout
  (``TorchSimulator.rollout`` + ``loss.backward()``) per horizon T, each in a fresh process;
* :func:`scaling`: throughput of ``rope3d`` as its particle count grows, banded and dense.

Timings follow :mod:`warpsim_rl.bench.common`; ``progress`` (a bool, or a caller's tqdm bar) shows
the passes on stderr. The CPU backend of Warp runs kernels on one core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import warp as wp

from ..scene import load_scene
from ..sim import Simulator
from ..util import dtype_name, resolve_device
from .common import machine_info, progress_bar, random_actions, rates, swing_velocities, time_passes

__all__ = ["throughput", "gradients", "horizon_sweep", "torch_rollout_cost", "scaling", "throughput_units",
           "gradients_units"]


def throughput_units(repeats: int) -> int:
    """Progress units of one :func:`throughput`: the warm-up, ``repeats`` timed passes and the
    pass that collects the Newton statistics."""
    return repeats + 2


def gradients_units(repeats: int) -> int:
    """Progress units of one :func:`gradients`: four timed phases of a warm-up and ``repeats``
    passes each, and the forward pass that counts failures."""
    return 4 * (repeats + 1) + 1


def _header(benchmark: str, scene: str, model, steps: int, repeats: int) -> dict:
    """The first entries of a result: what ran, where, how often."""
    return {"benchmark": benchmark, "scene": scene, "envs": model.num_envs, "steps": steps, "device": str(model.device),
            "dtype": dtype_name(model.dtype), "repeats": repeats, "threads": model.shards.threads}


def throughput(scene: str, envs: int, steps: int = 100, device=None, dtype="float32", seed: int = 0,
               scene_params: dict | None = None, repeats: int = 5, dense: bool = False, progress=False,
               threads: int | None = None) -> dict:
    """Measure env-steps/s of ``steps`` BDF2 steps of ``envs`` environments; the reported rate
    is the median over ``repeats`` timed passes (the machine is a shared VM). ``threads``: CPU
    launch threads (``Model.threads``; default the available cores)."""
    with progress_bar(progress, throughput_units(repeats), f"throughput {scene}") as bar:
        return _throughput(scene, envs, steps, device, dtype, seed, scene_params, repeats, dense, bar, threads)


def _throughput(scene, envs, steps, device, dtype, seed, scene_params, repeats, dense, bar, threads) -> dict:
    sc = load_scene(scene, **(scene_params or {}))
    model = sc.build(num_envs=envs, device=device, dtype=dtype, threads=threads)
    if dense:  # the dense Cholesky baseline: the full band
        model.band = model.num_dofs - 1
    sim = Simulator(model)
    rng = np.random.default_rng(seed)
    vel = swing_velocities(sc, envs, rng)  # so that Newton has work to do
    bufs = [model.state(velocities=vel), model.state()]
    ctrl = model.control()
    actions = random_actions(model, rng, 8)
    wp.copy(ctrl.action, actions[0])
    sim.step(bufs[0], ctrl, bufs[1], check=False)  # compile + warm up
    wp.synchronize_device(model.device)
    bar.update()

    def run(on_step=None):
        s0, s1 = bufs
        for t in range(steps):
            wp.copy(ctrl.action, actions[t % len(actions)])
            sim.step(s0, ctrl, s1, check=False)
            s0, s1 = s1, s0
            if on_step is not None:
                on_step()
        bufs[:] = [s0, s1]

    sim.clear_failures()
    times = time_passes(run, repeats, model.device, setup=lambda: bufs[0].reset(velocities=vel), on_pass=bar.update)
    # iteration statistics from a separate, identical pass (kept out of the timed loop)
    its = []
    bufs[0].reset(velocities=vel)
    run(lambda: its.append(sim.iterations.numpy().copy()))
    bar.update()
    its = np.array(its)
    envs_failed, _, _ = sim.failures()
    return {
        **_header("throughput", scene, model, steps, repeats),
        "particles": model.num_particles,
        "dofs": model.num_dofs,
        "band": model.band,
        "solver": "dense" if dense else "banded",
        **rates(times, envs * steps),
        "newton_iters_mean": float(its.sum()) / (envs * steps),
        "newton_iters_max": int(its.max()),
        "failed_envs": len(envs_failed),
        **machine_info(),
    }


def _peak_mem_mb(device) -> float:
    """Peak memory of this process: resident set on the CPU, device allocations on CUDA."""
    if device.is_cuda:
        import torch

        return (torch.cuda.max_memory_allocated() + wp.get_mempool_used_mem_high(device)) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gradients(scene: str, envs: int, steps: int = 50, device=None, dtype="float32", seed: int = 0,
              repeats: int = 3, scene_params: dict | None = None, progress=False, threads: int | None = None) -> dict:
    """Cost of a T-step rollout's reverse pass (implicit adjoints) and of all its per-step
    Jacobians, relative to the forward rollout. Times are medians over ``repeats``.

    * ``forward_plain_s``: the rollout with double-buffered states (what plain simulation costs);
    * ``forward_s``: the rollout keeping all T+1 states for the reverse pass;
    * ``backward_s``: the reverse sweep over the stored trajectory (one adjoint launch per step);
    * ``jacobian_s``: A_t and B_t for all T steps into preallocated (T, E, ns, ns)/(T, E, ns, na).
    """
    with progress_bar(progress, gradients_units(repeats), f"gradients {scene}") as bar:
        return _gradients(scene, envs, steps, device, dtype, seed, repeats, scene_params, bar, threads)


def _gradients(scene, envs, steps, device, dtype, seed, repeats, scene_params, bar, threads) -> dict:
    from ..autodiff import Differentiator

    sc = load_scene(scene, **(scene_params or {}))
    model = sc.build(num_envs=envs, device=device, dtype=dtype, threads=threads)
    sim = Simulator(model)
    diff = Differentiator(sim)
    rng = np.random.default_rng(seed)
    vel = swing_velocities(sc, envs, rng)
    actions = random_actions(model, rng, steps)
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

    def timed(fn, phase):
        bar.set_postfix_str(phase)
        fn()  # warm-up (compilation)
        bar.update()
        return float(np.median(time_passes(fn, repeats, model.device, on_pass=bar.update)))

    forward_plain = timed(run_plain, "forward (plain)")
    forward = timed(run_stored, "forward (stored)")
    sim.clear_failures()
    run_stored()
    bar.update()
    envs_failed, _, _ = sim.failures()
    backward = timed(run_backward, "backward")
    jac = timed(run_jacobians, "Jacobians")
    jac_ok = bool(diff.ok.numpy().all())
    return {
        **_header("gradients", scene, model, steps, repeats),
        "dofs": model.num_dofs,
        "state_size": model.num_state,
        "action_size": model.num_actions,
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
        "peak_mem_mb": _peak_mem_mb(model.device),
        "failed_envs": len(envs_failed),
        "jacobians_ok": jac_ok,
        **machine_info(),
    }


def horizon_sweep(scene: str, envs: int, steps: list[int], device=None, dtype="float32", seed: int = 0,
                  repeats: int = 3, scene_params: dict | None = None, progress=False, threads: int | None = None,
                  checkpoint_every: int | None = None, keep: str | int | None = None) -> dict:
    """Cost of a differentiable torch rollout as the horizon grows: for each T of ``steps``,
    :func:`torch_rollout_cost` in a fresh Python process (so that each T's peak resident set is
    its own: ``ru_maxrss`` never goes down). ``checkpoint_every`` / ``keep``: those of
    :meth:`~warpsim_rl.autodiff.TorchSimulator.rollout`.

    Returns the header, ``rows`` (one :func:`torch_rollout_cost` result per T, plus
    ``forward_per_step_over_first`` and ``backward_per_step_over_first``: its time per step over
    that of the first T) and ``backward_per_step_ratio_max`` (the largest of the latter): 1 for a
    cost linear in T."""
    from ..autodiff import TorchSimulator

    TorchSimulator.kept_steps(1, keep, checkpoint_every)  # a bad keep / checkpoint_every fails here, not per T
    job = {"scene": scene, "envs": envs, "device": device, "dtype": dtype, "seed": seed, "repeats": repeats,
           "scene_params": scene_params, "threads": threads, "checkpoint_every": checkpoint_every, "keep": keep}
    rows = []
    with progress_bar(progress, len(steps), f"gradients {scene} horizons", unit="horizon") as bar:
        for T in steps:
            bar.set_postfix_str(f"T = {T}")
            rows.append(_cost_in_subprocess({**job, "steps": int(T)}))
            bar.update()
    for r in rows:
        for phase in ("forward", "backward"):
            r[f"{phase}_per_step_over_first"] = r[f"{phase}_per_step_ms"] / rows[0][f"{phase}_per_step_ms"]
    first = rows[0] if rows else {}
    return {"benchmark": "gradients_horizon", "scene": scene, "envs": envs, "steps": [int(T) for T in steps],
            "device": first.get("device"), "dtype": dtype, "repeats": repeats, "threads": first.get("threads"),
            "torch_threads": 1, "checkpoint_every": checkpoint_every, "keep": keep, "rows": rows,
            "backward_per_step_ratio_max": max((r["backward_per_step_over_first"] for r in rows), default=None),
            **machine_info()}


def _cost_in_subprocess(job: dict) -> dict:
    """:func:`torch_rollout_cost` of the keyword arguments ``job`` in a new Python process (one
    torch thread, ``OMP_NUM_THREADS=1``); its result comes back through a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        code = ("import json, sys; from warpsim_rl.bench.sim import torch_rollout_cost; "
                "json.dump(torch_rollout_cost(**json.loads(sys.argv[1])), open(sys.argv[2], 'w'))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(job), out], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"gradients at T = {job['steps']}: the measuring process failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def _rss_mb() -> float | None:
    """Current resident set of this process in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def torch_rollout_cost(scene: str, envs: int, steps: int, device=None, dtype="float32", seed: int = 0,
                       repeats: int = 3, scene_params: dict | None = None, threads: int | None = None,
                       checkpoint_every: int | None = None, keep: str | int | None = None) -> dict:
    """Time and memory of ``TorchSimulator.rollout(state, actions, checkpoint_every=, keep=)``
    and ``loss.backward()`` in this process (torch on one intra-op thread), for random actions
    (T, E, h, dim) within the handle limits requiring grad, from swinging initial states; the loss
    is the last state's ``sum(v^2)``. After one short warm-up rollout (kernel loading), the
    medians over ``repeats`` passes:

    * ``forward_s`` (rollout and loss), ``backward_s``, and both per step in ms;
    * ``peak_rss_mb``: this process's peak resident set (MiB; on CUDA, peak device allocations),
      ``rss_before_mb``: its resident set before the first timed pass, ``rollout_peak_mb``: the
      difference, what the rollout and its backward pass added;
    * ``states_returned`` (the kept states) and ``state_mb`` (one state's four tensors).
    Run it in a fresh process per T (:func:`horizon_sweep`) for an honest peak."""
    import torch

    from ..autodiff import TorchSimulator

    torch.set_num_threads(1)
    sc = load_scene(scene, **(scene_params or {}))
    model = sc.build(num_envs=envs, device=device, dtype=dtype, threads=threads)
    ts = TorchSimulator(model)
    rng = np.random.default_rng(seed)
    state = ts.initial_state(velocities=swing_velocities(sc, envs, rng))
    actions = torch.stack([wp.to_torch(a) for a in random_actions(model, rng, steps)])

    def sync():
        wp.synchronize_device(model.device)

    def one_pass(T):
        a = actions[:T].clone().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        states = ts.rollout(state, a, checkpoint_every=checkpoint_every, keep=keep)
        loss = states[-1][1].square().sum()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        return t1 - t0, time.perf_counter() - t1, len(states)

    one_pass(min(steps, 3))  # warm-up: kernel loading, first allocations
    before = _rss_mb()
    passes = [one_pass(steps) for _ in range(repeats)]
    forward, backward = (float(np.median([p[i] for p in passes])) for i in (0, 1))
    peak = _peak_mem_mb(model.device)
    return {"steps": steps, "envs": envs, "device": str(model.device), "threads": model.shards.threads,
            "forward_s": forward, "backward_s": backward, "forward_per_step_ms": 1e3 * forward / steps,
            "backward_per_step_ms": 1e3 * backward / steps, "peak_rss_mb": peak, "rss_before_mb": before,
            "rollout_peak_mb": None if before is None or model.device.is_cuda else peak - before,
            "states_returned": passes[0][2], "state_mb": sum(t.nbytes for t in state) / 2**20}


def scaling(envs: int = 256, particles: list[int] = (5, 10, 20, 40), steps: int = 20, device=None,
            dtype="float32", repeats: int = 3, progress=False) -> dict:
    """rope3d throughput per particle count, with the banded solver and with the dense baseline
    (same kernel, full band) — the measurement behind the choice of the banded Cholesky. The
    dense solve costs ~N³/3 per Newton iteration: at 40 particles (N = 120) it takes most of the
    run, whose time is linear in ``envs`` (256: about 30 s on one idle CPU core)."""
    rows = []
    configs = [(n, dense) for n in particles for dense in (False, True)]
    with progress_bar(progress, len(configs) * throughput_units(repeats), "scaling rope3d") as bar:
        for n, dense in configs:
            bar.set_postfix_str(f"{n} particles, {'dense' if dense else 'banded'}")
            r = throughput("rope3d", envs, steps, device, dtype, scene_params={"num_particles": n}, repeats=repeats,
                           dense=dense, progress=bar)
            rows.append({"particles": n, "solver": "dense" if dense else "banded", "dofs": r["dofs"],
                         "band": r["band"], "env_steps_per_s": r["env_steps_per_s"],
                         "newton_iters_mean": r["newton_iters_mean"]})
    return {"benchmark": "scaling", "scene": "rope3d", "envs": envs, "steps": steps, "repeats": repeats,
            "device": str(resolve_device(device)), "dtype": dtype_name(dtype), "rows": rows, **machine_info()}
