"""Train a policy on a warpsim_rl task: ``python train.py --help``.

The command line lives in the package (``warpsim_rl/train.py``, also ``python -m warpsim_rl.train``);
this file keeps the design card's entry point at the top of the repository.
"""

import sys

from warpsim_rl.train import main

if __name__ == "__main__":
    sys.exit(main())
