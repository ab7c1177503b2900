"""Probes and LEACE (`mechjax.representations`) against independent references: ridge
in numpy float64, logistic regression against scikit-learn, LEACE against EleutherAI's
`concept-erasure` in float64, and the defining properties of an erasure."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.representations import leace, probes, rome, steering

ROOT = Path(__file__).resolve().parents[1]


def _blobs(n=300, d=6, k=3, seed=0, spread=1.5, labels=None):
    """Gaussian classes with random means and a random (correlated) covariance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n) if labels is None else labels
    means = rng.standard_normal((k, d)) * spread
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = means[labels] + rng.standard_normal((n, d)) @ mix + 0.3 * rng.standard_normal((n, d))
    return x.astype(np.float32), labels


# -- probes -------------------------------------------------------------------------------------


def test_ridge_equals_its_closed_form_in_float64():
    x, _ = _blobs()
    rng = np.random.default_rng(1)
    y = x @ rng.standard_normal((6, 2)) + 0.5 + 0.1 * rng.standard_normal((300, 2))
    W, b = probes.fit_ridge(jnp.asarray(x), jnp.asarray(y, jnp.float32), alpha=3.0)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
    W_ref = np.linalg.solve(xc.T @ xc + 3.0 * np.eye(6), xc.T @ yc)
    b_ref = y64.mean(0) - x64.mean(0) @ W_ref
    np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-5)


