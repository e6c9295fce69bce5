"""The package list for setuptools; every other setting is in pyproject.toml.

``kernels/`` and ``scenes/`` stay at the top of the repository (design card) and are installed
inside the package as ``warpsim_rl.kernels`` and ``warpsim_rl.scenes``. pyproject.toml cannot
map a discovered folder to another package name, so the packages are discovered here: each root
below and every subpackage found under its folder ship in the wheel.
"""

from setuptools import find_packages, setup

PACKAGE_DIR = {"warpsim_rl": "warpsim_rl", "warpsim_rl.kernels": "kernels", "warpsim_rl.scenes": "scenes"}
PACKAGES = [name for root, folder in PACKAGE_DIR.items()
            for name in [root] + [f"{root}.{sub}" for sub in find_packages(folder)]]

setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
