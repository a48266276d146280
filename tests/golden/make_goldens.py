"""Make the golden arrays that the parity tests compare our Flax models against.

Every array here comes from the PyTorch models in ``transformers``, never from our own code.

Run from the repository root (about a minute on 2 CPU cores)::

    pip install torch==2.13.0 accelerate   # accelerate: transformers refuses GGUF files without it
    python tests/golden/make_goldens.py            # tiny variants and real weights
    python tests/golden/make_goldens.py --tiny-only  # skip the offline SmolLM2 / MiniLM assets

Needs: torch (CPU is enough), transformers >= 5, safetensors, numpy, gguf and accelerate (for
transformers' GGUF loader), and for the real weights the offline asset packages of
``scalable_elicitation.assets`` (only their files are read; their modules are never imported).

Writes, under ``tests/golden/``:

- ``<variant>/`` (``config.json`` + ``model.safetensors``) and ``<variant>.npz`` for each tiny
  random model in ``VARIANTS``. Decoder npz: ``input_ids`` [B, L] int32, ``attention_mask``
  [B, L] int32 (all ones), ``lm_logits`` [B, L, V], ``hidden`` [B, L, D] (after the final norm), and
  ``padded_input_ids`` / ``padded_attention_mask`` / ``padded_lm_logits`` / ``padded_hidden``: row 0
  left-padded, row 1 right-padded (compare where the mask is 1 only). BERT npz: ``input_ids``,
  ``attention_mask``, ``token_type_ids`` (zeros), ``hidden`` (last_hidden_state) and the same four
  under ``bert_padded_*`` with a right-padded second row.
- ``smollm2_real.npz`` from SmolLM2-135M-Instruct (Q4_1 GGUF) through transformers' own PyTorch
  GGUF loader, and ``minilm_real.npz`` from all-MiniLM-L6-v2 through ``BertModel``.
- ``MANIFEST.json``: versions, seeds, per-variant facts and the sanity checks below.

The reference model of each tiny variant is re-loaded from the folder just written, so the arrays
describe exactly the files on disk. Some ``config.json`` files are deliberately rewritten in the
transformers 4 layout that hub checkpoints still use (see ``LEGACY_CONFIG``), and the script checks
that transformers 5 reads them back to the same outputs.

Parameters are not left at Hugging Face's init (N(0, 0.02), norms at one, biases at zero): with
that init attention is nearly uniform and norm weights or biases that fail to load go unnoticed.
``randomize_`` draws every parameter from a seeded generator instead.

Deterministic: fixed seeds, float32, eager attention, one thread.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import sys

import numpy as np
import torch
import transformers

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent
BATCH, LENGTH = 2, 16
REAL_SENTENCES = [
    "The capital of France is",
    "I love this movie, it was great!",
    "Weak labels are cheap but noisy.",
]
SMOLLM2_FRANCE_IDS = [504, 3575, 282, 4649, 314]  # docs/design.md#offline-assets
SMOLLM2_PAD_ID = 2
VOCAB_SUBSET_SIZE = 512

_DECODER = dict(
    vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class, model class, config kwargs, seed)
VARIANTS = {
    "llama_tied": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(_DECODER, tie_word_embeddings=True), 101),
    "llama_untied": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(_DECODER, tie_word_embeddings=False, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "default", "rope_theta": 50000.0}), 102),
    # head_dim set explicitly and != hidden_size / num_attention_heads (32 / 4 = 8), as in
    # Mistral-Nemo: q/o projections are then not square.
    "llama_head_dim": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(_DECODER, head_dim=16, tie_word_embeddings=False), 103),
    # Llama 3.1 rope scaling. head_dim 16, theta 5e5: wavelengths 2*pi*theta^(2i/16) are
    # 6.3 (< 64/4: kept), 32.6 (between 16 and 64: smoothed), then > 64 (divided by 8), so
    # all three branches of the llama3 rule are used within 16 positions.
    "llama31_rope": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(_DECODER, hidden_size=64, intermediate_size=96, tie_word_embeddings=False,
             rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}), 104),
    "qwen2_bias": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(_DECODER, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), 105),
    # sliding_window=4 < L=16: a token sees itself and the 3 tokens before it.
    "mistral_swa": (
        "MistralConfig", "MistralForCausalLM",
        dict(_DECODER, tie_word_embeddings=False, sliding_window=4), 106),
    "bert": (
        "BertConfig", "BertModel",
        dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2,
             hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0), 107),
}


def _legacy_llama31(cfg: dict) -> dict:
    """transformers 4 layout of Meta's Llama-3.1 config.json: rope_theta + rope_scaling."""
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope  # keeps "rope_type": "llama3"
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    return cfg


