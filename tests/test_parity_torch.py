"""Live parity with the PyTorch models in `transformers`, on fresh tiny random configs.

Runs where torch is installed (`pip install torch==2.13.0`), skipped elsewhere. Unlike the goldens
these configs are built here (3 layers, other widths, other seeds, a longer batch), saved to a
temporary Hugging Face folder, and both sides run on the same inputs. The models and the
parameter init come from tests/golden/make_goldens.py, so both checks share one definition.
"""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_parity_golden import rel_err  # noqa: E402  (one comparator for both parity files)

pytestmark = pytest.mark.torch

TOL = 1e-4
BATCH, LENGTH = 2, 20
_spec = importlib.util.spec_from_file_location(
    "make_goldens", pathlib.Path(__file__).resolve().parent / "golden" / "make_goldens.py")
mg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mg)

# variant -> config overrides; every one gets a third layer and a fresh seed. A subset of the
# golden variants, to keep the default test run short on 2 CPU cores.
LIVE = {
    "llama_tied": dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                       intermediate_size=80, vocab_size=200),
    "llama31_rope": dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 2.0, "original_max_position_embeddings": 32}),
    "qwen2_bias": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "mistral_swa": dict(sliding_window=7),
    "bert": dict(hidden_size=48, num_attention_heads=6, intermediate_size=80),
}


def run(fn, input_ids, attention_mask) -> np.ndarray:
    with jax.default_matmul_precision("highest"):
        out = fn(jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32))
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("variant", list(LIVE))
def test_live_parity(variant, tmp_path):
    from scalable_elicitation.models import load_pretrained

    overrides = dict(LIVE[variant], num_hidden_layers=3)
    ref_model = mg.build_model(variant, overrides=overrides, seed_offset=1000)
    mg.save_model(ref_model, tmp_path, mg.LEGACY_CONFIG.get(variant))
    is_encoder = variant == "bert"
    ref_model = mg.load_model(tmp_path, is_encoder)  # exactly what the folder holds
    vocab = ref_model.config.vocab_size
    input_ids, ones = mg.make_inputs(vocab, seed=7, batch=BATCH, length=LENGTH)
    left = 0 if is_encoder else 6  # BERT positions are absolute: pad on the right only
    pad_ids, pad_mask = mg.padded_inputs(input_ids, left=left, right=4)

    bundle = load_pretrained(str(tmp_path), num_labels=2, dtype="float32")
    if is_encoder:
        zeros = np.zeros_like(input_ids)
        for ids, mask in ((input_ids, ones), (pad_ids, pad_mask)):
            ref = mg.run_encoder(ref_model, ids, mask, zeros)
            assert rel_err(run(bundle.model.hidden, ids, mask), ref, mask) <= TOL
    else:
        for ids, mask in ((input_ids, ones), (pad_ids, pad_mask)):
            ref_logits, ref_hidden = mg.run_decoder(ref_model, ids, mask)
            assert rel_err(run(bundle.model.lm_logits, ids, mask), ref_logits, mask) <= TOL
            assert rel_err(run(bundle.model.hidden, ids, mask), ref_hidden, mask) <= TOL
    assert run(bundle.model, input_ids, ones).shape == (BATCH, 2)
