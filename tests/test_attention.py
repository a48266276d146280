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


def _eqn_dtypes(jaxpr, prim: str):
    """Output dtypes of every `prim` equation in a jaxpr, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == prim:
            out += [str(v.aval.dtype) for v in eqn.outvars]
        for sub in jax.core.jaxprs_in_params(eqn.params):
            out += _eqn_dtypes(sub, prim)
    return out


def test_a_bfloat16_lora_step_keeps_float32_islands():
    """dtype=bfloat16 (what `auto` picks on GPU/TPU): frozen weights and matmuls in bfloat16;
    trainable weights, optimizer state, softmax and norm statistics (exp, rsqrt) and the loss in
    float32, read off the traced train step."""
    from scalable_elicitation.batching import make_batch
    from scalable_elicitation.train import Steps
    bundle = load_pretrained("tiny:llama", dtype="bfloat16", trainable="lora")
    steps = Steps.for_model(bundle)
    state = steps.init_state(steps.fresh_params(jax.random.key(0)), jax.random.key(1))
    batch = make_batch([np.arange(3, 11)] * 4, np.array([0.0, 1.0, 1.0, 0.0]), np.ones(4), 4,
                       (8,), 256)
    hp = {k: jnp.float32(v) for k, v in
          {"lr": 1e-3, "warmup": 2.0, "total": 10.0, "logconf_ramp": 200.0,
           "logconf_coef": 0.5}.items()}
    assert {str(x.dtype) for x in jax.tree.leaves(steps.frozen)} == {"bfloat16"}
    assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}
    assert {str(x.dtype) for x in jax.tree.leaves(state.opt_state)
            if jnp.issubdtype(x.dtype, jnp.floating)} == {"float32"}
    closed = jax.make_jaxpr(steps.step_fn("xent"))(state, steps.frozen, batch, hp)
    assert "bfloat16" in _eqn_dtypes(closed.jaxpr, "dot_general")  # compute in bfloat16
    for prim in ("exp", "rsqrt", "log"):  # softmax, norms, loss
        assert set(_eqn_dtypes(closed.jaxpr, prim)) == {"float32"}, prim
    _, metrics = jax.eval_shape(steps.step_fn("xent"), state, steps.frozen, batch, hp)
    assert str(metrics["loss"].dtype) == "float32"
