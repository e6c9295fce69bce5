"""D3PG measurements: ``python -m warpsim_rl.bench.d3pg [--torch-threads N] {motivating,weights,update,memory}``.

* ``motivating`` — the paper's motivating example (Sec. 3.3) as a pure-torch problem: a 1-D
  kinematic point ``s' = s + a dt`` (``dt = 0.01``, ``a`` in [-1, 1]), reward
  ``r = (s'^2 + 1)^-1 - 1`` (of the state after the step, the step core's convention), terminal
  when ``|s'| < 0.01``. A fixed policy ``pi(s) = -tanh(5 s)`` is evaluated: the critic is fitted
  by the same update as the simulator's (:func:`~warpsim_rl.algos.d3pg.critic_loss_on_batch`,
  target networks, Pop-Art) on a replay set of transitions with ``s, a ~ U(-1, 1)``; its error
  against the true ``Q^pi`` (by rolling the known dynamics out, :func:`true_q`) is measured after
  every epoch for several ``(w1, w2)``; ``--plot`` writes the curves.
* ``weights`` — test-bed reward of D3PG per ``(w1, w2)`` (``(0, 0)``: DDPG, the same code) and
  seed at equal budget, on a task.
* ``update`` — seconds per D3PG update (stored and recomputed Jacobians) and per DDPG update
  (``w1 = w2 = 0``) at the same batch size, median over repeats, after one epoch of rollouts.
* ``memory`` — replay-buffer bytes per transition of each storage mode, per task.

Each prints one JSON object on stdout. The lead wires them into ``python -m warpsim_rl.bench``
through :func:`main`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from ..algos.d3pg import D3PG, QCritic, critic_loss_on_batch
from ..algos.models import ObservationNormalizer, soft_update

__all__ = ["PointProblem", "true_q", "critic_error_curve", "motivating", "update_times", "weight_sweep", "memory",
           "main"]

MEMORY_TASKS = ("pendulum2d-stop", "double_pendulum3d-stop", "rope3d-stop", "cloth_table-stop")


class PointProblem:
    """The 1-D kinematic point of Sec. 3.3 (float64 torch; module doc). ``policy`` maps
    (B, 1) observations (the state itself) to (B, 1) actions."""

    dt, radius, gain = 0.01, 0.01, 5.0

    @staticmethod
    def reward(next_s: torch.Tensor) -> torch.Tensor:
        return 1.0 / (next_s.square() + 1.0) - 1.0

    @staticmethod
    def reward_gradient(next_s: torch.Tensor) -> torch.Tensor:
        return -2.0 * next_s / (next_s.square() + 1.0).square()

    @classmethod
    def policy(cls, obs: torch.Tensor) -> torch.Tensor:
        return -torch.tanh(cls.gain * obs)

    @classmethod
    def transitions(cls, n: int, generator: torch.Generator) -> dict:
        """``n`` transitions from ``s, a ~ U(-1, 1)`` with every field of a D3PG minibatch."""
        s = 2.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64) - 1.0
        a = 2.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64) - 1.0
        s1 = s + a * cls.dt
        jacobian = torch.tensor([[[1.0, cls.dt]]], dtype=torch.float64).expand(n, 1, 2)  # do'/d(o, a)
        return {"obs": s, "action": a, "reward": cls.reward(s1[:, 0]), "next_obs": s1,
                "done": s1[:, 0].abs() < cls.radius, "dr_dnext": cls.reward_gradient(s1),
                "dr_da": torch.zeros(n, 1, dtype=torch.float64), "dnext_dinput": jacobian}


@torch.no_grad()
def true_q(s: torch.Tensor, a: torch.Tensor, gamma: float, steps: int = 3000) -> torch.Tensor:
    """``Q^pi(s, a)`` of :class:`PointProblem`'s policy: the discounted return of the step with
    ``a`` then ``pi``, rolled out until the point terminates (or ``steps``; ``gamma^steps`` is
    negligible)."""
    p = PointProblem
    x = s + a * p.dt
    q, discount = p.reward(x), torch.ones_like(s)
    alive = x.abs() >= p.radius
    for _ in range(steps):
        discount = discount * gamma * alive
        x = torch.where(alive, x + p.policy(x) * p.dt, x)
        q = q + discount * p.reward(x)
        alive = alive & (x.abs() >= p.radius)
    return q


def critic_error_curve(w1: float, w2: float, epochs: int = 30, updates: int = 100, batch_size: int = 64,
                       buffer: int = 20_000, gamma: float = 0.97, tau: float = 0.05, lr: float = 1e-3,
                       hidden=(64, 64), seed: int = 0, grid: int = 41) -> list[float]:
    """The critic's RMS error against :func:`true_q` on a ``grid x grid`` lattice of
    ``[-1, 1]^2``, relative to the true Q's standard deviation there, before training and after
    each of ``epochs`` epochs of ``updates`` critic updates (Adam, Polyak targets, Pop-Art) with
    loss weights ``(w1, w2)``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = PointProblem.transitions(buffer, gen)
    critic = QCritic(1, 1, torch.ones(1), hidden).double()
    critic.observe(data["obs"])
    target = copy.deepcopy(critic).requires_grad_(False)
    stats = ObservationNormalizer(1, min_std=1e-2).double()
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    axis = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)
    s, a = (t.reshape(-1, 1) for t in torch.meshgrid(axis, axis, indexing="ij"))
    truth = true_q(s, a, gamma)[:, 0]

    def error() -> float:
        with torch.no_grad():
            return float((critic(s, a) - truth).square().mean().sqrt() / truth.std())

    curve = [error()]
    for _ in range(epochs):
        for _ in range(updates):
            idx = torch.randint(buffer, (batch_size,), generator=gen)
            loss, _ = critic_loss_on_batch(critic, PointProblem.policy, target, {k: v[idx] for k, v in data.items()},
                                           gamma, w1, w2, stats)
            opt.zero_grad()
            loss.backward()
            opt.step()
            soft_update(target, critic, tau)
        curve.append(error())
    return curve


