"""`Split`: a small columnar table of examples (id, text, label, optional weak_label).

A split is a dict of equal-length numpy arrays with row operations that keep every column in
step. Ids are content hashes of the formatted text (`text_id`), so the same example gets the same
id in every run, every process and every seed.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

REQUIRED_COLUMNS = ("id", "text", "label")
ID_HEX_CHARS = 16  # 64-bit ids: the study's 32-bit ids collided
# (docs/decisions.md#32-bit-ids-collided).


def text_id(text: str) -> str:
    """Stable 64-bit content id of a formatted text: 16 hex chars of its blake2b hash."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=ID_HEX_CHARS // 2).hexdigest()


def text_ids(texts: Iterable[str]) -> np.ndarray:
    """`text_id` of each text, as a fixed-width unicode array."""
    return np.array([text_id(t) for t in texts], dtype=f"<U{ID_HEX_CHARS}")


def _as_column(name: str, values) -> np.ndarray:
    """Normalises a column to the dtype the rest of the code relies on."""
    if name == "text":
        arr = np.empty(len(values), dtype=object)
        arr[:] = [str(v) for v in values]
        return arr
    if name == "id":
        return np.asarray(values, dtype=f"<U{ID_HEX_CHARS}")
    if name == "label":
        return np.asarray(values, dtype=np.int64)
    if name == "weak_label":
        return np.asarray(values, dtype=np.float32)
    return np.asarray(values)


class Split:
    """A table of examples with column access `split["text"]`.

    Columns: `id` (str, 16 hex chars), `text` (object array of str), `label` (int64, 0/1), and
    optionally `weak_label` (float32 in [0, 1]) or any other per-example array.
    """

    def __init__(self, columns: Mapping[str, Sequence]):
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"a Split needs the columns {list(REQUIRED_COLUMNS)}; missing {missing} "
                f"(got {sorted(columns)})")
        self._columns = {name: _as_column(name, values) for name, values in columns.items()}
        lengths = {name: len(arr) for name, arr in self._columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Split columns differ in length: {lengths}")

    @classmethod
    def from_texts(cls, texts: Sequence[str], labels: Sequence[int], **extra) -> "Split":
        """Builds a split from formatted texts and labels, computing the ids."""
        return cls({"id": text_ids(texts), "text": texts, "label": labels, **extra})

    def __getitem__(self, name: str) -> np.ndarray:
        if not isinstance(name, str):
            raise TypeError(
                f"Split columns are accessed by name (one of {list(self.columns)}); "
                f"use .take(indices) for rows, got {type(name).__name__}")
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns: {list(self.columns)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._columns

    def __len__(self) -> int:
        return len(self._columns["id"])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, columns={list(self.columns)})"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._columns)

    def take(self, indices) -> "Split":
        """The rows at `indices` (ints or a boolean mask), in that order."""
        indices = np.asarray(indices)
        if indices.dtype != bool:
            indices = indices.astype(np.int64)
        return Split({name: arr[indices] for name, arr in self._columns.items()})

    def index_of(self, ids) -> np.ndarray:
        """Row index of each id; KeyError naming the first id that is not in the split."""
        position = {i: k for k, i in enumerate(self._columns["id"].tolist())}
        out = np.empty(len(ids), dtype=np.int64)
        for k, i in enumerate(np.asarray(ids).tolist()):
            if i not in position:
                raise KeyError(f"id {i!r} is not in this split ({len(self)} examples)")
            out[k] = position[i]
        return out

    def select_ids(self, ids) -> "Split":
        """The rows with the given ids, in the order given."""
        return self.take(self.index_of(ids))

    def with_column(self, name: str, values) -> "Split":
        """A copy with column `name` added or replaced."""
        return Split({**self._columns, name: values})

    def to_dict(self) -> dict[str, np.ndarray]:
        """The columns as a dict of numpy arrays (copies)."""
        return {name: arr.copy() for name, arr in self._columns.items()}

    def to_arrow(self) -> pa.Table:
        """The split as a pyarrow table (for parquet caches)."""
        return pa.table({
            name: pa.array(arr.tolist()) if arr.dtype == object else pa.array(arr)
            for name, arr in self._columns.items()})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "Split":
        """Inverse of `to_arrow`."""
        return cls({name: table.column(name).to_numpy(zero_copy_only=False)
                    for name in table.column_names})


def concat_splits(splits: Sequence[Split]) -> Split:
    """Rows of several splits with the same columns, one after another."""
    columns = splits[0].columns
    for s in splits[1:]:
        if set(s.columns) != set(columns):
            raise ValueError(f"cannot concatenate splits with columns {columns} and {s.columns}")
    return Split({c: np.concatenate([s[c] for s in splits]) for c in columns})
