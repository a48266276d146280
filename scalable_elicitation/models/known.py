"""Architectures the project knows by name, so a model can be built abstractly (shapes and
shardings, no weights) without a download: the study's hub models by their Hugging Face ids
(their `config.json` fields, as published), the offline assets (whose installed folders hold a
`config.json`), a local Hugging Face folder or a `.gguf` file (header only).

    cfg = arch_config("meta-llama/Meta-Llama-3-8B")   # an ArchConfig, nothing downloaded
"""
from __future__ import annotations

import dataclasses
import pathlib

from scalable_elicitation.models.config import ArchConfig, from_hf_config

# The config.json fields of the hub models the study uses (Mallen & Belrose 2024: Llama-3-8B
# as the strong model, Qwen1.5 0.5B and 4B as weak ones), enough for `from_hf_config`.
HUB_CONFIGS = {
    "meta-llama/Meta-Llama-3-8B": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu"},
    "Qwen/Qwen1.5-0.5B": {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1024,
        "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 16,
        "num_key_value_heads": 16, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False,
        "hidden_act": "silu"},
    "Qwen/Qwen1.5-4B": {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 2560,
        "intermediate_size": 6912, "num_hidden_layers": 40, "num_attention_heads": 20,
        "num_key_value_heads": 20, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 5000000.0, "tie_word_embeddings": False, "use_sliding_window": False,
        "hidden_act": "silu"},
}


def arch_config(source: str, *, pooling: str | None = None, attention: str | None = None
                ) -> ArchConfig:
    """The `ArchConfig` of a model source (`models.load_pretrained`'s kinds but `tiny:`, which
    `models.abstract_bundle` knows) read without its weights; `pooling` and `attention`
    override the family's as `load_pretrained` does."""
    from scalable_elicitation import assets
    from scalable_elicitation.models import weights as W

    src = str(source)
    if src in HUB_CONFIGS:
        cfg = from_hf_config(HUB_CONFIGS[src], pooling=pooling)
    elif src in assets.ASSETS:
        cfg = W.hf_config_from_folder(assets.asset_path(src), pooling)
    elif src.endswith(".gguf") and pathlib.Path(src).expanduser().exists():
        from scalable_elicitation.models.gguf_file import GGUFFile
        cfg, _ = W.gguf_config(GGUFFile(pathlib.Path(src).expanduser()))
    elif (pathlib.Path(src).expanduser() / "config.json").exists():
        cfg = W.hf_config_from_folder(pathlib.Path(src).expanduser(), pooling)
    else:
        raise ValueError(
            f"model {src!r} is not known without a download: use a hub id the project knows "
            f"({', '.join(HUB_CONFIGS)}), an asset ({', '.join(sorted(assets.ASSETS))}), "
            "a local Hugging Face folder with config.json or a .gguf file")
    options = {k: v for k, v in (("pooling", pooling), ("attention", attention)) if v}
    return dataclasses.replace(cfg, **options)
