"""The registry on the offline default task, the disk cache, and the inspection command."""
import subprocess
import sys

import numpy as np
import pytest

from scalable_elicitation.data import Split, load_task, text_id


@pytest.fixture(scope="module")
def tweets():
    return load_task("tweet_sentiment", seed=0)


def test_tweet_sentiment(tweets):
    assert tweets.info["n_test"] == len(tweets.test) == 1000
    # ~4,300 balanced before the test set (docs/design.md#offline-assets)
    assert 3000 < len(tweets.train) < 3600
    for split in (tweets.train, tweets.test):
        assert np.mean(split["label"]) == 0.5
        assert len(set(split["id"])) == len(split)
        assert split["text"].dtype == object and split["id"].dtype.kind == "U"
        assert all(len(i) == 16 for i in split["id"][:10])
    assert not set(tweets.train["id"]) & set(tweets.test["id"])


def test_test_set_ignores_seed_train_does_not(tweets):
    other = load_task("tweet_sentiment", seed=1)
    assert list(other.test["id"]) == list(tweets.test["id"])
    assert list(other.train["id"]) != list(tweets.train["id"])
    assert list(load_task("tweet_sentiment", seed=0).train["id"]) == list(tweets.train["id"])


def test_min_confidence_option():
    looser = load_task("tweet_sentiment", min_confidence=0.0, n_test=200)
    assert len(looser.train) > 8000  # 6,954 positives before dedup and the test set
    with pytest.raises(ValueError, match="no option 'min_conf'.*min_confidence"):
        load_task("tweet_sentiment", min_conf=0.5)
    with pytest.raises(ValueError, match="unknown task 'tweets'.*tweet_sentiment"):
        load_task("tweets")


def test_max_train(tweets):
    capped = load_task("tweet_sentiment", max_train=100)
    assert len(capped.train) == 100 and np.mean(capped.train["label"]) == 0.5
    assert list(capped.test["id"]) == list(tweets.test["id"])


def test_disk_cache_round_trip(tmp_path, tweets):
    first = load_task("tweet_sentiment", cache_dir=tmp_path)
    folders = list((tmp_path / "tasks").glob("*/seed-0"))
    assert len(folders) == 1 and (folders[0] / "info.json").exists()
    second = load_task("tweet_sentiment", cache_dir=tmp_path)
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert a.columns == b.columns
        for c in a.columns:
            assert list(a[c]) == list(b[c])
    assert second.key == tweets.key and second.info["n_train"] == len(tweets.train)


def test_split_operations():
    split = Split.from_texts(["a", "b", "c"], [0, 1, 0], weak_label=[0.1, 0.9, 0.4])
    assert split["id"][1] == text_id("b")
    picked = split.select_ids([text_id("c"), text_id("a")])
    assert list(picked["text"]) == ["c", "a"] and picked["weak_label"].dtype == np.float32
    assert len(split.take(np.array([True, False, True]))) == 2
    assert set(split.to_dict()) == {"id", "text", "label", "weak_label"}
    with pytest.raises(KeyError, match="'nope'.*columns"):
        split["nope"]
    with pytest.raises(KeyError, match="not in this split"):
        split.select_ids(["0000000000000000"])


def test_inspection_command_offline(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "scalable_elicitation.data", "tweet_sentiment",
         "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True).stdout
    assert "train n=" in out and "test  n=  1000" in out and "label=1 share 0.500" in out
    assert "words p5/p50/p95/p99/max" in out and "--- example 1" in out
    assert "weak labels: none cached" in out
    from scalable_elicitation.labelers import NoiseLabeler, cached_weak_labels
    task = load_task("tweet_sentiment", cache_dir=tmp_path)
    cached_weak_labels(NoiseLabeler(0.2), task, 0, tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "scalable_elicitation.data", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=True).stdout
    assert "weak labels noise(rate=0.2) seed 0: pool accuracy 0.800" in out
