"""Issue 16, item 2: D3PG with w1 = w2 = 0 (our DDPG, the shared pieces of D3PG) beside skrl's DDPG
on two tasks, at settings made as equal as the two implementations allow (lr 1e-3 for actor and
critic, Gaussian noise 0.3 of the limit, one update of batch 256 per vectorised step, tau 0.005,
64 envs, 20 epochs; D3PG without its Q normalisation). Prints one JSON line per run.

    python docs/data/crosscheck_ddpg.py
"""
import json

import torch

from warpsim_rl.algos import RunConfig, algo_config, evaluate, make_algorithm
from warpsim_rl.tasks import make_task

torch.set_num_threads(1)
SETTINGS = {
    "ddpg (skrl)": ("ddpg", dict(lr=1e-3, noise_std=0.3, batch_size=256, gradient_steps=1, polyak=0.005)),
    "d3pg w=0": ("d3pg", dict(w1=0.0, w2=0.0, lr=1e-3, critic_lr=1e-3, exploration_noise=0.3, batch_size=256,
                              updates_per_step=1, tau=0.005, normalize_q=False)),
}
for env in ("pendulum2d-stop", "double_pendulum3d-stop"):
    task = make_task(env)
    for label, (algo, cfg) in SETTINGS.items():
        for seed in (0, 1):
            run = RunConfig(env=env, algo=algo, num_envs=64, epochs=20, seed=seed, threads=1)
            alg = make_algorithm(task, run, algo_config(algo, **cfg))
            curve = [evaluate(task, alg.policy)["reward"]]
            for epoch in range(run.epochs):
                alg.begin_epoch(epoch)
                alg.train_epoch()
                if (epoch + 1) % 5 == 0:
                    curve.append(evaluate(task, alg.policy)["reward"])
            print(json.dumps({"env": env, "run": label, "seed": seed, "reward_every_5_epochs": curve}), flush=True)
