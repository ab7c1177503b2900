"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers
with the Tuned Lens"): before the output head, each intermediate residual goes through
its own affine translator `h @ A_l + b_l` (`A_l [d_model, d_model]`, `b_l [d_model]`),
initialised to the identity and trained (Adam) to minimise `KL(final || lens)`, the KL
divergence from the model's final next-token distribution to the lens's, averaged over
positions, examples and layers. The final residual needs no translator (its lens is
the model itself), so a model with `n_layers` layers has `n_layers` translators, for
the residuals after the embeddings and after layers 0 .. n_layers - 2.

    train_tuned_lens(params, cfg, batches, ...) -> TunedLens
    apply_tuned_lens(params, cfg, lens, stream) -> logits [layer + 1, batch, pos, vocab]
    tuned_lens_kl(params, cfg, lens, tokens)    -> KL per entry [layer + 1]
    save_tuned_lens(lens, directory) / load_tuned_lens(directory, cfg)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..model.checks import check_tokens
from ..model.config import ModelConfig
from ..model.params import check_params
from ..model.sites import resolve_capture
from ..model.stream import Stream
from ..model.transformer import run
from ..model.unembed import output_head
from .lens import accumulated_residual

FILENAME = "tuned_lens.npz"


@struct.dataclass
class TunedLens:
    """One affine translator per intermediate residual.

    A [layer, d_model, d_model], b [layer, d_model]: translator l maps the residual
    entry l of `logit_lens` (0: after the embeddings) to `h @ A[l] + b[l]`.
    """

    A: jax.Array
    b: jax.Array

    @classmethod
    def identity(cls, cfg: ModelConfig) -> TunedLens:
        eye = jnp.eye(cfg.d_model, dtype=jnp.float32)
        return cls(
            A=jnp.tile(eye, (cfg.n_layers, 1, 1)),
            b=jnp.zeros((cfg.n_layers, cfg.d_model), jnp.float32),
        )

    def apply(self, params, cfg: ModelConfig, stream: Stream) -> jax.Array:
        return apply_tuned_lens(params, cfg, self, stream)

    def save(self, directory, *, cfg: ModelConfig | None = None, overwrite: bool = False):
        return save_tuned_lens(self, directory, cfg=cfg, overwrite=overwrite)

    @classmethod
    def load(cls, directory, cfg: ModelConfig | None = None) -> TunedLens:
        return load_tuned_lens(directory, cfg)


def _translate(lens: TunedLens, resid: jax.Array) -> jax.Array:
    """resid [layer + 1, batch, pos, d_model] -> translated, the last entry untouched."""
    body = jnp.einsum("lbpd,lde->lbpe", resid[:-1].astype(jnp.float32), lens.A)
    body = body + lens.b[:, None, None, :]
    return jnp.concatenate([body.astype(resid.dtype), resid[-1:]], axis=0)


def _check_lens(lens, cfg: ModelConfig) -> None:
    if not isinstance(lens, TunedLens):
        raise ValueError(f"lens must be a TunedLens, got {type(lens).__name__}")
    expected = ((cfg.n_layers, cfg.d_model, cfg.d_model), (cfg.n_layers, cfg.d_model))
    if (tuple(lens.A.shape), tuple(lens.b.shape)) != expected:
        raise ValueError(
            f"tuned lens shapes A {tuple(lens.A.shape)}, b {tuple(lens.b.shape)} do not fit "
            f"this model (expected A {expected[0]}, b {expected[1]}); train or load the lens "
            "for this model"
        )


def apply_tuned_lens(params, cfg: ModelConfig, lens: TunedLens, stream: Stream) -> jax.Array:
    """Tuned-lens logits `[layer + 1, batch, pos, vocab]` (last entry: the model's)."""
    _check_lens(lens, cfg)
    return output_head(params, cfg, _translate(lens, accumulated_residual(stream, cfg)))


def _kl_per_entry(lens, params, tokens, cfg) -> jax.Array:
    """KL(final || lens) per lens entry [layer + 1], mean over batch and positions."""
    names = resolve_capture("writes", cfg)
    logits, captured = run(params, tokens, cfg, capture=names)
    resid = Stream(captured).accumulated(cfg)[1]
    lens_logprobs = jax.nn.log_softmax(
        output_head(params, cfg, _translate(lens, resid)).astype(jnp.float32), axis=-1
    )
    final_logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    kl = jnp.sum(jnp.exp(final_logprobs) * (final_logprobs - lens_logprobs), axis=-1)
    return kl.mean(axis=(1, 2))


