"""Ours against the study's stack (PyTorch + transformers + peft), side by side in one run.

  pip install -e '.[peer]'   # torch, peft, accelerate (CPU torch: pip install torch==2.13.0)
  python benchmarks/peer_torch.py --batch=32 --length=64 --repeats=3 --rank=8

Both sides get the same model (the packaged SmolLM2-135M, or any Llama-family `--model` that
`load_pretrained` takes; the torch model is a transformers `LlamaModel` holding exactly our
loaded weights, plus a last-token linear head like ours), the same batch (`--batch` x
`--length` random tokens, no padding, float32), LoRA as our `LoraConfig` (rank `--rank`,
alpha = rank unless `--alpha`, dropout 0, every attention and MLP projection; peft's A and B
inits), AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.01, clip 1.0) and the soft
cross-entropy. Our train step is the sweep's (`Steps.for_model(bundle).step_fn()`, jitted with
the state donated); our forward is the model call jitted as the features' is
(`learner.replicated_jit`: the weights go in as arguments, none is copied out), torch's runs
under inference_mode. Our process sets host memory as the entry points do (`hostmem.prepare`,
before JAX starts: XLA:CPU's per-call temporaries stay in the process instead of being
page-faulted in afresh each call); torch's process is left as it is (its steady-state step
faults no page).

Each side runs in its own process (two thread pools in one process, XLA's and OpenMP's, would
compete for the cores), driven one call at a time: the forward calls, then the steps, with the
two sides' repeats interleaved (ours, torch, ours, torch, ...) so background load hits both
alike, and each row reports the median. One table: tokens/s, GFLOP/s and MFU (the same model
FLOPs for both: forward 2N + attention per token, LoRA step 2x forward), wall time per call, the
first call (compile or warm-up), compile count, threads, and ours/torch in tokens/s.
`max rel diff` is the forward parity of the two (pooled final hidden states), evidence that the
weights are the same.
Our side runs unchanged on CPU, GPU and TPU; torch uses CUDA when it has it, else the CPU.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])

TORCH_PROJ = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}


# ---------------------------------------------------------------------------------------------
# Ours (runs in its own process)
def ours(model, batch, length, lora, weights_path, seed=0):
    """Our forward and train-step callables, and what the parent and torch need: the host
    batch and weights (saved to `weights_path`), FLOPs, pooled hidden states."""
    from common import chip_peak, forward_flops, host_memory_as_entry_points, step_hparams
    host_memory_as_entry_points()  # first, before JAX starts its CPU threads (as a run does)
    import jax
    from flax import nnx
    from scalable_elicitation.batching import make_batch, to_global
    from scalable_elicitation.learner import replicated_jit
    from scalable_elicitation.models import load_pretrained
    from scalable_elicitation.models import layers as L
    from scalable_elicitation.train import Steps

    fwd_bundle = load_pretrained(model, dtype="float32", trainable="head")
    bundle = load_pretrained(model, dtype="float32", trainable="lora", lora=lora)
    cfg = bundle.config
    if cfg.family != "llama":
        raise ValueError(f"peer_torch compares Llama-family decoders; {cfg.model_type} is not")
    rng = np.random.default_rng(seed)
    toks = [rng.integers(3, cfg.vocab_size, length) for _ in range(batch)]
    steps = Steps.for_model(bundle)
    host = make_batch(toks, rng.random(batch), np.ones(batch), batch, (length,), 0)
    b = to_global(host, steps.mesh)
    np.savez(weights_path, **hf_state_dict(fwd_bundle.model, cfg),
             **{"batch." + k: v for k, v in host.items()})
    counts = {"forward": 0}

    def call(m, ids, mask):
        counts["forward"] += 1
        return m(ids, mask)

    fwd = replicated_jit(fwd_bundle, call)  # the features' jitted forward (weights not copied)

    train_step = jax.jit(steps.step_fn("xent"), donate_argnums=(0,))
    box = {"state": steps.init_state(steps.fresh_params(jax.random.key(0)), jax.random.key(1))}
    hp = step_hparams()

    def forward():
        fwd(b["input_ids"], b["attention_mask"]).block_until_ready()

    def train():
        box["state"], m = train_step(box["state"], steps.frozen, b, hp)
        m["loss"].block_until_ready()

    hidden = nnx.jit(lambda m, ids, mask: L.pool(m.hidden(ids, mask), mask, "last"))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(fwd_bundle.model)))
    kind, peak = chip_peak()
    info = {"hidden": np.asarray(hidden(fwd_bundle.model, b["input_ids"], b["attention_mask"])),
            "flops": forward_flops(cfg, n_params - cfg.vocab_size * cfg.hidden_size,
                                   batch * length, length),
            "device": kind, "peak": peak, "cfg": cfg,
            "threads": str(len(os.sched_getaffinity(0))) if kind == "cpu" else "-",
            "compiles": lambda: {"forward": counts["forward"],
                                 "lora step": steps.compiles["train"]}}
    return {"forward": forward, "lora step": train}, info


def hf_state_dict(model, cfg) -> dict[str, np.ndarray]:
    """Our Llama parameters under transformers' `LlamaModel` names and layouts."""
    n = lambda v: np.asarray(v[...], np.float32)  # noqa: E731
    sd = {"embed_tokens.weight": n(model.embed), "norm.weight": n(model.final_norm)}
    lay = model.layers
    for i in range(cfg.num_layers):
        pre = f"layers.{i}."
        sd[pre + "input_layernorm.weight"] = n(lay.attn_norm)[i]
        sd[pre + "post_attention_layernorm.weight"] = n(lay.mlp_norm)[i]
        for name, theirs in TORCH_PROJ.items():
            lin = getattr(lay, name)
            k = n(lin.kernel)[i]
            fan_in = int(np.prod(k.shape[:lin.n_in]))
            sd[pre + theirs + ".weight"] = k.reshape(fan_in, -1).T.copy()  # HF: [out, in]
            if lin.bias is not None:
                sd[pre + theirs + ".bias"] = n(lin.bias)[i].reshape(-1)
    sd["head.weight"] = n(model.head.kernel).T.copy()
    return sd


