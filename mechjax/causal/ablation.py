"""Ablation: knock out a head, an MLP or a whole layer and measure what breaks.

Components and the sites ablated (as `mechjax.model.edits` edits):

    head   `z` of one query head at one layer (every position): its write is then
           `ablated z @ W_O` (zero: no write at all, before any post-attention norm)
    mlp    `mlp_out` of one layer
    layer  `attn_out` and `mlp_out` of one layer: with zero ablation the block is
           skipped, `resid_post = resid_pre` (attention-only models: `attn_out` only)

Methods (Elhage et al. 2021; Wang et al. 2022; Chan et al. 2022 on resampling):

    zero      replace with 0
    mean      replace with the mean over a reference batch (per position when the
              reference has the tokens' length, else also over positions)
    resample  replace with the activation of a reference run on other inputs of the
              same shape (default: the tokens themselves, batch shuffled with `key`)

Effects: the mean next-token loss (cross-entropy, nats) and, if a metric is given, the
metric, each before and after. A sweep over every head / MLP / layer runs all
ablations under one `jax.vmap` in one compiled call.

    ablation_sweep(params, cfg, tokens, component, method, ...)  -> AblationResult
    ablation_edits(cfg, component, layer, head=None, method=..., reference=...) -> edits
    ablation_effect(params, cfg, tokens, edits, metric=None)     -> (loss, metric)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from ..model.checks import check_mask
from ..model.config import ModelConfig
from ..model.edits import Edit, check_edits, mean_ablate, resample, zero_ablate
from ..model.losses import token_losses_from_logits
from ..model.transformer import run
from . import sweep
from .metrics import check_metric, resolve_metric

COMPONENTS = ("head", "mlp", "layer")
METHODS = ("zero", "mean", "resample")


def component_sites(component: str, cfg: ModelConfig) -> tuple[str, ...]:
    """The sites an ablation of `component` edits in this model."""
    if component not in COMPONENTS:
        raise ValueError(f"component={component!r}: choose one of {COMPONENTS}")
    if cfg.n_layers == 0:
        raise ValueError("this model has no layers to ablate")
    if component == "head":
        return ("z",)
    if component == "mlp":
        if cfg.attn_only:
            raise ValueError("this model is attention-only: it has no MLPs to ablate")
        return ("mlp_out",)
    return ("attn_out",) if cfg.attn_only else ("attn_out", "mlp_out")


def _templates(sites, method, reference_acts, key, over_positions) -> tuple[Edit, ...]:
    """One edit per site, selecting every layer/head; cells narrow the selectors."""
    if method == "zero":
        return tuple(zero_ablate(s) for s in sites)
    if method == "mean":
        return tuple(
            mean_ablate(s, reference_acts[s], over_positions=over_positions) for s in sites
        )
    # one shuffle shared by every site, so a layer's attn_out and mlp_out come from the
    # same example
    return tuple(resample(s, reference_acts[s], key=key) for s in sites)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")


def ablation_edits(
    cfg: ModelConfig,
    component: str,
    layer: int,
    head: int | None = None,
    *,
    method: str = "zero",
    reference=None,
    key: jax.Array | None = None,
    over_positions: bool = False,
) -> tuple[Edit, ...]:
    """The edits of one ablation, for `mj.forward(..., edits=...)`.

    reference: for "mean" / "resample", the reference run's activations at
    `component_sites(component, cfg)` (a `Stream` or dict from `run_with_stream(...,
    capture=[...])`). key: shuffles the reference batch for "resample".
    over_positions: "mean" also averages over positions (for a reference of another
    length than the inputs the edits will run on).
    """
    sites = component_sites(component, cfg)
    _check_method(method)
    if (component == "head") != (head is not None):
        raise ValueError("give head= for component 'head', and only then")
    if method != "zero":
        missing = [s for s in sites if reference is None or s not in reference]
        if missing:
            raise ValueError(
                f"{method} ablation needs the reference run's {list(sites)}: pass "
                f"reference=run_with_stream(..., capture={list(sites)})[1] (missing {missing})"
            )
    acts = {s: reference[s] for s in sites} if method != "zero" else {}
    edits = tuple(
        e.replace(layer=jnp.asarray(layer, jnp.int32), head=_head(head))
        for e in _templates(sites, method, acts, key, over_positions)
    )
    check_edits(edits, cfg)
    return edits


def _head(head):
    return None if head is None else jnp.asarray(head, jnp.int32)


def ablation_effect(params, cfg: ModelConfig, tokens, edits, metric=None):
    """`(loss, metric)` of a run with `edits` (metric None when not given)."""
    (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
    edits = tuple(edits)
    check_edits(edits, cfg, n_pos=tokens.shape[1])
    logits = run(params, tokens, cfg, edits=edits)[0]
    value = None
    if metric is not None:
        value = float(check_metric(metric, cfg, tokens.shape)(logits))
    return float(_loss(logits, tokens)), value


@dataclasses.dataclass(frozen=True)
class AblationResult:
    """loss / metric: after each ablation, shape [layer, head] (heads) or [layer];
    base_loss / base_metric: without ablation (metric entries None when no metric)."""

    loss: jax.Array
    metric: jax.Array | None
    base_loss: float
    base_metric: float | None
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    component: str
    method: str

    @property
    def loss_change(self) -> jax.Array:
        return self.loss - self.base_loss

    @property
    def metric_change(self) -> jax.Array | None:
        return None if self.metric is None else self.metric - self.base_metric


def _loss(logits, tokens, mask=None):
    """Mean next-token cross-entropy (nats), as training measures it; with a padding
    `mask`, over the predictions of a real token from a real token only."""
    losses = token_losses_from_logits(logits, tokens)
    if mask is None:
        return losses.mean()
    pairs = mask[:, :-1] & mask[:, 1:]
    return jnp.where(pairs, losses, 0.0).sum() / jnp.maximum(pairs.sum(), 1)


def _no_metric(logits):
    return jnp.float32(0.0)


@functools.partial(
    jax.jit, static_argnames=("cfg", "component", "method", "over_positions", "chunk_size")
)
def _sweep(
    params,
    tokens,
    reference,
    cells,
    key,
    metric,
    mask,
    *,
    cfg,
    component,
    method,
    over_positions,
    chunk_size,
):
    sites = component_sites(component, cfg)
    base_logits = run(params, tokens, cfg, mask=mask)[0]
    # the reference is never padded (ablation_sweep refuses that)
    acts = run(params, reference, cfg, capture=sites)[1] if method != "zero" else {}
    templates = _templates(sites, method, acts, key, over_positions)

    def one_cell(cell):
        edits = tuple(e.replace(layer=cell["layer"], head=cell.get("head")) for e in templates)
        logits = run(params, tokens, cfg, edits=edits, mask=mask)[0]
        return _loss(logits, tokens, mask), metric(logits)

    loss, value = sweep.map_cells(one_cell, cells, chunk_size)
    return loss, value, _loss(base_logits, tokens, mask), metric(base_logits)


def ablation_sweep(
    params,
    cfg: ModelConfig,
    tokens,
    component: str = "head",
    method: str = "zero",
    *,
    reference_tokens=None,
    key: jax.Array | None = None,
    metric=None,
    answers=None,
    chunk_size: int | str | None = "auto",
    mask=None,
) -> AblationResult:
    """Ablate every head (`[layer, head]`), MLP or layer (`[layer]`) in turn.

    tokens: int [batch, pos], the inputs whose loss / metric is measured.
    reference_tokens: the reference batch for "mean" (any batch; another length means
        the mean is also over positions) and "resample" (same shape as tokens). Default:
        `tokens` (for "resample" then `key` is required, to shuffle the batch).
    key: PRNG key shuffling the reference batch for "resample".
    metric / answers: an optional metric `f(logits) -> scalar`, or `answers=(correct,
        wrong)` for the logit difference at the last position; None: loss only.
    mask: `[batch, pos]` bool, False at padding (`mechjax.model.padding`): the loss
        counts real tokens only and the default metric reads each prompt's last token.
        "resample" shuffles prompts with their padding, so it needs equal lengths;
        "mean" takes the mean from unpadded `reference_tokens`.
    """
    (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
    mask = check_mask(mask, tokens)
    component_sites(component, cfg)  # validates the component for this model
    _check_method(method)
    if mask is not None and method != "zero" and (reference_tokens is None or method == "resample"):
        raise ValueError(
            f"{method} ablation of a padded batch would mix padding into the reference; "
            "use method='zero', or for 'mean' pass unpadded reference_tokens"
        )
    chunk_size = sweep.check_chunk_size(chunk_size, tokens.shape[0] * tokens.shape[1])
    reference = tokens if reference_tokens is None else reference_tokens
    (reference,) = sweep.check_model_inputs(params, cfg, reference)
    if method == "resample":
        if reference.shape != tokens.shape:
            raise ValueError(
                f"resample ablation needs reference_tokens of the tokens' shape "
                f"{tuple(tokens.shape)}, got {tuple(reference.shape)}"
            )
        if reference_tokens is None and key is None:
            raise ValueError(
                "resample ablation from the tokens themselves needs key= to shuffle the batch "
                "(or pass reference_tokens= with other inputs)"
            )
    if key is None:
        key = jax.random.key(0)  # unused: no shuffle is asked for
        shuffle = False
    else:
        shuffle = method == "resample"
    has_metric = metric is not None or answers is not None
    metric = (
        resolve_metric(metric, answers, cfg, tokens.shape, mask)
        if has_metric
        else Partial(_no_metric)
    )
    over = ("layer", "head") if component == "head" else ("layer",)
    sizes = (cfg.n_layers, cfg.n_heads) if component == "head" else (cfg.n_layers,)
    loss, value, base_loss, base_metric = _sweep(
        params,
        tokens,
        reference,
        sweep.grid(sizes, over),
        key if shuffle else None,
        metric,
        None if mask is None else jnp.asarray(mask),
        cfg=cfg,
        component=component,
        method=method,
        over_positions=reference.shape[1] != tokens.shape[1],
        chunk_size=chunk_size,
    )
    return AblationResult(
        loss=loss.reshape(sizes),
        metric=value.reshape(sizes) if has_metric else None,
        base_loss=float(base_loss),
        base_metric=float(base_metric) if has_metric else None,
        axes=over,
        labels={a: sweep.axis_labels(a, n, "z") for a, n in zip(over, sizes)},
        component=component,
        method=method,
    )
