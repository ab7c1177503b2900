"""The induction circuit of the trained 2-layer attention-only model shipped in
`checkpoints/attn2/` (byte-level, vocabulary 258, BOS 256; Elhage et al. 2021, Olsson et
al. 2022), and the copying heads of the 1-layer model in `checkpoints/attn1/`.

Inputs: a BOS and two copies of 25 random bytes drawn from printable ASCII (plus tab and
newline). The models were trained on Python source mixed with repeated random segments
of the bytes seen in that text; bytes never seen in training (control bytes, >= 0x80)
keep untrained embeddings, on which no head can match tokens (with uniformly random
bytes the best induction score drops from ~0.48 to ~0.27).

What the papers claim and what is checked:
* a layer-1 induction head (TransformerLens induction score > 0.4); a layer-0
  previous-token head. In this model the previous-token job is shared by three layer-0
  heads (scores ~0.32-0.36 each, ~1.0 together), so the bar here is > 0.3 (chance is
  ~0.05), with > 0.8 for the layer's total;
* the induction head copies: positive eigenvalue copying score of its full OV circuit;
  and its attention matches tokens through K-composition: the K-composition term of its
  QK circuit (query token vs the token before the key, via the previous-token head) has
  a positive copying score. (Its *direct* token QK circuit is negative here, ~-0.5: an
  induction head avoids the earlier copy of the current token itself.)
* K-composition dominates: the largest K-composition pair runs from a previous-token head
  into an induction head, the best induction head's strongest K-composition comes from a
  previous-token head, and K-composition exceeds every Q- and V-composition score;
* causally: zero-ablating the induction heads' outputs removes most of the second copy's
  loss advantage, and path patching shows a previous-token head acting through the
  induction heads' keys;
* the 1-layer model has copying heads (positive OV copying for most heads) and no
  induction head (score < 0.3).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import mechjax as mj
from mechjax.activations import heads
from mechjax.causal import path_patching
from mechjax.circuits import eigen as circuit_eigen
from mechjax.circuits import weights as circuits
from mechjax.circuits.paths import k_composition_qk_circuit
from mechjax.data import ByteTokenizer
from mechjax.io import load_model

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SEG_LEN, BATCH, BOS = 25, 16, ByteTokenizer.bos_id
NOT_TEXT = [i for i in range(ByteTokenizer.vocab_size) if not (32 <= i < 127 or i in (9, 10))]
PREVIOUS = 0.3  # previous-token bar for this model (see the module docstring)


def _load(name: str):
    path = CHECKPOINTS / name
    if not path.exists():
        pytest.fail(f"the trained checkpoint {path} is missing: it ships with the repository")
    params, cfg = load_model(path)
    assert cfg.d_vocab == ByteTokenizer.vocab_size and cfg.attn_only
    return params, cfg


def _copies(seed: int = 0) -> np.ndarray:
    """[batch, 1 + 2 * SEG_LEN]: BOS and two copies of random printable bytes."""
    return heads.repeated_tokens(
        seed, BATCH, SEG_LEN, ByteTokenizer.vocab_size, n_repeats=2, bos_id=BOS, exclude=NOT_TEXT
    )


def _scores(params, cfg) -> dict:
    return heads.detect_heads(params, cfg, _copies(), n_repeats=2, seg_len=SEG_LEN, bos_id=BOS)


@functools.lru_cache(maxsize=1)
def _attn2():
    """(params, cfg, head scores) of the shipped 2-layer checkpoint."""
    params, cfg = _load("attn2")
    return params, cfg, _scores(params, cfg)


def _best(score: np.ndarray, layer: int) -> int:
    return int(np.argmax(score[layer]))


def test_induction_and_previous_token_heads_are_found():
    params, cfg, scores = _attn2()
    assert cfg.n_layers == 2
    induction, previous = scores["induction"], scores["previous_token"]
    assert induction.max() > 0.4, induction
    assert np.unravel_index(induction.argmax(), induction.shape)[0] == 1  # lives in layer 1
    assert previous[0].max() > PREVIOUS and previous[0].sum() > 0.8, previous

    ind, prev = _best(induction, 1), _best(previous, 0)
    ov = np.asarray(circuit_eigen.ov_eigenvalue_copying(params, cfg))
    assert ov[1, ind] > 0, ov  # it copies the token it attends to
    composed = k_composition_qk_circuit(params, cfg)[prev, ind]
    assert float(circuit_eigen.eigenvalue_copying(composed)) > 0  # matches via the previous token


def test_the_copying_score_separates_the_induction_heads_from_layer_0():
    """Olsson et al.'s copying score on the trained model: every induction head (score
    above 0.4) copies more than any layer-0 head, and the layer-0 heads sit at the
    chance level of an unrelated head, 2/n - 1 for n distinct tokens in the sequence."""
    params, cfg, scores = _attn2()
    induction, copying = scores["induction"], scores["copying"]
    n = np.mean([len(np.unique(row)) for row in _copies()])
    chance = 2 / n - 1
    inductive = induction > 0.4
    assert inductive[1].sum() >= 4 and not inductive[0].any(), induction
    assert copying[inductive].min() > copying[0].max() + 0.05, copying
    np.testing.assert_allclose(copying[0], chance, atol=0.03)
    labelled = heads.head_table(scores)
    copiers = {(r["layer"], r["head"]) for r in labelled if "copying" in r["labels"]}
    assert copiers and all(layer == 1 for layer, _ in copiers), copiers


def test_k_composition_from_the_previous_token_head_dominates():
    params, cfg, scores = _attn2()
    induction, previous = scores["induction"], scores["previous_token"]
    K = np.asarray(circuits.composition_scores(params, cfg, "K"))[0, :, 1, :]  # [h0, h1]
    h0, h1 = np.unravel_index(K.argmax(), K.shape)
    assert previous[0, h0] > PREVIOUS and induction[1, h1] > 0.4, (K, previous, induction)
    ind = _best(induction, 1)
    assert previous[0, K[:, ind].argmax()] > PREVIOUS  # the induction head's main K source
    for kind in ("Q", "V"):
        other = np.asarray(circuits.composition_scores(params, cfg, kind))[0, :, 1, :]
        assert K.max() > other.max(), (kind, K.max(), other.max())


def _copy_losses(params, cfg, tokens, edits=()) -> tuple[float, float]:
    """Mean next-token loss on the first copy (tokens 2..T) and on the second (2..T)."""
    logits = mj.forward(params, tokens, cfg, edits=edits)
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1))
    nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]  # nll[p] predicts p + 1
    return float(nll[:, 1:SEG_LEN].mean()), float(nll[:, SEG_LEN + 1 :].mean())


def test_ablating_the_induction_heads_removes_the_in_context_advantage():
    params, cfg, scores = _attn2()
    tokens = _copies(seed=1)
    first, second = _copy_losses(params, cfg, tokens)
    assert first - second > 1.0, (first, second)  # the second copy is predicted
    induction_heads = np.flatnonzero(scores["induction"][1] > 0.4)
    ablate = mj.edits.zero_ablate("head_out", layer=1, head=induction_heads)
    _, ablated = _copy_losses(params, cfg, tokens, [ablate])
    lost = (ablated - second) / (first - second)
    assert lost > 0.5, (first, second, ablated)


def test_path_patching_previous_token_head_acts_through_induction_keys():
    params, cfg, scores = _attn2()
    clean = _copies(seed=1)
    corrupted = clean.copy()  # the first copy replaced: nothing to induct from
    corrupted[:, 1 : 1 + SEG_LEN] = _copies(seed=2)[:, 1 : 1 + SEG_LEN]

    def second_copy_logprob(tokens, logits):
        logp = jax.nn.log_softmax(logits[:, SEG_LEN:-1].astype(jnp.float32), -1)
        return jnp.take_along_axis(logp, tokens[:, SEG_LEN + 1 :, None], -1).mean()

    metric = Partial(second_copy_logprob, jnp.asarray(clean))
    induction_heads = np.flatnonzero(scores["induction"][1] > 0.4)
    receivers = sorted({(1, int(h) // cfg.group_size, "k") for h in induction_heads})
    result = path_patching(params, cfg, clean, corrupted, receivers, metric=metric)
    effect = 1.0 - np.asarray(result.normalized)  # 0: no effect, 1: fully corrupted
    sender = int(effect[0].argmax())
    assert scores["previous_token"][0, sender] > PREVIOUS, (effect, scores["previous_token"])
    assert effect[0, sender] > 0.2, effect
    np.testing.assert_allclose(effect[1], 0.0, atol=1e-5)  # no path from layer 1 to itself


def test_one_layer_model_copies_but_has_no_induction_head():
    params, cfg = _load("attn1")
    assert cfg.n_layers == 1
    ov = np.asarray(circuit_eigen.ov_eigenvalue_copying(params, cfg))[0]
    assert (ov > 0).mean() > 0.5 and np.median(ov) > 0.3, ov
    assert _scores(params, cfg)["induction"].max() < 0.3
