"""Thread-parallel launches over environment shards: every output is bitwise identical for any
thread count (including E not divisible by it and E < threads), failures keep their env index."""

import numpy as np
import pytest
import torch
import warp as wp

from warpsim_rl.autodiff import TorchSimulator
from warpsim_rl.envs import WarpSimEnv
from warpsim_rl.shards import EnvShards, LaunchSite, check_threads, shard_bounds
from warpsim_rl.tasks import make_task

E, T = 5, 15
THREADS = (1, 2, 3)


@pytest.fixture
def always_shard(monkeypatch):
    """Every launch site takes the sharded variant (the default times both and keeps the faster,
    which at these tiny sizes is the single launch)."""
    monkeypatch.setattr(LaunchSite, "variant", lambda self: self.threads)


def test_shard_bounds_cover_the_envs():
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    assert shard_bounds(2, 3) == [(0, 1), (1, 2)]
    assert shard_bounds(7, 1) == [(0, 7)]
    assert EnvShards(4, 8, "cpu").threads == 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            check_threads(bad)


def _run(task, num_envs, threads, dtype="float64"):
    """Rollout, action/initial-state/stiffness gradients and first/last Jacobians."""
    model = task.scene.build(num_envs=num_envs, dtype=dtype, threads=threads)
    ts = TorchSimulator(model, check=False)
    pos, vel = task.test_bed()
    x0 = tuple(t.requires_grad_(True) for t in ts.initial_state(pos[:num_envs], vel[:num_envs]))
    rng = np.random.default_rng(1)
    lim = np.asarray(task.action_limits)
    acts = torch.tensor(1.2 * lim * rng.uniform(-1, 1, (T, num_envs, task.num_handles, task.dim)),
                        dtype=ts.torch_dtype, requires_grad=True)
    k = torch.tensor(np.tile(task.scene.stiffness, (num_envs, 1)), dtype=ts.torch_dtype, requires_grad=True)
    states = [x0]
    for t in range(T):
        states.append(ts.step(*states[-1], acts[t], k, None, validate=False))
    sum(s.square().sum() for s in states[-1]).backward()
    out = [s.detach() for s in states[-1]] + [acts.grad, k.grad] + [s.grad for s in x0]
    for t in (0, T - 1):
        _, A, B = ts.jacobians(*(s.detach() for s in states[t]), acts[t].detach(), validate=False)
        out += [A, B]
    out.append(wp.to_torch(ts.sim.iterations).clone())
    return out


@pytest.mark.parametrize("name", ["pendulum2d-stop", "cable_payload2d-stop", "double_pendulum3d-stop",
                                  "cloth_table-stop", "wall_pendulum2d-stop"])
@pytest.mark.parametrize("num_envs", [E, 2])
def test_outputs_are_bitwise_identical_for_every_thread_count(name, num_envs, always_shard):
    task = make_task(name)
    ref = _run(task, num_envs, 1)
    for threads in THREADS[1:]:
        got = _run(task, num_envs, threads)
        for i, (a, b) in enumerate(zip(ref, got)):
            assert torch.equal(a, b), (name, threads, i)


def test_env_steps_and_resets_are_identical_for_every_thread_count(always_shard):
    task = make_task("cable_payload2d-stop")
    runs = []
    for threads in THREADS:
        env = WarpSimEnv(task, E, dtype="float64", seed=0)
        env.model.threads = threads
        obs, _ = env.reset(seed=3)
        g = torch.Generator().manual_seed(0)
        rec = [obs]
        for _ in range(task.horizon + 3):  # crosses the auto-reset at the horizon
            obs, r, term, trunc, _ = env.step(torch.rand(E, task.action_dim, generator=g, dtype=torch.float64) - 0.5)
            rec += [obs, r, term, trunc]
        runs.append(rec)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


@pytest.mark.parametrize("threads", THREADS)
def test_failures_keep_their_env_index_from_any_shard(threads, always_shard):
    task = make_task("pendulum2d-stop")
    model = task.scene.build(num_envs=E, dtype="float64", threads=threads)
    ts = TorchSimulator(model, check=False)
    pos, vel = task.test_bed()
    s = ts.initial_state(pos[:E], vel[:E])
    wp.to_torch(model.stiffness)[[1, 4]] = float("nan")  # envs in the first and the last shard
    a = torch.zeros(E, 1, 2, dtype=torch.float64)
    for _ in range(3):
        s = ts.step(*s, a, validate=False)
    envs, steps, reasons = ts.sim.failures()
    assert envs == [1, 4] and steps == [0, 0]
    assert wp.to_torch(ts.sim.status).tolist() == [0, 2, 0, 0, 2]


