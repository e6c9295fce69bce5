"""Long-horizon rollouts (issue 19, item 5): ``TorchSimulator.rollout`` and the step core's
open-loop paths feed the actions through one ``unbind`` instead of per-step indexing (linear
cost in T), bitwise equal to the per-step reference; ``keep`` returns exactly the requested
states and, checkpointed, changes no gradient."""

import numpy as np
import pytest
import torch

import warpsim_rl as ws
from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.core import StepCore
from warpsim_rl.tasks import make_task

E, T = 4, 23  # T not a multiple of the segment lengths below


def _problem(dtype=torch.float32, seed=0):
    """A double pendulum in 3-D: the simulator, initial positions/velocities (E, n, 3) and random
    actions (T, E, h, 3) within the limits."""
    sc = ws.load_scene("double_pendulum3d")
    model = sc.build(num_envs=E, device="cpu", dtype="float32" if dtype == torch.float32 else "float64", threads=1)
    ts = TorchSimulator(model)
    rng = np.random.default_rng(seed)
    pos = np.broadcast_to(sc.positions, (E,) + sc.positions.shape).copy()
    vel = np.broadcast_to(sc.velocities, (E,) + sc.velocities.shape).copy()
    vel[:, ~sc.is_handle] += rng.normal(0.0, 0.5, size=(E, 1, sc.dim))
    acts = rng.uniform(-1.0, 1.0, size=(T, E, model.num_handles, sc.dim)) * sc.velocity_limit[None, None]
    return ts, *(torch.tensor(a, dtype=dtype) for a in (pos, vel, acts))


def _reference_rollout(ts, state, actions, stiffness=None):
    """What ``TorchSimulator.rollout`` did before issue 19: one step per ``actions[t]``."""
    states = [tuple(state)]
    for t in range(actions.shape[0]):
        states.append(ts.step(*states[-1], actions[t], stiffness))
    return states


def _select(states, steps):
    """The states at the step indices ``steps`` of a full list of T+1 states."""
    return [states[t] for t in steps]


def _loss(states, steps):
    """A loss on every kept state (so that gradients also enter mid-trajectory)."""
    return sum((1.0 + 0.01 * t) * (s[1].square().sum() + s[0].sum()) for t, s in zip(steps, states))


def _grads(ts, pos, vel, acts, roll, steps, with_stiffness=False):
    """Gradients of :func:`_loss` with respect to actions, initial positions and velocities (and
    per-env stiffness) of ``roll(state, actions, stiffness)``; also the states (detached)."""
    a, x0, v0 = (t.clone().requires_grad_(True) for t in (acts, pos, vel))
    k = None
    if with_stiffness:
        k = torch.as_tensor(ts.model.stiffness.numpy(), dtype=acts.dtype).clone().requires_grad_(True)
    states = roll(ts.initial_state(x0, v0), a, k)
    _loss(states, steps).backward()
    out = [a.grad, x0.grad, v0.grad] + ([k.grad] if with_stiffness else [])
    return out, [tuple(t.detach() for t in s) for s in states]


def _equal(xs, ys):
    """Same length and every pair of tensors bitwise equal (``torch.equal``)."""
    return len(xs) == len(ys) and all(torch.equal(x, y) for x, y in zip(xs, ys))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rollout_gradients_bitwise_equal_per_step_reference(dtype):
    ts, pos, vel, acts = _problem(dtype)
    steps = list(range(T + 1))
    ref, ref_states = _grads(ts, pos, vel, acts, lambda s, a, k: _reference_rollout(ts, s, a, k), steps, True)
    new, new_states = _grads(ts, pos, vel, acts, lambda s, a, k: ts.rollout(s, a, stiffness=k), steps, True)
    assert _equal(ref, new)
    assert all(_equal(r, n) for r, n in zip(ref_states, new_states)) and len(new_states) == T + 1


