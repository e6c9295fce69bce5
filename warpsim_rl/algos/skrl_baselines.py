"""PPO, SAC and DDPG from skrl (Serrano-Muñoz et al., JMLR 2023): the model-free baselines of
PODS Table 1, trained on the very step core the differentiable methods step.

The agents are skrl's own (``skrl.agents.torch.ppo.PPO``, ``.sac.SAC``, ``.ddpg.DDPG``), not
re-implementations; this module only connects them to the project's contract:

* **Environment.** :class:`~warpsim_rl.envs.skrl_wrapper.SkrlWrapper` around a
  :class:`~warpsim_rl.envs.torch_env.WarpSimEnv` built on the algorithm's own
  :class:`~warpsim_rl.core.StepCore` (its buffered path: one recorded launch per step for all
  envs, no host round trip; the core's :class:`~warpsim_rl.core.StepCounter` counts the env
  steps). Actions are in m/s, the action space is ``[-limit, limit]``.
* **Epochs.** An epoch is one episode of ``task.horizon`` steps in each of the ``num_envs``
  envs, all started from initial states drawn with the algorithm's generator (as every other
  algorithm's epoch); the last step of the epoch is marked truncated, so no episode and no
  PPO rollout crosses an epoch. The agent is driven step by step as skrl's own trainer does
  (``act`` → env step → ``record_transition`` → ``post_interaction``, which updates), with the
  pre-reset observation as ``next_observations`` of a finished episode, so time-limit
  bootstrapping (SAC / DDPG targets, PPO's ``time_limit_bootstrap``) uses the state the limit cut
  off. An env whose implicit solve fails is ``terminated`` and restarted by the env.
* **Actor.** The mean of PPO's / SAC's Gaussian and DDPG's deterministic action is the base's
  :class:`~warpsim_rl.algos.models.MLPPolicy` ``self.policy`` — the same widths and, for a seed,
  the same initial weights as PODS' policy (PODS Sec. 4: every method initialised identically);
  the exploration head is the baseline's own (a state-independent Gaussian ``log_std`` for PPO
  and SAC, as skrl's examples; Gaussian action noise for DDPG). The test bed evaluates
  ``self.policy``, the deterministic (mean) action, like every algorithm.
* **Observation normalisation.** The actor's :class:`~warpsim_rl.algos.models.ObservationNormalizer`
  (also read by the critics: one set of statistics) is updated at the end of every epoch with
  that epoch's observations (skrl's own preprocessors are not used, so the evaluated actor needs
  nothing else).
* **Checkpoints.** Every network, skrl's optimisers (adopted into the registry; our learning-rate
  schedule drives them), the replay / rollout memory, the agent's counters and torch's RNG are
  saved: a resumed run continues bit-identically.

Hyper-parameters start from skrl's defaults; where the table's defaults differ, the field says
why (the tuning sweep, its budget and its results are in docs/results.md). skrl's memories hold
float32, so the baselines run in float32.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..tasks import Task
from .base import Algorithm
from .config import AlgoConfig, RunConfig, check_int, check_positive, check_range, check_unit, check_widths
from .models import MLPPolicy, mlp
from .returns import masked_mean

__all__ = ["SkrlAgent", "SkrlConfig", "OffPolicyConfig", "PPOConfig", "SACConfig", "DDPGConfig", "PPOBaseline",
           "SACBaseline", "DDPGBaseline"]


# -- skrl models around the project's networks ---------------------------------------------------------

def _skrl_models():
    """The skrl model classes (imported lazily: skrl is the ``rl`` extra)."""
    from skrl.models.torch import DeterministicMixin, GaussianMixin, Model

    class GaussianActor(GaussianMixin, Model):
        """skrl Gaussian policy: mean ``actor(obs)`` (m/s), state-independent ``log_std``."""

        def __init__(self, actor: MLPPolicy, observation_space, action_space, device, init_log_std: float):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            GaussianMixin.__init__(self, clip_actions=True, clip_log_std=True, min_log_std=-20.0, max_log_std=2.0)
            self.actor = actor
            self.log_std = nn.Parameter(torch.full((self.num_actions,), float(init_log_std)))

        def compute(self, inputs, role=""):
            return self.actor(inputs["observations"]), {"log_std": self.log_std}

    class DeterministicActor(DeterministicMixin, Model):
        """skrl deterministic policy ``actor(obs)`` (m/s)."""

        def __init__(self, actor: MLPPolicy, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self, clip_actions=True)
            self.actor = actor

        def compute(self, inputs, role=""):
            return self.actor(inputs["observations"]), {}

    class Critic(DeterministicMixin, Model):
        """``V(o) = net(normalize(o))`` or ``Q(o, a) = net([normalize(o), a])`` (a in m/s); the
        normaliser is the actor's (shared, never trained here)."""

        def __init__(self, normalizer: nn.Module, observation_space, action_space, device, hidden,
                     with_action: bool):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.with_action = with_action
            self.net = mlp(self.num_observations + (self.num_actions if with_action else 0), 1, hidden, "elu")
            self.normalizer = [normalizer]  # a reference, not a submodule: its statistics belong to the actor

        def compute(self, inputs, role=""):
            x = self.normalizer[0](inputs["observations"])
            if self.with_action:
                x = torch.cat([x, inputs["taken_actions"]], dim=-1)
            return self.net(x), {}

    return GaussianActor, DeterministicActor, Critic


