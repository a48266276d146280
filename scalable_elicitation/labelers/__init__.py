"""Weak labellers (docs/design.md#weak-labels): the interface, the labellers, the cache, and the
one place a config's `labeler` block becomes a labeller."""
from scalable_elicitation.labelers.cache import cached_metadata, cached_weak_labels
from scalable_elicitation.labelers.interface import (Labeler, WeakLabels, labeler_train_split,
                                                     labelled_pool, make_weak_labels)
from scalable_elicitation.labelers.model import ModelLabeler
from scalable_elicitation.labelers.simple import FileLabeler, NoiseLabeler
from scalable_elicitation.labelers.words import WordsLabeler

KINDS = ("model", "noise", "file", "words")

__all__ = ["KINDS", "FileLabeler", "Labeler", "ModelLabeler", "NoiseLabeler", "WeakLabels",
           "cached_metadata", "cached_weak_labels", "labeler_train_split", "labelled_pool",
           "make_labeler", "make_weak_labels", "WordsLabeler"]


def make_labeler(cfg, cache_dir) -> Labeler:
    """The labeller a config's `labeler` block describes (`kind`: model, noise, file or words)."""
    if cfg.kind == "model":
        return ModelLabeler(
            source=cfg.source, n_train=cfg.n_train, trainable=cfg.trainable, lr=cfg.lr,
            epochs=cfg.epochs, batch_size=cfg.batch_size, max_length=cfg.max_length,
            micro_batch=cfg.get("micro_batch", 0),
            cache_dir=None if cache_dir is None else str(cache_dir))
    if cfg.kind == "noise":
        return NoiseLabeler(rate=cfg.rate, soft=cfg.get("soft", False))
    if cfg.kind == "file":
        return FileLabeler()
    if cfg.kind == "words":  # weak by capacity: hashed bag of words on n_train labels
        return WordsLabeler(n_train=cfg.n_train)
    raise ValueError(f"config.labeler.kind: {cfg.kind!r}; allowed: {', '.join(KINDS)}")
