"""Train-step throughput for a model config and batch shape, LoRA and full finetuning.

  python benchmarks/train_throughput.py --model=smollm2 --batch=32 --length=64
  python benchmarks/train_throughput.py --model=tiny:llama --scopes=lora,full,head

Prints tokens/s, model FLOP utilisation (forward FLOPs x 3 full, x 2 LoRA, x 1 head-only per
step) where the chip's peak is known, wall time per step and compile counts. Runs unchanged on CPU, GPU and TPU.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import chip_peak, forward_flops, print_table, step_hparams  # noqa: E402

from scalable_elicitation.models import load_pretrained  # noqa: E402
from scalable_elicitation.batching import make_batch, to_global  # noqa: E402
from scalable_elicitation.train import Steps  # noqa: E402


def bench(model, scope, batch, length, dtype, repeats):
    bundle = load_pretrained(model, dtype=dtype, trainable=scope)
    steps = Steps.for_model(bundle)
    state = steps.init_state(steps.fresh_params(jax.random.key(0)), jax.random.key(1))
    hp = step_hparams()
    rng = np.random.default_rng(0)
    toks = [rng.integers(3, bundle.config.vocab_size, length) for _ in range(batch)]
    b = to_global(make_batch(toks, rng.random(batch), np.ones(batch), batch, (length,), 0),
                  steps.mesh)
    train_step = jax.jit(steps.step_fn("xent"), donate_argnums=(0,))
    t0 = time.perf_counter()
    state, m = train_step(state, steps.frozen, b, hp)
    m["loss"].block_until_ready()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        state, m = train_step(state, steps.frozen, b, hp)
    m["loss"].block_until_ready()
    dt = (time.perf_counter() - t0) / repeats
    cfg = bundle.config
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(bundle.model)))
    # forward + backward: full finetuning ~3x forward; LoRA skips the frozen weights' gradients
    # (~2x); head-only needs no backward through the base (~1x)
    passes = {"full": 3.0, "lora": 2.0, "head": 1.0}[scope]
    flops = passes * forward_flops(cfg, n_params - cfg.vocab_size * cfg.hidden_size,
                                   batch * length, length)
    kind, peak = chip_peak()
    return {"device": kind, "model": model, "scope": scope, "dtype": dtype, "batch": batch,
            "length": length, "tokens/s": f"{batch * length / dt:,.0f}",
            "GFLOP/s": f"{flops / dt / 1e9:,.1f}",
            "MFU": f"{flops / dt / peak:.1%}" if peak else "n/a", "step s": f"{dt:.3f}",
            "first step s": f"{first:.1f}", "compiles": steps.compiles["train"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--scopes", default="lora,full")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    print_table([bench(a.model, s, a.batch, a.length, a.dtype, a.repeats)
                 for s in a.scopes.split(",")])


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