class _AgentState:
    """The skrl agent's state outside its networks and optimisers — its memory (the rows written so
    far, write position, fill flag), the counters of the update cycle, the entropy coefficient of SAC — and
    the algorithm's vectorised-step count, as one registry buffer (``state_dict`` /
    ``load_state_dict``)."""

    ATTRS = ("_rollout", "_entropy_coefficient", "log_entropy_coefficient")

    def __init__(self, owner: "SkrlAgent"):
        self.owner = owner

    def state_dict(self) -> dict:
        agent, memory = self.owner.agent, self.owner.agent.memory
        attrs = {}
        for name in self.ATTRS:
            if hasattr(agent, name):
                value = getattr(agent, name)
                attrs[name] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        rows = memory.memory_size if memory.filled else memory.memory_index  # the rest was never written
        return {"timestep": self.owner.timestep, "attrs": attrs,
                "memory": {"tensors": {k: v[:rows].clone() for k, v in memory.tensors.items()},
                           "filled": memory.filled, "env_index": memory.env_index,
                           "memory_index": memory.memory_index}}

    def load_state_dict(self, state: dict) -> None:
        agent, memory = self.owner.agent, self.owner.agent.memory
        self.owner.timestep = int(state["timestep"])
        for name, value in state["attrs"].items():
            current = getattr(agent, name)
            if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                with torch.no_grad():
                    current.copy_(value)
            else:
                setattr(agent, name, value)
        saved = state["memory"]
        if set(saved["tensors"]) != set(memory.tensors):
            raise ValueError(f"checkpoint memory tensors {sorted(saved['tensors'])} do not match this agent's "
                             f"{sorted(memory.tensors)}")
        for k, v in saved["tensors"].items():
            memory.tensors[k][:v.shape[0]].copy_(v)
        memory.filled, memory.env_index, memory.memory_index = saved["filled"], saved["env_index"], \
            saved["memory_index"]


# -- configs ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SkrlConfig(AlgoConfig):
    """Options of every skrl baseline."""

    lr: float = 1e-3
    """Adam learning rate of actor and critics (skrl's default)"""
    gamma: float = 0.99
    """discount factor (skrl's default)"""
    critic_hidden: tuple[int, ...] = (64, 64)
    """critic MLP hidden widths (ELU)"""

    def __post_init__(self):
        super().__post_init__()
        self.critic_hidden = check_widths("critic_hidden", self.critic_hidden)
        check_unit("gamma", self.gamma, low_open=True)