def test_logistic_regression_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, labels = _blobs(n=400, spread=0.8)
    ours_W, ours_b = probes.fit_logistic(jnp.asarray(x), jnp.asarray(labels), 3, C=0.5)
    ref = linear_model.LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x, labels)
    np.testing.assert_allclose(np.asarray(ours_W).T, ref.coef_, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(ours_b, ref.intercept_, rtol=2e-3, atol=2e-3)
    ours_pred = np.argmax(x @ np.asarray(ours_W) + np.asarray(ours_b), -1)
    assert np.mean(ours_pred == ref.predict(x)) > 0.99


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_the_layer_sweep_equals_fitting_each_layer_alone(kind):
    labels = np.random.default_rng(9).integers(0, 3, 120)
    acts = np.stack([_blobs(n=120, seed=s, spread=0.2 + s, labels=labels)[0] for s in range(3)])
    target = labels if kind == "logistic" else labels.astype(np.float32)
    swept = probes.probe(acts, target, kind=kind, steps=100)
    assert swept.weights.shape[0] == 3 and swept.test_score.shape == (3,)
    for layer in range(3):
        alone = probes.probe(acts[layer], target, kind=kind, steps=100)
        # ridge is closed form; L-BFGS iterates, and batching changes its float32 rounding
        tol = dict(rtol=1e-4, atol=1e-5) if kind == "ridge" else dict(rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(swept.weights[layer], alone.weights, **tol)
        np.testing.assert_allclose(swept.test_score[layer], alone.test_score, atol=1e-4)
    # better-separated classes (larger spread) are more decodable
    assert swept.test_score[2] > swept.test_score[0]


def test_control_task_and_selectivity():
    """Labels that are a linear function of the representation give a selective probe;
    control labels (one random label per token type) are constant within a type."""
    rng = np.random.default_rng(3)
    n_types, n = 40, 400
    token_ids = rng.integers(0, n_types, n)
    x, labels = _blobs(n=n, spread=2.0, seed=4)
    control = probes.control_labels(token_ids, labels, seed=0)
    for t in np.unique(token_ids):
        assert len(set(control[token_ids == t])) == 1
    assert set(np.unique(control)) <= set(np.unique(labels))
    result = probes.probe(x, labels, control=control, steps=100)
    assert result.test_score > 0.8
    assert result.selectivity == pytest.approx(result.test_score - result.control_score)
    assert result.selectivity > 0.3  # x carries the classes, not the token types


def test_probe_bad_input():
    x, labels = _blobs(n=50)
    with pytest.raises(ValueError, match="one example per label"):
        probes.probe(x, labels[:-1])
    with pytest.raises(ValueError, match="integer class labels"):
        probes.probe(x, labels.astype(float))
    with pytest.raises(ValueError, match="kind="):
        probes.probe(x, labels, kind="svm")
    with pytest.raises(ValueError, match="must both be"):
        probes.control_labels(labels[:-1], labels)
    attn = SMALL_CONFIGS["attn2_ln_bias"]
    with pytest.raises(ValueError, match="'mlp_out' is not a per-layer site of this model"):
        probes.site_activations(random_model(attn), attn, random_tokens(attn), "mlp_out")


# -- LEACE -------------------------------------------------------------------------------------


def _concept_erasure_eraser(x, labels, k, **options):
    torch = pytest.importorskip("torch")
    ce = pytest.importorskip("concept_erasure")
    z = np.eye(k)[labels]
    fitter = ce.LeaceFitter(x.shape[1], k, dtype=torch.float64, **options)
    fitter.update(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(z, dtype=torch.float64))
    return fitter.eraser


@pytest.mark.parametrize("shrinkage", [False, True])
def test_leace_equals_concept_erasure_in_float64(shrinkage):
    torch = pytest.importorskip("torch")
    x, labels = _blobs(n=250, d=8, k=4)
    x64 = x.astype(np.float64)
    ref = _concept_erasure_eraser(
        x64, labels, 4, shrinkage=shrinkage, constrain_cov_trace=False, svd_tol=1e-9
    )
    want = ref(torch.as_tensor(x64)).numpy()
    fitter = leace.LeaceFitter(8, 4)
    for part in np.array_split(np.arange(250), 3):  # streaming: three batches
        fitter.update(x64[part], labels[part])
    left, right, bias = fitter.factors(svd_tol=1e-9, shrinkage=shrinkage)  # float64
    got = x64 - ((x64 - bias) @ right.T) @ left.T
    change = np.abs(want - x64).max()
    assert change > 0.1
    np.testing.assert_allclose(got, want, atol=1e-6 * change)  # relative to the change
    assert left.shape[1] == 3  # rank k - 1
    # the float32 eraser (what the forward pass uses) to float32 rounding
    eraser = fitter.eraser(svd_tol=1e-9, shrinkage=shrinkage)
    erased = np.asarray(eraser(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(erased, want, atol=1e-5 * np.abs(x64).max())


def test_after_erasure_no_linear_probe_beats_the_constant():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, labels = _blobs(n=600, d=8, k=3, spread=2.0)
    eraser = leace.fit_leace(x, labels, 3)
    erased = np.asarray(eraser(jnp.asarray(x)), np.float64)
    # class-conditional means coincide (relative to the data's scale)
    means = np.stack([erased[labels == c].mean(0) for c in range(3)])
    assert np.abs(means - means.mean(0)).max() < 1e-4 * np.abs(x).max()
    before = linear_model.LogisticRegression(max_iter=2000).fit(x, labels).score(x, labels)
    after = linear_model.LogisticRegression(max_iter=2000).fit(erased, labels).score(erased, labels)
    majority = np.bincount(labels).max() / len(labels)
    assert before > 0.9 and after <= majority + 0.03
    # idempotent, and the change has rank at most n_classes - 1
    twice = np.asarray(eraser(eraser(jnp.asarray(x))))
    np.testing.assert_allclose(twice, erased, atol=1e-4 * np.abs(x).max())
    assert np.linalg.matrix_rank(np.asarray(eraser.P, np.float64) - np.eye(8), tol=1e-4) <= 2


def test_oracle_leace_removes_the_concept_exactly():
    x, labels = _blobs(n=300, d=5, k=3)
    fitter = leace.LeaceFitter(5, 3).update(x, labels)
    erased = fitter.oracle(x, labels)
    z = np.eye(3)[labels]
    cross = (erased - erased.mean(0)).T @ (z - z.mean(0))
    assert np.abs(cross).max() < 1e-8 * len(x) * np.abs(x).max()


def test_the_eraser_as_an_edit_inside_the_forward_pass():
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg, seed=2)
    tokens = random_tokens(cfg, batch=16, n_pos=8, seed=3)
    _, stream = mj.run_with_stream(params, tokens, cfg, capture=["resid_mid"])
    acts = np.asarray(stream["resid_mid"][0]).reshape(-1, cfg.d_model)  # [example, d]
    labels = (np.asarray(tokens).reshape(-1) % 2).astype(int)  # the token's parity
    eraser = leace.fit_leace(acts, labels, 2)
    edit = leace.erase_edit(eraser, "resid_mid", layer=0)
    _, edited = mj.run_with_stream(params, tokens, cfg, capture=["resid_mid"], edits=[edit])
    after = np.asarray(edited["resid_mid"][0]).reshape(-1, cfg.d_model)
    np.testing.assert_allclose(after, np.asarray(eraser(jnp.asarray(acts))), atol=1e-5)
    gap = after[labels == 1].mean(0) - after[labels == 0].mean(0)
    assert np.abs(gap).max() < 1e-4 * np.abs(acts).max()


def test_leace_bad_input():
    fitter = leace.LeaceFitter(4, 2)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 2\)"):
        fitter.update(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="one label per activation row"):
        fitter.update(np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        leace.LeaceFitter(4, 2).eraser()


# -- steering ----------------------------------------------------------------------------------


def test_mean_difference_and_reading_vector_against_numpy():
    rng = np.random.default_rng(5)
    pos = rng.standard_normal((2, 30, 6)) + np.array([1.0, 0, 0, 0, 0, 2.0])
    neg = rng.standard_normal((2, 30, 6))
    np.testing.assert_allclose(
        steering.mean_difference(pos, neg), pos.mean(1) - neg.mean(1), rtol=1e-5, atol=1e-6
    )
    got = np.asarray(steering.reading_vector(pos, neg))
    for layer in range(2):
        diff = pos[layer] - neg[layer]
        _, _, vh = np.linalg.svd(diff - diff.mean(0))
        want = vh[0] * np.sign(vh[0] @ diff.mean(0))
        np.testing.assert_allclose(got[layer], want, atol=1e-4)


def test_steering_sweep_equals_single_edits_and_zero_is_a_no_op():
    cfg = SMALL_CONFIGS["gemma2_gqa"]
    params = random_model(cfg, seed=6)
    tokens = random_tokens(cfg, batch=3, n_pos=9, seed=7)
    vectors = (
        np.random.default_rng(8).standard_normal((cfg.n_layers, cfg.d_model)).astype(np.float32)
    )
    coeffs = [0.0, 0.5, -2.0]
    result = steering.steering_sweep(
        params, cfg, tokens, vectors, coeffs, answers=(3, 5), site="resid_mid"
    )
    assert result.values.shape == (cfg.n_layers, 3)
    np.testing.assert_allclose(result.values[:, 0], result.baseline, atol=1e-5)
    from mechjax.views.representations import plot_scores, plot_steering_sweep

    fig = plot_steering_sweep(result)
    assert fig.axes[0].images[0].get_array().shape == (cfg.n_layers, 3)
    fig = plot_scores({"efficacy": 1.0, "paraphrase": 0.9, "neighbourhood": 0.91})
    assert len(fig.axes[0].patches) == 3
    for layer in range(cfg.n_layers):
        for j, c in enumerate(coeffs):
            edit = mj.edits.steer("resid_mid", vectors[layer], layer=layer, coeff=c)
            logits = mj.forward(params, tokens, cfg, edits=[edit])[:, -1]
            want = float(np.mean(logits[:, 3] - logits[:, 5]))
            np.testing.assert_allclose(result.values[layer, j], want, atol=1e-4)
    assert np.abs(result.values[:, 2] - result.baseline).max() > 1e-2  # it does steer


def test_a_contrast_vector_moves_the_trained_model_as_expected():
    """On the shipped byte-level model: prompts ending in 'q' vs in 'x'. The behaviour is
    the logit difference between the next tokens the 'q' prompts favour most and least
    relative to the 'x' prompts. Steering the 'x' prompts along the contrast vector at
    the embeddings raises it with the coefficient, and at coefficient 1 (the vector is
    then exactly W_E[q] - W_E[x]) reproduces the 'q' prompts."""
    from mechjax.cli.analyze import load_any

    model = load_any(ROOT / "checkpoints" / "attn2")
    params, cfg = model.params, model.cfg
    rng = np.random.default_rng(0)
    text = np.array([ord(c) for c in "abcdefghijklmnoprstvwy "])
    prompts = rng.choice(text, size=(16, 12))
    positive, negative = prompts.copy(), prompts.copy()
    positive[:, -1], negative[:, -1] = ord("q"), ord("x")
    vectors = steering.contrast_vectors(params, cfg, positive, negative, site="resid_pre")

    def next_probs(tokens):
        return np.asarray(jax.nn.softmax(mj.forward(params, tokens, cfg)[:, -1], -1)).mean(0)

    shift = next_probs(positive) - next_probs(negative)
    up, down = int(np.argmax(shift)), int(np.argmin(shift))

    def behaviour(logits):
        return jnp.mean(logits[:, -1, up] - logits[:, -1, down])

    last = negative.shape[1] - 1  # steer where the prompts differ
    result = steering.steering_sweep(
        params, cfg, negative, vectors, [0.0, 0.5, 1.0], metric=behaviour, layers=[0], pos=last
    )
    assert np.all(np.diff(result.values[0]) > 0.1), result.values
    want = float(behaviour(mj.forward(params, positive, cfg)))
    np.testing.assert_allclose(result.values[0, 2], want, atol=1e-3)


def test_steering_bad_input():
    cfg = SMALL_CONFIGS["attn2_ln_bias"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, batch=2, n_pos=5)
    with pytest.raises(ValueError, match="vectors must be"):
        steering.steering_sweep(params, cfg, tokens, np.zeros(3), [1.0], answers=(1, 2))
    with pytest.raises(ValueError, match="steering needs a per-layer residual-width site"):
        steering.steering_sweep(params, cfg, tokens, np.zeros((2, 4)), [1.0], site="z")
    with pytest.raises(ValueError, match="method="):
        steering.contrast_vectors(params, cfg, tokens, tokens, method="pca")
    with pytest.raises(ValueError, match=r"pos \[7\] must be positions in 0..4"):
        steering.steering_sweep(
            params, cfg, tokens, np.zeros((2, 24)), [1.0], answers=(1, 2), pos=7
        )


# -- ROME ---------------------------------------------------------------------------------------


def test_rank_one_update_equals_the_closed_form_in_float64():
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg, seed=9)
    rng = np.random.default_rng(10)
    A = rng.standard_normal((cfg.d_mlp, 3 * cfg.d_mlp))
    C = A @ A.T / A.shape[1]
    k, v = rng.standard_normal(cfg.d_mlp), rng.standard_normal(cfg.d_model)
    edit = rome.rank_one_update(params, cfg, 1, k, v, C)
    W = np.asarray(params["blocks"]["W_out"][1], np.float64)
    b = np.asarray(params["blocks"]["b_out"][1], np.float64)
    c_inv_k = np.linalg.inv(C) @ k
    want = W + np.outer(c_inv_k, v - b - k @ W) / (c_inv_k @ k)
    got = np.asarray(edit.params["blocks"]["W_out"][1], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.linalg.matrix_rank(got - W, tol=1e-5 * np.abs(got - W).max()) == 1
    np.testing.assert_allclose(k @ got + b, v, atol=1e-4 * np.abs(v).max())  # k* -> v*
    # the other layer is untouched
    np.testing.assert_array_equal(edit.params["blocks"]["W_out"][0], params["blocks"]["W_out"][0])


def test_rome_makes_the_model_say_the_new_object():
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg, seed=11)
    rng = np.random.default_rng(12)
    subject = [5, 9]  # a two-token subject at the end of every prompt
    prefixes = rng.integers(0, cfg.d_vocab, (6, 5))
    prompts = np.concatenate([prefixes, np.tile(subject, (6, 1))], axis=1)
    last = prompts.shape[1] - 1
    old = int(np.bincount(np.asarray(mj.forward(params, prompts, cfg))[:, -1].argmax(-1)).argmax())
    new = (old + 7) % cfg.d_vocab
    text = [rng.integers(0, cfg.d_vocab, (16, 12)) for _ in range(4)]
    layer = 1
    C = rome.key_second_moment(params, cfg, text, layer)
    key = rome.subject_key(params, cfg, prompts, last, layer)
    value = rome.target_value(params, cfg, prompts[:4], last, layer, new, steps=150)
    edit = rome.rank_one_update(params, cfg, layer, key, value, C)
    assert not rome.edit_scores(params, cfg, prompts, new, old).all()
    assert rome.edit_scores(edit.params, cfg, prompts, new, old).all()  # incl. 2 held out


def test_rome_bad_input():
    attn = SMALL_CONFIGS["attn2_ln_bias"]
    with pytest.raises(ValueError, match="attention-only"):
        rome.subject_key(random_model(attn), attn, random_tokens(attn), 1, 0)
    gemma = SMALL_CONFIGS["gemma2_gqa"]
    with pytest.raises(ValueError, match="post_mlp_norm"):
        rome.subject_key(random_model(gemma), gemma, random_tokens(gemma), 1, 0)
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg)
    with pytest.raises(ValueError, match="singular"):
        rome.rank_one_update(
            params, cfg, 0, np.ones(cfg.d_mlp), np.ones(cfg.d_model), np.zeros((cfg.d_mlp,) * 2)
        )
    with pytest.raises(ValueError, match="layer 5 out of range"):
        rome.subject_key(params, cfg, random_tokens(cfg), 1, 5)


def test_leace_moves_the_activations_less_than_an_orthogonal_eraser():
    """LEACE is the least-squares eraser: its mean squared change is at most that of the
    plain orthogonal projection out of the cross-covariance's span, which erases too."""
    x, labels = _blobs(n=500, d=8, k=3, spread=1.0)
    x64 = x.astype(np.float64)
    fitter = leace.LeaceFitter(8, 3).update(x64, labels)
    left, right, bias = fitter.factors()
    erased = x64 - ((x64 - bias) @ right.T) @ left.T
    _, cov_xz, _ = fitter.covariances()
    u = np.linalg.svd(cov_xz, full_matrices=False)[0][:, :2]
    orth = x64 - ((x64 - fitter.mean_x) @ u) @ u.T
    z = np.eye(3)[labels]
    for out in (erased, orth):  # both erase: no cross-covariance with the concept left
        assert np.abs((out - out.mean(0)).T @ (z - z.mean(0))).max() < 1e-6 * len(x)
    assert np.mean((erased - x64) ** 2) < np.mean((orth - x64) ** 2)


def test_probe_by_layer_on_model_activations_and_its_figure(tmp_path):
    from mechjax.views.representations import plot_probe_scores

    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg, seed=13)
    tokens = random_tokens(cfg, batch=24, n_pos=6, seed=14)
    per_token = probes.site_activations(params, cfg, tokens, "resid_post")
    assert per_token.shape == (cfg.n_layers, 24 * 6, cfg.d_model)
    labels = (np.asarray(tokens).reshape(-1) % 3).astype(int)  # the current token's class
    result = probes.probe(per_token, labels, control=probes.control_labels(
        np.asarray(tokens).reshape(-1), labels), steps=60)  # fmt: skip
    assert result.test_score.shape == (cfg.n_layers,) and result.test_score.min() > 0.5
    fig = plot_probe_scores(result, path=tmp_path / "probe.png")
    assert (tmp_path / "probe.png").stat().st_size > 1000 and len(fig.axes[0].lines) == 4
    last = probes.site_activations(params, cfg, tokens, "resid_post", pos=-1)
    assert last.shape == (cfg.n_layers, 24, cfg.d_model)
