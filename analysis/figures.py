"""Render the README's figures from run directories.

python -m analysis.figures notifiers RUN_ON RUN_OFF [-o docs/notifiers.png]
"""

from __future__ import annotations

import argparse
import sys

from analysis.load import load_run
from analysis.plots import compare_runs


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m analysis.figures")
    sub = ap.add_subparsers(dest="figure", required=True)
    n = sub.add_parser("notifiers", help="notifiers on vs off: free memory and major faults")
    n.add_argument("run_on")
    n.add_argument("run_off")
    n.add_argument("-o", "--out", default="docs/notifiers.png")
    args = ap.parse_args(argv)
    try:
        on, off = load_run(args.run_on), load_run(args.run_off)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fig = compare_runs([("notifiers on", on), ("notifiers off", off)])
    fig.suptitle(f"{on.summary['name']}: KVM aging notifiers on vs off", fontsize="medium")
    fig.savefig(args.out, dpi=90)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
