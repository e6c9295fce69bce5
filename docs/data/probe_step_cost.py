"""Per-env cost of one step of warpsim_rl (BDF2 + Newton, float32 and float64, with the
factorisation specialised to the band) beside one substep of Newton's SolverSemiImplicit
(float32), on the `bench anchor` problems at the worlds of its timed runs, one thread each, started
0.5 s into the motion, interleaved in one process (issue 19, item 4). Best of 3 passes of about
0.5 s. Needs `pip install -e ".[anchor]"`.

    python docs/data/probe_step_cost.py
"""
import json, time, warp as wp
wp.config.quiet = True
from warpsim_rl.bench import anchor

CASES = [("rope_k1e4", "warpsim_rl", 0.02), ("rope_k1e4", "warpsim_rl", 0.005), ("rope_k1e4", "newton", 2e-3),
         ("rope_k1e5", "warpsim_rl", 0.005), ("rope_k1e5", "newton", 0.01 / 15),
         ("pendulum", "warpsim_rl", 0.01), ("pendulum", "warpsim_rl", 0.002), ("pendulum", "newton", 0.01)]


def cost(eng, worlds, dt):
    eng.advance(int(round(0.5 / dt)))
    wp.synchronize()
    steps = 10
    while True:  # calibrate to ~0.5 s
        t0 = time.perf_counter()
        eng.advance(steps)
        wp.synchronize()
        t = time.perf_counter() - t0
        if t > 0.1:
            break
        steps *= 4
    steps = max(1, int(steps * 0.5 / t))
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        eng.advance(steps)
        wp.synchronize()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best / worlds * 1e6


for name, engine, dt in CASES:
    prob = anchor.PROBLEMS[name]
    for dtype in (("float32", "float64") if engine == "warpsim_rl" else ("float32",)):
        eng = anchor._make_engine(engine, prob, dt, prob.worlds, dtype)
        us = cost(eng, prob.worlds, dt)
        row = {"problem": name, "engine": engine, "dtype": dtype, "dt": dt, "worlds": prob.worlds,
               "us_per_env_step": round(us, 4)}
        if engine == "warpsim_rl":
            row["iterations"] = round(float(eng.sim.iterations.numpy().mean()), 2)
        print(json.dumps(row), flush=True)
