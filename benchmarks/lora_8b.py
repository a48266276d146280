r"""LoRA on a Llama-3-8B-shaped model (random weights): the study's setting, one run at a time
against many runs trained at once (docs/design.md#many-runs-at-once; issue 12, item 6).

  python benchmarks/lora_8b.py                   # the 8B shape, sequence 512: an accelerator
  python benchmarks/lora_8b.py --layers=2 --hidden=128 --ffn=256 --heads=4 --kv_heads=2 \
      --vocab=512 --length=32 --batch=4 --runs_micro=1x1,2x1 --engine=2 --repeats=2  # CPU

Every run makes one update from `--batch` examples of `--length` real tokens. Rows:
  GxM       G runs at once, each taking its batch as micro-batches of M sequences with the
            gradients accumulated (one forward and backward of G*M sequences per micro-step, the
            frozen base shared; then each run's own optimizer step). 1x1 is the study's setting
            (micro-batch 1 x 32 accumulation), as the PyTorch + peft reference that ran at
            3,531 tokens/s on an H200; 1x8 is that reference's batched-8 row (11,655 tokens/s);
            Gx1 keeps the study's setting per run and trains G runs at once.
  engine G  what `groups.run_stages_grouped` compiles today: `jax.vmap` of `Steps.step_fn` over
            G runs, each run's whole batch in one step (`--engine_remat`: recompute each
            block's activations in the backward pass, which 8B needs for 32 x 512 tokens per
            run, at about one more forward's cost).

Prints tokens/s, model FLOP utilisation (LoRA: 2x forward FLOPs; recomputation not counted),
the speed against the reference (at the 8B shape on an H200 only; the issue's goal is >= 5x),
ms per update of all G runs, the first call's seconds (compile included), and the process's
peak device memory so far where the runtime reports it (the largest of this row and the rows
before it: order rows by size to read it per row). A row that runs out of memory prints OOM
and the others go on. Runs on one device, unchanged on CPU, GPU and TPU.
"""
from __future__ import annotations

import argparse
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

from scalable_elicitation.models import ModelBundle, build_model  # noqa: E402
from scalable_elicitation.models.config import ArchConfig  # noqa: E402
from scalable_elicitation.sharding import make_mesh  # noqa: E402
from scalable_elicitation.train import Steps, learning_rate, soft_cross_entropy  # noqa: E402

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


def accumulated_step(steps: Steps, runs: int):
    """One update of each of `runs` runs from micro-batches [runs, A, M, L]: a `lax.scan` over
    the A micro-steps, each one forward and backward of all runs' M sequences (`jax.vmap` over
    runs, the frozen base shared), gradients averaged per run, then each run's optimizer step
    as `Steps` makes it (the same update as one batch of A*M, up to float rounding). Jitted,
    states donated."""
    def grads_of(params, frozen, mb):
        def loss(p):
            logits = steps.logits(p, frozen, mb)
            y = mb["target"]
            return soft_cross_entropy(logits, jnp.stack([1.0 - y, y], -1), mb["weight"])
        return jax.value_and_grad(loss)(params)

    per_run = jax.vmap(grads_of, in_axes=(0, None, 0))

    def update(state, grads, hp):
        updates, opt_state = steps.tx.update(grads, state.opt_state, state.params)
        lr = learning_rate(state.step, hp["lr"], hp["warmup"], hp["total"])
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

    def step(states, frozen, micro, hp):
        micro = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), micro)  # [A, runs, M, ...]

        def one(total, mb):
            values, grads = per_run(states.params, frozen, mb)
            return jax.tree.map(jnp.add, total, grads), values

        zeros = jax.tree.map(jnp.zeros_like, states.params)
        grads, losses = jax.lax.scan(one, zeros, micro)
        grads = jax.tree.map(lambda g: g / losses.shape[0], grads)
        return jax.vmap(update)(states, grads, hp), losses.mean(0)

    return jax.jit(step, donate_argnums=(0,))


def engine_step(steps: Steps):
    """The group engine's step: `Steps.step_fn` under `jax.vmap` over runs."""
    step = steps.step_fn("xent")
    return jax.jit(jax.vmap(step, in_axes=(0, None, 0, 0)), donate_argnums=(0,))


def timed(fn, state, args, repeats):
    """(seconds per call, compile+first call seconds) of `state = fn(state, *args)[0]`."""
    t0 = time.perf_counter()
    state, out = fn(state, *args)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        state, out = fn(state, *args)
    jax.block_until_ready((state, out))
    return (time.perf_counter() - t0) / repeats, first


def peak_memory() -> str:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return f"{peak / 2**30:.1f} GiB" if peak else "n/a"


