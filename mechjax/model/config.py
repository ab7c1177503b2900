"""`ModelConfig`: one frozen, hashable description of every model mechjax runs.

A config is static under `jax.jit` (it is hashable), so shapes, layer patterns and
which optional pieces exist are all known at trace time. It covers:

* attention-only toys with 0..N layers ("A Mathematical Framework for Transformer
  Circuits", Elhage et al. 2021): `d_mlp=None`; a 0-layer model is embed -> unembed;
* MLP toys with gelu / gelu_tanh / relu / silu / solu activations, optionally gated
  (GeGLU, SwiGLU);
* GPT-2 (LayerNorm, learned positions, biases, tied embeddings), GPT-NeoX / Pythia
  (parallel attention and MLP, partial rotary embeddings) and Llama-family models
  (RMSNorm, SwiGLU, RoPE with Llama 3's frequency scaling, grouped-query attention,
  Qwen 2's q/k/v biases, Mistral's sliding window);
* Gemma 1 / 2 / 3 style models: RMSNorm with a `(1 + w)` weight, RoPE, embeddings
  scaled by sqrt(d_model), tied embeddings, grouped-query attention,
  `query_pre_attn_scalar`, attention-logit and final-logit soft-capping, local
  (sliding-window) and global layers, post-attention / post-MLP norms and per-head
  q/k norms.

Presets with the published sizes are in `mechjax.model.presets`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .checks import check_fields

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "solu")
NORMS = ("layernorm", "rmsnorm", "none")
POSITIONALS = ("learned", "rope", "none")
LAYER_TYPES = ("global", "local")
ROPE_SCALINGS = ("linear", "llama3")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and architecture of a transformer.

    Axis names used throughout the docs: `layer`, `head` (query heads), `kv_head`,
    `d_model`, `d_head`, `d_mlp`, `vocab`, `batch`, `pos`.
    """

    d_vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    n_ctx: int
    n_kv_heads: int | None = None  # None: multi-head attention (= n_heads)
    d_mlp: int | None = None  # None: attention-only
    act_fn: str = "gelu"
    gated_mlp: bool = False  # post = act(x W_gate) * (x W_in); GeGLU: gelu_tanh, SwiGLU: silu
    parallel_attn_mlp: bool = False  # GPT-NeoX: the MLP reads resid_pre, not resid_mid
    normalization: str = "layernorm"
    norm_eps: float = 1e-5
    norm_weight_offset: float = 0.0  # Gemma RMSNorm multiplies by (offset + w), offset 1
    final_norm: bool = True
    positional: str = "learned"
    rope_base: float = 10_000.0
    rope_local_base: float | None = None  # Gemma 3: local layers use their own base
    rope_scaling: float = 1.0  # position scaling factor on global layers (1: none)
    rope_scaling_type: str = "linear"  # "linear" (Gemma 3) or "llama3" (Llama 3.1+)
    rope_low_freq_factor: float = 1.0  # llama3 scaling: wavelengths > n_ctx0 / this are scaled
    rope_high_freq_factor: float = 4.0  # llama3 scaling: wavelengths < n_ctx0 / this are kept
    rope_original_n_ctx: int = 8192  # llama3 scaling: n_ctx0, the pre-training context
    rotary_dim: int | None = None  # rotate the first rotary_dim dims of a head; None: all
    use_attn_bias: bool = False  # biases of the q, k, v projections (and of W_O unless below)
    use_attn_out_bias: bool | None = None  # b_O; None: as use_attn_bias (Qwen 2: False)
    use_mlp_bias: bool = False
    use_unembed_bias: bool = False
    scale_embeddings: bool = False  # multiply embeddings by sqrt(d_model) (Gemma)
    tied_embeddings: bool = False  # W_U = W_E.T
    query_pre_attn_scalar: float | None = None  # scores scaled by this**-0.5; None: d_head
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # "global"/"local" per layer; None: all global
    post_attn_norm: bool = False
    post_mlp_norm: bool = False
    qk_norm: bool = False
    dtype: str = "float32"  # the weights' dtype
    # the activations' dtype; None: the weights' dtype, except float32 for 16-bit
    # weights on a CPU (`activation_dtype`)
    compute_dtype: str | None = None
    name: str = ""

    def __post_init__(self):
        check_fields(self, "ModelConfig")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.layer_types is not None and not isinstance(self.layer_types, tuple):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self._check()

    # -- validation -----------------------------------------------------------------
    def _check(self):
        def bad(msg):
            raise ValueError(f"ModelConfig: {msg}")

        for field in ("d_vocab", "d_model", "n_heads", "d_head", "n_ctx"):
            if int(getattr(self, field)) < 1:
                bad(f"{field} must be a positive integer, got {getattr(self, field)!r}")
        if self.n_layers < 0:
            bad(f"n_layers must be >= 0, got {self.n_layers}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            bad(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                "grouped-query attention needs whole groups (pick n_kv_heads dividing n_heads)"
            )
        if self.d_mlp is not None and self.d_mlp < 1:
            bad(f"d_mlp must be positive or None (attention-only), got {self.d_mlp}")
        if self.act_fn not in ACTIVATIONS:
            bad(f"act_fn={self.act_fn!r} is unknown; choose one of {ACTIVATIONS}")
        if self.gated_mlp and self.act_fn == "solu":
            bad("a gated MLP with SoLU is not defined; use act_fn='gelu_tanh' for GeGLU")
        if self.normalization not in NORMS:
            bad(f"normalization={self.normalization!r} is unknown; choose one of {NORMS}")
        if self.positional not in POSITIONALS:
            bad(f"positional={self.positional!r} is unknown; choose one of {POSITIONALS}")
        if self.positional == "rope" and self.rope_dim % 2:
            bad(f"RoPE needs an even number of rotated dims, got {self.rope_dim}")
        if self.rotary_dim is not None and not 0 < self.rotary_dim <= self.d_head:
            bad(
                f"rotary_dim must lie in [1, d_head={self.d_head}] or be None, got {self.rotary_dim}"
            )
        if self.rope_scaling_type not in ROPE_SCALINGS:
            bad(
                f"rope_scaling_type={self.rope_scaling_type!r} is unknown; choose one of "
                f"{ROPE_SCALINGS}"
            )
        if not self.rope_scaling > 0:
            bad(f"rope_scaling must be positive, got {self.rope_scaling!r}")
        if self.rope_scaling_type == "llama3" and not (
            0 < self.rope_low_freq_factor < self.rope_high_freq_factor
            and self.rope_original_n_ctx > 0
        ):
            bad(
                "llama3 RoPE scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor "
                "and a positive rope_original_n_ctx"
            )
        if self.parallel_attn_mlp and self.attn_only:
            bad("parallel_attn_mlp needs an MLP (d_mlp); an attention-only model has none")
        if self.dtype not in DTYPES:
            bad(f"dtype={self.dtype!r} is unknown; choose one of {DTYPES}")
        if self.compute_dtype is not None and self.compute_dtype not in DTYPES:
            bad(f"compute_dtype={self.compute_dtype!r} is unknown; choose None or one of {DTYPES}")
        if self.normalization == "none" and (
            self.post_attn_norm or self.post_mlp_norm or self.qk_norm
        ):
            bad("post/qk norms need normalization='rmsnorm' or 'layernorm', not 'none'")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                bad(
                    f"layer_types has {len(self.layer_types)} entries for n_layers={self.n_layers}; "
                    "give one 'global' or 'local' per layer"
                )
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown:
                bad(f"layer_types contains {unknown}; each entry must be 'global' or 'local'")
            if "local" in self.layer_types and not self.sliding_window:
                bad("local layers need sliding_window (a positive window length)")
        if self.sliding_window is not None and self.sliding_window < 1:
            bad(f"sliding_window must be positive, got {self.sliding_window}")
        for cap in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
            value = getattr(self, cap)
            if value is not None and not value > 0:
                bad(f"{cap} must be positive or None, got {value!r}")

    # -- derived quantities -----------------------------------------------------------
    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def attn_scale(self) -> float:
        """Multiplier of q.k: query_pre_attn_scalar**-0.5 (Gemma 2/3), else d_head**-0.5."""
        return (self.query_pre_attn_scalar or self.d_head) ** -0.5

    @property
    def rope_dim(self) -> int:
        """The number of rotated dims of each query / key head (RoPE models)."""
        return self.d_head if self.rotary_dim is None else self.rotary_dim

    @property
    def activation_dtype(self) -> str:
        """The dtype the forward computes activations (and logits) in: `compute_dtype`
        when set; else the weights' dtype, except that 16-bit weights on a CPU compute in
        float32. XLA's CPU matmuls in bfloat16 ran 4-6x slower than in float32 on this
        project's machines (no bfloat16 arithmetic there), so 16-bit weights keep their
        memory saving and are widened layer by layer as they are used; on a GPU or TPU
        they compute in their own dtype, as HF transformers does."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        if self.dtype == "float32":
            return "float32"
        import jax  # the backend decides; config otherwise needs no jax

        return "float32" if jax.default_backend() == "cpu" else self.dtype

    @property
    def has_attn_out_bias(self) -> bool:
        """Whether the attention output projection has a bias `b_O`."""
        return self.use_attn_bias if self.use_attn_out_bias is None else self.use_attn_out_bias

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        return self.layer_types or ("global",) * self.n_layers

    @property
    def has_local_layers(self) -> bool:
        return "local" in self.resolved_layer_types

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model) if self.scale_embeddings else 1.0

    @property
    def has_final_norm(self) -> bool:
        """Whether the model normalises the residual before unembedding it."""
        return self.normalization != "none" and self.final_norm

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["layer_types"] is not None:
            out["layer_types"] = list(out["layer_types"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"ModelConfig.from_dict: unknown fields {unknown}; known: {sorted(known)}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))
