"""`analyze_model`: the circuits of one model as figures and a self-contained HTML page.

    analyze_model(params, cfg, out_dir, token_str=..., bos_id=...) -> out_dir/analysis.html

What it computes (each only where it applies to the model):

* head detectors (`mechjax.activations.heads.detect_heads`, TransformerLens convention: a BOS and two
  copies of a random segment) and the labelled head table (`heads.head_table`), with
  each head's eigenvalue copying scores of its full OV and QK circuits added
  (`circuit_eigen.ov_copying_scores` / `qk_copying_scores`, norm weights folded first);
* figures (`mechjax.views.circuits`): attention patterns on the repeated sequence, the
  full-OV eigenvalues of every head in the complex plane, the QK-vs-OV copying plane,
  Q/K/V-composition heat maps (2+ layers, raw and minus the random baseline), the
  positional QK circuit (learned positions) or the score-vs-offset profile (RoPE);
* 1-layer attention-only models: the skip-trigram table (`mechjax.circuits.skip_trigrams`);
* 2-layer attention-only models: the path decomposition (`mechjax.circuits.paths`) of the next-
  token logits on the repeated sequence, summarised per kind of path and per term,
  separately for the first copy (nothing to copy yet) and the second (induction).

Output: the PNGs, `analysis.json` (the numbers) and `analysis.html` (figures embedded
as base64, so the one file can be mailed). A file already in `out_dir` under one of
those names is replaced only if mechjax wrote it; otherwise nothing is written and a
FileExistsError names the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..activations import heads
from ..circuits import eigen as circuit_eigen
from ..circuits import weights as circuits
from ..model.config import ModelConfig
from ..model.params import Params, check_params
from ..model.transformer import run_with_stream
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
MAX_SEG_LEN = 25  # Olsson et al.'s segment length, shortened to fit small contexts
PANEL_HEADS = 32  # heads drawn per-panel figures for models with more heads than this


def planned_files(cfg: ModelConfig) -> list[str]:
    """The file names `analyze_model` writes for a model with this config."""
    names = ["patterns", "eigenvalues", "copying"]
    if cfg.n_layers >= 2:
        names.append("composition")
    if cfg.positional in ("learned", "rope"):
        names.append("positional")
    if _has_skip_trigrams(cfg):
        names.append("skip_trigrams")
    if _has_paths(cfg):
        names.append("paths")
    return [FIGURES[n] for n in names] + [JSON_FILE, HTML_FILE]


def _has_skip_trigrams(cfg: ModelConfig) -> bool:
    return cfg.attn_only and cfg.n_layers == 1


def _has_paths(cfg: ModelConfig) -> bool:
    return cfg.attn_only and cfg.n_layers == 2 and not cfg.post_attn_norm


def _seg_len(cfg: ModelConfig, has_bos: bool) -> int:
    limit = cfg.n_ctx if cfg.positional == "learned" else 2 * MAX_SEG_LEN + 1
    seg_len = min(MAX_SEG_LEN, (limit - int(has_bos)) // 2)
    if seg_len < 2:
        raise ValueError(
            f"analyze_model: n_ctx={cfg.n_ctx} is too short for two copies of a segment"
        )
    return seg_len


def analyze_model(
    params: Params,
    cfg: ModelConfig,
    out_dir,
    *,
    token_str: Callable[[int], str] | None = None,
    bos_id: int | None = None,
    exclude: Sequence[int] = (),
    source: str = "",
    seed: int = 0,
    batch: int = 8,
) -> Path:
    """Analyse the model and write `planned_files(cfg)` into `out_dir` (created).

    token_str: decodes a token id for tables (default `str`); bos_id: the BOS id put in
    front of the repeated sequences (None: no BOS); exclude: ids never drawn into the
    repeated sequences nor shown as skip-trigrams (BOS is always excluded); source: a
    description of where the model came from (shown in the page). Returns the HTML path.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a mechjax.ModelConfig, got {type(cfg).__name__}")
    check_params(params, cfg)
    if cfg.n_layers == 0:
        raise ValueError("analyze_model: a 0-layer model has no heads to analyse")
    if bos_id is not None and not 0 <= bos_id < cfg.d_vocab:
        raise ValueError(f"bos_id={bos_id} is outside the vocabulary [0, {cfg.d_vocab})")
    token_str = token_str or str
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another --out")
    files = planned_files(cfg)
    for name in files:  # refuse before writing anything
        check_replaceable(out / name)
    out.mkdir(parents=True, exist_ok=True)

    specials = sorted({int(i) for i in exclude} | ({int(bos_id)} if bos_id is not None else set()))
    seg_len = _seg_len(cfg, bos_id is not None)
    tokens = heads.repeated_tokens(
        seed, batch, seg_len, cfg.d_vocab, n_repeats=2, bos_id=bos_id, exclude=specials
    )
    scores = heads.detect_heads(params, cfg, tokens, seg_len=seg_len, n_repeats=2, bos_id=bos_id)
    folded, folded_cfg = circuits.fold_norms(params, cfg)
    scores["ov_copying"] = np.asarray(circuit_eigen.ov_copying_scores(folded, folded_cfg))
    scores["qk_copying"] = np.asarray(circuit_eigen.qk_copying_scores(folded, folded_cfg))
    rows = heads.head_table(scores)
    panel_heads = _panel_heads(scores, cfg)

    figures: list[tuple[str, Path]] = []
    sections: list[str] = []
    summary: dict = {
        "generator": f"{GENERATOR} analysis",
        "source": source,
        "config": cfg.to_dict(),
        "input": {
            "seg_len": seg_len,
            "n_repeats": 2,
            "bos_id": bos_id,
            "batch": batch,
            "excluded_ids": specials,
        },
        "heads": rows,
    }

    def add(name: str, caption: str, plot, *args, **kwargs) -> None:
        path = out / FIGURES[name]
        plot(*args, path=path, **kwargs)
        figures.append((caption, path))

    _, stream = run_with_stream(params, tokens[:1], cfg, capture=["pattern"])
    pattern = np.asarray(stream["pattern"][:, 0], np.float32)  # [layer, head, q, k]
    add(
        "patterns", "Attention patterns on a repeated random sequence (first of the batch)",
        circuit_plots.plot_attention_patterns, pattern, seg_len=seg_len, heads=panel_heads,
    )  # fmt: skip
    eigenvalues = np.asarray(circuit_eigen.full_ov_eigenvalues(folded, folded_cfg))
    add(
        "eigenvalues", "Eigenvalues of each head's full OV circuit W_E W_OV W_U "
        "(title: OV copying score)", circuit_plots.plot_ov_eigenvalues, eigenvalues,
        scores=scores["ov_copying"], heads=panel_heads,
    )  # fmt: skip
    add(
        "copying", "OV vs QK eigenvalue copying scores", circuit_plots.plot_copying_plane,
        scores["ov_copying"], scores["qk_copying"],
    )  # fmt: skip

    if cfg.n_layers >= 2:
        raw = {k: np.asarray(circuits.composition_scores(folded, folded_cfg, k)) for k in "QKV"}
        # composition_scores(baseline=True) is raw minus this one scalar (the same for
        # Q, K and V): subtract it here rather than compile three more programs
        random = float(circuits.random_composition_baseline(folded_cfg))
        later = np.arange(cfg.n_layers)[:, None, None, None] < np.arange(cfg.n_layers)[:, None]
        base = {k: np.where(later, v - random, 0.0) for k, v in raw.items()}
        summary["random_composition_baseline"] = random
        add(
            "composition", "Q-, K- and V-composition scores (norm weights folded)",
            circuit_plots.plot_composition_scores, raw, base,
        )  # fmt: skip
        summary["composition"] = {k: _top_pairs(base[k], raw[k]) for k in "QKV"}
        sections.append(section("Largest composition scores", _composition_html(summary)))

    if cfg.positional == "learned":
        n = min(cfg.n_ctx, 2 * seg_len + 1)
        fm = circuits.positional_qk_circuit(folded, folded_cfg)
        qk_pos = np.asarray(fm.A[..., :n, :] @ fm.B[..., :, :n])
        add(
            "positional", f"Positional QK circuit W_pos W_QK W_posᵀ (first {n} positions)",
            circuit_plots.plot_positional_qk, qk_pos, heads=panel_heads,
        )  # fmt: skip
    elif cfg.positional == "rope":
        profile = np.asarray(
            circuits.positional_qk_circuit(folded, folded_cfg, n_offsets=min(cfg.n_ctx, 128))
        )
        add(
            "positional", "RoPE: QK score of a vector with itself as a function of offset",
            circuit_plots.plot_positional_qk, profile,
        )  # fmt: skip

    if _has_skip_trigrams(cfg):
        from ..circuits.skip_trigrams import skip_trigrams

        trigrams = skip_trigrams(params, cfg, n_ov=8, n_dst=3, exclude=specials)
        add(
            "skip_trigrams", "Skip-trigrams read from the QK and OV circuits",
            circuit_plots.plot_skip_trigrams, trigrams, token_str,
        )  # fmt: skip
        summary["skip_trigrams"] = [
            {"head": f"L{t.layer}H{t.head}", "trigram": t.format(token_str), "ov": t.ov,
             "qk": t.qk[0]}
            for head_rows in trigrams for t in head_rows
        ]  # fmt: skip
        sections.append(section("Skip-trigrams", _skip_trigram_html(trigrams, token_str)))

    if _has_paths(cfg):
        path_summary = _path_summary(params, cfg, tokens, seg_len, bos_id is not None)
        summary["paths"] = path_summary
        labels = list(path_summary["second_copy"]["terms"])
        values = [path_summary["second_copy"]["terms"][k] for k in labels]
        add(
            "paths", "Largest path terms on the second copy (mean contribution to the "
            "correct next token's logit minus the mean logit)", circuit_plots.plot_path_terms,
            labels, values,
        )  # fmt: skip
        sections.append(section("Path decomposition", _paths_html(path_summary)))

    (out / JSON_FILE).write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    body = [
        section("Heads", _head_table_html(rows, seg_len, bos_id is not None, len(specials))),
        *(figure(caption, path) for caption, path in figures),
        *sections,
    ]
    html_path = out / HTML_FILE
    html_path.write_text(page(f"mechjax circuit analysis — {cfg.name or 'model'}",
                          _description(cfg, source), body, "analysis"))  # fmt: skip
    return html_path


