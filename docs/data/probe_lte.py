"""Error-controlled Newton stop (SolverSettings.lte_fraction): Newton iterations per step, step
cost and whole-trajectory error (max over particles and 0.02-s samples over 2 s) against a scipy
DOP853 reference (rtol 1e-12), for the 20-point bilateral rope (1 kg, 1 m, released at 30 deg,
unstretched) or the 1 kg, 1 m spring pendulum, at 256 envs on one Warp thread.

    python docs/data/probe_lte.py rope 1e4      # or: rope 1e5, pend 1e4
"""
import sys, time, dataclasses, numpy as np, warp as wp
from scipy.integrate import solve_ivp
from warpsim_rl.scene import scene_from_dict
from warpsim_rl.sim import Simulator
wp.config.quiet = True
TOP = {"name": "top", "handle": True, "position": [0.0, 0.0, 0.0], "velocity_limit": [2.0, 2.0, 2.0]}
SCENE = {"dim": 3, "dt": 0.01, "gravity": [0.0, -9.81, 0.0]}
ROPE = {"scene": {"name": "rope20", **SCENE}, "particles": [TOP],
        "chains": [{"name": "rope", "start": "top", "end": [0.5, -0.8660254, 0.0], "segments": 19,
                    "mass": 1.0 / 19.0, "stiffness": 1.0e4, "kind": "bilateral"}]}
PEND = {"scene": {"name": "pendulum", **SCENE},
        "particles": [TOP, {"name": "bob", "mass": 1.0, "position": [0.5, -0.8660254, 0.0]}],
        "springs": [{"particles": ["top", "bob"], "stiffness": 1.0e4, "kind": "bilateral"}]}


def reference(scene, T=2.0):
    x0 = scene.positions.astype(np.float64); free = ~scene.is_handle; m = scene.masses
    I, J = scene.springs[:, 0], scene.springs[:, 1]; k = scene.stiffness; L = scene.rest_length
    g = scene.gravity
    def rhs(t, y):
        x = x0.copy(); v = np.zeros_like(x0)
        x[free] = y[: free.sum() * 3].reshape(-1, 3); v[free] = y[free.sum() * 3:].reshape(-1, 3)
        d = x[J] - x[I]; l = np.linalg.norm(d, axis=1); f = (k * (l - L) / l)[:, None] * d
        F = np.zeros_like(x); np.add.at(F, I, f); np.add.at(F, J, -f)
        a = F[free] / m[free][:, None] + g
        return np.concatenate([v[free].ravel(), a.ravel()])
    y0 = np.concatenate([x0[free].ravel(), np.zeros(free.sum() * 3)])
    ts = np.arange(1, int(round(T / 0.02)) + 1) * 0.02
    sol = solve_ivp(rhs, (0, T), y0, method="DOP853", rtol=1e-12, atol=1e-14, t_eval=ts)
    return sol.y[: free.sum() * 3].T.reshape(len(ts), -1, 3)
def run(scene, dt, dtype, frac, E=256, T=2.0):
    s = dataclasses.replace(scene, dt=dt)
    m = s.build(num_envs=E, dtype=dtype, threads=1); m.lte_fraction = frac
    sim = Simulator(m); st = m.state(); nx = m.state(); ctl = m.control()
    steps = int(round(T / dt)); every = int(round(0.02 / dt)); xs = []; its = 0; wall = 0.0
    free = ~scene.is_handle
    for i in range(steps):
        t0 = time.perf_counter(); sim.step(st, ctl, nx, check=False); wp.synchronize(); wall += time.perf_counter() - t0
        st, nx = nx, st
        its += sim.iterations.numpy()[0]
        if (i + 1) % every == 0: xs.append(st.x.numpy()[0][free].astype(np.float64))
    return np.array(xs), its / steps, wall / steps / E * 1e6, int(sim.status.numpy().max())
if __name__ == "__main__":
    name = sys.argv[1]; k = float(sys.argv[2])
    scene = scene_from_dict(ROPE if name == "rope" else PEND, name)
    scene = dataclasses.replace(scene, stiffness=np.full_like(scene.stiffness, k))
    ref = reference(scene)
    for dtype in ("float32", "float64"):
        for dt in (0.02, 0.01, 0.005, 0.0025):
            row = []
            for frac in (0.0, 0.1, 0.3):
                xs, it, us, st = run(scene, dt, dtype, frac)
                row.append(f"f{frac:g}: err {np.abs(xs - ref).max():.2e} it {it:.2f} {us:.2f}us st{st}")
            print(f"{name} k={k:g} {dtype} dt {dt}: " + " | ".join(row), flush=True)
