"""Strict weight import: Hugging Face safetensors and GGUF files into our NNX modules.

One name map per family turns checkpoint tensor names into (parameter path, layer index,
transform). The import is strict: every checkpoint tensor maps to exactly one parameter or is on
the family's list of deliberately unused tensors; every parameter is loaded or is deliberately
fresh (the classification head, LoRA factors); shapes must match. Anything else raises
`WeightImportError` naming the tensors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import re
from typing import Callable, Iterable

import numpy as np

from scalable_elicitation.models import gguf_file
from scalable_elicitation.models.config import ArchConfig, from_hf_config

FRESH_PARAM_PATTERNS = (r"^head\.", r"\.lora_a$", r"\.lora_b$")


class WeightImportError(ValueError):
    """A checkpoint does not match the model: names the missing, extra or misshaped tensors."""


@dataclasses.dataclass(frozen=True)
class Mapping:
    """Checkpoint tensor `source` -> parameter `target` (dotted path), at `layer` if stacked.

    `transform` is a `Rearrange` in every family map, so a process can read just the slices of
    the tensor that its devices hold; any other callable works too, but reads the whole tensor.
    """

    source: str
    target: str
    layer: int | None
    transform: Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rearrange:
    """A checkpoint tensor -> parameter rearrangement that can also run on a slice.

    In order: undo llama.cpp's rotary row interleave on axis 0 (`unpermute`, rows in heads of
    `head_dim`), transpose (2-D; HF Linear stores [out, in], our kernels are [in, out...]), then
    split axis `split` into (heads, head_dim). Only data moves, so a slice of the result can be
    made from a box of the source (`source_index`) and equals the whole result's slice bit for
    bit: each process reads only what its devices hold (docs/design.md, Model).
    """

    transpose: bool = False
    split: int | None = None
    head_dim: int = 0
    unpermute: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.unpermute:
            x = undo_llamacpp_permute(x, x.shape[0] // self.head_dim)
        if self.transpose:
            x = x.T
        if self.split is not None:
            s = self.split
            x = x.reshape(*x.shape[:s], -1, self.head_dim, *x.shape[s + 1:])
        return x

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The result's shape for a source of `shape`; None if heads do not divide it."""
        shape = tuple(shape)[::-1] if self.transpose else tuple(shape)
        if self.split is None:
            return shape
        s = self.split
        if s >= len(shape) or shape[s] % self.head_dim:
            return None
        return shape[:s] + (shape[s] // self.head_dim, self.head_dim) + shape[s + 1:]

    def source_index(self, index: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple]:
        """(box of the source to read, index into the rearranged box) for the result's `index`
        (slices of step 1 with explicit bounds). Split axes are read in whole heads, which keeps
        llama.cpp's per-head interleave inside the box."""
        index, post = tuple(index), (slice(None),) * len(index)
        if self.split is not None:
            s, hd = self.split, self.head_dim
            heads, within = index[s], index[s + 1]
            index = index[:s] + (slice(heads.start * hd, heads.stop * hd),) + index[s + 2:]
            post = post[:s + 1] + (within,) + post[s + 2:]
        return (index[::-1] if self.transpose else index), post


IDENTITY = Rearrange()
TRANSPOSE = Rearrange(transpose=True)


# ---------------------------------------------------------------------------------------------
# Llama family (Llama, Mistral, Qwen2, SmolLM2)
def _heads_out(hd: int) -> Rearrange:  # HF [heads * hd, in] -> our [in, heads, hd]
    return Rearrange(transpose=True, split=1, head_dim=hd)


def _heads_in(hd: int) -> Rearrange:  # HF [out, heads * hd] -> our [heads, hd, out]
    return Rearrange(transpose=True, split=0, head_dim=hd)


def _heads_bias(hd: int) -> Rearrange:  # [heads * hd] -> [heads, hd]
    return Rearrange(split=0, head_dim=hd)


def llama_hf_map(cfg: ArchConfig) -> tuple[list[Mapping], list[str]]:
    """Name map of HF Llama-family checkpoints (prefix `model.` already stripped) and the
    patterns of deliberately unused tensors."""
    hd = cfg.head_dim
    m = [Mapping("embed_tokens.weight", "embed", None, IDENTITY),
         Mapping("norm.weight", "final_norm", None, IDENTITY)]
    if not cfg.tie_word_embeddings:
        m.append(Mapping("lm_head.weight", "lm_head", None, TRANSPOSE))
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        m.append(Mapping(p + "input_layernorm.weight", "layers.attn_norm", i, IDENTITY))
        m.append(Mapping(p + "post_attention_layernorm.weight", "layers.mlp_norm", i,
                         IDENTITY))
        for name in ("q", "k", "v"):
            m.append(Mapping(f"{p}self_attn.{name}_proj.weight", f"layers.{name}.kernel", i,
                             _heads_out(hd)))
            if cfg.qkv_bias:
                m.append(Mapping(f"{p}self_attn.{name}_proj.bias", f"layers.{name}.bias", i,
                                 _heads_bias(hd)))
        m.append(Mapping(p + "self_attn.o_proj.weight", "layers.o.kernel", i, _heads_in(hd)))
        if cfg.o_bias:
            m.append(Mapping(p + "self_attn.o_proj.bias", "layers.o.bias", i, IDENTITY))
        for name in ("gate", "up", "down"):
            m.append(Mapping(f"{p}mlp.{name}_proj.weight", f"layers.{name}.kernel", i,
                             TRANSPOSE))
            if cfg.mlp_bias:
                m.append(Mapping(f"{p}mlp.{name}_proj.bias", f"layers.{name}.bias", i,
                                 IDENTITY))
    unused = [r"^layers\.\d+\.self_attn\.rotary_emb\.inv_freq$",  # old checkpoints' buffer
              r"^score\.weight$", r"^classifier\.(weight|bias)$"]  # other heads: ours is fresh
    if cfg.tie_word_embeddings:
        unused.append(r"^lm_head\.weight$")  # some tied checkpoints store the copy anyway
    return m, unused


def undo_llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves the two rotary halves of each head's rows; undo it.

    Rows of head j are stored as pairs (i, i + hd/2) side by side; we want halves again.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_gguf_map(cfg: ArchConfig, arch: str) -> tuple[list[Mapping], list[str]]:
    """Name map of GGUF files of llama-like architectures (llama, qwen2)."""
    hd = cfg.head_dim
    permuted = arch == "llama"  # llama.cpp permutes q/k rows for its rotary layout
    qk = Rearrange(transpose=True, split=1, head_dim=hd, unpermute=permuted)
    qk_bias = Rearrange(split=0, head_dim=hd, unpermute=permuted)
    m = [Mapping("token_embd.weight", "embed", None, IDENTITY),
         Mapping("output_norm.weight", "final_norm", None, IDENTITY)]
    if not cfg.tie_word_embeddings:
        m.append(Mapping("output.weight", "lm_head", None, TRANSPOSE))
    for i in range(cfg.num_layers):
        p = f"blk.{i}."
        m.append(Mapping(p + "attn_norm.weight", "layers.attn_norm", i, IDENTITY))
        m.append(Mapping(p + "ffn_norm.weight", "layers.mlp_norm", i, IDENTITY))
        m.append(Mapping(p + "attn_q.weight", "layers.q.kernel", i, qk))
        m.append(Mapping(p + "attn_k.weight", "layers.k.kernel", i, qk))
        m.append(Mapping(p + "attn_v.weight", "layers.v.kernel", i, _heads_out(hd)))
        if cfg.qkv_bias:
            m.append(Mapping(p + "attn_q.bias", "layers.q.bias", i, qk_bias))
            m.append(Mapping(p + "attn_k.bias", "layers.k.bias", i, qk_bias))
            m.append(Mapping(p + "attn_v.bias", "layers.v.bias", i, _heads_bias(hd)))
        m.append(Mapping(p + "attn_output.weight", "layers.o.kernel", i, _heads_in(hd)))
        m.append(Mapping(p + "ffn_gate.weight", "layers.gate.kernel", i, TRANSPOSE))
        m.append(Mapping(p + "ffn_up.weight", "layers.up.kernel", i, TRANSPOSE))
        m.append(Mapping(p + "ffn_down.weight", "layers.down.kernel", i, TRANSPOSE))
    # rope_freqs is llama.cpp's precomputed Llama-3.1 scaling; we derive it from the metadata.
    return m, [r"^rope_freqs\.weight$"]


# ---------------------------------------------------------------------------------------------
# BERT family
def bert_hf_map(cfg: ArchConfig) -> tuple[list[Mapping], list[str]]:
    """Name map of HF BERT checkpoints (prefix `bert.` already stripped)."""
    hd, ident = cfg.head_dim, IDENTITY
    m = [Mapping("embeddings.word_embeddings.weight", "word_embed", None, ident),
         Mapping("embeddings.position_embeddings.weight", "pos_embed", None, ident),
         Mapping("embeddings.token_type_embeddings.weight", "type_embed", None, ident),
         Mapping("embeddings.LayerNorm.weight", "embed_norm_scale", None, ident),
         Mapping("embeddings.LayerNorm.bias", "embed_norm_bias", None, ident)]
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            m.append(Mapping(f"{p}attention.self.{theirs}.weight", f"layers.{ours}.kernel", i,
                             _heads_out(hd)))
            m.append(Mapping(f"{p}attention.self.{theirs}.bias", f"layers.{ours}.bias", i,
                             _heads_bias(hd)))
        m += [
            Mapping(p + "attention.output.dense.weight", "layers.o.kernel", i, _heads_in(hd)),
            Mapping(p + "attention.output.dense.bias", "layers.o.bias", i, ident),
            Mapping(p + "attention.output.LayerNorm.weight", "layers.attn_norm_scale", i, ident),
            Mapping(p + "attention.output.LayerNorm.bias", "layers.attn_norm_bias", i, ident),
            Mapping(p + "intermediate.dense.weight", "layers.up.kernel", i, TRANSPOSE),
            Mapping(p + "intermediate.dense.bias", "layers.up.bias", i, ident),
            Mapping(p + "output.dense.weight", "layers.down.kernel", i, TRANSPOSE),
            Mapping(p + "output.dense.bias", "layers.down.bias", i, ident),
            Mapping(p + "output.LayerNorm.weight", "layers.mlp_norm_scale", i, ident),
            Mapping(p + "output.LayerNorm.bias", "layers.mlp_norm_bias", i, ident),
        ]
    unused = [r"^embeddings\.position_ids$",  # a buffer, not a weight
              r"^pooler\.dense\.(weight|bias)$",  # we pool hidden states directly (mean or CLS)
              r"^classifier\.(weight|bias)$",  # other heads: ours is fresh
              r"^cls\.predictions\..*$", r"^cls\.seq_relationship\..*$"]  # pretraining heads
    return m, unused


_OLD_BERT_NAMES = ((".gamma", ".weight"), (".beta", ".bias"))


def normalise_hf_name(name: str, family: str) -> str:
    """Strip task-model prefixes (`model.`, `bert.`) and old LayerNorm names."""
    if family == "llama":
        return name[len("model."):] if name.startswith("model.") else name
    if name.startswith("bert."):
        name = name[len("bert."):]
    if "LayerNorm" in name:
        for old, new in _OLD_BERT_NAMES:
            if name.endswith(old):
                name = name[: -len(old)] + new
    return name


# ---------------------------------------------------------------------------------------------
# Tensor sources
class TensorSource:
    """Read-only access to a checkpoint's tensors by name (float32 numpy).

    `get` reads a whole tensor; `shape` and `get_slice` let a process read only the slices its
    devices hold. Subclasses answer both from the file without reading the rest; these defaults
    read the whole tensor.
    """

    def names(self) -> list[str]:
        raise NotImplementedError

    def get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get(name).shape)

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """`get(name)[index]`, `index` one slice of step 1 per axis."""
        return self.get(name)[tuple(index)]


