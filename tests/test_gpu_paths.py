"""The GPU paths, checked on a CPU (issue 20): the forward's fused attention
(`jax.nn.dot_product_attention`, selected by `attention_implementation`; on a CPU it runs
JAX's XLA implementation) gives the chunked path's logits and gradients, and falls back
where it must; eigenvalues are computed on the host CPU (`host_linalg.host_eigvals`)
whatever device holds the matrices, simulated here by overriding the routing decision."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechjax as mj
from mechjax.circuits import eigen, host_linalg, weights
from mechjax.circuits.factored import FactoredMatrix
from mechjax.model import attention
from mechjax.model.losses import mean_loss
from mechjax.model.params import param_shapes

BASE = dict(d_vocab=53, d_model=32, n_layers=2, n_heads=4, d_head=8, n_ctx=16)
LLAMA = dict(
    d_mlp=48,
    act_fn="silu",
    gated_mlp=True,
    normalization="rmsnorm",
    positional="rope",
)
CONFIGS = {
    "attn_only": mj.ModelConfig(**BASE),
    "gqa": mj.ModelConfig(**BASE, **LLAMA, n_kv_heads=2),
    # a window shorter than the prompts on the local layer; the global one has none
    "window": mj.ModelConfig(
        **BASE, **LLAMA, n_kv_heads=2, sliding_window=3, layer_types=("local", "global")
    ),
}
# float32: the two paths differ by rounding only (measured <= 3e-7 of the logits' scale)
REL_TOL = 1e-5


def _params(cfg, seed=0):
    """Random weights drawn with NumPy (each of `init_params`'s random draws compiles a
    program of its own, seconds for a model here): matrices ~ N(0, 1/fan_in), embeddings
    ~ N(0, 1), norm weights and biases their identity plus N(0, 0.1^2) noise."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)

    def draw(name, shape):
        noise = rng.normal(size=shape).astype(np.float32)
        if name.startswith("ln") or name.startswith("b_") or name.endswith("_b"):
            identity = 1.0 - cfg.norm_weight_offset if name.endswith("_w") else 0.0
            return jnp.asarray(identity + 0.1 * noise)
        return jnp.asarray(noise * (1.0 if name in ("W_E", "W_pos") else shape[-2] ** -0.5))

    params = {n: draw(n, s) for n, s in shapes.items() if n != "blocks"}
    params["blocks"] = {n: draw(n, s) for n, s in shapes["blocks"].items()}
    return params


TOKENS = np.asarray(jax.random.randint(jax.random.key(7), (3, 12), 0, BASE["d_vocab"]))
MASK = np.ones((3, 12), bool)
MASK[1, :4] = MASK[2, :7] = False  # left padding


@pytest.fixture
def use(monkeypatch):
    """`use("fused")`: select an implementation (and retrace: the choice is made when the
    forward is traced). Counts the fused kernel's calls; caches are cleared afterwards so
    no other test reuses a program traced here."""
    calls = []
    kernel = jax.nn.dot_product_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("mask") is None)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", counted)

    def select(choice):
        monkeypatch.setenv(attention.ATTENTION_ENV, choice)
        jax.clear_caches()
        calls.clear()
        return calls

    yield select
    monkeypatch.undo()
    jax.clear_caches()


def _both(use, fn):
    """`fn()` under the chunked and the fused implementation, and the fused kernel's calls."""
    use("chunked")
    chunked = fn()
    calls = list(use("fused"))
    fused = fn()
    return chunked, fused, calls


def _close(a, b, rel=REL_TOL):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(b, a, rtol=0, atol=rel * max(1.0, np.abs(a).max()))


# -- fused attention ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_forward_matches_chunked(use, name):
    cfg = CONFIGS[name]
    params = _params(cfg)
    use("chunked")
    chunked = mj.forward(params, TOKENS, cfg)
    calls = use("fused")
    fused = mj.forward(params, TOKENS, cfg)
    assert calls, "the fused kernel was not called"
    # no padding: plain causal (is_causal) unless a layer has a window
    assert all(calls) == (not cfg.has_local_layers)
    _close(chunked, fused)