# -- pieces ------------------------------------------------------------------------------------


def _panel_heads(scores: dict, cfg: ModelConfig) -> list[tuple[int, int]] | None:
    """All heads for small models; else the PANEL_HEADS heads with the largest
    induction / previous-token / duplicate-token score, in (layer, head) order."""
    if cfg.n_layers * cfg.n_heads <= PANEL_HEADS:
        return None
    best = np.max([scores[k] for k in ("induction", "previous_token", "duplicate_token")], 0)
    order = np.argsort(-np.nan_to_num(best, nan=-1.0), axis=None)[:PANEL_HEADS]
    return sorted((int(i) // cfg.n_heads, int(i) % cfg.n_heads) for i in order)


def _top_pairs(baselined: np.ndarray, raw: np.ndarray, n: int = 5) -> list[dict]:
    L = baselined.shape[0]
    later = np.arange(L)[:, None, None, None] < np.arange(L)[None, None, :, None]
    masked = np.where(later, baselined, -np.inf)
    out = []
    for i in np.argsort(-masked, axis=None)[:n]:
        l1, h1, l2, h2 = np.unravel_index(i, masked.shape)
        if not np.isfinite(masked[l1, h1, l2, h2]):
            break
        out.append(
            {"from": f"L{l1}H{h1}", "to": f"L{l2}H{h2}", "score": float(raw[l1, h1, l2, h2]),
             "minus_baseline": float(baselined[l1, h1, l2, h2])}
        )  # fmt: skip
    return out


def _path_summary(params, cfg, tokens, seg_len: int, has_bos: bool) -> dict:
    """Mean contribution of each path term to the next token's logit minus the mean
    logit, over the positions predicting the first copy and those predicting the second."""
    from ..circuits.paths import path_decomposition

    targets = np.roll(tokens, -1, axis=1)
    terms = path_decomposition(params, tokens, cfg, token_ids=targets, minus_ids="mean")
    values = np.asarray(terms.values)  # [term, batch, pos]
    o = int(has_bos)
    # position p predicts token p + 1; the second copy's tokens are o+seg_len .. end
    spans = {
        "first_copy": slice(o, o + seg_len - 1),  # predicts tokens 2..seg_len of copy 1
        "second_copy": slice(o + seg_len, tokens.shape[1] - 1),  # predicts copy 2's 2nd..
    }
    out = {}
    for name, span in spans.items():
        mean = values[:, :, span].mean(axis=(1, 2))
        kinds = np.asarray(terms.kinds)
        out[name] = {
            "total": float(mean.sum()),
            "by_kind": {k: float(mean[kinds == k].sum()) for k in dict.fromkeys(terms.kinds)},
            "terms": {label: float(v) for label, v in zip(terms.labels, mean)},
        }
    return out


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


def _head_table_html(rows: list[dict], seg_len: int, has_bos: bool, n_excluded: int) -> str:
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
        "TransformerLens convention, label above 0.4); OV / QK copying: Σλ / Σ|λ| over the "
        "eigenvalues of the full circuits, norm weights folded.</p>" + table(header, body, "heads")
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
