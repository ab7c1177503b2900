"""`mechjax analyze`'s output: a `ModelAnalysisResult` (`mechjax.activations.model_analysis`)
as figures, numbers and one self-contained HTML page.

    planned_files(cfg)                               the files a report of this model has
    check_report_dir(out_dir, cfg)                   refuse before anything is computed
    write_analysis_report(analysis, out_dir, ...)    -> out_dir/analysis.html

Figures (`mechjax.views.circuits`): attention patterns on the repeated sequence, the
full-OV eigenvalues of every head in the complex plane, the QK-vs-OV copying plane,
Q/K/V-composition heat maps (2+ layers, raw and minus the random baseline), the
positional QK circuit (learned positions) or the score-vs-offset profile (RoPE), the
skip-trigram table (1-layer attention-only models) and the largest path terms
(2-layer attention-only models).

Output: the PNGs, `analysis.json` (the numbers) and `analysis.html` (figures embedded
as base64, so the one file can be mailed). A file already in `out_dir` under one of
those names is replaced only if mechjax wrote it; otherwise nothing is written and a
FileExistsError names the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..activations.model_analysis import ModelAnalysisResult, has_paths, has_skip_trigrams
from ..model.config import ModelConfig
from . import circuits as circuit_plots
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

HTML_FILE = "analysis.html"
JSON_FILE = "analysis.json"
FIGURES = {
    "patterns": "attention_patterns.png",
    "eigenvalues": "ov_eigenvalues.png",
    "copying": "copying_plane.png",
    "composition": "composition_scores.png",
    "positional": "positional_qk.png",
    "skip_trigrams": "skip_trigrams.png",
    "paths": "path_terms.png",
}


def planned_files(cfg: ModelConfig) -> list[str]:
    """The file names `write_analysis_report` writes for a model with this config."""
    names = ["patterns", "eigenvalues", "copying"]
    if cfg.n_layers >= 2:
        names.append("composition")
    if cfg.positional in ("learned", "rope"):
        names.append("positional")
    if has_skip_trigrams(cfg):
        names.append("skip_trigrams")
    if has_paths(cfg):
        names.append("paths")
    return [FIGURES[n] for n in names] + [JSON_FILE, HTML_FILE]


def check_report_dir(out_dir, cfg: ModelConfig) -> Path:
    """Refuse, before anything is computed, an `out_dir` that is a file or holds a file
    of the report that mechjax did not write. Returns the directory's path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another --out")
    for name in planned_files(cfg):
        check_replaceable(out / name)
    return out


def write_analysis_report(
    analysis: ModelAnalysisResult,
    out_dir,
    *,
    token_str: Callable[[int], str] | None = None,
    source: str = "",
) -> Path:
    """Write `planned_files(analysis.cfg)` into `out_dir` (created); returns the page.

    token_str: decodes a token id for tables (default `str`); source: where the model
    came from (shown in the page)."""
    cfg, a = analysis.cfg, analysis
    token_str = token_str or str
    out = check_report_dir(out_dir, cfg)
    out.mkdir(parents=True, exist_ok=True)
    figures = _draw_figures(a, out, token_str)
    summary = _summary(a, source, token_str)
    sections = [section("Heads", _head_table_html(a))]
    sections += [figure(caption, path) for caption, path in figures]
    if a.composition is not None:
        sections.append(section("Largest composition scores", _composition_html(summary)))
    if a.skip_trigrams is not None:
        sections.append(section("Skip-trigrams", _skip_trigram_html(a.skip_trigrams, token_str)))
    if a.paths is not None:
        sections.append(section("Path decomposition", _paths_html(a.paths)))
    (out / JSON_FILE).write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    html_path = out / HTML_FILE
    html_path.write_text(page(f"mechjax circuit analysis — {cfg.name or 'model'}",
                          _description(cfg, source), sections, "analysis"))  # fmt: skip
    return html_path


