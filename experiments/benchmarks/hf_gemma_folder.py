"""A random Gemma 2 model written as an HF folder (`config.json` + safetensors), for the
benchmarks that load the same weights into mechjax and into HF transformers."""

from __future__ import annotations

import time


def hf_gemma2_config(cfg):
    """The HF `Gemma2Config` of `cfg`, written field by field in HF's own names (not through
    mechjax's converter, so the loader is checked against an independent description)."""
    from transformers import Gemma2Config

    kinds = {"local": "sliding_attention", "global": "full_attention"}
    return Gemma2Config(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_head,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        query_pre_attn_scalar=int(cfg.query_pre_attn_scalar),
        sliding_window=cfg.sliding_window,
        layer_types=[kinds[t] for t in cfg.resolved_layer_types],
        attn_logit_softcapping=cfg.attn_logit_softcap,
        final_logit_softcapping=cfg.final_logit_softcap,
        tie_word_embeddings=True,
        dtype="float32",
    )


def write_gemma_folder(cfg, folder: str, seed: int = 0) -> float:
    """Build a random HF Gemma 2 model and `save_pretrained` it; returns the seconds taken.

    HF's own initialisation is skipped (`no_init_weights`) and every weight is drawn
    once: linear weights N(0, 1/fan_in), the embedding N(0, 1/d_model) (HF scales it by
    sqrt(d_model)), norm weights N(0, 0.1^2) (HF multiplies by 1 + w; its zero init would
    hide a dropped offset in the parity check).
    """
    import torch
    from transformers import Gemma2ForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    with no_init_weights():
        model = Gemma2ForCausalLM(hf_gemma2_config(cfg))
    model.tie_weights()  # skipped along with the initialisation
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # the tied lm_head is listed once
            if "norm" in name:
                p.normal_(0.0, 0.1, generator=generator)
            elif "embed_tokens" in name:
                p.normal_(0.0, cfg.d_model**-0.5, generator=generator)
            else:  # nn.Linear stores [out, in]: fan-in is the second axis
                p.normal_(0.0, p.shape[1] ** -0.5, generator=generator)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("the HF model's lm_head is not tied to its embedding")
    model.save_pretrained(folder)
    return time.perf_counter() - start