def _legacy_rope_theta(cfg: dict) -> dict:
    """transformers 4 layout of Llama-2/3 config.json: top-level rope_theta, no rope_parameters,
    no head_dim (it is hidden_size // num_attention_heads), torch_dtype instead of dtype."""
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg.pop("head_dim")
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    return cfg


def _legacy_qwen2(cfg: dict) -> dict:
    """Qwen1.5 / Qwen2 hub layout: a sliding_window value that is *off* (use_sliding_window false),
    no layer_types. An implementation that applies sliding_window here is wrong."""
    cfg.pop("layer_types", None)
    cfg["sliding_window"] = 4
    cfg["use_sliding_window"] = False
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    return cfg


LEGACY_CONFIG = {
    "llama_untied": _legacy_rope_theta,
    "llama31_rope": _legacy_llama31,
    "qwen2_bias": _legacy_qwen2,
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter from a seeded generator, at scales that keep activations O(1).

    Matrices N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2).
    Tied parameters are one tensor, so they stay tied.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights appear once
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".bias"):
                param.copy_(0.1 * noise)
            elif "norm" in name.lower():  # RMSNorm / LayerNorm weight
                param.copy_(1.0 + 0.1 * noise)
            elif "embed" in name:
                param.copy_(noise)
            elif param.ndim == 2:  # nn.Linear weight [out, in]
                param.copy_(noise / math.sqrt(param.shape[1]))
            else:
                raise ValueError(f"no init rule for parameter {name} {tuple(param.shape)}")


def build_model(variant: str, overrides: dict | None = None, seed_offset: int = 0):
    """The tiny random float32 eager model of a variant (not saved)."""
    config_cls, model_cls, kwargs, seed = VARIANTS[variant]
    kwargs = dict(copy.deepcopy(kwargs), **(overrides or {}))
    config = getattr(transformers, config_cls)(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed + seed_offset)
    model = getattr(transformers, model_cls)(config).to(torch.float32).eval()
    randomize_(model, seed + seed_offset)
    return model


def save_model(model, folder: pathlib.Path, legacy=None) -> None:
    """save_pretrained (safetensors), then optionally rewrite config.json in an older layout."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if legacy is not None:
        path = folder / "config.json"
        cfg = legacy(json.loads(path.read_text()))
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_model(folder: pathlib.Path, is_encoder: bool):
    cls = transformers.AutoModel if is_encoder else transformers.AutoModelForCausalLM
    return cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def run_decoder(model, input_ids: np.ndarray, attention_mask: np.ndarray):
    """-> (lm_logits [B, L, V], hidden [B, L, D] after the final norm) as float32 numpy."""
    ids = torch.from_numpy(input_ids.astype(np.int64))
    mask = torch.from_numpy(attention_mask.astype(np.int64))
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits.float().numpy(), hidden.float().numpy()


@torch.no_grad()
def run_encoder(model, input_ids, attention_mask, token_type_ids):
    out = model(input_ids=torch.from_numpy(input_ids.astype(np.int64)),
                attention_mask=torch.from_numpy(attention_mask.astype(np.int64)),
                token_type_ids=torch.from_numpy(token_type_ids.astype(np.int64)))
    return out.last_hidden_state.float().numpy()


def make_inputs(vocab_size: int, seed: int, batch: int = BATCH, length: int = LENGTH):
    """Random ids [B, L] int32 avoiding the special ids 0-2, and an all-ones mask."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(3, vocab_size, size=(batch, length)).astype(np.int32)
    attention_mask = np.ones((batch, length), np.int32)
    return input_ids, attention_mask


