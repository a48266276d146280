"""Weak labellers: the no-leak rule, the noise and file labellers, metrics and the cache."""
import dataclasses
import json

import numpy as np
import pytest

from scalable_elicitation import labelers as L
from scalable_elicitation.metrics import auroc
from scalable_elicitation.data import Split, Task, make_pools


def make_task(n_train=200, n_test=60, weak=False) -> Task:
    def split(prefix, n):
        extra = {"weak_label": np.where(np.arange(n) % 2 == 0, 0.9, 0.2)} if weak else {}
        return Split.from_texts([f"{prefix} {'cat' if i % 4 == 0 else 'dog'} {i}"
                                 for i in range(n)], (np.arange(n) % 2 == 0).astype(int), **extra)
    return Task("toy", split("train", n_train), split("test", n_test),
                {"key": f"toy-{n_train}-{n_test}-{weak}"})


@dataclasses.dataclass
class FakeModelLabeler:
    """Trains on its own ground-truth split, then labels everything else (like ModelLabeler)."""
    n_train: int = 40
    name: str = "fake-model"

    def config_dict(self):
        return {"kind": "fake", "n_train": self.n_train}

    def label(self, task, seed):
        own = L.labeler_train_split(task, seed, self.n_train)
        pool = L.labelled_pool(task, own["id"])
        return L.make_weak_labels(self.name, self.config_dict(), task, own["id"],
                                  np.full(len(pool), 0.7), np.full(len(task.test), 0.7))


def test_labeller_never_labels_its_training_examples():
    task = make_task()
    weak = FakeModelLabeler().label(task, seed=3)
    assert len(weak.train_ids) == 40 and np.mean(
        task.train.select_ids(weak.train_ids)["label"]) == 0.5
    assert not set(weak.ids) & set(weak.train_ids)
    assert set(weak.ids) == (set(task.train["id"]) - set(weak.train_ids)) | set(task.test["id"])
    pools = make_pools(task.train, seed=3, exclude_ids=weak.train_ids)
    used = set(pools.weak["id"]) | set(pools.oracle["id"])
    assert not used & set(weak.train_ids)
    assert len(weak.lookup(pools.weak["id"])) == len(pools.weak)
    with pytest.raises(KeyError, match=f"id '{weak.train_ids[0]}' has no weak label"):
        weak.lookup(weak.train_ids[:1])
    with pytest.raises(ValueError, match="predictions for"):  # a leak cannot be assembled
        L.make_weak_labels("bad", {}, task, weak.train_ids, np.full(len(task.train), 0.5),
                           np.full(len(task.test), 0.5))


def test_labeler_train_split_is_seeded_and_balanced():
    task = make_task()
    a, b = L.labeler_train_split(task, 0, 20), L.labeler_train_split(task, 0, 20)
    assert list(a["id"]) == list(b["id"]) and np.mean(a["label"]) == 0.5
    assert list(L.labeler_train_split(task, 1, 20)["id"]) != list(a["id"])
    with pytest.raises(ValueError, match="cannot give a labeller 500"):
        L.labeler_train_split(task, 0, 500)


def test_noise_labeler_rates():
    task = make_task(400, 100)
    weak = L.NoiseLabeler(0.25).label(task, 0)
    assert weak.metrics["pool_accuracy"] == 0.75 and weak.metrics["test_accuracy"] == 0.75
    assert weak.labeler == "noise(rate=0.25)" and len(weak.train_ids) == 0
    soft = L.NoiseLabeler(0.25, soft=True).label(task, 0)
    assert set(np.unique(soft.soft)) == {np.float32(0.25), np.float32(0.75)}
    where = L.NoiseLabeler(1.0, only_where=r"\bcat\b").label(task, 0)
    wrong = where.lookup(task.train["id"]) != task.train["label"]
    assert np.array_equal(wrong, np.char.find(task.train["text"].astype(str), "cat") >= 0)
    with pytest.raises(ValueError, match="not a lambda"):
        L.NoiseLabeler(0.1, only_where=lambda t: True)


def test_file_labeler():
    weak = L.FileLabeler().label(make_task(weak=True), 0)
    assert weak.metrics["pool_accuracy"] == 1.0
    with pytest.raises(ValueError, match="FileLabeler needs a 'weak_label' column.*'toy'"):
        L.FileLabeler().label(make_task(), 0)


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 50) / 4, rng.integers(0, 2, 50)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert auroc(scores, labels) == pytest.approx(pairs)


def test_cache_records_accuracy_and_is_reused(tmp_path):
    task = make_task()
    labeler = FakeModelLabeler()
    weak = L.cached_weak_labels(labeler, task, 0, tmp_path)
    (meta_path,) = (tmp_path / "weak_labels").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["metrics"]["pool_accuracy"] == 0.5 and "test_auroc" in meta["metrics"]
    assert meta["config"] == labeler.config_dict() and meta["seed"] == 0
    assert not list((tmp_path / "weak_labels").glob("*.tmp"))

    class Exploding(FakeModelLabeler):
        def label(self, task, seed):
            raise AssertionError("should have been read from the cache")

    again = L.cached_weak_labels(Exploding(), task, 0, tmp_path)
    assert list(again.ids) == list(weak.ids) and list(again.train_ids) == list(weak.train_ids)
    assert np.array_equal(again.soft, weak.soft)
    other_seed = L.cached_weak_labels(labeler, task, 1, tmp_path)
    assert list(other_seed.train_ids) != list(weak.train_ids)
    assert [m["seed"] for m in L.cached_metadata(tmp_path, task)] in ([0, 1], [1, 0])