# ---------------------------------------------------------------------------------------------
# PyTorch + transformers + peft (runs in its own process)
def torch_base(cfg, sd: dict, device):
    """A transformers LlamaModel holding our weights, and our head as a torch Linear."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        rope_parameters=dict(cfg.rope_scaling_dict or {"rope_type": "default"},
                             rope_theta=cfg.rope_theta),
        max_position_embeddings=cfg.max_position_embeddings, attention_bias=cfg.qkv_bias,
        mlp_bias=cfg.mlp_bias, tie_word_embeddings=cfg.tie_word_embeddings,
        attention_dropout=0.0, sliding_window=cfg.sliding_window)
    base = LlamaModel(hf)
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    missing, unexpected = base.load_state_dict(
        {k: v for k, v in tensors.items() if k != "head.weight"}, strict=False)
    bad = [k for k in missing if "rotary" not in k] + list(unexpected)  # rotary: computed
    if bad:
        raise RuntimeError(f"torch weights do not match ours: {bad[:8]}")
    head = torch.nn.Linear(cfg.hidden_size, 2, bias=False)
    head.weight.data = tensors["head.weight"]
    return base.to(device), head.to(device)


def last_token(hidden, mask):
    """Our `pool(..., "last")` in torch: each row's last real token. [B, D]"""
    import torch
    idx = mask.shape[1] - 1 - torch.argmax(torch.flip(mask, [1]).gt(0).int(), dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def theirs(cfg, lora, weights_path):
    """The PyTorch + peft forward and train-step callables, and their info."""
    import copy
    import peft
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with np.load(weights_path) as z:
        arrays = {k: z[k] for k in z.files}
    host = {k.split(".", 1)[1]: arrays.pop(k) for k in list(arrays) if k.startswith("batch.")}
    base, head = torch_base(cfg, arrays, device)
    fwd_base = copy.deepcopy(base).eval()
    t = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
    ids, mask = t["input_ids"].long(), t["attention_mask"].long()
    targets, w = torch.stack([1.0 - t["target"], t["target"]], dim=-1), t["weight"]
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=[TORCH_PROJ[n].split(".")[1] for n in (lora.targets or TORCH_PROJ)]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def pooled_hidden():
        h = fwd_base(input_ids=ids, attention_mask=mask).last_hidden_state
        return last_token(h, mask).float()

    @torch.inference_mode()
    def forward():
        head(pooled_hidden())
        sync()

    def train():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        logp = torch.log_softmax(head(last_token(h, mask).float()), dim=-1)
        loss = (-(targets * logp).sum(-1) * w).sum() / w.sum().clamp_min(1e-9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()
        sync()

    from common import PEAK_FLOPS
    kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    with torch.inference_mode():
        hidden = pooled_hidden().cpu().numpy()
    info = {"hidden": hidden, "device": kind,
            "peak": next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None),
            "threads": str(torch.get_num_threads()) if device == "cpu" else "-",
            "compiles": lambda: {"forward": "-", "lora step": "-"}}
    return {"forward": forward, "lora step": train}, info


# ---------------------------------------------------------------------------------------------
# Driver: one process per side, one call at a time
def serve(side, args, conn):
    """Build one side, send its info, then run each named call the parent asks for and send
    back its wall time, until told to stop."""
    fns, info = (ours if side == "ours" else theirs)(*args)
    compiles = info.pop("compiles")
    conn.send(info)
    while (what := conn.recv()) is not None:
        t0 = time.perf_counter()
        fns[what]()
        conn.send(time.perf_counter() - t0)
    conn.send(compiles())


def start(side, args):
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(side, args, child), daemon=True)
    proc.start()
    return proc, parent


