"""A group of stages trained together gives each member what it gets alone
(docs/design.md#many-runs-at-once)."""
import functools

import jax
import numpy as np
import pytest

from scalable_elicitation.batching import BatchSpec, Features, FeatureStats
from reference import val_metric
from scalable_elicitation.groups import (Member, device_val_metric, run_stage,
                                         run_stages_grouped)
from scalable_elicitation.sharding import make_mesh
from scalable_elicitation.stage import StageConfig, batch_order, predict
from scalable_elicitation.train import Steps


def _task(seed, n, d=32):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    x = rng.normal(size=(n, d)) + rng.normal(size=d) * 3
    x[:, :3] += (2 * y[:, None] - 1) * 0.8
    feats = FeatureStats.of(x).apply(Features(x.astype(np.float32), np.zeros(n, bool)))
    return feats, y.astype(np.float32)


def _members(sizes):
    """Stages of several sizes: tiny ones without validation (fixed visits), larger ones
    early-stopped on a carve-out, different seeds and schedules."""
    out = []
    for i, n in enumerate(sizes):
        data, y = _task(i, n)
        cfg = StageConfig(lr=0.01 * (1 + i % 3), max_visits=2000, small_stage_visits=300)
        if n >= 10:
            n_val = max(2, n // 5)
            tr, va = np.arange(n - n_val), np.arange(n - n_val, n)
            out.append(Member(None, data.take(tr), y[tr], data.take(va), y[va], cfg,
                              seed_path=[i, 3], key=jax.random.key(i)))
        else:
            out.append(Member(None, data, y, None, None, cfg, seed_path=[i, 3],
                              key=jax.random.key(i)))
    return out


@pytest.fixture(scope="module")
def probe():
    return Steps.for_probe(32, 2, make_mesh({"data": 1}))


def test_group_equals_one_at_a_time(probe):
    spec = BatchSpec(32, (1,), 0)
    members = _members([8, 40, 130, 6, 75])
    for g, m in enumerate(members):
        m.params = probe.fresh_params(jax.random.key(100 + g))
    alone = [run_stage(probe, m.params, m.train, m.targets, m.val, m.val_labels, m.cfg,
                       seed_path=m.seed_path, key=m.key, spec=spec, source=m.source)
             for m in members]
    together = run_stages_grouped(probe, members, spec=spec)
    test, _ = _task(99, 200)
    for a, b in zip(alone, together):
        assert_same_record(a.record, b.record)
        np.testing.assert_allclose(predict(probe, a.params, test, spec),
                                   predict(probe, b.params, test, spec), atol=1e-4, rtol=1e-4)
    # members of different lengths really did finish at different steps
    assert len({r.record["steps"] for r in together}) > 2


def assert_same_record(a, b):
    """Stage records equal: counts exactly, metrics and losses within 1e-4."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) or isinstance(b[k], float):
            np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)
        else:
            assert a[k] == b[k], k


def test_device_val_metric_matches_host():
    """AUROC by ranks on the device equals the host's Mann-Whitney, ties included, over padded
    rows; one class falls back to accuracy."""
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(2, 60))
        scores = np.round(rng.normal(size=n), 1 if trial % 2 else 4).astype(np.float32)
        labels = rng.uniform(size=n).astype(np.float32)
        if trial % 7 == 0:
            labels = np.full(n, 0.9, np.float32)  # one class: accuracy
        pad = 64 - n
        got = device_val_metric(np.r_[scores, rng.normal(size=pad).astype(np.float32)],
                                np.r_[labels, rng.uniform(size=pad).astype(np.float32)],
                                np.arange(64) < n)
        np.testing.assert_allclose(float(got), val_metric(scores, labels), atol=1e-6)


def test_batch_order_epochs_are_permutations_and_a_pure_function():
    for n, total, bs in [(8, 375, 32), (70, 40, 32), (64, 9, 32), (5, 3, 2), (1, 30, 32)]:
        idx, real = batch_order(n, total, bs, [3, 1])
        assert idx.shape == real.shape == (total, bs)
        per_epoch = -(-n // bs)
        for start in range(0, total - per_epoch + 1, per_epoch):  # every whole epoch
            seen = np.concatenate([idx[t][real[t]] for t in range(start, start + per_epoch)])
            np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        again, _ = batch_order(n, total, bs, [3, 1])
        np.testing.assert_array_equal(idx, again)
        if n > 2 and total // per_epoch >= 2:  # epochs are reshuffled, and seeds differ
            assert not np.array_equal(idx[:per_epoch], idx[per_epoch:2 * per_epoch])
            assert not np.array_equal(idx, batch_order(n, total, bs, [4, 1])[0])


def test_one_loss_kind_per_group(probe):
    members = _members([8, 8])
    members[1].cfg = StageConfig(lr=0.01, loss="logconf")
    with pytest.raises(ValueError, match="one loss kind, batch size"):
        run_stages_grouped(probe, members, spec=BatchSpec(32, (1,), 0))


def test_auto_group_size_follows_memory_and_the_platform_rule(monkeypatch):
    """The default group size: probes group on CPU (capped by the measured rule), finetuned
    transformers go one at a time there; a memory budget smaller than one run still gives 1,
    and more memory never gives a smaller group."""
    from scalable_elicitation import grouping, groups
    from scalable_elicitation.learner import Learner, LearnerConfig
    from scalable_elicitation.runner import auto_group_size
    probe = Learner(LearnerConfig("tiny:llama", trainable="head", max_length=32, buckets=(32,),
                                  mesh=(("data", 1),)))
    lora = Learner(LearnerConfig("tiny:llama", trainable="lora", max_length=32, buckets=(32,),
                                 mesh=(("data", 1),)))
    assert jax.local_devices()[0].platform == "cpu"
    assert auto_group_size(probe, 256, 75) == grouping.MAX_AUTO_GROUP[("cpu", True)] > 1
    assert auto_group_size(probe, 256, 3) == 3  # never more than the runs
    assert auto_group_size(lora, 256, 75) == grouping.MAX_AUTO_GROUP[("cpu", False)] == 1
    sizes = [auto_group_size(probe, 256, 75, memory_share=s, cap=64)
             for s in (1e-12, 1e-6, 1e-4, 0.5)]
    assert sizes[0] == 1 and sizes == sorted(sizes) and sizes[-1] == 64
    # whole runs spread over a CPU's 8 fake devices: one host RAM, no bigger group
    size = functools.partial(auto_group_size, probe, 256, 10**6, cap=10**6)
    assert size(memory_share=1e-3, devices=8) == size(memory_share=1e-3) >= 2

    class Accelerator:  # a device with its own memory, as a GPU reports it
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 2**30, "bytes_in_use": 2**28}

    monkeypatch.setattr(groups.jax, "local_devices", lambda: [Accelerator()])
    one = size(memory_share=1e-2)  # whole runs spread over 8 such devices: 8 devices' memory
    eight = size(memory_share=1e-2, devices=8)
    assert one >= 2 and 8 * one <= eight < 8 * (one + 1)


@pytest.mark.parametrize("mode", ["runs", "rows"])
def test_group_on_eight_devices_equals_one_at_a_time(mode, group_loop_spy):
    """On 8 devices a group puts whole runs on devices (9 members padded to 16: two per
    device), and each member equals the run alone on one device; or it splits each member's
    batch rows over the devices (no padding member), and each member equals the run alone on
    the 8 devices."""
    steps = Steps.for_probe(32, 2, make_mesh({"data": 8}))
    lone = Steps.for_probe(32, 2, make_mesh({"data": 1 if mode == "runs" else 8}))
    spec = BatchSpec(32, (1,), 0)
    members = _members([8, 40, 130, 6, 75, 20, 12, 50, 9])
    for g, m in enumerate(members):
        m.params = steps.fresh_params(jax.random.key(100 + g))
    alone = [run_stage(lone, lone.fresh_params(jax.random.key(100 + g)), m.train, m.targets,
                       m.val, m.val_labels, m.cfg, seed_path=m.seed_path, key=m.key, spec=spec,
                       source=m.source)
             for g, m in enumerate(members)]
    group_loop_spy.clear()  # the runs alone were groups of one: spy on the group only
    together = run_stages_grouped(steps, members, spec=spec, group_sharding=mode)
    test, _ = _task(99, 200)
    for a, b in zip(alone, together):
        assert_same_record(a.record, b.record)
        np.testing.assert_allclose(predict(lone, a.params, test, spec),
                                   predict(steps, b.params, test, spec), atol=1e-5, rtol=1e-5)
    assert group_loop_spy, "the group loop never ran"
    # the head kernel [members, 32, 2], in and out of each call: 16 members with whole runs
    # on devices (two per device), the 9 themselves with rows split (every member everywhere)
    members_in_loop = 16 if mode == "runs" else 9
    for call in group_loop_spy:
        for params in call:
            shard = params["head"]["kernel"].shard_shape((members_in_loop, 32, 2))
            assert shard == ((2, 32, 2) if mode == "runs" else (9, 32, 2)), (mode, params)


def test_runs_on_devices_pad_a_small_group_to_every_device():
    """3 runs on 8 devices: the group is padded to 8 members, one per device, and the 3 real
    ones equal the runs alone on one device."""
    steps = Steps.for_probe(32, 2, make_mesh({"data": 8}))
    lone = Steps.for_probe(32, 2, make_mesh({"data": 1}))
    spec = BatchSpec(32, (1,), 0)
    members = _members([40, 6, 75])
    for g, m in enumerate(members):
        m.params = steps.fresh_params(jax.random.key(200 + g))
    together = run_stages_grouped(steps, members, spec=spec, group_sharding="runs")
    test, _ = _task(98, 100)
    for g, (m, b) in enumerate(zip(members, together)):
        a = run_stage(lone, lone.fresh_params(jax.random.key(200 + g)), m.train, m.targets,
                      m.val, m.val_labels, m.cfg, seed_path=m.seed_path, key=m.key, spec=spec,
                      source=m.source)
        assert_same_record(a.record, b.record)
        np.testing.assert_allclose(predict(lone, a.params, test, spec),
                                   predict(steps, b.params, test, spec), atol=1e-5, rtol=1e-5)


def test_run_mesh_axis_rule():
    """Whole runs go on the data axis only when asked and the model is not split; asking for
    it with a split model, or an unknown mode, fails clearly."""
    from scalable_elicitation.groups import run_mesh_axis
    data8, split = make_mesh({"data": 8}), make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert run_mesh_axis(data8, "runs") == "data"
    assert run_mesh_axis(data8) is run_mesh_axis(data8, "rows") is None
    assert run_mesh_axis(make_mesh({"data": 1}), "runs") is None
    assert run_mesh_axis(split) is None
    with pytest.raises(ValueError, match="fit one device.*fsdp"):
        run_mesh_axis(split, "runs")
    with pytest.raises(ValueError, match="group_sharding='both'; allowed: auto, rows, runs"):
        run_mesh_axis(data8, "both")


def test_auto_places_whole_runs_when_they_fill_the_devices():
    """"auto": whole runs on devices for a group with a member per device and a model on
    each device; rows split otherwise."""
    from scalable_elicitation.groups import run_mesh_axis
    data8, split = make_mesh({"data": 8}), make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert run_mesh_axis(data8, "auto", 8) == run_mesh_axis(data8, "auto", 13) == "data"
    assert run_mesh_axis(data8, "auto", 7) is None  # one device would hold padding only
    assert run_mesh_axis(split, "auto", 64) is None  # the model is split over devices
    assert run_mesh_axis(make_mesh({"data": 1}), "auto", 8) is None


def _loop_sizes(monkeypatch):
    """The number of members (padding included) of each call of the group loop, and where
    its stacked head kernel's first shard lies: a list of (members, shard shape)."""
    from scalable_elicitation import groups
    seen, real = [], groups.group_loop

    def spy(*args):
        loop = real(*args)

        def call(carry, *rest):
            kernel = carry["state"].params["head"]["kernel"]
            seen.append((kernel.shape[0], kernel.addressable_shards[0].data.shape))
            return loop(carry, *rest)
        return call

    monkeypatch.setattr(groups, "group_loop", spy)
    return seen


@pytest.mark.parametrize("mode, expected", [
    ("rows", (5, (5, 32, 2))),    # every member on every device: no padding member at all
    ("runs", (8, (1, 32, 2))),    # one run per device: padded to the 8 devices, no further
    ("auto", (5, (5, 32, 2))),    # fewer runs than devices: rows
])
def test_a_group_has_no_padding_member_the_mesh_does_not_need(mode, expected, monkeypatch):
    steps = Steps.for_probe(32, 2, make_mesh({"data": 8}))
    members = _members([40, 6, 75, 20, 12])
    for g, m in enumerate(members):
        m.params = steps.fresh_params(jax.random.key(300 + g))
    sizes = _loop_sizes(monkeypatch)
    run_stages_grouped(steps, members, spec=BatchSpec(32, (1,), 0), group_sharding=mode)
    assert sizes and set(sizes) == {expected}


def test_only_due_members_are_scored(probe):
    """A member that evaluates every step does not make the group score the others: each
    member's validation passes (`StageResult.evaluations`) are its own due evaluations, as
    when it trains alone, and far fewer than the steps at which some member was due."""
    from scalable_elicitation.stage import stage_schedule
    spec = BatchSpec(32, (1,), 0)
    members = []
    for i, (n, every) in enumerate([(40, 1), (2000, 50)]):
        data, y = _task(10 + i, n)
        n_val = n // 5
        tr, va = np.arange(n - n_val), np.arange(n - n_val, n)
        cfg = StageConfig(lr=0.01, max_visits=6000, eval_every=every, patience=10**6)
        members.append(Member(probe.fresh_params(jax.random.key(i)), data.take(tr), y[tr],
                              data.take(va), y[va], cfg, seed_path=[i], key=jax.random.key(i)))
    together = run_stages_grouped(probe, members, spec=spec)
    due_steps = []
    for m, r in zip(members, together):
        plan = stage_schedule(len(m.train), len(m.val), m.cfg, 32)
        steps = np.arange(1, r.record["steps"] + 1)
        due = ((steps % plan.eval_every == 0) & (steps >= plan.first_eval)) | \
            (steps >= plan.total)
        due_steps.append(set(steps[due]))
        assert r.evaluations == due.sum()
        alone = run_stage(probe, m.params, m.train, m.targets, m.val, m.val_labels, m.cfg,
                          seed_path=m.seed_path, key=m.key, spec=spec, source=m.source)
        assert alone.evaluations == r.evaluations
    frequent, rare = together
    assert frequent.evaluations >= 100 and rare.evaluations <= 5
    # under "score everyone when anyone is due", the rare member would have been scored at
    # every step the frequent one was
    assert rare.evaluations < len(due_steps[0] | due_steps[1]) / 10
