"""`mechjax train`: train a toy preset while tracking the induction-head phase change."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

EXIT_DIVERGED = 3  # the loss or the parameters became NaN/inf
EXIT_INTERRUPTED = 130  # Ctrl-C: a checkpoint was saved; --resume continues

# shortcuts for the most used options: flag -> (section, field, type)
SHORTCUTS = {
    "steps": ("train", "steps", int),
    "batch_size": ("train", "batch_size", int),
    "lr": ("train", "lr", float),
    "warmup_steps": ("train", "warmup_steps", int),
    "weight_decay": ("train", "weight_decay", float),
    "n_evals": ("train", "n_evals", int),
    "precision": ("train", "precision", str),
    "layers": ("model", "n_layers", int),
    "d_model": ("model", "d_model", int),
    "n_heads": ("model", "n_heads", int),
    "n_ctx": ("data", "n_ctx", int),
    "data": ("data", "name", str),
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a toy model and watch the induction-head phase change",
        description=(
            "Train a toy transformer from a preset in toy_models/ with live tracking of the "
            "induction-head phase change (loss, ICL score, best induction score), log-spaced "
            "checkpoints, and a report at the end. Every preset field can be overridden with "
            "--set SECTION.FIELD=VALUE (sections: model, train, data)."
        ),
    )
    p.add_argument(
        "--preset", default="attn2", help="preset name (see --list-presets); default attn2"
    )
    p.add_argument("--list-presets", action="store_true", help="list presets and exit")
    p.add_argument(
        "--out", type=Path, help="run directory (default runs/<preset>-<time>); never overwritten"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--seeds", help="comma-separated seeds trained together in one vmapped step, e.g. 0,1,2"
    )
    for flag, (section, field, kind) in SHORTCUTS.items():
        p.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"sets {section}.{field}"
        )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any preset field, e.g. --set model.d_head=16 --set train.b2=0.99",
    )
    p.add_argument(
        "--mesh",
        metavar="AXIS=SIZE,...",
        help="train on several devices: e.g. data=4 (data parallel), seed=2,data=2 (seeds "
        "over devices too), data=2,model=2 (heads and neurons split); -1 takes the devices "
        "left. Default: one device (every device with --distributed)",
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="with --mesh: split parameters and optimiser state over the data axis too "
        "(fully sharded data parallel) instead of a copy per device",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved configuration and exit"
    )
    p.set_defaults(func=run)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve(args) -> dict:
    """The preset with every override applied: {"model", "train", "data", "description"}."""
    from toy_models import load_preset

    spec = load_preset(args.preset)
    preset_data = spec["data"]["name"]
    for flag, (section, field, _) in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            spec[section][field] = value
    if spec["data"]["name"] != preset_data:
        _keep_options_of(spec["data"], preset_data)
    if args.seeds:
        try:
            spec["train"]["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError as err:
            raise ValueError(
                f"--seeds takes comma-separated integers, e.g. 0,1,2 (got {args.seeds!r})"
            ) from err
    for item in args.overrides:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in ("model", "train", "data"):
            raise ValueError(
                f"--set takes SECTION.FIELD=VALUE with SECTION model, train or data (got {item!r})"
            )
        spec[section][field] = _parse_value(value)
    return spec


def _keep_options_of(data: dict, preset_data: str) -> None:
    """Another dataset than the preset's: drop the preset's data options it does not
    take (a note says which), so any dataset works on any preset."""
    from mechjax.data import dataset_options

    accepted = set(dataset_options(data["name"]))
    dropped = sorted(k for k in data if k != "name" and k not in accepted)
    for key in dropped:
        del data[key]
    if dropped:
        print(
            f"note: {data['name']!r} does not take the preset's {preset_data!r} options "
            f"{', '.join(dropped)}; they are dropped",
            file=sys.stderr,
        )


def run(args) -> int:
    from toy_models import list_presets

    if args.list_presets:
        from toy_models import load_preset

        for name in list_presets():
            print(f"{name:16s} {load_preset(name).get('description', '')}")
        return 0
    from mechjax.distributed import describe_mesh, is_coordinator, make_mesh, process_count
    from mechjax.train import build_from_spec

    spec = resolve(args)
    model_cfg, train_cfg, dataset = build_from_spec(spec)
    if args.fsdp and not args.mesh:
        raise ValueError("--fsdp splits over a mesh's data axis: give --mesh too, e.g. data=4")
    mesh = make_mesh(args.mesh) if args.mesh else None
    if args.show_config:
        print(
            json.dumps(
                {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": spec["data"]},
                indent=2,
            )
        )
        return 0
    if args.out is None and process_count() > 1:
        raise ValueError(
            "a multi-process run needs --out: every process must name the same run directory"
        )
    out = args.out or Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"

    from mechjax.train import TrainingDiverged, train
    from mechjax.views.progress import ProgressBar
    from mechjax.views.run_report import build_report, write_summary

    talk = is_coordinator()  # several processes: process 0 speaks and writes pages
    if talk:
        print(f"mechjax train: {spec.get('description', args.preset)}")
        print(f"  data: {dataset.describe()}")
        print(f"  run directory: {out}")
        if mesh is not None:
            print(f"  mesh: {describe_mesh(mesh)}{' (fsdp)' if args.fsdp else ''}")
    with ProgressBar() as bar:
        on_step = None if args.no_progress or not talk else bar
        try:
            result = train(
                model_cfg,
                train_cfg,
                dataset,
                out,
                resume=args.resume,
                on_step=on_step,
                mesh=mesh,
                fsdp=args.fsdp,
                data_spec=dict(spec["data"]),
            )
        except TrainingDiverged as err:
            bar.close()
            print(f"mechjax train: diverged: {err}", file=sys.stderr)
            return EXIT_DIVERGED
    if result.interrupted:
        print(
            f"mechjax train: interrupted at step {result.final_step}; a checkpoint is saved. "
            f"Continue with `mechjax train --resume --out {out}` and the same options.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not talk:
        return 0
    if result.final_step == train_cfg.steps:
        for run_dir in result.run_dirs:
            write_summary(run_dir)
            build_report(run_dir)
    for run_dir in result.run_dirs:
        _print_summary(run_dir)
    return 0


def _print_summary(run_dir: Path) -> None:
    path = run_dir / "summary.json"
    if not path.exists():
        return
    summary = json.loads(path.read_text())
    print(f"\n{run_dir}:")
    print(
        f"  final loss {summary.get('final_eval_loss', float('nan')):.3f}, "
        f"ICL score {summary.get('final_icl_score', float('nan')):+.3f}"
    )
    best = summary.get("best_induction_head")
    if best:
        print(f"  best induction head L{best['layer']}H{best['head']} score {best['score']:.2f}")
    phase = summary.get("phase_change")
    if phase:
        print(
            f"  phase change: steps {phase['start']}..{phase['end']} (steepest at {phase['steepest']})"
        )
    else:
        print("  phase change: none detected")
    report = run_dir / "report.html"
    if report.exists():
        print(f"  report: {report}")
