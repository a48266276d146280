"""Llama-family decoders (Llama 2/3/3.1, Mistral, Qwen2, SmolLM2) with a classification head.

GQA, RMSNorm, SwiGLU, RoPE (theta and Llama-3.1 scaling from config), optional q/k/v bias
(Qwen2), optional sliding window (Mistral), tied or untied LM head. Positions count real tokens
(cumsum of the mask), so left- and right-padded batches give the same results per row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from scalable_elicitation.models import layers as L
from scalable_elicitation.models.config import ArchConfig, LoraConfig
from scalable_elicitation.sharding import constrain_rows

# What a block keeps for the backward pass (`layers.scan_layers`' `save`): the projections'
# outputs (queries and keys after RoPE: before it, the backward pass redid RoPE and its
# transposed copies, ~5% of a LoRA step on CPU), the attention probabilities and output, LoRA's
# x @ A. Norms, SiLU and the gated product are recomputed from these: saving every
# intermediate (JAX's default) stored ~146 MB a layer at batch 32 x 64 for SmolLM2-135M, and
# zero-filling, writing and reading those stacks took ~30% of a LoRA step on CPU.
SAVED = ("q", "k", "v", "attn", "o", "gate", "up", L.LORA_LOW, L.ATTN_PROBS)


class DecoderLayers(nnx.Module):
    """All decoder blocks, parameters stacked on a leading `layers` axis."""

    def __init__(self, cfg: ArchConfig, lora: LoraConfig | None, dtype, rngs: nnx.Rngs):
        n, d, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        targets = set(lora.targets or cfg.lora_targets) if lora else set()
        unknown = targets - set(cfg.lora_targets)
        if unknown:
            raise ValueError(f"lora.targets {sorted(unknown)} unknown for {cfg.model_type}; "
                             f"allowed: {cfg.lora_targets}")

        def lin(name, ins, outs, in_axes, out_axes, bias):
            return L.Linear(n, ins, outs, in_axes, out_axes, bias=bias,
                            lora=lora if name in targets else None, dtype=dtype, rngs=rngs)

        self.attn_norm = L.param(jnp.ones((n, d), dtype), ("layers", "norm"))
        self.q = lin("q", (d,), (h, hd), ("embed",), ("heads", "head_dim"), cfg.qkv_bias)
        self.k = lin("k", (d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)
        self.v = lin("v", (d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias)
        self.o = lin("o", (h, hd), (d,), ("heads", "head_dim"), ("embed",), cfg.o_bias)
        self.mlp_norm = L.param(jnp.ones((n, d), dtype), ("layers", "norm"))
        self.gate = lin("gate", (d,), (f,), ("embed",), ("mlp",), cfg.mlp_bias)
        self.up = lin("up", (d,), (f,), ("embed",), ("mlp",), cfg.mlp_bias)
        self.down = lin("down", (f,), (d,), ("mlp",), ("embed",), cfg.mlp_bias)


def _block(cfg: ArchConfig, rope, layer: DecoderLayers, x, bias, key,
           prefix_kv=None, segments=None):
    """One decoder block on one layer's parameters. x: [B, L, D]. Returns x and this block's
    (k, v) so a caller can cache a shared prefix."""
    keys = jax.random.split(key, 7) if key is not None else [None] * 7
    h = L.rms_norm(x, layer.attn_norm.value, cfg.norm_eps)
    q = checkpoint_name(L.apply_rope(layer.q(h, keys[0]), rope), "q")  # [B, L, H, hd]
    k = checkpoint_name(L.apply_rope(layer.k(h, keys[1]), rope), "k")  # [B, L, KV, hd]
    v = checkpoint_name(layer.v(h, keys[2]), "v")
    new_kv = (k, v)
    if prefix_kv is not None:
        pk, pv = prefix_kv
        k = jnp.concatenate([pk.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([pv.astype(v.dtype), v], axis=1)
    attn = checkpoint_name(L.attention(q, k, v, bias, fused=cfg.attention == "fused",
                                       segments=segments), "attn")
    x = x + checkpoint_name(layer.o(attn, keys[3]), "o")
    h = L.rms_norm(x, layer.mlp_norm.value, cfg.norm_eps)
    gate = checkpoint_name(layer.gate(h, keys[4]), "gate")  # [B, L, F]
    act = jax.nn.silu(gate) * checkpoint_name(layer.up(h, keys[5]), "up")
    return x + layer.down(act, keys[6]), new_kv


def _attention_bias(query_mask, key_mask, query_pos_index, key_pos_index, window):
    """Additive bias [B, Lq, Lk]: causal by sequence index, key padding, optional window."""
    allowed = key_pos_index[:, None, :] <= query_pos_index[:, :, None]
    if window is not None:
        allowed &= (query_pos_index[:, :, None] - key_pos_index[:, None, :]) < window
    allowed &= key_mask[:, None, :] > 0
    del query_mask
    return jnp.where(allowed, 0.0, L.NEG_INF).astype(jnp.float32)


class LlamaModel(nnx.Module):
    """Decoder + linear classification head. Call for class logits [B, num_labels]."""

    def __init__(self, cfg: ArchConfig, *, num_labels: int = 2, lora: LoraConfig | None = None,
                 dtype=jnp.float32, compute_dtype=None, remat: bool = False,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.compute_dtype = jnp.dtype(compute_dtype or dtype)
        self.remat = remat
        self.has_lora = lora is not None
        v, d = cfg.vocab_size, cfg.hidden_size
        self.embed = L.param(
            (jax.random.normal(rngs.params(), (v, d), jnp.float32) * 0.02).astype(dtype),
            ("vocab", "embed"))
        self.layers = DecoderLayers(cfg, lora, dtype, rngs)
        self.final_norm = L.param(jnp.ones((d,), dtype), ("norm",))
        self.lm_head = None if cfg.tie_word_embeddings else L.param(
            (jax.random.normal(rngs.params(), (d, v), jnp.float32) * 0.02).astype(dtype),
            ("embed", "vocab"))
        self.head = L.ClassifierHead(d, num_labels, rngs)

    # -- core -----------------------------------------------------------------------------
    def _run(self, input_ids, attention_mask, *, dropout_key=None, prefix=None):
        """Embed and run all blocks. Returns final-normed hidden [B, L, D] and per-layer kv.

        `prefix` = (kv, prefix_mask) from `encode_prefix`: keys/values of a shared prompt that
        every row continues; positions continue after the prefix's real tokens.
        """
        cfg = self.cfg
        attention_mask = attention_mask.astype(jnp.int32)
        b, length = input_ids.shape
        x = jnp.take(self.embed.value, input_ids, axis=0).astype(self.compute_dtype)
        index = jnp.broadcast_to(jnp.arange(length), (b, length))
        positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
        key_mask, key_index, prefix_kv = attention_mask, index, None
        if prefix is not None:
            prefix_kv, prefix_mask = prefix
            prefix_mask = jnp.broadcast_to(prefix_mask.astype(jnp.int32),
                                           (b, prefix_mask.shape[-1]))
            plen = prefix_mask.shape[1]
            positions = positions + prefix_mask.sum(axis=1, keepdims=True)
            index = index + plen
            key_mask = jnp.concatenate([prefix_mask, attention_mask], axis=1)
            key_index = jnp.broadcast_to(jnp.arange(plen + length), (b, plen + length))
        bias = _attention_bias(attention_mask, key_mask, index, key_index, cfg.sliding_window)
        # the bias is causal plus key padding by the mask alone: a TPU kernel can take the mask
        segments = (attention_mask if prefix is None and cfg.sliding_window is None
                    else None)
        rope = L.rope_tables(positions, L.rope_inv_freq(cfg))
        n = cfg.num_layers
        keys = (jax.random.split(dropout_key, n) if dropout_key is not None else None)

        def body(layer, carry, xs):
            layer_key, layer_prefix = xs
            if prefix_kv is not None:
                layer_prefix = tuple(jnp.broadcast_to(t, (b,) + t.shape[1:])
                                     for t in layer_prefix)
            out, kv = _block(cfg, rope, layer, constrain_rows(carry), bias, layer_key,
                             layer_prefix, segments)
            return constrain_rows(out), kv

        # the fused kernel's own residuals (cuDNN's softmax statistics) have no names to save:
        # under the policy its forward would rerun in the backward pass, so it keeps JAX's
        # default; so does a model without LoRA (the measured case is LoRA's), whose forward
        # (a probe's features) then stays the computation it was, rounding included
        save = SAVED if cfg.attention == "einsum" and self.has_lora else None
        x, kv = L.scan_layers(self.layers, body, x, (keys, prefix_kv), remat=self.remat,
                              save=save)
        return L.rms_norm(x, self.final_norm.value, cfg.norm_eps), kv

    def hidden(self, input_ids, attention_mask, *, dropout_key=None, prefix=None):
        """Final hidden states after the final norm. [B, L, D]. With `prefix` (from
        `encode_prefix`), the rows continue a shared prompt encoded once (k-shot features)."""
        return self._run(input_ids, attention_mask, dropout_key=dropout_key, prefix=prefix)[0]

    def __call__(self, input_ids, attention_mask, *, dropout_key=None, prefix=None):
        """Class logits [B, num_labels], pooled as cfg.pooling says (default: last real
        token)."""
        h, _ = self._run(input_ids, attention_mask, dropout_key=dropout_key, prefix=prefix)
        return self.head(L.pool(h, attention_mask, self.cfg.pooling))

    def _unembed(self, h):
        w = self.embed.value.T if self.lm_head is None else self.lm_head.value  # [D, V]
        return h.astype(jnp.float32) @ w.astype(jnp.float32)

    def lm_logits(self, input_ids, attention_mask, *, prefix=None):
        """Next-token logits [B, L, V] (float32)."""
        h, _ = self._run(input_ids, attention_mask, prefix=prefix)
        return self._unembed(h)

    def encode_prefix(self, input_ids, attention_mask):
        """Encode a shared prompt once: returns (kv, mask) to pass as `prefix=`.

        kv is a pair of stacked arrays [layers, B, P, KV, hd]; B may be 1 to broadcast.
        """
        _, kv = self._run(input_ids, attention_mask)
        return kv, attention_mask

    def last_lm_logits(self, input_ids, attention_mask, *, prefix=None):
        """Next-token logits at each row's last real token [B, V] (for in-context scoring)."""
        h, _ = self._run(input_ids, attention_mask, prefix=prefix)
        return self._unembed(L.pool(h, attention_mask, "last"))
