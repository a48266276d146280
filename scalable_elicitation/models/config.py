"""Architecture and adaptation configs: our own dataclasses, read from HF config.json or GGUF.

One `ArchConfig` describes every supported architecture; `family` picks the module
(`llama` for Llama 2/3/3.1, Mistral, Qwen2, SmolLM2; `bert` for BERT/MiniLM encoders).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")
BERT_MODEL_TYPES = ("bert",)
LLAMA_LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
BERT_LORA_TARGETS = ("q", "k", "v", "o", "up", "down")
POOLINGS = ("last", "first", "mean")
ATTENTIONS = ("einsum", "fused")
TRAINABLE_SCOPES = ("lora", "full", "head")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Shape and numerics of one transformer; enough to build and load it."""

    family: str  # "llama" | "bert"
    model_type: str  # HF model_type, e.g. "llama", "mistral", "qwen2", "bert"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-5
    # decoders
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted items of the HF dict
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    # encoders
    type_vocab_size: int = 2
    hidden_act: str = "silu"
    pooling: str = "last"  # how the classifier pools: last (decoders), first (BERT CLS), mean
    pad_token_id: int | None = None
    # "einsum": our XLA attention (float32 scores, any additive mask); "fused":
    # jax.nn.dot_product_attention, which picks cuDNN's fused kernel where it applies
    attention: str = "einsum"

    def __post_init__(self):
        if self.family not in ("llama", "bert"):
            raise ValueError(f"ArchConfig.family={self.family!r}; allowed: 'llama', 'bert'")
        if self.pooling not in POOLINGS:
            raise ValueError(f"ArchConfig.pooling={self.pooling!r}; allowed: {POOLINGS}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"ArchConfig.attention={self.attention!r}; allowed: {ATTENTIONS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return LLAMA_LORA_TARGETS if self.family == "llama" else BERT_LORA_TARGETS


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA on the named projections (docs/design.md#model: rank 8, alpha 8, dropout 0,
    all of them)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None  # None: every attention and MLP projection

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _rope_scaling_items(raw: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ("linear", "llama3"):
        raise ValueError(
            f"rope scaling type {kind!r} is not supported; supported: 'default', 'linear', 'llama3'")
    items = {k: v for k, v in raw.items() if k not in ("type", "rope_theta")}
    items["rope_type"] = kind
    return tuple(sorted(items.items()))


def from_hf_config(hf: Mapping[str, Any], *, pooling: str | None = None) -> ArchConfig:
    """Our ArchConfig from a Hugging Face config.json dict (transformers 4 or 5 field names)."""
    model_type = hf.get("model_type")
    if model_type in LLAMA_MODEL_TYPES:
        heads = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        # transformers 5 moves rope settings into `rope_parameters`; 4 used rope_theta/rope_scaling.
        rope_params = hf.get("rope_parameters") or {}
        rope_theta = rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_raw = hf.get("rope_scaling") or (rope_params if rope_params else None)
        sliding = hf.get("sliding_window")
        if model_type == "qwen2" and not hf.get("use_sliding_window", False):
            sliding = None
        if model_type == "llama":
            sliding = None
        attention_bias = bool(hf.get("attention_bias", False))
        return ArchConfig(
            family="llama",
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hidden // heads,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=_rope_scaling_items(rope_raw),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=sliding,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            hidden_act=hf.get("hidden_act", "silu"),
            pooling=pooling or "last",
            pad_token_id=hf.get("pad_token_id"),
        )
    if model_type in BERT_MODEL_TYPES:
        heads = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported for BERT; config has "
                             f"position_embedding_type={hf.get('position_embedding_type')!r}")
        return ArchConfig(
            family="bert",
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            type_vocab_size=hf.get("type_vocab_size", 2),
            hidden_act=hf.get("hidden_act", "gelu"),
            pooling=pooling or "first",
            pad_token_id=hf.get("pad_token_id"),
        )
    raise ValueError(
        f"unsupported model_type {model_type!r}; supported: {LLAMA_MODEL_TYPES + BERT_MODEL_TYPES}")
