"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT",
the ROME paper, Section 2.1): where does the model keep what it needs to predict the
correct token?

1. Clean run on the prompt; the correct token is `answer` (default: the clean run's top
   token at the last position).
2. Corrupted runs: Gaussian noise `N(0, noise_std^2)` is added to the token embeddings
   (the `embed` site, before positions are added) at the `subject_pos` positions;
   `noise_std = noise_scale * std(embeddings)` with `noise_scale = 3` as in the paper
   and the std taken over every entry of `W_E` (times the embedding scale, for models
   that scale embeddings), unless given. `n_samples` noise draws are averaged.
3. Restorations, each in every corrupted run: the clean value of one activation is
   patched back in, and the probability of the correct token at the last position is
   measured (averaged over noise draws and prompts):
   * hidden: the residual stream after block `l` (`resid_post`) at one position;
   * mlp / attn: the MLP (`mlp_out`) or attention (`attn_out`) outputs of a window of
     `window` layers centered on `l` at one position: layers
     `max(0, l - window // 2) <= l' < min(n_layers, l - window // 2 + window)` (the
     paper uses 10).

Every restoration of all three maps runs under `jax.vmap` in one compiled call, with the
noise draws folded into the batch. The paper also reports the indirect effect
(restored minus corrupted probability); that is `result.hidden - result.corrupted_prob`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_mask, check_token_ids
from ..model.config import ModelConfig
from ..model.edits import steer
from ..model.transformer import run
from . import sweep
from .activation_patching import cell_patch
from .metrics import answer_prob, readout

KINDS = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


@dataclasses.dataclass(frozen=True)
class TracingResult:
    """Heat maps `[layer, pos]` of the correct token's probability after each
    restoration (None for a kind not traced, e.g. `mlp` in attention-only models),
    and the probabilities of the clean and corrupted runs."""

    hidden: jax.Array | None
    mlp: jax.Array | None
    attn: jax.Array | None
    clean_prob: float
    corrupted_prob: float
    answer: jax.Array
    noise_std: float
    window: int
    subject_pos: tuple[int, ...]


def embedding_std(params, cfg: ModelConfig) -> float:
    """Standard deviation over all entries of the token embeddings as the model uses
    them: `W_E * embed_scale`."""
    return float(jnp.std(params["W_E"].astype(jnp.float32))) * cfg.embed_scale


def window_layers(layer: int, window: int, n_layers: int) -> np.ndarray:
    """The `window` layer indices centered on `layer`, clipped to the model: `[window]`
    ints whose set is `max(0, l - w//2) .. min(n_layers, l - w//2 + w) - 1`.

    The fixed length keeps cells vmappable: clipping repeats an end layer, and an
    edit's layer selector is a set, so repeats change nothing."""
    start = layer - window // 2
    return np.clip(start + np.arange(window), 0, n_layers - 1)


def _cells(kinds, n_layers: int, n_pos: int, window: int) -> dict[str, jax.Array]:
    """Every restoration of every kind as one flat batch of cells.

    `pos [cell]`, and per kind the layers it restores `[cell, width]` (width 1 for
    hidden, `window` otherwise) or -1, which selects no layer, in cells of other kinds.
    """
    pos, layers = [], {k: [] for k in kinds}
    for kind in kinds:
        for layer in range(n_layers):
            own = [layer] if kind == "hidden" else window_layers(layer, window, n_layers)
            for p in range(n_pos):
                pos.append(p)
                for other in kinds:
                    width = 1 if other == "hidden" else window
                    layers[other].append(own if other == kind else [-1] * width)
    return {"pos": jnp.asarray(pos, jnp.int32)} | {
        k: jnp.asarray(np.asarray(v), jnp.int32) for k, v in layers.items()
    }


