"""python -m warpsim_rl.viz [OUT_DIR] [--only systems|contact]: redraw the documentation pictures
(default docs/images): the system pictures of docs/envs.md (warpsim_rl.viz.systems.render_all)
and the contact-scene pictures of docs/contact.md
(warpsim_rl.viz.contact.render_contact_pictures)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m warpsim_rl.viz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", nargs="?", default="docs/images", help="output folder (default docs/images)")
    p.add_argument("--only", choices=["systems", "contact"], default=None, help="draw one set only")
    args = p.parse_args(argv)
    paths = []
    if args.only in (None, "systems"):
        from .systems import render_all

        paths += render_all(args.out_dir)
    if args.only in (None, "contact"):
        from .contact import render_contact_pictures

        paths += render_contact_pictures(args.out_dir)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