def motivating(weights=((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)), seeds=(0, 1, 2), plot: str | None = None,
               **kwargs) -> dict:
    """:func:`critic_error_curve` for each ``(w1, w2)`` and seed; the mean curve per weight pair,
    and the first epoch at which it falls below 0.1 and 0.05. ``plot``: a PNG of the curves."""
    out = {"benchmark": "d3pg_motivating", "settings": kwargs, "seeds": list(seeds), "curves": {}}
    for w1, w2 in weights:
        curves = np.array([critic_error_curve(w1, w2, seed=s, **kwargs) for s in seeds])
        mean = curves.mean(0)
        out["curves"][f"{w1:g},{w2:g}"] = {
            "mean": mean.tolist(), "per_seed_final": curves[:, -1].tolist(),
            **{f"epochs_to_{level}": next((int(i) for i, v in enumerate(mean) if v < level), None)
               for level in (0.1, 0.05)}}
    if plot:
        _plot_curves(out["curves"], plot)
    return out


def _plot_curves(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, c in curves.items():
        ax.semilogy(c["mean"], label=f"(w1, w2) = ({name})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("RMS(Q - Q^pi) / std(Q^pi)")
    ax.set_title("D3PG motivating example (Sec. 3.3): critic error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_times(env: str = "double_pendulum3d-stop", batch_size: int = 256, num_envs: int = 64,
                 repeats: int = 200, seed: int = 0, torch_threads: int = 1) -> dict:
    """Median seconds of one update (:meth:`D3PG.update`) for DDPG (``w1 = w2 = 0``) and D3PG
    with stored and with recomputed Jacobians, each after one epoch of rollouts (so the buffer
    holds ``num_envs * horizon`` transitions), on the same task and batch size. Passes of the
    three variants are interleaved, so a load change on the machine affects all alike; the
    ``paired_ratio_*`` are the medians of the per-round ratios (robust to load drift). Torch
    runs ``torch_threads`` intra-op threads (restored afterwards): on a shared 2-core machine two
    threads made these small-MLP updates ~10x slower than one."""
    from ..tasks import make_task

    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        return _update_times(make_task(env), env, batch_size, num_envs, repeats, seed)
    finally:
        torch.set_num_threads(threads)


def _update_times(task, env, batch_size, num_envs, repeats, seed) -> dict:
    from ..algos import RunConfig, algo_config, make_algorithm

    variants = {"ddpg": dict(w1=0.0, w2=0.0), "d3pg_store": dict(jacobians="store"),
                "d3pg_recompute": dict(jacobians="recompute")}
    algos = {}
    for name, opts in variants.items():
        run = RunConfig(env=env, algo="d3pg", num_envs=num_envs, seed=seed)
        algos[name] = make_algorithm(task, run, algo_config("d3pg", batch_size=batch_size, **opts))
        algos[name].train_epoch()
    times = {name: [] for name in algos}
    for _ in range(repeats):
        for name, algo in algos.items():
            t0 = time.perf_counter()
            algo.update()
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    t = {name: np.array(v) for name, v in times.items()}
    return {"benchmark": "d3pg_update", "env": env, "batch_size": batch_size, "repeats": repeats,
            "median_s": med, "ratio_store_vs_ddpg": med["d3pg_store"] / med["ddpg"],
            "ratio_recompute_vs_ddpg": med["d3pg_recompute"] / med["ddpg"],
            "paired_ratio_store_vs_ddpg": float(np.median(t["d3pg_store"] / t["ddpg"])),
            "paired_ratio_recompute_vs_ddpg": float(np.median(t["d3pg_recompute"] / t["ddpg"])),
            "torch_threads": torch.get_num_threads()}


def weight_sweep(env: str, weights=((0.0, 0.0), (1.0, 0.1)), seeds=(0, 1, 2), epochs: int = 15, num_envs: int = 64,
                 eval_every: int = 5, **opts) -> dict:
    """Train ``--algo d3pg`` with each ``(w1, w2)`` (``(0, 0)``: DDPG) and seed at equal budget
    (``opts``: other D3PG options, e.g. ``updates_per_step``) and record the test-bed reward of
    the untrained policy and every ``eval_every`` epochs."""
    from ..algos import RunConfig, algo_config, evaluate, make_algorithm
    from ..tasks import make_task

    task = make_task(env)
    runs = []
    for seed in seeds:
        for w1, w2 in weights:
            algo = make_algorithm(task, RunConfig(env=env, algo="d3pg", num_envs=num_envs, seed=seed),
                                  algo_config("d3pg", w1=w1, w2=w2, **opts))
            curve, t0 = [evaluate(task, algo.policy)["reward"]], time.perf_counter()
            for epoch in range(epochs):
                algo.begin_epoch(epoch)
                algo.train_epoch()
                if (epoch + 1) % eval_every == 0:
                    curve.append(evaluate(task, algo.policy)["reward"])
            runs.append({"seed": seed, "w1": w1, "w2": w2, "eval_reward": curve, "wall_s": time.perf_counter() - t0})
    return {"benchmark": "d3pg_weights", "env": env, "epochs": epochs, "num_envs": num_envs, "eval_every": eval_every,
            "options": opts, "runs": runs}


def memory(tasks=MEMORY_TASKS, capacity: int = 1_000_000) -> dict:
    """Replay bytes per transition (float32) of DDPG, D3PG storing the observed Jacobian blocks,
    D3PG storing the simulator state (recompute), and of the paper's full Markov-state Jacobians
    (``ns x ns + ns x na``, for comparison), per task; and the buffer at ``capacity``."""
    from ..tasks import make_task

    out = {"benchmark": "d3pg_memory", "dtype": "float32", "capacity": capacity, "tasks": {}}
    for name in tasks:
        task = make_task(name)
        lay = task.layout
        per = {mode or "ddpg": D3PG.memory_per_transition(task, mode) for mode in (None, "store", "recompute")}
        per["full_markov_jacobians"] = per["ddpg"] + 4 * (lay.markov_size ** 2 + lay.markov_size * task.action_dim
                                                          + task.obs_dim + task.action_dim)
        out["tasks"][name] = {"obs": task.obs_dim, "markov": lay.markov_size, "full_state": lay.full_size,
                              "action": task.action_dim, "bytes_per_transition": per,
                              "gib_at_capacity": {k: v * capacity / 2 ** 30 for k, v in per.items()}}
    return out


def main(argv=None) -> dict:
    """Command line (module doc); prints and returns the result."""
    p = argparse.ArgumentParser(prog="python -m warpsim_rl.bench.d3pg", description=__doc__.split("\n\n")[0])
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads (small MLPs: 1 was ~10x faster than 2 on a shared 2-core machine)")
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("motivating", help="critic error against the true Q on the 1-D point (Sec. 3.3)")
    m.add_argument("--epochs", type=int, default=30)
    m.add_argument("--updates", type=int, default=100, help="critic updates per epoch")
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--plot", default=None, help="write the curves to this PNG")
    u = sub.add_parser("update", help="seconds per update: DDPG vs D3PG (stored / recomputed Jacobians)")
    u.add_argument("--env", default="double_pendulum3d-stop")
    u.add_argument("--batch-size", type=int, default=256)
    u.add_argument("--repeats", type=int, default=200)
    w = sub.add_parser("weights", help="test-bed reward of D3PG per (w1, w2) and seed at equal budget")
    w.add_argument("--env", default="pendulum2d-stop")
    w.add_argument("--weights", default="0,0;1,0.1", help="'w1,w2;w1,w2;...'")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    w.add_argument("--epochs", type=int, default=15)
    w.add_argument("--num-envs", type=int, default=64)
    w.add_argument("--updates-per-step", type=int, default=2)
    w.add_argument("--state-gradient", default="shifted")
    w.add_argument("--lr", type=float, default=1e-4, help="actor learning rate")
    sub.add_parser("memory", help="replay bytes per transition per storage mode")
    args = p.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    if args.what == "motivating":
        res = motivating(seeds=tuple(range(args.seeds)), plot=args.plot, epochs=args.epochs, updates=args.updates)
    elif args.what == "weights":
        pairs = tuple(tuple(float(x) for x in pair.split(",")) for pair in args.weights.split(";"))
        res = weight_sweep(args.env, pairs, tuple(args.seeds), args.epochs, args.num_envs,
                           updates_per_step=args.updates_per_step, state_gradient=args.state_gradient, lr=args.lr)
    elif args.what == "update":
        res = update_times(args.env, args.batch_size, repeats=args.repeats, torch_threads=args.torch_threads)
    else:
        res = memory()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
