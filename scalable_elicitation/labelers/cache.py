"""The on-disk cache of weak labels: one entry per (task, labeller config, seed)."""
from __future__ import annotations

import hashlib
import io
import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_elicitation.data import Task
from scalable_elicitation.labelers.interface import Labeler, WeakLabels
from scalable_elicitation.paths import atomic_write

LABELS_VERSION = 2  # bump when a labeller's output for a given config changes


def weak_labels_key(labeler: Labeler, task: Task, seed: int) -> str:
    """Cache key of (task name + options, its training split's seed, labeller config, seed).
    The split's seed counts: a task's training split is fixed by `config.split_seed`, not by
    the labeller's seed, and labels of another split's texts must never be reused."""
    payload = json.dumps({"task": task.key, "split_seed": task.info.get("seed"),
                          "labeler": labeler.name, "config": labeler.config_dict(),
                          "seed": seed, "version": LABELS_VERSION}, sort_keys=True,
                         default=str)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def weak_labels_paths(cache_dir, key: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(parquet, metadata json) paths of a cache entry."""
    folder = pathlib.Path(cache_dir) / "weak_labels"
    return folder / f"{key}.parquet", folder / f"{key}.json"


def save_weak_labels(weak: WeakLabels, parquet_path: pathlib.Path, json_path: pathlib.Path,
                     meta: dict) -> None:
    """Writes the columnar file, then the metadata (its presence marks a complete entry)."""
    is_train = np.r_[np.zeros(len(weak.ids), bool), np.ones(len(weak.train_ids), bool)]
    table = pa.table({"id": np.r_[weak.ids, weak.train_ids].astype(str),
                      "soft": np.r_[weak.soft, np.full(len(weak.train_ids), np.nan, np.float32)],
                      "labeler_train": is_train})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write(parquet_path, buf.getvalue())
    text = json.dumps({**meta, "labeler": weak.labeler, "config": weak.config,
                       "metrics": weak.metrics}, indent=1, sort_keys=True, default=str)
    atomic_write(json_path, text)


def load_weak_labels(parquet_path, json_path) -> WeakLabels:
    """Reads a cache entry written by `save_weak_labels`."""
    meta = json.loads(pathlib.Path(json_path).read_text())
    table = pq.read_table(parquet_path)
    ids = np.asarray(table.column("id").to_pylist(), dtype="<U16")
    is_train = table.column("labeler_train").to_numpy(zero_copy_only=False)
    soft = table.column("soft").to_numpy(zero_copy_only=False).astype(np.float32)
    return WeakLabels(meta["labeler"], meta["config"], ids[is_train], ids[~is_train],
                      soft[~is_train], meta["metrics"])


def cached_weak_labels(labeler: Labeler, task: Task, seed: int, cache_dir) -> WeakLabels:
    """`labeler.label(task, seed)`, computed once per (task, labeller config, seed) and cached
    as `cache_dir/weak_labels/KEY.parquet` plus `KEY.json` (config, task, seed, metrics)."""
    key = weak_labels_key(labeler, task, seed)
    parquet_path, json_path = weak_labels_paths(cache_dir, key)
    if json_path.exists() and parquet_path.exists():
        return load_weak_labels(parquet_path, json_path)
    weak = labeler.label(task, seed)
    meta = {"key": key, "task": task.name, "task_key": task.key, "task_options": task.options,
            "seed": seed, "version": LABELS_VERSION}
    save_weak_labels(weak, parquet_path, json_path, meta)
    return weak


def cached_metadata(cache_dir, task: Task | None = None) -> list[dict]:
    """Metadata of every cached weak-label entry (of `task`, if given)."""
    folder = pathlib.Path(cache_dir) / "weak_labels"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = json.loads(path.read_text())
        if task is None or meta.get("task_key") == task.key:
            out.append(meta)
    return out
