"""The anchor benchmark against NVIDIA Newton (warpsim_rl.bench.anchor): the reference solver, the
error and equal-accuracy functions, the warpsim_rl problem builder, a smoke run; the Newton side
only where the optional ``newton`` package is installed."""

import functools
import json
import math

import numpy as np
import pytest

from warpsim_rl.bench import anchor as A
from warpsim_rl.bench.cli import main as bench_main


def _pendulum(stiffness=1e4, angle_deg=30.0):
    return A.Chain("test_pendulum", 1, 1.0, 1.0, stiffness, angle_deg, 4, (0.01,), (0.01,))


def test_chain_geometry():
    rope = A.PROBLEMS["rope_k1e4"]
    pos = rope.positions
    assert pos.shape == (21, 3) and np.allclose(pos[0], 0.0)
    assert np.allclose(pos[-1], [math.sin(math.radians(30)), -math.cos(math.radians(30)), 0.0])
    assert rope.masses[0] == 0.0 and math.isclose(rope.masses.sum(), 1.0)
    assert np.allclose(np.linalg.norm(np.diff(pos, axis=0), axis=1), 0.05)
    with pytest.raises(ValueError, match="points"):
        A.Chain("bad", 0, 1.0, 1.0, 1e4, 30.0, 1, (0.01,), (0.01,))
    with pytest.raises(ValueError, match="stiffness"):
        A.Chain("bad", 3, 1.0, 1.0, -1.0, 30.0, 1, (0.01,), (0.01,))


def test_prestretched_chain_holds_its_weight_along_itself():
    rope = A.PROBLEMS["rope_k1e4_prestretched"]
    assert rope.prestretch and "rope_k1e4_prestretched" not in A.DEFAULT_PROBLEMS
    force = A.chain_forces(rope, rope.positions)[1:] + rope.masses[1:, None] * np.array([0.0, -9.81, 0.0])
    along = np.array([math.sin(math.radians(30)), -math.cos(math.radians(30)), 0.0])
    assert np.abs(force @ along).max() < 1e-9  # only the swing (perpendicular) force is left
    assert rope.positions[-1, 0] > 0.5 and math.isclose(rope.rest_length, 0.05)
    sc = A.warpsim_scene(rope, 0.01)
    assert np.allclose(sc.rest_length, 0.05) and np.allclose(sc.positions, rope.positions)


def test_warpsim_scene_matches_problem():
    rope = A.PROBLEMS["rope_k1e5"]
    sc = A.warpsim_scene(rope, 0.005)
    assert sc.dim == 3 and sc.dt == 0.005 and np.allclose(sc.gravity, [0.0, -9.81, 0.0])
    assert list(sc.handles) == [0] and sc.is_handle.sum() == 1
    assert np.allclose(sc.masses[1:], 0.05) and math.isclose(sc.masses.sum(), 1.0)
    assert sc.num_springs == 20 and not sc.is_cable.any()
    assert np.allclose(sc.stiffness, 1e5) and np.allclose(sc.rest_length, 0.05) and np.allclose(sc.damping, 0.0)
    assert math.isclose(sc.rest_length.sum(), 1.0)
    bottom = sc.positions[-1]
    assert math.isclose(math.degrees(math.atan2(bottom[0], -bottom[1])), 30.0, rel_tol=1e-9)
    assert np.allclose(sc.velocities, 0.0)
    pend = A.warpsim_scene(A.PROBLEMS["pendulum"], 0.01)
    assert pend.num_particles == 2 and math.isclose(pend.masses[1], 1.0) and math.isclose(pend.rest_length[0], 1.0)


def test_reference_small_amplitude_pendulum_is_analytic():
    """A stiff (k = 1e6 N/m, 10 um static stretch), 2 degree pendulum swings as x = L sin(a0) cos(w t)."""
    p = _pendulum(stiffness=1e6, angle_deg=2.0)
    times = np.linspace(0.0, 1.0, 11)
    ref = A.reference_trajectory(p, times)
    length = 1.0 + 9.81 / 1e6  # the static stretch lengthens the pendulum
    x = length * math.sin(math.radians(2.0)) * np.cos(math.sqrt(9.81 / length) * times)
    assert np.abs(ref[:, 1, 0] - x).max() < 5e-5
    assert np.allclose(ref[:, 0], 0.0)