def test_launch_site_times_both_variants_and_keeps_the_faster():
    site = LaunchSite(2)
    seen = []
    for _ in range(2 * LaunchSite.TRIALS):
        k = site.variant()
        seen.append(k)
        site.record(k, 1.0 if k == 1 else 0.5)  # sharding is faster here
    assert sorted(seen) == [1] * LaunchSite.TRIALS + [2] * LaunchSite.TRIALS
    assert site.choice == 2 and site.variant() == 2
    slow = LaunchSite(2)
    for _ in range(2 * LaunchSite.TRIALS):
        k = slow.variant()
        slow.record(k, 1.0 if k == 1 else 3.0)  # hand-off costs more than it saves
    assert slow.choice == 1 and slow.variant() == 1
    assert LaunchSite(1).variant() == 1


def _drive(site, calls, seconds):
    """``calls`` calls of ``site`` timed by ``seconds(variant, call)``; the variants used."""
    used = []
    for c in range(calls):
        k = site.variant()
        used.append(k)
        site.record(k, seconds(k, c))
    return used


def test_launch_site_recovers_from_a_misleading_start():
    """A noisy moment during the trials made sharding look slow: the probes (one call in
    PROBE_EVERY runs the other variant) undo the wrong choice within TRIALS + 1 probes, and
    they are the only calls spent on the slower variant."""
    site = LaunchSite(2)
    trials = 2 * LaunchSite.TRIALS
    truth = {1: 1.0, 2: 0.5}
    used = _drive(site, trials, lambda k, c: 3.0 if k == 2 else 1.0)  # sharding looked 3x slower
    assert site.choice == 1
    bound = (LaunchSite.TRIALS + 1) * LaunchSite.PROBE_EVERY
    used = _drive(site, bound, lambda k, c: truth[k])
    # TRIALS + 1 probes of sharding (the last at call `bound` counted from the start), then the switch
    assert site.choice == 2 and used.count(2) <= LaunchSite.TRIALS + 1 + 2 * LaunchSite.TRIALS
    # after the switch only the probes run the (now slower) single launch
    used = _drive(site, 10 * LaunchSite.PROBE_EVERY, lambda k, c: truth[k])
    assert used.count(1) == 10 and site.choice == 2


def test_launch_site_ignores_a_single_outlier_and_forgets_old_timings():
    """One very fast probe of the slower variant does not flip the choice (a mean of its timings
    would: (3 * 1.0 + 0.01) / 4 < 0.9, a median does not); after a lasting change the old timings
    age out of the WINDOW, so the choice follows within WINDOW // 2 + 1 probes however long the
    site ran before."""
    site = LaunchSite(2)
    _drive(site, 2 * LaunchSite.TRIALS, lambda k, c: 1.0 if k == 1 else 0.9)
    assert site.choice == 2
    outlier = [True]

    def seconds(k, c):
        if k == 1 and outlier:
            outlier.pop()
            return 0.01  # one lucky single launch
        return 1.0 if k == 1 else 0.9
    _drive(site, 30 * LaunchSite.PROBE_EVERY, seconds)  # 30 probes of the single launch at 1.0
    assert not outlier and site.choice == 2
    probes = LaunchSite.WINDOW // 2 + 1
    _drive(site, probes * LaunchSite.PROBE_EVERY, lambda k, c: 0.2 if k == 1 else 0.9)  # the work shrank
    assert site.choice == 1


def test_the_automatic_choice_changes_no_number():
    """Without forcing, the first steps alternate single and sharded launches: the rollout still
    equals the single-threaded one bit for bit."""
    task = make_task("double_pendulum3d-stop")
    ref, got = _run(task, E, 1), _run(task, E, 2)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_threads_none_means_the_available_cores_and_keeps_its_shards():
    from warpsim_rl.shards import default_threads

    model = make_task("pendulum2d-stop").scene.build(num_envs=8, threads=3)
    first = model.shards
    assert first.threads == 3 and model.shards is first  # built once, not per launch
    model.threads = None
    assert model.shards.threads == min(8, default_threads()) and model.shards is model.shards
    with pytest.raises(ValueError, match="threads = 0"):
        model.threads = 0
        model.shards
