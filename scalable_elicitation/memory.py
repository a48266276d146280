"""How many bytes a group of runs takes on a device (docs/design.md#many-runs-at-once): plain
arithmetic over the architecture, the dtypes, the trainable scope, the batch, the micro-batch,
the sequence length, remat and each member's stored data, without JAX, so planning can size
groups before anything loads and the scheduler (`runner.auto_group_size`) from numbers it reads
off the learner.

    est = estimate(Arch.of(bundle.config), scope="lora", param_dtype="bfloat16", ...,
                   mesh={"data": 1, "fsdp": 4, "tensor": 1})
    est.group_bytes(G)   # one device's bytes: its share of the base + G * a member's share

Every term is one device's share on `mesh` (default: one device), with the group's runs
placed as "rows" places them (`groups.run_mesh_axis`: every member on every device): each
weight split as `sharding.DEFAULT_RULES` splits it (`AXIS_OF`; a dimension its axes do not
divide stays whole, as there), each pass's rows over the data-parallel axes (data x fsdp),
the members' stored data whole on every device. Whole runs on devices ("runs") are a group
on a one-device mesh per device.

What is counted, and why (each term is a field of `Estimate`):
- `frozen`: the base weights in the parameter dtype, read by every member (shared).
- `gathered`: with weights split over devices (fsdp or tensor > 1), the whole weights of the
  blocks being computed, gathered from every device's shard: `GATHERED_BLOCKS` blocks
  (shared).
- per member: trainable parameters, Adam's two moments and the group's best parameters (float32);
  the gradients (float32; twice with micro-batches: the micro-batch's and the running sum); the
  member's data on the device (training and validation token ids and masks, int32, or a probe's
  float32 features).
- activations of one forward and backward pass of `micro_batch` rows (the whole batch without
  micro-batches): what `models/llama.py` saves for the backward pass, per token and block,
  counted tensor by tensor in `block_residual_bytes` (checked against
  `jax.ad_checkpoint.print_saved_residuals`): every block's residuals without remat, only each
  block's input with it; plus the working set of the block being differentiated, its residuals
  again (sliced out of the stacked scan buffers, or recomputed under remat) and their cotangents
  (`BACKWARD_WORK`).

On an accelerator the member's trainable state is also held as `UPDATE_COPIES` float32
temporaries (gradients, the running sum, the optimizer's update): fitted to the TPU
compiler's bytes (docs/preflight.md#the-memory-model).

XLA:CPU computes bfloat16 elementwise work in float32 and keeps float32 copies, so on CPU the
activations are counted at 4 bytes whatever the compute dtype (`activation_itemsize`); an
accelerator keeps them in the compute dtype.
"""
from __future__ import annotations

import dataclasses

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
F32 = 4
# The TPU flash attention kernel's query and key block (a multiple of 128 lanes;
# `models.layers` uses it): a TPU step's fused attention takes it at sequences of whole blocks.
FLASH_BLOCK = 128
# The backward pass of one block holds that block's residuals (sliced out of the scan's stacked
# buffers, or recomputed under remat) plus cotangents of about half their size: measured as
# 1.35-1.8 blocks' residuals on XLA:CPU (tests/test_memory_model.py, benchmarks/memory_model.py).
BACKWARD_WORK = 1.5
# With only the named values kept (`named_residual_bytes`), the block being differentiated
# recomputes the rest once and holds it with the cotangents: measured as 0.86-0.95 blocks'
# residuals on XLA:CPU (benchmarks/memory_model.py).
NAMED_WORK = 0.9
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
# The mesh axis that splits each logical dimension of a weight (`sharding.DEFAULT_RULES`; a
# test keeps the two equal); any other dimension (head_dim, layers, lora, labels) stays whole.
AXIS_OF = {"embed": "fsdp", "vocab": "tensor", "mlp": "tensor", "heads": "tensor",
           "kv_heads": "tensor"}
# Logical (input, output) dimensions of each projection (`models/llama.py`).
PROJECTION_AXES = {"q": ("embed", "heads"), "k": ("embed", "kv_heads"),
                   "v": ("embed", "kv_heads"), "o": ("heads", "embed"),
                   "gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed")}
