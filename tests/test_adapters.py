"""gymnasium 1.x, skrl and Stable-Baselines3 adapters: gymnasium's and SB3's own checks, autoreset
semantics and info structure compared with gymnasium's reference ``SyncVectorEnv`` and SB3's
``DummyVecEnv``, registered specs, vector wrappers, and short skrl and SB3 PPO runs."""

import dataclasses
import pathlib
import warnings

import numpy as np
import pytest
import torch
import warp as wp

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from gymnasium.utils.passive_env_checker import check_action_space, check_obs, check_observation_space  # noqa: E402
from gymnasium.vector import AutoresetMode, SyncVectorEnv  # noqa: E402

from warpsim_rl import ActionError  # noqa: E402
from warpsim_rl.envs.gym_vector import WarpSimGymEnv, WarpSimVectorEnv, register_gymnasium_envs  # noqa: E402
from warpsim_rl.tasks import Task, make_task, task_names  # noqa: E402

# Every warning the checkers print on our envs, each documented in docs/envs.md (the test below
# requires the docs to quote it). gymnasium's checker recommends normalised action boxes and
# finite observation bounds; our actions are physical handle velocities within the robot's limits
# and positions are unbounded, so those recommendations are expected on every check.
_SPACE_WARNINGS = ("symmetric and normalized space", "is -infinity", "is infinity")
# gymnasium's check_env on an env not built by gymnasium.make (no spec) cannot re-make it with the
# other render modes (there are none), and on a wrapped env it warns that it is wrapped.
_NO_SPEC_WARNING = "Not able to test alternative render modes"
_WRAPPED_WARNING = "is different from the unwrapped version"
# SB3's check_env: its own wording of the normalised-action-box recommendation.
_SB3_WARNING = "symmetric and normalized Box action space"
_DOCUMENTED = _SPACE_WARNINGS + (_NO_SPEC_WARNING, _WRAPPED_WARNING, _SB3_WARNING)


def _check_no_unexpected_warnings(record, expected=_SPACE_WARNINGS):
    msgs = [str(w.message) for w in record]
    unexpected = [m for m in msgs if not any(e in m for e in expected)]
    assert not unexpected, unexpected
    return msgs


