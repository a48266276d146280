"""`tfds:NAME[/CONFIG]`: tasks carried by tensorflow-datasets (the optional `tfds` extra).

Rows are read through `tfds.data_source` (array_record), which needs no TensorFlow for builders
whose code does not import it (e.g. `imdb_reviews`); others (e.g. `super_glue`) need TensorFlow
installed, and preparing a dataset from its raw download may need it too. Each builder has a
text/label mapping below; the rows then go through the same pipeline as every other task.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from scalable_elicitation.data import processing
from scalable_elicitation.data.hub import format_boolq


def _single(field):
    def format_fn(row, coin, pick):
        if row["label"] not in (0, 1):
            return None  # GLUE's hidden test labels are -1
        return row[field], row["label"]
    return format_fn


def _boolq(row, coin, pick):
    if row["label"] not in (0, 1):
        return None
    return format_boolq({"passage": row["passage"], "question": row["question"],
                         "answer": row["label"]}, coin, pick)


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    builder: str  # NAME or NAME/CONFIG
    module: str  # the tfds module that registers the builder
    train_split: str
    test_split: str
    fields: tuple[str, ...]
    format_fn: processing.FormatFn


TFDS_TASKS: dict[str, TfdsSource] = {s.builder: s for s in [
    TfdsSource("imdb_reviews", "tensorflow_datasets.text.imdb", "train", "test",
               ("text", "label"), _single("text")),
    TfdsSource("glue/sst2", "tensorflow_datasets.text.glue", "train", "validation",
               ("sentence", "label"), _single("sentence")),
    TfdsSource("glue/cola", "tensorflow_datasets.text.glue", "train", "validation",
               ("sentence", "label"), _single("sentence")),
    TfdsSource("super_glue/boolq", "tensorflow_datasets.text.super_glue", "train", "validation",
               ("question", "passage", "label"), _boolq),
]}


def get_tfds_source(builder: str) -> TfdsSource:
    """The mapping of a tfds builder; ValueError listing the supported ones otherwise."""
    key = builder.split(":")[0]  # allow NAME/CONFIG:VERSION
    if key not in TFDS_TASKS:
        raise ValueError(f"tfds builder {builder!r} has no text/label mapping; supported: "
                         f"{sorted(TFDS_TASKS)}")
    return TFDS_TASKS[key]


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _plain(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value


def rows_to_table(rows, fields: tuple[str, ...]) -> pa.Table:
    """Decodes tfds examples (numpy scalars, bytes) into a pyarrow table of `fields`."""
    return pa.table({f: [_plain(r[f]) for r in rows] for f in fields})


def import_tfds(builder: str):
    """Imports tensorflow_datasets and the module registering `builder`, with actionable errors."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("tfds: tasks need tensorflow-datasets: pip install "
                          "'scalable_elicitation[tfds]'") from None
    import importlib
    try:
        importlib.import_module(get_tfds_source(builder).module)
    except ModuleNotFoundError as e:
        raise ImportError(f"tfds builder {builder!r} needs {e.name}: pip install {e.name}") from e
    return tfds


def read_tfds_split(builder: str, split: str, data_dir: str | None = None) -> pa.Table:
    """Reads one split of a tfds builder through `tfds.data_source`."""
    source = get_tfds_source(builder)
    tfds = import_tfds(builder)
    try:
        data = tfds.data_source(builder, split=split, data_dir=data_dir)
    except ModuleNotFoundError as e:
        missing = "tensorflow" if "tensorflow" in str(e) else (e.name or str(e))
        raise ImportError(f"tfds builder {builder!r} needs {missing} (its code imports it): "
                          f"pip install {missing}") from e
    return rows_to_table([data[i] for i in range(len(data))], source.fields)


def build_tfds_task(builder: str, splits: Mapping[str, pa.Table], *, seed: int, n_test: int,
                    max_train: int | None = None):
    """Train and test splits from the raw tfds splits (keyed by tfds split name)."""
    source = get_tfds_source(builder)
    train, test, info = processing.build_splits(
        source.format_fn, seed=seed, n_test=n_test, train_table=splits[source.train_split],
        test_table=splits[source.test_split], max_train=max_train)
    info.update(source=f"tfds:{builder}", train_splits=[source.train_split],
                test_splits=[source.test_split], notes=[])
    return train, test, info


def load_tfds_task(builder: str, *, seed: int, n_test: int, max_train: int | None = None,
                   data_dir: str | None = None):
    """Reads a tfds task and builds its splits; a thin wrapper over `build_tfds_task`."""
    source = get_tfds_source(builder)
    splits = {s: read_tfds_split(builder, s, data_dir)
              for s in (source.train_split, source.test_split)}
    return build_tfds_task(builder, splits, seed=seed, n_test=n_test, max_train=max_train)
