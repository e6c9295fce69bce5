"""PODS' trajectory-space step used on its own, as a trajectory optimiser without a policy."""

import numpy as np
import pytest
import torch

from warpsim_rl.algos import RunConfig, algo_config, make_algorithm
from warpsim_rl.algos.trajectory import TrajectoryOptimizer, TrajectoryStepConfig
from warpsim_rl.core import StepCore
from warpsim_rl.tasks import make_task


@pytest.mark.parametrize("order", [1, 2])
def test_improve_is_monotone_and_makes_progress(order):
    task = make_task("pendulum2d-stop", horizon=30)
    core = StepCore(task, 8, "cpu", "float64")
    opt = TrajectoryOptimizer(core, TrajectoryStepConfig(order=order, line_search=6, chunk=4))
    s0 = core.initial_state(*task.sample_initial_states(8, 5))
    actions = torch.zeros(task.horizon, 8, task.action_dim, dtype=torch.float64)
    first = None
    for _ in range(6):
        res = opt.improve(s0, actions)
        assert torch.all(res.returns_after >= res.returns_before)
        assert not bool(res.failed.any())
        first = res.returns_before if first is None else first
        actions = res.actions
        # the kept actions really reach the reported returns
        replay = core.open_loop(s0, actions)
        torch.testing.assert_close(replay.returns, res.returns_after, rtol=1e-12, atol=1e-12)
        lim = torch.as_tensor(np.array(task.action_limits)).reshape(-1)
        assert torch.all(actions.abs() <= lim + 1e-12)
    gain = (res.returns_after - first) / first.abs()
    assert float(gain.min()) > (0.3 if order == 2 else 0.05), gain


def test_pods_uses_the_same_step_as_the_trajectory_optimiser():
    """The step PODS takes on its policy's rollout equals the trajectory optimiser's on the
    executed actions (open loop): one implementation."""
    task = make_task("pendulum2d-stop", horizon=20)
    run = RunConfig(num_envs=6, dtype="float64", seed=1)
    pods = make_algorithm(task, run, algo_config("pods2", line_search=4, chunk=3))
    s0 = pods.initial_state()
    closed = pods.core.rollout(pods.policy, s0, task.horizon, jacobians=True)
    via_pods = pods.trajectory.line_search(s0, closed, pods.trajectory.direction(closed))
    standalone = TrajectoryOptimizer(StepCore(task, 6, "cpu", "float64"),
                                     TrajectoryStepConfig(order=2, line_search=4, chunk=3))
    res = standalone.improve(s0, closed.actions.reshape(task.horizon, 6, -1))
    for a, b in ((via_pods.actions, res.actions), (via_pods.returns_after, res.returns_after),
                 (via_pods.alpha, res.alpha)):
        assert torch.equal(a, b)


def test_jacobians_over_the_memory_budget_are_computed_chunk_by_chunk():
    """A batch whose Jacobians exceed ``jacobian_memory_mb`` records none in its rollout: they are
    re-taken chunk by chunk (7 rollouts in chunks of 3, 3, 1 padded to 3) from the stored states —
    bit for bit the recorded ones — and give the same step (to round-off: torch's batched algebra
    depends on the batch size) and the same singular mask."""
    task = make_task("double_pendulum3d-stop", horizon=25)
    core = StepCore(task, 7, "cpu", "float64")
    s0 = core.initial_state(*task.sample_initial_states(7, 3))
    actions = 0.3 * torch.randn(task.horizon, 7, task.action_dim, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(0))
    whole = TrajectoryOptimizer(core, TrajectoryStepConfig())
    m = core.model
    per_env = task.horizon * m.num_state * (m.num_state + m.num_actions) * 8
    chunked = TrajectoryOptimizer(core, TrajectoryStepConfig(jacobian_memory_mb=3.5 * per_env / 2 ** 20))
    assert (whole.jacobian_rows, whole.records_jacobians) == (7, True)
    assert (chunked.jacobian_rows, chunked.records_jacobians) == (3, False)
    recorded, replayed = whole.rollout(s0, actions), chunked.rollout(s0, actions)
    assert replayed.A is None
    for rows in (slice(0, 3), slice(6, 7)):
        A, B, singular = chunked._chunk_jacobians(replayed, rows)
        assert torch.equal(A, recorded.A[:, rows]) and torch.equal(B, recorded.B[:, rows])
        assert not bool(singular.any())
    env_steps = core.counter.env_steps
    torch.testing.assert_close(chunked.direction(replayed), whole.direction(recorded), rtol=1e-10, atol=1e-12)
    assert core.counter.env_steps == env_steps  # re-taken steps are not env steps
    assert torch.equal(replayed.failed, recorded.failed)
    with pytest.raises(ValueError, match="jacobian_memory_mb"):
        TrajectoryStepConfig(jacobian_memory_mb=0)
