"""`mechjax llc RUN`: the local learning coefficient at every checkpoint of a run.

The run's dataset is rebuilt from its `config.json` (the name and options `mechjax
train` recorded) or from `--data NAME --set data.FIELD=VALUE`; `--sequences` held-out
sequences (the dataset's `eval_batches`) are the data the LLC is measured on. Every
checkpoint is sampled in one compiled call (`mechjax.dynamics.model_llc`), and the
records go to `RUN/llc.jsonl` (an existing one is kept as `llc.jsonl.old` first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "llc",
        help="estimate the local learning coefficient at every checkpoint of a run",
        description=(
            "Estimate the local learning coefficient (SGLD, many chains in one compiled "
            "call) at each of a run's saved checkpoints and write RUN/llc.jsonl. Defaults: "
            "step size 1e-4, nβ = m / ln m, localization 100, 4 chains x 200 draws."
        ),
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="a run directory of mechjax train")
    parser.add_argument("--step-size", type=float, default=1e-4, help="SGLD step size ε")
    parser.add_argument("--nbeta", type=float, help="inverse temperature nβ (default m / ln m)")
    parser.add_argument("--localization", type=float, default=100.0, help="localization γ")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--burnin", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="minibatch size m")
    parser.add_argument(
        "--sequences", type=int, default=512, help="held-out sequences the loss is taken on"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=int, default=0, help="model index of a multi-seed run")
    parser.add_argument("--data", help="dataset name, when the run did not record its options")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="data.FIELD=VALUE",
        help="dataset options with --data (e.g. --set data.vocab_size=64)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..dynamics.llc import SGLDConfig

    config = SGLDConfig(
        step_size=args.step_size,
        nbeta=args.nbeta,
        localization=args.localization,
        n_chains=args.chains,
        n_draws=args.draws,
        n_burnin=args.burnin,
        batch_size=args.batch_size,
    )  # bad values fail here, before anything is loaded
    if args.sequences < args.batch_size:
        raise ValueError(f"--sequences ({args.sequences}) must be at least --batch-size")
    run = args.run
    checkpoints_root = run / "checkpoints"
    if not (run / "config.json").is_file() or not checkpoints_root.is_dir():
        raise FileNotFoundError(
            f"{run} is not a run directory with checkpoints (config.json, checkpoints/); "
            "give a directory written by mechjax train"
        )
    import jax
    import numpy as np

    from ..dynamics.model_llc import llc_over_checkpoints, run_checkpoints, write_llc_records

    checkpoints = run_checkpoints(run)
    if not checkpoints:
        raise FileNotFoundError(f"{run} has no complete checkpoint under checkpoints/")
    dataset = _dataset(run, args)
    n_batches = -(-args.sequences // 16)
    tokens = np.asarray(dataset.eval_batches(n_batches, 16)).reshape(-1, dataset.n_ctx)
    tokens = tokens[: args.sequences]
    print(
        f"mechjax llc: {len(checkpoints)} checkpoints, {len(tokens)} sequences of "
        f"{dataset.n_ctx} tokens; ε={config.step_size:g}, nβ={config.resolved_nbeta:.3g}, "
        f"γ={config.localization:g}, {config.n_chains} chains x {config.n_draws} draws"
    )
    records = llc_over_checkpoints(
        checkpoints, tokens, jax.random.key(args.seed), config, model=args.model
    )
    path = run / "llc.jsonl"
    if path.exists():
        path.replace(path.with_name("llc.jsonl.old"))
    write_llc_records(run, records, config)
    print("| step | LLC | se | acceptance |\n|---|---|---|---|")
    for r in records:
        acceptance = "" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        print(f"| {r['step']} | {r['llc_mean']:.3f} | {r['llc_se']:.3f} | {acceptance} |")
    warned = sorted({w for r in records for w in r["warnings"]})
    for line in warned:
        print(f"mechjax llc: warning: {line}", file=sys.stderr)
    print(path)
    return 0


def _dataset(run: Path, args):
    from ..data import make_dataset

    data = json.loads((run / "config.json").read_text()).get("data", {})
    if args.data:
        options = {}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.startswith("data."):
                raise ValueError(f"--set takes data.FIELD=VALUE (got {item!r})")
            try:
                options[key[len("data.") :]] = json.loads(value)
            except json.JSONDecodeError:
                options[key[len("data.") :]] = value
        return make_dataset(args.data, **options)
    if "spec" not in data:
        raise ValueError(
            f"{run}/config.json does not record how its dataset was made (run made from "
            "Python or by an older mechjax): give --data NAME and its options with --set "
            "data.FIELD=VALUE"
        )
    options = dict(data["spec"])
    return make_dataset(options.pop("name"), **options)