def measure(conns: dict, repeats: int) -> tuple[dict, dict]:
    """First-call and median per-call seconds of each (side, what): the forward calls first,
    then the steps, each side's repeats interleaved with the other's. (Alternating a side's
    forward and step calls made torch's allocator return and re-fault memory, up to 130,000
    page faults a step, that back-to-back steps never do.)"""
    def call(side, what):
        conns[side].send(what)
        return conns[side].recv()

    first, times = {}, {}
    for what in ("forward", "lora step"):
        order = [(side, what) for side in ("ours", "torch")]
        first.update({k: call(*k) for k in order})
        times.update({k: [] for k in order})
        for _ in range(repeats):
            for k in order:
                times[k].append(call(*k))
    return first, {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: = rank)")
    a = p.parse_args()
    from scalable_elicitation.models.config import LoraConfig

    lora = LoraConfig(rank=a.rank, alpha=a.alpha if a.alpha is not None else float(a.rank))
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        procs, conns, info = {}, {}, {}
        procs["ours"], conns["ours"] = start("ours", (a.model, a.batch, a.length, lora, weights))
        info["ours"] = conns["ours"].recv()  # written the weights torch loads
        procs["torch"], conns["torch"] = start("torch", (info["ours"]["cfg"], lora, weights))
        info["torch"] = conns["torch"].recv()
    first, dt = measure(conns, a.repeats)
    for side, conn in conns.items():
        conn.send(None)
        info[side]["compiles"] = conn.recv()
        procs[side].join()
    ref = info["torch"]["hidden"]
    diff = float(np.abs(info["ours"]["hidden"] - ref).max() / np.abs(ref).max())
    print_rows(a, first, dt, info, diff)


def print_rows(a, first, dt, info, diff):
    from common import print_table

    out = []
    for (side, what), sec in dt.items():
        flops = info["ours"]["flops"] * (2.0 if what == "lora step" else 1.0)
        peak = info[side]["peak"]
        out.append({
            "side": side, "device": info[side]["device"], "what": what, "batch": a.batch,
            "length": a.length, "rank": a.rank, "tokens/s": f"{a.batch * a.length / sec:,.0f}",
            "GFLOP/s": f"{flops / sec / 1e9:,.1f}",
            "MFU": f"{flops / sec / peak:.1%}" if peak else "n/a", "step s": f"{sec:.3f}",
            "first call s": f"{first[(side, what)]:.1f}",
            "compiles": info[side]["compiles"][what], "threads": info[side]["threads"],
            "ours/torch": f"{dt[('torch', what)] / sec:.2f}x" if side == "ours" else "-",
            "max rel diff": f"{diff:.1e}" if side == "ours" and what == "forward" else "-"})
    print_table(out)


if __name__ == "__main__":
    main()
