#!/bin/bash
# The machine's own two-core ceiling beside warpsim_rl's two launch threads (docs/results.md,
# "The machine's own ceiling"): per scene, env-steps/s with 1 thread, with 2 threads, and of two
# 1-thread processes run at the same time; twice each. Run with everything else stopped.
tp() { OMP_NUM_THREADS=1 python -m warpsim_rl.bench throughput --scene $1 --envs $2 --threads $3 --json --quiet 2>/dev/null | python -c "import json,sys; d=json.load(sys.stdin); print(d.get('env_steps_per_s') or d)"; }
for scene_envs in "pendulum2d 4096" "rope3d 1024"; do
  set -- $scene_envs
  for rep in 1 2; do
    a=$(tp $1 $2 1); b=$(tp $1 $2 2)
    c=$( (tp $1 $2 1 > /tmp/p1.txt & tp $1 $2 1 > /tmp/p2.txt; wait); cat /tmp/p1.txt /tmp/p2.txt | tr '\n' ' ')
    echo "$1 $2 rep$rep: 1 thread $a | 2 threads $b | two 1-thread processes at once: $c"
  done
done
