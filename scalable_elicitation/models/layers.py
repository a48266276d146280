"""Building blocks shared by the architectures: stacked linear maps with LoRA, norms, RoPE,
attention. Layers are stacked on a leading `layers` axis and run with `jax.lax.scan`, so a
30-layer model compiles one block, not thirty.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from scalable_elicitation.memory import FLASH_BLOCK, flash_mesh  # one rule, two users
from scalable_elicitation.models.config import ArchConfig, LoraConfig
from scalable_elicitation.sharding import (batch_sharding, data_parallel_size, traced_mesh,
                                           traced_platform)

HEAD_INIT_STD = 0.02
HEAD_INIT_SCALE = 0.01  # the study scaled the default head init by 0.01
NEG_INF = -1e30  # finite, so a fully masked row (a left-pad query) gives no NaN
LORA_LOW = "lora_low"  # checkpoint name of LoRA's x @ A [T, r] (see scan_layers' `save`)
ATTN_PROBS = "attn_probs"  # checkpoint name of the einsum path's softmax output
FLASH_INTERPRET = False  # run the TPU flash kernel in Pallas' interpreter (tests on CPU)


def param(value, axes) -> nnx.Param:
    """An NNX Param tagged with logical axis names (read only by scalable_elicitation.sharding)."""
    if len(axes) != np.ndim(value):
        raise ValueError(f"axes {axes} do not match shape {np.shape(value)}")
    return nnx.Param(value, axes=tuple(axes))


class Linear(nnx.Module):
    """A stack of `n_layers` linear maps `in_shape -> out_shape`, optionally with bias and LoRA.

    Parameters carry a leading layer axis; `__call__` runs on one layer's slice (inside scan),
    contracting the last `len(in_shape)` dims of x with the kernel's first dims.
    """

    def __init__(self, n_layers: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 in_axes: tuple[str, ...], out_axes: tuple[str, ...], *, bias: bool,
                 lora: LoraConfig | None, dtype, rngs: nnx.Rngs):
        self.n_in = len(in_shape)
        fan_in = int(np.prod(in_shape))
        lead, lead_axes = (n_layers,), ("layers",)
        kshape = lead + in_shape + out_shape
        kernel = jax.random.normal(rngs.params(), kshape, jnp.float32) / math.sqrt(fan_in)
        self.kernel = param(kernel.astype(dtype), lead_axes + in_axes + out_axes)
        self.bias = (param(jnp.zeros(lead + out_shape, dtype), lead_axes + out_axes)
                     if bias else None)
        if lora is not None:
            bound = 1.0 / math.sqrt(fan_in)  # PEFT's kaiming-uniform(a=sqrt 5) bound for A; B = 0
            a = jax.random.uniform(rngs.params(), lead + in_shape + (lora.rank,), jnp.float32,
                                   -bound, bound)
            self.lora_a = param(a, lead_axes + in_axes + ("lora",))
            self.lora_b = param(jnp.zeros(lead + (lora.rank,) + out_shape, jnp.float32),
                                lead_axes + ("lora",) + out_axes)
            self.lora_scale = lora.scale
            self.lora_dropout = lora.dropout
        else:
            self.lora_a = self.lora_b = None

    def __call__(self, x, dropout_key=None):
        n = self.n_in
        if self.lora_a is None:
            y = jnp.tensordot(x, self.kernel.value.astype(x.dtype), axes=n)
            return y + self.bias.value.astype(x.dtype) if self.bias is not None else y
        # With LoRA, tokens are flattened to one leading dim, [T, *in_shape] (a free
        # reshape), so every product contracts one token dim at most: contracting a [B, L, in]
        # activation directly leaves the backward pass's LoRA-factor gradients contracting two
        # token dims, for which XLA:CPU materialises a transposed copy of each output
        # gradient. The kernels are contracted as stored (not reshaped): a reshaped kernel
        # would be saved for the backward pass as a stacked copy of every layer's weights.
        # (Without LoRA the product stays as written, so a frozen model's features do not
        # change by a rounding.)
        lead = x.shape[:-n]
        x2 = x.reshape((-1,) + x.shape[-n:])  # [T, *in_shape]
        y = jnp.tensordot(x2, self.kernel.value.astype(x.dtype), axes=n)  # [T, *out_shape]
        if self.bias is not None:
            y = y + self.bias.value.astype(x.dtype)
        xa = x2
        if self.lora_dropout > 0.0 and dropout_key is not None:
            keep = jax.random.bernoulli(dropout_key, 1.0 - self.lora_dropout, x.shape)
            xa = jnp.where(keep.reshape(x2.shape), x2 / (1.0 - self.lora_dropout),
                           0.0).astype(x.dtype)
        low = jnp.tensordot(xa.astype(jnp.float32), self.lora_a.value, axes=n)  # [T, r]
        low = checkpoint_name(low, LORA_LOW)
        delta = jnp.tensordot(low, self.lora_b.value, axes=1) * self.lora_scale
        y = y + delta.astype(y.dtype)
        return y.reshape(lead + y.shape[1:])


def rms_norm(x, weight, eps: float):
    """RMSNorm computed in float32, returned in x's dtype (as HF Llama does)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * x32).astype(x.dtype)


