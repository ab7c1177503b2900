"""The circuits of one model, computed together: what `mechjax analyze` reports.

    analyze_model(params, cfg, *, bos_id=None, exclude=(), seed=0, batch=8) -> ModelAnalysisResult

Each part is computed only where it applies to the model:

* head detectors (`heads.detect_heads`, TransformerLens convention: a BOS and two copies
  of a random segment) and the labelled head table (`heads.head_table`), with each
  head's eigenvalue copying statistics of its full OV and QK circuits
  (`circuits.ov_eigenvalue_copying` / `qk_eigenvalue_copying`, norm weights folded first);
* the attention patterns on the first repeated sequence and the eigenvalues of every
  head's full OV circuit;
* Q/K/V-composition scores (2+ layers), raw and minus the random baseline, and the
  largest pairs;
* the positional QK circuit (learned positions) or the score-vs-offset profile (RoPE);
* 1-layer attention-only models: the strongest skip-trigrams;
* 2-layer attention-only models: the path decomposition of the next-token logits on the
  repeated sequence, summarised per kind of path and per term, separately for the first
  copy (nothing to copy yet) and the second (induction).

The figures and the page are `mechjax.views.analysis_report`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..circuits import eigen, paths, weights
from ..circuits.skip_trigrams import SkipTrigram, skip_trigrams
from ..model.checks import check_config, check_token_ids
from ..model.config import ModelConfig
from ..model.params import Params, check_params
from ..model.transformer import run_with_stream
from . import heads

PANEL_HEADS = 32  # heads drawn in per-head panels for models with more heads than this


@dataclasses.dataclass(frozen=True)
class ModelAnalysisResult:
    """Everything `analyze_model` found; arrays are numpy.

    tokens [batch, pos]: the repeated sequences (`seg_len` tokens twice, after `bos_id`
    when not None; `excluded_ids` never drawn). scores: `{name: [layer, head]}`, the head
    detectors plus "ov_eigen_copying" / "qk_eigen_copying"; head_rows: `heads.head_table(scores)`.
    pattern [layer, head, query, key] of the first sequence; ov_eigenvalues [layer,
    head, d_head] (complex); panel_heads: the (layer, head) pairs per-head figures show
    (None: all). composition: `{"raw": {kind: [l1, h1, l2, h2]}, "baselined": ...,
    "random_baseline": float, "top": {kind: [pair, ...]}}` or None; positional:
    `[layer, head, pos, pos]` (learned) or `[layer, head, offset]` (RoPE) or None;
    skip_trigrams: per head a list of `SkipTrigram`, or None; paths: the path summary
    of each copy, or None.
    """

    cfg: ModelConfig
    seg_len: int
    n_repeats: int
    bos_id: int | None
    excluded_ids: list[int]
    tokens: np.ndarray
    scores: dict
    head_rows: list[dict]
    pattern: np.ndarray
    ov_eigenvalues: np.ndarray
    panel_heads: list[tuple[int, int]] | None
    composition: dict | None = None
    positional: np.ndarray | None = None
    skip_trigrams: list[list[SkipTrigram]] | None = None
    paths: dict | None = None


def has_skip_trigrams(cfg: ModelConfig) -> bool:
    return cfg.attn_only and cfg.n_layers == 1


def has_paths(cfg: ModelConfig) -> bool:
    return cfg.attn_only and cfg.n_layers == 2 and not cfg.post_attn_norm


def analyze_model(
    params: Params,
    cfg: ModelConfig,
    *,
    bos_id: int | None = None,
    exclude: Sequence[int] = (),
    seed: int = 0,
    batch: int = 8,
) -> ModelAnalysisResult:
    """Analyse the model's heads and circuits (see the module docstring).

    bos_id: the BOS id put in front of the repeated sequences (None: no BOS); exclude:
    ids never drawn into the repeated sequences nor shown as skip-trigrams (BOS is
    always excluded); seed, batch: the repeated sequences drawn.
    """
    check_config(cfg)
    check_params(params, cfg)
    if cfg.n_layers == 0:
        raise ValueError("analyze_model: a 0-layer model has no heads to analyse")
    if bos_id is not None:
        check_token_ids(bos_id, cfg, f"bos_id={bos_id}")
    specials = sorted({int(i) for i in exclude} | ({int(bos_id)} if bos_id is not None else set()))
    seg_len = _seg_len(cfg, bos_id is not None)
    tokens = heads.repeated_tokens(
        seed, batch, seg_len, cfg.d_vocab, n_repeats=2, bos_id=bos_id, exclude=specials
    )
    scores = heads.detect_heads(params, cfg, tokens, seg_len=seg_len, n_repeats=2, bos_id=bos_id)
    folded, folded_cfg = weights.fold_norms(params, cfg)
    scores["ov_eigen_copying"] = np.asarray(eigen.ov_eigenvalue_copying(folded, folded_cfg))
    scores["qk_eigen_copying"] = np.asarray(eigen.qk_eigenvalue_copying(folded, folded_cfg))
    _, stream = run_with_stream(params, tokens[:1], cfg, capture=["pattern"])
    return ModelAnalysisResult(
        cfg=cfg,
        seg_len=seg_len,
        n_repeats=2,
        bos_id=bos_id,
        excluded_ids=specials,
        tokens=np.asarray(tokens),
        scores=scores,
        head_rows=heads.head_table(scores),
        pattern=np.asarray(stream["pattern"][:, 0], np.float32),  # [layer, head, q, k]
        ov_eigenvalues=np.asarray(eigen.full_ov_eigenvalues(folded, folded_cfg)),
        panel_heads=_panel_heads(scores, cfg),
        composition=_composition(folded, folded_cfg) if cfg.n_layers >= 2 else None,
        positional=_positional(folded, folded_cfg, seg_len),
        skip_trigrams=(
            skip_trigrams(params, cfg, n_ov=8, n_dst=3, exclude=specials)
            if has_skip_trigrams(cfg)
            else None
        ),
        paths=_path_summary(params, cfg, tokens, seg_len, bos_id is not None)
        if has_paths(cfg)
        else None,
    )


def _seg_len(cfg: ModelConfig, has_bos: bool) -> int:
    limit = cfg.n_ctx if cfg.positional == "learned" else 2 * heads.OLSSON_SEG_LEN + 1
    seg_len = min(heads.OLSSON_SEG_LEN, (limit - int(has_bos)) // 2)
    if seg_len < 2:
        raise ValueError(
            f"analyze_model: n_ctx={cfg.n_ctx} is too short for two copies of a segment"
        )
    return seg_len


def _panel_heads(scores: dict, cfg: ModelConfig) -> list[tuple[int, int]] | None:
    """All heads for small models; else the PANEL_HEADS heads with the largest
    induction / previous-token / duplicate-token score, in (layer, head) order."""
    if cfg.n_layers * cfg.n_heads <= PANEL_HEADS:
        return None
    best = np.max([scores[k] for k in ("induction", "previous_token", "duplicate_token")], 0)
    order = np.argsort(-np.nan_to_num(best, nan=-1.0), axis=None)[:PANEL_HEADS]
    return sorted((int(i) // cfg.n_heads, int(i) % cfg.n_heads) for i in order)


def _composition(folded, folded_cfg: ModelConfig) -> dict:
    raw = {k: np.asarray(weights.composition_scores(folded, folded_cfg, k)) for k in "QKV"}
    # composition_scores(baseline=True) is raw minus this one scalar (the same for Q, K
    # and V): subtract it here rather than compile three more programs
    random = float(weights.random_composition_baseline(folded_cfg))
    L = folded_cfg.n_layers
    later = np.arange(L)[:, None, None, None] < np.arange(L)[:, None]
    baselined = {k: np.where(later, v - random, 0.0) for k, v in raw.items()}
    top = {k: _top_pairs(baselined[k], raw[k]) for k in "QKV"}
    return {"raw": raw, "baselined": baselined, "random_baseline": random, "top": top}


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


def _positional(folded, folded_cfg: ModelConfig, seg_len: int) -> np.ndarray | None:
    if folded_cfg.positional == "learned":
        n = min(folded_cfg.n_ctx, 2 * seg_len + 1)
        fm = weights.positional_qk_circuit(folded, folded_cfg)
        return np.asarray(fm.A[..., :n, :] @ fm.B[..., :, :n])
    if folded_cfg.positional == "rope":
        n_offsets = min(folded_cfg.n_ctx, 128)
        return np.asarray(weights.positional_qk_circuit(folded, folded_cfg, n_offsets=n_offsets))
    return None


def _path_summary(params, cfg, tokens, seg_len: int, has_bos: bool) -> dict:
    """Mean contribution of each path term to the next token's logit minus the mean
    logit, over the positions predicting the first copy and those predicting the second."""
    targets = np.roll(tokens, -1, axis=1)
    terms = paths.path_decomposition(params, cfg, tokens, token_ids=targets, minus_ids="mean")
    values = np.asarray(terms.values)  # [term, batch, pos]
    o = int(has_bos)
    # position p predicts token p + 1; the second copy's tokens are o+seg_len .. end
    spans = {
        "first_copy": slice(o, o + seg_len - 1),  # predicts tokens 2..seg_len of copy 1
        "second_copy": slice(o + seg_len, tokens.shape[1] - 1),  # predicts copy 2's 2nd..
    }
    out = {}
    kinds = np.asarray(terms.kinds)
    for name, span in spans.items():
        mean = values[:, :, span].mean(axis=(1, 2))
        out[name] = {
            "total": float(mean.sum()),
            "by_kind": {k: float(mean[kinds == k].sum()) for k in dict.fromkeys(terms.kinds)},
            "terms": {label: float(v) for label, v in zip(terms.labels, mean)},
        }
    return out