def _draw_figures(a: ModelAnalysisResult, out: Path, token_str) -> list[tuple[str, Path]]:
    """Draw each figure that applies; `[(caption, path)]` in page order."""
    figures: list[tuple[str, Path]] = []

    def add(name: str, caption: str, plot, *args, **kwargs) -> None:
        path = out / FIGURES[name]
        plot(*args, path=path, **kwargs)
        figures.append((caption, path))

    add(
        "patterns", "Attention patterns on a repeated random sequence (first of the batch)",
        circuit_plots.plot_attention_patterns, a.pattern, seg_len=a.seg_len, heads=a.panel_heads,
    )  # fmt: skip
    add(
        "eigenvalues", "Eigenvalues of each head's full OV circuit W_E W_OV W_U "
        "(title: OV eigenvalue copying statistic)", circuit_plots.plot_ov_eigenvalues,
        a.ov_eigenvalues, scores=a.scores["ov_eigen_copying"], heads=a.panel_heads,
    )  # fmt: skip
    add(
        "copying", "OV vs QK eigenvalue copying statistics", circuit_plots.plot_copying_plane,
        a.scores["ov_eigen_copying"], a.scores["qk_eigen_copying"],
    )  # fmt: skip
    if a.composition is not None:
        add(
            "composition", "Q-, K- and V-composition scores (norm weights folded)",
            circuit_plots.plot_composition_scores, a.composition["raw"], a.composition["baselined"],
        )  # fmt: skip
    if a.positional is not None and a.cfg.positional == "learned":
        n = a.positional.shape[-1]
        add(
            "positional", f"Positional QK circuit W_pos W_QK W_posᵀ (first {n} positions)",
            circuit_plots.plot_positional_qk, a.positional, heads=a.panel_heads,
        )  # fmt: skip
    elif a.positional is not None:
        add(
            "positional", "RoPE: QK score of a vector with itself as a function of offset",
            circuit_plots.plot_positional_qk, a.positional,
        )  # fmt: skip
    if a.skip_trigrams is not None:
        add(
            "skip_trigrams", "Skip-trigrams read from the QK and OV circuits",
            circuit_plots.plot_skip_trigrams, a.skip_trigrams, token_str,
        )  # fmt: skip
    if a.paths is not None:
        labels = list(a.paths["second_copy"]["terms"])
        values = [a.paths["second_copy"]["terms"][k] for k in labels]
        add(
            "paths", "Largest path terms on the second copy (mean contribution to the "
            "correct next token's logit minus the mean logit)", circuit_plots.plot_path_terms,
            labels, values,
        )  # fmt: skip
    return figures


def _summary(a: ModelAnalysisResult, source: str, token_str) -> dict:
    """The numbers of `analysis.json`."""
    summary: dict = {
        "generator": f"{GENERATOR} analysis",
        "source": source,
        "config": a.cfg.to_dict(),
        "input": {
            "seg_len": a.seg_len,
            "n_repeats": a.n_repeats,
            "bos_id": a.bos_id,
            "batch": int(a.tokens.shape[0]),
            "excluded_ids": a.excluded_ids,
        },
        "heads": a.head_rows,
    }
    if a.composition is not None:
        summary["random_composition_baseline"] = a.composition["random_baseline"]
        summary["composition"] = a.composition["top"]
    if a.skip_trigrams is not None:
        summary["skip_trigrams"] = [
            {"head": f"L{t.layer}H{t.head}", "trigram": t.format(token_str), "ov": t.ov,
             "qk": t.qk[0]}
            for head_rows in a.skip_trigrams for t in head_rows
        ]  # fmt: skip
    if a.paths is not None:
        summary["paths"] = a.paths
    return summary