def layer_norm(x, weight, bias, eps: float):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(cfg: ArchConfig) -> np.ndarray:
    """Inverse frequencies of rotary embeddings, with Llama-3.1 or linear scaling when set."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    scaling = cfg.rope_scaling_dict
    if not scaling:
        return inv
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv / factor
    # llama3: long wavelengths slowed by `factor`, short kept, a smooth blend between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * np.pi / inv
    low_wavelen, high_wavelen = old_len / low, old_len / high
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled)


def rope_tables(positions, inv_freq):
    """RoPE's cos and sin per position, [B, L, 1, hd], computed once for every layer."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, L, 1, hd]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, tables):
    """Rotate-half RoPE. x: [B, L, H, hd]; tables: `rope_tables(positions [B, L], ...)`."""
    cos, sin = tables
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention(q, k, v, bias, fused: bool = False, segments=None):
    """Softmax attention with grouped KV heads.

    q: [B, Lq, H, hd]; k, v: [B, Lk, KV, hd]; bias: [B, Lq, Lk] additive (0 or NEG_INF).
    `segments`: the [B, L] key mask when `bias` is exactly causal plus key padding by it (no
    prefix, no window), which lets a TPU step use the flash kernel (`tpu_flash_attention`).
    `fused`: on a TPU mesh where the shapes suit it, Pallas' splash (flash) attention kernel;
    else `jax.nn.dot_product_attention` (grouped KV heads natively), asked for cuDNN's
    fused kernel on GPUs (left to choose, JAX compiled the study's shapes for an H100 target to
    XLA's generic attention, 4.5 GiB more per GPU than einsum; docs/preflight.md) and XLA's
    own elsewhere; else our einsum path with float32 scores.
    """
    if fused:
        if segments is not None and traced_platform() == "tpu":
            out = _sharded_flash(q, k, v, segments)
            if out is not None:
                return out
        bias = bias[:, None, :, :].astype(q.dtype)  # [B, 1, Lq, Lk]
        if traced_platform() not in ("gpu", "cuda"):
            return jax.nn.dot_product_attention(q, k, v, bias=bias)
        # one bias per head: the cuDNN call's batching rule (a group's vmap) reshapes the
        # bias to [members x B, heads, ...] and fails on a bias broadcast over heads
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2]) + bias.shape[2:])
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")
    b, lq, h, hd = q.shape
    kv = k.shape[2]
    g = h // kv
    qg = q.reshape(b, lq, kv, g, hd)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k).astype(jnp.float32) / math.sqrt(hd)
    scores = scores + bias[:, None, None, :, :]
    probs = checkpoint_name(jax.nn.softmax(scores, axis=-1).astype(v.dtype), ATTN_PROBS)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(b, lq, h, hd)


def flash_applies(q, k, block: int = FLASH_BLOCK) -> bool:
    """Whether the TPU flash kernel takes these shapes: self-attention (Lq == Lk) over whole
    blocks, query heads a multiple of the KV heads."""
    b, lq, h, hd = q.shape
    return lq == k.shape[1] and lq % block == 0 and h % k.shape[2] == 0