_kl_jit = jax.jit(_kl_per_entry, static_argnums=(3,))


def tuned_lens_kl(params, cfg: ModelConfig, lens: TunedLens, tokens) -> jax.Array:
    """`KL(final || lens)` for each lens entry `[layer + 1]` on `tokens [batch, pos]`
    (the last entry is 0 up to rounding). `TunedLens.identity(cfg)` gives the logit
    lens's KL."""
    _check_lens(lens, cfg)
    check_params(params, cfg)
    check_tokens(tokens, cfg)
    return _kl_jit(lens, params, jnp.asarray(tokens, jnp.int32), cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "optimizer"))
def _train_step(lens, opt_state, params, tokens, *, cfg, optimizer):
    def loss_fn(lens):
        return _kl_per_entry(lens, params, tokens, cfg)[:-1].mean()

    loss, grads = jax.value_and_grad(loss_fn)(lens)
    updates, opt_state = optimizer.update(grads, opt_state, lens)
    return jax.tree_util.tree_map(jnp.add, lens, updates), opt_state, loss


def train_tuned_lens(
    params,
    cfg: ModelConfig,
    batches: Iterable,
    *,
    learning_rate: float = 1e-3,
    epochs: int = 1,
    lens: TunedLens | None = None,
) -> TunedLens:
    """Train a tuned lens with Adam on `batches`: an int array `[n_batches, batch, pos]`
    or an iterable of `[batch, pos]` arrays (an iterable is read once per epoch, so
    pass a list when `epochs > 1`). Starts from `lens` or the identity."""
    check_params(params, cfg)
    if cfg.n_layers == 0:
        raise ValueError("a model without layers has no intermediate residual to translate")
    if not learning_rate > 0 or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"learning_rate must be > 0 and epochs a positive int, got {learning_rate!r}, "
            f"{epochs!r}"
        )
    lens = TunedLens.identity(cfg) if lens is None else lens
    _check_lens(lens, cfg)
    import optax  # here, not at the top: `import mechjax` would pay 0.14 s for it

    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(lens)
    steps = 0
    for _ in range(epochs):
        for tokens in batches:
            check_tokens(tokens, cfg)
            lens, opt_state, loss = _train_step(
                lens,
                opt_state,
                params,
                jnp.asarray(tokens, jnp.int32),
                cfg=cfg,
                optimizer=optimizer,
            )
            steps += 1
    if steps == 0:
        raise ValueError("batches is empty: give at least one [batch, pos] token array")
    if not np.isfinite(float(loss)):
        raise ValueError(f"tuned-lens training diverged (loss {float(loss)}); lower learning_rate")
    return lens


# -- files ---------------------------------------------------------------------------------


def save_tuned_lens(
    lens: TunedLens, directory, *, cfg: ModelConfig | None = None, overwrite: bool = False
) -> Path:
    """Write `directory/tuned_lens.npz` (A, b, and the model's shape) beside a model's
    files; creates the directory. An existing file raises unless `overwrite=True`."""
    if cfg is not None:
        _check_lens(lens, cfg)
    path = Path(directory) / FILENAME
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n_layers": int(lens.A.shape[0]), "d_model": int(lens.A.shape[1])}
    if cfg is not None:
        meta["model_name"] = cfg.name
    with open(path, "wb") as f:
        np.savez(f, A=np.asarray(lens.A), b=np.asarray(lens.b), meta=json.dumps(meta))
    return path


def load_tuned_lens(directory, cfg: ModelConfig | None = None) -> TunedLens:
    """Read a lens written by `save_tuned_lens`; with `cfg`, check it fits the model."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no tuned lens at {path}; save one with save_tuned_lens")
    with np.load(path) as data:
        lens = TunedLens(A=jnp.asarray(data["A"]), b=jnp.asarray(data["b"]))
    if cfg is not None:
        _check_lens(lens, cfg)
    return lens
