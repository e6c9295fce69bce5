"""Exact derivatives (kernels/adjoint.py, warpsim_rl/autodiff.py) against central finite
differences in float64, and the consistency of the torch, tape and Jacobian paths."""

import numpy as np
import pytest
import torch
import warp as wp

import warpsim_rl as ws
from warpsim_rl.autodiff import Differentiator, GradientError, TorchSimulator

E = 3
EPS = 1e-6
# tension-only scenes: smaller steps, so that the differences stay on one side of the switch
EPS_CABLE = 1e-7


def _scene(name):
    if name == "rope3d":
        return ws.load_scene("rope3d", num_particles=4)
    if name == "cable_payload2d_slack":
        return ws.load_scene("cable_payload2d")
    if name == "damped":
        b = ws.SceneBuilder("damped", dim=2, dt=0.02)
        h = b.add_handle([0.0, 0.0], [2.0, 2.0])
        p = b.add_particle([0.1, -1.0], 1.0)
        q = b.add_particle([0.4, -1.5], 0.5)
        b.add_spring(h, p, 2e4, damping=5.0)
        b.add_spring(p, q, 1e4, damping=3.0, kind="cable", rest_length=0.5)
        return b.finalize()
    return ws.load_scene(name)


def _setup(name, device, seed=0, swing=0.3, act=0.5):
    """TorchSimulator in float64 with a tight Newton tolerance, a state one step into a motion,
    and an action; actions stay inside the limits so the clip is differentiable."""
    sc = _scene(name)
    if name == "rope3d":
        swing = 0.0  # a rigidly swinging rope falls freely with its cables exactly at the switch
    model = sc.build(num_envs=E, device=device, dtype="float64")
    model.tol = 1e-13
    ts = TorchSimulator(model)
    rng = np.random.default_rng(seed)
    vel = np.broadcast_to(sc.velocities, (E,) + sc.velocities.shape).copy()
    vel[:, ~sc.is_handle] += rng.normal(0.0, swing, size=(E, 1, sc.dim))
    if name == "cable_payload2d_slack":
        vel[:, ~sc.is_handle, 1] += 2.0  # payload thrown upwards: both cables slack
    state = ts.initial_state(velocities=vel)
    if sc.is_cable.any() and name != "cable_payload2d_slack":
        # cables start exactly at rest length and ring; BDF2's damping of the stiff mode settles
        # them within a few steps, after which they stay taut and away from the switch
        zero = torch.zeros((E, model.num_handles, model.dim), dtype=torch.float64, device=state[0].device)
        for _ in range(20):
            state = ts.step(*state, zero)
    a0 = _actions(model, rng, act)
    state = ts.step(*state, a0)
    return ts, state, _actions(model, rng, act), rng


def _actions(model, rng, scale, base=None):
    """Random actions within ``scale`` x the limits. Handles of tension-only scenes only pull
    (non-negative y), so that cables stay taut, away from the switch."""
    lim = model.scene.velocity_limit
    a = rng.uniform(-scale, scale, size=(model.num_envs, model.num_handles, model.dim)) * lim[None]
    if model.scene.is_cable.any():
        a[..., 1] = np.abs(a[..., 1])
    if base is not None:  # a smooth action sequence: small steps around a base action
        a = base + 0.01 * a
    return torch.tensor(a, dtype=torch.float64, device=wp.device_to_torch(model.device))


def _cable_margin(ts, states):
    """Smallest |l - L| over cables and states: finite differences must not cross the switch."""
    sc = ts.model.scene
    margin = np.inf
    for st in states:
        x = st[0].detach().cpu().numpy()
        for s, (i, j) in enumerate(sc.springs):
            if sc.is_cable[s]:
                gap = np.linalg.norm(x[:, i] - x[:, j], axis=-1) - sc.rest_length[s]
                margin = min(margin, float(np.abs(gap).min()))
    return margin


