"""Named sites of the forward pass: every activation that can be captured or edited.

A site is either model-wide (`embed`, `final_resid`, ...) or per layer. Captured
per-layer sites come back stacked with a leading `layer` axis. The axes below are those
of one layer's activation; `pos` axes are what an edit's `pos` selector picks (for
attention scores/patterns, the query position) and `head` axes what `head` picks (at
`k` and `v` that is the key/value head: with grouped-query attention several query
heads share it).
"""

from __future__ import annotations

from .config import ModelConfig

# name -> (per_layer, axes of one activation)
SITES: dict[str, tuple[bool, tuple[str, ...]]] = {
    "embed": (False, ("batch", "pos", "d_model")),
    "pos_embed": (False, ("batch", "pos", "d_model")),
    "resid_pre": (True, ("batch", "pos", "d_model")),
    "ln1_scale": (True, ("batch", "pos", "one")),
    "q": (True, ("batch", "pos", "head", "d_head")),
    "k": (True, ("batch", "pos", "kv_head", "d_head")),
    "v": (True, ("batch", "pos", "kv_head", "d_head")),
    "scores": (True, ("batch", "head", "query_pos", "key_pos")),
    "pattern": (True, ("batch", "head", "query_pos", "key_pos")),
    "z": (True, ("batch", "pos", "head", "d_head")),
    "head_out": (True, ("batch", "pos", "head", "d_model")),
    "ln1_post_scale": (True, ("batch", "pos", "one")),
    "attn_out": (True, ("batch", "pos", "d_model")),
    "resid_mid": (True, ("batch", "pos", "d_model")),
    "ln2_scale": (True, ("batch", "pos", "one")),
    "mlp_pre": (True, ("batch", "pos", "d_mlp")),
    "mlp_pre_linear": (True, ("batch", "pos", "d_mlp")),
    "mlp_post": (True, ("batch", "pos", "d_mlp")),
    "ln2_post_scale": (True, ("batch", "pos", "one")),
    "mlp_out": (True, ("batch", "pos", "d_model")),
    "resid_post": (True, ("batch", "pos", "d_model")),
    "final_resid": (False, ("batch", "pos", "d_model")),
    "ln_final_scale": (False, ("batch", "pos", "one")),
}

# Not sites (they cannot be edited) but capturable parts of the stream: each head's
# write into the residual stream (after any post-attention norm, with its scale frozen)
# and the attention block's bias write, so that the writes sum to `final_resid`.
WRITE_PARTS = {
    "head_writes": (True, ("batch", "pos", "head", "d_model")),
    "attn_bias_writes": (True, ("batch", "pos", "d_model")),
}

# What `run_with_stream` captures by default: everything the exact decomposition of the
# final residual and direct logit attribution need, plus the attention patterns.
WRITES = (
    "embed",
    "pos_embed",
    "head_writes",
    "attn_bias_writes",
    "mlp_out",
    "final_resid",
    "ln_final_scale",
    "pattern",
)


def available_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """The sites that exist in a model with this config."""
    has_norm = cfg.normalization != "none"
    absent = set()
    if cfg.positional != "learned":
        absent.add("pos_embed")
    if not has_norm:
        absent |= {"ln1_scale", "ln2_scale"}
    if not cfg.has_final_norm:
        absent.add("ln_final_scale")
    if not cfg.post_attn_norm:
        absent.add("ln1_post_scale")
    if not cfg.post_mlp_norm:
        absent.add("ln2_post_scale")
    if cfg.attn_only:
        absent |= {"ln2_scale", "mlp_pre", "mlp_pre_linear", "mlp_post", "mlp_out", "resid_mid"}
        absent.add("ln2_post_scale")  # no MLP, so no post-MLP norm even if post_mlp_norm
    if not cfg.gated_mlp:
        absent.add("mlp_pre_linear")
    if cfg.parallel_attn_mlp:  # the MLP reads resid_pre: there is no residual in between
        absent.add("resid_mid")
    if cfg.n_layers == 0:  # a 0-layer model (embed -> unembed) has no per-layer sites
        absent |= {name for name, (per_layer, _) in SITES.items() if per_layer}
    return tuple(name for name in SITES if name not in absent)


def capturable(cfg: ModelConfig) -> tuple[str, ...]:
    return available_sites(cfg) + (tuple(WRITE_PARTS) if cfg.n_layers else ())


def resolve_capture(capture, cfg: ModelConfig) -> tuple[str, ...]:
    """Normalise a capture request to a sorted tuple of names that exist in this model.

    `capture` is "writes" (the default set), "all", a single name, or names. Names that
    a config lacks (e.g. `mlp_out` in an attention-only model) are dropped from the
    presets but are an error when asked for by name.
    """
    known = capturable(cfg)
    if capture is None:
        return ()
    if capture == "writes":
        return tuple(sorted(n for n in WRITES if n in known))
    if capture == "all":
        return tuple(sorted(known))
    names = (capture,) if isinstance(capture, str) else tuple(capture)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"cannot capture {unknown}: this model has {list(known)} "
            "(or pass capture='writes' / 'all')"
        )
    return tuple(sorted(set(names)))


def is_per_layer(name: str) -> bool:
    return {**SITES, **WRITE_PARTS}[name][0]