def _description(cfg: ModelConfig, source: str) -> str:
    parts = [
        f"{cfg.n_layers} layer(s), {cfg.n_heads} heads"
        + (f" ({cfg.n_kv_heads} key/value heads)" if cfg.n_kv_heads != cfg.n_heads else ""),
        f"d_model {cfg.d_model}, d_head {cfg.d_head}, vocabulary {cfg.d_vocab:,}",
        "attention-only" if cfg.attn_only else f"MLP {cfg.d_mlp}",
        f"{cfg.normalization}, {cfg.positional} positions",
    ]
    text = escape("; ".join(parts))
    if source:
        text += f"<br>Source: <code>{escape(source)}</code>"
    return text


def _head_table_html(a: ModelAnalysisResult) -> str:
    rows, seg_len, has_bos = a.head_rows, a.seg_len, a.bos_id is not None
    n_excluded = len(a.excluded_ids)
    names = [k for k in rows[0] if k not in ("layer", "head", "labels")]
    header = ["head", *(n.replace("_", " ") for n in names), "labels"]
    body = [
        [
            label_cell(f"L{r['layer']}H{r['head']}"),
            *(score_cell(r[n]) for n in names),
            cell(", ".join(r["labels"])),
        ]
        for r in rows
    ]
    bos = "a BOS and " if has_bos else ""
    excluded = f", {n_excluded} token ids left out" if n_excluded else ""
    return (
        f"<p>Detector scores on {bos}two copies of {seg_len} random tokens{excluded} (induction: "
        "TransformerLens convention, label above 0.4; copying: Olsson et al.'s evaluator, "
        "chance about 2/n - 1 for n distinct tokens); OV / QK eigen copying: the statistic "
        "Σλ / Σ|λ| over the eigenvalues of the full circuits, norm weights folded.</p>"
        + table(header, body, "heads")
    )


def _composition_html(summary: dict) -> str:
    parts = []
    for kind, pairs in summary["composition"].items():
        items = "".join(
            f"<li>{p['from']} → {p['to']}: {p['score']:.3f} "
            f"({p['minus_baseline']:+.3f} over the random baseline)</li>"
            for p in pairs
        )
        parts.append(f"<p>{kind}-composition</p><ol>{items}</ol>")
    return "".join(parts)


def _skip_trigram_html(trigrams, token_str) -> str:
    rows = [
        [
            label_cell(f"L{t.layer}H{t.head}"),
            cell(t.format(token_str), align_left=True),
            cell(f"{t.ov:.3g}"),
            cell(f"{t.qk[0]:.3g}"),
        ]
        for head_rows in trigrams
        for t in head_rows
    ]
    return (
        "<p>Per head, the largest entries of the full OV circuit [src] → [out], and the "
        "destination tokens [dst] whose full-QK entry for key [src] is largest.</p>"
        + table(["head", "[src] … [dst] → [out]", "OV", "QK"], rows)
    )


def _paths_html(summary: dict) -> str:
    kinds = list(summary["second_copy"]["by_kind"])
    rows = [
        [
            label_cell(name.replace("_", " ")),
            *(cell(f"{part['by_kind'][k]:+.3f}") for k in kinds),
            cell(f"{part['total']:+.3f}"),
        ]
        for name, part in summary.items()
    ]
    top = sorted(summary["second_copy"]["terms"].items(), key=lambda kv: -abs(kv[1]))[:10]
    items = "".join(f"<li>{escape(k)}: {v:+.3f}</li>" for k, v in top)
    return (
        "<p>Mean contribution of each kind of path to the correct next token's logit minus "
        "the mean logit (attention patterns and norm scales of the input frozen, so the "
        "terms add up exactly). Induction shows on the second copy: a layer-1 induction "
        "head's pattern comes from K-composition with a layer-0 previous-token head, while "
        "its OV circuit copies the attended token's embedding, so it appears mostly in its "
        "single-head term; virtual heads (layer-0 head → layer-1 head) are V-composition.</p>"
        + table(["positions", *kinds, "total"], rows)
        + f"<p>Largest terms on the second copy:</p><ol>{items}</ol>"
    )
