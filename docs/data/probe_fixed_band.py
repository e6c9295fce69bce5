"""The BDF2 step with the generic banded factorisation against the one specialised to the model's
band (linalg.fixed_band), same process, interleaved twice, one Warp thread; per env and step (best
of 5 timed runs), and whether the final positions agree bitwise (issue 19, item 4).

    python docs/data/probe_fixed_band.py            # all cases
    python docs/data/probe_fixed_band.py skip cloth  # cases whose name contains one of these
"""
import sys, time, json, numpy as np, warp as wp
wp.config.quiet = True
from warpsim_rl.bench import anchor
from warpsim_rl.sim import Simulator
from warpsim_rl.kernels.bdf2 import bdf2_kernels
from warpsim_rl.kernels.linalg import fixed_band
from warpsim_rl.tasks import registry

def skip_rope(skip, dt=0.005):
    from warpsim_rl.scene import SceneBuilder
    prob = anchor.PROBLEMS["rope_k1e4"]
    b = SceneBuilder(f"skip{skip}", dim=3, dt=dt, gravity=[0.0, -9.81, 0.0])
    pos = prob.positions
    ids = [b.add_handle(pos[0], velocity_limit=[2.0] * 3, name="top")]
    for i in range(1, prob.points + 1):
        p = b.add_particle(pos[i], mass=prob.mass / prob.points, name=f"p{i}")
        b.add_spring(ids[-1], p, prob.stiffness, rest_length=prob.rest_length, kind="bilateral")
        ids.append(p)
    for i in range(1, prob.points + 1 - skip):
        b.add_spring(ids[i], ids[i + skip], 0.1 * prob.stiffness, kind="bilateral")
    return b.finalize()

def anchor_model(name, dt, E, dtype):
    return anchor.warpsim_scene(anchor.PROBLEMS[name], dt).build(num_envs=E, device="cpu", dtype=dtype, threads=1)

def task_model(name, E, dtype):
    return registry.load_scene(name).build(num_envs=E, device="cpu", dtype=dtype, threads=1)

def timed(model, kernels, steps, reps=5):
    sim = Simulator(model); sim.kernels = kernels
    a, b = model.state(), model.state(); ctl = model.control()
    rng = np.random.default_rng(0)
    if ctl.action.shape[1]:
        ctl.action.assign((0.3 * rng.standard_normal((model.num_envs, ctl.action.shape[1], model.dim))).astype(np.float32 if model.dtype == wp.float32 else np.float64))
    for _ in range(10):
        sim.step(a, ctl, b, check=False); a, b = b, a
    wp.synchronize()
    best = 1e9
    for r in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            sim.step(a, ctl, b, check=False); a, b = b, a
        wp.synchronize(); best = min(best, (time.perf_counter() - t0) / steps)
    return best / model.num_envs * 1e6, a.x.numpy(), float(sim.iterations.numpy().mean())

cases = [("anchor rope_k1e4 dt 0.005", lambda dt: anchor_model("rope_k1e4", 0.005, 1024, dt), 40),
         ("anchor rope_k1e4 dt 0.02", lambda dt: anchor_model("rope_k1e4", 0.02, 1024, dt), 40),
         ("rope3d", lambda dt: task_model("rope3d", 1024, dt), 40),
         ("double_pendulum3d", lambda dt: task_model("double_pendulum3d", 4096, dt), 40),
         ("cloth_table", lambda dt: task_model("cloth_table", 256, dt), 10)]
cases += [(f"rope + skip-{k} springs", (lambda k: lambda dt: skip_rope(k).build(num_envs=1024, device="cpu", dtype=dt, threads=1))(k), 20) for k in (2, 3, 4, 5)]
sel = sys.argv[1:]
out = []
for name, make, steps in cases:
    if sel and not any(x in name for x in sel):
        continue
    for dtype in ("float32", "float64"):
        m = make(dtype)
        gen = bdf2_kernels(m.dtype, m.dim, m.num_geometries > 0)
        fix = bdf2_kernels(m.dtype, m.dim, m.num_geometries > 0, fixed_band(m.band))
        r = {}
        for k in range(2):  # interleaved twice
            for label, kern in (("generic", gen), ("fixed", fix)):
                us, x, it = timed(m, kern, steps)
                r.setdefault(label, []).append(us); r[label + "_x"] = x; r["iters"] = it
        row = {"case": name, "dtype": dtype, "N": m.num_dofs, "B": m.band, "E": m.num_envs, "iters": round(r["iters"], 2),
               "generic_us": round(min(r["generic"]), 3), "fixed_us": round(min(r["fixed"]), 3),
               "speedup": round(min(r["generic"]) / min(r["fixed"]), 3),
               "bitwise": bool(np.array_equal(r["generic_x"], r["fixed_x"]))}
        out.append(row); print(json.dumps(row), flush=True)
