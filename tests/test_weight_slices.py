"""Weights load slice by slice (docs/design.md, Model): each device's shard is read from the
checkpoint on its own and equals, bit for bit, the slice of the whole tensor read and rearranged
on the host; every stored value is read exactly once per process, and no tensor is read whole.
The two-process version is in tests/test_launch_multihost.py."""
import json

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from scalable_elicitation.models import WeightImportError, load_pretrained
from scalable_elicitation.models import weights as W
from scalable_elicitation.models.gguf_file import GGUFFile
from scalable_elicitation.sharding import make_mesh

TINY_QWEN2 = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-6, tie_word_embeddings=False)


def tiny_qwen2_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of a 2-layer Qwen2 checkpoint (q/k/v biases, untied LM head), float32."""
    h, kv, hd, d, f, v = 4, 2, 8, 32, 48, 64
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,),
              "lm_head.weight": (v, d)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (h * hd, d), p + "self_attn.q_proj.bias": (h * hd,),
            p + "self_attn.k_proj.weight": (kv * hd, d), p + "self_attn.k_proj.bias": (kv * hd,),
            p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.v_proj.bias": (kv * hd,),
            p + "self_attn.o_proj.weight": (d, h * hd), p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f)})
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def save_tiny_qwen2(folder, tensors=None):
    """A Hugging Face folder (config.json, model.safetensors) of `tiny_qwen2_tensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors if tensors is not None else tiny_qwen2_tensors(),
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY_QWEN2))
    return folder


def name_map_and_source(bundle):
    """(name map, fresh tensor source) of the checkpoint a bundle was loaded from."""
    cfg = bundle.config
    if bundle.source.endswith(".gguf"):
        reader = GGUFFile(bundle.source)
        return W.llama_gguf_map(cfg, W.gguf_config(reader)[1])[0], W.GGUFSource(reader)
    family_map = W.llama_hf_map if cfg.family == "llama" else W.bert_hf_map
    return family_map(cfg)[0], W.SafetensorsSource(bundle.source, cfg.family)


def loaded_params(bundle):
    """Dotted parameter path -> jax.Array of the bundle's model."""
    return {".".join(map(str, path)): var.value
            for path, var in nnx.to_flat_state(nnx.state(bundle.model, nnx.Param))}


@pytest.fixture
def reads(monkeypatch):
    """Every read of both tensor sources: a list of (tensor name, values read, whole?)."""
    seen = []
    for cls in (W.SafetensorsSource, W.GGUFSource):
        def get(self, name, real=cls.get):
            out = real(self, name)
            seen.append((name, out.size, True))
            return out

        def get_slice(self, name, index, real=cls.get_slice):
            out = real(self, name, index)
            seen.append((name, out.size, False))
            return out

        monkeypatch.setattr(cls, "get", get)
        monkeypatch.setattr(cls, "get_slice", get_slice)
    return seen


@pytest.mark.parametrize("source, dtype", [("tiny", "float32"), ("tiny", "bfloat16"),
                                           ("minilm", "float32"), ("smollm2", "float32")])
def test_sharded_load_equals_whole_tensor_read_and_reads_each_value_once(
        tmp_path, reads, source, dtype):
    if source == "tiny":
        source = save_tiny_qwen2(tmp_path / "tiny")
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    bundle = load_pretrained(source, dtype=dtype, mesh=mesh)
    params = loaded_params(bundle)
    mappings, ref_source = name_map_and_source(bundle)
    loaded = {mp.source: mp.target for mp in mappings}

    assert not [r for r in reads if r[2]], "a tensor was read whole"
    read = {}
    for name, size, _ in reads:
        read.setdefault(name, []).append(size)
    split = 0
    for name, target in loaded.items():
        size = int(np.prod(ref_source.shape(name)))
        assert sum(read[name]) == size, (name, read[name], size)  # each value exactly once
        if not params[target].sharding.is_fully_replicated:
            assert max(read[name]) < size, name
            split += 1
    assert split > len(loaded) // 2  # most tensors are read in parts

    shapes = {p: tuple(a.shape) for p, a in params.items()}
    dtypes = {p: np.dtype(a.dtype) for p, a in params.items()}
    whole = W.read_params(mappings, ref_source, shapes, dtypes, "reference")
    for target, want in whole.items():
        for shard in params[target].addressable_shards:
            got = np.asarray(shard.data)
            assert got.dtype == want.dtype, target
            assert got.tobytes() == np.ascontiguousarray(want[shard.index]).tobytes(), (
                target, shard.index)


@pytest.mark.parametrize("transform, shape", [
    (W.IDENTITY, (12, 6)), (W.TRANSPOSE, (12, 6)),
    (W.Rearrange(transpose=True, split=1, head_dim=4), (12, 6)),  # q/k/v kernels
    (W.Rearrange(transpose=True, split=0, head_dim=4), (6, 12)),  # o kernel
    (W.Rearrange(split=0, head_dim=4), (12,)),  # q/k/v biases
    (W.Rearrange(transpose=True, split=1, head_dim=4, unpermute=True), (12, 6)),  # llama.cpp
    (W.Rearrange(split=0, head_dim=4, unpermute=True), (12,))])
def test_any_slice_of_a_rearranged_tensor_reads_a_box_and_equals_the_whole(transform, shape):
    rng = np.random.default_rng(0)
    tensor = rng.normal(size=shape).astype(np.float32)

    class Source(W.TensorSource):
        def get(self, name):
            raise AssertionError("read whole")

        def get_slice(self, name, index):
            return tensor[index]

    whole = transform(tensor)
    assert transform.out_shape(shape) == whole.shape
    mp = W.Mapping("t", "p", None, transform)
    for _ in range(40):
        index = []
        for n in whole.shape:
            a = int(rng.integers(0, n))
            index.append(slice(a, int(rng.integers(a + 1, n + 1))))
        got = W.read_mapped(mp, Source(), tuple(index))
        np.testing.assert_array_equal(got, whole[tuple(index)])


def test_heads_that_do_not_divide_a_tensor_are_named_before_any_read(tmp_path, reads):
    tensors = tiny_qwen2_tensors()
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((15, 32), np.float32)
    with pytest.raises(WeightImportError, match=r"'layers\.1\.self_attn\.k_proj\.weight' has "
                                                r"shape \(15, 32\), which does not split"):
        load_pretrained(save_tiny_qwen2(tmp_path / "bad", tensors), dtype="float32")
    assert not reads
