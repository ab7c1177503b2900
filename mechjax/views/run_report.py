"""Run summaries and self-contained HTML reports.

- `write_summary(run_dir)`: the headline numbers of a run (final losses, ICL score, best
  induction head, the detected phase change or why none was found) -> `summary.json`.
- `build_report(run_dir)`: the training figures as PNGs in the run directory and
  `report.html`, which embeds them (base64 data URIs) so the one file can be mailed.
- `compare_runs(run_dirs, out_dir)`: several runs overlaid, and their per-token-loss
  trajectories in one shared PCA basis -> `compare.html` in `out_dir`.

Files are only ever (over)written under names this module owns; in a compare output
directory an existing file of the same name is replaced only if mechjax wrote it. The page
skeleton, tables, embedded figures and that ownership check live in `mechjax.views.html`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..dynamics.essential import essential_dynamics
from ..dynamics.model_llc import LLC_FILE, read_llc_records
from ..dynamics.pca import PCAResult, per_token_loss_pca
from ..dynamics.phase import PhaseChangeResult, phase_change_candidate
from ..io.runs import HEAD_SCORES, SUMMARY_FILE, Run, find_runs, load_run
from . import training as plots
from .html import (
    GENERATOR,
    cell,
    check_replaceable,
    escape,
    figure,
    jsonable,
    label_cell,
    page,
    score_cell,
    section,
    table,
)

REPORT_FILE = "report.html"
# figure name -> file written into the run directory by `build_report`
REPORT_FIGURES = {
    "loss": "fig_loss.png",
    "icl": "fig_icl.png",
    "induction": "fig_induction_scores.png",
    "previous_token": "fig_previous_token_scores.png",
    "loss_by_position": "fig_loss_by_position.png",
    "pattern": "fig_induction_pattern.png",
    "pca": "fig_pca.png",
    "llc": "fig_llc.png",
    "essential": "fig_essential_dynamics.png",
}
COMPARE_FILE = "compare.html"
COMPARE_JSON = "compare.json"
COMPARE_FIGURES = {
    "loss": "compare_eval_loss.png",
    "icl": "compare_icl.png",
    "induction": "compare_best_induction.png",
    "pca": "compare_pca.png",
    "llc": "compare_llc.png",
}


# -- summary ------------------------------------------------------------------------------
def run_phase_change(run: Run, **options) -> tuple[PhaseChangeResult | None, list[str]]:
    """Phase-change candidate of a run and the criteria it fails (see `mechjax.dynamics.phase`);
    `(None, [reason])` when the run has no ICL score or the model no attention layer."""
    icl = run.series("icl_score")
    if icl is None:
        return None, ["the run recorded no ICL score"]
    if (run.config.get("model") or {}).get("n_layers") == 0:
        return None, ["a 0-layer model has no attention heads, hence no induction bump"]
    return phase_change_candidate(run.steps, icl, run.best_induction_score(), **options)


def summarize(run: Run) -> dict:
    """The summary dict of a loaded run (what `write_summary` writes)."""
    return _summarize(run)[0]


def _summarize(run: Run) -> tuple[dict, PhaseChangeResult | None]:
    candidate, failed = run_phase_change(run)
    phase = candidate if candidate is not None and not failed else None
    model = run.config.get("model") or {}
    eval_loss = run.series("eval_loss")
    summary = {
        "generator": f"{GENERATOR} report",
        "run": run.name,
        "data": (run.config.get("data") or {}).get("name"),
        "model": {
            k: model.get(k)
            for k in ("n_layers", "n_heads", "d_model", "d_mlp", "d_vocab", "n_ctx")
            if k in model
        },
        "mechjax_version": run.config.get("mechjax_version"),
        "n_evaluations": run.n_evals,
        "final_step": int(run.steps[-1]),
        "final_tokens_seen": run.final("tokens_seen"),
        "wall_time": run.final("wall_time"),
        "final_train_loss": run.final("train_loss"),
        "final_eval_loss": run.final("eval_loss"),
        "min_eval_loss": None,
        "min_eval_loss_step": None,
        "final_icl_score": run.final("icl_score"),
        "icl_indices": run.final("icl_indices"),
        "icl_note": run.final("icl_note"),
        "best_induction_head": best_head(run, "induction"),
        "max_best_induction_score": None,
        "top_heads": {
            score: top_heads(run, score) for score in HEAD_SCORES if run.series(score) is not None
        },
        "max_k_composition": None,
        "phase_change": None,
        "phase_change_note": "detected" if phase else "; ".join(failed),
    }
    if eval_loss is not None and np.isfinite(eval_loss).any():
        i = int(np.nanargmin(eval_loss))
        summary["min_eval_loss"], summary["min_eval_loss_step"] = eval_loss[i], run.steps[i]
    best = run.best_induction_score()
    if best is not None and np.isfinite(best).any():
        summary["max_best_induction_score"] = np.nanmax(best)
    k_comp = run.series("k_composition")
    if k_comp is not None and np.isfinite(k_comp[-1]).any():
        summary["max_k_composition"] = np.nanmax(k_comp[-1])
    if phase is not None:
        summary["phase_change"] = {
            **phase.to_dict(),
            "tokens_start": _at_step(run, "tokens_seen", phase.start),
            "tokens_end": _at_step(run, "tokens_seen", phase.end),
            "eval_loss_start": _at_step(run, "eval_loss", phase.start),
            "eval_loss_end": _at_step(run, "eval_loss", phase.end),
        }
    return jsonable(summary), phase


def write_summary(run_dir: str | Path) -> dict:
    """Compute the run's summary and write it to `run_dir/summary.json`; returns it."""
    run = load_run(run_dir)
    summary = summarize(run)
    (run.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def best_head(run: Run, score: str = "induction") -> dict | None:
    """`{layer, head, score}` of the head with the highest `score` at the last evaluation
    (the recorded `best_induction` when the run wrote it), or None."""
    if score == "induction":
        recorded = [run.metrics.get(f"best_induction.{k}") for k in ("layer", "head", "score")]
        if all(r is not None and np.isfinite(r[-1]) for r in recorded):
            layer, head, value = (r[-1] for r in recorded)
            return {"layer": int(layer), "head": int(head), "score": float(value)}
    heads = top_heads(run, score, n=1)
    return heads[0] if heads else None


def top_heads(run: Run, score: str, n: int = 3) -> list[dict]:
    """The `n` heads with the highest `score` at the last evaluation: `[{layer, head, score}]`."""
    values = run.series(score)
    if values is None or values.ndim != 3 or values[-1].size == 0:
        return []
    last = values[-1]
    order = np.argsort(np.nan_to_num(-last, nan=np.inf), axis=None)[:n]
    out = []
    for flat in order:
        layer, head = np.unravel_index(flat, last.shape)
        if np.isfinite(last[layer, head]):
            out.append({"layer": int(layer), "head": int(head), "score": float(last[layer, head])})
    return out


def _at_step(run: Run, key: str, step: int):
    values = run.series(key)
    if values is None:
        return None
    i = int(np.searchsorted(run.steps, step))
    return values[i] if i < run.n_evals and run.steps[i] == step else None


# -- single-run report -------------------------------------------------------------------
def build_report(run_dir: str | Path) -> Path:
    """Write summary.json, the figures (`REPORT_FIGURES`) and a self-contained
    `report.html` into `run_dir`; returns the HTML's path."""
    run = load_run(run_dir)
    summary, phase = _summarize(run)
    (run.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    figures: list[tuple[str, Path]] = []

    def add(name: str, caption: str, plot, *args) -> None:
        path = run.path / REPORT_FIGURES[name]
        plot(*args, path=path)
        figures.append((caption, path))

    add("loss", "Train and eval loss", plots.plot_loss, run, phase)
    if run.series("icl_score") is not None:
        add("icl", "ICL score and best induction score", plots.plot_icl, run, phase)
    for score in ("induction", "previous_token"):
        values = run.series(score)
        if values is not None and values.ndim == 3 and values[0].size and (run.steps > 0).any():
            caption = f"Per-head {score.replace('_', '-')} scores over training"
            add(score, caption, plots.plot_head_scores, run, score, phase)
    if run.series("loss_by_pos") is not None:
        add("loss_by_position", "Loss by token index", plots.plot_loss_by_position, run, phase)
    if run.final_pattern is not None:
        caption = "Attention pattern of the best induction head"
        add("pattern", caption, plots.plot_attention_pattern, run.final_pattern)
    pca = _single_run_pca(run)
    if pca is not None:
        steps, labels = [run.per_token_loss.steps], [run.label]
        add("pca", "Per-token-loss PCA trajectory", plots.plot_pca, pca, steps, labels, [phase])
    records = _llc_records(run)
    if records:
        add("llc", "Local learning coefficient over training", plots.plot_llc, run, records, phase)
    ed = _essential_dynamics(run, records)
    if ed is not None:
        caption = "Essential dynamics of the per-token losses (stage boundaries proposed)"
        add("essential", caption, plots.plot_essential_dynamics, ed, phase)

    body = [
        section("Summary", _summary_table(summary)),
        section("Phase change", _phase_text(summary)),
        *(figure(caption, path) for caption, path in figures),
        section("Head scores at the final evaluation", _head_table(run)),
    ]
    title = f"mechjax run report — {run.name}"
    out = run.path / REPORT_FILE
    out.write_text(page(title, _run_description(run), body, "report"))
    return out


def _llc_records(run: Run) -> list[dict]:
    """The run's `llc.jsonl` records (`mechjax llc`), or none."""
    if not (run.path / LLC_FILE).is_file():
        return []
    return read_llc_records(run.path)[1]


def _essential_dynamics(run: Run, records: list[dict]):
    """Essential dynamics of the stored per-token losses (steps > 0), with the LLC's
    critical points when `mechjax llc` has run; None with too few evaluations."""
    losses = run.per_token_loss
    if losses is None:
        return None
    keep = losses.steps > 0
    if keep.sum() < 4:
        return None
    llc = None
    if len(records) >= 4:
        llc = ([r["step"] for r in records], [r["llc_mean"] for r in records])
    return essential_dynamics(losses.steps[keep], losses.losses[keep], llc=llc)


def _single_run_pca(run: Run) -> PCAResult | None:
    ptl = run.per_token_loss
    if ptl is None or ptl.losses.shape[0] < 3 or ptl.losses.shape[1] < 2:
        return None
    if not np.isfinite(ptl.losses).all():
        return None
    return per_token_loss_pca([ptl.losses], n_components=2)


def _run_description(run: Run) -> str:
    model = run.config.get("model") or {}
    data = run.config.get("data") or {}
    parts = []
    if model:
        kind = "attention-only" if model.get("d_mlp") is None else f"MLP d_mlp={model['d_mlp']}"
        parts.append(
            f"{model.get('n_layers', '?')}-layer {kind} model, d_model {model.get('d_model', '?')}, "
            f"{model.get('n_heads', '?')} heads, vocabulary {model.get('d_vocab', '?')}, "
            f"context {model.get('n_ctx', '?')}"
        )
    if data.get("name"):
        parts.append(
            f"data: {data['name']}"
            + (f" — {data['description']}" if data.get("description") else "")
        )
    return ". ".join(escape(p) for p in parts)


SUMMARY_ROWS = (
    ("final_step", "final step"),
    ("final_tokens_seen", "tokens seen"),
    ("wall_time", "wall time (s)"),
    ("final_train_loss", "final train loss"),
    ("final_eval_loss", "final eval loss"),
    ("min_eval_loss", "lowest eval loss"),
    ("final_icl_score", "final ICL score (nats)"),
    ("icl_indices", "ICL token indices [early, late]"),
    ("icl_note", "ICL index rule"),
    ("max_best_induction_score", "highest best-induction score"),
    ("max_k_composition", "highest K-composition (final)"),
)


def _summary_table(summary: dict) -> str:
    rows = []
    for key, label in SUMMARY_ROWS:
        rows.append((label, _fmt(summary.get(key))))
    best = summary.get("best_induction_head")
    rows.append(
        (
            "best induction head (final)",
            f"L{best['layer']}H{best['head']} ({best['score']:.3f})" if best else "—",
        )
    )
    return table((), [(label_cell(label), cell(value)) for label, value in rows], "kv")


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _phase_text(summary: dict) -> str:
    pc = summary.get("phase_change")
    if pc is None:
        return (
            "<p>No phase change detected: "
            f"{escape(summary.get('phase_change_note') or 'no ICL score')}.</p>"
        )
    text = (
        f"Detected between steps <b>{pc['start']:,}</b> and <b>{pc['end']:,}</b> "
        f"(steepest at ≈{pc['steepest']:,}). The smoothed ICL score went from "
        f"{pc['icl_before']:.3f} to {pc['icl_after']:.3f} nats inside the window: "
        f"{pc['fraction']:.0%} of the final ICL score formed there."
    )
    if pc.get("induction_steepest") is not None:
        text += (
            f" The best induction score rose from {pc['induction_before']:.2f} to "
            f"{pc['induction_after']:.2f}, fastest at step ≈{pc['induction_steepest']:,}."
        )
    if pc.get("tokens_start") is not None and pc.get("tokens_end") is not None:
        text += f" Tokens seen: {pc['tokens_start']:,.0f}–{pc['tokens_end']:,.0f}."
    if not pc["complete"]:
        text += " The window touches the first or last evaluation: it may extend further."
    return f"<p>{text}</p>"


def _head_table(run: Run) -> str:
    present = [s for s in HEAD_SCORES if run.series(s) is not None and run.series(s).ndim == 3]
    present = [s for s in present if run.series(s)[-1].size]
    if not present:
        return "<p>No per-head scores (the model has no attention layers).</p>"
    final = {s: run.series(s)[-1] for s in present}  # [layer, head] each
    n_layers, n_heads = final[present[0]].shape
    rows = [
        [label_cell(f"L{layer}H{head}"), *(score_cell(v[layer, head]) for v in final.values())]
        for layer in range(n_layers)
        for head in range(n_heads)
    ]
    header = ["head", *(s.replace("_", " ") for s in present)]
    step = int(run.steps[-1])
    return (
        f"<p>Step {step:,}. Shaded by score; induction heads score above 0.4 "
        "(chance ≈ 1 / segment length).</p>" + table(header, rows, "heads")
    )


# -- comparing runs ----------------------------------------------------------------------
def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Overlay several runs and project their per-token losses in one PCA basis.

    Each entry of `run_dirs` is a run directory or a multi-seed directory, whose runs
    (`seed_<s>/`) are all compared.

    Writes `COMPARE_FIGURES`, `compare.json` and `compare.html` into `out_dir` (created
    if needed) and returns the HTML's path. Refuses (FileExistsError) to replace a file of
    the same name that mechjax did not write; never deletes anything.
    """
    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        raise ValueError("compare_runs needs a list of one or more run directories")
    runs = [load_run(p) for d in run_dirs for p in find_runs(d)]
    labels = _unique_labels([r.path for r in runs])
    runs = [dataclasses.replace(r, label=label) for r, label in zip(runs, labels)]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {str(out_dir)!r} is a file; pass a directory path")
    own = [*COMPARE_FIGURES.values(), COMPARE_FILE, COMPARE_JSON]
    for name in own:
        check_replaceable(out_dir / name)
    out_dir.mkdir(parents=True, exist_ok=True)

    summaries, phases = zip(*(_summarize(r) for r in runs))

    figures = []
    for name, key, ylabel in (
        ("loss", "eval_loss", "eval loss (nats / token)"),
        ("icl", "icl_score", "ICL score (nats)"),
        ("induction", "best_induction", "best induction score"),
    ):
        path = out_dir / COMPARE_FIGURES[name]
        plots.plot_overlay(runs, key, ylabel, phases, path)
        figures.append((ylabel[:1].upper() + ylabel[1:], path))

    pca, pca_note = _shared_pca(runs)
    if pca is not None:
        used = [i for i, r in enumerate(runs) if r.per_token_loss is not None]
        path = out_dir / COMPARE_FIGURES["pca"]
        plots.plot_pca(
            pca,
            [runs[i].per_token_loss.steps for i in used],
            [runs[i].label for i in used],
            [phases[i] for i in used],
            path,
        )
        figures.append(("Per-token-loss PCA, shared basis", path))

    records = [_llc_records(r) for r in runs]
    if any(records):
        path = out_dir / COMPARE_FIGURES["llc"]
        plots.plot_llc_overlay(runs, records, phases, path)
        figures.append(("Local learning coefficient over training", path))

    record = {
        "generator": f"{GENERATOR} compare",
        "runs": [str(r.path) for r in runs],
        "summaries": list(summaries),
        "pca_explained_variance_ratio": None if pca is None else pca.explained_variance_ratio,
        "pca_note": pca_note,
    }
    (out_dir / COMPARE_JSON).write_text(json.dumps(jsonable(record), indent=2) + "\n")

    body = [
        section("Runs", _compare_table(runs, summaries)),
        *(figure(caption, path) for caption, path in figures),
    ]
    if pca_note:
        body.append(section("PCA", f"<p>{escape(pca_note)}</p>"))
    out = out_dir / COMPARE_FILE
    description = "Compared runs: " + ", ".join(escape(r.path) for r in runs)
    out.write_text(page("mechjax run comparison", description, body, "compare"))
    return out


def _shared_pca(runs: Sequence[Run]) -> tuple[PCAResult | None, str]:
    """PCA of all runs that recorded per-token losses on the same tokens, and a note on
    what was left out (empty when every run took part)."""
    with_ptl = [r for r in runs if r.per_token_loss is not None]
    notes = [f"{r.label} recorded no per-token losses" for r in runs if r.per_token_loss is None]
    if not with_ptl:
        return None, "No run recorded per-token losses; PCA skipped."
    first = with_ptl[0].per_token_loss
    for run in with_ptl[1:]:
        ptl = run.per_token_loss
        if ptl.losses.shape[1] != first.losses.shape[1] or not all(
            _same_indices(getattr(ptl, k), getattr(first, k))
            for k in ("example_index", "token_index")
        ):
            return None, (
                f"PCA skipped: {run.label} and {with_ptl[0].label} measured per-token losses "
                "on different tokens, so they have no shared basis; compare runs evaluated "
                "on the same fixed examples."
            )
    if any(not np.isfinite(r.per_token_loss.losses).all() for r in with_ptl):
        return None, "PCA skipped: some per-token losses are NaN or infinite (a diverged run)."
    total = sum(r.per_token_loss.losses.shape[0] for r in with_ptl)
    k = min(2, total - 1, first.losses.shape[1])
    if k < 1:
        return None, "PCA skipped: fewer than 2 snapshots in all."
    result = per_token_loss_pca([r.per_token_loss.losses for r in with_ptl], n_components=k)
    note = ("Left out of the PCA: " + "; ".join(notes) + ".") if notes else ""
    return result, note


def _same_indices(a, b) -> bool:
    if a is None or b is None:
        return True  # not recorded: trust the shapes
    return np.shape(a) == np.shape(b) and bool(np.all(np.asarray(a) == np.asarray(b)))


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    """Directory names, with parent folders prepended until they are distinct."""
    paths = [p.resolve() for p in paths]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same directory twice


def _compare_table(runs: Sequence[Run], summaries: Sequence[dict]) -> str:
    header = (
        "run",
        "layers",
        "final step",
        "final eval loss",
        "final ICL",
        "best induction",
        "phase change (start–end)",
    )
    rows = []
    for run, s in zip(runs, summaries):
        best = s["best_induction_head"]
        pc = s["phase_change"]
        cells = (
            run.label,
            _fmt(s["model"].get("n_layers")),
            _fmt(s["final_step"]),
            _fmt(s["final_eval_loss"]),
            _fmt(s["final_icl_score"]),
            f"L{best['layer']}H{best['head']} {best['score']:.2f}" if best else "—",
            f"{pc['start']:,}–{pc['end']:,}" if pc else "none",
        )
        rows.append([cell(c) for c in cells])
    return table(header, rows, "heads")