def _warnings_of(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return rec


@pytest.mark.parametrize("name", ["pendulum2d-stop", "cable_payload2d-stop-origin", "rope3d-stop",
                                  "wall_pendulum2d-stop-origin", "cloth_table-place"])
def test_gymnasium_check_env(name):
    ids = register_gymnasium_envs()
    assert len(ids) == len(task_names()) and register_gymnasium_envs() == ids  # idempotent
    env = gymnasium.make(f"warpsim_rl/{name}-v0")
    assert env.spec.max_episode_steps == make_task(name).horizon
    _check_no_unexpected_warnings(_warnings_of(check_env, env.unwrapped))
    env.close()


def test_checker_warnings_are_the_documented_ones():
    """Exactly the documented warnings, in the documented situations, and docs/envs.md quotes
    each of them."""
    register_gymnasium_envs()
    made = gymnasium.make("warpsim_rl/pendulum2d-stop-v0")
    cases = [(made.unwrapped, _SPACE_WARNINGS),                                      # through make
             (WarpSimGymEnv("pendulum2d-stop"), _SPACE_WARNINGS + (_NO_SPEC_WARNING,)),  # direct: no spec
             (made, _SPACE_WARNINGS + (_WRAPPED_WARNING,))]                          # make's wrappers
    for env, expected in cases:
        msgs = _check_no_unexpected_warnings(_warnings_of(check_env, env), expected)
        for e in expected:
            assert any(e in m for m in msgs), (e, msgs)
    docs = " ".join((pathlib.Path(__file__).parents[1] / "docs" / "envs.md").read_text().split())
    for e in _DOCUMENTED:
        assert e in docs, f"docs/envs.md does not quote the checker warning {e!r}"


def test_registered_spec_max_episode_steps():
    """The registered spec carries the task's horizon; make / make_vec truncate at it, and a
    smaller max_episode_steps caps both the same way."""
    register_gymnasium_envs()
    env_id, horizon = "warpsim_rl/pendulum2d-stop-v0", make_task("pendulum2d-stop").horizon
    assert gymnasium.spec(env_id).max_episode_steps == horizon
    single = gymnasium.make(env_id)
    assert single.spec.max_episode_steps == horizon
    venv = gymnasium.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point")
    assert venv.spec.max_episode_steps == horizon and venv.unwrapped.task.horizon == horizon
    single.reset(seed=0)
    venv.reset(seed=0)
    for t in range(1, horizon + 1):
        *_, trunc, _ = single.step(np.zeros(2, dtype=np.float32))
        *_, vtrunc, _ = venv.step(np.zeros((2, 2), dtype=np.float32))
        assert trunc == (t == horizon) and vtrunc.tolist() == [t == horizon] * 2
    for kwargs in ({"max_episode_steps": 3}, {"task": make_task("pendulum2d-stop", horizon=3)}):
        single = gymnasium.make(env_id, **kwargs)
        venv = gymnasium.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
        single.reset(seed=0)
        venv.reset(seed=0)
        for t in range(1, 4):
            *_, trunc, _ = single.step(np.zeros(2, dtype=np.float32))
            *_, vtrunc, _ = venv.step(np.zeros((2, 2), dtype=np.float32))
            assert trunc == (t == 3) and vtrunc.tolist() == [t == 3] * 2
    with pytest.raises(ValueError, match="max_episode_steps"):
        WarpSimVectorEnv("pendulum2d-stop", 2, max_episode_steps=0)


def test_vector_env_spaces_and_seeding():
    venv = WarpSimVectorEnv("double_pendulum3d-stop-origin", 6)
    task = venv.task
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_observation_space(venv.single_observation_space)
        check_action_space(venv.single_action_space)
    _check_no_unexpected_warnings(rec)
    assert venv.task.horizon == make_task("double_pendulum3d-stop-origin").horizon
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


def _poison(env, i):
    """NaN stiffness for env ``i`` of a WarpSimEnv: its Newton solve fails at every step."""
    k = env.model.stiffness.numpy()
    k[i] = np.nan
    env.model.stiffness.assign(wp.array(k, dtype=env.model.dtype, device=env.model.device))


def _assert_same_info(ours, ref, path="info"):
    """Same keys, nesting, dtypes, shapes and values (object arrays element by element)."""
    assert isinstance(ours, dict) and set(ours) == set(ref), (path, sorted(ours), sorted(ref))
    for key, r in ref.items():
        o, where = ours[key], f"{path}[{key!r}]"
        if isinstance(r, dict):
            _assert_same_info(o, r, where)
            continue
        assert isinstance(o, np.ndarray) and o.dtype == r.dtype and o.shape == r.shape, (where, o, r)
        if r.dtype == object:
            for a, b in zip(o, r):
                assert (a is None) == (b is None), where
                if b is not None:
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)
        else:
            np.testing.assert_array_equal(o, r, err_msg=where)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_autoreset_semantics_match_sync_vector_env(mode):
    """Our batched vector env against gymnasium's reference SyncVectorEnv over single envs, with
    identical initial states, env 1 diverging at every step (terminations) and the others
    truncating at the horizon: observations, rewards, terminations, truncations and the whole
    info dict (keys, masks, final_obs, final_info) agree at every step across episode boundaries."""
    E, task = 3, _deterministic_task(horizon=3)
    ours = WarpSimVectorEnv(task, E, autoreset_mode=mode)
    ref = SyncVectorEnv([lambda: WarpSimGymEnv(task) for _ in range(E)], autoreset_mode=mode)
    _poison(ours.env, 1)
    _poison(ref.envs[1].env, 0)
    o_ours, i_ours = ours.reset(seed=1)
    o_ref, i_ref = ref.reset(seed=1)
    np.testing.assert_allclose(o_ours, o_ref, rtol=1e-6, atol=1e-6)
    _assert_same_info(i_ours, i_ref)
    gen = np.random.default_rng(0)
    seen = set()
    for t in range(9):
        a = gen.uniform(-2, 2, size=(E, 2)).astype(np.float32)
        so, sr, st, str_, si = ours.step(a)
        ro, rr, rt, rtr, ri = ref.step(a)
        np.testing.assert_allclose(so, ro, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sr, rr, rtol=1e-5, atol=1e-6)
        assert sr.dtype == rr.dtype
        np.testing.assert_array_equal(st, rt)
        np.testing.assert_array_equal(str_, rtr)
        _assert_same_info(si, ri, f"step {t}: info")
        seen |= {k for k in ri if not k.startswith("_")}
        if "final_info" in ri:
            seen |= {f"final_info.{k}" for k in ri["final_info"] if ri["final_info"]["diverged"].any()}
        if st.any():
            seen.add("terminated")
        if str_.any():
            seen.add("truncated")
        if mode == AutoresetMode.DISABLED and (st | str_).any():
            mask = st | str_
            o_ours, i_ours = ours.reset(options={"reset_mask": mask.copy()})
            o_ref, i_ref = ref.reset(options={"reset_mask": mask.copy()})
            np.testing.assert_allclose(o_ours, o_ref, rtol=1e-6, atol=1e-6)
            _assert_same_info(i_ours, i_ref)
    assert {"terminated", "truncated", "diverged"} <= seen
    if mode == AutoresetMode.SAME_STEP:
        assert {"final_obs", "final_info", "final_info.diverged"} <= seen


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


