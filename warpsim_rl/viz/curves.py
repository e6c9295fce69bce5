"""Learning-curve figures: one run's curve, and test-bed reward over epochs with mean and spread
over seeds."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_compare", "plot_learning_curve"]


def plot_compare(env: str, algos, runs: list[dict], path) -> None:
    """Write a PNG of the test-bed learning curves of :func:`warpsim_rl.bench.compare.compare`:
    one line per algorithm (mean over its seeds, shaded ± one standard deviation).

    Args:
        env: task name, the title.
        algos: algorithm names, in legend order.
        runs: ``{"algo", "seed", "curve": [(epoch, test-bed reward), ...]}`` per run; the runs of
            one algorithm share their evaluation epochs.
        path: output ``.png`` file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in algos:
        curves = [r["curve"] for r in runs if r["algo"] == algo]
        ep = [e for e, _ in curves[0]]
        vals = np.array([[v for _, v in c] for c in curves])
        m, s = vals.mean(0), vals.std(0)
        ax.plot(ep, m, marker="o", label=f"{algo} ({len(curves)} seeds)")
        ax.fill_between(ep, m - s, m + s, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test-bed reward (1000 initial states)")
    ax.set_title(env)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curve(history: list[dict], path, title: str) -> None:
    """Write the PNG of one run's learning curve (``learning_curve.png`` of ``train.py``): the
    training batch return per epoch and the test-bed reward (± half a standard deviation) at the
    evaluated epochs. ``history``: the rows of ``metrics.csv`` as dicts; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..usd import atomic_write

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [h.get("train/return_before") for h in history]
    ax.plot(ep, tr, label="training batch return", alpha=0.6)
    ev = [(h["epoch"], h["eval/reward"], h["eval/reward_std"]) for h in history if "eval/reward" in h]
    if ev:
        e, m, s = zip(*ev)
        ax.errorbar(e, m, yerr=[0.5 * x for x in s], marker="o", capsize=3, label="test-bed reward (± ½ std)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("return (PODS Eq. 15)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
