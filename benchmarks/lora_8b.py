r"""LoRA on a Llama-3-8B-shaped model (random weights): the group engine's train step, one run
and many at once, whole batches and micro-batches (docs/design.md#many-runs-at-once, #stages).

  python benchmarks/lora_8b.py                   # the 8B shape, sequence 512: an accelerator
  python benchmarks/lora_8b.py --layers=2 --hidden=128 --ffn=256 --heads=4 --kv_heads=2 \
      --vocab=512 --length=32 --batch=4 --rows=1x1,2x1,2x4r --repeats=2  # CPU

Every run makes one update from `--batch` examples of `--length` real tokens. A row `GxM` (an
`r` after it: with remat, each block's activations recomputed in the backward pass) is what the
engine compiles for a group of G runs taking micro-batches of M rows (`train.micro_batch`):
`Steps.step_fn` under `jax.vmap` over the runs, the frozen base shared, each run's gradients
summed over its batch's micro-batches. 1x1 is the study's setting (micro-batch 1 x 32), as the
PyTorch + peft reference that ran at 3,531 tokens/s on an H200; `--attention` repeats the rows
with each attention kind (`einsum`, `fused`: `jax.nn.dot_product_attention`).

Prints tokens/s, model FLOP utilisation (LoRA: 2x forward FLOPs; recomputation not counted),
the speed against the reference (at the 8B shape on an H200 only), ms per update of all G runs,
the compile's seconds, XLA's compiled memory for the step (arguments,
outputs and temporaries) beside the memory model's, and the process's peak device memory so far
where the runtime reports it. A row that runs out of memory prints OOM and the others go on.
Runs on one device, unchanged on CPU, GPU and TPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import chip_peak, forward_flops, print_table, step_hparams  # noqa: E402

from scalable_elicitation import memory  # noqa: E402
from scalable_elicitation.models import ModelBundle, build_model  # noqa: E402
from scalable_elicitation.models.config import ArchConfig  # noqa: E402
from scalable_elicitation.sharding import make_mesh  # noqa: E402
from scalable_elicitation.train import Steps  # noqa: E402

REFERENCE_TOKENS_S = 3531.0  # PyTorch + peft, micro-batch 1 x 32, H200 (issue 12)


def arch(args) -> ArchConfig:
    """Llama-3-8B's shape (its config.json), or a smaller one from the flags."""
    return ArchConfig(family="llama", model_type="llama", vocab_size=args.vocab,
                      hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                      head_dim=args.hidden // args.heads, max_position_embeddings=8192,
                      rope_theta=500000.0, norm_eps=1e-5, tie_word_embeddings=False,
                      pooling="last", pad_token_id=0)


def batch(rng, cfg, shape, length):
    """Random full-length sequences and labels, shaped [*shape, length]."""
    n = int(np.prod(shape))
    return {"input_ids": jnp.asarray(rng.integers(3, cfg.vocab_size, (n, length)), jnp.int32
                                      ).reshape(*shape, length),
            "attention_mask": jnp.ones((*shape, length), jnp.int32),
            "target": jnp.asarray(rng.integers(0, 2, n), jnp.float32).reshape(shape),
            "weight": jnp.ones(shape, jnp.float32)}


def engine_step(steps: Steps):
    """The group engine's step: `Steps.step_fn` under `jax.vmap` over runs, states donated."""
    step = steps.step_fn("xent")
    return jax.jit(jax.vmap(step, in_axes=(0, None, 0, 0)), donate_argnums=(0,))


def compiled(fn, *args):
    """(the step compiled for these arguments, seconds it took, XLA's memory for one call:
    arguments, outputs and temporaries, less donated aliases; None where not reported)."""
    t0 = time.perf_counter()
    exe = fn.lower(*args).compile()
    seconds = time.perf_counter() - t0
    try:
        m = exe.memory_analysis()
        size = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 (a backend without the analysis)
        size = None
    return exe, seconds, size