@pytest.mark.parametrize("every", [1, 5, 7, T, 40])
def test_checkpointed_keep_last_gradients_bitwise_equal_plain(every):
    ts, pos, vel, acts = _problem()
    plain, plain_states = _grads(ts, pos, vel, acts, lambda s, a, k: ts.rollout(s, a)[-1:], [T])
    ckpt, ckpt_states = _grads(ts, pos, vel, acts, lambda s, a, k: ts.rollout(s, a, checkpoint_every=every,
                                                                              keep="last"), [T])
    assert _equal(plain, ckpt)
    assert len(ckpt_states) == 1 and _equal(ckpt_states[0], plain_states[0])


def test_checkpointed_differentiable_stiffness_bitwise_equal_plain():
    """Stiffness requiring grad: the torch.utils.checkpoint path, same summation order."""
    ts, pos, vel, acts = _problem(torch.float64, seed=4)
    plain, _ = _grads(ts, pos, vel, acts, lambda s, a, k: ts.rollout(s, a, stiffness=k)[-1:], [T], True)
    ckpt, _ = _grads(ts, pos, vel, acts, lambda s, a, k: ts.rollout(s, a, stiffness=k, checkpoint_every=5,
                                                                    keep="last"), [T], True)
    assert _equal(plain, ckpt)


def _graph_nodes(tensor) -> dict:
    """Node class name -> count over the autograd graph behind ``tensor``."""
    seen, todo, counts = set(), [tensor.grad_fn], {}
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        counts[type(node).__name__] = counts.get(type(node).__name__, 0) + 1
        todo += [n for n, _ in node.next_functions]
    return counts