def trace_noise(key, shape: tuple[int, int, int], subject_pos, noise_std: float, n_samples: int):
    """The noise added to the embeddings: `[n_samples * batch, pos, d_model]`, zero outside
    `subject_pos`; rows are sample-major (row = sample * batch + example)."""
    n_batch, n_pos, d_model = shape
    noise = noise_std * jax.random.normal(key, (n_samples * n_batch, n_pos, d_model))
    mask = jnp.zeros((n_pos,)).at[jnp.asarray(subject_pos)].set(1.0)
    return noise * mask[None, :, None]


@functools.partial(jax.jit, static_argnames=("cfg", "kinds", "window", "chunk_size"))
def _trace(params, tokens, noise, answer, mask, *, cfg, kinds, window, chunk_size):
    sites = tuple(KINDS[k] for k in kinds)
    n_samples = noise.shape[0] // tokens.shape[0]
    n_pos = tokens.shape[1]
    # every run scores the logits at the last position only
    positions, read_clean = readout(answer_prob(answer), n_pos)
    _, read_metric = readout(answer_prob(jnp.tile(answer, n_samples)), n_pos)
    clean_logits, clean_acts = run(params, tokens, cfg, capture=sites, readout=positions, mask=mask)
    clean_prob = read_clean(clean_logits)

    noisy_tokens = jnp.tile(tokens, (n_samples, 1))
    noisy_mask = None if mask is None else jnp.tile(mask, (n_samples, 1))
    # restored values, tiled to the noisy batch: [layer, samples * batch, pos, d_model]
    clean_acts = {s: jnp.tile(a, (1, n_samples, 1, 1)) for s, a in clean_acts.items()}
    corrupt = steer("embed", noise.astype(jnp.dtype(cfg.activation_dtype)))
    corrupted_prob = read_metric(
        run(params, noisy_tokens, cfg, edits=(corrupt,), readout=positions, mask=noisy_mask)[0]
    )

    def restore(cell):
        edits = [corrupt]
        for kind in kinds:
            where = {"layer": cell[kind], "pos": cell["pos"]}
            edits.append(cell_patch(KINDS[kind], clean_acts[KINDS[kind]], where))
        logits = run(
            params, noisy_tokens, cfg, edits=tuple(edits), readout=positions, mask=noisy_mask
        )[0]
        return read_metric(logits)

    flat = sweep.map_cells(restore, _cells(kinds, cfg.n_layers, n_pos, window), chunk_size)
    maps = dict(zip(kinds, flat.reshape(len(kinds), cfg.n_layers, n_pos)))
    return maps, clean_prob, corrupted_prob


