"""Our Flax NNX transformer classifiers and their strict weight import.

    bundle = load_pretrained(source, num_labels=2, dtype="bfloat16", lora=LoraConfig(),
                             trainable="lora", mesh=None)
    bundle.model(input_ids, attention_mask)            # class logits [B, num_labels]
    bundle.model.hidden(input_ids, attention_mask)     # [B, L, D]
    bundle.model.lm_logits(input_ids, attention_mask)  # [B, L, V] (decoders)

`source` is a local Hugging Face folder, a hub id, a `.gguf` path, an offline asset name
(`smollm2`, `minilm`), or `tiny:llama` / `tiny:bert` (small random models with a byte-level
tokenizer, for tests and smoke runs).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scalable_elicitation.models import weights as W
from scalable_elicitation.models.bert import BertModel
from scalable_elicitation.models.config import (TRAINABLE_SCOPES, ArchConfig, LoraConfig,
                                                from_hf_config)
from scalable_elicitation.models.known import arch_config
from scalable_elicitation.models.llama import LlamaModel
from scalable_elicitation.sharding import DEFAULT_RULES, freeze_rules, make_mesh, state_shardings

__all__ = ["ArchConfig", "LoraConfig", "ModelBundle", "load_pretrained", "build_model",
           "trainable_filter", "WeightImportError", "TINY_CONFIGS", "from_hf_config",
           "abstract_bundle"]

WeightImportError = W.WeightImportError

TINY_CONFIGS = {
    "llama": ArchConfig(family="llama", model_type="llama", vocab_size=260, hidden_size=64,
                        intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, max_position_embeddings=2048, norm_eps=1e-5,
                        tie_word_embeddings=True, pooling="last", pad_token_id=256),
    "bert": ArchConfig(family="bert", model_type="bert", vocab_size=260, hidden_size=64,
                       intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                       head_dim=16, max_position_embeddings=512, norm_eps=1e-12,
                       qkv_bias=True, o_bias=True, mlp_bias=True, hidden_act="gelu",
                       pooling="mean", pad_token_id=256),
}


@dataclasses.dataclass
class ModelBundle:
    """A model with its tokenizer and config. `unused` lists checkpoint tensors deliberately
    not loaded; `trainable` is the scope (`lora`, `full` or `head`)."""

    model: nnx.Module
    tokenizer: Any
    config: ArchConfig
    source: str
    trainable: str
    lora: LoraConfig | None
    mesh: Any
    unused: list[str] = dataclasses.field(default_factory=list)
    build_args: dict = dataclasses.field(default_factory=dict)

    def init_trainable(self, key):
        """Fresh trainable parameters (head, LoRA factors; everything for `full`) drawn from
        `key`, sharded like the model's. Compiled once per architecture."""
        a = self.build_args
        init = _compiled_trainable_init(self.config, a["num_labels"], self.lora,
                                        a["param_dtype"], a["compute_dtype"], a["remat"],
                                        self.mesh, a["rules"], self.trainable)
        return init(key)

    def split(self):
        """(graphdef, trainable state, frozen state) for pure training steps."""
        return nnx.split(self.model, trainable_filter(self.trainable), ...)


