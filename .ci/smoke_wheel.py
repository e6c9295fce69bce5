"""Smoke test of the installed package, run by .ci/run from outside the repository with the
interpreter of a virtual environment into which the wheel was installed (not editable):

1. ``warpsim_rl`` comes from that environment's site-packages, not from the checkout;
2. every module of every subpackage imports (``pkgutil.walk_packages``), and the subpackages
   that must ship are there, the scene files included;
3. the command lines start (``python -m warpsim_rl.bench --help``, ``python -m warpsim_rl.viz --help``);
4. one training epoch runs through the installed package (``python -m warpsim_rl.train``) and
   writes finite test-bed results.

Any failure raises, so the script exits non-zero and CI fails.

    python .ci/smoke_wheel.py REPO_ROOT
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

MUST_SHIP = {"warpsim_rl.algos", "warpsim_rl.envs", "warpsim_rl.tasks", "warpsim_rl.bench", "warpsim_rl.viz",
             "warpsim_rl.kernels", "warpsim_rl.scenes"}
TRAIN = ["--epochs", "1", "--num-envs", "16", "--eval-every", "0", "--usd-envs", "0", "--no-progress"]


def run(*args: str, cwd: Path) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=cwd, check=True)


def main(repo: Path) -> int:
    import warpsim_rl

    where = Path(warpsim_rl.__file__).resolve().parent
    print(f"warpsim_rl {warpsim_rl.__version__} from {where}")
    if where.is_relative_to(repo) or "site-packages" not in where.parts:
        raise SystemExit(f"warpsim_rl was imported from {where}, not from an installed wheel")

    names = sorted(m.name for m in pkgutil.walk_packages(warpsim_rl.__path__, "warpsim_rl.")
                   if m.name.rpartition(".")[2] != "__main__")  # __main__ modules run, not import
    for name in names:
        importlib.import_module(name)
    packages = sorted(m.name for m in pkgutil.walk_packages(warpsim_rl.__path__, "warpsim_rl.") if m.ispkg)
    print(f"imported {len(names)} modules; subpackages: {', '.join(packages)}")
    missing = MUST_SHIP - set(packages)
    if missing:
        raise SystemExit(f"subpackages missing from the wheel: {sorted(missing)}")
    from warpsim_rl import scene_names

    tomls = sorted(p.stem for p in (where / "scenes").glob("*.toml"))
    if not tomls or sorted(scene_names()) != tomls:
        raise SystemExit(f"scene files in the wheel {tomls} do not match scene_names() {sorted(scene_names())}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run("-m", "warpsim_rl.bench", "--help", cwd=tmp)
        run("-m", "warpsim_rl.viz", "--help", cwd=tmp)
        out = tmp / "smoke"
        run("-m", "warpsim_rl.train", *TRAIN, "--out", str(out), cwd=tmp)
        results = json.loads((out / "results.json").read_text())
        print("results:", json.dumps(results))
        if results.get("epochs") != 1 or not math.isfinite(results["reward"]):
            raise SystemExit(f"one-epoch training did not produce finite results: {results}")
    print("wheel smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