def _unflatten(ts, s, like):
    """Markov vector (E, ns) -> full state tuple, copying handle history from ``like``."""
    m = ts.model
    sc = m.scene
    N, d = m.num_dofs, m.dim
    out = [t.clone() for t in like]
    for k in range(4):
        out[k][:, sc.free_particles] = s[:, k * N:(k + 1) * N].reshape(m.num_envs, -1, d)
    out[0][:, sc.handles] = s[:, 4 * N:].reshape(m.num_envs, -1, d)
    return tuple(out)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["pendulum2d", "double_pendulum3d", "rope3d", "cable_payload2d",
                                  "cable_payload2d_slack", "damped"])
def test_single_step_jacobians_match_finite_differences(name, device):
    ts, state, a, _ = _setup(name, device)
    EPS = EPS_CABLE if ts.model.scene.is_cable.any() else globals()["EPS"]
    nxt, A, B = ts.jacobians(*state, a)
    assert _cable_margin(ts, [state, nxt]) > 100 * EPS
    s0 = ts.markov_state(*state)
    Afd = torch.zeros_like(A)
    for c in range(A.shape[2]):
        sp, sm = s0.clone(), s0.clone()
        sp[:, c] += EPS
        sm[:, c] -= EPS
        op = ts.markov_state(*ts.step(*_unflatten(ts, sp, state), a))
        om = ts.markov_state(*ts.step(*_unflatten(ts, sm, state), a))
        Afd[:, :, c] = (op - om) / (2 * EPS)
    Bfd = torch.zeros_like(B)
    flat = a.reshape(E, -1)
    for c in range(B.shape[2]):
        ap, am = flat.clone(), flat.clone()
        ap[:, c] += EPS
        am[:, c] -= EPS
        op = ts.markov_state(*ts.step(*state, ap.reshape(a.shape)))
        om = ts.markov_state(*ts.step(*state, am.reshape(a.shape)))
        Bfd[:, :, c] = (op - om) / (2 * EPS)
    assert _rel(A, Afd) < 1e-6
    assert _rel(B, Bfd) < 1e-6


def test_jacobians_overwrite_stale_buffers(device):
    """The Jacobian launch writes every entry: buffers full of NaN give the same A, B as zeroed ones."""
    model = ws.load_scene("double_pendulum3d").build(num_envs=3, device=device, dtype="float64")
    sim = ws.Simulator(model)
    diff = Differentiator(sim)
    s0, s1, c = model.state(), model.state(), model.control()
    c.action.fill_(model.vec(*([0.3] * model.dim)))
    sim.step(s0, c, s1)
    out = []
    for fill in (0.0, np.nan):
        A = wp.full((3, model.num_state, model.num_state), fill, dtype=wp.float64, device=model.device)
        B = wp.full((3, model.num_state, model.num_actions), fill, dtype=wp.float64, device=model.device)
        diff.jacobians(s0.arrays(), c.action, s1.arrays(), A, B)
        out.append((A.numpy(), B.numpy()))
    np.testing.assert_array_equal(out[1][0], out[0][0])
    np.testing.assert_array_equal(out[1][1], out[0][1])
    assert np.any(out[0][0]) and np.any(out[0][1])


@pytest.mark.parametrize("name", ["pendulum2d", "double_pendulum3d", "rope3d", "cable_payload2d", "damped"])
def test_vjp_equals_jacobian_transpose(name, device):
    ts, state, a, rng = _setup(name, device, seed=1)
    _, A, B = ts.jacobians(*state, a)
    leaves = [t.clone().requires_grad_(True) for t in state]
    al = a.clone().requires_grad_(True)
    out = ts.step(*leaves, al)
    u = torch.tensor(rng.normal(size=(E, ts.model.num_state)), dtype=torch.float64, device=a.device)
    (ts.markov_state(*out) * u).sum().backward()
    g_state = ts.markov_state(*(t.grad for t in leaves))
    assert _rel(g_state, torch.einsum("eij,ei->ej", A, u)) < 1e-12
    assert _rel(al.grad.reshape(E, -1), torch.einsum("eij,ei->ej", B, u)) < 1e-12