# Blocks whose whole weights a device holds at once when the mesh splits weights: the block
# being computed and the next one, gathered ahead (the TPU compiler's shared temporaries for
# the 8B study step on v5p-8: 0.58-0.78 GiB, a block being 0.41 GiB).
GATHERED_BLOCKS = 2
# Float32 copies of a member's trainable parameters an accelerator's compiled step holds
# beside the gradients (the optimizer's update and the loop's carry): 3.9 for LoRA rank 128
# on v5p-8, from the TPU compiler's temporaries at rank 8 and 128 (docs/preflight.md).
UPDATE_COPIES = 2


@dataclasses.dataclass(frozen=True)
class Arch:
    """The widths of a decoder (`models.config.ArchConfig`'s names)."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False  # LM head tied to the embedding (no second [vocab, hidden] matrix)
    causal: bool = False  # a causal decoder without a window (a TPU step's flash attention)

    @classmethod
    def of(cls, config) -> "Arch":
        """From an `ArchConfig` (read by attribute, so this module imports no model code)."""
        return cls(config.hidden_size, config.intermediate_size, config.num_layers,
                   config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size,
                   bool(config.tie_word_embeddings),
                   config.family == "llama" and getattr(config, "sliding_window", None) is None)

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(fan in, fan out) of each block's projections."""
        d, f, q, kv = (self.hidden, self.intermediate, self.heads * self.head_dim,
                       self.kv_heads * self.head_dim)
        return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f),
                "up": (d, f), "down": (f, d)}

    def dim(self, name: str) -> int:
        """The size of a logical dimension (`AXIS_OF`'s names)."""
        return {"embed": self.hidden, "vocab": self.vocab, "mlp": self.intermediate,
                "heads": self.heads, "kv_heads": self.kv_heads}[name]

    def split(self, name: str, mesh) -> int:
        """Into how many shards `mesh` ({axis: size}) splits a logical dimension: its axis's
        size, or 1 where that size does not divide it (`sharding.logical_to_spec` then
        replicates it)."""
        n = int((mesh or {}).get(AXIS_OF.get(name), 1))
        return n if n > 1 and self.dim(name) % n == 0 else 1

    def block_params(self) -> int:
        """Parameters of one decoder block: its projections and two norms."""
        return sum(i * o for i, o in self.projection_shapes().values()) + 2 * self.hidden

    def base_params_per_device(self, mesh=None) -> int:
        """`base_params` held by one device of `mesh`: each projection and the embedding (and
        LM head) split on both their dimensions, the norms whole."""
        block = sum(i * o // (self.split(a, mesh) * self.split(b, mesh))
                    for (i, o), (a, b) in zip(self.projection_shapes().values(),
                                              PROJECTION_AXES.values())) + 2 * self.hidden
        embed = self.vocab * self.hidden // (self.split("vocab", mesh)
                                             * self.split("embed", mesh))
        return self.layers * block + embed * (1 if self.tied else 2) + self.hidden

    def base_params(self) -> int:
        """Parameters of the decoder without the classification head."""
        block = sum(i * o for i, o in self.projection_shapes().values()) + 2 * self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * block + embed + self.hidden


def itemsize(dtype) -> int:
    """Bytes per element of a dtype name (or anything whose str() is one)."""
    name = str(getattr(dtype, "name", dtype))
    if name not in ITEMSIZE:
        raise ValueError(f"dtype {name!r}; known: {', '.join(ITEMSIZE)}")
    return ITEMSIZE[name]


def activation_itemsize(compute_dtype, platform: str) -> int:
    """Bytes per activation element: the compute dtype's, but at least float32's on CPU, where
    XLA runs bfloat16 elementwise work in float32 (its float-normalisation keeps float32
    copies) and keeps many of the bfloat16 values beside them: 5 bytes a value there, as
    measured against XLA:CPU's compiled memory (benchmarks/memory_model.py)."""
    if platform != "cpu":
        return itemsize(compute_dtype)
    return F32 + 1 if itemsize(compute_dtype) < F32 else F32


