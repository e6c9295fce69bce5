"""The package list for setuptools; every other setting is in pyproject.toml.

``kernels/`` and ``scenes/`` stay at the top of the repository (design card) and are installed
inside the package as ``warpsim_rl.kernels`` and ``warpsim_rl.scenes``. pyproject.toml cannot
map a discovered folder to another package name, so the packages are discovered here: each root
below and every subpackage found under its folder ship in the wheel.

A build from a git checkout also writes the checkout's ``git describe --always --dirty`` into
the built package as ``warpsim_rl/REVISION``: an installed copy has no checkout of its own, and
the benchmarks record that revision with their results (``warpsim_rl.bench.common.git_revision``).
A build from anything else (a copy without .git, an sdist) writes none.
"""

import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PACKAGE_DIR = {"warpsim_rl": "warpsim_rl", "warpsim_rl.kernels": "kernels", "warpsim_rl.scenes": "scenes"}
PACKAGES = [name for root, folder in PACKAGE_DIR.items()
            for name in [root] + [f"{root}.{sub}" for sub in find_packages(folder)]]


class BuildPyWithRevision(build_py):
    """``build_py`` that stamps the source checkout's revision into the built package."""

    def run(self):
        super().run()
        stamp = Path(self.build_lib) / "warpsim_rl" / "REVISION"
        stamp.unlink(missing_ok=True)  # never ship an earlier build's stamp
        here = Path(__file__).resolve().parent
        try:
            top = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"],
                                 capture_output=True, text=True, timeout=30)
            rev = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return
        # only this folder's own checkout, not a repository that merely contains the folder
        own = top.returncode == 0 and Path(top.stdout.strip()).resolve() == here
        if own and rev.returncode == 0 and rev.stdout.strip() and not self.editable_mode:
            stamp.write_text(rev.stdout.strip() + "\n")


setup(packages=PACKAGES, package_dir=PACKAGE_DIR, cmdclass={"build_py": BuildPyWithRevision})
