"""HuggingFace Gemma checkpoints: `load_hf` / `save_hf` against transformers, and our
safetensors reader/writer against the `safetensors` package (the other families:
tests/test_hf_families.py).

References: tiny random `GemmaForCausalLM` / `Gemma2ForCausalLM` / `Gemma3ForCausalLM`
(and the multimodal `Gemma3ForConditionalGeneration`) built from configs by transformers
5, eager attention, float32. Every weight is redrawn, norm weights included (HF starts
them at 0, where a wrong `1 + w` would go unnoticed), with large enough query/key weights
that the soft-caps bite; sequences (12) are longer than the sliding window (4).
"""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_tokens

import mechjax as mj
from mechjax.io.hf import load_hf, save_hf
from mechjax.io.hf_config import hf_config
from mechjax.io.safetensors_io import (
    SafetensorsFile,
    load_safetensors,
    read_header,
    save_safetensors,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-4  # max |logit difference| in float32
N_POS, WINDOW = 12, 4
COMMON = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def hf_configs() -> dict:
    T = transformers
    gemma3_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    return {
        "gemma1": T.GemmaConfig(num_hidden_layers=3, **COMMON),
        # multi-query attention, untied unembedding (lm_head) and attention biases
        "gemma1_mqa_untied_bias": T.GemmaConfig(
            num_hidden_layers=2,
            **{**COMMON, "num_key_value_heads": 1},
            tie_word_embeddings=False,
            attention_bias=True,
        ),
        # layer_types left to HF's default (even layers sliding-window)
        "gemma2": T.Gemma2Config(
            num_hidden_layers=4,
            sliding_window=WINDOW,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
            query_pre_attn_scalar=12,
            **COMMON,
        ),
        # two RoPE bases, linear scaling on the global layer (as Gemma 3 4B+)
        "gemma3": T.Gemma3TextConfig(
            num_hidden_layers=4,
            sliding_window=WINDOW,
            layer_types=gemma3_types,
            query_pre_attn_scalar=12,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
            **COMMON,
        ),
    }


def randomise_(model, seed: int = 0):
    """Redraw every weight in place: norms N(0, 0.5^2), embeddings N(0, 0.1^2), biases
    N(0, 0.3^2), matrices N(0, gain^2 / fan_in) with gain 1.5 for q/k so scores pass 5."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                std = 0.5
            elif "embed" in name:
                std = 0.1  # (tied) logits of a few units: the final soft-cap bends, not saturates
            elif p.ndim == 1:
                std = 0.3
            else:
                gain = 1.5 if ("q_proj" in name or "k_proj" in name) else 1.0
                std = gain * p.shape[1] ** -0.5  # nn.Linear weight is [out, in]
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def hf_model(hf_cfg, seed: int = 0):
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")
    return randomise_(model.float().eval(), seed)


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tokens)).logits.float().numpy()


def tokens_for(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(2, N_POS))


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# -- safetensors ---------------------------------------------------------------------------


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "f16": rng.normal(size=(4,)).astype(np.float16),
        "bf16": rng.normal(size=(2, 3, 2)).astype(ml_dtypes.bfloat16),
        "f64": np.array(2.5),  # 0-d
        "i64": rng.integers(-(2**40), 2**40, size=(6,)),
        "i32": rng.integers(-100, 100, size=(2, 2)).astype(np.int32),
        "u8": rng.integers(0, 255, size=(7,)).astype(np.uint8),
        "bool": rng.random(5) > 0.5,
        "empty": np.zeros((0, 3), np.float32),
    }


def test_reader_agrees_with_safetensors_package(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "ref.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={"who": "reference"})
    with SafetensorsFile(path) as f:
        assert f.metadata == {"who": "reference"}
        assert set(f) == set(tensors)
        for name, want in tensors.items():
            got = f[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
    # bf16 written by torch: the raw 16-bit patterns must come back unchanged
    from safetensors.torch import save_file

    w = torch.randn(3, 5, dtype=torch.float32).to(torch.bfloat16)
    save_file({"w": w}, str(tmp_path / "torch.safetensors"))
    got = load_safetensors(tmp_path / "torch.safetensors")["w"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.view(np.int16), w.view(torch.int16).numpy())
    np.testing.assert_array_equal(got.astype(np.float32), w.float().numpy())


def test_writer_agrees_with_safetensors_package(tmp_path):
    tensors = sample_tensors()
    tensors["strided"] = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors, metadata={"format": "np"})
    back = safetensors_numpy.load_file(str(path))
    assert set(back) == set(tensors)
    for name, want in tensors.items():
        assert back[name].dtype == want.dtype and back[name].shape == want.shape, name
        np.testing.assert_array_equal(back[name], want)
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "np"}
    assert read_header(path)[2] % 8 == 0  # byte buffer starts aligned


def test_malformed_safetensors_raise(tmp_path):
    path = tmp_path / "x.safetensors"
    save_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(ValueError, match="cover 64 bytes of a 56-byte buffer"):
        read_header(tmp_path / "cut.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="too short"):
        read_header(tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match="cannot store"):
        save_safetensors(tmp_path / "o.safetensors", {"o": np.array(["a"], object)})


# -- loading: logits against transformers --------------------------------------------------


@pytest.mark.parametrize("name", sorted(hf_configs()))
def test_logits_match_transformers(name, tmp_path):
    hf_cfg = hf_configs()[name]
    model = hf_model(hf_cfg)
    model.save_pretrained(tmp_path)
    params, cfg = load_hf(tmp_path)
    tokens = tokens_for(cfg.d_vocab)
    ref = hf_logits(model, tokens)
    ours = mj.forward(params, tokens, cfg)
    assert max_diff(ours, ref) <= TOL

    assert cfg.dtype == "float32" and cfg.n_layers == hf_cfg.num_hidden_layers
    assert cfg.tied_embeddings == ("W_U" not in params) == hf_cfg.tie_word_embeddings
    if name == "gemma2":
        assert cfg.layer_types == ("local", "global", "local", "global")
        # the test can fail: each of these details, changed, moves the logits far past TOL
        for change in (
            dict(attn_logit_softcap=None),
            dict(final_logit_softcap=None),
            dict(sliding_window=WINDOW + 1),  # the window boundary (q - k < window)
            dict(norm_weight_offset=0.0),
        ):
            assert max_diff(mj.forward(params, tokens, cfg.replace(**change)), ref) > 100 * TOL
    if name == "gemma3":
        assert (cfg.rope_base, cfg.rope_local_base, cfg.rope_scaling) == (1e6, 1e4, 4.0)
        assert max_diff(mj.forward(params, tokens, cfg.replace(rope_scaling=1.0)), ref) > 100 * TOL


def test_sharded_checkpoint(tmp_path):
    model = hf_model(hf_configs()["gemma2"], seed=1)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    one, cfg_one = load_hf(tmp_path / "one")
    sharded, cfg = load_hf(tmp_path / "sharded")
    assert cfg == cfg_one.replace(name="sharded")
    jax.tree_util.tree_map(np.testing.assert_array_equal, sharded, one)
    tokens = tokens_for(cfg.d_vocab, seed=1)
    assert max_diff(mj.forward(sharded, tokens, cfg), hf_logits(model, tokens)) <= TOL


def test_multimodal_gemma3_language_model(tmp_path):
    T = transformers
    text = T.Gemma3TextConfig(
        num_hidden_layers=2,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        **{**COMMON, "vocab_size": 120},
    )
    vision = T.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    mm = T.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=117,
        eoi_token_index=118,
        image_token_index=119,
    )
    model = T.Gemma3ForConditionalGeneration(mm).float().eval()
    randomise_(model, seed=2)
    model.config._attn_implementation = "eager"
    model.save_pretrained(tmp_path)
    params, cfg = load_hf(tmp_path)  # vision tower and projector are left out
    assert cfg.qk_norm and cfg.layer_types == ("local", "global")
    tokens = tokens_for(110, seed=2)  # text tokens only
    assert max_diff(mj.forward(params, tokens, cfg), hf_logits(model, tokens)) <= TOL


def test_dtypes(tmp_path):
    model = hf_model(hf_configs()["gemma1"], seed=3)
    model.save_pretrained(tmp_path / "f32")
    # float32 checkpoint read as bfloat16: rounded to nearest like torch's .to(bfloat16)
    params, cfg = load_hf(tmp_path / "f32", dtype="bfloat16")
    assert cfg.dtype == "bfloat16"
    q = model.model.layers[1].self_attn.q_proj.weight.detach().to(torch.bfloat16)
    want = q.view(torch.int16).numpy().reshape(4, 8, 32).transpose(0, 2, 1)
    np.testing.assert_array_equal(np.asarray(params["blocks"]["W_Q"][1]).view(np.int16), want)
    # a bfloat16 checkpoint keeps its dtype (and its exact bits) by default
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    params16, cfg16 = load_hf(tmp_path / "bf16")
    assert cfg16.dtype == "bfloat16"
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(
            np.asarray(a).view(np.int16), np.asarray(b).view(np.int16)
        ),
        params16,
        params,
    )
    with pytest.raises(ValueError, match="dtype="):
        load_hf(tmp_path / "f32", dtype="int8")


# -- loading: errors -------------------------------------------------------------------------


def test_tensor_problems_are_all_listed(tmp_path):
    hf_model(hf_configs()["gemma2"]).save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_safetensors(file)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_safetensors(file, tensors)
    with pytest.raises(ValueError) as err:
        load_hf(tmp_path)
    message = str(err.value)
    assert "3 problems" in message
    assert "missing model.layers.2.mlp.up_proj.weight [48, 32]" in message
    assert "unexpected model.layers.0.self_attn.extra.weight" in message
    assert "model.layers.1.self_attn.k_proj.weight has shape [8, 32], expected [16, 32]" in message


def test_folder_problems_raise(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_hf(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.json is missing"):
        load_hf(tmp_path)
    hf_configs()["gemma1"].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither model.safetensors"):
        load_hf(tmp_path)


# -- config.json mapping ---------------------------------------------------------------------


def test_hf_defaults_map_to_presets():
    T = transformers
    gemma_2b = T.GemmaConfig(
        hidden_size=2048, intermediate_size=16_384, num_hidden_layers=18,
        num_attention_heads=8, num_key_value_heads=1,
    )  # fmt: skip
    gemma3_1b = T.Gemma3TextConfig(
        vocab_size=262_144, hidden_size=1152, intermediate_size=6912,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32_768,
        sliding_window=512,
    )  # fmt: skip
    pairs = [
        (gemma_2b, mj.presets.gemma_2b()),
        (T.Gemma2Config(), mj.presets.gemma2_2b()),  # HF's defaults are Gemma 2 2B
        (gemma3_1b, mj.presets.gemma3_1b()),
    ]
    for hf_cfg, preset in pairs:
        assert hf_config(hf_cfg.to_dict(), name=preset.name) == preset


def test_legacy_config_fields_follow_transformers():
    """Older config.json spellings, resolved by transformers' own config classes."""
    T = transformers
    sizes = dict(hidden_size=32, num_attention_heads=4, head_dim=8, num_key_value_heads=2)
    legacy = {
        "gemma": (T.GemmaConfig, dict(hidden_act="gelu", rope_theta=5e4, rope_scaling=None)),
        "gemma2": (
            T.Gemma2Config,
            dict(num_hidden_layers=5, rope_theta=2e4, sliding_window=16, hidden_act="x"),
        ),
        "gemma3_text": (
            T.Gemma3TextConfig,
            dict(
                num_hidden_layers=7,
                sliding_window_pattern=3,
                rope_theta=2e6,
                rope_local_base_freq=3e4,
                rope_scaling={"rope_type": "linear", "factor": 8.0},
            ),
        ),
    }
    for model_type, (cls, fields) in legacy.items():
        raw = {"model_type": model_type, **sizes, **fields}
        ours = hf_config(raw)
        ref = cls(**{k: v for k, v in raw.items() if k != "model_type"})
        hf_act = ref.hidden_act if model_type == "gemma" else ref.hidden_activation
        assert hf_act == "gelu_pytorch_tanh" and ours.act_fn == "gelu_tanh"
        rope = ref.rope_parameters
        if model_type == "gemma":
            assert ours.layer_types is None and ours.rope_base == rope["rope_theta"]
            continue
        kinds = {"sliding_attention": "local", "full_attention": "global"}
        assert ours.layer_types == tuple(kinds[t] for t in ref.layer_types)
        if model_type == "gemma2":
            assert ours.rope_base == rope["rope_theta"] and ours.rope_local_base is None
        else:
            assert ours.rope_base == rope["full_attention"]["rope_theta"]
            assert ours.rope_scaling == rope["full_attention"]["factor"]
            assert ours.rope_local_base == rope["sliding_attention"]["rope_theta"]
            assert rope["sliding_attention"]["rope_type"] == "default"


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"model_type": "bert"}, "model_type='bert'; mechjax reads gemma, gemma2"),
        ({"model_type": "gemma2", "use_bidirectional_attention": True}, "bidirectional"),
        ({"model_type": "gemma2", "hidden_activation": "silu"}, "activation 'silu'"),
        (
            {"model_type": "gemma2", "rope_parameters": {"rope_type": "yarn", "factor": 2.0}},
            "rope_type='yarn'",
        ),
        ({"model_type": "gemma2", "sliding_window": None}, "no sliding_window"),
    ],
)
def test_unsupported_configs_raise(raw, match):
    with pytest.raises(ValueError, match=match):
        hf_config(raw)


