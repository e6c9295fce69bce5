"""The skrl baselines (PPO, SAC, DDPG): skrl's own agents on the algorithm's step core, the same
initial actor as every algorithm, learning on a small task, time-limit bootstrapping from the
pre-reset state, exact resume through train(), clear errors; and the Table 1 benchmark's cache."""

import copy
import json
import math

import pytest
import torch

from warpsim_rl.algos import ALGORITHMS, RunConfig, algo_config, evaluate, make_algorithm
from warpsim_rl.tasks import make_task

BASELINES = ("ppo", "sac", "ddpg")


def _algo(name, num_envs=32, horizon=None, seed=0, **cfg):
    task = make_task("pendulum2d-stop", horizon=horizon) if horizon else make_task("pendulum2d-stop")
    run = RunConfig(env="pendulum2d-stop", algo=name, num_envs=num_envs, seed=seed, threads=1,
                    **({"horizon": horizon} if horizon else {}))
    return make_algorithm(task, run, algo_config(name, **cfg))


def test_every_algorithm_starts_from_the_same_actor():
    """PODS Sec. 4: every method starts from the same initial weights for a seed."""
    ref = _algo("pods2", seed=5).policy.state_dict()
    for name in ALGORITHMS:
        if name == "pods2":
            continue
        got = _algo(name, seed=5).policy.state_dict()
        assert set(got) == set(ref), name
        for k in ref:
            assert torch.equal(got[k], ref[k]), (name, k)


@pytest.mark.parametrize("name", BASELINES)
def test_the_agent_is_skrls_and_steps_the_algorithms_core(name):
    import skrl.agents.torch.ddpg
    import skrl.agents.torch.ppo
    import skrl.agents.torch.sac

    algo = _algo(name, num_envs=4, horizon=10)
    cls = {"ppo": skrl.agents.torch.ppo.PPO, "sac": skrl.agents.torch.sac.SAC, "ddpg": skrl.agents.torch.ddpg.DDPG}
    assert isinstance(algo.agent, cls[name])
    assert algo.env.torch_env.core is algo.core
    algo.begin_epoch(0)
    algo.train_epoch()
    assert algo.env_steps == 4 * 10  # one step of every env per step, counted on the core
    # the Gaussian's mean (PPO, SAC) / the deterministic action (DDPG) is the evaluated actor
    obs = torch.randn(5, algo.task.obs_dim)
    actions, out = algo.agent.policy.act({"observations": obs}, role="policy")
    assert torch.equal(out["mean_actions"] if name != "ddpg" else actions, algo.policy(obs))


@pytest.mark.parametrize("name", ("sac", "ddpg"))
def test_time_limit_transitions_bootstrap_from_the_pre_reset_state(name):
    """The last transition of an episode stores the observation the time limit cut off (not the
    next episode's first), and it is not terminal (so the target bootstraps from it): checked
    against an independent open-loop replay of the stored actions from the epoch's states."""
    algo = _algo(name, num_envs=3, horizon=6, replay_size=60)
    rng = copy.deepcopy(algo.rng)  # the generator the epoch draws its initial states from
    algo.begin_epoch(0)
    algo.train_epoch()
    mem = algo.agent.memory
    rows = lambda key: mem.get_tensor_by_name(key).view(mem.memory_size, 3, -1)  # noqa: E731
    pos, vel = algo.task.sample_initial_states(3, rng)
    replay = algo.core.open_loop(algo.core.initial_state(pos, vel), rows("actions")[:6])
    assert torch.allclose(rows("observations")[0], algo.core.observe(replay.states[0]), rtol=0, atol=1e-6)
    truth = algo.core.observe(replay.states[-1])
    assert torch.allclose(rows("next_observations")[5], truth, rtol=0, atol=1e-5)
    assert not rows("terminated")[5].any()
    assert not torch.allclose(algo.env.torch_env.observation(), truth)  # the env was reset since


@pytest.mark.parametrize("name,num_envs,epochs", [("ppo", 64, 10), ("sac", 16, 12), ("ddpg", 64, 20)])
def test_each_baseline_improves_the_test_bed_reward(name, num_envs, epochs):
    """A few epochs on pendulum2d-stop beat the untrained actor on the test bed by a margin (the
    untrained policy scores about -107; 'doing better' means at least 15 % better)."""
    algo = _algo(name, num_envs=num_envs, seed=1)
    untrained = evaluate(algo.task, algo.policy)["reward"]
    for epoch in range(epochs):
        algo.begin_epoch(epoch)
        m = algo.train_epoch()
        assert math.isfinite(m["train/return_before"])
    trained = evaluate(algo.task, algo.policy)["reward"]
    assert trained > 0.85 * untrained, (name, untrained, trained)


