"""The `mechjax` command. Each subcommand lives in its own module of this package and
provides `register(subparsers)`, which adds its parser and sets `func(args) -> int`.

Exit codes: 0 done; 2 bad input or a refused option (one line on stderr, no
traceback); 3 training diverged; 130 interrupted (Ctrl-C; `--resume` continues)."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..compilation_cache import enable_from_env
from ..distributed import initialize

# subcommand modules, in the order `mechjax --help` lists them
COMMANDS = ("train", "compare", "report", "analyze", "llc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechjax",
        description="Train toy transformers, watch induction heads form, and analyse circuits.",
    )
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not keep compiled programs on disk (by default they are kept in "
        "~/.cache/mechjax/xla, or MECHJAX_COMPILATION_CACHE's folder, so a second run "
        "skips compilation; MECHJAX_COMPILATION_CACHE=0 also turns it off)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run first (jax.distributed: SLURM / Open MPI detection, "
        "or MECHJAX_COORDINATOR=host:port, MECHJAX_NUM_PROCESSES, MECHJAX_PROCESS_ID); "
        "start the same command in every process",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mechjax.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"mechjax.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings reach a command-line user as one line, without source lines."""
    return f"mechjax: warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.distributed:
            initialize()
        if not args.no_compilation_cache:
            enable_from_env(default_on=True)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # bad input or a refused option: one line, never a traceback
        message = " ".join(str(err).split())
        print(f"mechjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        print(f"\nmechjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
