"""Benchmarks: ``python -m warpsim_rl.bench SUBCOMMAND ... [--json]``.

Subcommands (module):
    throughput  env-steps/s of the batched BDF2 step for one scene (random actions within the
                handle limits), with Newton iteration statistics (warpsim_rl.bench.sim).
    gradients   cost of the reverse pass and of all per-step Jacobians of a rollout (``sim``).
    scaling     throughput of ``rope3d`` as its particle count grows, banded and dense (``sim``).
    envs        env-steps/s of the torch environment for every registered task
                (warpsim_rl.bench.envs).
    compare     train several algorithms over seeds at equal epochs; test-bed learning curves
                (warpsim_rl.bench.compare).
    table1      PODS Table 1: every algorithm on every row (task) over seeds at the same
                budget (the cells' CPU time by default), cached and resumable; report, claims,
                figures (warpsim_rl.bench.table1).
    nonsmooth   AGPO, SHAC, BPTT, PODS and AoBG on a stiffening wall and the cloth, at the same
                budget, and the analytic gradient's variance (warpsim_rl.bench.nonsmooth).
    windows     a SHAC / AGPO epoch against the forward simulation of its steps
                (warpsim_rl.bench.windows).
    (python -m warpsim_rl.bench.d3pg {motivating,weights,update,memory}: the D3PG measurements,
    warpsim_rl.bench.d3pg, a command of its own)
    sweep       one algorithm over a hyper-parameter grid at a fixed budget
                (warpsim_rl.bench.sweep).
    estimators  bias/variance of the ZoBG/FoBG/AoBG gradient estimators; the wall strike
                (warpsim_rl.bench.estimators).
    usd         time of the USD export of a rollout (warpsim_rl.bench.usd).
    contact     Newton statistics of the cloth on the table, cables vs bilateral springs
                (warpsim_rl.bench.contact).
    anchor      warpsim_rl against NVIDIA Newton's SemiImplicit solver on the same problems at
                equal accuracy against a DOP853 reference, and the gradient comparison
                (warpsim_rl.bench.anchor; needs the ``anchor`` extra).
    distributed train.py's epoch time in one process against torchrun with N processes, and
                the collective payload (warpsim_rl.bench.distributed).

Every subcommand shows its progress on stderr (a tqdm bar; --quiet: none) and prints its result
on stdout (--json: one JSON object, nothing else). The default sizes keep each invocation of the
README under 2 minutes on a 2-core CPU VM whose other core is idle (README, Benchmarks: sizes
and times); larger runs take --envs, --steps, --repeats.
Timings exclude kernel compilation (one warm-up first) and synchronise the device before the
clock stops; shared helpers (machine information, timing, progress, output) are in
warpsim_rl.bench.common. The CPU backend of Warp runs kernels on one core.
"""

from .cli import main

__all__ = ["main"]
