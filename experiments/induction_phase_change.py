"""1-, 2- and 3-layer attention-only models on the standard library's source: the
induction-head phase change, as in Olsson et al. 2022 ("In-context Learning and
Induction Heads"), at CPU scale.

    python experiments/induction_phase_change.py                  # the main job's recipe
    python experiments/induction_phase_change.py --steps 8000 --out runs/phase

Each model trains with the `attn2` preset's recipe (only `n_layers` changes), tracked
as `mechjax train` tracks it. Then the runs are compared in one shared per-token-loss
PCA basis (`mechjax compare`), and the figures and a results table are written to
`experiments/figures/` and `experiments/results/induction_phase_change.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from mechjax.io.runs import load_run
from mechjax.train import build_from_spec, train
from mechjax.views.progress import ProgressBar
from mechjax.views.run_report import build_report, compare_runs, write_summary
from toy_models import load_preset

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="attn2")
    parser.add_argument("--layers", default="1,2,3", help="comma-separated layer counts")
    parser.add_argument("--steps", type=int, help="override the preset's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="override the dataset, e.g. stdlib (pure text)")
    parser.add_argument("--fraction", type=float, help="share of repeated stretches in the mixture")
    parser.add_argument("--out", type=Path, default=Path("runs/induction_phase_change"))
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs in --out")
    args = parser.parse_args(argv)

    results = []
    run_dirs = []
    for n_layers in [int(x) for x in args.layers.split(",")]:
        spec = load_preset(args.preset)
        spec["model"]["n_layers"] = n_layers
        spec["model"]["name"] = f"attn-only-{n_layers}l"
        spec["train"]["seeds"] = [args.seed]
        if args.steps:
            spec["train"]["steps"] = args.steps
        if args.data:
            spec["data"] = {"name": args.data, "n_ctx": spec["data"]["n_ctx"]}
        if args.fraction is not None:
            spec["data"]["fraction"] = args.fraction
        model_cfg, train_cfg, dataset = build_from_spec(spec)
        run_dir = args.out / f"attn{n_layers}"
        resume = args.resume and run_dir.exists()
        print(f"== {n_layers}-layer model -> {run_dir} ({dataset.describe()})", flush=True)
        t0 = time.time()
        with ProgressBar() as bar:
            on_step = bar if sys.stderr.isatty() else None
            result = train(model_cfg, train_cfg, dataset, run_dir, resume=resume, on_step=on_step)
        if result.final_step == train_cfg.steps:
            write_summary(run_dir)
            build_report(run_dir)
        wall = time.time() - t0
        summary = json.loads((run_dir / "summary.json").read_text())
        run = load_run(run_dir)
        icl = run.series("icl_score")
        results.append(_row(n_layers, summary, icl, run.steps, wall))
        run_dirs.append(run_dir)

    compare_dir = args.out / "compare"
    compare_runs(run_dirs, compare_dir)
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    for png in compare_dir.glob("*.png"):
        shutil.copy(png, figures / f"phase_change_{png.name}")
    for run_dir in run_dirs:
        for name in (
            "fig_loss.png",
            "fig_induction_scores.png",
            "fig_loss_by_position.png",
            "fig_induction_pattern.png",
        ):
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, figures / f"phase_change_{run_dir.name}_{name[4:]}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "induction_phase_change.json").write_text(json.dumps(results, indent=2))
    _print_table(results)
    return 0


def _row(n_layers, summary, icl, steps, wall) -> dict:
    phase = summary.get("phase_change")
    best = summary.get("best_induction_head") or {}
    row = {
        "n_layers": n_layers,
        "steps": int(steps[-1]),
        "wall_time_s": round(wall, 1),
        "final_eval_loss": summary.get("final_eval_loss"),
        "final_icl_score": summary.get("final_icl_score"),
        "icl_indices": summary.get("icl_indices"),
        "best_induction_head": best,
        "phase_change": None,
    }
    if phase:
        row["phase_change"] = {
            k: phase[k] for k in ("start", "steepest", "end", "icl_before", "icl_after", "fraction")
        }
    return row


def _print_table(results) -> None:
    print(
        "\n| layers | steps | wall (s) | final loss | final ICL | best induction head | phase change (start / steepest / end) | ICL before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        best = r["best_induction_head"]
        head = f"L{best['layer']}H{best['head']} {best['score']:.2f}" if best else "-"
        phase = r["phase_change"]
        window = f"{phase['start']} / {phase['steepest']} / {phase['end']}" if phase else "none"
        icl = f"{phase['icl_before']:+.2f} -> {phase['icl_after']:+.2f}" if phase else "-"
        print(
            f"| {r['n_layers']} | {r['steps']} | {r['wall_time_s']} | {r['final_eval_loss']:.3f} | "
            f"{r['final_icl_score']:+.3f} | {head} | {window} | {icl} |"
        )


if __name__ == "__main__":
    sys.exit(main())
