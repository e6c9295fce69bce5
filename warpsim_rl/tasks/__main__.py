"""``python -m warpsim_rl.tasks``: list every registered task and shipped scene, with observation
and action sizes, horizon, time step and a one-line description (:func:`describe_tasks`,
formatted by :func:`format_task_rows`).

    python -m warpsim_rl.tasks                       # every task, then every scene
    python -m warpsim_rl.tasks --json                # the same rows as JSON
    python -m warpsim_rl.tasks my_scene.toml:stop    # given tasks only (also scene files)
"""

from __future__ import annotations

import argparse
import json
import sys

from .registry import CUSTOM_KINDS, describe_tasks, format_task_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m warpsim_rl.tasks",
        description="List every registered task and shipped scene: observation and action sizes, horizon "
                    "(steps), time step and a one-line description.",
        epilog=f"A scene file becomes a task as PATH.toml:KIND, KIND in {', '.join(CUSTOM_KINDS)} "
               "(docs/scenes.md); train it with train.py --env PATH.toml:KIND.")
    p.add_argument("names", nargs="*", help="tasks to describe (default: every registered task and every scene)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    try:
        rows = describe_tasks(args.names or None, scenes=not args.names)
    except (ValueError, RuntimeError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(json.dumps(rows, indent=2) if args.json else format_task_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
