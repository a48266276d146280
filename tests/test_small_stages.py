"""Small stages that do not undo training (issue 20, item 4), the same on both stage paths.

A stage too small for a validation carve-out, after a stage that had one, is validated on that
carve-out from its first step (learning rate 0), so the state it entered with stays a candidate;
and no stage evaluates before `min_eval_visits` visits, so a handful of validation labels cannot
stop it (or keep a barely trained state) by chance.
"""
import dataclasses

import jax
import numpy as np
import pytest

from scalable_elicitation.batching import BatchSpec, Features, FeatureStats
from reference import val_metric
from scalable_elicitation.groups import Member, run_stage, run_stages_grouped
from scalable_elicitation.sharding import make_mesh
from scalable_elicitation.stage import StageConfig, predict, stage_schedule, steps_for_visits
from scalable_elicitation.train import Steps

BATCH = BatchSpec(32, (1,), 0)


def _data(seed, n, d=16, signal=1.5):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    x = rng.normal(size=(n, d))
    x[:, 0] += (2 * y - 1) * signal
    feats = FeatureStats.of(x).apply(Features(x.astype(np.float32), np.zeros(n, bool)))
    return feats, y.astype(np.float32)


@pytest.fixture(scope="module")
def probe():
    return Steps.for_probe(16, 2, make_mesh({"data": 1}))


def _both_paths(probe, member):
    """The stage trained alone (`run_stage`) and as a group of one (`run_stages_grouped`)."""
    m = member
    alone = run_stage(probe, m.params, m.train, m.targets, m.val, m.val_labels, m.cfg,
                      seed_path=m.seed_path, key=m.key, spec=BATCH, source=m.source)
    grouped = run_stages_grouped(probe, [m], spec=BATCH)[0]
    return alone, grouped


@pytest.fixture(scope="module")
def trained(probe):
    """A first stage of 200 labels with a 40-label carve-out: what a later stage could undo."""
    data, y = _data(0, 200)
    cfg = StageConfig(lr=0.01, max_visits=3000)
    tr, va = np.arange(160), np.arange(160, 200)
    res = run_stage(probe, probe.fresh_params(jax.random.key(0)), data.take(tr), y[tr],
                    data.take(va), y[va], cfg, seed_path=[0, 3], key=jax.random.key(1),
                    spec=BATCH, source="weak")
    return res.params, data.take(va), y[va]


def test_a_tiny_stage_with_borrowed_validation_keeps_what_the_previous_stage_learned(probe,
                                                                                      trained):
    params, val, val_y = trained
    # three labels that contradict the task: 3,000 visits on them alone destroy the probe
    bad_x, bad_y = _data(5, 3)
    bad_y = 1.0 - bad_y
    entry = val_metric(predict(probe, params, val, BATCH), val_y)
    plain = StageConfig(lr=0.01, max_visits=3000, small_stage_visits=3000)
    undone = run_stage(probe, params, bad_x, bad_y, None, None, plain, seed_path=[0, 3, 1],
                       key=jax.random.key(2), spec=BATCH, source="oracle")
    after_plain = val_metric(predict(probe, undone.params, val, BATCH), val_y)
    assert after_plain < entry - 0.05, (entry, after_plain)  # the study's rule undoes it

    borrowed = dataclasses.replace(plain, borrowed_val=True)
    member = Member(params, bad_x, bad_y, val, val_y, borrowed, seed_path=[0, 3, 1],
                    key=jax.random.key(2), source="oracle")
    for result in _both_paths(probe, member):
        kept = val_metric(predict(probe, result.params, val, BATCH), val_y)
        assert kept >= entry - 1e-6, (entry, kept)
        rec = result.record
        # own validation labels only in n_val (the ledger identity); the borrowed set apart
        assert rec["n_val"] == 0 and rec["val_borrowed"] == len(val)
        assert rec["planned_visits"] == 3000 and rec["steps"] < 3000  # early-stopped
        assert rec["best_step"] >= 1 and rec["val_metric"] is not None


def test_a_borrowed_validation_stage_evaluates_from_its_first_step():
    cfg = StageConfig(lr=0.01, small_stage_visits=3000, min_eval_visits=1600, borrowed_val=True)
    plan = stage_schedule(3, 40, cfg, 32)
    assert plan.first_eval == 1 and plan.eval_every == 1 and plan.visits == 3000
    own = stage_schedule(3, 0, dataclasses.replace(cfg, borrowed_val=False), 32)
    assert not own.has_val and own.visits == 3000  # without one: fixed visits, as before