@dataclasses.dataclass
class PPOConfig(SkrlConfig):
    """skrl PPO options (Schulman et al. 2017)."""

    rollouts: int | None = None
    """env steps per env between updates; must divide the task horizon (default: its largest divisor
    <= 32, e.g. 25 for 100 steps, 30 for 150; skrl's default is 16)"""
    learning_epochs: int = 8
    """passes over the rollout memory per update (skrl's default)"""
    mini_batches: int = 2
    """minibatches per pass (skrl's default; kept by the sweep on pendulum2d-stop, docs/results.md)"""
    gae_lambda: float = 0.95
    """GAE lambda (skrl's default)"""
    ratio_clip: float = 0.2
    """clip of the probability ratio (skrl's default)"""
    value_clip: float = 0.2
    """clip of the value change (skrl's default)"""
    value_loss_scale: float = 1.0
    """weight of the value loss (skrl's default 1.0)"""
    entropy_loss_scale: float = 0.0
    """weight of the entropy bonus (skrl's default 0)"""
    grad_norm_clip: float = 0.5
    """gradient-norm clip (skrl's default)"""
    init_log_std: float = -0.7
    """initial log standard deviation of the Gaussian (m/s; exp(-0.7) = 0.5, a quarter of the 2 m/s limits)"""

    def __post_init__(self):
        super().__post_init__()
        if self.rollouts is not None:
            check_int("rollouts", self.rollouts, 1)
        check_int("learning_epochs", self.learning_epochs, 1)
        check_int("mini_batches", self.mini_batches, 1)
        check_unit("gae_lambda", self.gae_lambda)
        for name in ("ratio_clip", "value_loss_scale", "grad_norm_clip"):
            check_positive(name, getattr(self, name))
        for name in ("value_clip", "entropy_loss_scale"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_range("init_log_std", self.init_log_std, -20.0, 2.0)  # skrl's log-std clip


@dataclasses.dataclass
class OffPolicyConfig(SkrlConfig):
    """Options of the replay-based baselines (SAC, DDPG)."""

    batch_size: int = 256
    """minibatch per gradient step (skrl's default 64; 256 beat 1024 in the sweep on pendulum2d-stop,
    docs/results.md)"""
    gradient_steps: int = 1
    """gradient steps per vectorised env step (skrl's default)"""
    replay_size: int = 1_000_000
    """replay capacity in transitions (split evenly over the envs)"""
    polyak: float = 0.005
    """target-network soft-update rate tau (skrl's default)"""
    learning_starts: int = 0
    """vectorised env steps before the first update (skrl's default)"""

    def __post_init__(self):
        super().__post_init__()
        check_int("batch_size", self.batch_size, 1)
        check_int("gradient_steps", self.gradient_steps, 1)
        check_int("replay_size", self.replay_size, 1)
        check_unit("polyak", self.polyak, low_open=True)
        check_int("learning_starts", self.learning_starts, 0)


@dataclasses.dataclass
class SACConfig(OffPolicyConfig):
    """skrl SAC options (Haarnoja et al. 2018)."""

    initial_entropy: float = 0.2
    """initial entropy coefficient (skrl's default); learnt towards the target entropy -action_dim"""
    init_log_std: float = -0.7
    """initial log standard deviation of the Gaussian (m/s)"""

    def __post_init__(self):
        super().__post_init__()
        check_positive("initial_entropy", self.initial_entropy)
        check_range("init_log_std", self.init_log_std, -20.0, 2.0)


@dataclasses.dataclass
class DDPGConfig(OffPolicyConfig):
    """skrl DDPG options (Lillicrap et al. 2016)."""

    noise_std: float = 0.3
    """std of the Gaussian action noise, as a fraction of the action limit (0.3 beat 0.1 in the sweep on
    pendulum2d-stop, docs/results.md)"""

    def __post_init__(self):
        super().__post_init__()
        check_positive("noise_std", self.noise_std)


# -- the algorithm ----------------------------------------------------------------------------------------

class SkrlAgent(Algorithm):
    """An skrl agent trained epoch by epoch on the step core (module doc). Subclasses name the
    agent (:attr:`AGENT`) and build its models, skrl config and exploration."""

    Config: ClassVar[type[SkrlConfig]] = SkrlConfig
    #: skrl agent class path ``(module, class, config class)``
    AGENT: ClassVar[tuple[str, str, str]]

    def __init__(self, task: Task, run: RunConfig, cfg: SkrlConfig):
        # before skrl is imported: under torchrun, skrl's config joins an NCCL process group itself
        self.check_process_group(run)
        if run.dtype != "float32":
            raise ValueError(f"dtype = {run.dtype!r}: the skrl baselines run in float32 (skrl's memories hold float32)")
        try:
            from skrl.memories.torch import RandomMemory
        except ImportError:
            raise ImportError(f"algo = {run.algo!r} is skrl's agent: install skrl (pip install 'warpsim_rl[rl]')") \
                from None
        super().__init__(task, run, cfg)
        import importlib

        from ..envs.skrl_wrapper import SkrlWrapper
        from ..envs.torch_env import WarpSimEnv

        self.env = SkrlWrapper(WarpSimEnv(task, run.num_envs, core=self.core, validate=False))
        self.env.torch_env._rng = self.register_generator("env", self.env.torch_env._rng)
        self.timestep = 0  # vectorised env steps so far (skrl's ``timestep``)
        self.timesteps = run.epochs * task.horizon
        module, cls, cfg_cls = self.AGENT
        mod = importlib.import_module(module)
        models = self.make_models(*_skrl_models())
        agent_cfg = getattr(mod, cfg_cls)(**self.agent_config(), experiment={"write_interval": 0,
                                                                             "checkpoint_interval": 0})
        memory = RandomMemory(memory_size=self.memory_rows(), num_envs=run.num_envs, device=self.device)
        self.agent = getattr(mod, cls)(models=models, memory=memory, observation_space=self.env.observation_space,
                                       action_space=self.env.action_space, device=self.device, cfg=agent_cfg)
        self.agent.init()
        self.agent.enable_training_mode(True)
        for name, model in models.items():
            self.register_module(f"skrl_{name}", model)
        for name, opt in self.agent_optimizers().items():
            self.adopt_optimizer(name, opt, opt.param_groups[0]["lr"])
        self.register_buffer("agent", _AgentState(self))

    # -- what a subclass provides -----------------------------------------------------------------------
    def make_models(self, GaussianActor, DeterministicActor, Critic) -> dict[str, nn.Module]:  # pragma: no cover
        raise NotImplementedError

    def agent_config(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def agent_optimizers(self) -> dict[str, torch.optim.Optimizer]:  # pragma: no cover
        raise NotImplementedError

    def memory_rows(self) -> int:  # pragma: no cover
        """Rows per env of skrl's memory."""
        raise NotImplementedError

    def _critic(self, Critic, with_action: bool) -> nn.Module:
        return Critic(self.policy.normalizer, self.env.observation_space, self.env.action_space, self.device,
                      self.cfg.critic_hidden, with_action)

    # -- one epoch ----------------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        task, agent, env = self.task, self.agent, self.env.torch_env
        pos, vel = task.sample_initial_states(self.run.num_envs, self.rng)
        obs, _ = env.reset(initial_state=(pos, vel))
        H = task.horizon
        total = torch.zeros(self.run.num_envs, dtype=self.dtype, device=self.device)
        diverged = torch.zeros(self.run.num_envs, dtype=torch.bool, device=self.device)
        seen = []
        for t in range(H):
            step = dict(timestep=self.timestep, timesteps=self.timesteps)
            agent.pre_interaction(**step)
            with torch.no_grad():
                actions = agent.act(obs, None, **step)[0]
            nxt, rew, term, trunc, info = self.env.step(actions)
            if t == H - 1:
                trunc = torch.ones_like(trunc)  # the epoch ends every episode (its envs are reset next epoch)
            final = info["final_observation"]
            agent.record_transition(observations=obs, states=None, actions=actions, rewards=rew,
                                    next_observations=final, next_states=None, terminated=term, truncated=trunc,
                                    infos=info, **step)
            agent.post_interaction(**step)
            alive = ~diverged
            total += torch.where(alive, rew.view(-1), torch.zeros((), dtype=rew.dtype, device=rew.device))
            diverged |= info["diverged"]
            seen.append(obs)
            obs = nxt
            self.timestep += 1
        self.policy.observe(torch.cat(seen))
        return {"train/return_before": float(masked_mean(total, ~diverged)),
                "train/diverged": int(diverged.sum()), **self._agent_metrics()}

    def _agent_metrics(self) -> dict:
        """The epoch means of what skrl tracked (losses, entropy, noise, ...; not its per-batch
        extremes), as
        ``skrl/<group>/<name>`` (e.g. ``skrl/loss/policy_loss``; the update time as
        ``time/update_ms``); skrl's tracking lists are then
        emptied (with no writer of its own skrl would keep them forever)."""
        out = {}
        for tag, values in self.agent.tracking_data.items():
            if values and not tag.endswith(("(max)", "(min)")):
                key = "time/update_ms" if tag == "Stats / Algorithm update time (ms)" else \
                    "skrl/" + "/".join(part.strip().lower().replace(" ", "_") for part in tag.split("/"))
                out[key] = float(sum(float(v) for v in values) / len(values))
        self.agent.tracking_data.clear()
        return out


class PPOBaseline(SkrlAgent):
    Config = PPOConfig
    AGENT = ("skrl.agents.torch.ppo", "PPO", "PPO_CFG")

    def __init__(self, task: Task, run: RunConfig, cfg: PPOConfig):
        H = task.horizon
        self.rollouts = cfg.rollouts if cfg.rollouts is not None else max(d for d in range(1, 33) if H % d == 0)
        if H % self.rollouts:
            divisors = [d for d in range(1, H + 1) if H % d == 0]
            raise ValueError(f"rollouts = {cfg.rollouts!r}: must divide the horizon of {task.name} ({H} steps), "
                             f"e.g. one of {divisors}")
        super().__init__(task, run, cfg)

    def memory_rows(self) -> int:
        return self.rollouts

    def make_models(self, GaussianActor, DeterministicActor, Critic):
        space = (self.env.observation_space, self.env.action_space, self.device)
        return {"policy": GaussianActor(self.policy, *space, self.cfg.init_log_std),
                "value": self._critic(Critic, with_action=False)}

    def agent_config(self):
        c = self.cfg
        return dict(rollouts=self.rollouts, learning_epochs=c.learning_epochs, mini_batches=c.mini_batches,
                    discount_factor=c.gamma, gae_lambda=c.gae_lambda, learning_rate=c.lr, grad_norm_clip=c.grad_norm_clip,
                    ratio_clip=c.ratio_clip, value_clip=c.value_clip, entropy_loss_scale=c.entropy_loss_scale,
                    value_loss_scale=c.value_loss_scale, time_limit_bootstrap=True)

    def agent_optimizers(self):
        return {"ppo": self.agent.optimizer}


class _ReplayAgent(SkrlAgent):
    """What SAC and DDPG share: a replay memory of ``replay_size`` transitions and the
    off-policy options of :class:`OffPolicyConfig`."""

    def memory_rows(self) -> int:
        return self.cfg.replay_size // self.run.num_envs

    def replay_config(self) -> dict[str, Any]:
        c = self.cfg
        return dict(gradient_steps=c.gradient_steps, batch_size=c.batch_size, discount_factor=c.gamma, polyak=c.polyak,
                    learning_rate=c.lr, learning_starts=c.learning_starts)


class SACBaseline(_ReplayAgent):
    Config = SACConfig
    AGENT = ("skrl.agents.torch.sac", "SAC", "SAC_CFG")

    def make_models(self, GaussianActor, DeterministicActor, Critic):
        space = (self.env.observation_space, self.env.action_space, self.device)
        models = {"policy": GaussianActor(self.policy, *space, self.cfg.init_log_std)}
        for name in ("critic_1", "critic_2", "target_critic_1", "target_critic_2"):
            models[name] = self._critic(Critic, with_action=True)
        return models

    def agent_config(self):
        return dict(self.replay_config(), learn_entropy=True, initial_entropy_value=self.cfg.initial_entropy)

    def agent_optimizers(self):
        a = self.agent
        return {"policy": a.policy_optimizer, "critic": a.critic_optimizer, "entropy": a.entropy_optimizer}


class DDPGBaseline(_ReplayAgent):
    Config = DDPGConfig
    AGENT = ("skrl.agents.torch.ddpg", "DDPG", "DDPG_CFG")

    def make_models(self, GaussianActor, DeterministicActor, Critic):
        space = (self.env.observation_space, self.env.action_space, self.device)
        target_actor = copy.deepcopy(self.policy)
        target_actor.normalizer = self.policy.normalizer  # one set of observation statistics
        return {"policy": DeterministicActor(self.policy, *space), "target_policy": DeterministicActor(target_actor, *space),
                "critic": self._critic(Critic, with_action=True), "target_critic": self._critic(Critic, with_action=True)}

    def agent_config(self):
        from skrl.resources.noises.torch import GaussianNoise

        c = self.cfg
        limit = self.core.limit.reshape(-1)
        if not bool((limit == limit[0]).all()):
            raise ValueError(f"task {self.task.name}: DDPG's Gaussian noise needs one action limit for every axis, "
                             f"got {limit.tolist()}")
        return dict(self.replay_config(), exploration_noise=GaussianNoise,
                    exploration_noise_kwargs={"mean": 0.0, "std": c.noise_std * float(limit[0]), "device": self.device})

    def agent_optimizers(self):
        return {"policy": self.agent.policy_optimizer, "critic": self.agent.critic_optimizer}
