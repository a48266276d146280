"""Batching: the one batched-inference loop and the atomic write."""
import jax.numpy as jnp
import numpy as np
import pytest

from scalable_elicitation import paths, records
from scalable_elicitation.batching import BatchSpec, Encoded, Features, batched_apply
from scalable_elicitation.sharding import make_mesh


def test_batched_apply_returns_rows_in_input_order_over_length_buckets():
    lengths = [5, 1, 12, 3, 8, 2, 7]
    enc = Encoded([np.arange(1, n + 1, dtype=np.int32) for n in lengths],
                  np.zeros(len(lengths), bool))
    spec = BatchSpec(batch_size=4, buckets=(4, 8, 16), pad_id=0)
    seen = []

    def row_sums(batch):  # [B] sum of each row's real tokens; records the bucket it came in
        seen.append(batch["input_ids"].shape[1])
        return jnp.sum(batch["input_ids"] * batch["attention_mask"], axis=1)

    got = batched_apply(row_sums, enc, spec, make_mesh({"data": 1}))
    assert got.tolist() == [n * (n + 1) / 2 for n in lengths]
    assert seen == [8, 16]  # sorted by length: the short batch uses the short bucket

    feats = Features(np.arange(12, dtype=np.float32).reshape(6, 2), np.zeros(6, bool))
    out = batched_apply(lambda b: b["features"] * 2, feats, spec, make_mesh({"data": 1}),
                        tail=(2,))
    np.testing.assert_array_equal(out, feats.features * 2)
    empty = batched_apply(row_sums, enc.take([]), spec, make_mesh({"data": 1}), tail=())
    assert empty.shape == (0,)


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "result.json"
    paths.atomic_write(target, "first")
    records.atomic_write_json(target, {"n": np.int64(3), "p": 0.5})
    assert records.read_record(target) == {"n": 3, "p": 0.5}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]

    def crash(src, dst):  # a crash between writing the temporary file and the rename
        raise RuntimeError("killed")

    monkeypatch.setattr(paths.os, "replace", crash)
    with pytest.raises(RuntimeError, match="killed"):
        paths.atomic_write(target, "torn")
    assert records.read_record(target) == {"n": 3, "p": 0.5}  # the old record survives
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_flatten_nests_keys_and_keeps_fractions_exact():
    from fractions import Fraction
    flat = records.flatten({"a": {"b": 1, "c": {"d": Fraction(1, 10)}}, "e": [Fraction(1, 3), 2]})
    assert flat == {"a.b": 1, "a.c.d": "1/10", "e": ["1/3", 2]}