# -- Stable-Baselines3 -----------------------------------------------------------------------------

def test_sb3_check_env_single_env():
    """SB3's own checker passes on the single gymnasium env; its only remark is the documented
    normalised-action-box recommendation."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for name in ("pendulum2d-stop", "cloth_table-place"):
        env = WarpSimGymEnv(name)
        msgs = _check_no_unexpected_warnings(_warnings_of(sb3_check_env, env), (_SB3_WARNING,))
        normalised = bool(np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1))
        assert any(_SB3_WARNING in m for m in msgs) == (not normalised), (name, msgs)


def test_sb3_vec_env_matches_dummy_vec_env():
    """Our batched SB3 VecEnv against SB3's DummyVecEnv over single envs (identical initial
    states, env 1 diverging at every step, the others truncating at the horizon): observations,
    rewards, dones and the per-env infos (diverged, TimeLimit.truncated, terminal_observation)
    agree at every step."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.vec_env import DummyVecEnv
    from warpsim_rl.envs.sb3 import make_sb3_env

    E, task = 3, _deterministic_task(horizon=3)
    ours = make_sb3_env(task, E)
    ref = DummyVecEnv([lambda: WarpSimGymEnv(task) for _ in range(E)])
    _poison(ours.torch_env, 1)
    _poison(ref.envs[1].env, 0)
    assert ours.observation_space == ref.observation_space and ours.action_space == ref.action_space
    np.testing.assert_allclose(ours.reset(), ref.reset(), rtol=1e-6, atol=1e-6)
    gen = np.random.default_rng(0)
    seen = set()
    for t in range(7):
        a = gen.uniform(-2, 2, size=(E, 2)).astype(np.float32)
        so, sr, sd, si = ours.step(a)
        ro, rr, rd, ri = ref.step(a)
        np.testing.assert_allclose(so, ro, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sr, rr, rtol=1e-5, atol=1e-6)
        assert so.dtype == ro.dtype and sr.dtype == rr.dtype == np.float32 and sd.dtype == rd.dtype == bool
        np.testing.assert_array_equal(sd, rd)
        assert len(si) == len(ri) == E
        for i, (a_info, b_info) in enumerate(zip(si, ri)):
            assert set(a_info) == set(b_info), (t, i, a_info, b_info)
            for key, b in b_info.items():
                if key == "terminal_observation":
                    np.testing.assert_allclose(a_info[key], b, rtol=1e-5, atol=1e-6)
                    seen.add(("terminal", b_info["TimeLimit.truncated"]))
                else:
                    assert a_info[key] == b and type(a_info[key]) is type(b), (t, i, key)
    assert seen == {("terminal", True), ("terminal", False)}  # truncations and terminations
    assert ours.reset_infos == [{}] * E
    ours.close()


