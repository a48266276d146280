"""BERT-family encoders (BERT, MiniLM): absolute positions, token types, post-LN, exact GELU,
with a classification head pooling as the checkpoint says (first token or masked mean)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scalable_elicitation.models import layers as L
from scalable_elicitation.models.config import ArchConfig, LoraConfig

_ACTS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class EncoderLayers(nnx.Module):
    """All encoder blocks, parameters stacked on a leading `layers` axis."""

    def __init__(self, cfg: ArchConfig, lora: LoraConfig | None, dtype, rngs: nnx.Rngs):
        n, d, f, h, hd = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size,
                          cfg.num_heads, cfg.head_dim)
        targets = set(lora.targets or cfg.lora_targets) if lora else set()
        unknown = targets - set(cfg.lora_targets)
        if unknown:
            raise ValueError(f"lora.targets {sorted(unknown)} unknown for {cfg.model_type}; "
                             f"allowed: {cfg.lora_targets}")

        def lin(name, ins, outs, in_axes, out_axes):
            return L.Linear(n, ins, outs, in_axes, out_axes, bias=True,
                            lora=lora if name in targets else None, dtype=dtype, rngs=rngs)

        def norm():
            return (L.param(jnp.ones((n, d), dtype), ("layers", "norm")),
                    L.param(jnp.zeros((n, d), dtype), ("layers", "norm")))

        self.q = lin("q", (d,), (h, hd), ("embed",), ("heads", "head_dim"))
        self.k = lin("k", (d,), (h, hd), ("embed",), ("heads", "head_dim"))
        self.v = lin("v", (d,), (h, hd), ("embed",), ("heads", "head_dim"))
        self.o = lin("o", (h, hd), (d,), ("heads", "head_dim"), ("embed",))
        self.attn_norm_scale, self.attn_norm_bias = norm()
        self.up = lin("up", (d,), (f,), ("embed",), ("mlp",))
        self.down = lin("down", (f,), (d,), ("mlp",), ("embed",))
        self.mlp_norm_scale, self.mlp_norm_bias = norm()


class BertModel(nnx.Module):
    """Encoder + linear classification head. Call for class logits [B, num_labels]."""

    def __init__(self, cfg: ArchConfig, *, num_labels: int = 2, lora: LoraConfig | None = None,
                 dtype=jnp.float32, compute_dtype=None, remat: bool = False,
                 rngs: nnx.Rngs):
        if cfg.hidden_act not in _ACTS:
            raise ValueError(f"hidden_act {cfg.hidden_act!r}; allowed: {sorted(_ACTS)}")
        self.cfg = cfg
        self.compute_dtype = jnp.dtype(compute_dtype or dtype)
        self.remat = remat
        d = cfg.hidden_size

        def emb(rows, axes):
            w = jax.random.normal(rngs.params(), (rows, d), jnp.float32) * 0.02
            return L.param(w.astype(dtype), axes)

        self.word_embed = emb(cfg.vocab_size, ("vocab", "embed"))
        self.pos_embed = emb(cfg.max_position_embeddings, ("positions", "embed"))
        self.type_embed = emb(cfg.type_vocab_size, ("types", "embed"))
        self.embed_norm_scale = L.param(jnp.ones((d,), dtype), ("norm",))
        self.embed_norm_bias = L.param(jnp.zeros((d,), dtype), ("norm",))
        self.layers = EncoderLayers(cfg, lora, dtype, rngs)
        self.head = L.ClassifierHead(d, num_labels, rngs)

    def hidden(self, input_ids, attention_mask, *, token_type_ids=None, dropout_key=None):
        """Last hidden states [B, L, D] (HF's last_hidden_state)."""
        cfg = self.cfg
        b, length = input_ids.shape
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = (jnp.take(self.word_embed.value, input_ids, axis=0)
             + self.pos_embed.value[:length][None]
             + jnp.take(self.type_embed.value, types, axis=0)).astype(self.compute_dtype)
        x = L.layer_norm(x, self.embed_norm_scale.value, self.embed_norm_bias.value, cfg.norm_eps)
        mask = attention_mask.astype(jnp.int32)
        bias = jnp.broadcast_to(jnp.where(mask[:, None, :] > 0, 0.0, L.NEG_INF),
                                (b, length, length)).astype(jnp.float32)
        act = _ACTS[cfg.hidden_act]
        keys = (jax.random.split(dropout_key, cfg.num_layers)
                if dropout_key is not None else None)

        def body(layer, x, key):
            ks = jax.random.split(key, 6) if key is not None else [None] * 6
            q, k, v = layer.q(x, ks[0]), layer.k(x, ks[1]), layer.v(x, ks[2])
            attn = layer.o(L.attention(q, k, v, bias, fused=cfg.attention == "fused"),
                           ks[3])
            x = L.layer_norm(x + attn, layer.attn_norm_scale.value, layer.attn_norm_bias.value,
                             cfg.norm_eps)
            ff = layer.down(act(layer.up(x, ks[4])), ks[5])
            x = L.layer_norm(x + ff, layer.mlp_norm_scale.value, layer.mlp_norm_bias.value,
                             cfg.norm_eps)
            return x, None

        x, _ = L.scan_layers(self.layers, body, x, keys, remat=self.remat)
        return x

    def __call__(self, input_ids, attention_mask, *, token_type_ids=None, dropout_key=None,
                 prefix=None):
        """Class logits [B, num_labels], pooled as the checkpoint says (cfg.pooling)."""
        if prefix is not None:
            raise ValueError("prefix caching is for decoders; BERT encoders have no KV prefix")
        h = self.hidden(input_ids, attention_mask, token_type_ids=token_type_ids,
                        dropout_key=dropout_key)
        return self.head(L.pool(h, attention_mask, self.cfg.pooling))

    def lm_logits(self, input_ids, attention_mask, **_):
        raise NotImplementedError(
            "lm_logits needs a causal decoder; BERT encoders have no next-token head (use a "
            "Llama-family model for in-context learning)")
