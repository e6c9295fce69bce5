"""``python -m warpsim_rl.bench SUBCOMMAND ...`` (see :mod:`warpsim_rl.bench`)."""

import sys

from .cli import main

sys.exit(main())
