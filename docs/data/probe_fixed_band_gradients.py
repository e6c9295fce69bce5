"""Forward + backward of a rollout (`TorchSimulator.rollout` + `backward()`, the implicit adjoint's
VJP kernel) with the generic banded factorisation against the one specialised to the model's band
(linalg.fixed_band), interleaved in one process, one Warp thread and one torch thread; best of 3,
and whether the action gradients agree bitwise (issue 19, item 4).

    python docs/data/probe_fixed_band_gradients.py
"""
import json, time, torch, warp as wp
wp.config.quiet = True
torch.set_num_threads(1)
from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.kernels.adjoint import adjoint_kernels
from warpsim_rl.kernels.bdf2 import bdf2_kernels
from warpsim_rl.kernels.linalg import fixed_band
from warpsim_rl.tasks import registry


def timed(ts, kernels, actions, x0, reps=3):
    ts.sim.kernels, ts.diff.kernels = kernels
    best_f = best_b = 1e9
    for _ in range(reps):
        a = actions.clone().requires_grad_(True)
        t0 = time.perf_counter()
        traj = ts.rollout(x0, a, keep="last")
        loss = traj[-1][0].square().sum()  # the final positions
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
    return best_f, best_b, a.grad


for scene, E, T in (("rope3d", 256, 100), ("double_pendulum3d", 2048, 100)):
    for dtype in ("float32", "float64"):
        model = registry.load_scene(scene).build(num_envs=E, device="cpu", dtype=dtype, threads=1)
        ts = TorchSimulator(model)
        m = model
        contact = m.num_geometries > 0
        kernels = {"generic": (bdf2_kernels(m.dtype, m.dim, contact), adjoint_kernels(m.dtype, m.dim, contact)),
                   "fixed": (bdf2_kernels(m.dtype, m.dim, contact, fixed_band(m.band)),
                             adjoint_kernels(m.dtype, m.dim, contact, fixed_band(m.band)))}
        g = torch.Generator().manual_seed(0)
        actions = 0.3 * torch.randn((T, E, m.num_handles, m.dim), generator=g, dtype=ts.torch_dtype)
        x0 = ts.initial_state()
        res = {}
        for _ in range(2):
            for name, k in kernels.items():
                f, b, grad = timed(ts, k, actions, x0)
                old = res.get(name, (1e9, 1e9, None))
                res[name] = (min(old[0], f), min(old[1], b), grad)
        print(json.dumps({"scene": scene, "dtype": dtype, "E": E, "T": T, "band": m.band,
                          "forward_s": [round(res[n][0], 3) for n in ("generic", "fixed")],
                          "backward_s": [round(res[n][1], 3) for n in ("generic", "fixed")],
                          "backward_speedup": round(res["generic"][1] / res["fixed"][1], 3),
                          "bitwise": bool(torch.equal(res["generic"][2], res["fixed"][2]))}), flush=True)
