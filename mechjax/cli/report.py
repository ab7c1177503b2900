"""`mechjax report RUN`: rebuild a run's summary.json, figures and report.html."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild a run's summary and self-contained HTML report",
        description=(
            "Recompute summary.json (final losses, ICL score, best induction head, the "
            "detected phase change) and write the training figures and report.html into "
            "the run directory. Works on finished runs and on runs still training; for a "
            "multi-seed run directory, on each seed's run."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run directory written by `mechjax train`")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..io.runs import find_runs
    from ..views.run_report import build_report

    for run_dir in find_runs(args.run):  # a multi-seed run: one report per seed
        print(build_report(run_dir))
    return 0
