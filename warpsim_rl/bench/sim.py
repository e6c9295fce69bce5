"""Simulator benchmarks: ``python -m warpsim_rl.bench throughput|gradients|scaling``.

* :func:`throughput`: env-steps/s of the batched BDF2 step for one scene (random actions within
  the handle limits), with Newton iteration statistics;
* :func:`gradients`: cost of the reverse pass and of all per-step Jacobians of a rollout;
* :func:`scaling`: throughput of ``rope3d`` as its particle count grows, banded and dense.

Timings follow :mod:`warpsim_rl.bench.common`; ``progress`` (a bool, or a caller's tqdm bar) shows
the passes on stderr. The CPU backend of Warp runs kernels on one core.
"""

from __future__ import annotations

import numpy as np
import warp as wp

from ..scene import load_scene
from ..sim import Simulator
from ..util import dtype_name, resolve_device
from .common import machine_info, progress_bar, random_actions, rates, swing_velocities, time_passes

__all__ = ["throughput", "gradients", "scaling", "throughput_units", "gradients_units"]


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