# -- saving ----------------------------------------------------------------------------------


def numpy_params(cfg: mj.ModelConfig, seed: int) -> dict:
    """Random float32 params straight from numpy (no per-shape JAX compiles), scaled like
    `randomise_`: norms N(0, 0.5^2), W_E N(0, 0.1^2), matrices N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)

    def draw(name, shape):
        if name.startswith("ln") or name.endswith("norm_w"):
            std = 0.5
        elif name == "W_E":
            std = 0.1
        else:
            std = shape[-2] ** -0.5 if len(shape) >= 2 else 0.3
        return jax.numpy.asarray(rng.normal(0.0, std, shape).astype(np.float32))

    shapes = mj.param_shapes(cfg)
    params = {k: draw(k, s) for k, s in shapes.items() if k != "blocks"}
    params["blocks"] = {k: draw(k, s) for k, s in shapes["blocks"].items()}
    return params


@pytest.mark.parametrize("name", ["gemma1_mqa", "gemma2_gqa", "gemma3"])
def test_save_hf_runs_in_transformers(name, tmp_path):
    cfg = SMALL_CONFIGS[name]
    params = numpy_params(cfg, seed=4)
    save_hf(params, cfg, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    tokens = random_tokens(cfg, n_pos=cfg.n_ctx)
    assert max_diff(mj.forward(params, tokens, cfg), hf_logits(model.eval(), tokens)) <= TOL
    back, cfg_back = load_hf(tmp_path)
    assert cfg_back == cfg.replace(name=os.path.basename(tmp_path))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_save_rejects_what_gemma_cannot_express(tmp_path):
    cfg = SMALL_CONFIGS["gemma2_gqa"].replace(use_mlp_bias=True, rotary_dim=4)
    with pytest.raises(ValueError, match="no HuggingFace Gemma equivalent") as err:
        save_hf(numpy_params(cfg, seed=0), cfg, tmp_path)
    assert "use_mlp_bias=True" in str(err.value) and "rotary_dim=4" in str(err.value)
    assert not (tmp_path / "config.json").exists()