def test_fused_forward_with_left_padding(use):
    cfg = CONFIGS["window"]  # padding and windows in one mask
    params = _params(cfg)
    use("chunked")
    chunked = mj.forward(params, TOKENS, cfg, mask=MASK)
    calls = use("fused")
    fused = mj.forward(params, TOKENS, cfg, mask=MASK)
    assert calls and not any(calls)  # a mask was passed
    _close(np.asarray(chunked)[MASK], np.asarray(fused)[MASK])
    # and each prompt's logits are those it gives alone
    alone = mj.forward(params, TOKENS[2:, 7:], cfg)
    _close(alone[0], np.asarray(fused)[2, 7:])


def test_fused_gradients_match_chunked(use):
    cfg = CONFIGS["gqa"]
    params = _params(cfg)
    grad = jax.jit(jax.grad(mean_loss), static_argnums=2)
    use("chunked")
    chunked = grad(params, jnp.asarray(TOKENS), cfg)
    calls = use("fused")
    fused = grad(params, jnp.asarray(TOKENS), cfg)
    assert calls
    for a, b in zip(jax.tree_util.tree_leaves(chunked), jax.tree_util.tree_leaves(fused)):
        _close(a, b)  # measured <= 7e-8


def test_captured_pattern_falls_back_to_our_path(use):
    cfg = CONFIGS["gqa"]
    params = _params(cfg)
    use("chunked")
    reference = mj.forward(params, TOKENS, cfg)
    calls = use("fused")
    logits, stream = mj.run_with_stream(params, TOKENS, cfg, capture=["pattern"])
    assert not calls  # every layer's pattern is read: no fused kernel anywhere
    assert stream["pattern"].shape == (cfg.n_layers, 3, cfg.n_heads, 12, 12)
    np.testing.assert_allclose(stream["pattern"].sum(-1), 1.0, atol=1e-5)
    _close(reference, logits)


def test_softcapped_models_keep_the_chunked_path(use):
    cfg = CONFIGS["window"].replace(attn_logit_softcap=5.0)
    params = _params(cfg)
    chunked, fused, calls = _both(use, lambda: mj.forward(params, TOKENS, cfg))
    assert not calls
    np.testing.assert_array_equal(chunked, fused)
    assert attention.attention_implementation(cfg) == "chunked"
    assert attention.attention_implementation(CONFIGS["window"]) == "fused"


def test_selection_rule(monkeypatch):
    monkeypatch.delenv(attention.ATTENTION_ENV, raising=False)
    assert jax.default_backend() == "cpu"
    assert attention.attention_implementation() == "chunked"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention.attention_implementation() == "fused"
    assert attention.attention_implementation(CONFIGS["gqa"].replace(attn_logit_softcap=50.0)) == (
        "chunked"
    )
    monkeypatch.undo()
    for value, expected in [("fused", "fused"), (" Chunked ", "chunked"), ("auto", "chunked")]:
        monkeypatch.setenv(attention.ATTENTION_ENV, value)
        assert attention.attention_implementation() == expected
    monkeypatch.setenv(attention.ATTENTION_ENV, "flash")
    with pytest.raises(ValueError, match="MECHJAX_ATTENTION='flash' is not one of") as err:
        attention.attention_implementation()
    assert "\n" not in str(err.value) and "fused, chunked, auto" in str(err.value)


def test_cudnn_is_asked_for_only_where_its_kernel_applies():
    cfg = CONFIGS["attn_only"]  # d_head 8
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert attention.cudnn_eligible(cfg, bf16, True, "gpu")
    assert attention.cudnn_eligible(cfg, jnp.float16, True, "cuda")
    assert not attention.cudnn_eligible(cfg, f32, True, "gpu")  # cuDNN: 16-bit only
    assert not attention.cudnn_eligible(cfg, bf16, False, "gpu")  # padding or windows
    assert not attention.cudnn_eligible(cfg, bf16, True, "cpu")
    assert not attention.cudnn_eligible(cfg.replace(d_head=12), bf16, True, "gpu")
    assert not attention.cudnn_eligible(cfg.replace(d_head=256), bf16, True, "gpu")


