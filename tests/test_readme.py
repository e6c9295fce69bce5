"""The README's code cannot rot: its ```python blocks run as written (in order, one namespace,
as a reader would paste them) and print a non-trivial gradient; its benchmark commands parse."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FLOAT = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


@pytest.fixture(scope="module")
def readme_run():
    """stdout and namespace of the README's Python blocks, run one after the other."""
    blocks = _blocks("python")
    assert len(blocks) >= 2, "README.md: expected the simulator and the step-core examples"
    ns: dict = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, src in enumerate(blocks):
            exec(compile(src, f"README.md[python block {i}]", "exec"), ns)
    return out.getvalue(), ns


def test_simulator_example_prints_a_nonzero_gradient(readme_run):
    text, ns = readme_run
    rows = [line for line in text.splitlines() if re.match(r"\s*step\s+\d+:", line)]
    assert len(rows) >= 2, text
    printed = [float(v) for line in rows for v in re.findall(FLOAT, line.split(":", 1)[1])]
    assert max(abs(v) for v in printed) > 1e-3, text  # the rest-state example printed exact zeros
    assert float(ns["grad"].abs().max()) > 1e-3  # the example's (50, 3) gradient of one env
    energy = re.search(rf"E\(1 s\) = ({FLOAT}) J", text)
    assert energy and float(energy.group(1)) > 0.1, text


def test_simulator_example_first_order_check_holds(readme_run):
    """The printed prediction ``-eps |dE/da|^2`` and the simulated change agree (the README says
    well within 5 %): the gradient is the derivative of what the simulator computes."""
    text, _ = readme_run
    m = re.search(rf"predicted change ({FLOAT}) J, simulated ({FLOAT}) J", text)
    assert m, text
    predicted, simulated = float(m.group(1)), float(m.group(2))
    assert predicted < 0 and simulated < 0
    assert abs(simulated - predicted) < 0.05 * abs(predicted), text


def test_step_core_example_prints_a_nonzero_gradient(readme_run):
    text, _ = readme_run
    m = re.search(rf"\|dV/da\| = ({FLOAT})", text)
    assert m and float(m.group(1)) > 1e-3, text


def test_benchmark_commands_parse():
    """Every ``python -m warpsim_rl.bench`` line of the README is a valid command line."""
    from warpsim_rl.bench.cli import parser

    lines = [ln.split("#", 1)[0].strip() for b in _blocks("bash") for ln in b.splitlines()]
    cmds = [shlex.split(ln)[3:] for ln in lines if ln.startswith("python -m warpsim_rl.bench ")]
    assert len(cmds) >= 7
    p = parser()
    for argv in cmds:
        if argv == ["--help"]:
            continue
        args = p.parse_args(argv)
        assert args.json, f"README: {argv} should print JSON"