def _taut(ts, states):
    """(T+1, E, cables) taut flags along a rollout: finite differences are valid when the
    perturbed rollouts have the same pattern (no cable crosses its switch)."""
    sc = ts.model.scene
    cab = np.flatnonzero(sc.is_cable)
    x = np.stack([st[0].detach().cpu().numpy() for st in states])
    ij = sc.springs[cab]
    return np.linalg.norm(x[:, :, ij[:, 0]] - x[:, :, ij[:, 1]], axis=-1) > sc.rest_length[cab]


def _rollout_loss(ts, state, actions, w, k=None, mass=None, with_states=False):
    states = ts.rollout(state, actions, stiffness=k, mass=mass)
    loss = sum((st[0] * w[t]).sum() + 0.1 * (st[1] * w[t]).sum() for t, st in enumerate(states[1:]))
    return (loss, states) if with_states else loss


@pytest.mark.parametrize("name", ["pendulum2d", "double_pendulum3d", "rope3d", "cable_payload2d"])
def test_rollout_gradients_match_finite_differences(name, device):
    """50-step rollout: directional derivatives of a loss on every state, w.r.t. the initial state,
    the actions, the stiffness and the masses."""
    T = 50
    ts, state, _, rng = _setup(name, device, seed=2, swing=0.2, act=0.3)
    m = ts.model
    # 1e-6 for every scene here: over 50 steps, smaller steps drown in round-off (measured on
    # cable_payload2d: rel. error 3e-10 at 1e-5, 1e-9 at 1e-6, 4e-8 at 1e-7); the margin check
    # below keeps the cables 10 steps away from their switch
    EPS = globals()["EPS"]
    tdev = state[0].device
    base = _actions(m, rng, 0.3).cpu().numpy()
    actions = torch.stack([_actions(m, rng, 0.3, base) for _ in range(T)])
    w = torch.tensor(rng.normal(size=(T, E, m.num_particles, m.dim)), dtype=torch.float64, device=tdev)
    k = torch.tensor(np.tile(m.scene.stiffness, (E, 1)), dtype=torch.float64, device=tdev)
    mass = torch.tensor(np.tile(m.scene.masses, (E, 1)), dtype=torch.float64, device=tdev)
    with torch.no_grad():
        pattern = _taut(ts, ts.rollout(state, actions))
    leaves = [t.clone().requires_grad_(True) for t in state]
    al = actions.clone().requires_grad_(True)
    kl = k.clone().requires_grad_(True)
    ml = mass.clone().requires_grad_(True)
    _rollout_loss(ts, leaves, al, w, kl, ml).backward()
    free = torch.as_tensor(m.scene.free_particles, device=tdev)
    checks = {
        "state": ([t.grad for t in leaves], list(state)),
        "actions": ([al.grad], [actions]),
        "stiffness": ([kl.grad], [k]),
        "mass": ([ml.grad[:, free]], [mass]),
    }
    for what, (grads, base) in checks.items():
        dirs = [torch.tensor(rng.normal(size=g.shape), dtype=torch.float64, device=tdev) for g in grads]
        eps = EPS
        if what == "stiffness":
            dirs = [d * k for d in dirs]  # relative perturbations: they move no position much, so
            eps = 1e-4                    # a larger step keeps the solver tolerance out of the FD
            # (measured on double_pendulum3d: rel. error 3e-5 at 1e-3 (truncation), 3e-7 at 1e-4,
            # 2e-5 at 1e-5 and 8e-6 at 1e-6 (Newton-tolerance noise over 50 steps))
        if what == "mass":
            full = torch.zeros_like(mass)
            full[:, free] = dirs[0] * mass[:, free]
            dirs = [full[:, free]]
            dirs_full = [full]
            eps = 1e-4
        else:
            dirs_full = dirs
        analytic = sum((g * d).sum() for g, d in zip(grads, dirs))

        def loss_at(sign, what=what, dirs_full=dirs_full, eps=eps):
            p = [b + sign * eps * d for b, d in zip(base, dirs_full)]
            with torch.no_grad():
                if what == "state":
                    loss, states = _rollout_loss(ts, p, actions, w, k, mass, True)
                elif what == "actions":
                    loss, states = _rollout_loss(ts, state, p[0], w, k, mass, True)
                elif what == "stiffness":
                    loss, states = _rollout_loss(ts, state, actions, w, p[0], mass, True)
                else:
                    loss, states = _rollout_loss(ts, state, actions, w, k, p[0], True)
            # "away from the switch": the perturbed rollouts keep every cable on the same side
            assert np.array_equal(_taut(ts, states), pattern), f"{what}: a cable crossed its switch"
            return loss

        fd = (loss_at(+1) - loss_at(-1)) / (2 * eps)
        assert abs(float(analytic - fd)) <= 1e-6 * abs(float(fd)) + 1e-9, (what, float(analytic), float(fd))


