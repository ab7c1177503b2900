"""The forward pass: one pure function for attention-only toys and Gemma 1/2/3.

    forward(params, tokens, cfg, edits=())                    -> logits [batch, pos, vocab]
    run_with_stream(params, tokens, cfg, capture, edits=())   -> (logits, Stream)

Layers run under `lax.scan` over the stacked block parameters; per-layer differences
(local/global attention, RoPE base) are data indexed by the layer. At every named site
(`mechjax.model.sites`) the pass applies the edits aimed at it and records it if captured.
Inputs are validated in Python before any compiled code runs (inside jit, JAX would
clamp an out-of-range token id silently).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import layers
from .attention import (
    attention_implementation,
    attention_mask,
    attention_scores,
    causal_attention,
    fused_causal_attention,
    softmax_over_keys,
)
from .checks import check_config, check_mask, check_tokens
from .config import ModelConfig
from .edits import Edit, check_edits
from .hooks import BEFORE_QUERIES, SiteHooks
from .padding import token_positions
from .params import Params, check_params, weight_bits, widen
from .sites import SITES, resolve_capture
from .stream import Stream
from .unembed import final_norm, final_norm_scale, unembed

_NO_WINDOW = np.iinfo(np.int32).max


def _rope_rows(table, rows):
    """Rows of a cos/sin table `[pos, rope_dim]`, or `[batch, pos, rope_dim]` when each
    prompt has its own positions (padding)."""
    return table[rows] if table.ndim == 2 else table[:, rows]


def _attention(
    h,
    lp,
    cos,
    sin,
    window,
    cfg: ModelConfig,
    norm,
    site: SiteHooks,
    queries=None,
    prefix=None,
    key_valid=None,
    cache=None,
):
    """One attention sub-block. h [batch, pos, d_model] (already normed).

    queries: a static tuple of (absolute) query positions to compute; keys and values
        are still computed at every position h holds. The output then has
        `len(queries)` positions.
    prefix: `(k, v)` `[batch, start, kv_head, d_head]`, the keys and values of positions
        `0 .. start - 1` from another run; h then holds positions `start ..` only (whose
        keys and values are computed and appended; RoPE and masks use absolute
        positions).
    key_valid: `[batch, start + pos]` bool, False at padding keys (`attention_mask`).
    cache: `(k, v, offset)` for cached decoding: `k, v [batch, slot, kv_head, d_head]`
        hold the keys and values of slots `0 .. offset - 1` (the rest is unused), `offset`
        a traced int; h holds the slots `offset ..` and their keys and values are written
        into the cache (a copy) before attending; key_valid then covers every slot and
        cos/sin hold h's rows only.
    """
    B, P, _ = h.shape
    K, G, E = cfg.n_kv_heads, cfg.group_size, cfg.d_head
    start = 0 if prefix is None else prefix[0].shape[1]
    absolute = np.arange(start, start + P) if queries is None else np.asarray(queries)
    rows = slice(None) if queries is None else absolute - start
    q = jnp.einsum("bpd,hde->bphe", h[:, rows], lp["W_Q"])
    R = q.shape[1]
    k = jnp.einsum("bpd,kde->bpke", h, lp["W_K"])
    v = jnp.einsum("bpd,kde->bpke", h, lp["W_V"])
    if cfg.use_attn_bias:
        q, k, v = q + lp["b_Q"], k + lp["b_K"], v + lp["b_V"]
    if cfg.qk_norm:
        q = norm(q, norm.scale(q), lp["q_norm_w"])
        k = norm(k, norm.scale(k), lp["k_norm_w"])
    if cfg.positional == "rope":
        q_rows, k_rows = (slice(None),) * 2 if cache is not None else (absolute, slice(start, None))
        q = layers.apply_rope(q, _rope_rows(cos, q_rows), _rope_rows(sin, q_rows))
        k = layers.apply_rope(k, _rope_rows(cos, k_rows), _rope_rows(sin, k_rows))
    q, k, v = site("q", q), site("k", k), site("v", v)
    if prefix is not None:
        k, v = (jnp.concatenate([before, now], axis=1) for before, now in zip(prefix, (k, v)))
        queries, P = tuple(absolute.tolist()), start + P
    if cache is not None:
        k_cache, v_cache, offset = cache
        k, v = (
            jax.lax.dynamic_update_slice(old, new.astype(old.dtype), (0, offset, 0, 0))
            for old, new in ((k_cache, k), (v_cache, v))
        )
        queries, P = offset + jnp.arange(R), k.shape[1]

    # head-major layouts; query head h belongs to key/value group h // G (HF's repeat_kv
    # order). The score matmuls run much faster on CPU in this layout than position-major.
    qh = q.reshape(B, R, K, G, E).transpose(0, 2, 3, 1, 4)  # [batch, kv_head, group, pos, E]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [batch, kv_head, pos, E]
    if queries is not None or site.wants("scores") or site.wants("pattern"):
        # the whole score matrix (or, for a few queries, their rows). Edits act on the
        # unmasked scores and the causal/window mask is applied after them: `0 * -inf`
        # would turn a patch or ablation of masked entries into NaN, and an edit must
        # not let a query see future keys. The captured scores are masked.
        scores = site("scores", attention_scores(qh, kh, cfg).reshape(B, -1, R, P))
        mask = attention_mask(P, window, queries, key_valid)
        scores = jnp.where(mask if mask.ndim == 2 else mask[:, None], scores, -jnp.inf)
        site.record("scores", scores)
        pattern = site("pattern", softmax_over_keys(scores, h.dtype))
        zh = jnp.einsum("bkgqs,bkse->bkgqe", pattern.reshape(B, K, G, R, P), vh)
        z = zh.transpose(0, 3, 1, 2, 4).reshape(B, R, -1, E)
    elif attention_implementation(cfg) == "fused":  # nothing reads the scores; a GPU
        z = fused_causal_attention(q, k, v, window, cfg, h.dtype, key_valid)
    else:  # nothing reads or edits the scores: the fast path (chunked, for CPUs)
        zh = causal_attention(qh, kh, vh, window, cfg, h.dtype, key_valid)
        z = zh.transpose(0, 3, 1, 2, 4).reshape(B, R, -1, E)
    z = site("z", z)

    per_head = site.wants("head_out") or site.wants("head_writes")
    if per_head:
        head_out = site("head_out", jnp.einsum("bphe,hed->bphd", z, lp["W_O"]))
        attn_raw = head_out.sum(axis=2)
    else:
        attn_raw = jnp.einsum("bphe,hed->bpd", z, lp["W_O"])
    bias = (
        lp["b_O"].astype(h.dtype) if cfg.has_attn_out_bias else jnp.zeros((cfg.d_model,), h.dtype)
    )
    attn_raw = attn_raw + bias

    if cfg.post_attn_norm:
        # the post-norm is linear once its scale is frozen: each head's write is the
        # norm's linear part applied to that head's output, the bias term takes the rest
        scale = site("ln1_post_scale", norm.scale(attn_raw))
        attn_out = norm(attn_raw, scale, lp["ln1_post_w"], lp.get("ln1_post_b"))
        if site.wants("head_writes") or site.wants("attn_bias_writes"):
            site.record(
                "head_writes", norm.linear(head_out, scale[:, :, None, :], lp["ln1_post_w"])
            )
            bias_write = norm(
                jnp.broadcast_to(bias, attn_raw.shape),
                scale,
                lp["ln1_post_w"],
                lp.get("ln1_post_b"),
            )
            site.record("attn_bias_writes", bias_write)
    else:
        attn_out = attn_raw
        if site.wants("head_writes") or site.wants("attn_bias_writes"):
            site.record("head_writes", head_out)
            site.record("attn_bias_writes", jnp.broadcast_to(bias, attn_raw.shape))
    return site("attn_out", attn_out)


def _mlp(h, lp, cfg: ModelConfig, norm, site: SiteHooks):
    """One MLP sub-block. h [batch, pos, d_model] (already normed)."""
    pre = jnp.einsum("bpd,dm->bpm", h, lp["W_in"])
    if cfg.use_mlp_bias:
        pre = pre + lp["b_in"]
    if cfg.gated_mlp:
        gate = jnp.einsum("bpd,dm->bpm", h, lp["W_gate"])
        if cfg.use_mlp_bias:
            gate = gate + lp["b_gate"]
        gate = site("mlp_pre", gate)
        post = layers.activation(cfg.act_fn, gate) * site("mlp_pre_linear", pre)
    else:
        post = layers.activation(cfg.act_fn, site("mlp_pre", pre))
        if cfg.act_fn == "solu":  # SoLU is followed by its own LayerNorm (Elhage et al. 2022)
            scale = layers.norm_scale(post, center=True, eps=cfg.norm_eps)
            post = (
                layers.apply_norm_linear(post, scale, lp["ln_mlp_w"], center=True) + lp["ln_mlp_b"]
            )
    post = site("mlp_post", post)
    out = jnp.einsum("bpm,md->bpd", post, lp["W_out"])
    if cfg.use_mlp_bias:
        out = out + lp["b_out"]
    if cfg.post_mlp_norm:
        scale = site("ln2_post_scale", norm.scale(out))
        out = norm(out, scale, lp["ln2_post_w"], lp.get("ln2_post_b"))
    return site("mlp_out", out)


def _block(
    resid,
    lp,
    cos,
    sin,
    window,
    cfg: ModelConfig,
    site: SiteHooks,
    queries=None,
    prefix=None,
    key_valid=None,
    cache=None,
):
    """One block. `queries` (static positions): compute only those positions' outputs
    (keys and values still come from every position); `prefix`: earlier positions'
    keys and values, resid holding the later positions only; `key_valid`: padding;
    `cache`: cached decoding; all as `_attention`."""
    norm = layers.Norm(cfg)
    has_norm = cfg.normalization != "none"
    resid = site("resid_pre", resid)
    h = resid
    if has_norm:
        h = norm(resid, site("ln1_scale", norm.scale(resid)), lp["ln1_w"], lp.get("ln1_b"))
    attn = _attention(h, lp, cos, sin, window, cfg, norm, site, queries, prefix, key_valid, cache)
    start = 0 if prefix is None else prefix[0].shape[1]
    if queries is not None:
        resid = resid[:, np.asarray(queries) - start]
    if cfg.attn_only:
        return site("resid_post", resid + attn)
    if cfg.parallel_attn_mlp:  # GPT-NeoX: both sub-blocks read resid_pre
        h = resid
    else:
        resid = site("resid_mid", resid + attn)
        h = resid
    if has_norm:
        h = norm(h, site("ln2_scale", norm.scale(h)), lp["ln2_w"], lp.get("ln2_b"))
    out = _mlp(h, lp, cfg, norm, site)
    if cfg.parallel_attn_mlp:
        return site("resid_post", resid + attn + out)
    return site("resid_post", resid + out)


@functools.partial(jax.jit, static_argnames=("cfg", "capture", "readout"), inline=True)
def run(
    params: Params,
    tokens,
    cfg: ModelConfig,
    *,
    capture: tuple[str, ...] = (),
    edits: tuple[Edit, ...] = (),
    readout: tuple[int, ...] | None = None,
    mask=None,
    cache=None,
):
    """The forward pass every analysis builds on: `(logits, captured)`. Unchecked:
    callers validate at their boundary (`check_tokens`, `check_params`,
    `edits.check_edits`); compiled at the top level and inlined into the caller's trace
    inside jit, vmap or grad (an analysis that jits its own function compiles one
    program, not two).

    tokens [batch, pos] (int); capture: a tuple of site names (`sites.SITES`), each
    returned in `captured` (per-layer sites stacked `[layer, ...]`); edits: a tuple of
    `Edit`s applied at their sites; readout: static non-negative positions, as in
    `run_from`; mask: `[batch, pos]` bool, False at padding (`mechjax.model.padding`);
    cache: cached decoding, as in `run_from` (tokens then hold the new slots only).
    Logits are `[batch, pos, vocab]`, or `[batch, len(readout), vocab]`.
    """
    dtype = jnp.dtype(cfg.activation_dtype)
    B, P = tokens.shape
    embed_edits = tuple(e for e in edits if not SITES[e.site][0])
    if cache is not None:
        embed_edits = tuple(_shifted(e, cache[2]) for e in embed_edits)
    valid = None if mask is None else _columns(jnp.asarray(mask, bool), cache, P)
    top = SiteHooks(capture, embed_edits, valid=valid)
    # activations in cfg.activation_dtype from here on (16-bit weights widen as used)
    embed = _rows(params["W_E"], tokens, cfg)
    embed = embed * jnp.asarray(cfg.embed_scale, dtype)
    resid = top("embed", embed)
    if cfg.positional == "learned":
        if mask is None:
            pos_embed = jnp.broadcast_to(
                _rows(params["W_pos"], np.arange(P), cfg), (B, P, cfg.d_model)
            )
        else:  # each prompt counts its positions from its first real token
            positions = _columns(token_positions(mask), cache, P)
            pos_embed = _rows(params["W_pos"], positions, cfg)
        resid = resid + top("pos_embed", pos_embed)
    logits, captured = run_from(
        params,
        resid,
        cfg,
        layer=0,
        capture=capture,
        edits=edits,
        readout=readout,
        mask=mask,
        cache=cache,
    )
    return logits, {**top.captured, **captured}


UNROLL_MAX_BYTES = 64 << 20  # stacked block weights up to this size unroll their layers


def _rows(table: jax.Array, index, cfg: ModelConfig) -> jax.Array:
    """`table[index]` in the activations' dtype: an embedding lookup (a table of 16-bit
    weights may come as its bits, `params.weight_bits`; only the rows read are widened)."""
    return widen(jnp.take(table, jnp.asarray(index), axis=0), cfg)


def _columns(x, cache, n: int):
    """The columns `[batch, n]` of a per-slot array `x [batch, slot]` that a run computes:
    all of them, or with a cache the `n` slots from its offset."""
    return x if cache is None else jax.lax.dynamic_slice_in_dim(x, cache[2], n, axis=1)


def _shifted(edit: Edit, offset) -> Edit:
    """An edit for a cached run whose pos axis starts at slot `offset` (traced): its
    position selector, in slots, counted from there."""
    return edit if edit.pos is None else edit.replace(pos=edit.pos - offset)


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "capture", "readout"), inline=True)
def run_from(
    params: Params,
    resid,
    cfg: ModelConfig,
    *,
    layer: int,
    capture: tuple[str, ...] = (),
    edits: tuple[Edit, ...] = (),
    readout: tuple[int, ...] | None = None,
    prefix=None,
    mask=None,
    cache=None,
):
    """Blocks `layer .. n_layers - 1` and the output head, from `resid [batch, pos,
    d_model]`, the residual stream before block `layer` (static): `(logits, captured)`.
    Per-layer captures are stacked over the layers run. Edit selectors keep absolute
    layer indices. Activation patching starts here at the earliest patched layer: the
    blocks before it would only recompute the unpatched run. Unchecked and inlined as
    `run` is.

    readout: static non-negative positions. When given, only the logits there are
    computed (`[batch, len(readout), vocab]`), and the last block computes its queries,
    MLP and output only there (its keys and values still at every position): what a
    metric reading a few positions needs, at a fraction of the cost (the unembedding
    and the last block dominate small sweeps; a 256k-token vocabulary, big ones). Edits
    of the activations computed only there act on those positions (`Edit.at_positions`).
    A readout run that captures runs every block and the final norm at every position
    (the captures are whole) and unembeds only the readout positions.

    prefix: `(k, v)` stacked `[layer, batch, start, kv_head, d_head]` (all layers), the
    keys and values of positions `0 .. start - 1` in an unchanged run; `resid` then holds
    positions `start ..` only, and so do the logits (readout positions, absolute, must
    be >= start). Causal attention makes this exact for any change at positions >=
    start: the earlier positions' keys and values cannot see it. Activation patching
    uses it to skip the positions before the patched one. Nothing may be captured; edits
    act on the positions computed (`Edit.at_positions`).

    mask: `[batch, start + pos]` bool over the whole sequence, False at padding
    (`mechjax.model.padding`): padding keys are hidden, rotary positions count real
    tokens only, and edits leave padding positions unchanged.

    cache: `(k, v, offset)` for cached decoding (`mechjax.model.generate`): `k, v` stacked
    `[layer, batch, slot, kv_head, d_head]` hold the keys and values of slots `0 ..
    offset - 1` (`offset` traced), resid holds slots `offset ..`; mask (required) covers
    every slot. Each layer attends over the cache with the new keys and values written
    in; capture "k" and "v" to get them (`[layer, batch, new, kv_head, d_head]`) and
    update the cache. Edit positions are slots.
    """
    first_layer = layer
    start = 0 if prefix is None else prefix[0].shape[2]
    if prefix is not None and capture:
        raise ValueError("a run from a key/value prefix computes later positions only: no capture")
    if prefix is not None and readout is not None and min(readout) < start:
        raise ValueError(f"readout positions {readout} precede the prefix's end, {start}")
    if cache is not None and (mask is None or prefix is not None or readout is not None):
        raise ValueError("a cached run needs a mask over every slot, and no prefix or readout")
    P = start + resid.shape[1] if cache is None else cache[0].shape[2]  # the sequence's slots
    if cache is not None:
        edits = tuple(_shifted(e, cache[2]) for e in edits)
    held = None if prefix is None else tuple(range(start, P))  # the positions computed

    def narrowed(edit, positions):
        return edit if positions is None else edit.at_positions(positions)

    n_run = cfg.n_layers - first_layer
    whole_last_block = readout is None or bool(capture) or not n_run
    n_scanned = n_run if whole_last_block else n_run - 1
    final_edits = tuple(e for e in edits if not SITES[e.site][0])
    final_edits = tuple(narrowed(e, held if whole_last_block else readout) for e in final_edits)
    mask = None if mask is None else jnp.asarray(mask, bool)
    held_valid = None if mask is None else _columns(mask[:, start:], cache, resid.shape[1])
    readout_valid = None if mask is None or readout is None else mask[:, np.asarray(readout)]
    top = SiteHooks(capture, final_edits, valid=held_valid if whole_last_block else readout_valid)
    layer_edits = tuple(e for e in edits if SITES[e.site][0])
    stacked: dict[str, jax.Array] = {}
    if n_run:
        cos, sin = layers.rope_tables(cfg, P) if cfg.positional == "rope" else (None, None)
        if cos is not None and mask is not None:  # [layer, batch, pos, rope_dim]
            positions = _columns(token_positions(mask), cache, resid.shape[1])
            cos, sin = jnp.asarray(cos)[:, positions], jnp.asarray(sin)[:, positions]
        windows = np.array(
            [cfg.sliding_window if t == "local" else _NO_WINDOW for t in cfg.resolved_layer_types],
            np.int32,
        )
        xs = dict(layer=jnp.arange(first_layer, cfg.n_layers), window=windows[first_layer:])
        # Scanning over the stacked weights themselves is fastest, but a slice of them
        # (a run from a later layer, or all but a readout's last block) is a copy of
        # every layer it keeps: for a 2B model, gigabytes per call. Such runs index one
        # layer at a time instead.
        blocks = params["blocks"]  # 16-bit weights may come as their bits (params.weight_bits)
        if first_layer == 0 and n_scanned == n_run:
            xs["lp"] = blocks
        if cos is not None:
            xs.update(cos=cos[first_layer:], sin=sin[first_layer:])
        if prefix is not None:
            xs.update(prefix=tuple(kv[first_layer:] for kv in prefix))
        if cache is not None:
            xs.update(cache=tuple(kv[first_layer:] for kv in cache[:2]))
        block_edits = tuple(narrowed(e, held) for e in layer_edits)

        def run_block(resid, x, hooks, queries=None):  # x: one layer's slice of xs
            window, prefix_kv = x["window"], x.get("prefix")
            cos_sin = (x.get("cos"), x.get("sin"))
            layer_cache = None if cache is None else (*x["cache"], cache[2])
            lp = x.get("lp")
            if lp is None:
                lp = jax.tree_util.tree_map(lambda w: w[x["layer"]], blocks)
            lp = jax.tree_util.tree_map(lambda w: widen(w, cfg), lp)  # this layer only
            return _block(
                resid, lp, *cos_sin, window, cfg, hooks, queries, prefix_kv, mask, layer_cache
            )

        def body(resid, x):
            hooks = SiteHooks(capture, block_edits, x["layer"], held_valid)
            return run_block(resid, x, hooks), hooks.captured

        if n_scanned:
            scanned = jax.tree_util.tree_map(lambda a: a[:n_scanned], xs)
            # small stacks unroll fully (faster on CPU); large ones keep one compiled layer.
            # Unrolled, each layer's weights are sliced into buffers of their own that XLA
            # may keep live together: a copy of the model at full size, so only toys unroll
            stack_bytes = sum(w.nbytes for w in jax.tree_util.tree_leaves(blocks))
            small = n_scanned <= 4 and stack_bytes <= UNROLL_MAX_BYTES
            unroll = n_scanned if small else 1
            resid, stacked = jax.lax.scan(body, resid, scanned, unroll=unroll)
        if n_scanned < n_run:  # the last block, at the readout positions only
            x = jax.tree_util.tree_map(lambda a: a[-1], xs)
            hooks = SiteHooks(
                (),
                tuple(
                    narrowed(e, held if e.site in BEFORE_QUERIES else readout) for e in layer_edits
                ),
                x["layer"],
                held_valid,
                readout_valid,
            )
            resid = run_block(resid, x, hooks, readout)
    resid = top("final_resid", resid)
    scale = top("ln_final_scale", final_norm_scale(resid, cfg)) if cfg.has_final_norm else None
    h = final_norm(params, cfg, resid, scale)
    if readout is not None and whole_last_block:
        h = h[:, np.asarray(readout) - start]
    logits = unembed(params, cfg, h)
    return logits, {**top.captured, **stacked}


# -- validation at the boundary -------------------------------------------------------------


def _prepare(params, tokens, cfg, edits, mask=None):
    check_config(cfg)
    check_tokens(tokens, cfg)
    check_params(params, cfg)
    mask = check_mask(mask, tokens)
    edits = (edits,) if isinstance(edits, Edit) else tuple(edits or ())
    check_edits(edits, cfg, n_pos=tokens.shape[1])
    return jnp.asarray(tokens, jnp.int32), edits, mask


def forward(params: Params, tokens, cfg: ModelConfig, *, edits=(), mask=None) -> jax.Array:
    """logits [batch, pos, vocab] (after the final soft-cap, if the model has one).
    `mask [batch, pos]`: False at padding (`mechjax.model.padding`); each prompt's
    logits at its real positions then equal those of the prompt run alone."""
    tokens, edits, mask = _prepare(params, tokens, cfg, edits, mask)
    return run(weight_bits(params, cfg), tokens, cfg, edits=edits, mask=mask)[0]


def run_with_stream(
    params: Params, tokens, cfg: ModelConfig, *, capture="writes", edits=(), mask=None
):
    """Run the model and return `(logits, Stream)`.

    `capture` chooses what the stream keeps: "writes" (default; every write into the
    residual stream, the final norm's frozen scale and the attention patterns), "all"
    (every site of `mechjax.model.sites`), or a list of names. Per-layer values are stacked
    with a leading `layer` axis, e.g. `stream["head_writes"] [layer, batch, pos, head,
    d_model]`. `mask`: padding, as in `forward` (padding positions hold meaningless
    values).
    """
    tokens, edits, mask = _prepare(params, tokens, cfg, edits, mask)
    names = resolve_capture(capture, cfg)
    # without a post-attention norm each head's write is its output: compute it once
    same = {"head_writes": "head_out"} if not cfg.post_attn_norm else {}
    aliases = {name: of for name, of in same.items() if name in names and of in names}
    capture = tuple(n for n in names if n not in aliases)
    params = weight_bits(params, cfg)
    logits, captured = run(params, tokens, cfg, capture=capture, edits=edits, mask=mask)
    return logits, Stream({**captured, **{name: captured[of] for name, of in aliases.items()}})