class SafetensorsSource(TensorSource):
    """One `model.safetensors` or a sharded set with `model.safetensors.index.json`."""

    def __init__(self, folder: pathlib.Path, family: str):
        from safetensors import safe_open

        folder = pathlib.Path(folder)
        index = folder / "model.safetensors.index.json"
        single = folder / "model.safetensors"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif single.exists():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"{folder}: no model.safetensors or model.safetensors.index.json (only "
                "safetensors checkpoints are read; convert .bin files first)")
        self._where: dict[str, tuple[str, str]] = {}
        self._handles = {}
        for f in files:
            path = folder / f
            if not path.exists():
                raise FileNotFoundError(f"{path}: listed in the index but missing")
            # "flax" reads bfloat16 too; numpy has no bfloat16.
            handle = safe_open(str(path), framework="flax")
            self._handles[f] = handle
            for raw in handle.keys():
                name = normalise_hf_name(raw, family)
                if name in self._where:
                    raise WeightImportError(f"tensor {name!r} appears twice in {folder}")
                self._where[name] = (f, raw)

    def names(self):
        return list(self._where)

    def get(self, name):
        f, raw = self._where[name]
        return np.asarray(self._handles[f].get_tensor(raw), dtype=np.float32)

    def shape(self, name):
        f, raw = self._where[name]
        return tuple(self._handles[f].get_slice(raw).get_shape())

    def get_slice(self, name, index):
        f, raw = self._where[name]
        if not index:  # a 0-d tensor
            return self.get(name)
        return np.asarray(self._handles[f].get_slice(raw)[tuple(index)], dtype=np.float32)


