"""In-context-learning throughput with the shared-prefix KV cache against re-encoding the full
prompt for every input, on the same inputs (runs unchanged on CPU, GPU and TPU).

  python benchmarks/icl_throughput.py --model=smollm2 --k=8 --n=64
  python benchmarks/icl_throughput.py --model=tiny:llama --k=32 --n=64

Prints inputs/s, tokens/s (prompt tokens the model would otherwise process), wall time,
compile counts, and the largest score difference between the two paths.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import print_table  # noqa: E402

from scalable_elicitation.data import load_task  # noqa: E402
from scalable_elicitation.learner import Learner, LearnerConfig  # noqa: E402
from scalable_elicitation.prompts import PromptBuilder, label_token_ids, make_shots  # noqa: E402
from scalable_elicitation.batching import Encoded, to_global  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max_length", type=int, default=64)
    a = p.parse_args()
    task = load_task("tweet_sentiment", seed=0, n_test=max(2, a.n), max_train=4 * a.k + 8)
    shots_src = task.train.take(np.arange(a.k))
    texts = list(task.test["text"][:a.n])
    buckets = (64, 128, 256, 512, 1024, 2048, 4096)
    learner = Learner(LearnerConfig(a.model, trainable="head", max_length=a.max_length,
                                    buckets=buckets, batch_size=a.batch,
                                    mesh=(("data", 1),)))
    builder = PromptBuilder(learner.tokenizer, make_shots(
        shots_src["id"], shots_src["text"], shots_src["label"]), shot_max_length=a.max_length,
        input_max_length=a.max_length, seed=0)
    rows = []

    t0 = time.perf_counter()
    cached = learner.icl_scores_many([builder], task.test["id"][:a.n], texts)[0]
    first_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = learner.icl_scores_many([builder], task.test["id"][:a.n], texts)[0]
    dt_cached = time.perf_counter() - t0

    # without the cache: the whole prompt per input, through the same jitted model
    id0, id1 = label_token_ids(learner.tokenizer)
    full = Encoded([np.asarray(builder.prefix() + builder.suffix(t)[0], np.int32)
                    for t in texts], np.zeros(len(texts), bool))
    compiles = {"n": 0}
    from scalable_elicitation.learner import replicated_jit

    def last(m, ids, mask):
        compiles["n"] += 1
        return m.last_lm_logits(ids, mask)

    fn = replicated_jit(learner.bundle, last)

    def run_full():
        out = np.zeros(len(texts), np.float32)
        order = np.argsort(full.lengths(), kind="stable")
        for s in range(0, len(order), a.batch):
            idx = order[s:s + a.batch]
            b = full.batch(idx, np.zeros(len(idx)), np.ones(len(idx)), learner.spec)
            g = to_global({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                          learner.steps.mesh)
            logits = fn(g["input_ids"], g["attention_mask"])
            out[idx] = np.asarray(jax.device_get(logits[:, id1] - logits[:, id0]))[:len(idx)]
        return out

    t0 = time.perf_counter()
    run_full()
    first_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    uncached = run_full()
    dt_full = time.perf_counter() - t0
    prompt_tokens = sum(len(t) for t in full.tokens)
    diff = float(np.max(np.abs(cached - uncached)) / max(1e-9, np.max(np.abs(uncached))))
    device = jax.devices()[0].device_kind
    for name, dt, first, comp in (("prefix cache", dt_cached, first_cached, "-"),
                                  ("full prompt", dt_full, first_full, compiles["n"])):
        rows.append({"device": device, "model": a.model, "k": a.k, "inputs": a.n,
                     "path": name, "inputs/s": f"{a.n / dt:,.1f}",
                     "prompt tok/s": f"{prompt_tokens / dt:,.0f}", "wall s": f"{dt:.2f}",
                     "first call s": f"{first:.1f}", "compiles": comp,
                     "max rel diff": f"{diff:.1e}"})
    print_table(rows)


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
