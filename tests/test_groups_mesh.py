"""A group of finetuning runs on a sharded mesh (docs/design.md#many-runs-at-once): the stacked LoRA
states keep the mesh's (data, fsdp, tensor) shardings behind the run axis, or whole runs go on
devices; each member gets what the run gets alone."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from scalable_elicitation.groups import Member, run_stage, run_stages_grouped
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.stage import StageConfig, predict

SPLIT = (("data", 2), ("fsdp", 2), ("tensor", 2))


def _learner(mesh):
    return Learner(LearnerConfig("tiny:llama", trainable="lora", max_length=32, buckets=(32,),
                                 batch_size=8, mesh=mesh))


def _members(learner, sizes):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull"]
    out = []
    for i, n in enumerate(sizes):
        texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 9)))) for _ in range(n)]
        y = rng.integers(0, 2, size=n).astype(np.float32)
        data = learner.data(None, texts)
        n_val = max(2, n // 5)
        tr, va = np.arange(n - n_val), np.arange(n - n_val, n)
        cfg = StageConfig(lr=3e-3 * (1 + i), max_visits=48 * (1 + i), eval_every=2,
                          patience=3 if i else 1)
        out.append(Member(None, data.take(tr), y[tr], data.take(va), y[va], cfg,
                          seed_path=[i, 5], key=jax.random.key(i)))
    return out


@pytest.mark.parametrize("mesh, mode, lone_mesh", [
    (SPLIT, "rows", SPLIT),                  # LoRA and batches sharded as one run's are
    ((("data", 4),), "runs", (("data", 1),)),  # whole runs on devices: as alone on one
])
def test_lora_group_on_a_mesh_equals_one_at_a_time(mesh, mode, lone_mesh, group_loop_spy):
    learner = _learner(mesh)
    lone = learner if lone_mesh == mesh else _learner(lone_mesh)
    members = _members(learner, [14, 30, 22])
    spec = learner.spec
    alone = []
    for g, m in enumerate(members):
        m.params = learner.steps.fresh_params(jax.random.key(50 + g))
        alone.append(run_stage(lone.steps, lone.steps.fresh_params(jax.random.key(50 + g)),
                               m.train, m.targets, m.val, m.val_labels, m.cfg,
                               seed_path=m.seed_path, key=m.key, spec=spec, source=m.source))
    group_loop_spy.clear()  # the runs alone were groups of one: spy on the group only
    together = run_stages_grouped(learner.steps, members, spec=spec, group_sharding=mode)
    test = _members(learner, [16])[0].train
    for a, b in zip(alone, together):
        for k in a.record:
            if isinstance(a.record[k], float):
                np.testing.assert_allclose(a.record[k], b.record[k], atol=1e-4, err_msg=k)
            else:
                assert a.record[k] == b.record[k], k
        np.testing.assert_allclose(predict(lone.steps, a.params, test, spec),
                                   predict(learner.steps, b.params, test, spec), atol=1e-4)
    assert len({r.record["steps"] for r in together}) > 1, "members should stop apart"
    # the group's stacked LoRA factors keep each parameter's own (fsdp, tensor) sharding behind
    # the run axis (rows), or put the run axis over the data devices (runs: 3 members padded
    # to 4, one per device)
    own = jax.tree.leaves(learner.steps.params_sharding)
    assert group_loop_spy, "the group loop never ran"
    for call in group_loop_spy:  # in and out of every call
        for params in call:
            leaves = jax.tree.leaves(params)
            assert len(leaves) == len(own)
            for got, s in zip(leaves, own):
                want = P(None, *s.spec) if mode == "rows" else P("data", *s.spec)
                ndim = max(len(got.spec), len(want))
                assert got.is_equivalent_to(NamedSharding(s.mesh, want), ndim), (got, want)
    if mode == "rows":  # the mesh really splits some LoRA factor
        assert any(any(a is not None for a in s.spec) for s in own)
