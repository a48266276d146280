"""Parity of our Flax models with the PyTorch models in `transformers`, through committed goldens.

The arrays under tests/golden/ come from `transformers` (see tests/golden/make_goldens.py, which
needs torch); these tests need only numpy and our code. Tolerance: max|ours - ref| / max|ref|,
over real (attention_mask == 1) positions, at most 1e-4 for the tiny float32 models and 1e-3 for
the real weights.
"""
from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalable_elicitation.assets import MissingAssetError, asset_path

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"
DECODERS = ["llama_tied", "llama_untied", "llama_head_dim", "llama31_rope", "qwen2_bias",
            "mistral_swa"]
ENCODERS = ["bert"]
TINY_TOL = 1e-4
REAL_TOL = 1e-3


def rel_err(ours, ref, mask=None) -> float:
    """max|ours - ref| / max|ref|, over the positions where ``mask`` [B, L] is 1 if given."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        ours, ref = ours[keep], ref[keep]
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{name}.npz") as data:  # no pickles: plain numeric/str arrays
        return dict(data)


def load(source) -> object:
    # Imported here so that a broken models package fails these tests, not the whole collection.
    from scalable_elicitation.models import load_pretrained

    return load_pretrained(str(source), num_labels=2, dtype="float32")


@functools.lru_cache(maxsize=None)
def tiny_bundle(variant: str):
    return load(GOLDEN_DIR / variant)


def run(fn, input_ids, attention_mask) -> np.ndarray:
    # Full float32 matmuls wherever the tests run (TPU/GPU defaults are bf16/TF32 passes).
    with jax.default_matmul_precision("highest"):
        out = fn(jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32))
    return np.asarray(out, np.float32)


def test_goldens_present_and_sane():
    manifest = json.loads((GOLDEN_DIR / "MANIFEST.json").read_text())
    for variant in DECODERS + ENCODERS:
        assert (GOLDEN_DIR / variant / "config.json").exists()
        assert (GOLDEN_DIR / variant / "model.safetensors").exists()
        g = golden(variant)
        ref = g["hidden"] if variant in ENCODERS else g["lm_logits"]
        assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 0.5, variant
    assert manifest["variants"]["mistral_swa"]["sliding_window_effect"] > 1e-2
    assert manifest["variants"]["llama31_rope"]["rope_scaling_effect"] > 1e-3


# ---------------------------------------------------------------- tiny random models


@pytest.mark.parametrize("variant", DECODERS)
def test_decoder_lm_logits(variant):
    g = golden(variant)
    ours = run(tiny_bundle(variant).model.lm_logits, g["input_ids"], g["attention_mask"])
    assert rel_err(ours, g["lm_logits"]) <= TINY_TOL


@pytest.mark.parametrize("variant", DECODERS)
def test_decoder_hidden(variant):
    g = golden(variant)
    ours = run(tiny_bundle(variant).model.hidden, g["input_ids"], g["attention_mask"])
    assert rel_err(ours, g["hidden"]) <= TINY_TOL


@pytest.mark.parametrize("variant", DECODERS)
def test_decoder_padded(variant):
    """Row 0 left-padded, row 1 right-padded: real positions match transformers."""
    g = golden(variant)
    mask = g["padded_attention_mask"]
    assert mask[0, 0] == 0 and mask[1, -1] == 0  # the goldens really are padded both ways
    model = tiny_bundle(variant).model
    logits = run(model.lm_logits, g["padded_input_ids"], mask)
    assert rel_err(logits, g["padded_lm_logits"], mask) <= TINY_TOL
    hidden = run(model.hidden, g["padded_input_ids"], mask)
    assert rel_err(hidden, g["padded_hidden"], mask) <= TINY_TOL


@pytest.mark.parametrize("variant", ENCODERS)
def test_encoder_hidden(variant):
    g = golden(variant)
    assert not g["token_type_ids"].any()  # the API passes no token types: they are zeros
    ours = run(tiny_bundle(variant).model.hidden, g["input_ids"], g["attention_mask"])
    assert rel_err(ours, g["hidden"]) <= TINY_TOL


@pytest.mark.parametrize("variant", ENCODERS)
def test_encoder_padded(variant):
    g = golden(variant)
    mask = g["bert_padded_attention_mask"]
    assert mask[1, -1] == 0 and mask[0].all()
    ours = run(tiny_bundle(variant).model.hidden, g["bert_padded_input_ids"], mask)
    assert rel_err(ours, g["bert_padded_hidden"], mask) <= TINY_TOL


@pytest.mark.parametrize("variant", DECODERS + ENCODERS)
def test_classifier_output_shape(variant):
    g = golden(variant)
    out = run(tiny_bundle(variant).model, g["input_ids"], g["attention_mask"])
    assert out.shape == (g["input_ids"].shape[0], 2)
    assert np.all(np.isfinite(out))


# ---------------------------------------------------------------- real offline weights


def _asset(name: str) -> pathlib.Path:
    try:
        return asset_path(name)
    except MissingAssetError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def smollm2():
    return load(_asset("smollm2"))


@pytest.fixture(scope="module")
def smollm2_logits(smollm2):
    g = golden("smollm2_real")
    return run(smollm2.model.lm_logits, g["input_ids"], g["attention_mask"])  # [B, L, V]


def test_smollm2_tokenizer(smollm2):
    g = golden("smollm2_real")
    for sentence, ids, mask in zip(g["sentences"], g["input_ids"], g["attention_mask"]):
        assert smollm2.tokenizer(str(sentence))["input_ids"] == ids[mask == 1].tolist()


def test_smollm2_last_position_logits(smollm2_logits):
    g = golden("smollm2_real")
    rows = np.arange(len(g["last_positions"]))
    ours = smollm2_logits[rows, g["last_positions"]]  # [B, V]
    assert rel_err(ours, g["last_logits"]) <= REAL_TOL


def test_smollm2_vocab_subset_logits(smollm2_logits):
    g = golden("smollm2_real")
    ours = smollm2_logits[:, :, g["vocab_subset"]]  # [B, L, 512]
    assert rel_err(ours, g["subset_logits"], g["attention_mask"]) <= REAL_TOL


def test_smollm2_mean_nll(smollm2_logits):
    """Mean next-token NLL per sentence: 3.69 on the first one with a correct import (4.21 with
    llama.cpp's q/k permutation left in place)."""
    g = golden("smollm2_real")
    for i, n in enumerate(g["attention_mask"].sum(1)):
        logits = smollm2_logits[i, : n - 1].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -logp[np.arange(n - 1), g["input_ids"][i, 1:n]].mean()
        assert abs(nll - g["mean_nll"][i]) < 1e-2, (i, nll, g["mean_nll"][i])


@pytest.fixture(scope="module")
def minilm():
    return load(_asset("minilm"))


def test_minilm_tokenizer(minilm):
    g = golden("minilm_real")
    for sentence, ids, mask in zip(g["sentences"], g["input_ids"], g["attention_mask"]):
        assert minilm.tokenizer(str(sentence))["input_ids"] == ids[mask == 1].tolist()


def test_minilm_hidden(minilm):
    g = golden("minilm_real")
    assert not g["token_type_ids"].any()
    ours = run(minilm.model.hidden, g["input_ids"], g["attention_mask"])
    assert rel_err(ours, g["hidden"], g["attention_mask"]) <= REAL_TOL