class GGUFSource(TensorSource):
    """Tensors of a GGUF file (`gguf_file.GGUFFile`), dequantised to float32."""

    def __init__(self, reader: gguf_file.GGUFFile):
        self._tensors = reader.tensors

    def names(self):
        return list(self._tensors)

    def get(self, name):
        return gguf_file.dequantize(self._tensors[name])

    def shape(self, name):
        return tuple(reversed(self._tensors[name].shape))

    def get_slice(self, name, index):
        return gguf_file.read_slice(self._tensors[name], tuple(index))


# ---------------------------------------------------------------------------------------------
# GGUF metadata -> config and tokenizer
def gguf_field(reader: gguf_file.GGUFFile, key: str, default=None):
    """A metadata value of a GGUF file, or `default` if the key is absent."""
    return reader.fields.get(key, default)


def gguf_config(reader: gguf_file.GGUFFile) -> tuple[ArchConfig, str]:
    """Our ArchConfig from GGUF metadata; also returns the GGUF architecture name."""
    arch = gguf_field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: llama, qwen2")

    def get(key, default=None, required=True):
        value = gguf_field(reader, f"{arch}.{key}", default)
        if value is None and required:
            raise ValueError(f"GGUF metadata {arch}.{key} is missing")
        return value

    names = set(reader.tensors)
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    vocab = int(get("vocab_size", len(tokens) if tokens else None))
    scaling = None
    if gguf_field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        kind = gguf_field(reader, f"{arch}.rope.scaling.type")
        if kind != "linear":
            raise ValueError(f"GGUF rope scaling {kind!r} is not supported (linear only)")
        scaling = (("factor", float(get("rope.scaling.factor"))), ("rope_type", "linear"))
    if "rope_freqs.weight" in names:
        raise ValueError("GGUF with rope_freqs (Llama-3.1 scaling) is not supported yet; "
                         "load the Hugging Face safetensors checkpoint instead")
    cfg = ArchConfig(
        family="llama",
        model_type="qwen2" if arch == "qwen2" else "llama",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("rope.dimension_count", hidden // heads)),
        max_position_embeddings=int(get("context_length", 2048)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        qkv_bias="blk.0.attn_q.bias" in names,
        tie_word_embeddings="output.weight" not in names,
        pooling="last",
        pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    return cfg, arch


def transformers_module():
    """`transformers`, imported without its "PyTorch was not found. Models won't be available"
    advice: this project imports it only for tokenizers and configs, where that line misleads.
    Only this import is quietened (its advisory-warnings switch is set while the package
    initialises, then restored); anything transformers says later is left as it is."""
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    switch = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    before = os.environ.get(switch)
    os.environ[switch] = "1"
    try:
        import transformers
    finally:
        if before is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = before
    return transformers


def gguf_tokenizer(reader: gguf_file.GGUFFile):
    """A transformers fast tokenizer rebuilt from GGUF metadata (byte-level BPE), no torch."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    PreTrainedTokenizerFast = transformers_module().PreTrainedTokenizerFast

    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (byte-level BPE "
                         "'gpt2' only)")
    tokens = list(gguf_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in gguf_field(reader, "tokenizer.ggml.merges")]
    types = list(gguf_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if gguf_field(reader, "tokenizer.ggml.pre") == "smollm":
        # SmolLM2 was trained with digits split one by one before byte-level BPE.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == 3]  # llama.cpp CONTROL tokens
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def token(key):
        idx = gguf_field(reader, key)
        return tokens[int(idx)] if idx is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"), padding_side="right")


# ---------------------------------------------------------------------------------------------
# Strict matching
def plan_import(mappings: list[Mapping], unused_patterns: Iterable[str],
                checkpoint_names: Iterable[str], param_shapes: dict[str, tuple[int, ...]],
                where: str) -> list[str]:
    """Check names both ways before reading any tensor. Returns the unused names found.

    param_shapes: dotted parameter path -> full shape (with the layer axis for stacked ones).
    """
    names = set(checkpoint_names)
    by_source = {}
    for mp in mappings:
        if mp.source in by_source:
            raise WeightImportError(f"name map lists {mp.source!r} twice")
        by_source[mp.source] = mp
    unused_re = [re.compile(p) for p in unused_patterns]
    missing = sorted(set(by_source) - names)
    extra = sorted(n for n in names - set(by_source)
                   if not any(r.search(n) for r in unused_re))
    unused = sorted(n for n in names - set(by_source) if any(r.search(n) for r in unused_re))
    targets = {mp.target for mp in mappings}
    unknown_targets = sorted(targets - set(param_shapes))
    fresh_re = [re.compile(p) for p in FRESH_PARAM_PATTERNS]
    unloaded = sorted(p for p in param_shapes
                      if p not in targets and not any(r.search(p) for r in fresh_re))
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_short(missing)}")
    if extra:
        problems.append(f"unexpected tensors in the checkpoint: {_short(extra)}")
    if unknown_targets:
        problems.append(f"name map targets that the model lacks: {_short(unknown_targets)}")
    if unloaded:
        problems.append(f"model parameters neither loaded nor allowed fresh: {_short(unloaded)}")
    if problems:
        raise WeightImportError(f"{where}: " + "; ".join(problems))
    return unused


def _short(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_shapes(mappings: list[Mapping], source: TensorSource,
                 param_shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Check every mapped tensor's shape against its parameter's before reading any values:
    from the files' headers for `Rearrange` maps (a plain callable reads its whole tensor)."""
    for mp in mappings:
        shape = param_shapes[mp.target]
        want = tuple(shape[1:] if mp.layer is not None else shape)
        if isinstance(mp.transform, Rearrange):
            stored = source.shape(mp.source)
            got = mp.transform.out_shape(stored)
            if got is None:
                raise WeightImportError(
                    f"{where}: tensor {mp.source!r} has shape {stored}, which does not split "
                    f"into heads of {mp.transform.head_dim} for {mp.target!r}, which expects "
                    f"{want}")
        else:
            got = tuple(mp.transform(source.get(mp.source)).shape)
        if got != want:
            raise WeightImportError(
                f"{where}: tensor {mp.source!r} has shape {got} after mapping "
                f"to {mp.target!r}, which expects {want}")


def read_mapped(mp: Mapping, source: TensorSource, index: tuple[slice, ...]) -> np.ndarray:
    """`mp.transform(source.get(mp.source))[index]` (float32), reading only the source box that
    `index` needs when the transform is a `Rearrange`."""
    if isinstance(mp.transform, Rearrange):
        box, post = mp.transform.source_index(index)
        return mp.transform(source.get_slice(mp.source, box))[post]
    return mp.transform(source.get(mp.source))[index]


def param_reader(mappings: list[Mapping], source: TensorSource, shape: tuple[int, ...],
                 dtype: np.dtype) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """`read(index)`: the part `index` of one parameter of `shape` and `dtype`, from its
    mappings (one, or one per layer of a stacked parameter), read slice by slice.

    The callback of `jax.make_array_from_callback`, which asks for each addressable device's
    index: a process reads only its devices' shards (docs/design.md, Model). An index asked for
    again (devices holding the same replica) comes from a cache.
    """
    shape = tuple(shape)
    stacked = mappings[0].layer is not None
    by_layer = {mp.layer: mp for mp in mappings}
    cache: dict[tuple, np.ndarray] = {}

    def read(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
        if any(s.step != 1 for s in index):
            raise ValueError(f"index {index}: parameters are read in slices of step 1")
        key = tuple((s.start, s.stop) for s in index)
        if key in cache:
            return cache[key]
        if not stacked:
            part = read_mapped(mappings[0], source, index).astype(dtype)
        else:  # [layers, ...]: layers the name map lacks stay zero, as in `read_params`
            layers = range(index[0].start, index[0].stop)
            part = np.zeros((len(layers),) + tuple(s.stop - s.start for s in index[1:]), dtype)
            for k, layer in enumerate(layers):
                if layer in by_layer:
                    part[k] = read_mapped(by_layer[layer], source, index[1:])
        cache[key] = part
        return part

    return read


def read_params(mappings: list[Mapping], source: TensorSource,
                param_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype],
                where: str) -> dict[str, np.ndarray]:
    """Read and transform every mapped tensor into whole host arrays shaped like the parameters.

    The models load through `param_reader` instead, slice by slice; this whole-tensor read is
    the reference it must equal bit for bit, and a tool for inspecting a checkpoint.
    """
    out: dict[str, np.ndarray] = {}
    for mp in mappings:
        shape = param_shapes[mp.target]
        value = mp.transform(source.get(mp.source))
        want = shape[1:] if mp.layer is not None else shape
        if tuple(value.shape) != tuple(want):
            raise WeightImportError(
                f"{where}: tensor {mp.source!r} has shape {tuple(value.shape)} after mapping "
                f"to {mp.target!r}, which expects {tuple(want)}")
        if mp.layer is None:
            out[mp.target] = value.astype(dtypes[mp.target])
        else:
            if mp.target not in out:
                out[mp.target] = np.zeros(shape, dtypes[mp.target])
            out[mp.target][mp.layer] = value
    return out


def hf_config_from_folder(folder: pathlib.Path, pooling: str | None = None) -> ArchConfig:
    path = pathlib.Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a Hugging Face model folder needs config.json")
    hf = json.loads(path.read_text())
    if pooling is None:
        pooling = sentence_transformers_pooling(pathlib.Path(folder))
    return from_hf_config(hf, pooling=pooling)


def sentence_transformers_pooling(folder: pathlib.Path) -> str | None:
    """Pooling declared by a sentence-transformers folder (1_Pooling/config.json), if any."""
    path = folder / "1_Pooling" / "config.json"
    if not path.exists():
        return None
    cfg = json.loads(path.read_text())
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "first"
    raise ValueError(f"{path}: only mean or CLS pooling is supported, got {cfg}")