def trainable_params(arch: Arch, scope: str, lora_rank: int = 8,
                     lora_targets=PROJECTIONS, num_labels: int = 2) -> int:
    """Trainable parameters: the head (a probe's has a bias), plus LoRA's factors or the whole
    base."""
    head = arch.hidden * num_labels
    if scope == "head":
        return head + num_labels
    if scope == "full":
        return arch.base_params() + head
    if scope != "lora":
        raise ValueError(f"scope={scope!r}; allowed: lora, full, head")
    shapes = arch.projection_shapes()
    return head + arch.layers * sum(lora_rank * (shapes[t][0] + shapes[t][1])
                                    for t in lora_targets)


def trainable_params_per_device(arch: Arch, scope: str, mesh=None, lora_rank: int = 8,
                                lora_targets=PROJECTIONS, num_labels: int = 2) -> int:
    """`trainable_params` held by one device of `mesh`: the head split on its input, LoRA's
    A [in, r] on its input and B [r, out] on its output dimension, the whole base as the
    base is split."""
    head = arch.hidden * num_labels // arch.split("embed", mesh)
    if scope == "head":  # a probe's head and bias, replicated (`Steps.for_probe`)
        return arch.hidden * num_labels + num_labels
    if scope == "full":
        return arch.base_params_per_device(mesh) + head
    if scope != "lora":
        raise ValueError(f"scope={scope!r}; allowed: lora, full, head")
    shapes = arch.projection_shapes()
    factors = sum(lora_rank * (shapes[t][0] // arch.split(PROJECTION_AXES[t][0], mesh)
                               + shapes[t][1] // arch.split(PROJECTION_AXES[t][1], mesh))
                  for t in lora_targets)
    return head + arch.layers * factors


def flash_mesh(shape) -> bool:
    """Whether a mesh ({axis: size}) takes the TPU flash kernel (`models.layers.attention`):
    weights split over fsdp and no tensor axis, or one device. (On a data-parallel mesh of
    several devices a group may place whole runs on devices, its member axis split over
    `data`, which the kernel's shard_map over each device's rows would reshuffle.)"""
    if shape.get("tensor", 1) > 1:
        return False
    sizes = [int(v) for v in shape.values()]
    return shape.get("fsdp", 1) > 1 or all(v == 1 for v in sizes)


def flash_attention(arch: Arch, platform: str, attention: str, length: int, rows: int,
                    mesh) -> bool:
    """Whether a step's fused attention is the TPU flash kernel (`models.layers.attention`'s
    rule: a causal decoder on a TPU mesh that splits weights over fsdp without a tensor axis,
    or one device (`flash_mesh`), sequences of whole `FLASH_BLOCK`s, rows the batch
    axes divide)."""
    mesh = mesh or {}
    return (arch.causal and platform == "tpu" and attention == "fused" and flash_mesh(mesh)
            and length % FLASH_BLOCK == 0
            and rows % (mesh.get("data", 1) * mesh.get("fsdp", 1)) == 0)


def block_residual_bytes(arch: Arch, scope: str, act: int, length: int, lora_rank: int = 8,
                         lora_targets=PROJECTIONS, flash: bool = False) -> int:
    """Bytes one token saves in one decoder block for the backward pass (`llama._block`), with
    activations of `act` bytes and `length` keys per query:
    - each RMSNorm's float32 input (two);
    - q and k after RoPE and v (attention's backward needs them), in the compute dtype;
    - the attention scores (float32) and probabilities (compute dtype), heads x keys; with
      the TPU flash kernel (`flash`) none: its output in its own heads-first layout and
      its softmax's log-sum-exp (float32 a head) instead;
    - SwiGLU's gate and up outputs, the sigmoid, silu and their product (five of the MLP width);
    - the input of each trainable projection: one copy per distinct input (the normed hidden
      for q, k, v; the attention output for o; the normed hidden for gate, up; the MLP
      activation for down), float32 for LoRA on CPU (its factors run in float32), `act`
      otherwise; and LoRA's low-rank product (float32) per adapted projection.
    A frozen projection saves nothing: its weight gradient is never formed."""
    d, f, hd = arch.hidden, arch.intermediate, arch.head_dim
    q, kv = arch.heads * hd, arch.kv_heads * hd
    attention = q * act + arch.heads * F32 if flash else arch.heads * length * (F32 + act)
    out = 2 * d * F32 + (q + 2 * kv) * act + attention + 5 * f * act
    if scope == "head":
        return out
    trained = set(PROJECTIONS if scope == "full" else lora_targets)
    # LoRA's inputs are cast to float32 for its factors: XLA:CPU (act >= 4) keeps the
    # float32 copy; an accelerator's compiler fuses the cast into the product and keeps the
    # input in the compute dtype (the TPU compiler's buffers for the 8B study step)
    keep = F32 if scope == "lora" and act >= F32 else act
    inputs = {"qkv": (d, {"q", "k", "v"}), "o": (q, {"o"}), "gate_up": (d, {"gate", "up"}),
              "down": (f, {"down"})}
    out += sum(width * keep for width, names in inputs.values() if names & trained)
    if scope == "lora":
        out += len(trained) * lora_rank * F32
    return out


def named_residual_bytes(arch: Arch, scope: str, act: int, length: int, lora_rank: int = 8,
                         lora_targets=PROJECTIONS) -> int:
    """Bytes one token saves in one decoder block when the block keeps only its named values
    (`llama.SAVED`, einsum attention without remat): the block's input, q and k after RoPE,
    v, the attention probabilities (heads x keys) and output, o's output, SwiGLU's gate and
    up, and LoRA's low-rank products (float32). Norms, SiLU and each projection's input are
    recomputed from them in the backward pass."""
    d, f, hd = arch.hidden, arch.intermediate, arch.head_dim
    q, kv = arch.heads * hd, arch.kv_heads * hd
    out = (2 * d + 2 * q + 2 * kv + 2 * f + arch.heads * length) * act
    if scope == "lora":
        out += len(set(lora_targets)) * lora_rank * F32
    return out


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A group's bytes by term (module docstring); `shared` once, `per_member` per run."""
    frozen: int  # base weights, shared by all members
    params: int  # trainable parameters (float32)
    adam: int  # Adam's two moments
    best: int  # the best parameters so far (group loop only)
    grads: int  # gradients (and the micro-batch accumulator)
    data: int  # the member's training and validation inputs on the device (group loop only)
    saved: int  # activations saved for the backward pass of one pass
    work: int  # the block being differentiated: its residuals again and their cotangents
    gathered: int = 0  # whole weights of the blocks being computed, when the mesh splits them

    @property
    def shared(self) -> int:
        return self.frozen + self.gathered

    @property
    def step_member(self) -> int:
        """One member's bytes in a train step alone: state, gradients, activations."""
        return self.params + self.adam + self.grads + self.saved + self.work

    @property
    def per_member(self) -> int:
        """One member's bytes in the group loop: a step's, its best parameters and data."""
        return self.step_member + self.best + self.data

    def step_bytes(self, members: int = 1) -> int:
        """A (vmapped) train step of `members` runs: the frozen base once, the rest each
        (one device's bytes, as every term)."""
        return self.shared + members * self.step_member

    def group_bytes(self, members: int = 1) -> int:
        """The group loop of `members` runs (`groups.group_loop`)."""
        return self.shared + members * self.per_member

    def table(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def estimate(arch: Arch, *, scope: str, batch_size: int, length: int,
             param_dtype="float32", compute_dtype=None, micro_batch: int = 0,
             remat: bool = False, train_rows: int = 0, val_rows: int = 0,
             lora_rank: int = 8, lora_targets=PROJECTIONS, platform: str = "gpu",
             num_labels: int = 2, attention: str = "einsum", mesh=None) -> Estimate:
    """A group member's bytes on one device of `mesh` ({"data", "fsdp", "tensor": size};
    None: one device), by term. `micro_batch`: global rows per forward and backward pass (0:
    the whole batch), split over the mesh's data-parallel axes; `train_rows`, `val_rows`: the
    member's examples stored on the device (whole on each); `scope="head"` is a probe on
    cached features (no pass through the model); `attention`: the model's kind
    (`ArchConfig.attention`), which decides what a block keeps."""
    mesh = {k: int(v) for k, v in (mesh or {}).items()}
    n_train = trainable_params_per_device(arch, scope, mesh, lora_rank, lora_targets,
                                          num_labels)
    rows = micro_batch if 0 < micro_batch < batch_size else batch_size
    passes = rows < batch_size
    rows = -(-rows // (mesh.get("data", 1) * mesh.get("fsdp", 1)))  # this device's rows
    copies = (2 if passes else 1) + (UPDATE_COPIES if platform != "cpu" else 0)
    grads = n_train * F32 * copies
    if scope == "head":  # features [rows, hidden] float32 and the head's logits
        return Estimate(0, n_train * F32, 2 * n_train * F32, n_train * F32, grads,
                        (train_rows + val_rows) * (arch.hidden + 2) * F32,
                        rows * arch.hidden * F32, 0)
    act = activation_itemsize(compute_dtype or param_dtype, platform)
    frozen = 0 if scope == "full" else arch.base_params_per_device(mesh) * itemsize(param_dtype)
    split = mesh.get("fsdp", 1) * mesh.get("tensor", 1) > 1
    gathered = (GATHERED_BLOCKS * arch.block_params()
                * itemsize(compute_dtype or param_dtype) if split else 0)
    flash = flash_attention(arch, platform, attention, length,
                            micro_batch if 0 < micro_batch < batch_size else batch_size, mesh)
    tokens = rows * length
    block = block_residual_bytes(arch, scope, act, length, lora_rank, lora_targets,
                                 flash) * tokens
    # LoRA with einsum attention keeps only the named values (`named_residual_bytes`); the
    # fused kernel and full finetuning keep JAX's default, every intermediate; either way the
    # block being differentiated
    # holds all of them again, recomputed or sliced out
    named = attention == "einsum" and scope == "lora"  # `llama.LlamaModel.hidden`'s rule
    kept = (named_residual_bytes(arch, scope, act, length, lora_rank, lora_targets) * tokens
            if named else block)
    # outside the blocks: the embedded input, the attention bias [rows, L, L] (unused by the
    # flash kernel) and RoPE's cos and sin for q and k (float32)
    outside = tokens * (arch.hidden * act + (0 if flash else length * F32)
                        + 4 * arch.head_dim * F32)
    # remat keeps each block's input only; the block is recomputed in the backward pass
    saved = arch.layers * (tokens * arch.hidden * act if remat else kept) + outside
    work = int((NAMED_WORK if named and not remat else BACKWARD_WORK) * block)
    # ids and masks (int32) per stored row, the training rows' targets and weights, the
    # validation rows' labels and mask
    data = (train_rows + val_rows) * length * 8 + train_rows * 8 + val_rows * 5
    return Estimate(frozen, n_train * F32, 2 * n_train * F32, n_train * F32, grads, data,
                    saved, work, gathered)


def xla_bytes(analysis) -> int:
    """The bytes a compiled program needs, from its `memory_analysis()`: arguments, outputs
    and temporaries, less the outputs that reuse donated arguments (aliased)."""
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def forward_flops(arch: Arch, tokens: int, length: int, lora_rank: int = 0,
                  lora_targets=PROJECTIONS) -> float:
    """Multiply-add FLOPs (2 per multiply-add) of one forward pass over `tokens` tokens in
    sequences of `length`: every block's projections, the attention's two products over all
    `length` keys (the masked half is computed too), LoRA's low-rank products; no LM head
    (the classifier's is negligible)."""
    shapes = arch.projection_shapes()
    per_token = sum(i * o for i, o in shapes.values())
    per_token += lora_rank * sum(shapes[t][0] + shapes[t][1] for t in lora_targets)
    attention = 2 * arch.heads * arch.head_dim * length
    return 2.0 * arch.layers * tokens * (per_token + attention)


def train_flops(arch: Arch, scope: str, tokens: int, length: int, lora_rank: int = 8,
                lora_targets=PROJECTIONS) -> float:
    """FLOPs of one training step (forward and backward) over `tokens` tokens: the forward
    pass, the backward pass's input gradients (as much again), and weight gradients (as much
    again) only for trained matrices: all of them for `full`, LoRA's factors for `lora`."""
    rank = lora_rank if scope == "lora" else 0
    forward = forward_flops(arch, tokens, length, rank, lora_targets)
    if scope == "full":
        return 3.0 * forward
    lora = forward_flops(arch, tokens, 0, rank, lora_targets) - forward_flops(arch, tokens, 0)
    return 2.0 * forward + lora
