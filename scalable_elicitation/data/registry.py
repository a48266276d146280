"""`load_task`: every task name resolves here, and loading is cached on disk.

Names: `tweet_sentiment` (the offline default), the hub tasks in `hub.HUB_TASKS`,
`tfds:NAME[/CONFIG]` and `file:PATH`. A task's cache entry is keyed by its name, options,
`n_test`, `DATA_VERSION` and (for files) the file's content hash; the seed picks a sub-folder, as
the training split's shuffle, binarisation and undersampling depend on it (the test set does not).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
from typing import Any

import pyarrow.parquet as pq

from scalable_elicitation import paths
from scalable_elicitation.data import files, hub, tfds_tasks, tweets
from scalable_elicitation.data.split import Split

DATA_VERSION = 1  # bump when any formatting or processing rule changes: invalidates caches
DEFAULT_TASK = "tweet_sentiment"


@dataclasses.dataclass
class Task:
    """A binary task: balanced, deduplicated train and test splits with stable ids.

    `info` holds sizes, the source, the held-out rule, what was dropped, notes and `key` (the
    cache key of the task's data, without the seed).
    """
    name: str
    train: Split
    test: Split
    info: dict
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable key of (name, options, n_test, data version, source content)."""
        return self.info["key"]


# Options each kind of task accepts, with defaults. Every loader accepts max_train.
_COMMON = {"max_train": None}
_OPTIONS = {
    "tweet_sentiment": {**_COMMON, "min_confidence": 0.9},
    "hub": dict(_COMMON),
    "tfds": {**_COMMON, "data_dir": None},
    "file": dict(_COMMON),
}


def task_kind(name: str) -> str:
    """'tweet_sentiment', 'hub', 'tfds' or 'file'; ValueError listing the names otherwise."""
    if name == DEFAULT_TASK:
        return DEFAULT_TASK
    if name in hub.HUB_TASKS:
        return "hub"
    if name.startswith("tfds:"):
        return "tfds"
    if name.startswith("file:"):
        return "file"
    raise ValueError(f"unknown task {name!r}; use {DEFAULT_TASK!r}, one of "
                     f"{sorted(hub.HUB_TASKS)}, 'tfds:NAME[/CONFIG]' or 'file:PATH'")


def resolve_options(name: str, options: dict) -> dict:
    """Task options with defaults filled; ValueError naming an unknown option and the allowed."""
    allowed = _OPTIONS[task_kind(name)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"task {name!r} has no option {unknown[0]!r}; allowed: {sorted(allowed)}")
    return {**allowed, **options}


def _fingerprint(name: str) -> str | None:
    kind = task_kind(name)
    if kind == "file":
        return files.file_fingerprint(name[len("file:"):])
    if kind == DEFAULT_TASK:
        from scalable_elicitation.assets import ASSETS
        return ASSETS["tweets"].version
    return None


def task_key(name: str, options: dict, n_test: int) -> str:
    """Cache key of a task's data (16 hex chars)."""
    payload = json.dumps({"name": name, "options": options, "n_test": n_test,
                          "version": DATA_VERSION, "source": _fingerprint(name)},
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def slug(name: str) -> str:
    """A file-name-safe short form of a task name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-60:].strip("_") or "task"


def build_task_splits(name: str, *, seed: int, n_test: int, options: dict):
    """Reads and processes a task (no cache). Returns (train, test, info)."""
    kind = task_kind(name)
    max_train = options["max_train"]
    if kind == DEFAULT_TASK:
        from scalable_elicitation.assets import asset_path
        return tweets.build_tweet_task(asset_path("tweets"), seed=seed, n_test=n_test,
                                       min_confidence=options["min_confidence"],
                                       max_train=max_train)
    if kind == "hub":
        return hub.load_hub_task(name, seed=seed, n_test=n_test, max_train=max_train)
    if kind == "tfds":
        return tfds_tasks.load_tfds_task(name[len("tfds:"):], seed=seed, n_test=n_test,
                                         max_train=max_train, data_dir=options["data_dir"])
    return files.build_file_task(name[len("file:"):], seed=seed, n_test=n_test,
                                 max_train=max_train)


def load_task(name: str = DEFAULT_TASK, *, seed: int = 0, n_test: int = 1000,
              cache_dir: str | os.PathLike | None = None, **task_options: Any) -> Task:
    """Loads a task: balanced, deduplicated train and test splits with stable ids
    (docs/design.md#splits).

    The test set (up to `n_test` balanced held-out examples) depends on the task only; the
    training split's order, binarisation and undersampling on `seed`. With `cache_dir`, the
    processed splits are stored as parquet under `cache_dir/tasks/` and read back on later calls.
    """
    options = resolve_options(name, task_options)
    key = task_key(name, options, n_test)
    folder = None
    if cache_dir is not None:
        folder = pathlib.Path(cache_dir) / "tasks" / f"{slug(name)}-{key}" / f"seed-{seed}"
        cached = read_cached_task(folder)
        if cached is not None:
            return Task(name, *cached, options=options)
    train, test, info = build_task_splits(name, seed=seed, n_test=n_test, options=options)
    info = {"name": name, "key": key, "seed": seed, "options": options, "version": DATA_VERSION,
            **info}
    if folder is not None:
        write_cached_task(folder, train, test, info)
    return Task(name, train, test, info, options=options)


def read_cached_task(folder: pathlib.Path) -> tuple[Split, Split, dict] | None:
    """(train, test, info) from a cache folder, or None when it is not complete."""
    info_path = folder / "info.json"
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    return (Split.from_arrow(pq.read_table(folder / "train.parquet")),
            Split.from_arrow(pq.read_table(folder / "test.parquet")), info)


def write_cached_task(folder: pathlib.Path, train: Split, test: Split, info: dict) -> None:
    """Writes a cache folder: each file atomically, `info.json` last (its presence marks a
    complete entry, see `read_cached_task`; concurrent writers write the same bytes)."""
    paths.atomic_write(folder / "train.parquet", _parquet_bytes(train))
    paths.atomic_write(folder / "test.parquet", _parquet_bytes(test))
    paths.atomic_write(folder / "info.json",
                       json.dumps(info, indent=1, sort_keys=True, default=str))


def _parquet_bytes(split: Split) -> bytes:
    buf = io.BytesIO()
    pq.write_table(split.to_arrow(), buf)
    return buf.getvalue()