def test_resume_through_train_is_bit_identical(tmp_path):
    from warpsim_rl.training import train

    run = RunConfig(env="pendulum2d-stop", algo="sac", num_envs=8, epochs=3, horizon=10, eval_every=0, usd_envs=0,
                    threads=1, out=str(tmp_path / "straight"))
    cfg = algo_config("sac", replay_size=400, batch_size=16)
    straight = train(run, cfg, progress=False)
    first = RunConfig(**{**run.__dict__, "epochs": 2, "out": str(tmp_path / "resumed")})
    train(first, cfg, progress=False)
    resumed = train(None, resume=str(tmp_path / "resumed"), epochs=3, progress=False)
    for key in ("reward", "terminal_kinetic_energy", "distance_to_target", "action_magnitude"):
        assert resumed[key] == straight[key], key
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["algorithm"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["algorithm"]
    for k in a["modules"]:
        for p in a["modules"][k]:
            assert torch.equal(a["modules"][k][p], b["modules"][k][p]), (k, p)
    assert torch.equal(a["buffers"]["agent"]["memory"]["tensors"]["observations"],
                       b["buffers"]["agent"]["memory"]["tensors"]["observations"])


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="dtype = 'float64': the skrl baselines run in float32"):
        make_algorithm(make_task("pendulum2d-stop"), RunConfig(algo="ppo", dtype="float64", num_envs=4),
                       algo_config("ppo"))
    with pytest.raises(ValueError, match=r"rollouts = 16: must divide the horizon of pendulum2d-stop \(100 steps\)"):
        _algo("ppo", num_envs=4, rollouts=16)
    with pytest.raises(ValueError, match="batch_size = 0"):
        algo_config("sac", batch_size=0)
    with pytest.raises(ValueError, match="noise_std = -1"):
        algo_config("ddpg", noise_std=-1)


def test_budgeted_run_stops_and_records_time_and_steps(tmp_path):
    from warpsim_rl.training import train

    run = RunConfig(env="pendulum2d-stop", algo="ppo", num_envs=16, epochs=1000, horizon=20, eval_every=0,
                    eval_every_s=0.2, budget_s=0.6, usd_envs=0, threads=1, out=str(tmp_path / "b"))
    res = train(run, algo_config("ppo", rollouts=10), progress=False)
    assert 1 <= res["epochs"] < 1000 and res["budget_s"] == 0.6
    curve = res["curve"][1:]
    assert curve[-1]["time/train_s"] >= 0.6 > curve[-2]["time/train_s"]  # stopped at the epoch that reached it
    assert [c["env_steps"] for c in curve] == [16 * 20 * c["epoch"] for c in curve]
    assert sum("eval/reward" in c for c in curve) >= 3  # evaluated every 0.2 s of training and at the end
    assert json.loads((tmp_path / "b" / "results.json").read_text())["first_epoch_s"] == res["first_epoch_s"]


def test_eval_at_s_evaluates_after_the_first_epoch_past_each_time(tmp_path):
    """The evaluated epochs are exactly the first to complete each of ``eval_at_s`` and the last."""
    from warpsim_rl.training import train

    times = (0.25, 0.5, 1.0)  # spaced for epochs of up to ~0.5 s (a slow, loaded host)
    run = RunConfig(env="pendulum2d-stop", algo="ppo", num_envs=16, epochs=1000, horizon=20, eval_every=0,
                    eval_at_s=times, budget_s=2.0, usd_envs=0, threads=1, out=str(tmp_path / "b"))
    curve = train(run, algo_config("ppo", rollouts=10), progress=False)["curve"]
    expected = {i for i in range(1, len(curve)) if i == len(curve) - 1
                or any(curve[i - 1]["time/train_s"] < t <= curve[i]["time/train_s"] for t in times)}
    assert {i for i in range(1, len(curve)) if "eval/reward" in curve[i]} == expected
    assert len(expected) >= 3
    with pytest.raises(ValueError, match=r"eval_at_s\[1\] = -1: must be a finite number > 0"):
        RunConfig(env="pendulum2d-stop", algo="ppo", eval_at_s=(1.0, -1))
    with pytest.raises(ValueError, match=r"eval_at_s = 5.0: expected a list of training times"):
        RunConfig(env="pendulum2d-stop", algo="ppo", eval_at_s=5.0)
