"""Cost of the parts of one Newton iteration of the BDF2 step, per env (issue 19, item 4): the
assembly of Phi's gradient and banded Hessian (A), the banded Cholesky factorisation (F) and one
solve (S), each repeated 20 times in a kernel at a moving state of a `bench anchor` problem, one
Warp thread, beside the whole step. F = (A+F) - A. The factorisation is the simulator's
(specialised to the model's band where `linalg.fixed_band` says so).

    python docs/data/probe_step_parts.py rope_k1e4 float32 0.005 1024 [generic]

(``generic``: the parts with the generic factorisation; the step is always the simulator's.)
"""
import sys, time, warp as wp
wp.config.quiet = True
from warpsim_rl.bench import anchor
from warpsim_rl.kernels.bdf2 import PROJECT_CONTACT, bdf2_kernels
from warpsim_rl.kernels.linalg import band_funcs, fixed_band

ASSEMBLE, FACTOR, SOLVE = 1, 2, 4


def parts_kernel(K, la, wdt, parts):
    @wp.kernel(enable_backward=False, module="unique")
    def parts_k(model: K.ModelData, mass: wp.array2d(dtype=wdt), stiffness: wp.array2d(dtype=wdt),
                state_in: K.StateData, scratch: K.NewtonScratch, reps: int, out: wp.array(dtype=wdt)):
        e = wp.tid()
        acc = wdt(0.0)
        for r in range(reps):
            if wp.static(parts & ASSEMBLE):
                K.store_targets(e, model, state_in, scratch)
                K.store_increment(e, model, state_in.x, state_in.x, scratch)
                phi, scale, neg = K.assemble(e, model, mass, stiffness, state_in.x, state_in.x, state_in.v,
                                             PROJECT_CONTACT, scratch)
                acc += phi
            if wp.static(parts & FACTOR):
                acc += wdt(la.band_cholesky(scratch.H, e, model.num_dofs, model.band))
            if wp.static(parts & SOLVE):
                i = int(0)
                while i < model.num_dofs:
                    scratch.dx[i, e] = -scratch.g[i, e]
                    i += 1
                la.band_solve(scratch.H, e, model.num_dofs, model.band, scratch.dx, scratch.dx)
                acc += scratch.dx[0, e]
        out[e] = acc
    return parts_k


def main(problem, dtype, dt, E, generic=False, reps=20):
    wdt = wp.float32 if dtype == "float32" else wp.float64
    eng = anchor._WarpsimEngine(anchor.PROBLEMS[problem], dt, E, dtype)
    eng.advance(int(round(0.5 / dt)))
    wp.synchronize()
    m = eng.model
    K = bdf2_kernels(wdt, 3, False)
    la = band_funcs(wdt, None if generic else fixed_band(m.band))
    out = wp.zeros(E, dtype=wdt)
    args = [m.data, m.mass, m.stiffness, m.state_data(eng.bufs[0].arrays()), eng.sim._scratch, reps, out]
    us = {}
    for name, parts in (("A", ASSEMBLE), ("A+F", ASSEMBLE | FACTOR), ("A+F+S", ASSEMBLE | FACTOR | SOLVE),
                        ("S", SOLVE)):
        kern = parts_kernel(K, la, wdt, parts)
        wp.launch(parts_kernel(K, la, wdt, ASSEMBLE | FACTOR), dim=E, inputs=args[:5] + [1, out])  # a factor to solve with
        wp.synchronize()
        best = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            wp.launch(kern, dim=E, inputs=args)
            wp.synchronize()
            best = min(best, time.perf_counter() - t0)
        us[name] = best / reps / E * 1e6
    steps = max(20, round(20000 / E))
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        eng.advance(steps)
        wp.synchronize()
        best = min(best, (time.perf_counter() - t0) / steps / E * 1e6)
    print(f"{problem} {dtype} dt {dt} E {E} (N = {m.num_dofs}, B = {m.band}), "
          f"{'generic' if generic else 'fixed-band'} factorisation, us per env: "
          f"assembly {us['A']:.3f}, factor {us['A+F'] - us['A']:.3f}, solve {us['S']:.3f}, step {best:.3f} "
          f"({float(eng.sim.iterations.numpy().mean()):.2f} iterations in the last step)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5:] == ["generic"])
