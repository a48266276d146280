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


def _padded_qkv(rng, members, b, length, heads, kv_heads, hd):
    """q, k, v with a leading members axis (a group's vmap), and a key mask with right- and
    left-padded rows."""
    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)
    q = normal(members, b, length, heads, hd)
    k, v = normal(members, b, length, kv_heads, hd), normal(members, b, length, kv_heads, hd)
    mask = np.ones((members, b, length), np.int32)
    mask[:, 0, 100:] = 0  # right padding
    mask[:, 1, :37] = 0  # left padding
    mask[1, 2, 1:] = 0  # a single real token
    return q, k, v, jnp.asarray(mask)


def _causal_padding_bias(mask):
    length = mask.shape[-1]
    allowed = np.tril(np.ones((length, length), bool)) & (np.asarray(mask)[..., None, :] > 0)
    return jnp.asarray(np.where(allowed, 0.0, L.NEG_INF), jnp.float32)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2)])
def test_tpu_flash_kernel_equals_einsum_under_vmap_with_padding(heads, kv_heads):
    """Pallas' splash kernel (the fused attention of a TPU step at a sequence of whole
    128-blocks), run in Pallas' interpreter, against the einsum path on the same causal and
    padding masks, under a group's vmap: the outputs at real tokens and the gradients of a
    loss over them; pad queries' outputs stay finite."""
    rng = np.random.default_rng(heads)
    q, k, v, mask = _padded_qkv(rng, 2, 3, 128, heads, kv_heads, 16)
    bias = _causal_padding_bias(mask)
    weight = jnp.asarray(rng.normal(size=q.shape), jnp.float32) * mask[..., None, None]
    assert L.flash_applies(q[0], k[0])

    def flash(q, k, v, mask, bias):
        return L.tpu_flash_attention(q, k, v, mask, interpret=True)

    def einsum(q, k, v, mask, bias):
        return L.attention(q, k, v, bias)

    outs, grads = [], []
    for f in (einsum, flash):
        group = jax.vmap(f)
        outs.append(group(q, k, v, mask, bias))
        grads.append(jax.grad(lambda q, k, v, g=group: (g(q, k, v, mask, bias) * weight).sum(),
                              argnums=(0, 1, 2))(q, k, v))
    real = np.asarray(mask, bool)
    assert np.isfinite(np.asarray(outs[1])).all()
    np.testing.assert_allclose(np.asarray(outs[1])[real], np.asarray(outs[0])[real],
                               atol=2e-5, rtol=2e-5)
    for got, want in zip(grads[1], grads[0]):
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def _primitives(jaxpr) -> set:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.core.jaxprs_in_params(eqn.params):
            out |= _primitives(sub)
    return out


def test_a_model_step_traced_for_a_tpu_mesh_takes_the_flash_kernel(monkeypatch):
    """A tiny Llama traced as a step for a TPU mesh (the platform faked, the kernel in
    Pallas' interpreter) with its rows split over an 8-device fsdp mesh: its fused attention
    is the splash kernel inside a shard_map, and its hidden states at real tokens and its
    weights' gradients equal the einsum path's, with and without remat; at 64 tokens (not whole blocks) and on CPU the
    fused attention stays `jax.nn.dot_product_attention`."""
    from flax import nnx
    from scalable_elicitation import sharding
    rng = np.random.default_rng(0)
    b, length = 8, 128
    ids = rng.integers(0, 256, size=(b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[0, 90:] = 0
    mask[3, :50] = 0
    ids = np.where(mask > 0, ids, 256).astype(np.int32)
    weight = jnp.asarray(rng.normal(size=(b, length, 64)), jnp.float32) * mask[..., None]
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1})

    def run(attention, ids, mask, tpu, remat=False, trace_only=False):
        model = load_pretrained("tiny:llama", dtype="float32", trainable="head",
                                attention=attention, mesh=mesh, remat=remat).model
        graphdef, state = nnx.split(model)

        def loss(state, ids, mask):
            hidden = nnx.merge(graphdef, state).hidden(ids, mask)
            return (hidden * weight[:, :ids.shape[1]]).sum(), hidden

        with monkeypatch.context() as m:
            if tpu:
                m.setattr(L, "traced_platform", lambda: "tpu")
                m.setattr(L, "FLASH_INTERPRET", True)
            with sharding.activation_sharding(mesh):
                step = jax.grad(loss, has_aux=True)
                prims = _primitives(jax.make_jaxpr(step)(state, ids, mask).jaxpr)
                if trace_only:
                    return None, None, prims
                grads, hidden = jax.jit(step)(state, ids, mask)
        return np.asarray(hidden), jax.tree.leaves(grads), prims

    want_h, want_g, prims = run("einsum", ids, mask, tpu=False)
    assert "pallas_call" not in prims
    got_h, got_g, prims = run("fused", ids, mask, tpu=True)
    assert {"pallas_call", "shard_map"} <= prims
    real = mask > 0
    np.testing.assert_allclose(got_h[real], want_h[real], atol=2e-5, rtol=2e-5)
    remat_h, remat_g, prims = run("fused", ids, mask, tpu=True, remat=True)
    assert "pallas_call" in prims and ("remat2" in prims or "checkpoint" in prims)
    np.testing.assert_allclose(remat_h[real], want_h[real], atol=2e-5, rtol=2e-5)
    for grads in (got_g, remat_g):
        assert len(grads) == len(want_g) > 0
        for got, want in zip(grads, want_g):  # float32 sums over 1,000 tokens: to their scale
            scale = float(np.abs(np.asarray(want)).max())
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5 * scale,
                                       rtol=1e-4)
    # not whole blocks, or not a TPU: today's fused path
    for args in ((ids[:, :64], mask[:, :64], True), (ids, mask, False)):
        assert "pallas_call" not in run("fused", *args, trace_only=True)[2]