def test_reference_conserves_energy():
    """The reference's RHS agrees with an independent one built on chain_forces, whose solution
    conserves the total energy (chain_energy) to 1e-8 J."""
    from scipy.integrate import solve_ivp

    p = A.Chain("test_rope", 5, 1.0, 1.0, 1e4, 30.0, 1, (0.01,), (0.01,))
    n, times = p.points, np.linspace(0.0, 0.5, 51)
    ref = A.reference_trajectory(p, times)

    def full(y):
        return np.vstack([p.positions[:1], y[:3 * n].reshape(n, 3)]), np.vstack([np.zeros((1, 3)),
                                                                                y[3 * n:].reshape(n, 3)])

    def rhs(_t, y):
        acc = A.chain_forces(p, full(y)[0])[1:] / p.masses[1:, None] + [0.0, -9.81, 0.0]
        return np.concatenate([y[3 * n:], acc.ravel()])

    y0 = np.concatenate([p.positions[1:].ravel(), np.zeros(3 * n)])
    sol = solve_ivp(rhs, (0.0, 0.5), y0, method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12)
    assert np.abs(sol.y[:3 * n].T.reshape(-1, n, 3) - ref[:, 1:]).max() < 1e-9
    e0 = A.chain_energy(p, p.positions, np.zeros_like(p.positions))
    assert math.isclose(e0, 9.81 * (p.masses * p.positions[:, 1]).sum())  # at rest, springs at rest length
    assert max(abs(A.chain_energy(p, *full(sol.y[:, i])) - e0) for i in range(len(times))) < 1e-8


def test_reference_validates_times():
    with pytest.raises(ValueError, match="increasing"):
        A.reference_trajectory(_pendulum(), np.array([0.0, 0.2, 0.1]))


def test_driven_reference_at_rest_matches_reference():
    p = _pendulum()
    times = np.arange(11) * A.SAMPLE_INTERVAL
    assert np.abs(A.reference_driven(p, np.zeros((10, 3))) - A.reference_trajectory(p, times)).max() < 1e-9
    moved = A.reference_driven(p, np.tile([0.5, 0.0, 0.0], (10, 1)))
    assert np.allclose(moved[:, 0, 0], 0.5 * times)  # the top point follows its velocity exactly


def test_trajectory_errors():
    times = np.array([0.0, 0.5, 1.0, 1.5])
    ref = np.zeros((4, 3, 3))
    traj = ref.copy()
    traj[1, 2] = [0.0, 3e-3, 4e-3]  # 5 mm at t = 0.5
    traj[2, 1, 0] = -1e-3
    err = A.trajectory_errors(traj, ref, times)
    assert math.isclose(err["traj_err_m"], 5e-3) and math.isclose(err["err_1s_m"], 1e-3)
    traj[3, 0, 0] = np.nan
    assert A.trajectory_errors(traj, ref, times)["traj_err_m"] == math.inf
    assert A.trajectory_errors(traj[:2], ref[:2], times[:2])["err_1s_m"] is None
    with pytest.raises(ValueError, match="disagree"):
        A.trajectory_errors(traj[:2], ref, times)


def test_rate_at_accuracy_interpolates_power_laws():
    dts = np.array([1e-2, 5e-3, 2e-3, 1e-3])
    pts = [(3.0 * dt ** 2, 7.0 * dt) for dt in dts]  # second order, cost proportional to 1/dt
    got = A.rate_at_accuracy(pts, 3.0 * 3e-3 ** 2)
    assert got["how"] == "interpolated" and math.isclose(got["rate"], 7.0 * 3e-3, rel_tol=1e-12)
    assert A.rate_at_accuracy(pts, 1.0) == {"rate": 7e-2, "how": "bound"}  # every dt meets it
    assert A.rate_at_accuracy(pts, 1e-9) is None  # none does
    noisy = pts + [(math.inf, 1.0), (math.nan, 2.0)]  # an unstable dt: faster, but never interpolated towards
    assert A.rate_at_accuracy(noisy, 1.0) == {"rate": 7e-2, "how": "bound"}
    with pytest.raises(ValueError, match="level"):
        A.rate_at_accuracy(pts, 0.0)


def test_grid_of_time_steps():
    assert A._grid(0.002) == (5, 1) and A._grid(0.05) == (1, 5) and A._grid(0.01 / 15) == (15, 1)
    with pytest.raises(ValueError, match="integer"):
        A._grid(0.003)
    with pytest.raises(ValueError, match="> 0"):
        A._grid(0.0)


def test_ratio_marks_bounds():
    exact, bound = {"rate": 2.0, "how": "interpolated"}, {"rate": 4.0, "how": "bound"}
    assert A._ratio(exact, bound) == {"ratio": 0.5, "how": "<="}
    assert A._ratio(bound, exact) == {"ratio": 2.0, "how": ">="}
    assert A._ratio(exact, None) is None


def test_smooth_actions():
    a = A.smooth_actions(3, 200, seed=1, amplitude=0.5)
    assert a.shape == (200, 3, 3) and np.abs(a).max() <= 0.5
    assert np.abs(np.diff(a, axis=0)).max() < 0.05  # smooth: small changes per 0.01 s
    with pytest.raises(ValueError):
        A.smooth_actions(0, 10)