def timed(fn, state, args, repeats):
    """Seconds per call of `state = fn(state, *args)[0]`, after one untimed call."""
    state, out = fn(state, *args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(repeats):
        state, out = fn(state, *args)
    jax.block_until_ready((state, out))
    return (time.perf_counter() - t0) / repeats


def peak_memory() -> str:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return f"{peak / 2**30:.1f} GiB" if peak else "n/a"


def parse_rows(rows: str, attention: str, batch_size: int
               ) -> list[tuple[int, int, bool, str]]:
    """[(runs, micro-batch, remat, attention)] from `--rows=GxM[r],...` and
    `--attention=einsum,fused`."""
    out = []
    for kind in filter(None, attention.split(",")):
        if kind not in ("einsum", "fused"):
            raise ValueError(f"--attention: {kind!r}; allowed: einsum, fused")
        for item in filter(None, rows.split(",")):
            remat = item.endswith("r")
            try:
                g, m = (int(x) for x in item.rstrip("r").lower().split("x"))
            except ValueError:
                raise ValueError(f"--rows: {item!r} is not GxM or GxMr (e.g. 8x1r)") from None
            if g < 1 or m < 1 or batch_size % m:
                raise ValueError(f"--rows: {item!r} needs G >= 1 and M >= 1 dividing "
                                 f"--batch={batch_size}")
            out.append((g, m, remat, kind))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=32, help="examples per run per update")
    p.add_argument("--rows", default="1x1,1x8,4x8r",
                   help="GxM rows: G runs at once, micro-batches of M; r: with remat")
    p.add_argument("--attention", default="einsum,fused")
    p.add_argument("--dtype", default="bfloat16", help="frozen base weights")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    plan = parse_rows(args.rows, args.attention, args.batch)

    cfg = arch(args)
    shape_keys = ("layers", "hidden", "ffn", "heads", "kv_heads", "vocab", "length", "batch")
    study_shape = all(getattr(args, k) == p.get_default(k) for k in shape_keys)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model, lora, mesh, build_args = build_model(cfg, dtype=args.dtype, trainable="lora",
                                                mesh=mesh)
    bundle = ModelBundle(model, None, cfg, "llama3-8b-shape", "lora", lora, mesh,
                         build_args=build_args)
    n_base = sum(int(x.size) for x in jax.tree.leaves(bundle.split()[2]))
    nonembed = n_base - 2 * cfg.vocab_size * cfg.hidden_size  # embedding and untied LM head
    kind, peak = chip_peak()
    peak = peak / jax.device_count() if peak else None  # one chip: the rows use one device
    reference = REFERENCE_TOKENS_S if study_shape and "H200" in kind else None
    L, B = args.length, args.batch
    print(f"{kind}: llama shape {cfg.num_layers} layers x {cfg.hidden_size}, "
          f"{n_base / 1e9:.2f}B frozen ({args.dtype}), sequence {L}, {B} examples per update",
          file=sys.stderr, flush=True)
    table = [measure(bundle, row, args, kind, peak, reference, nonembed) for row in plan]
    print_table(table)


def measure(bundle, row, args, kind, peak, reference, nonembed) -> dict:
    """One row of the table: the engine's step for G runs, micro-batch M, remat, attention."""
    G, M, remat, attention = row
    model, cfg, L, B = bundle.model, bundle.config, args.length, args.batch
    # the same frozen arrays under the graph this row asks for
    model.remat, model.cfg = remat, dataclasses.replace(cfg, attention=attention)
    steps = Steps.for_model(bundle, micro_batch=M if M < B else 0)
    name = f"{G}x{M}{'r' if remat else ''} {attention}"
    out = {"device": kind, "row": name, "tokens/update": G * B * L}
    try:
        state = steps.init_state(steps.fresh_params(jax.random.key(0)), jax.random.key(1))
        states = jax.tree.map(lambda x: jnp.stack([x] * G), state)
        call_args = (steps.frozen, batch(np.random.default_rng(0), cfg, (G, B), L),
                     step_hparams((G,)))
        fn, compile_s, xla = compiled(engine_step(steps), states, *call_args)
        predicted = memory.estimate(
            memory.Arch.of(cfg), scope="lora", batch_size=B, length=L, param_dtype=args.dtype,
            micro_batch=steps.micro_batch, remat=remat, lora_rank=bundle.lora.rank,
            lora_targets=bundle.lora.targets or cfg.lora_targets, attention=attention,
            platform=jax.default_backend()).step_bytes(G)
        per_call = timed(fn, states, call_args, args.repeats)
    except Exception as err:  # noqa: BLE001 (an out-of-memory row must not end the table)
        if "RESOURCE_EXHAUSTED" not in str(err) and "out of memory" not in str(err).lower():
            raise
        print(f"{name}: out of memory", file=sys.stderr, flush=True)
        return {**out, "ms/update": "OOM", "tokens/s": "OOM", "x reference": "-", "MFU": "-",
                "compile s": "-", "XLA MiB": "-", "model MiB": "-",
                "peak mem so far": peak_memory()}
    finally:
        model.remat, model.cfg = False, cfg
    tokens = G * B * L
    flops = 2 * forward_flops(cfg, nonembed, tokens, L)
    row = {**out, "ms/update": f"{per_call * 1e3:,.1f}", "tokens/s": f"{tokens / per_call:,.0f}",
           "x reference": f"{tokens / per_call / reference:.1f}x" if reference else "n/a",
           "MFU": f"{flops / per_call / peak:.1%}" if peak else "n/a",
           "compile s": f"{compile_s:.1f}",
           "XLA MiB": f"{xla / 2**20:,.1f}" if xla is not None else "n/a",
           "model MiB": f"{predicted / 2**20:,.1f}",
           "peak mem so far": peak_memory()}
    print(row, file=sys.stderr, flush=True)  # each row as it finishes: a timeout keeps it
    return row


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