def test_gradcheck_short_rollout(device):
    ts, state, a, rng = _setup("double_pendulum3d", device, seed=3)
    actions = torch.stack([a, _actions(ts.model, rng, 0.5), _actions(ts.model, rng, 0.5)])

    def f(x, v, acts):
        out = ts.rollout((x, v, state[2], state[3]), acts)[-1]
        return out[0], out[1]

    inputs = (state[0].clone().requires_grad_(True), state[1].clone().requires_grad_(True),
              actions.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_checkpointed_rollout_gives_identical_gradients(device):
    ts, state, _, rng = _setup("pendulum2d", device, seed=4)
    actions = torch.stack([_actions(ts.model, rng, 0.5) for _ in range(12)])
    grads = []
    for every in (None, 5):
        al = actions.clone().requires_grad_(True)
        x0 = state[0].clone().requires_grad_(True)
        states = ts.rollout((x0, *state[1:]), al, checkpoint_every=every)
        (states[-1][0].square().sum() + states[-1][1].sum()).backward()
        grads.append((al.grad.clone(), x0.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


def test_repeated_backward_and_accumulation(device):
    """retain_graph + two backward calls accumulate exactly twice; a second independent graph
    adds its own gradient (no stale buffers, no doubling)."""
    ts, state, a, _ = _setup("double_pendulum3d", device, seed=5)
    al = a.clone().requires_grad_(True)
    out = ts.rollout(state, torch.stack([al, al]))
    loss = out[-1][0].square().sum()
    loss.backward(retain_graph=True)
    g1 = al.grad.clone()
    loss.backward()
    assert torch.allclose(al.grad, 2 * g1, rtol=1e-14, atol=0)
    al.grad = None
    out2 = ts.rollout(state, torch.stack([al, al]))
    out2[-1][0].square().sum().backward()
    assert torch.allclose(al.grad, g1, rtol=1e-14, atol=0)


def test_tape_gradients_equal_torch_gradients(device):
    T = 5
    ts, state, a, rng = _setup("double_pendulum3d", device, seed=6)
    m = ts.model
    actions = [_actions(m, rng, 0.5) for _ in range(T)]
    # torch
    leaves = [t.clone().requires_grad_(True) for t in state]
    acts = torch.stack(actions).requires_grad_(True)
    out = ts.rollout(leaves, acts)
    out[-1][0].sum().backward()
    # Warp tape on State objects
    sim = ws.Simulator(m)
    diff = Differentiator(sim)
    states = [m.state(requires_grad=True) for _ in range(T + 1)]
    for arr, t in zip(states[0].arrays(), state):
        arr.assign(wp.from_torch(t.detach().contiguous(), dtype=m.vec))
    ctrls = [m.control(requires_grad=True) for _ in range(T)]
    for c, t in zip(ctrls, actions):
        c.action.assign(wp.from_torch(t.contiguous(), dtype=m.vec))
    tape = wp.Tape()
    for t in range(T):
        diff.step_tape(tape, states[t], ctrls[t], states[t + 1])
    states[-1].x.grad.fill_(1.0)
    tape.backward()
    for arr, leaf in zip(states[0].arrays(), leaves):
        np.testing.assert_allclose(arr.grad.numpy(), leaf.grad.cpu().numpy(), rtol=1e-12, atol=1e-14)
    for t in range(T):
        np.testing.assert_allclose(ctrls[t].action.grad.numpy(), acts.grad[t].cpu().numpy(), rtol=1e-12, atol=1e-14)


def test_backward_through_nonconverged_step_raises(device):
    b = ws.SceneBuilder("tight", dim=2, dt=0.02)
    h = b.add_handle([0.0, 0.0], [2.0, 2.0])
    p = b.add_particle([0.0, -1.0], 1.0, velocity=[3.0, 0.0])
    b.add_spring(h, p, 1e5)
    b.set_solver(max_iters=1)
    model = b.finalize().build(num_envs=2, device=device, dtype="float64")
    ts = TorchSimulator(model, check=False)
    x, v, xp, vp = ts.initial_state()
    x = x.clone().requires_grad_(True)
    out = ts.step(x, v, xp, vp, torch.zeros((2, 1, 2), dtype=torch.float64, device=x.device))
    with pytest.raises(GradientError, match=r"did not converge in env\(s\) \[0, 1\]"):
        out[0].sum().backward()


def test_jacobians_flag_singular_hessian(device):
    """A buckled configuration where the exact Hessian is indefinite is reported, not zeroed."""
    b = ws.SceneBuilder("buckle", dim=2, dt=0.05)
    left = b.add_handle([-1.0, 0.0], [2.0, 2.0])
    right = b.add_handle([1.0, 0.0], [2.0, 2.0])
    p = b.add_particle([0.0, 0.0], 1e-3)
    # squeezed between two compressed bilateral springs: balanced along x, buckling sideways
    b.add_spring(left, p, 1e5, rest_length=2.0)
    b.add_spring(right, p, 1e5, rest_length=2.0)
    b.set_solver(max_iters=50)
    scene = b.finalize()
    model = scene.build(num_envs=1, device=device, dtype="float64")
    model.gravity = model.vec(0.0, 0.0)
    sim = ws.Simulator(model)
    diff = Differentiator(sim)
    s0, s1 = model.state(), model.state()
    c = model.control()
    sim.step(s0, c, s1, check=False)
    A = wp.full((1, model.num_state, model.num_state), np.nan, dtype=wp.float64, device=model.device)
    B = wp.full((1, model.num_state, model.num_actions), np.nan, dtype=wp.float64, device=model.device)
    diff.jacobians(s0.arrays(), c.action, s1.arrays(), A, B)
    # stale buffer contents never survive: such an env gets zeros (and ok = 0, below)
    assert not np.any(A.numpy()) and not np.any(B.numpy())
    # the step itself converges (projected-Newton fallback keeps the symmetric solution) ...
    assert sim.status.numpy()[0] == 0
    # ... but its exact Hessian is indefinite there: reported, never zeros
    assert diff.ok.numpy()[0] == 0
    with pytest.raises(GradientError, match="not positive definite"):
        diff.check_ok("jacobians")


def test_torch_bridge_is_zero_copy_and_validates(device):
    ts, state, a, _ = _setup("pendulum2d", device)
    with pytest.raises(ws.ActionError, match="action.shape"):
        ts.step(*state, a[:, :, :1])
    with pytest.raises(ws.ActionError, match="action.dtype"):
        ts.step(*state, a.float())
    bad = a.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ws.ActionError, match=r"non-finite values in env\(s\) \[1\]"):
        ts.step(*state, bad)
    # the warp view aliases the torch storage
    view = ts._wp(state[0])
    assert view.ptr == state[0].data_ptr()