@pytest.mark.parametrize("n_train,n_val", [(26, 6), (8, 2), (36, 9)])
def test_no_evaluation_before_min_eval_visits_on_a_few_validation_labels(n_train, n_val):
    cfg = StageConfig(lr=0.01, max_visits=30000, min_eval_visits=1600)
    plan = stage_schedule(n_train, n_val, cfg, 32)
    first = steps_for_visits(n_train, 1600, 32)
    assert plan.first_eval == first and plan.first_eval < plan.total
    study = stage_schedule(n_train, n_val, dataclasses.replace(cfg, min_eval_visits=0), 32)
    assert study.first_eval == 1  # the study's rule: from the start
    # ten or more validation labels, or a stage that continues: the study's cadence
    for other in (stage_schedule(n_train, 10, cfg, 32),
                  stage_schedule(n_train, n_val, dataclasses.replace(cfg, continues=True), 32)):
        assert other.first_eval == 1


def test_early_stopping_cannot_end_a_stage_on_a_few_validation_labels_by_chance(probe):
    """26 training and 6 validation labels, as the all-oracle run that stopped after 156
    visits: its validation AUROC saturates at once, so the study's rule stops it after five
    evaluations (one step each) and keeps the first; with `min_eval_visits` it trains at least
    1,600 visits and keeps a state from then on, on both paths."""
    data, y = _data(3, 32, signal=3.0)
    tr, va = np.arange(26), np.arange(26, 32)
    study = StageConfig(lr=0.01, max_visits=30000)
    member = Member(probe.fresh_params(jax.random.key(7)), data.take(tr), y[tr], data.take(va),
                    y[va], study, seed_path=[1, 3], key=jax.random.key(8))
    quick, _ = _both_paths(probe, member)
    assert quick.record["visits"] <= 26 * 6, quick.record  # stopped by chance at once

    member = dataclasses.replace(member, cfg=dataclasses.replace(study, min_eval_visits=1600))
    alone, grouped = _both_paths(probe, member)
    first = steps_for_visits(26, 1600, 32)
    for result in (alone, grouped):
        assert result.record["visits"] >= 1600
        assert result.record["best_step"] >= first
    assert alone.record["steps"] == grouped.record["steps"]
    assert alone.record["best_step"] == grouped.record["best_step"]


def test_every_path_trains_the_same_stages(probe, trained):
    """One engine: a weak-style stage with its own carve-out, a borrowed-validation oracle
    stage, a fresh stage on 6 validation labels and a labeller-style stage (20 epochs, no
    validation) give the same records and kept parameters alone (`run_stage`, as the labeller
    and `parallel_runs=1` train) and together in one group (the sweep's groups)."""
    params, val, val_y = trained
    data, y = _data(11, 120)
    small_x, small_y = _data(12, 4)
    fresh = dataclasses.replace(StageConfig(lr=0.01, max_visits=3000), min_eval_visits=1600)
    members = [
        Member(params, data.take(np.arange(96)), y[:96], data.take(np.arange(96, 120)),
               y[96:], StageConfig(lr=0.01, max_visits=3000), seed_path=[2, 3, 0],
               key=jax.random.key(20), source="weak"),
        Member(params, small_x, small_y, val, val_y,
               StageConfig(lr=0.01, small_stage_visits=3000, borrowed_val=True,
                           continues=True), seed_path=[2, 3, 1], key=jax.random.key(21)),
        Member(probe.fresh_params(jax.random.key(22)), data.take(np.arange(26)), y[:26],
               data.take(np.arange(26, 32)), y[26:32], fresh, seed_path=[2, 3, 2],
               key=jax.random.key(23)),
        Member(probe.fresh_params(jax.random.key(24)), data.take(np.arange(16)), y[:16], None,
               None, StageConfig(lr=0.003, epochs=20.0, use_validation=False),
               seed_path=[2, 7], key=jax.random.key(25), source="labeler"),
    ]
    alone = [_both_paths(probe, m)[0] for m in members]
    together = run_stages_grouped(probe, members, spec=BATCH)
    test, _ = _data(99, 200)
    for a, b in zip(alone, together):
        assert a.record.keys() == b.record.keys()
        for k, v in a.record.items():
            if isinstance(v, float):
                np.testing.assert_allclose(v, b.record[k], atol=1e-4, err_msg=k)
            else:
                assert v == b.record[k], k
        np.testing.assert_allclose(predict(probe, a.params, test, BATCH),
                                   predict(probe, b.params, test, BATCH), atol=1e-4)
    assert together[3].record["visits"] == 20 * 16 and together[1].record["val_borrowed"]
