"""Cached generation against HuggingFace `generate` on the same tiny random model, with
a left-padded ragged batch and a sliding window shorter than the sequences."""

from __future__ import annotations

import numpy as np
import pytest

import mechjax as mj
from mechjax.io.hf import load_hf
from mechjax.model.generate import generate
from mechjax.model.padding import pad_sequences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_NEW = 8


def test_greedy_generation_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=3,
        max_position_embeddings=64,
        sliding_window=4,
        query_pre_attn_scalar=8,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    model = transformers.Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init: decisive, not uniform, logits
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.mul_(3.0)
    model.config._attn_implementation = "eager"
    model.save_pretrained(tmp_path)
    params, cfg = load_hf(tmp_path, dtype="float32")

    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, n).tolist() for n in (9, 5, 7)]
    tokens, mask = pad_sequences(prompts, 0, "left")
    ours = generate(params, tokens, cfg, max_new_tokens=N_NEW, mask=mask).new_tokens
    with torch.no_grad():
        theirs = model.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=N_NEW,
            do_sample=False,
            pad_token_id=0,
        )[:, tokens.shape[1] :].numpy()
    # equal up to the first step where our top two logits are a near-tie (random models)
    for row in range(len(prompts)):
        differ = np.flatnonzero(ours[row] != theirs[row])
        if differ.size:
            step = differ[0]
            grown = np.concatenate([tokens[row], ours[row, :step]])[None]
            grown_mask = np.concatenate([mask[row], np.ones(step, bool)])[None]
            last = np.sort(np.asarray(mj.forward(params, grown, cfg, mask=grown_mask)[0, -1]))
            assert last[-1] - last[-2] < 1e-3, f"prompt {row} differs at step {step}"
    assert (ours == theirs).mean() > 0.5  # the comparison is not vacuous
