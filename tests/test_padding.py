"""Padded batches and cached generation (issue 14): a padded batch equals each prompt
run alone, for every model family's mechanisms; generation with a key/value cache
equals the forward pass on the growing sequence, edits included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechjax as mj
from mechjax.activations import heads, lens
from mechjax.causal import metrics
from mechjax.causal.activation_patching import activation_patching
from mechjax.model import edits as E
from mechjax.model.config import ModelConfig
from mechjax.model.generate import generate, greedy_next_tokens
from mechjax.model.padding import last_token_index, pad_sequences, token_positions

BASE = dict(d_vocab=61, d_model=32, n_layers=2, n_heads=4, d_head=8, n_ctx=32, d_mlp=48)
FAMILIES = {
    # GPT-2: learned positions, LayerNorm, biases, tied embeddings
    "gpt2": dict(act_fn="gelu_tanh", use_attn_bias=True, use_mlp_bias=True, tied_embeddings=True),
    # GPT-NeoX / Pythia: parallel attention and MLP, partial rotary
    "neox": dict(positional="rope", rotary_dim=4, parallel_attn_mlp=True, use_attn_bias=True),
    # Llama 3 / Qwen 2: RMSNorm, SwiGLU, GQA, llama3 RoPE scaling, q/k/v biases only
    "llama": dict(
        n_kv_heads=2,
        act_fn="silu",
        gated_mlp=True,
        normalization="rmsnorm",
        positional="rope",
        rope_scaling=8.0,
        rope_scaling_type="llama3",
        rope_original_n_ctx=16,
        use_attn_bias=True,
        use_attn_out_bias=False,
    ),
    # Gemma 2 / Mistral: sliding-window layers shorter than the prompts, soft-caps
    "gemma2": dict(
        n_kv_heads=2,
        act_fn="gelu_tanh",
        gated_mlp=True,
        normalization="rmsnorm",
        norm_weight_offset=1.0,
        positional="rope",
        sliding_window=3,
        layer_types=("local", "global"),
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        post_attn_norm=True,
        post_mlp_norm=True,
        scale_embeddings=True,
        tied_embeddings=True,
    ),
    "attn_only": dict(d_mlp=None),
}
LENGTHS = (7, 3, 5, 7)


def _model(family):
    cfg = ModelConfig(**{**BASE, **FAMILIES[family]})
    return mj.init_params(jax.random.PRNGKey(1), cfg), cfg


def _prompts(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, BASE["d_vocab"], n).tolist() for n in LENGTHS]


def test_pad_sequences_and_positions():
    tokens, mask = pad_sequences([[5, 3, 9], [7, 2]], pad_id=0, padding_side="left")
    np.testing.assert_array_equal(tokens, [[5, 3, 9], [0, 7, 2]])
    np.testing.assert_array_equal(np.asarray(token_positions(mask))[1, 1:], [0, 1])
    np.testing.assert_array_equal(last_token_index(mask), [2, 2])
    tokens, mask = pad_sequences([[5, 3, 9], [7, 2]], pad_id=0, padding_side="right")
    np.testing.assert_array_equal(tokens, [[5, 3, 9], [7, 2, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 1])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_batch_equals_each_prompt_alone(family, side):
    params, cfg = _model(family)
    prompts = _prompts()
    tokens, mask = pad_sequences(prompts, 0, side)
    capture = ("resid_post", "pattern")
    logits, stream = mj.run_with_stream(params, tokens, cfg, capture=capture, mask=mask)
    for i, prompt in enumerate(prompts):
        alone_logits, alone = mj.run_with_stream(params, np.array([prompt]), cfg, capture=capture)
        real = np.flatnonzero(mask[i])
        np.testing.assert_allclose(logits[i, real], alone_logits[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            stream["resid_post"][:, i, real], alone["resid_post"][:, 0], atol=1e-5, rtol=0
        )
        # attention rows of real queries: the same weights on the real keys, none on padding
        rows = stream["pattern"][:, i][:, :, real]
        np.testing.assert_allclose(rows[..., real], alone["pattern"][:, 0], atol=1e-6)
        assert float(np.abs(np.delete(np.asarray(rows), real, axis=-1)).max(initial=0)) == 0


def test_edits_never_land_on_padding():
    params, cfg = _model("llama")
    tokens, mask = pad_sequences(_prompts(), 0, "left")
    ablate = E.zero_ablate("resid_pre", layer=1, pos=jnp.arange(4))  # columns 0..3
    _, plain = mj.run_with_stream(params, tokens, cfg, capture="resid_pre", mask=mask)
    _, edited = mj.run_with_stream(
        params, tokens, cfg, capture="resid_pre", edits=ablate, mask=mask
    )
    changed = np.asarray(plain["resid_pre"][1] != edited["resid_pre"][1]).any(-1)
    np.testing.assert_array_equal(changed, mask & (np.arange(tokens.shape[1]) < 4))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patching_sweep_on_a_padded_batch(family):
    """Per cell, the padded sweep averages each prompt's own sweep at that prompt's
    column (left padding shifts a short prompt's positions right; a patch on its padding
    changes nothing, leaving its corrupted metric)."""
    params, cfg = _model(family)
    clean_prompts = _prompts(0)[:2]
    corrupt_prompts = [p[:-2] + [p[-1], p[-2]] for p in clean_prompts]
    answers, wrong = np.array([3, 4]), np.array([5, 6])
    clean, mask = pad_sequences([clean_prompts[0], clean_prompts[1]], 0, "left")
    corrupt, _ = pad_sequences(corrupt_prompts, 0, "left")
    got = activation_patching(
        params, cfg, clean, corrupt, "resid_pre", answers=(answers, wrong), mask=mask
    ).raw
    width = clean.shape[1]
    expected = np.zeros((cfg.n_layers, width))
    for i in range(2):
        alone = activation_patching(
            params,
            cfg,
            np.array([clean_prompts[i]]),
            np.array([corrupt_prompts[i]]),
            "resid_pre",
            answers=(answers[i], wrong[i]),
        )
        shift = width - len(clean_prompts[i])
        per_column = np.full((cfg.n_layers, width), float(alone.corrupted_metric))
        per_column[:, shift:] = alone.raw
        expected += per_column / 2
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_metrics_read_each_prompts_own_position():
    params, cfg = _model("gpt2")
    tokens, mask = pad_sequences(_prompts(), 0, "right")
    logits = mj.forward(params, tokens, cfg, mask=mask)
    last = last_token_index(mask)
    got = metrics.logit_diff(np.arange(4), np.arange(4) + 1, pos=last)(logits)
    rows = np.asarray(logits)[np.arange(4), last]
    want = np.mean(rows[np.arange(4), np.arange(4)] - rows[np.arange(4), np.arange(4) + 1])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(
        greedy_next_tokens(params, tokens, cfg, mask=mask, batch_size=3), rows.argmax(-1)
    )


def test_detectors_and_lens_ignore_padding():
    params, cfg = _model("neox")
    prompt = _prompts()[0]
    tokens, mask = pad_sequences([prompt, prompt[:3]], 0, "left")
    _, stream = mj.run_with_stream(params, tokens, cfg, mask=mask)
    _, alone = mj.run_with_stream(params, np.array([prompt]), cfg)
    np.testing.assert_allclose(
        heads.previous_token_scores(stream["pattern"][:, :1], mask[:1]),
        heads.previous_token_scores(alone["pattern"]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        heads.duplicate_token_scores(stream["pattern"][:, :1], tokens[:1], mask[:1]),
        heads.duplicate_token_scores(alone["pattern"], np.array([prompt])),
        atol=1e-6,
    )
    real = np.flatnonzero(mask[1])
    _, short = mj.run_with_stream(params, np.array([prompt[:3]]), cfg)
    np.testing.assert_allclose(
        lens.logit_lens(params, cfg, stream)[:, 1, real],
        lens.logit_lens(params, cfg, short)[:, 0],
        atol=2e-5,
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_generation_with_an_edit_equals_the_growing_forward(family):
    params, cfg = _model(family)
    tokens, mask = pad_sequences(_prompts(), 0, "left")
    vector = jax.random.normal(jax.random.PRNGKey(3), (cfg.d_model,))
    steer = (E.steer("resid_pre", vector, coeff=2.0, layer=1),)
    out = generate(params, tokens, cfg, max_new_tokens=5, mask=mask, edits=steer)
    grown, grown_mask = tokens, mask
    for _ in range(5):
        logits = mj.forward(params, grown, cfg, mask=grown_mask, edits=steer)[:, -1]
        # random tiny models have near-ties: compare only where the top two are apart
        top2 = np.sort(np.asarray(logits), axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0] > 1e-4).all()
        grown = np.concatenate([grown, np.asarray(logits.argmax(-1))[:, None]], axis=1)
        grown_mask = np.concatenate([grown_mask, np.ones((len(grown), 1), bool)], axis=1)
    np.testing.assert_array_equal(out.tokens, grown)
    np.testing.assert_array_equal(out.mask, grown_mask)


def test_generation_sampling_padding_and_eos():
    params, cfg = _model("llama")
    left, mask = pad_sequences(_prompts(), 0, "left")
    right, right_mask = pad_sequences(_prompts(), 0, "right")
    key = jax.random.PRNGKey(7)
    kwargs = dict(max_new_tokens=6, key=key, temperature=1.0, top_k=20, top_p=0.9)
    a = generate(params, left, cfg, mask=mask, **kwargs)
    b = generate(params, left, cfg, mask=mask, **kwargs)
    c = generate(params, right, cfg, mask=right_mask, **kwargs)  # re-padded on the left
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.tokens, c.tokens)
    other = generate(params, left, cfg, mask=mask, **{**kwargs, "key": jax.random.PRNGKey(8)})
    assert (other.new_tokens != a.new_tokens).any()
    # top_k=1 sampling is greedy
    greedy = generate(params, left, cfg, mask=mask, max_new_tokens=6)
    one = generate(params, left, cfg, mask=mask, **{**kwargs, "top_k": 1})
    np.testing.assert_array_equal(one.tokens, greedy.tokens)
    # stopping at EOS: prompt 0's first token is the EOS -> nothing after it is real
    eos = int(greedy.new_tokens[0, 0])
    stopped = generate(params, left, cfg, mask=mask, max_new_tokens=6, eos_id=eos, pad_id=1)
    assert stopped.mask[0, left.shape[1]] and not stopped.mask[0, left.shape[1] + 1 :].any()
    assert (stopped.new_tokens[0, 1:] == 1).all()
    for row in range(1, 4):  # the others run on as before up to their own EOS
        n = np.flatnonzero(np.append(greedy.new_tokens[row] == eos, True))[0]
        np.testing.assert_array_equal(
            stopped.new_tokens[row, : n + 1], greedy.new_tokens[row, : n + 1][: n + 1]
        )


def test_bad_padding_and_generation_input():
    params, cfg = _model("gpt2")
    tokens, mask = pad_sequences(_prompts(), 0, "left")
    with pytest.raises(ValueError, match="mask has shape"):
        mj.forward(params, tokens, cfg, mask=mask[:, 1:])
    holed = mask.copy()
    holed[0, 3] = False
    with pytest.raises(ValueError, match="padding between real tokens"):
        mj.forward(params, tokens, cfg, mask=holed)
    with pytest.raises(ValueError, match="no real token"):
        mj.forward(params, tokens, cfg, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="pad_id"):
        generate(params, tokens, cfg, max_new_tokens=2, mask=mask, pad_id=cfg.d_vocab)
    with pytest.raises(ValueError, match="needs a key"):
        generate(params, tokens, cfg, max_new_tokens=2, temperature=0.5)
    with pytest.raises(ValueError, match="n_ctx"):
        generate(params, tokens, cfg, max_new_tokens=cfg.n_ctx)
    laid_out = E.steer("resid_pre", np.ones((tokens.shape[1], cfg.d_model)))
    with pytest.raises(ValueError, match="one value for every position"):
        generate(params, tokens, cfg, max_new_tokens=2, edits=laid_out)


def test_ablation_and_attribution_sweeps_on_padding():
    """A left-padded prompt gives the sweeps of the prompt alone (attribution: its
    columns shifted, nothing attributed to padding)."""
    from mechjax.causal.ablation import ablation_sweep
    from mechjax.causal.attribution_patching import attribution_patching

    params, cfg = _model("llama")
    short, long = _prompts()[1], _prompts()[0]
    tokens, mask = pad_sequences([short, long], 0, "left")
    tokens, mask = tokens[:1], mask[:1]  # the short prompt, behind padding
    corrupt = tokens.copy()
    corrupt[0, -2] = (corrupt[0, -2] + 1) % cfg.d_vocab
    answers = (np.array([3]), np.array([4]))
    padded = ablation_sweep(params, cfg, tokens, "head", answers=answers, mask=mask)
    alone = ablation_sweep(params, cfg, np.array([short]), "head", answers=answers)
    np.testing.assert_allclose(padded.loss, alone.loss, atol=2e-5)
    np.testing.assert_allclose(padded.metric, alone.metric, atol=2e-5)
    with pytest.raises(ValueError, match="padded batch"):
        ablation_sweep(params, cfg, tokens, "head", method="mean", mask=mask)

    sites = {"resid_pre": ("layer", "pos")}
    padded = attribution_patching(params, cfg, tokens, corrupt, sites, answers=answers, mask=mask)
    alone = attribution_patching(
        params, cfg, np.array([short]), corrupt[:, mask[0]], sites, answers=answers
    )
    shift = tokens.shape[1] - len(short)
    got, want = padded["resid_pre"], alone["resid_pre"]
    np.testing.assert_allclose(got.raw[:, shift:], want.raw, atol=2e-5)
    np.testing.assert_allclose(got.raw[:, :shift], float(got.clean_metric), atol=1e-6)


def test_path_patching_on_padding():
    from mechjax.causal.path_patching import path_patching

    params, cfg = _model("gpt2")
    short, long = _prompts()[1], _prompts()[0]
    tokens, mask = pad_sequences([short, long], 0, "left")
    tokens, mask = tokens[:1], mask[:1]
    corrupt = tokens.copy()
    corrupt[0, -2] = (corrupt[0, -2] + 1) % cfg.d_vocab
    answers = (np.array([3]), np.array([4]))
    padded = path_patching(params, cfg, tokens, corrupt, answers=answers, mask=mask)
    alone = path_patching(params, cfg, np.array([short]), corrupt[:, mask[0]], answers=answers)
    np.testing.assert_allclose(padded.raw, alone.raw, atol=2e-5)


def test_tracing_and_integrated_gradients_on_padding():
    from mechjax.causal.integrated_gradients import integrated_gradients
    from mechjax.causal.tracing import causal_trace

    params, cfg = _model("neox")
    short, long = _prompts()[1], _prompts()[0]
    tokens, mask = pad_sequences([short, long], 0, "left")
    tokens, mask = tokens[:1], mask[:1]
    shift = tokens.shape[1] - len(short)
    answers = (np.array([3]), np.array([4]))
    padded = integrated_gradients(params, cfg, tokens, answers=answers, steps=8, mask=mask)
    alone = integrated_gradients(params, cfg, np.array([short]), answers=answers, steps=8)
    # attributions here reach 1e6: a float32 relative tolerance
    np.testing.assert_allclose(
        padded.attributions[:, shift:], alone.attributions, rtol=2e-4, atol=1e-3
    )
    assert float(np.abs(np.asarray(padded.attributions[:, :shift])).max()) == 0

    noise = np.random.default_rng(0).normal(size=(2, 1, tokens.shape[1], cfg.d_model))
    kwargs = dict(noise=noise.astype(np.float32), window=1, kinds=("hidden",))
    padded = causal_trace(params, cfg, tokens, shift, mask=mask, **kwargs)
    alone = causal_trace(
        params, cfg, np.array([short]), 0, **{**kwargs, "noise": kwargs["noise"][:, :, shift:]}
    )
    np.testing.assert_allclose(padded.hidden[:, shift:], alone.hidden, atol=2e-5)
    np.testing.assert_allclose(padded.clean_prob, alone.clean_prob, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_the_model_analysis_runs_on_every_family(family):
    """`mechjax analyze`'s analyses (detectors, eigenvalue copying, circuits, positional
    scores) on each family's mechanisms: parallel blocks, partial rotary, SwiGLU, GQA."""
    from mechjax.activations.model_analysis import analyze_model

    params, cfg = _model(family)
    result = analyze_model(params, cfg, batch=2)
    for name in ("induction", "previous_token", "ov_eigen_copying", "qk_eigen_copying"):
        scores = np.asarray(result.scores[name])
        assert scores.shape == (cfg.n_layers, cfg.n_heads) and np.isfinite(scores).all(), name
    assert np.isfinite(np.asarray(result.pattern)).all()
    if result.positional is not None:
        assert np.isfinite(np.asarray(result.positional)).all()