def parse_rows(runs_micro: str, engine: str, batch_size: int) -> list[tuple[str, int, int]]:
    """[(kind, runs, micro-batch)] from `--runs_micro=GxM,...` and `--engine=G,...`."""
    rows = []
    for item in filter(None, runs_micro.split(",")):
        try:
            g, m = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--runs_micro: {item!r} is not GxM (e.g. 8x1)") from None
        if g < 1 or m < 1 or batch_size % m:
            raise ValueError(f"--runs_micro: {item!r} needs G >= 1 and M >= 1 dividing "
                             f"--batch={batch_size}")
        rows.append(("accumulated", g, m))
    rows += [("engine", int(g), batch_size) for g in filter(None, engine.split(","))]
    return rows


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
    p.add_argument("--runs_micro", default="1x1,1x8,8x1,16x1",
                   help="GxM rows: G runs at once, micro-batches of M, gradients accumulated")
    p.add_argument("--engine", default="4", help="group sizes of the engine's step to time")
    p.add_argument("--engine_remat", default=True, action=argparse.BooleanOptionalAction)
    p.add_argument("--dtype", default="bfloat16", help="frozen base weights")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    plan = parse_rows(args.runs_micro, args.engine, args.batch)

    cfg = arch(args)
    shape_keys = ("layers", "hidden", "ffn", "heads", "kv_heads", "vocab", "length", "batch")
    study_shape = all(getattr(args, k) == p.get_default(k) for k in shape_keys)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model, lora, mesh, build_args = build_model(cfg, dtype=args.dtype, trainable="lora",
                                                mesh=mesh)
    bundle = ModelBundle(model, None, cfg, "llama3-8b-shape", "lora", lora, mesh,
                         build_args=build_args)
    plain = Steps.for_model(bundle)
    model.remat = True  # the same frozen arrays under a graph that recomputes activations
    remat = Steps.for_model(bundle)
    model.remat = False
    n_base = sum(int(x.size) for x in jax.tree.leaves(plain.frozen))
    nonembed = n_base - 2 * cfg.vocab_size * cfg.hidden_size  # embedding and untied LM head
    kind, peak = chip_peak()
    peak = peak / jax.device_count() if peak else None  # one chip: the rows use one device
    # the reference is PyTorch on an H200 at the 8B shape, sequence 512, 32 per update
    reference = REFERENCE_TOKENS_S if study_shape and "H200" in kind else None
    rng = np.random.default_rng(0)
    L, B = args.length, args.batch
    print(f"{kind}: llama shape {cfg.num_layers} layers x {cfg.hidden_size}, "
          f"{n_base / 1e9:.2f}B frozen ({args.dtype}), sequence {L}, {B} examples per update",
          file=sys.stderr, flush=True)

    table = []
    for how, G, M in plan:
        steps = remat if how == "engine" and args.engine_remat else plain
        name = f"{G}x{M}" if how == "accumulated" else f"engine {G}"
        row = {"device": kind, "row": name, "runs": G, "micro-batch": M,
               "remat": steps is remat, "tokens/update": G * B * L}
        try:
            state = steps.init_state(steps.fresh_params(jax.random.key(0)), jax.random.key(1))
            states = jax.tree.map(lambda x: jnp.stack([x] * G), state)
            if how == "accumulated":
                fn = accumulated_step(steps, G)
                call_args = (steps.frozen, batch(rng, cfg, (G, B // M, M), L), step_hparams((G,)))
            else:
                fn = engine_step(steps)
                call_args = (steps.frozen, batch(rng, cfg, (G, B), L), step_hparams((G,)))
            per_call, first = timed(fn, states, call_args, args.repeats)
        except Exception as err:  # noqa: BLE001 (an out-of-memory row must not end the table)
            if "RESOURCE_EXHAUSTED" not in str(err) and "out of memory" not in str(err).lower():
                raise
            table.append({**row, "ms/update": "OOM", "tokens/s": "OOM", "x reference": "-",
                          "MFU": "-", "first call s": "-", "peak mem so far": peak_memory()})
            print(f"{name}: out of memory", file=sys.stderr, flush=True)
            continue
        tokens = G * B * L
        flops = 2 * forward_flops(cfg, nonembed, tokens, L)
        table.append({
            **row, "ms/update": f"{per_call * 1e3:,.1f}", "tokens/s": f"{tokens / per_call:,.0f}",
            "x reference": f"{tokens / per_call / reference:.1f}x" if reference else "n/a",
            "MFU": f"{flops / per_call / peak:.1%}" if peak else "n/a",
            "first call s": f"{first:.1f}", "peak mem so far": peak_memory()})
        print(f"{name}: {table[-1]['tokens/s']} tokens/s", file=sys.stderr, flush=True)
    print_table(table)


if __name__ == "__main__":
    main()