def tpu_flash_attention(q, k, v, segments, *, block: int = FLASH_BLOCK,
                        interpret: bool | None = None):
    """Causal attention with key padding through Pallas' splash attention kernel for TPUs
    (`jax.experimental.pallas.ops.tpu.splash_attention`; grouped KV heads natively, scores
    never stored whole: the backward pass recomputes them block by block from the softmax's
    log-sum-exp).

    q: [B, L, H, hd]; k, v: [B, L, KV, hd]; segments: [B, L], > 0 at real tokens. The padding
    is given as segment ids (the mask itself, 1 real and 0 pad), so a query attends to earlier
    keys of its own segment: a real query to exactly the real keys the additive bias allows,
    a pad query to the pad keys up to itself (never an empty row, so never a NaN; pad
    outputs are ignored downstream, as the einsum path's are). `interpret`: Pallas'
    interpreter (for tests on CPU; default `FLASH_INTERPRET`)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash, splash_attention_mask as masks)
    b, length, h, hd = q.shape
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block,
                              block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash.make_splash_mha(
        masks.MultiHeadMask([masks.CausalMask((length, length))] * h), block_sizes=sizes,
        head_shards=1, q_seq_shards=1,
        interpret=FLASH_INTERPRET if interpret is None else interpret)
    # the kernel takes no scale: the queries are scaled first, in float32
    q = (q.astype(jnp.float32) / math.sqrt(hd)).astype(k.dtype)
    seg = (segments > 0).astype(jnp.int32)

    def one(qr, kr, vr, sr):  # one row: [heads, L, hd]
        return kernel(qr, kr, vr, segment_ids=splash.SegmentIds(q=sr, kv=sr))

    heads_first = (0, 2, 1, 3)
    out = jax.vmap(one)(q.transpose(heads_first), k.transpose(heads_first),
                        v.transpose(heads_first), seg)
    return out.transpose(heads_first).astype(v.dtype)


def _sharded_flash(q, k, v, segments):
    """`tpu_flash_attention` on each device's rows of the mesh being traced (a Pallas call is
    opaque to XLA's partitioner, which would gather every row to every device), or None where
    it does not apply: no mesh being traced, shapes the kernel does not take, heads split
    over a tensor axis, rows the batch axes do not divide, or a data-parallel mesh of several
    devices. There a group may place whole runs on devices (`groups.run_mesh_axis`), its
    member axis split over `data`, which a shard_map over each member's rows would reshuffle
    at every layer; with weights split over fsdp a group's rows are always split."""
    ctx = traced_mesh()
    if ctx is None or not flash_applies(q, k):
        return None
    mesh, rules = ctx
    if not flash_mesh(dict(mesh.shape)) or q.shape[0] % data_parallel_size(mesh, rules):
        return None
    rows4, rows2 = batch_sharding(mesh, 4, rules).spec, batch_sharding(mesh, 2, rules).spec
    return jax.shard_map(tpu_flash_attention, mesh=mesh, in_specs=(rows4, rows4, rows4, rows2),
                         out_specs=rows4, check_vma=False)(q, k, v, segments)


def last_token_index(attention_mask):
    """Index of the last real token per row; works for left and right padding. [B]"""
    length = attention_mask.shape[1]
    return length - 1 - jnp.argmax(attention_mask[:, ::-1] > 0, axis=1)


def pool(hidden, attention_mask, how: str):
    """Pool [B, L, D] hidden states to [B, D] over the positions the mask marks: the last, the
    first, or their mean."""
    if how == "last":
        idx = last_token_index(attention_mask)
        return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
    if how == "first":
        idx = jnp.argmax(attention_mask, axis=1)  # first marked position (0 when right-padded)
        return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]
    if how == "mean":
        m = attention_mask.astype(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    raise ValueError(f"pooling {how!r}; allowed: last, first, mean")


class ClassifierHead(nnx.Module):
    """Linear head to `num_labels` classes, no bias; init N(0, 0.02) * 0.01
    (docs/design.md#model)."""

    def __init__(self, hidden: int, num_labels: int, rngs: nnx.Rngs):
        w = jax.random.normal(rngs.params(), (hidden, num_labels), jnp.float32)
        self.kernel = param(w * HEAD_INIT_STD * HEAD_INIT_SCALE, ("embed", "labels"))

    def __call__(self, pooled):
        return pooled.astype(jnp.float32) @ self.kernel.value


def scan_layers(layers: nnx.Module, body, carry, xs=None, *, remat: bool = False,
                save: tuple[str, ...] | None = None):
    """Run `body(layer_module, carry, x) -> (carry, y)` over a stack of layers with lax.scan.

    The layer module's parameters carry a leading layer axis; inside the body each one is a
    single layer's slice. `remat`: keep only each block's input for the backward pass and
    recompute the rest. Else `save`, if given: keep only the values the body tagged with these
    `checkpoint_name`s (and the block's input), and recompute the others from them; the
    backward pass computes the same values either way, from fewer stored ones.
    """
    graphdef, state = nnx.split(layers)

    def step(c, inputs):
        layer_state, x = inputs
        layer = nnx.merge(graphdef, layer_state)
        return body(layer, c, x)

    if remat:  # recompute each block's activations in the backward pass to save memory
        step = jax.checkpoint(step)
    elif save is not None:
        step = jax.checkpoint(step, policy=jax.checkpoint_policies.save_only_these_names(*save))
    return jax.lax.scan(step, carry, (state, xs))