def trainable_filter(scope: str):
    """NNX filter of trainable parameters: head and LoRA factors, everything, or the head."""
    if scope not in TRAINABLE_SCOPES:
        raise ValueError(f"trainable={scope!r}; allowed: {TRAINABLE_SCOPES}")

    def is_trainable(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        keys = [str(k) for k in path]
        if scope == "full":
            return True
        if keys and keys[0] == "head":
            return True
        return scope == "lora" and keys[-1] in ("lora_a", "lora_b")

    return is_trainable


def _model_class(cfg: ArchConfig):
    return LlamaModel if cfg.family == "llama" else BertModel


def _dtype(name) -> jnp.dtype:
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ValueError(f"dtype {name!r} is not a dtype; use e.g. 'float32' or 'bfloat16'") \
            from None


def build_model(cfg: ArchConfig, *, num_labels=2, dtype="float32", compute_dtype=None,
                lora: LoraConfig | None = None, trainable="lora", mesh=None,
                rules=DEFAULT_RULES, seed: int = 0, remat: bool = False):
    """Randomly initialised model, created abstract-first and placed by the rules table.

    Frozen base weights use `dtype`; trainable weights are float32 (full finetuning keeps the
    base in float32 too).
    """
    if trainable not in TRAINABLE_SCOPES:
        raise ValueError(f"trainable={trainable!r}; allowed: {TRAINABLE_SCOPES}")
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    if trainable == "lora" and lora is None:
        lora = LoraConfig()
    if trainable != "lora":
        lora = None
    param_dtype = jnp.float32 if trainable == "full" else _dtype(dtype)
    if mesh is None:
        mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    graphdef, init = _compiled_init(cfg, num_labels, lora, jnp.dtype(param_dtype).name,
                                    compute_dtype, remat, mesh, freeze_rules(rules))
    state = init(jax.random.key(seed))
    args = dict(num_labels=num_labels, param_dtype=jnp.dtype(param_dtype).name,
                compute_dtype=compute_dtype, remat=remat, rules=freeze_rules(rules))
    return nnx.merge(graphdef, state), lora, mesh, args


def _abstract_model(cfg, num_labels, lora, param_dtype, compute_dtype, remat, mesh, rules):
    """(create(key) -> model, graphdef, abstract state, its shardings on `mesh`): the one
    place that decides where a model's weights live, for a real init and an abstract one."""
    cls = _model_class(cfg)

    def create(key):
        return cls(cfg, num_labels=num_labels, lora=lora, dtype=jnp.dtype(param_dtype),
                   compute_dtype=compute_dtype, remat=remat, rngs=nnx.Rngs(params=key))

    abstract = nnx.eval_shape(lambda: create(jax.random.key(0)))
    graphdef, abstract_state = nnx.split(abstract)
    return create, graphdef, abstract_state, state_shardings(abstract_state, mesh, rules)


@functools.lru_cache(maxsize=16)
def _compiled_init(cfg, num_labels, lora, param_dtype, compute_dtype, remat, mesh, rules):
    """(graphdef, jitted init(key) -> sharded state), cached: random init compiles slowly on
    CPU (threefry), and sweeps and tests build the same architecture many times."""
    create, graphdef, _, shardings = _abstract_model(cfg, num_labels, lora, param_dtype,
                                                     compute_dtype, remat, mesh, rules)
    init = jax.jit(lambda key: nnx.state(create(key)), out_shardings=shardings)
    return graphdef, init


def abstract_bundle(source: str, *, num_labels: int = 2, dtype: str = "bfloat16",
                    compute_dtype: str | None = None, lora: LoraConfig | None = None,
                    trainable: str = "lora", mesh=None, rules=DEFAULT_RULES,
                    pooling: str | None = None, remat: bool = False,
                    attention: str | None = None) -> ModelBundle:
    """`load_pretrained`'s bundle without weights or tokenizer: every parameter a
    `jax.ShapeDtypeStruct` carrying the sharding the real load gives it on `mesh` (which may
    be made of compile-only devices), for compiling a model's programs ahead of time
    (launch/preflight.py). The architecture comes from `known.arch_config`: no download."""
    if trainable not in TRAINABLE_SCOPES:
        raise ValueError(f"trainable={trainable!r}; allowed: {TRAINABLE_SCOPES}")
    if trainable == "lora" and lora is None:
        lora = LoraConfig()
    if trainable != "lora":
        lora = None
    src = str(source)
    if src.startswith("tiny:"):
        if src.split(":", 1)[1] not in TINY_CONFIGS:
            raise ValueError(f"unknown tiny model {src!r}; allowed: "
                             f"{['tiny:' + k for k in TINY_CONFIGS]}")
        options = {k: v for k, v in (("pooling", pooling), ("attention", attention)) if v}
        cfg = dataclasses.replace(TINY_CONFIGS[src.split(":", 1)[1]], **options)
    else:
        cfg = arch_config(src, pooling=pooling, attention=attention)
    param_dtype = jnp.dtype(jnp.float32 if trainable == "full" else _dtype(dtype)).name
    _, graphdef, state, shardings = _abstract_model(cfg, num_labels, lora, param_dtype,
                                                    compute_dtype, remat, mesh,
                                                    freeze_rules(rules))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, shardings)
    args = dict(num_labels=num_labels, param_dtype=param_dtype, compute_dtype=compute_dtype,
                remat=remat, rules=freeze_rules(rules))
    return ModelBundle(nnx.merge(graphdef, state), None, cfg, str(source), trainable, lora,
                       mesh, build_args=args)


@functools.lru_cache(maxsize=16)
def _compiled_trainable_init(cfg, num_labels, lora, param_dtype, compute_dtype, remat, mesh,
                             rules, scope):
    """Jitted init(key) -> trainable state only; XLA drops the unused base-weight draws."""
    cls = _model_class(cfg)
    filt = trainable_filter(scope)

    def create(key):
        return cls(cfg, num_labels=num_labels, lora=lora, dtype=jnp.dtype(param_dtype),
                   compute_dtype=compute_dtype, remat=remat, rngs=nnx.Rngs(params=key))

    abstract = nnx.eval_shape(lambda: create(jax.random.key(0)))
    _, abstract_train, _ = nnx.split(abstract, filt, ...)
    shardings = state_shardings(abstract_train, mesh, rules)
    return jax.jit(lambda key: nnx.split(create(key), filt, ...)[1], out_shardings=shardings)


