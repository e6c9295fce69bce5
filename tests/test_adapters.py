"""gymnasium 1.x and skrl adapters: gymnasium's own checks, autoreset semantics compared with
gymnasium's reference ``SyncVectorEnv``, vector wrappers, and a short skrl PPO run."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from gymnasium.utils.passive_env_checker import check_action_space, check_obs, check_observation_space  # noqa: E402
from gymnasium.vector import AutoresetMode, SyncVectorEnv  # noqa: E402

from warpsim_rl import ActionError  # noqa: E402
from warpsim_rl.envs.gym_vector import WarpSimGymEnv, WarpSimVectorEnv, register_gymnasium_envs  # noqa: E402
from warpsim_rl.tasks import Task, make_task, task_names  # noqa: E402

# gymnasium's checker recommends normalised action boxes and finite observation bounds; our
# actions are physical handle velocities within the robot's limits and positions are unbounded
# (docs/envs.md), so those two recommendations are expected.
_EXPECTED = ("symmetric and normalized space", "is -infinity", "is infinity")


def _check_no_unexpected_warnings(record):
    msgs = [str(w.message) for w in record]
    unexpected = [m for m in msgs if not any(e in m for e in _EXPECTED)]
    assert not unexpected, unexpected


@pytest.mark.parametrize("name", ["pendulum2d-stop", "cable_payload2d-stop-origin", "rope3d-stop",
                                  "wall_pendulum2d-stop-origin", "cloth_table-place"])
def test_gymnasium_check_env(name):
    ids = register_gymnasium_envs()
    assert len(ids) == len(task_names()) and register_gymnasium_envs() == ids  # idempotent
    env = gymnasium.make(f"warpsim_rl/{name}-v0")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    _check_no_unexpected_warnings(rec)
    env.close()


def test_vector_env_spaces_and_seeding():
    venv = WarpSimVectorEnv("double_pendulum3d-stop-origin", 6)
    task = venv.task
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_observation_space(venv.single_observation_space)
        check_action_space(venv.single_action_space)
    _check_no_unexpected_warnings(rec)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.single_observation_space.shape == (task.obs_dim,)
    assert venv.observation_space.shape == (6, task.obs_dim)
    np.testing.assert_array_equal(venv.single_action_space.high, task.action_limits.reshape(-1).astype(np.float32))
    o1, info = venv.reset(seed=5)
    assert isinstance(o1, np.ndarray) and o1.dtype == np.float32 and info == {}
    check_obs(o1, venv.observation_space, "reset")
    o2, _ = venv.reset()
    o3, _ = venv.reset(seed=5)
    np.testing.assert_array_equal(o1, o3)
    assert not np.array_equal(o1, o2)
    venv.action_space.seed(0)
    for _ in range(3):
        obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
        check_obs(obs, venv.observation_space, "step")
        assert rew.shape == (6,) and rew.dtype == np.float64 and term.dtype == bool and trunc.dtype == bool
        assert info["diverged"].shape == (6,) and info["_diverged"].all()
    obs2, *_ = venv.step(np.zeros((6, 3)))  # float64 and (E, h*dim) accepted
    assert not np.shares_memory(obs, obs2)
    venv.step(np.zeros((6, 1, 3), dtype=np.float32).tolist())
    with pytest.raises(ActionError, match="shape"):
        venv.step(np.zeros((6, 2)))
    bad = np.zeros((6, 3), dtype=np.float32)
    bad[4, 0] = np.nan
    with pytest.raises(ActionError, match=r"non-finite.*\[4\]"):
        venv.step(bad)
    with pytest.raises(ValueError, match="unknown key"):
        venv.reset(options={"bogus": 1})
    venv.close()


@dataclasses.dataclass(frozen=True)
class _FixedStartTask(Task):
    """Every initial state identical (seed 0's first sample), so that our batched env and
    gymnasium's SyncVectorEnv of single envs can be compared value for value."""

    def sample_initial_states(self, n, seed=None):
        pos, vel = Task.sample_initial_states(self, 1, 0)
        return np.repeat(pos, n, 0), np.repeat(vel, n, 0)


def _deterministic_task(horizon=3):
    base = make_task("pendulum2d-stop", horizon=horizon)
    return _FixedStartTask(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Task)})


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_autoreset_semantics_match_sync_vector_env(mode):
    """Our batched vector env against gymnasium's reference SyncVectorEnv over single envs, with
    identical initial states: observations, rewards, terminations, truncations and (SAME_STEP)
    final observations agree at every step across two episode boundaries."""
    E, task = 3, _deterministic_task(horizon=3)
    ours = WarpSimVectorEnv(task, E, autoreset_mode=mode)
    ref = SyncVectorEnv([lambda: WarpSimGymEnv(task) for _ in range(E)], autoreset_mode=mode)
    o_ours, _ = ours.reset(seed=1)
    o_ref, _ = ref.reset(seed=1)
    np.testing.assert_allclose(o_ours, o_ref, rtol=1e-6, atol=1e-6)
    gen = np.random.default_rng(0)
    saw_final = saw_zero_reward_reset = False
    for t in range(9):
        a = gen.uniform(-2, 2, size=(E, 2)).astype(np.float32)
        so, sr, st, str_, si = ours.step(a)
        ro, rr, rt, rtr, ri = ref.step(a)
        np.testing.assert_allclose(so, ro, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sr, rr, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(st, rt)
        np.testing.assert_array_equal(str_, rtr)
        if mode == AutoresetMode.SAME_STEP and "final_obs" in ri:
            saw_final = True
            np.testing.assert_array_equal(si["_final_obs"], ri["_final_obs"])
            for i in np.flatnonzero(ri["_final_obs"]):
                np.testing.assert_allclose(si["final_obs"][i], ri["final_obs"][i], rtol=1e-5, atol=1e-6)
        if mode == AutoresetMode.NEXT_STEP and t % 4 == 3:
            saw_zero_reward_reset = True
            assert np.all(sr == 0) and not st.any() and not str_.any()
    assert saw_final or mode == AutoresetMode.NEXT_STEP
    assert saw_zero_reward_reset or mode == AutoresetMode.SAME_STEP


def test_disabled_autoreset_and_reset_mask():
    task = make_task("pendulum3d-stop", horizon=2)
    venv = WarpSimVectorEnv(task, 4, autoreset_mode="Disabled")
    venv.reset(seed=0)
    for _ in range(2):
        obs, rew, term, trunc, info = venv.step(np.zeros((4, 3), dtype=np.float32))
    assert trunc.all()
    mask = np.array([True, False, True, False])
    o2, _ = venv.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(o2[~mask], obs[~mask])
    _, _, _, trunc, _ = venv.step(np.zeros((4, 3), dtype=np.float32))
    assert trunc.tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": np.array([1, 0, 1, 0])})


def test_gymnasium_vector_wrappers_and_make_vec():
    """gymnasium's vector wrappers (which check the autoreset mode) run on our env."""
    from gymnasium.wrappers.vector import ClipAction, NormalizeObservation, RecordEpisodeStatistics, RescaleAction

    register_gymnasium_envs()
    venv = gymnasium.make_vec("warpsim_rl/cable_payload2d-stop-v0", num_envs=4, vectorization_mode="vector_entry_point",
                              task=make_task("cable_payload2d-stop", horizon=5))
    assert isinstance(venv.unwrapped, WarpSimVectorEnv)
    env = RecordEpisodeStatistics(NormalizeObservation(ClipAction(RescaleAction(venv, np.float32(-1.0), np.float32(1.0)))))
    env.reset(seed=0)
    env.action_space.seed(0)
    episodes = 0
    for _ in range(12):
        obs, rew, term, trunc, info = env.step(env.action_space.sample())
        assert np.isfinite(obs).all()
        if "episode" in info:
            episodes += int(info["_episode"].sum())
            np.testing.assert_array_equal(info["episode"]["l"][info["_episode"]], 5)
    assert episodes == 8
    env.close()


def test_single_gym_env_bad_actions():
    env = WarpSimGymEnv("pendulum3d-stop")
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.zeros(3, dtype=np.float32))
    assert obs.shape == (9,) and isinstance(r, float) and term is False and trunc is False
    with pytest.raises(ActionError, match="shape"):
        env.step(np.zeros(2))
    with pytest.raises(ActionError, match="non-finite"):
        env.step(np.array([0.0, np.inf, 0.0]))
    with pytest.raises(ValueError, match="render_mode"):
        WarpSimGymEnv("pendulum3d-stop", render_mode="human")


