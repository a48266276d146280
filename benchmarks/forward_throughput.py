"""Forward-pass throughput of a model config and batch shape (runs unchanged on CPU/GPU/TPU).

  python benchmarks/forward_throughput.py --model=smollm2 --batch=32 --length=64 --dtype=float32
  python benchmarks/forward_throughput.py --model=tiny:llama --batch=8 --length=32

Prints tokens/s, model FLOP utilisation where the chip's peak is known, wall time and the
number of compilations.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import chip_peak, forward_flops, print_table  # noqa: E402

from scalable_elicitation.models import load_pretrained  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    bundle = load_pretrained(a.model, dtype=a.dtype, trainable="head")
    cfg = bundle.config
    compiles = {"n": 0}

    @nnx.jit
    def fwd(model, ids, mask):
        compiles["n"] += 1
        return model(ids, mask)

    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, cfg.vocab_size, (a.batch, a.length)), jnp.int32)
    mask = jnp.ones_like(ids)
    t0 = time.perf_counter()
    fwd(bundle.model, ids, mask).block_until_ready()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        out = fwd(bundle.model, ids, mask)
    out.block_until_ready()
    dt = (time.perf_counter() - t0) / a.repeats
    n_embed = cfg.vocab_size * cfg.hidden_size
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(bundle.model)))
    flops = forward_flops(cfg, n_params - n_embed, a.batch * a.length, a.length)
    kind, peak = chip_peak()
    print_table([{
        "device": kind, "model": a.model, "dtype": a.dtype, "batch": a.batch,
        "length": a.length, "tokens/s": f"{a.batch * a.length / dt:,.0f}",
        "GFLOP/s": f"{flops / dt / 1e9:,.1f}",
        "MFU": f"{flops / dt / peak:.1%}" if peak else "n/a",
        "step s": f"{dt:.3f}", "first call s": f"{first:.1f}", "compiles": compiles["n"]}])


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
