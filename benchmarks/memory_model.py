r"""The group memory model (`scalable_elicitation/memory.py`, docs/design.md#many-runs-at-once)
against XLA's compiled memory analysis (issue 22, item 4).

  python benchmarks/memory_model.py            # every row; small rows compiled on this device
  python benchmarks/memory_model.py --no-compile   # the model only

Each row is one shape: an architecture, the frozen base's dtype, the trainable scope, the batch,
the micro-batch (rows per pass), the sequence length, remat and the group size G. `model MiB` is
`memory.estimate(...).step_bytes(G)` (one train step of G members under `jax.vmap`, as the group
loop runs it); `xla MiB` is the compiled step's arguments + outputs + temporaries - aliased
(donated) outputs, on this machine's first device, and `ratio` model / xla. Rows marked big (the
Llama-3-8B shape) print the model only: they fit no CPU. The model's activations are counted at
4 bytes on CPU (XLA:CPU keeps bfloat16 work in float32) and in the compute dtype elsewhere, so on
a GPU or TPU the same script compares against that compile. Runs unchanged on CPU, GPU and TPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import print_table, step_hparams  # noqa: E402

from scalable_elicitation import memory  # noqa: E402
from scalable_elicitation.models import ModelBundle, build_model  # noqa: E402
from scalable_elicitation.models.config import ArchConfig  # noqa: E402
from scalable_elicitation.sharding import make_mesh  # noqa: E402
from scalable_elicitation.train import Steps  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int = 256
    ffn: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 512
    length: int = 64
    batch: int = 8
    micro: int = 0  # rows per pass (0: the whole batch)
    remat: bool = False
    dtype: str = "float32"
    scope: str = "lora"
    members: int = 1
    big: bool = False  # the model only

    def arch(self) -> ArchConfig:
        return ArchConfig(family="llama", model_type="llama", vocab_size=self.vocab,
                          hidden_size=self.hidden, intermediate_size=self.ffn,
                          num_layers=self.layers, num_heads=self.heads,
                          num_kv_heads=self.kv_heads, head_dim=self.hidden // self.heads,
                          tie_word_embeddings=False, pad_token_id=0)


LLAMA_8B = dict(hidden=4096, ffn=14336, layers=32, heads=32, kv_heads=8, vocab=128256,
                dtype="bfloat16", big=True)
SHAPES = [
    Shape(), Shape(remat=True), Shape(micro=2), Shape(length=128), Shape(ffn=1024, layers=4),
    Shape(dtype="bfloat16"), Shape(members=2), Shape(scope="full", hidden=128, ffn=384),
    Shape(hidden=384, ffn=1024, heads=6, kv_heads=3, length=96, batch=4, remat=True, members=2),
    *[Shape(**LLAMA_8B, batch=32, length=L, micro=m, remat=r)
      for L in (64, 512) for m in (1, 32) for r in (False, True)],
    Shape(**LLAMA_8B, batch=32, length=512, micro=1, remat=True, members=8),
]


def predicted(shape: Shape, platform: str) -> memory.Estimate:
    return memory.estimate(
        memory.Arch.of(shape.arch()), scope=shape.scope, batch_size=shape.batch,
        length=shape.length, param_dtype="float32" if shape.scope == "full" else shape.dtype,
        compute_dtype=shape.dtype, micro_batch=shape.micro, remat=shape.remat,
        platform=platform)


def compiled_step(shape: Shape):
    """The compiled train step of `shape.members` runs (vmapped over members when more than
    one), on one device, from abstract arguments: nothing is materialised but the model."""
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model, lora, mesh, args = build_model(shape.arch(), dtype=shape.dtype, trainable=shape.scope,
                                          compute_dtype=shape.dtype, mesh=mesh,
                                          remat=shape.remat)
    bundle = ModelBundle(model, None, shape.arch(), "memory", shape.scope, lora, mesh,
                         build_args=args)
    steps = Steps.for_model(bundle, micro_batch=shape.micro)
    state = jax.eval_shape(steps.init_state, steps.fresh_params(jax.random.key(0)),
                           jax.random.key(1))
    B, L = shape.batch, shape.length
    batch = {"input_ids": jax.ShapeDtypeStruct((B, L), jnp.int32),
             "attention_mask": jax.ShapeDtypeStruct((B, L), jnp.int32),
             "target": jax.ShapeDtypeStruct((B,), jnp.float32),
             "weight": jax.ShapeDtypeStruct((B,), jnp.float32)}
    hp, fn = step_hparams(), steps.step_fn("xent")
    if shape.members > 1:
        def stack(tree):
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct((shape.members, *x.shape),
                                                               x.dtype), tree)
        state, batch, hp = stack(state), stack(batch), stack(hp)
        fn = jax.vmap(fn, in_axes=(0, None, 0, 0))
    frozen = jax.eval_shape(lambda: steps.frozen)
    return jax.jit(fn, donate_argnums=(0,)).lower(state, frozen, batch, hp).compile()


def row(shape: Shape, platform: str, compile_small: bool) -> dict:
    est = predicted(shape, platform)
    out = {"arch": f"{shape.layers}x{shape.hidden}/{shape.ffn}", "dtype": shape.dtype,
           "scope": shape.scope, "batch x len": f"{shape.batch}x{shape.length}",
           "micro": shape.micro or shape.batch, "remat": shape.remat, "G": shape.members,
           "model MiB": f"{est.step_bytes(shape.members) / 2**20:,.1f}",
           "act MiB": f"{(est.saved + est.work) / 2**20:,.1f}"}
    if shape.big or not compile_small:
        return {**out, "xla MiB": "-", "ratio": "-", "compile s": "-"}
    t0 = time.perf_counter()
    xla = memory.xla_bytes(compiled_step(shape).memory_analysis())
    return {**out, "xla MiB": f"{xla / 2**20:,.1f}",
            "ratio": f"{est.step_bytes(shape.members) / xla:.2f}",
            "compile s": f"{time.perf_counter() - t0:.1f}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compile", default=True, action=argparse.BooleanOptionalAction,
                   help="compile the small shapes and print XLA's numbers beside the model's")
    args = p.parse_args(argv)
    platform = jax.devices()[0].platform
    print(f"{jax.devices()[0].device_kind} ({platform})", file=sys.stderr, flush=True)
    table = []
    for shape in SHAPES:
        table.append(row(shape, platform, args.compile))
        print(table[-1], file=sys.stderr, flush=True)
    print_table(table)


if __name__ == "__main__":
    main()