def causal_trace(
    params,
    cfg: ModelConfig,
    tokens,
    subject_pos,
    *,
    key: jax.Array | None = None,
    noise=None,
    answer=None,
    n_samples: int = 10,
    noise_std: float | None = None,
    noise_scale: float = 3.0,
    window: int = 10,
    kinds=("hidden", "mlp", "attn"),
    chunk_size: int | str | None = "auto",
    mask=None,
) -> TracingResult:
    """Causal tracing heat maps for `tokens [batch, pos]` (prompts of equal length with
    the subject at the same positions; one prompt is `tokens[None]`).

    subject_pos: int or list of positions whose embeddings are corrupted.
    key: PRNG key for the noise; or give the noise itself, `noise [n_samples, batch,
    pos, d_model]` (only its `subject_pos` rows are used). answer: int or [batch]
    correct token ids (default: the clean run's argmax at the last position).
    n_samples: noise draws averaged (taken from `noise` when given).
    noise_std: the noise's std (default `noise_scale * embedding_std(params, cfg)`).
    window: layers per MLP / attention restoration window. kinds: which maps to compute
    ("mlp" is skipped for attention-only models). chunk_size: as in patching sweeps.
    mask: `[batch, pos]` bool, False at padding; the prompts must be left-padded (the
    answer is read at the last column), and the subject positions are columns.
    """
    (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
    mask = check_mask(mask, tokens)
    if mask is not None and not mask[:, -1].all():
        raise ValueError("causal tracing reads the last column: pad the prompts on the left")
    if cfg.n_layers == 0:
        raise ValueError("causal tracing needs a model with at least one layer")
    n_batch, n_pos = tokens.shape
    subject, kinds = _check_options(subject_pos, n_pos, n_samples, window, kinds, cfg)
    chunk_size = sweep.check_chunk_size(chunk_size, tokens.shape[0] * tokens.shape[1])
    if noise_std is None:
        noise_std = noise_scale * embedding_std(params, cfg)
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    answer = _answer_ids(params, cfg, tokens, answer, mask)
    if noise is None:
        if key is None:
            raise ValueError("give key= (a jax PRNG key) for the noise, or noise= itself")
        noise = trace_noise(key, (n_batch, n_pos, cfg.d_model), subject, noise_std, n_samples)
    else:
        noise, noise_std = _given_noise(noise, subject, (n_batch, n_pos, cfg.d_model))
    maps, clean_prob, corrupted_prob = _trace(
        params,
        tokens,
        noise,
        answer,
        None if mask is None else jnp.asarray(mask),
        cfg=cfg,
        kinds=kinds,
        window=window,
        chunk_size=chunk_size,
    )
    return TracingResult(
        hidden=maps.get("hidden"),
        mlp=maps.get("mlp"),
        attn=maps.get("attn"),
        clean_prob=float(clean_prob),
        corrupted_prob=float(corrupted_prob),
        answer=answer,
        noise_std=float(noise_std),
        window=window,
        subject_pos=tuple(int(p) for p in subject),
    )


def _check_options(subject_pos, n_pos: int, n_samples, window, kinds, cfg: ModelConfig):
    """`(subject positions [n], kinds)` checked; "mlp" dropped for attention-only models."""
    subject = np.atleast_1d(np.asarray(subject_pos))
    if (
        subject.ndim != 1
        or subject.size == 0
        or not np.issubdtype(subject.dtype, np.integer)
        or subject.min() < 0
        or subject.max() >= n_pos
    ):
        raise ValueError(
            f"subject_pos={subject_pos!r} must be one or more positions in 0..{n_pos - 1}"
        )
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (layers), got {window!r}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds={kinds!r}: choose from {tuple(KINDS)}")
    if cfg.attn_only:
        kinds = tuple(k for k in kinds if k != "mlp")
    return subject, kinds


def _answer_ids(params, cfg: ModelConfig, tokens, answer, mask=None) -> jax.Array:
    """`[batch]` answer ids: given (checked), or the clean run's argmax at the end."""
    n_batch = tokens.shape[0]
    if answer is None:
        mask = None if mask is None else jnp.asarray(mask)
        answer = jnp.argmax(run(params, tokens, cfg, mask=mask)[0][:, -1], axis=-1)
    else:
        ids = np.asarray(answer)
        if (
            not np.issubdtype(ids.dtype, np.integer)
            or ids.ndim > 1
            or (ids.ndim == 1 and ids.shape[0] != n_batch)
        ):
            raise ValueError(f"answer must be an int or [batch={n_batch}] ints, got {answer!r}")
        check_token_ids(ids, cfg, f"answer ids {ids.tolist()}")
    return jnp.broadcast_to(jnp.asarray(answer, jnp.int32), (n_batch,))


def _given_noise(noise, subject: np.ndarray, shape: tuple[int, int, int]):
    """A user's noise `[n_samples, batch, pos, d_model]`, kept at the subject positions
    only and flattened to `[n_samples * batch, pos, d_model]`; and its std there."""
    noise = jnp.asarray(noise, jnp.float32)
    if noise.ndim != 4 or noise.shape[1:] != shape:
        raise ValueError(
            f"noise must be [n_samples, batch, pos, d_model] = [*, {shape[0]}, {shape[1]}, "
            f"{shape[2]}], got {tuple(noise.shape)}"
        )
    mask = jnp.zeros((shape[1],)).at[jnp.asarray(subject)].set(1.0)
    noise = (noise * mask[:, None]).reshape(-1, shape[1], shape[2])
    return noise, float(jnp.std(noise[:, jnp.asarray(subject)]))