def test_warpsim_run_and_gradient():
    res = A.anchor(problems=("pendulum",), engines=("warpsim_rl",), quick=True, with_gradients=False)
    rows = res["problems"]["pendulum"]["sweeps"]["warpsim_rl"]
    assert len(rows) == 2 and all(r["failed_worlds"] == 0 and r["sim_s_per_s"] > 0 for r in rows)
    assert rows[1]["traj_err_m"] < 2e-3  # 0.1 s of the pendulum at dt = 5 ms
    assert "| pendulum |" in res["markdown"]
    g = A.gradients("rope_k1e4", worlds=2, duration=0.1, directions=1, engines=("warpsim_rl",),
                    substeps={"warpsim_rl": (5,)}, isolate=False)
    (row,) = g["rows"]["warpsim_rl"]
    assert row["grad_rel_err"] < 0.05 and row["traj_err_m"] < 1e-3


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        bench_main(["anchor", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--quick" in out and "--dtype" in out


def test_cli_json(capsys):
    bench_main(["anchor", "--quick", "--problem", "pendulum", "--engine", "warpsim_rl", "--no-gradients", "--json",
                "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"] == "anchor" and list(out["problems"]) == ["pendulum"] and out["engines"] == ["warpsim_rl"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown problem"):
        A.anchor(problems=("nope",), engines=("warpsim_rl",))
    with pytest.raises(ValueError, match="duration"):
        A.anchor(problems=("pendulum",), engines=("warpsim_rl",), duration=0.015)
    with pytest.raises(ValueError, match="engine"):
        A.anchor(engines=("bullet",))


def test_newton_smoke():
    pytest.importorskip("newton")
    p = A.PROBLEMS["rope_k1e4"]
    model = A.newton_model(p, 2)
    assert model.particle_count == 42 and model.spring_count == 40
    inv = model.particle_inv_mass.numpy()
    assert inv[0] == 0.0 and inv[21] == 0.0 and np.allclose(inv[1:21], 20.0)
    assert np.allclose(model.spring_rest_length.numpy(), 0.05, atol=1e-6)
    stretched = A.newton_model(A.PROBLEMS["pendulum_prestretched"], 1)
    assert np.allclose(stretched.spring_rest_length.numpy(), 1.0)  # not the (longer) initial distance
    res = A.anchor(problems=("pendulum",), engines=("newton",), quick=True, with_gradients=False)
    rows = res["problems"]["pendulum"]["sweeps"]["newton"]
    assert all(r["failed_worlds"] == 0 for r in rows) and rows[1]["traj_err_m"] < 5e-3
    g = A.gradients("rope_k1e4", worlds=2, duration=0.1, directions=1, engines=("newton",), substeps={"newton": (5,)})
    assert g["rows"]["newton"][0]["peak_mb"] is not None  # measured in a fresh process
    (row,) = g["rows"]["newton"]
    assert row["grad_rel_err"] < 0.05 and row["traj_err_m"] < 1e-3


@functools.lru_cache(maxsize=None)
def _reference(problem: str) -> tuple[np.ndarray, np.ndarray]:
    """Sample times (s) of 2 s and the DOP853 reference (rtol 1e-12) of ``problem`` at them."""
    times = np.arange(A._intervals(2.0) + 1) * A.SAMPLE_INTERVAL
    return times, A.reference_trajectory(A.PROBLEMS[problem], times)


def _errors(problem: str, dtype: str, dts) -> list[float]:
    """Whole-trajectory errors (m, 2 s, against the reference) of one warpsim_rl world."""
    p = A.PROBLEMS[problem]
    times, ref = _reference(problem)
    n = len(times) - 1
    out = []
    for dt in dts:
        steps, stride = A._grid(dt)
        traj, _ = A._trajectory(A._make_engine("warpsim_rl", p, dt, 1, dtype), steps, n // stride)
        out.append(A.trajectory_errors(traj, ref[::stride], times[::stride])["traj_err_m"])
    return out


@pytest.mark.parametrize("problem, dts", [("rope_k1e4", (5e-3, 2e-3, 1e-3, 5e-4)), ("pendulum", (2e-3, 1e-3, 5e-4))])
def test_float32_error_keeps_falling_to_half_a_millisecond(problem, dts):
    """Issue 19's float32 floor: on its two problems (released unstretched) the float32 error falls
    with every smaller step down to dt = 5e-4 s and stays within 25 % of float64's (measured:
    within 5 %). Before the increment formulation it grew below 1-2 ms. The pendulum starts at
    2 ms: from 5 to 2 ms its error does not fall in float64 either, because BDF2 damps the stretch
    mode that the reference keeps (docs/results.md)."""
    e32, e64 = _errors(problem, "float32", dts), _errors(problem, "float64", dts)
    assert all(a > b for a, b in zip(e32, e32[1:])), e32
    assert all(a < 1.25 * b for a, b in zip(e32, e64)), (e32, e64)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="a float32 floor of about 1e-5 m remains from storing absolute float32 positions "
                          "(docs/results.md, 'Error-controlled Newton stop and the float32 floor')")
def test_float32_error_of_the_prestretched_pendulum_keeps_falling():
    """Started at its static stretch (no stretch mode excited), the pendulum's float32 error should
    fall from dt 1 ms to 0.5 ms as float64's does (1.15e-5 -> 2.9e-6 m); it rises instead
    (1.3e-5 -> 2.7e-5 m, measured)."""
    e32 = _errors("pendulum_prestretched", "float32", (1e-3, 5e-4))
    assert e32[1] < e32[0], e32
