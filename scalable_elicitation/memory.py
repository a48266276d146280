"""How many bytes a group of runs takes on a device (docs/design.md#many-runs-at-once): plain
arithmetic over the architecture, the dtypes, the trainable scope, the batch, the micro-batch,
the sequence length, remat and each member's stored data, without JAX, so planning can size
groups before anything loads and the scheduler (`runner.auto_group_size`) from numbers it reads
off the learner.

    est = estimate(Arch.of(bundle.config), scope="lora", param_dtype="bfloat16", ...)
    est.group_bytes(G)   # shared frozen base + G * per member

What is counted, and why (each term is a field of `Estimate`):
- `frozen`: the base weights in the parameter dtype, read by every member (shared).
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

XLA:CPU computes bfloat16 elementwise work in float32 and keeps float32 copies, so on CPU the
activations are counted at 4 bytes whatever the compute dtype (`activation_itemsize`); an
accelerator keeps them in the compute dtype.
"""
from __future__ import annotations

import dataclasses

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
F32 = 4
# The backward pass of one block holds that block's residuals (sliced out of the scan's stacked
# buffers, or recomputed under remat) plus cotangents of about half their size: measured as
# 1.35-1.8 blocks' residuals on XLA:CPU (tests/test_memory_model.py, benchmarks/memory_model.py).
BACKWARD_WORK = 1.5
# With only the named values kept (`named_residual_bytes`), the block being differentiated
# recomputes the rest once and holds it with the cotangents: measured as 0.86-0.95 blocks'
# residuals on XLA:CPU (benchmarks/memory_model.py).
NAMED_WORK = 0.9
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


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

    @classmethod
    def of(cls, config) -> "Arch":
        """From an `ArchConfig` (read by attribute, so this module imports no model code)."""
        return cls(config.hidden_size, config.intermediate_size, config.num_layers,
                   config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size,
                   bool(config.tie_word_embeddings))

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(fan in, fan out) of each block's projections."""
        d, f, q, kv = (self.hidden, self.intermediate, self.heads * self.head_dim,
                       self.kv_heads * self.head_dim)
        return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f),
                "up": (d, f), "down": (f, d)}

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


def block_residual_bytes(arch: Arch, scope: str, act: int, length: int, lora_rank: int = 8,
                         lora_targets=PROJECTIONS) -> int:
    """Bytes one token saves in one decoder block for the backward pass (`llama._block`), with
    activations of `act` bytes and `length` keys per query:
    - each RMSNorm's float32 input (two);
    - q and k after RoPE and v (attention's backward needs them), in the compute dtype;
    - the attention scores (float32) and probabilities (compute dtype), heads x keys;
    - SwiGLU's gate and up outputs, the sigmoid, silu and their product (five of the MLP width);
    - the input of each trainable projection: one copy per distinct input (the normed hidden
      for q, k, v; the attention output for o; the normed hidden for gate, up; the MLP
      activation for down), float32 for LoRA (its factors run in float32), `act` for full
      finetuning; and LoRA's low-rank product (float32) per adapted projection.
    A frozen projection saves nothing: its weight gradient is never formed."""
    d, f, hd = arch.hidden, arch.intermediate, arch.head_dim
    q, kv = arch.heads * hd, arch.kv_heads * hd
    out = 2 * d * F32 + (q + 2 * kv) * act + arch.heads * length * (F32 + act) + 5 * f * act
    if scope == "head":
        return out
    trained = set(PROJECTIONS if scope == "full" else lora_targets)
    keep = F32 if scope == "lora" else act
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

    @property
    def shared(self) -> int:
        return self.frozen

    @property
    def step_member(self) -> int:
        """One member's bytes in a train step alone: state, gradients, activations."""
        return self.params + self.adam + self.grads + self.saved + self.work

    @property
    def per_member(self) -> int:
        """One member's bytes in the group loop: a step's, its best parameters and data."""
        return self.step_member + self.best + self.data

    def step_bytes(self, members: int = 1) -> int:
        """A (vmapped) train step of `members` runs: the frozen base once, the rest each."""
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
             num_labels: int = 2, attention: str = "einsum") -> Estimate:
    """A group member's bytes, by term. `micro_batch`: global rows per forward and backward
    pass (0: the whole batch); `train_rows`, `val_rows`: the member's examples stored on the
    device; `scope="head"` is a probe on cached features (no pass through the model);
    `attention`: the model's kind (`ArchConfig.attention`), which decides what a block
    keeps."""
    n_train = trainable_params(arch, scope, lora_rank, lora_targets, num_labels)
    rows = micro_batch if 0 < micro_batch < batch_size else batch_size
    grads = n_train * F32 * (2 if rows < batch_size else 1)
    if scope == "head":  # features [rows, hidden] float32 and the head's logits
        return Estimate(0, n_train * F32, 2 * n_train * F32, n_train * F32, grads,
                        (train_rows + val_rows) * (arch.hidden + 2) * F32,
                        rows * arch.hidden * F32, 0)
    act = activation_itemsize(compute_dtype or param_dtype, platform)
    frozen = 0 if scope == "full" else arch.base_params() * itemsize(param_dtype)
    tokens = rows * length
    block = block_residual_bytes(arch, scope, act, length, lora_rank, lora_targets) * tokens
    # LoRA with einsum attention keeps only the named values (`named_residual_bytes`); the
    # fused kernel and full finetuning keep JAX's default, every intermediate; either way the
    # block being differentiated
    # holds all of them again, recomputed or sliced out
    named = attention == "einsum" and scope == "lora"  # `llama.LlamaModel.hidden`'s rule
    kept = (named_residual_bytes(arch, scope, act, length, lora_rank, lora_targets) * tokens
            if named else block)
    # outside the blocks: the embedded input, the attention bias [rows, L, L] and RoPE's
    # cos and sin for q and k (float32)
    outside = tokens * (arch.hidden * act + length * F32 + 4 * arch.head_dim * F32)
    # remat keeps each block's input only; the block is recomputed in the backward pass
    saved = arch.layers * (tokens * arch.hidden * act if remat else kept) + outside
    work = int((NAMED_WORK if named and not remat else BACKWARD_WORK) * block)
    # ids and masks (int32) per stored row, the training rows' targets and weights, the
    # validation rows' labels and mask
    data = (train_rows + val_rows) * length * 8 + train_rows * 8 + val_rows * 5
    return Estimate(frozen, n_train * F32, 2 * n_train * F32, n_train * F32, grads, data,
                    saved, work)


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
