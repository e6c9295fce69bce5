"""Replay one PODS epoch from a run's checkpoint and measure the closed-loop batch return of the
regressed policy at fractions of the regression step, with old / new observation statistics
(docs/results.md, "PODS: backtracking in the policy check").

    python docs/data/probe_policy_check.py runs/abl/cable-bt0
"""
import sys

import copy, torch
from warpsim_rl.training import load_checkpoint, configs_from_checkpoint
from warpsim_rl.algos import make_algorithm
from warpsim_rl.tasks import make_task
torch.set_num_threads(1)
ck=load_checkpoint(sys.argv[1])
run,cfg=configs_from_checkpoint(ck)
task=make_task(run.env)
alg=make_algorithm(task, run, cfg); alg.load_state_dict(ck['algorithm'])
alg.begin_epoch(ck['epoch']-1)
# replicate train_epoch up to regression
state0=alg.initial_state()
traj=alg.core.rollout(alg.policy, state0, task.horizon, jacobians=True)
res=alg.trajectory.line_search(state0, traj, alg.trajectory.direction(traj))
ok=res.improved & ~traj.failed
X=res.obs[:, ok].reshape(-1, task.obs_dim); Y=res.actions[:, ok].reshape(-1, task.action_dim)
old_sd=copy.deepcopy(alg.policy.state_dict())
def ret():
    with torch.no_grad():
        return float(alg.core.rollout(alg.policy, state0, task.horizon).returns.mean())
base=ret(); print("old", base, "improved traj", float(res.returns_after.mean()))
alg.policy.observe(X)
print("old weights + new stats", ret()-base)
loss=alg.regress(X,Y); print("regression loss", loss)
new_sd=copy.deepcopy(alg.policy.state_dict())
print("new weights + new stats", ret()-base)
# new weights with old stats
sd=copy.deepcopy(new_sd); 
for k in sd:
    if 'normalizer' in k: sd[k]=old_sd[k]
alg.policy.load_state_dict(sd); print("new weights + old stats", ret()-base)
for beta in (0.5,0.25,0.1):
    sd={k:(torch.lerp(old_sd[k].float(), new_sd[k].float(), beta).to(old_sd[k].dtype) if 'normalizer' not in k else old_sd[k]) for k in old_sd}
    alg.policy.load_state_dict(sd); print("beta",beta,"old stats", ret()-base)
# fit quality: old policy's distance to targets vs new
alg.policy.load_state_dict(old_sd)
with torch.no_grad(): print("old policy loss on targets", float((alg.policy(X)-Y).square().sum(-1).mean()))
