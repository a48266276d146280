"""`file:PATH`: a user's own task in JSONL, CSV or parquet.

Columns: `text` (non-empty strings), `label` (0 or 1), optionally `weak_label` (in [0, 1]: the
user's own cheap labels, read by `labels.FileLabeler`) and `split` (`train` or `test`). Without
`split`, `n_test` balanced examples are held out at seed 0, as for SciQ. Every problem raises one
ValueError (FileNotFoundError for a missing file) naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalable_elicitation.data import processing

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
           ".parquet": "parquet", ".pq": "parquet"}
SPLIT_VALUES = ("train", "test")


def file_fingerprint(path: str | pathlib.Path) -> str:
    """Content hash of a file, so a cache notices when the user edits it."""
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: str | pathlib.Path) -> pa.Table:
    """Reads a JSONL, CSV or parquet file into a pyarrow table, with errors naming the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"task file {path}: unknown extension {path.suffix!r}; "
                         f"allowed: {sorted(FORMATS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"task file {path} is empty")
    try:
        if kind == "jsonl":
            import pyarrow.json as pj
            table = pj.read_json(path)
        elif kind == "csv":
            import pyarrow.csv as pcsv
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"text": pa.string(), "split": pa.string()},
                strings_can_be_null=True))
        else:
            import pyarrow.parquet as pq
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"task file {path} could not be read as {kind}: {e}") from None
    if table.num_rows == 0:
        raise ValueError(f"task file {path} is empty: it has columns {table.column_names} "
                         "but no rows")
    return table


def _rows_where(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(str(r) for r in rows[:limit]) + more


def validate_table(path, table: pa.Table) -> pa.Table:
    """Checks the columns of a task file; returns a table with normalised column types.

    Row numbers in messages count data rows from 0.
    """
    missing = [c for c in ("text", "label") if c not in table.column_names]
    if missing:
        raise ValueError(f"task file {path} has no column {missing[0]!r}: a task file needs "
                         f"'text' and 'label' (optional 'weak_label', 'split'); found "
                         f"{table.column_names}")
    text = table.column("text")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)
            or pa.types.is_null(text.type)):
        raise ValueError(f"task file {path}: column 'text' must hold strings, found {text.type}")
    texts = np.asarray(text.to_pylist(), dtype=object)
    empty = np.array([t is None or not str(t).strip() for t in texts])
    if empty.all():
        raise ValueError(f"task file {path}: every text is empty")
    if empty.any():
        raise ValueError(f"task file {path}: empty text in rows {_rows_where(empty)}; "
                         "remove those rows or give them text")
    labels = np.asarray(table.column("label").to_pylist(), dtype=object)
    binary = np.array([_as_binary(v) is not None for v in labels])
    if not binary.all():
        bad = sorted({repr(v) for v in labels[~binary]})[:5]
        raise ValueError(f"task file {path}: column 'label' must be 0 or 1; found {', '.join(bad)}"
                         f" in rows {_rows_where(~binary)}")
    columns = {"text": pa.array(texts.tolist(), pa.string()),
               "label": pa.array([_as_binary(v) for v in labels], pa.int64())}
    if "weak_label" in table.column_names:
        weak = np.asarray(table.column("weak_label").to_pylist(), dtype=object)
        ok = np.array([_as_probability(v) is not None for v in weak])
        if not ok.all():
            bad = sorted({repr(v) for v in weak[~ok]})[:5]
            raise ValueError(f"task file {path}: column 'weak_label' must be a number in [0, 1]; "
                             f"found {', '.join(bad)} in rows {_rows_where(~ok)}")
        columns["weak_label"] = pa.array([_as_probability(v) for v in weak], pa.float32())
    if "split" in table.column_names:
        split = np.asarray(table.column("split").to_pylist(), dtype=object)
        ok = np.isin(split, SPLIT_VALUES)
        if not ok.all():
            bad = sorted({repr(v) for v in split[~ok]})[:5]
            raise ValueError(f"task file {path}: column 'split' must be one of {SPLIT_VALUES}; "
                             f"found {', '.join(bad)} in rows {_rows_where(~ok)}")
        for value in SPLIT_VALUES:
            if not (split == value).any():
                raise ValueError(f"task file {path}: column 'split' has no {value!r} rows; "
                                 "give both train and test rows, or drop the column to hold out "
                                 "n_test examples automatically")
        columns["split"] = pa.array(split.tolist(), pa.string())
    return pa.table(columns)


def _as_binary(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def _as_probability(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return float(value) if isinstance(value, bool) else None
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if 0.0 <= p <= 1.0 else None


def format_file_row(row, coin, pick):
    return row["text"], row["label"]


def build_file_task(path, *, seed: int, n_test: int, max_train: int | None = None):
    """Train and test splits of a task file (see the module docstring). Returns (train, test, info)."""
    table = validate_table(path, read_table(path))
    extra = ("weak_label",) if "weak_label" in table.column_names else ()
    if "split" in table.column_names:
        is_test = pc.equal(table.column("split"), "test")
        train, test, info = processing.build_splits(
            format_file_row, seed=seed, n_test=n_test,
            train_table=table.filter(pc.invert(is_test)), test_table=table.filter(is_test),
            extra_columns=extra, max_train=max_train)
    else:
        train, test, info = processing.build_splits(
            format_file_row, seed=seed, n_test=n_test, pool_table=table, extra_columns=extra,
            max_train=max_train)
    for name, split in (("train", train), ("test", test)):
        if len(split) < 2:
            raise ValueError(
                f"task file {path}: its {name} split has {len(split)} balanced examples after "
                f"dropping duplicates (n_test={n_test}); a task needs both classes in train and "
                "test: add examples, lower n_test, or give a 'split' column")
    info.update(source=f"file:{pathlib.Path(path).resolve()}", notes=[])
    return train, test, info
