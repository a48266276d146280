"""Fused attention (`jax.nn.dot_product_attention`) equals our einsum attention on CPU: with
padding, causal masks and grouped KV heads, per layer and through whole models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalable_elicitation.models import load_pretrained
from scalable_elicitation.models import layers as L


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (9, 3)])
def test_fused_attention_equals_einsum_with_padding_and_grouped_kv(heads, kv_heads):
    rng = np.random.default_rng(heads)
    b, lq, hd = 3, 7, 16
    q = jnp.asarray(rng.normal(size=(b, lq, heads, hd)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, lq, kv_heads, hd)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, lq, kv_heads, hd)), jnp.float32)
    lengths = np.array([7, 4, 1])  # right padding; one row has a single real token
    key_ok = np.arange(lq)[None, :] < lengths[:, None]
    causal = np.tril(np.ones((lq, lq), bool))
    allowed = causal[None] & key_ok[:, None, :]
    bias = jnp.asarray(np.where(allowed, 0.0, L.NEG_INF), jnp.float32)
    einsum = L.attention(q, k, v, bias)
    fused = L.attention(q, k, v, bias, fused=True)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(einsum), atol=1e-5, rtol=1e-5)
    # and the gradients that training takes through it
    grad = [jax.grad(lambda q_, f=f: L.attention(q_, k, v, bias, fused=f).sum())(q)
            for f in (False, True)]
    np.testing.assert_allclose(np.asarray(grad[1]), np.asarray(grad[0]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_model_gives_the_same_logits_with_fused_attention(family):
    ids = np.array([[5, 9, 200, 17, 3, 256, 256, 256], [7, 8, 9, 10, 11, 12, 13, 14]], np.int32)
    mask = (ids != 256).astype(np.int32)
    out = {}
    for attention in ("einsum", "fused"):
        bundle = load_pretrained(f"tiny:{family}", dtype="float32", trainable="head",
                                 attention=attention)
        assert bundle.config.attention == attention
        out[attention] = np.asarray(bundle.model.hidden(ids, mask))
    np.testing.assert_allclose(out["fused"], out["einsum"], atol=1e-5, rtol=1e-5)
