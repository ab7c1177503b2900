"""The LLC of a mechjax transformer: its next-token loss on token sequences, weight
masks for the refined LLC (a layer, a head, the embedding), and estimates over a run's
checkpoints. The estimator itself is `mechjax.dynamics.llc`.

    result = model_llc(params, cfg, tokens, jax.random.key(0))           # tokens [n, pos]
    heads = refined_head_llcs(params, cfg, tokens, jax.random.key(0))    # {"L0H0": ...}
    records = llc_over_run("runs/attn2-...", key=jax.random.key(0))       # every checkpoint

Data: the loss of a minibatch is `mean_loss` (the training loss) of `batch_size`
sequences drawn from `tokens`, so n is the number of sequences given. Weight masks
follow Wang et al. 2024 ("Differentiation and specialization of attention heads via
the refined local learning coefficient"): a head's weights are its query and output
projections and its key/value projections (under grouped-query attention the key/value
head is shared with the other heads of its group, and moves with each of them).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..io.run_checkpoints import list_checkpoints, load_checkpoint_params
from ..model.config import ModelConfig
from ..model.losses import mean_loss
from .llc import (
    DEFAULT_SGLD,
    LLCResult,
    SGLDConfig,
    estimate_llc,
    estimate_llcs,
    mean_acceptance,
    refined_llc,
)

LLC_FILE = "llc.jsonl"  # one record per checkpoint, in the run directory

# the heads' weights, by which axis (after `layer`) indexes the head
_QUERY_HEAD = ("W_Q", "W_O", "b_Q")
_KV_HEAD = ("W_K", "W_V", "b_K", "b_V")


@functools.lru_cache(maxsize=32)
def token_loss(cfg: ModelConfig):
    """`loss(params, tokens [batch, pos]) -> scalar`: the model's mean next-token loss
    (one function per config, so repeated estimates reuse the compiled sampler)."""
    return functools.partial(_loss, cfg=cfg)


def _loss(params, tokens, cfg):
    return mean_loss(params, tokens, cfg)


def _check_tokens(tokens, cfg: ModelConfig) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must be [n, pos] with pos >= 2 (got shape {tokens.shape}): sequences "
            "whose next-token loss the LLC is measured on"
        )
    if tokens.min() < 0 or tokens.max() >= cfg.d_vocab:
        raise ValueError(f"token ids must lie in [0, {cfg.d_vocab}) for this model")
    return tokens.astype(np.int32)


def model_llc(
    params, cfg: ModelConfig, tokens, key, config: SGLDConfig = DEFAULT_SGLD, *, mask=None
) -> LLCResult:
    """The LLC of the model at `params` on the sequences `tokens [n, pos]` (or the
    refined LLC of the weights `mask` selects, `weight_mask`)."""
    tokens = _check_tokens(tokens, cfg)
    return estimate_llc(token_loss(cfg), params, jnp.asarray(tokens), key, config, mask=mask)


def weight_mask(params, cfg: ModelConfig, select) -> dict:
    """A 0/1 mask like `params` selecting: "all"; "embed" (`W_E`, `W_pos`); "unembed"
    (`W_U`, `b_U`); ("layer", l) every weight of block l; ("head", l, h) head h of layer
    l (its W_Q, W_O, b_Q and its key/value head's W_K, W_V, b_K, b_V)."""
    zeros = jax.tree.map(lambda x: np.zeros(np.shape(x), np.float32), params)
    if select == "all":
        return jax.tree.map(lambda x: np.ones_like(x), zeros)
    if select in ("embed", "unembed"):
        names = ("W_E", "W_pos") if select == "embed" else ("W_U", "b_U")
        for name in names:
            if name in zeros:
                zeros[name][...] = 1
        return zeros
    if isinstance(select, tuple) and select[:1] == ("layer",) and len(select) == 2:
        layer = _index_in(select[1], cfg.n_layers, "layer")
        for leaf in zeros["blocks"].values():
            leaf[layer] = 1
        return zeros
    if isinstance(select, tuple) and select[:1] == ("head",) and len(select) == 3:
        layer = _index_in(select[1], cfg.n_layers, "layer")
        head = _index_in(select[2], cfg.n_heads, "head")
        blocks = zeros["blocks"]
        for name in _QUERY_HEAD:
            if name in blocks:
                blocks[name][layer, head] = 1
        for name in _KV_HEAD:
            if name in blocks:
                blocks[name][layer, head // cfg.group_size] = 1
        return zeros
    raise ValueError(
        f"unknown weight selection {select!r}: use 'all', 'embed', 'unembed', "
        "('layer', l) or ('head', l, h)"
    )


def _index_in(value, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < size:
        raise ValueError(f"{what} {value!r} out of range: the model has {size}")
    return int(value)


def head_masks(params, cfg: ModelConfig) -> dict[str, dict]:
    """`{"L0H0": mask, ...}`: one `weight_mask` per attention head."""
    return {
        f"L{layer}H{head}": weight_mask(params, cfg, ("head", layer, head))
        for layer in range(cfg.n_layers)
        for head in range(cfg.n_heads)
    }


def refined_head_llcs(
    params, cfg: ModelConfig, tokens, key, config: SGLDConfig = DEFAULT_SGLD
) -> dict[str, LLCResult]:
    """The refined LLC of every attention head, all heads' chains in one compiled call."""
    tokens = _check_tokens(tokens, cfg)
    masks = head_masks(params, cfg)
    return refined_llc(token_loss(cfg), params, jnp.asarray(tokens), key, masks, config)


def llc_over_checkpoints(
    checkpoints: list[Path], tokens, key, config: SGLDConfig = DEFAULT_SGLD, *, model: int = 0
) -> list[dict]:
    """One record per training checkpoint directory (`.../step_XXXXXXXX`): `{"step",
    "llc_mean", "llc_se", "llc_std", "llc_per_chain", "init_loss", "acceptance",
    "warnings"}`. All checkpoints run in one compiled call (vmapped over their
    parameters) with the same chain keys and minibatches, so differences between steps
    are the model's, not the sampler's."""
    if not checkpoints:
        raise ValueError("no checkpoints to estimate the LLC at")
    loaded = [load_checkpoint_params(path, model=model) for path in checkpoints]
    cfg = loaded[0][1]
    tokens = _check_tokens(tokens, cfg)
    stack = jax.tree.map(lambda *xs: jnp.stack(xs), *[p for p, _, _ in loaded])
    results = estimate_llcs(token_loss(cfg), stack, jnp.asarray(tokens), key, config)
    return [_record(step, result) for (_, _, step), result in zip(loaded, results)]


def _record(step: int, result: LLCResult) -> dict:
    return {
        "step": int(step),
        "llc_mean": result.llc_mean,
        "llc_se": result.llc_se,
        "llc_std": result.llc_std,
        "llc_per_chain": [float(x) for x in result.llc_per_chain],
        "init_loss": result.init_loss,
        "acceptance": None if np.isnan(mean_acceptance(result)) else mean_acceptance(result),
        "mean_loss_trace": [float(x) for x in result.loss_trace.mean(axis=0)],
        "warnings": result.warnings,
    }


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories, in step order."""
    root = Path(run_dir) / "checkpoints"
    return [root / f"step_{step:08d}" for step in list_checkpoints(root)]


def write_llc_records(run_dir: Path, records: list[dict], config: SGLDConfig) -> Path:
    """`llc.jsonl` in the run directory: a header line with the sampler's settings,
    then one record per checkpoint (written whole, then renamed into place)."""
    path = Path(run_dir) / LLC_FILE
    header = {"sampler": {**_config_dict(config), "nbeta": config.resolved_nbeta}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))
    tmp.replace(path)
    return path


def _config_dict(config: SGLDConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def read_llc_records(run_dir: Path) -> tuple[dict, list[dict]]:
    """`(sampler settings, records)` of a run's `llc.jsonl`."""
    lines = (Path(run_dir) / LLC_FILE).read_text().splitlines()
    if not lines:
        raise ValueError(f"{Path(run_dir) / LLC_FILE} is empty")
    header = json.loads(lines[0])
    return header.get("sampler", {}), [json.loads(line) for line in lines[1:] if line.strip()]