def test_sb3_vec_env_api():
    """seed / set_options / get_attr / set_attr / env_method / env_is_wrapped / bad actions."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import VecEnv
    from warpsim_rl.envs.sb3 import SB3VecEnv, make_sb3_env

    env = make_sb3_env("pendulum3d-stop-origin", 4)
    assert isinstance(env, VecEnv) and env.num_envs == 4 and env.render_mode is None
    assert env.observation_space.shape == (9,) and env.action_space.shape == (3,)
    env.seed(7)
    o1 = env.reset()
    o2 = env.reset()
    env.seed(7)
    o3 = env.reset()
    np.testing.assert_array_equal(o1, o3)
    assert o1.dtype == np.float32 and o1.shape == (4, 9) and not np.array_equal(o1, o2)
    pos, vel = env.torch_env.task.test_bed()
    env.set_options([{"initial_state": (pos[i], vel[i])} for i in range(4)])  # as DummyVecEnv passes them
    o4 = env.reset()
    single = WarpSimGymEnv("pendulum3d-stop-origin")
    for i in range(4):
        np.testing.assert_allclose(o4[i], single.reset(options={"initial_state": (pos[i], vel[i])})[0], atol=1e-6)
    env.set_options({"initial_state": (pos[0], vel[0])})  # one dict: the same options for every env
    np.testing.assert_allclose(env.reset(), np.repeat(o4[:1], 4, 0), atol=1e-6)
    env.set_options({"bogus": 1})
    with pytest.raises(ValueError, match="unknown key"):
        env.reset()
    env.reset()
    assert env.get_attr("task") == [env.torch_env.task] * 4 and env.get_attr("horizon", [1, 2]) == [100, 100]
    assert env.get_attr("render_mode") == [None] * 4 and env.has_attr("num_envs") and not env.has_attr("bogus")
    env.set_attr("validate", True)
    assert env.torch_env.validate is True
    with pytest.raises(ValueError, match="all of them"):
        env.set_attr("validate", False, indices=[0])
    assert env.env_method("observation", indices=[0, 3])[0].shape == (4, 9)
    assert env.env_is_wrapped(Monitor) == [False] * 4
    with pytest.raises(RuntimeError, match="step_async"):
        env.step_wait()
    with pytest.raises(ActionError, match="shape"):
        env.step(np.zeros((4, 2), dtype=np.float32))
    bad = np.zeros((4, 3), dtype=np.float32)
    bad[2, 1] = np.inf
    with pytest.raises(ActionError, match=r"non-finite.*\[2\]"):
        env.step(bad)
    obs, rew, done, infos = env.step(np.zeros((4, 3)))  # float64 actions are cast
    assert obs.shape == (4, 9) and rew.shape == (4,) and done.shape == (4,) and len(infos) == 4
    with pytest.raises(ValueError, match="auto_reset"):
        from warpsim_rl.envs import WarpSimEnv
        SB3VecEnv(WarpSimEnv("pendulum3d-stop", 2, auto_reset=False))
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros((4, 3), dtype=np.float32))


def test_sb3_ppo_trains():
    """SB3's PPO trains a few thousand steps on the batched env (tiny network, CPU), episodes
    auto-reset at the horizon and reach SB3's episode statistics through VecMonitor."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    from warpsim_rl.envs.sb3 import make_sb3_env

    horizon, E = 50, 16
    env = VecMonitor(make_sb3_env(make_task("pendulum2d-stop", horizon=horizon), E, seed=0))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=256, n_epochs=2, policy_kwargs={"net_arch": [16]},
                    seed=0, device="cpu", verbose=0)
        before = [p.detach().clone() for p in model.policy.parameters()]
        model.learn(total_timesteps=4096)
    assert not [str(w.message) for w in rec if "sb3" in str(w.filename) or "stable_baselines3" in str(w.filename)]
    assert model.num_timesteps == 4096
    after = list(model.policy.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after))  # PPO updated the policy
    lengths = [ep["l"] for ep in model.ep_info_buffer]
    assert len(lengths) == 4096 // horizon // E * E and set(lengths) == {horizon}
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (E, 2)
    env.close()
