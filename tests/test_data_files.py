"""file: tasks in JSONL, CSV and parquet, and one clear message per bad file."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalable_elicitation.data import load_task


def rows(n=60, weak=False, split=False):
    out = []
    for i in range(n):
        r = {"text": f"example number {i}", "label": int(i % 2 == 0)}
        if weak:
            r["weak_label"] = 0.8 if i % 2 == 0 else 0.3
        if split:
            r["split"] = "test" if i < 20 else "train"
        out.append(r)
    return out


def write(path, records):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".csv":
        cols = list(records[0])
        lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in records]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_good_files(tmp_path, suffix):
    path = write(tmp_path / f"task{suffix}", rows(weak=True))
    task = load_task(f"file:{path}", seed=1, n_test=20)
    assert len(task.test) == 20 and len(task.train) == 40
    assert np.mean(task.train["label"]) == 0.5 == np.mean(task.test["label"])
    assert "weak_label" in task.train.columns
    assert task.train["weak_label"].dtype == np.float32
    assert not set(task.train["id"]) & set(task.test["id"])
    # the test set does not depend on the seed
    assert list(load_task(f"file:{path}", seed=2, n_test=20).test["id"]) == list(task.test["id"])


def test_split_column_is_honoured(tmp_path):
    path = write(tmp_path / "task.jsonl", rows(split=True))
    task = load_task(f"file:{path}", n_test=1000)
    assert sorted(int(t.split()[-1]) for t in task.test["text"]) == list(range(20))
    assert len(task.train) == 40


def test_file_cache_notices_edits(tmp_path):
    path = write(tmp_path / "task.jsonl", rows())
    cache = tmp_path / "cache"
    first = load_task(f"file:{path}", n_test=20, cache_dir=cache)
    assert list(load_task(f"file:{path}", n_test=20, cache_dir=cache).train["id"]) == list(
        first.train["id"])
    write(path, rows(80))
    assert len(load_task(f"file:{path}", n_test=20, cache_dir=cache).train) == 60


BAD = {
    "missing_label": ([{"text": "a"}, {"text": "b"}], "has no column 'label'"),
    "missing_text": ([{"sentence": "a", "label": 1}], "has no column 'text'"),
    "non_binary": ([{"text": "a", "label": 1}, {"text": "b", "label": 2}],
                   "column 'label' must be 0 or 1; found 2 in rows 1"),
    "empty_text": ([{"text": "a", "label": 1}, {"text": "  ", "label": 0}],
                   "empty text in rows 1"),
    "bad_weak": ([{"text": "a", "label": 1, "weak_label": 1.5}],
                 "'weak_label' must be a number in \\[0, 1\\]"),
    "bad_split": ([{"text": "a", "label": 1, "split": "dev"}],
                  "'split' must be one of \\('train', 'test'\\)"),
}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files(tmp_path, case, suffix):
    records, message = BAD[case]
    path = write(tmp_path / f"{case}{suffix}", records)
    with pytest.raises(ValueError, match=f"task file {path}.*{message}") as info:
        load_task(f"file:{path}")
    assert str(info.value).count("\n") == 0  # one clear line


def test_bad_csv_label(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,yes\nbye,0\n")
    with pytest.raises(ValueError, match=f"task file {path}.*'label' must be 0 or 1; found 'yes'"):
        load_task(f"file:{path}")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"task file {empty} is empty"):
        load_task(f"file:{empty}")
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match=f"task file {header_only} is empty"):
        load_task(f"file:{header_only}")
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        load_task(f"file:{tmp_path / 'nope.jsonl'}")
    other = tmp_path / "task.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unknown extension '.txt'"):
        load_task(f"file:{other}")


def test_too_small_for_n_test(tmp_path):
    path = write(tmp_path / "small.jsonl", rows(10))
    with pytest.raises(ValueError, match="train split has 0 balanced examples.*lower n_test"):
        load_task(f"file:{path}", n_test=1000)