def test_checkpointed_graph_holds_one_node_per_segment():
    """What bounds the memory: no per-step nodes survive a checkpointed forward pass."""
    ts, pos, vel, acts = _problem(seed=5)
    a = acts.clone().requires_grad_(True)
    plain = _graph_nodes(ts.rollout(ts.initial_state(pos, vel), a, keep="last")[0][1])
    ckpt = _graph_nodes(ts.rollout(ts.initial_state(pos, vel), a, checkpoint_every=5, keep="last")[0][1])
    assert plain["_StepFunctionBackward"] == T and plain["UnbindBackward0"] == 1
    assert "_StepFunctionBackward" not in ckpt and ckpt["_RecomputedBackward"] == -(-T // 5)
    assert ckpt["UnbindBackward0"] == 1 and "SelectBackward0" not in ckpt and "SelectBackward0" not in plain


@pytest.mark.parametrize("every, keep", [(None, "all"), (None, "last"), (None, 5), (None, T), (None, 100),
                                         (6, None), (6, "all"), (6, "last"), (6, 3), (6, 12), (6, 5)])
def test_keep_returns_exactly_the_requested_states(every, keep):
    ts, pos, vel, acts = _problem(seed=1)
    steps = TorchSimulator.kept_steps(T, keep, every)
    expected = {(None, "all"): list(range(T + 1)), (None, "last"): [T], (None, 5): [0, 5, 10, 15, 20, T],
                (None, T): [0, T], (None, 100): [0, T], (6, None): [0, 6, 12, 18, T], (6, "all"): list(range(T + 1)),
                (6, "last"): [T], (6, 3): [0, 3, 6, 9, 12, 15, 18, 21, T], (6, 12): [0, 12, T],
                (6, 5): [0, 5, 10, 15, 20, T]}[(every, keep)]
    assert steps == expected
    ref, ref_states = _grads(ts, pos, vel, acts, lambda s, a, k: _select(_reference_rollout(ts, s, a), steps), steps)
    new, new_states = _grads(ts, pos, vel, acts, lambda s, a, k: ts.rollout(s, a, checkpoint_every=every, keep=keep),
                             steps)
    assert len(new_states) == len(steps)
    assert all(_equal(r, n) for r, n in zip(ref_states, new_states))
    assert _equal(ref, new)


def test_no_grad_rollout_and_empty_horizon():
    ts, pos, vel, acts = _problem(seed=2)
    with torch.no_grad():
        ref = _reference_rollout(ts, ts.initial_state(pos, vel), acts)
        last = ts.rollout(ts.initial_state(pos, vel), acts, keep="last")
    assert len(last) == 1 and _equal(last[0], ref[-1])
    s0 = ts.initial_state(pos, vel)
    assert [len(ts.rollout(s0, acts[:0], keep=k)) for k in ("all", "last", 3)] == [1, 1, 1]
    assert ts.rollout(s0, acts[:0], keep="last")[0] == tuple(s0)


@pytest.mark.parametrize("name, value", [("keep", "first"), ("keep", 0), ("keep", -2), ("keep", 2.0), ("keep", True),
                                         ("keep", [3]), ("checkpoint_every", 0), ("checkpoint_every", -5),
                                         ("checkpoint_every", 1.5), ("checkpoint_every", True)])
def test_bad_keep_or_checkpoint_every_raise_naming_them(name, value):
    ts, pos, vel, acts = _problem()
    with pytest.raises(ValueError, match=rf"^{name} = {value!r}: expected".replace("[", r"\[").replace("]", r"\]")):
        ts.rollout(ts.initial_state(pos, vel), acts, **{name: value})
    with pytest.raises(ValueError, match=f"^{name} = "):
        TorchSimulator.kept_steps(T, **{name: value})


def _core_reference_returns(core, s0, actions):
    """The step core's open loop as it was before issue 19: per-step ``actions[t]``."""
    state, rewards = s0, []
    for t in range(actions.shape[0]):
        tr = core._step_executed(state, core.clip(actions[t]), False)
        state = tr.state
        rewards.append(tr.reward)
    return torch.stack(rewards).sum(0)


def _core_grads(core, s0, acts, returns_of):
    a = acts.clone().requires_grad_(True)
    returns = returns_of(s0, a)
    returns.sum().backward()
    core.failures()  # clear the record between runs
    return returns.detach(), a.grad


def test_core_open_loop_gradients_bitwise_equal_per_step_reference():
    task = make_task("double_pendulum3d-stop")
    core = StepCore(task, E, "cpu", "float32", threads=1)
    pos, vel = task.test_bed()
    s0 = core.initial_state(pos[:E], vel[:E])
    rng = np.random.default_rng(3)
    acts = torch.tensor(1.3 * np.asarray(task.action_limits) * rng.uniform(-1, 1, (T, E, task.num_handles, task.dim)),
                        dtype=torch.float32)  # some beyond the limits: clipped
    ref = _core_grads(core, s0, acts, lambda s, a: _core_reference_returns(core, s, a))
    new = _core_grads(core, s0, acts, lambda s, a: core.open_loop(s, a).returns)
    flat = _core_grads(core, s0, acts.flatten(2), lambda s, a: core.open_loop(s, a).returns)
    assert torch.equal(ref[0], new[0]) and torch.equal(ref[1], new[1])
    assert torch.equal(ref[0], flat[0]) and torch.equal(ref[1].flatten(2), flat[1])
    for every in (1, 5, 7, 40):
        ckpt = _core_grads(core, s0, acts, lambda s, a: core.open_loop(s, a, checkpoint_every=every).returns)
        assert torch.equal(ref[0], ckpt[0]) and torch.equal(ref[1], ckpt[1]), every


def test_horizon_sweep_command(capsys):
    """``bench gradients --sweep``: one fresh process per T, the requested rollout, the keys."""
    import json

    from warpsim_rl import bench

    argv = ["gradients", "--scene", "pendulum2d", "--envs", "2", "--steps", "6", "--sweep", "--repeats", "1",
            "--threads", "1", "--checkpoint-every", "4", "--keep", "last", "--json", "--quiet"]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert out["benchmark"] == "gradients_horizon" and out["steps"] == [6] and out["keep"] == "last"
    assert row["steps"] == 6 and row["states_returned"] == 1 and row["backward_per_step_over_first"] == 1.0
    assert row["forward_s"] > 0 and row["backward_s"] > 0 and row["peak_rss_mb"] >= row["rss_before_mb"] > 0
    with pytest.raises(ValueError, match="^keep = 'first'"):
        bench.main(["gradients", "--scene", "pendulum2d", "--steps", "3", "6", "--keep", "first", "--quiet"])
