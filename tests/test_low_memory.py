"""Full-size models within memory: 16-bit weights computed in float32 on a CPU, random
init without a float32 copy, and the streaming loader (its arrays adopted by JAX
without a copy) against an eager reading of the same files.

References: the same model in float32 (16-bit weights widen exactly); the previous
one-operation-at-a-time init; the `safetensors` library's eager reads with the layouts
written out by hand. Memory and speed themselves are measured by
experiments/benchmarks/full_size.py, not here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.model import unembed

BF16 = np.dtype(ml_dtypes.bfloat16)


def _as(params, dtype):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x).astype(dtype), params)


@pytest.mark.parametrize("name", ["gemma2_gqa", "mlp_gelu"])  # tied and untied unembeddings
def test_16_bit_weights_compute_in_float32_on_a_cpu(name, monkeypatch):
    # a vocabulary wider than a chunk: the unembedding widens chunk by chunk (the last
    # chunk overlapping the one before: 37 columns in chunks of 10)
    monkeypatch.setattr(unembed, "VOCAB_CHUNK", 10)
    cfg32 = SMALL_CONFIGS[name].replace(name=f"{name}-chunked")  # not compiled before
    cfg16 = cfg32.replace(dtype="bfloat16")
    assert cfg16.activation_dtype == "float32" and jax.default_backend() == "cpu"
    params16 = _as(random_model(cfg32), jnp.bfloat16)
    tokens = random_tokens(cfg32, 2, 9)
    logits16, stream = mj.run_with_stream(params16, tokens, cfg16)
    want = mj.forward(_as(params16, jnp.float32), tokens, cfg32)  # the same numbers, widened
    assert logits16.dtype == jnp.float32
    assert {x.dtype for x in stream.acts.values()} == {np.dtype(np.float32)}
    np.testing.assert_allclose(logits16, want, rtol=1e-6, atol=1e-6)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params16)} == {BF16}  # untouched
    # asked for explicitly, bfloat16 activations: close to, not equal to, float32
    cfg_bf = cfg16.replace(compute_dtype="bfloat16")
    logits_bf = mj.forward(params16, tokens, cfg_bf)
    assert logits_bf.dtype == jnp.bfloat16
    diff = np.abs(np.asarray(logits_bf, np.float32) - np.asarray(want)).max()
    assert 0 < diff < 0.1 * np.abs(np.asarray(want)).max()


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="compute_dtype='int8'"):
        SMALL_CONFIGS["mlp_gelu"].replace(compute_dtype="int8")


def test_init_in_16_bits_equals_the_float32_draw_rounded():
    cfg = SMALL_CONFIGS["gemma2_gqa"]
    key = jax.random.key(3)
    p32 = mj.init_params(key, cfg)
    p16 = mj.init_params(key, cfg.replace(dtype="bfloat16"))
    for a, b in zip(jax.tree_util.tree_leaves(p32), jax.tree_util.tree_leaves(p16)):
        assert b.dtype == BF16
        np.testing.assert_array_equal(
            np.asarray(a.astype(jnp.bfloat16)).view(np.uint16), np.asarray(b).view(np.uint16)
        )
    # and the float32 draw is N(0, 1/fan_in): the scale survives the single program
    w = np.asarray(p32["blocks"]["W_out"])
    assert np.std(w) * np.sqrt(cfg.d_mlp) == pytest.approx(1.0, abs=0.05)


def test_streamed_loader_equals_an_eager_reading(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    H, K, E, D, M, L = 4, 2, 8, 32, 48, 3
    hf_cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=D, intermediate_size=M, num_hidden_layers=L,
        num_attention_heads=H, num_key_value_heads=K, head_dim=E, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="16KB")  # 2+ shards
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    eager = {}
    for file in tmp_path.glob("*.safetensors"):
        eager.update(safetensors_numpy.load_file(file))  # the library's in-memory reads

    def layer(name):
        return [eager[f"model.layers.{i}.{name}"] for i in range(L)]

    want = {
        "W_E": eager["model.embed_tokens.weight"],
        "W_U": eager["lm_head.weight"].T,
        "ln_final_w": eager["model.norm.weight"],
        "blocks": {
            "W_Q": np.stack([w.reshape(H, E, D).transpose(0, 2, 1) for w in layer("self_attn.q_proj.weight")]),
            "W_K": np.stack([w.reshape(K, E, D).transpose(0, 2, 1) for w in layer("self_attn.k_proj.weight")]),
            "W_V": np.stack([w.reshape(K, E, D).transpose(0, 2, 1) for w in layer("self_attn.v_proj.weight")]),
            "W_O": np.stack([w.reshape(D, H, E).transpose(1, 2, 0) for w in layer("self_attn.o_proj.weight")]),
            "W_gate": np.stack([w.T for w in layer("mlp.gate_proj.weight")]),
            "W_in": np.stack([w.T for w in layer("mlp.up_proj.weight")]),
            "W_out": np.stack([w.T for w in layer("mlp.down_proj.weight")]),
            "ln1_w": np.stack(layer("input_layernorm.weight")),
            "ln2_w": np.stack(layer("post_attention_layernorm.weight")),
        },
    }  # fmt: skip
    for dtype in ("bfloat16", "float32"):
        params, cfg = mj.io.load_hf(tmp_path, dtype=dtype)
        assert cfg.dtype == dtype
        got_leaves = jax.tree_util.tree_leaves_with_path(params)
        np_dtype = np.dtype(dtype)
        want_tree = jax.tree_util.tree_map(lambda x, d=np_dtype: x.astype(d), want)
        assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(want_tree)
        for (path, got), expected in zip(got_leaves, jax.tree_util.tree_leaves(want_tree)):
            assert got.dtype == expected.dtype, path
            bits = f"u{expected.dtype.itemsize}"  # bit for bit
            np.testing.assert_array_equal(np.asarray(got).view(bits), expected.view(bits), path)
            # the loader's aligned buffer is the array JAX holds (no copy on a CPU)
            assert got.unsafe_buffer_pointer() % 64 == 0
