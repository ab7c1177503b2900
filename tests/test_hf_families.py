"""HuggingFace GPT-2, GPT-NeoX (Pythia), Llama, Mistral and Qwen 2 folders through
`load_hf` / `save_hf`, against transformers (Gemma: tests/test_hf_gemma.py).

References: tiny random models built from configs by transformers 5, eager attention,
float32, `save_pretrained` to a folder that `load_hf` reads. Every weight is redrawn,
norm weights and biases included (HF starts norm weights at 1 and biases at 0, where a
dropped bias or a wrong norm would go unnoticed). Sequences (20) are longer than every
sliding window (5) and than the original context of the Llama 3 RoPE scaling (16), so
each of its three frequency bands is used.
"""

from __future__ import annotations

import json
import os
import re

import jax
import ml_dtypes
import numpy as np
import pytest

import mechjax as mj
from mechjax.io import hf_config, hf_config_dict, load_hf, save_hf
from mechjax.io.safetensors_io import load_safetensors, save_safetensors
from mechjax.model.stream import logit_attribution

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4  # max |logit difference| in float32
N_POS, WINDOW, VOCAB = 20, 5, 97
TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def hf_configs() -> dict:
    T = transformers
    llama = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        **TOKENS,
    )
    neox = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        **TOKENS,
    )
    gpt2 = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=3, n_head=4, **TOKENS)
    return {
        "gpt2": T.GPT2Config(**gpt2),
        # untied lm_head, ReLU, a narrower MLP, scores not divided by sqrt(d_head)
        "gpt2_untied_relu_unscaled": T.GPT2Config(
            **gpt2,
            tie_word_embeddings=False,
            activation_function="relu",
            n_inner=40,
            scale_attn_weights=False,
        ),
        # Pythia's layout: parallel attention + MLP, rotary on a quarter of each head
        "neox_parallel_rotary_quarter": T.GPTNeoXConfig(
            **neox, use_parallel_residual=True, rotary_pct=0.25, rotary_emb_base=500.0
        ),
        # sequential blocks, full rotary with linear scaling, no attention biases, tied
        "neox_sequential_rotary_full": T.GPTNeoXConfig(
            **neox,
            use_parallel_residual=False,
            attention_bias=False,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "linear",
                "factor": 2.0,
                "rope_theta": 1e4,
                "partial_rotary_factor": 1.0,
            },
        ),
        # grouped-query attention, Llama 3 RoPE scaling (every band: wavelengths 6, 63,
        # 628, 6283 against the thresholds 4 and 16)
        "llama_gqa_llama3_rope": T.LlamaConfig(
            **llama,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 1e4,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        # every bias Llama can have (q/k/v/o and the MLP's), untied, multi-head
        "llama_biases": T.LlamaConfig(
            **{**llama, "num_key_value_heads": 4},
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
            hidden_act="gelu_pytorch_tanh",
        ),
        # q/k/v biases (none on o_proj), tied; sliding windows on layers 1 and 2 only
        "qwen2_bias_sliding": T.Qwen2Config(
            **{k: v for k, v in llama.items() if k != "head_dim"},
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
        # a sliding window on every layer, multi-query attention
        "mistral_sliding": T.MistralConfig(
            **{**llama, "num_key_value_heads": 1, "num_hidden_layers": 2},
            sliding_window=WINDOW,
        ),
    }


CONV1D = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D stores [in, out]


def randomize_(model, seed: int = 0):
    """Redraw every weight in place: norms and biases N(0, 0.5^2) / N(0, 0.3^2),
    embeddings N(0, 0.1^2) (positions 0.3), matrices N(0, gain^2 / fan_in) with gain 1.5
    for the query/key projections so attention patterns are far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                std = 0.5 if ("norm" in name or ".ln" in name) else 0.3
            elif "wpe" in name:
                std = 0.3
            elif any(e in name for e in ("embed", "wte", "lm_head")):
                std = 0.1
            else:
                fan_in = p.shape[0] if any(c in name for c in CONV1D) else p.shape[1]
                gain = 1.5 if any(q in name for q in ("q_proj", "k_proj", "c_attn", "qkv")) else 1
                gain = 1.5 if "query_key_value" in name else gain
                std = gain * fan_in**-0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def hf_model(hf_cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")
    return randomize_(model.float().eval(), seed)


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tokens)).logits.float().numpy()


def tokens_for(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(2, N_POS))


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def assert_same_params(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# -- logits, the stream and the round trip, per family ---------------------------------------


@pytest.mark.parametrize("name", sorted(hf_configs()))
def test_family_matches_transformers(name, tmp_path):
    hf_cfg = hf_configs()[name]
    model = hf_model(hf_cfg)
    model.save_pretrained(tmp_path / "hf")
    params, cfg = load_hf(tmp_path / "hf")
    tokens = tokens_for(cfg.d_vocab)
    ref = hf_logits(model, tokens)
    logits, stream = mj.run_with_stream(params, tokens, cfg)
    assert max_diff(logits, ref) <= TOL, name
    assert max_diff(mj.forward(params, tokens, cfg), ref) <= TOL

    # the stream is exact: the writes sum to the final residual, and their direct logit
    # attributions (plus the bias) to the logits, to float32 rounding
    resid = np.asarray(stream["final_resid"])
    scale = np.abs(resid).max()
    assert max_diff(stream.residual(cfg), resid) <= 1e-5 * scale
    labels, parts = logit_attribution(params, cfg, stream)
    assert len(labels) == parts.shape[0]
    assert max_diff(parts.sum(axis=0), logits) <= 1e-5 * np.abs(np.asarray(logits)).max() + 1e-5

    # mechjax -> HF folder -> transformers, and back through load_hf, unchanged
    save_hf(params, cfg, tmp_path / "ours")
    back_model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", attn_implementation="eager"
    )
    assert type(back_model) is type(model)
    assert max_diff(hf_logits(back_model.eval(), tokens), logits) <= TOL
    back, cfg_back = load_hf(tmp_path / "ours")
    assert cfg_back == cfg.replace(name="ours")
    assert_same_params(back, params)


def test_each_mechanism_moves_the_logits(tmp_path):
    """The parity tests can fail: each family switch, changed, moves the logits far past
    TOL (so the loader really read it)."""
    configs = hf_configs()
    changes = {
        "neox_parallel_rotary_quarter": [dict(parallel_attn_mlp=False), dict(rotary_dim=None)],
        "llama_gqa_llama3_rope": [dict(rope_scaling=1.0), dict(rope_original_n_ctx=32)],
        "qwen2_bias_sliding": [dict(layer_types=None, sliding_window=None)],
        "mistral_sliding": [dict(sliding_window=WINDOW + 1)],
        "gpt2_untied_relu_unscaled": [dict(query_pre_attn_scalar=None)],
    }
    for name, variants in changes.items():
        model = hf_model(configs[name], seed=1)
        model.save_pretrained(tmp_path / name)
        params, cfg = load_hf(tmp_path / name)
        tokens = tokens_for(cfg.d_vocab, seed=1)
        ref = hf_logits(model, tokens)
        assert max_diff(mj.forward(params, tokens, cfg), ref) <= TOL
        for change in variants:
            moved = max_diff(mj.forward(params, tokens, cfg.replace(**change)), ref)
            assert moved > 100 * TOL, (name, change)
    qwen = load_hf(tmp_path / "qwen2_bias_sliding")[1]
    assert qwen.layer_types == ("global", "local", "local") and qwen.sliding_window == WINDOW
    assert qwen.use_attn_bias and not qwen.has_attn_out_bias


def test_every_site_captures_on_parallel_blocks(tmp_path):
    hf_model(hf_configs()["neox_parallel_rotary_quarter"]).save_pretrained(tmp_path)
    params, cfg = load_hf(tmp_path)
    tokens = tokens_for(cfg.d_vocab)
    logits, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    assert "resid_mid" not in stream and "mlp_out" in stream
    # resid_post = resid_pre + attn_out + mlp_out (both read resid_pre)
    total = stream["resid_pre"] + stream["attn_out"] + stream["mlp_out"]
    assert max_diff(total, stream["resid_post"]) <= 1e-5 * float(np.abs(total).max())
    # an edit at the MLP's output of the last layer moves the logits
    edit = mj.edits.patch("mlp_out", np.zeros_like(stream["mlp_out"]), layer=cfg.n_layers - 1)
    assert max_diff(mj.forward(params, tokens, cfg, edits=[edit]), logits) > 100 * TOL


# -- folder layouts ---------------------------------------------------------------------------


def test_sharded_checkpoint(tmp_path):
    model = hf_model(hf_configs()["neox_parallel_rotary_quarter"], seed=2)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    one, cfg_one = load_hf(tmp_path / "one")
    sharded, cfg = load_hf(tmp_path / "sharded")
    assert cfg == cfg_one.replace(name="sharded")
    assert_same_params(sharded, one)
    tokens = tokens_for(cfg.d_vocab, seed=2)
    assert max_diff(mj.forward(sharded, tokens, cfg), hf_logits(model, tokens)) <= TOL


def test_hub_spellings(tmp_path):
    """GPT-2 as the original `gpt2` checkpoint stores it (no `transformer.` prefix, the
    causal-mask buffers), and Pythia's unembedding under transformers 5's `lm_head`."""
    model = hf_model(hf_configs()["gpt2"], seed=3)
    model.transformer.save_pretrained(tmp_path / "gpt2")  # the bare GPT2Model
    file = tmp_path / "gpt2" / "model.safetensors"
    tensors = load_safetensors(file)
    assert "wte.weight" in tensors
    for i in range(3):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.uint8)).astype(bool)
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_safetensors(file, tensors)
    params, cfg = load_hf(tmp_path / "gpt2")
    tokens = tokens_for(cfg.d_vocab, seed=3)
    assert max_diff(mj.forward(params, tokens, cfg), hf_logits(model, tokens)) <= TOL

    neox = hf_model(hf_configs()["neox_parallel_rotary_quarter"], seed=3)
    neox.save_pretrained(tmp_path / "neox")
    file = tmp_path / "neox" / "model.safetensors"
    tensors = load_safetensors(file)
    tensors["lm_head.weight"] = tensors.pop("embed_out.weight")
    tensors["gpt_neox.layers.0.attention.rotary_emb.inv_freq"] = np.ones(2, np.float32)
    save_safetensors(file, tensors)
    params, cfg = load_hf(tmp_path / "neox")
    assert max_diff(mj.forward(params, tokens, cfg), hf_logits(neox, tokens)) <= TOL


def test_dtypes(tmp_path):
    model = hf_model(hf_configs()["llama_gqa_llama3_rope"], seed=4)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    params, cfg = load_hf(tmp_path / "bf16")  # the stored dtype, bits unchanged
    assert cfg.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}
    k = model.model.layers[2].self_attn.k_proj.weight.detach()
    want = k.view(torch.int16).numpy().reshape(2, 8, 32).transpose(0, 2, 1)
    np.testing.assert_array_equal(np.asarray(params["blocks"]["W_K"][2]).view(np.int16), want)
    params32, cfg32 = load_hf(tmp_path / "bf16", dtype="float32")
    assert cfg32.dtype == "float32"
    np.testing.assert_array_equal(
        np.asarray(params32["blocks"]["W_K"][2]), want.view(ml_dtypes.bfloat16).astype(np.float32)
    )
    # a bf16 model runs and stays close to its float32 reading
    tokens = tokens_for(cfg.d_vocab, seed=4)
    logits16 = np.asarray(mj.forward(params, tokens, cfg), np.float32)
    assert max_diff(logits16, mj.forward(params32, tokens, cfg32)) < 0.1


# -- config.json mapping ----------------------------------------------------------------------


def published_configs() -> dict:
    """config.json fields as the released checkpoints spell them (older spellings)."""
    pythia = dict(
        model_type="gpt_neox",
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        max_position_embeddings=2048,
        rotary_emb_base=10000,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        use_parallel_residual=True,
        vocab_size=50304,
    )
    sizes = {"70m": (512, 6, 8), "160m": (768, 12, 12), "410m": (1024, 24, 16), "1b": (2048, 16, 8)}
    out = {
        "gpt2": dict(model_type="gpt2", activation_function="gelu_new", n_ctx=1024),
        "gpt2_medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16),
        "llama3_2_1b": dict(
            model_type="llama",
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=dict(
                factor=32.0,
                high_freq_factor=4.0,
                low_freq_factor=1.0,
                original_max_position_embeddings=8192,
                rope_type="llama3",
            ),
            tie_word_embeddings=True,
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
        ),
        "qwen2_5_0_5b": dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            sliding_window=32768,
            max_window_layers=21,
            use_sliding_window=False,
            tie_word_embeddings=True,
            hidden_act="silu",
        ),
        "mistral_7b": dict(
            model_type="mistral",
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=32000,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            sliding_window=4096,
            tie_word_embeddings=False,
            hidden_act="silu",
        ),
    }
    for size, (d, n_layers, n_heads) in sizes.items():
        out[f"pythia_{size}"] = dict(
            pythia,
            hidden_size=d,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=4 * d,
        )
    return out


HF_CLASSES = {
    "gpt2": "GPT2Config",
    "gpt_neox": "GPTNeoXConfig",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
}


@pytest.mark.parametrize("name", sorted(published_configs()))
def test_published_configs_map_to_presets(name):
    """Each preset is what its released config.json reads as, in the published (older)
    spelling and as transformers 5's config class rewrites it; and it maps back."""
    raw = published_configs()[name]
    preset = mj.presets.PRESETS[name]()
    assert hf_config(raw, name=preset.name) == preset
    cls = getattr(transformers, HF_CLASSES[raw["model_type"]])
    rewritten = cls(**{k: v for k, v in raw.items() if k != "model_type"}).to_dict()
    assert hf_config(rewritten, name=preset.name) == preset
    assert hf_config(hf_config_dict(preset), name=preset.name) == preset


def test_published_parameter_counts():
    published = dict(
        gpt2=124_439_808,
        gpt2_medium=354_823_168,
        pythia_70m=70_426_624,
        pythia_160m=162_322_944,
        pythia_410m=405_334_016,
        pythia_1b=1_011_781_632,
        llama3_2_1b=1_235_814_400,
        qwen2_5_0_5b=494_032_768,
        mistral_7b=7_241_732_096,
    )
    for name, total in published.items():
        shapes = mj.param_shapes(mj.presets.PRESETS[name]())
        leaves = jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
        assert sum(int(np.prod(s)) for s in leaves) == total, name


# -- bad input: clear errors before compiled code runs -----------------------------------------


@pytest.mark.parametrize(
    "raw, match",
    [
        (
            {"model_type": "bert"},
            "model_type='bert'; mechjax reads gemma, gemma2, gemma3, gemma3_text, gpt2, "
            "gpt_neox, llama, mistral, qwen2",
        ),
        ({}, "model_type=None"),
        (
            {"model_type": "llama", "rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
            "rope_type='yarn'; mechjax implements 'default', 'linear', 'llama3'",
        ),
        (
            {"model_type": "gpt_neox", "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            "'dynamic'",
        ),
        ({"model_type": "qwen2", "rope_scaling": {"rope_type": "longrope"}}, "'longrope'"),
        ({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True}, "inverse_layer_idx"),
        ({"model_type": "gpt2", "activation_function": "gelu_fast"}, "activation 'gelu_fast'"),
        ({"model_type": "llama", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (
            {"model_type": "mistral", "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
            "RoPE scaling on sliding-window layers",
        ),
        (
            {"model_type": "gpt_neox", "hidden_size": 48, "num_attention_heads": 4},
            "rotates 3 of 12",
        ),
    ],
)
def test_unsupported_configs_raise(raw, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        hf_config(raw)


def test_folder_with_unknown_model_type_raises(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'") as err:
        load_hf(tmp_path)  # before any tensor file is looked for
    assert len(str(err.value).splitlines()) == 1


def test_tensor_problems_are_all_listed(tmp_path):
    hf_model(hf_configs()["gpt2"]).save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_safetensors(file)
    tensors["transformer.h.1.attn.c_attn.weight"] = np.zeros((32, 64), np.float32)
    del tensors["transformer.h.2.mlp.c_fc.bias"]
    tensors["transformer.h.0.attn.c_attn.extra"] = np.zeros(3, np.float32)
    save_safetensors(file, tensors)
    with pytest.raises(ValueError) as err:
        load_hf(tmp_path)
    message = str(err.value)
    assert "3 problems" in message
    assert "transformer.h.1.attn.c_attn.weight has shape [32, 64], expected [32, 96]" in message
    assert "missing transformer.h.2.mlp.c_fc.bias [128]" in message
    assert "unexpected transformer.h.0.attn.c_attn.extra" in message

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no embed_tokens.weight .* a Llama checkpoint"):
        load_hf(tmp_path)


def test_save_names_what_no_family_expresses(tmp_path):
    toy = mj.presets.attn_only(1, d_model=16, n_heads=2, d_vocab=11, n_ctx=8)
    llama = mj.presets.llama3_2_1b()
    cases = [
        (toy, "no HuggingFace GPT-2 equivalent: .*d_mlp=None"),
        (toy.replace(positional="none"), "no HuggingFace equivalent: positional='none'"),
        (llama.replace(parallel_attn_mlp=True), "Llama / Mistral / Qwen 2 equivalent: .*parallel"),
        (llama.replace(use_mlp_bias=True, use_attn_bias=True, use_attn_out_bias=False), "Qwen 2"),
        (mj.presets.pythia_70m().replace(n_kv_heads=2), "GPT-NeoX equivalent: n_kv_heads=2"),
        (
            mj.presets.qwen2_5_0_5b().replace(
                layer_types=("local",) * 24, sliding_window=8, rope_scaling=2.0
            ),
            "sliding-window layers too",
        ),
    ]
    for cfg, match in cases:
        with pytest.raises(ValueError, match=match):
            hf_config_dict(cfg)
    shapes = mj.param_shapes(toy)
    params = {k: np.zeros(s, np.float32) for k, s in shapes.items() if k != "blocks"}
    params["blocks"] = {k: np.zeros(s, np.float32) for k, s in shapes["blocks"].items()}
    with pytest.raises(ValueError, match="GPT-2 equivalent"):
        save_hf(params, toy, tmp_path / "x")
    assert not os.path.exists(tmp_path / "x")