def padded_inputs(input_ids, left: int, right: int, pad_id: int = 0):
    """Row 0: ``left`` pads then the row's first L-left ids; row 1: its first L-right ids then pads."""
    ids = np.full_like(input_ids, pad_id)
    mask = np.zeros_like(input_ids)
    length = input_ids.shape[1]
    if left:
        ids[0, left:] = input_ids[0, :length - left]
        mask[0, left:] = 1
    else:
        ids[0], mask[0] = input_ids[0], 1
    ids[1, :length - right] = input_ids[1, :length - right]
    mask[1, :length - right] = 1
    return ids, mask


def rel_diff(a, b, mask=None) -> float:
    if mask is not None:
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def check_finite(name, arrays: dict) -> None:
    for key, value in arrays.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise RuntimeError(f"{name}: {key} has non-finite values")


def make_tiny(variant: str) -> dict:
    config_cls, model_cls, kwargs, seed = VARIANTS[variant]
    is_encoder = model_cls == "BertModel"
    folder = GOLDEN_DIR / variant
    model = build_model(variant)
    save_model(model, folder, LEGACY_CONFIG.get(variant))
    reloaded = load_model(folder, is_encoder)
    facts = {"config_class": config_cls, "model_class": model_cls, "seed": seed,
             "config_json_layout": "transformers4" if variant in LEGACY_CONFIG else "transformers5",
             "num_parameters": sum(p.numel() for p in model.parameters())}
    input_ids, attention_mask = make_inputs(kwargs["vocab_size"], seed)

    if is_encoder:
        token_type_ids = np.zeros_like(input_ids)
        hidden = run_encoder(reloaded, input_ids, attention_mask, token_type_ids)
        if rel_diff(run_encoder(model, input_ids, attention_mask, token_type_ids), hidden) > 0:
            raise RuntimeError(f"{variant}: reloaded model differs from the one saved")
        pad_ids, pad_mask = padded_inputs(input_ids, left=0, right=5)
        pad_hidden = run_encoder(reloaded, pad_ids, pad_mask, token_type_ids)
        arrays = dict(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids, hidden=hidden,
                      bert_padded_input_ids=pad_ids, bert_padded_attention_mask=pad_mask,
                      bert_padded_token_type_ids=token_type_ids, bert_padded_hidden=pad_hidden)
        # Row 0 is unpadded in both: the padded batch must agree with the plain one there.
        facts["padded_row0_vs_plain"] = rel_diff(pad_hidden[0], hidden[0])
        # Padding must matter to the pads' own positions only: rerun row 1 unpadded and cut it.
        n = int(pad_mask[1].sum())
        alone = run_encoder(reloaded, pad_ids[1:, :n], pad_mask[1:, :n], token_type_ids[1:, :n])
        facts["padded_row1_vs_unpadded"] = rel_diff(pad_hidden[1, :n], alone[0])
        if facts["padded_row1_vs_unpadded"] > 1e-5:
            raise RuntimeError(f"{variant}: right padding changed real positions {facts}")
    else:
        logits, hidden = run_decoder(reloaded, input_ids, attention_mask)
        if rel_diff(run_decoder(model, input_ids, attention_mask)[0], logits) > 0:
            raise RuntimeError(f"{variant}: reloaded model differs from the one saved "
                               f"(config.json layout {facts['config_json_layout']})")
        pad_ids, pad_mask = padded_inputs(input_ids, left=5, right=3)
        pad_logits, pad_hidden = run_decoder(reloaded, pad_ids, pad_mask)
        arrays = dict(input_ids=input_ids, attention_mask=attention_mask,
                      lm_logits=logits, hidden=hidden,
                      padded_input_ids=pad_ids, padded_attention_mask=pad_mask,
                      padded_lm_logits=pad_logits, padded_hidden=pad_hidden)
        # Padding must not change real positions (rope is relative, so left pads may shift
        # absolute positions without changing the result beyond rounding).
        facts["padded_left_vs_plain"] = rel_diff(pad_logits[0, 5:], logits[0, :LENGTH - 5])
        facts["padded_right_vs_plain"] = rel_diff(pad_logits[1, :LENGTH - 3], logits[1, :LENGTH - 3])
        if max(facts["padded_left_vs_plain"], facts["padded_right_vs_plain"]) > 1e-5:
            raise RuntimeError(f"{variant}: padding changed real positions {facts}")
        if config_cls == "MistralConfig":
            off = build_model(variant, overrides={"sliding_window": None})
            effect = rel_diff(run_decoder(off, input_ids, attention_mask)[0], logits)
            first = kwargs["sliding_window"]  # positions < window see the same keys either way
            same = rel_diff(run_decoder(off, input_ids, attention_mask)[0][:, :first],
                            logits[:, :first])
            facts.update(sliding_window=kwargs["sliding_window"],
                         sliding_window_effect=effect, sliding_window_effect_first_positions=same)
            if effect < 1e-2 or same > 1e-6:
                raise RuntimeError(f"{variant}: sliding window not applied as expected {facts}")
        rope = kwargs.get("rope_parameters", {})
        if rope.get("rope_type") == "llama3":
            plain = build_model(variant, overrides={"rope_parameters": {
                "rope_type": "default", "rope_theta": rope["rope_theta"]}})
            effect = rel_diff(run_decoder(plain, input_ids, attention_mask)[0], logits)
            facts["rope_scaling_effect"] = effect
            if effect < 1e-3:
                raise RuntimeError(f"{variant}: llama3 rope scaling changes too little: {effect}")
        if config_cls == "Qwen2Config":
            # config.json says sliding_window=4 but use_sliding_window=false: no window. Record
            # how far off an implementation that applied it anyway would be.
            windowed = build_model(variant, overrides={
                "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0})
            effect = rel_diff(run_decoder(windowed, input_ids, attention_mask)[0], logits)
            facts["disabled_sliding_window_if_applied_effect"] = effect
            if effect < 1e-2:
                raise RuntimeError(f"{variant}: the disabled window trap has no effect: {effect}")
        if kwargs.get("tie_word_embeddings"):
            from safetensors import safe_open
            with safe_open(folder / "model.safetensors", "np") as f:
                facts["lm_head_weight_in_file"] = "lm_head.weight" in f.keys()
    check_finite(variant, arrays)
    facts["shapes"] = {k: list(v.shape) for k, v in arrays.items()}
    facts["max_abs_output"] = float(np.max(np.abs(arrays["lm_logits" if not is_encoder else "hidden"])))
    np.savez_compressed(GOLDEN_DIR / f"{variant}.npz", **arrays)
    return facts


def asset_path(name: str) -> pathlib.Path:
    """``scalable_elicitation.assets.asset_path`` (finds files via importlib.metadata; imports no
    asset module), from the checkout this script lives in if the package is not installed."""
    try:
        from scalable_elicitation.assets import asset_path as find
    except ModuleNotFoundError:
        sys.path.insert(0, str(GOLDEN_DIR.parents[1]))
        from scalable_elicitation.assets import asset_path as find
    return find(name)


def right_pad(rows: list[list[int]], pad_id: int):
    length = max(map(len, rows))
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


@torch.no_grad()
def make_smollm2() -> dict:
    gguf = asset_path("smollm2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager").eval()
    rows = [tokenizer(s)["input_ids"] for s in REAL_SENTENCES]
    if rows[0] != SMOLLM2_FRANCE_IDS:
        raise RuntimeError(f"tokenizer: {rows[0]} != {SMOLLM2_FRANCE_IDS}")
    input_ids, attention_mask = right_pad(rows, SMOLLM2_PAD_ID)
    logits = model(input_ids=torch.from_numpy(input_ids.astype(np.int64)),
                   attention_mask=torch.from_numpy(attention_mask.astype(np.int64))).logits.numpy()
    lengths = attention_mask.sum(1)
    nll = []
    for i, n in enumerate(lengths):
        alone = model(input_ids=torch.tensor([rows[i]])).logits.numpy()[0]
        diff = rel_diff(logits[i, :n], alone)
        if diff > 1e-5:
            raise RuntimeError(f"padding changed row {i}'s logits by {diff}")
        logp = torch.log_softmax(torch.from_numpy(logits[i, :n - 1]).double(), -1).numpy()
        nll.append(-float(np.mean(logp[np.arange(n - 1), np.asarray(rows[i][1:])])))
    top5 = np.argsort(-logits, axis=-1)[..., :5].astype(np.int32)  # [B, L, 5]
    real_top5 = np.unique(top5[attention_mask.astype(bool)])
    rng = np.random.default_rng(0)
    rest = np.setdiff1d(np.arange(logits.shape[-1]), real_top5)
    subset = np.sort(np.concatenate([
        real_top5, rng.choice(rest, VOCAB_SUBSET_SIZE - len(real_top5), replace=False)]))
    arrays = dict(
        sentences=np.asarray(REAL_SENTENCES), input_ids=input_ids, attention_mask=attention_mask,
        last_logits=logits[np.arange(len(rows)), lengths - 1],  # [B, V] at the last real token
        last_positions=(lengths - 1).astype(np.int32),
        vocab_subset=subset.astype(np.int32),  # [512] sorted; holds every real position's top-5
        subset_logits=logits[:, :, subset],  # [B, L, 512]
        top5_ids=top5, mean_nll=np.asarray(nll, np.float64))
    check_finite("smollm2_real", arrays)
    np.savez_compressed(GOLDEN_DIR / "smollm2_real.npz", **arrays)
    greedy = tokenizer.decode(int(logits[0, lengths[0] - 1].argmax()))
    return {"file": gguf.name, "sentences": REAL_SENTENCES, "pad_id": SMOLLM2_PAD_ID,
            "mean_nll": nll, "greedy_after_first": greedy,
            "hf_config": {k: v for k, v in model.config.to_dict().items()
                          if k in ("rope_parameters", "tie_word_embeddings", "rms_norm_eps",
                                   "head_dim", "num_key_value_heads", "vocab_size")},
            "max_abs_last_logits": float(np.abs(arrays["last_logits"]).max())}


@torch.no_grad()
def make_minilm() -> dict:
    folder = asset_path("minilm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager").eval()
    enc = tokenizer(REAL_SENTENCES, padding=True, return_tensors="np")
    arrays = dict(sentences=np.asarray(REAL_SENTENCES), input_ids=enc["input_ids"].astype(np.int32),
                  attention_mask=enc["attention_mask"].astype(np.int32),
                  token_type_ids=enc["token_type_ids"].astype(np.int32))
    arrays["hidden"] = run_encoder(model, arrays["input_ids"], arrays["attention_mask"],
                                   arrays["token_type_ids"])
    check_finite("minilm_real", arrays)
    np.savez_compressed(GOLDEN_DIR / "minilm_real.npz", **arrays)
    return {"sentences": REAL_SENTENCES, "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "max_abs_hidden": float(np.abs(arrays["hidden"]).max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-only", action="store_true", help="skip the real offline weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    manifest = {"torch": torch.__version__, "transformers": transformers.__version__,
                "batch": BATCH, "length": LENGTH, "variants": {}}
    for variant in VARIANTS:
        manifest["variants"][variant] = make_tiny(variant)
        print(variant, json.dumps(manifest["variants"][variant], default=str)[:300])
    manifest_path = GOLDEN_DIR / "MANIFEST.json"
    if not args.tiny_only:
        manifest["smollm2_real"] = make_smollm2()
        manifest["minilm_real"] = make_minilm()
        print("smollm2_real", manifest["smollm2_real"])
        print("minilm_real", manifest["minilm_real"])
    elif manifest_path.exists():  # keep the real-weight entries of an earlier full run
        old = json.loads(manifest_path.read_text())
        manifest.update({k: old[k] for k in ("smollm2_real", "minilm_real") if k in old})
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