def _flat_params(model) -> dict[str, nnx.Variable]:
    return {".".join(str(k) for k in path): var
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _load_into(model, mappings, unused_patterns, source: W.TensorSource, where: str,
               mesh, rules) -> list[str]:
    """Load `source` into `model` strictly; returns the deliberately unused tensor names.

    Names and shapes are checked before any values are read. Each parameter is then made by
    `jax.make_array_from_callback` on its own sharding, from the slices that this process's
    devices hold (`W.param_reader`): a process reads and transforms only its shards, and no
    process `device_put`s a whole host value on a global sharding, which with several processes
    would all-gather every weight to check that they agree (docs/design.md, Model).
    """
    params = _flat_params(model)
    shapes = {p: tuple(v.value.shape) for p, v in params.items()}
    dtypes = {p: np.dtype(v.value.dtype) for p, v in params.items()}
    unused = W.plan_import(mappings, unused_patterns, source.names(), shapes, where)
    W.check_shapes(mappings, source, shapes, where)
    by_target: dict[str, list[W.Mapping]] = {}
    for mp in mappings:
        by_target.setdefault(mp.target, []).append(mp)
    for path, group in by_target.items():
        var = params[path]
        read = W.param_reader(group, source, shapes[path], dtypes[path])
        var.value = jax.make_array_from_callback(shapes[path], var.value.sharding, read,
                                                 dtype=dtypes[path])
    return unused


def load_pretrained(source: str | pathlib.Path, *, num_labels: int = 2,
                    dtype: str = "bfloat16", compute_dtype: str | None = None,
                    lora: LoraConfig | None = None, trainable: str = "lora", mesh=None,
                    rules=DEFAULT_RULES, pooling: str | None = None, seed: int = 0,
                    remat: bool = False, attention: str | None = None) -> ModelBundle:
    """Build our model for `source` and load its weights strictly (see module docstring).
    `pooling` and `attention` (`ArchConfig.attention`) override the family's defaults."""
    options = {k: v for k, v in (("pooling", pooling), ("attention", attention)) if v}
    kw = dict(num_labels=num_labels, dtype=dtype, compute_dtype=compute_dtype, lora=lora,
              trainable=trainable, mesh=mesh, rules=rules, seed=seed, remat=remat)
    src = str(source)
    if src.startswith("tiny:"):
        name = src.split(":", 1)[1]
        if name not in TINY_CONFIGS:
            raise ValueError(f"unknown tiny model {src!r}; allowed: "
                             f"{['tiny:' + k for k in TINY_CONFIGS]}")
        cfg = dataclasses.replace(TINY_CONFIGS[name], **options)
        model, lora_cfg, mesh, args = build_model(cfg, **kw)
        return ModelBundle(model, byte_tokenizer(), cfg, src, trainable, lora_cfg, mesh,
                           build_args=args)

    from scalable_elicitation import assets

    if src in assets.ASSETS:
        path = assets.asset_path(src)
    else:
        path = pathlib.Path(src).expanduser()
    if str(path).endswith(".gguf"):
        return _load_gguf(path, options=options, **kw)
    if not path.exists():
        if path.is_absolute() or src.startswith(".") or src.count("/") != 1:
            raise FileNotFoundError(f"model source {src!r}: no such file or folder (expected a "
                                    "Hugging Face folder, a .gguf file, a hub id 'org/name', "
                                    f"an asset name {sorted(assets.ASSETS)} or tiny:llama)")
        path = _download_hub(src)
    return _load_hf_folder(path, options=options, **kw)


def _download_hub(repo_id: str) -> pathlib.Path:
    from huggingface_hub import snapshot_download

    try:
        return pathlib.Path(snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt",
                                     "*.model", "1_Pooling/*"]))
    except Exception as err:  # offline or not found: say which and how to fix it
        raise FileNotFoundError(
            f"could not fetch hub model {repo_id!r} ({type(err).__name__}: {err}); download it "
            "to a local folder and pass its path") from None


def _load_hf_folder(path: pathlib.Path, *, options, **kw) -> ModelBundle:
    cfg = W.hf_config_from_folder(path, options.get("pooling"))
    cfg = dataclasses.replace(cfg, **options)
    model, lora_cfg, mesh, args = build_model(cfg, **kw)
    family_map = W.llama_hf_map if cfg.family == "llama" else W.bert_hf_map
    mappings, unused_patterns = family_map(cfg)
    source = W.SafetensorsSource(path, cfg.family)
    unused = _load_into(model, mappings, unused_patterns, source, str(path), mesh,
                        kw["rules"])
    tokenizer = None
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        # seconds to import: only when there is one
        tokenizer = W.transformers_module().AutoTokenizer.from_pretrained(str(path))
    return ModelBundle(model, tokenizer, cfg, str(path), kw["trainable"], lora_cfg, mesh,
                       unused, args)


def _load_gguf(path: pathlib.Path, *, options, **kw) -> ModelBundle:
    from scalable_elicitation.models.gguf_file import GGUFFile

    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} not found")
    reader = GGUFFile(path)
    cfg, arch = W.gguf_config(reader)
    cfg = dataclasses.replace(cfg, **options)
    model, lora_cfg, mesh, args = build_model(cfg, **kw)
    mappings, unused_patterns = W.llama_gguf_map(cfg, arch)
    unused = _load_into(model, mappings, unused_patterns, W.GGUFSource(reader), str(path), mesh,
                        kw["rules"])
    return ModelBundle(model, W.gguf_tokenizer(reader), cfg, str(path), kw["trainable"],
                       lora_cfg, mesh, unused, args)


def byte_tokenizer():
    """A byte-level tokenizer (one token per byte, ids 0..255; 256 = pad/eos) for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    PreTrainedTokenizerFast = W.transformers_module().PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", padding_side="right")