# -- eigenvalues on the host -------------------------------------------------------------------


def _matrices(shape=(2, 3, 5, 5), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _same_spectrum(a, b):
    """Equal eigenvalues, in any order (LAPACK and NumPy's LAPACK may order them apart)."""
    a, b = np.sort_complex(np.asarray(a)), np.sort_complex(np.asarray(b))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_host_eigvals_on_cpu_is_eigvals():
    x = _matrices()
    expected = jnp.linalg.eigvals(x)
    assert host_linalg.runs_on_cpu(x) and host_linalg.runs_on_cpu(np.asarray(x))
    np.testing.assert_array_equal(host_linalg.host_eigvals(x), expected)
    np.testing.assert_array_equal(jax.jit(host_linalg.host_eigvals)(x), expected)
    np.testing.assert_array_equal(host_linalg.host_eigvals(np.asarray(x)), expected)


def test_routing_decision(monkeypatch):
    seen = []
    jax.jit(lambda x: seen.append(host_linalg.runs_on_cpu(x)) or x)(_matrices())
    assert seen == [True]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    seen.clear()
    jax.jit(lambda x: seen.append(host_linalg.runs_on_cpu(x)) or x)(_matrices(seed=1))
    assert seen == [False]
    # NumPy data goes to the default device; a concrete array's own devices decide
    assert not host_linalg.runs_on_cpu(np.ones((2, 2)))
    assert host_linalg.runs_on_cpu(_matrices())


@pytest.fixture
def off_cpu(monkeypatch):
    """Pretend every array lives on an accelerator: the host route runs for real."""
    monkeypatch.setattr(host_linalg, "runs_on_cpu", lambda x: False)


def test_host_eigvals_off_cpu(off_cpu, monkeypatch):
    x = _matrices()
    expected = jnp.linalg.eigvals(x)
    eager = host_linalg.host_eigvals(x)  # copied to the CPU device and back
    np.testing.assert_array_equal(eager, expected)
    assert eager.devices() == x.devices() and eager.dtype == jnp.complex64
    _same_spectrum(jax.jit(host_linalg.host_eigvals)(x), expected)  # a host callback
    _same_spectrum(jax.vmap(host_linalg.host_eigvals)(x), expected)
    np.testing.assert_array_equal(host_linalg.host_eigvals(np.asarray(x)), expected)
    monkeypatch.setattr(host_linalg, "cpu_device", lambda: None)  # JAX_PLATFORMS=cuda
    _same_spectrum(host_linalg.host_eigvals(x), expected)


def test_circuit_eigenvalues_off_cpu_are_unchanged(off_cpu, monkeypatch):
    cfg = CONFIGS["gqa"]
    params = _params(cfg)
    ov = eigen.full_ov_eigenvalues(params, cfg)
    qk = eigen.full_qk_eigenvalues(params, cfg)
    fm = weights.full_ov_circuit(params, cfg)
    factored = fm.eigenvalues
    in_jit = jax.jit(lambda f: f.eigenvalues)(fm)
    copying = eigen.eigenvalue_copying(FactoredMatrix(fm.A, fm.B))
    monkeypatch.undo()  # back on the CPU route
    np.testing.assert_array_equal(ov, eigen.full_ov_eigenvalues(params, cfg))
    np.testing.assert_array_equal(qk, eigen.full_qk_eigenvalues(params, cfg))
    np.testing.assert_array_equal(factored, fm.eigenvalues)
    _same_spectrum(in_jit, fm.eigenvalues)
    np.testing.assert_allclose(copying, eigen.eigenvalue_copying(fm), atol=1e-6)
