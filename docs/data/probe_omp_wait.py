"""torch's intra-op threads on a busy machine: time the Adam steps of a 64 x 64 MLP on a
2048-sample batch (a critic / regression update of the size the algorithms run).

    python docs/data/probe_omp_wait.py THREADS            # torch.set_num_threads(THREADS)
    OMP_WAIT_POLICY=PASSIVE python docs/data/probe_omp_wait.py 2

Prints the mean ms per step of two passes of 200 steps (docs/results.md, "torch's intra-op
threads beside Warp's launch threads").
"""
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                          torch.nn.Linear(64, 2))
opt = torch.optim.Adam(net.parameters(), 1e-3)
x, y = torch.randn(2048, 10), torch.randn(2048, 2)
for _ in range(2):
    t0 = time.perf_counter()
    for _ in range(200):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    print(f"{sys.argv[1]} threads: {(time.perf_counter() - t0) / 200 * 1e3:.3f} ms/step")