# -- skrl ----------------------------------------------------------------------------------------

def test_skrl_wrapper_on_device_tensors():
    pytest.importorskip("skrl")
    from warpsim_rl.envs.skrl_wrapper import SkrlWrapper, make_skrl_env
    from warpsim_rl.envs import WarpSimEnv

    env = make_skrl_env("pendulum3d-stop-origin", num_envs=5, seed=0)
    assert env.num_envs == 5 and env.device == torch.device("cpu")
    assert env.observation_space.shape == (9,) and env.action_space.shape == (3,)
    obs, info = env.reset()
    obs_again, _ = env.reset()
    assert obs_again is obs  # later resets do not restart the episodes (the env auto-resets)
    a = torch.zeros(5, 3)
    nobs, rew, term, trunc, info = env.step(a)
    for t in (nobs, rew, term, trunc):
        assert isinstance(t, torch.Tensor) and t.device == env.device
    assert nobs.shape == (5, 9) and rew.shape == (5, 1) and term.shape == (5, 1) and trunc.shape == (5, 1)
    assert env.state() is None and env.render() is None
    nobs, *_ = env.step(torch.zeros(5, 3, dtype=torch.float64))  # skrl models' dtype is adapted
    with pytest.raises(ActionError):
        env.step(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="auto_reset"):
        SkrlWrapper(WarpSimEnv("pendulum3d-stop", 2, auto_reset=False))


