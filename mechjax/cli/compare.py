"""`mechjax compare RUN [RUN ...] --out DIR`: several runs overlaid, shared-basis PCA."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="overlay several runs and draw their per-token-loss PCA in one basis",
        description=(
            "Overlay the eval loss, ICL score and best induction score of several runs, "
            "project their per-token losses on a shared PCA basis, and write compare.html "
            "with the figures into DIR. Existing files in DIR are never deleted; files of "
            "the same names are replaced only if mechjax wrote them."
        ),
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories (a multi-seed run: all its seeds)"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (created if missing)"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..views.run_report import compare_runs

    print(compare_runs(args.runs, args.out))
    return 0