def test_skrl_ppo_smoke(tmp_path):
    """A few hundred steps of skrl's PPO with tiny networks train on a task."""
    pytest.importorskip("skrl")
    import torch.nn as nn
    from skrl.agents.torch.ppo import PPO, PPO_CFG
    from skrl.memories.torch import RandomMemory
    from skrl.models.torch import DeterministicMixin, GaussianMixin, Model
    from skrl.trainers.torch import SequentialTrainer

    from warpsim_rl.envs.skrl_wrapper import make_skrl_env

    class Policy(GaussianMixin, Model):
        def __init__(self, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            GaussianMixin.__init__(self, clip_actions=False)
            self.net = nn.Sequential(nn.Linear(self.num_observations, 16), nn.Tanh(), nn.Linear(16, self.num_actions))
            self.log_std = nn.Parameter(torch.zeros(self.num_actions))

        def compute(self, inputs, role=""):
            return self.net(inputs["observations"]), {"log_std": self.log_std}

    class Value(DeterministicMixin, Model):
        def __init__(self, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.net = nn.Sequential(nn.Linear(self.num_observations, 16), nn.Tanh(), nn.Linear(16, 1))

        def compute(self, inputs, role=""):
            return self.net(inputs["observations"]), {}

    torch.manual_seed(0)
    env = make_skrl_env(make_task("pendulum2d-stop", horizon=50), num_envs=16, seed=0)
    dev = env.device
    models = {"policy": Policy(env.observation_space, env.action_space, dev),
              "value": Value(env.observation_space, env.action_space, dev)}
    before = [p.detach().clone() for p in models["policy"].parameters()]
    memory = RandomMemory(memory_size=16, num_envs=env.num_envs, device=dev)
    cfg = PPO_CFG(rollouts=16, learning_epochs=2, mini_batches=2)
    cfg.experiment.directory = str(tmp_path)
    cfg.experiment.write_interval = 0
    cfg.experiment.checkpoint_interval = 0
    agent = PPO(models=models, memory=memory, observation_space=env.observation_space,
                action_space=env.action_space, device=dev, cfg=cfg)
    trainer = SequentialTrainer(env=env, agents=agent,
                                cfg={"timesteps": 300, "headless": True, "disable_progressbar": True,
                                     "close_environment_at_exit": False})
    trainer.train()
    after = list(models["policy"].parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after))  # PPO updated the policy
    assert int(env.torch_env.episode_step.max()) < 50  # episodes auto-reset during training
