"""Unit tests of the offline analysis: loading, pricing, aggregation, frontiers, regimes, fits."""
import json
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from analysis import pricing, synthetic
from analysis.aggregate import aggregate, build_surfaces, mean_over_tasks
from analysis.fits import fit_monotone, frontier_fit
from analysis.frontier import pareto_mask, pareto_mask_batch, tolerance_mask
from analysis.records import CorruptRecordWarning, load_records, records_from_dicts, variant_name
from analysis.regimes import MIXED, QUALITY, QUANTITY, UNDETERMINED, boundaries, category, classify
from analysis.tables import best_within_budget


def _rec(run_id, seed, acc, n_weak=10, n_oracle=2, status="ok", task="t", method="seq_sft",
         config=None, budget=None, fracs=None, weak=0.1):
    rec = {"run_id": run_id, "status": status, "task": task, "model": "m", "method": method,
           "seed": seed, "weak_labeler": "w", "weak_label_accuracy": 0.7,
           "prices": {"oracle": 1, "weak": weak}, "budget": budget, "oracle_fractions": fracs,
           "n_weak": n_weak, "n_oracle": n_oracle, "metrics": {"accuracy": acc},
           "config": config or {}}
    if status != "ok":
        rec.update(error="boom", n_weak=0, n_oracle=0)
        del rec["metrics"]
    return rec


# ---------------------------------------------------------------- import hygiene


def test_import_does_not_load_jax():
    code = ("import analysis, analysis.report, analysis.recommend, analysis.calibration, sys; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- pricing


def test_reprice_is_exact():
    assert pricing.to_fraction(0.1) == Fraction(1, 10)
    assert pricing.to_fraction("0.3") / pricing.to_fraction(0.1) == 3
    # 0.3 / 0.1 floors to 2 in floats; the grid must buy 3 weak labels for the last 0.3.
    assert pricing.grid_counts(0.3, 0, 1, 0.1) == (3, 0)
    assert pricing.grid_counts(8, 0.05, 1, 0.1) == (80, 0)   # floor(0.4) oracle labels = 0
    assert pricing.grid_counts(64, 0.4, 1, 0.1) == (390, 25)
    assert pricing.cost(3, 0, 1, 0.1) == 0.3
    assert pricing.cost(7, 1, 1, 0.1) == 1.7                  # float sum gives 1.7000000000000002
    assert pricing.affordable([3, 4], [0, 0], 1, 0.1, 0.3).tolist() == [True, False]
    assert pricing.cost(100, 3, 1, 1 / 3) == pytest.approx(100 / 3 + 3)
    with pytest.raises(ValueError, match="oracle fraction"):
        pricing.grid_counts(8, 1.5, 1, 0.1)
    with pytest.raises(ValueError):
        pricing.to_fraction(float("nan"))


# ---------------------------------------------------------------- records


def test_variant_names():
    assert variant_name("seq_sft", {}) == "seq_sft"
    assert variant_name("seq_sft", {"loss": "logconf"}) == "seq_sft+logconf"
    assert variant_name("seq_sft", {"loss": "xent", "oracle_selection": "entropy"}) == \
        "seq_sft+entropy"
    assert variant_name("kshot_sft", {"k": 2.0, "shot_source": "weak"}) == "kshot_sft(k=2,weak)"


def test_load_counts_and_variants(tmp_path):
    recs = [_rec("a", 0, 0.7), _rec("b", 1, 0.8),
            _rec("c", 0, 0.9, method="kshot_sft", config={"method": {"k": 8}}),
            _rec("d", 0, 0.6, config={"train": {"loss": "logconf"}}),
            dict(_rec("h", 0, 0.6, method="icl"), n_shots=8),
            _rec("e", 0, 0, status="infeasible"), _rec("f", 1, 0, status="failed"),
            _rec("g", 2, 0, status="failed")]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    loaded = load_records(tmp_path)
    assert loaded.counts == {"ok": 5, "infeasible": 1, "failed": 2, "skipped": 0, "duplicates": 0}
    assert sorted(loaded.ok["variant"]) == ["icl(k=8,weak)", "kshot_sft(k=8,weak)", "seq_sft", "seq_sft",
                                            "seq_sft+logconf"]
    assert "config.loss" in loaded.ok.columns and "prices.weak" in loaded.ok.columns
    assert set(loaded.excluded["status"]) == {"infeasible", "failed"}


def test_corrupt_input_is_skipped_with_warnings(tmp_path):
    good = tmp_path / "runs" / "good" / "result.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(_rec("a", 0, 0.7)))
    torn = tmp_path / "runs" / "torn" / "result.json"
    torn.parent.mkdir(parents=True)
    torn.write_text(json.dumps(_rec("b", 1, 0.7))[:40])
    missing = _rec("c", 2, 0.7)
    del missing["n_oracle"]
    lines = [json.dumps(_rec("d", 3, 0.7)), json.dumps(missing), json.dumps(_rec("e", 4, 0.7))[:30]]
    (tmp_path / "more.jsonl").write_text("\n".join(lines))
    with pytest.warns(CorruptRecordWarning) as caught:
        loaded = load_records([tmp_path])
    messages = " ".join(str(w.message) for w in caught)
    assert str(torn) in messages
    assert f"{tmp_path / 'more.jsonl'}:2" in messages and "n_oracle" in messages
    assert f"{tmp_path / 'more.jsonl'}:3" in messages
    assert len(loaded.ok) == 2 and loaded.counts["skipped"] == 3


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no readable results records"):
        load_records(tmp_path)
    (tmp_path / "result.json").write_text("{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptRecordWarning)
        with pytest.raises(ValueError, match="1 unreadable"):
            load_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "nope")


# ---------------------------------------------------------------- aggregation


def test_aggregation_hand_computed():
    frame = pd.DataFrame({
        "task": ["a", "a", "a", "a", "b", "b", "b"],
        "model": "m", "variant": "v", "weak_labeler": "w",
        "n_weak": [10, 10, 10, 0, 10, 10, 0], "n_oracle": [0, 0, 0, 5, 0, 0, 5],
        "seed": [0, 1, 2, 0, 0, 1, 0],
        "metrics.accuracy": [0.6, 0.7, 0.8, 0.9, 0.5, 0.7, 0.8],
    })
    cells = aggregate(frame)
    a10 = cells[(cells["task"] == "a") & (cells["n_weak"] == 10)].iloc[0]
    assert a10["accuracy"] == pytest.approx(0.7)
    assert a10["accuracy_std"] == pytest.approx(0.1)  # sample std of 0.6, 0.7, 0.8
    assert a10["n_seeds"] == 3
    assert np.isnan(cells[(cells["task"] == "a") & (cells["n_oracle"] == 5)]["accuracy_std"].iloc[0])
    # A cell only task "a" has is left out of the task average.
    frame2 = pd.concat([frame, frame.iloc[[0]].assign(n_weak=99)], ignore_index=True)
    with pytest.warns(UserWarning, match="missing for some of tasks"):
        avg = mean_over_tasks(aggregate(frame2))
    assert sorted(zip(avg["n_weak"], avg["n_oracle"])) == [(0, 5), (10, 0)]
    w = avg[avg["n_weak"] == 10].iloc[0]
    assert w["accuracy"] == pytest.approx((0.7 + 0.6) / 2)
    assert w["n_seeds"] == 2 and w["tasks"] == "a+b"


# ---------------------------------------------------------------- frontiers


def test_pareto_ties_and_equal_costs():
    cost = [1, 1, 2, 2, 3, 4, 4]
    acc = [0.6, 0.6, 0.7, 0.65, 0.7, 0.8, 0.8]
    keep = pareto_mask(cost, acc)
    # equal cost+accuracy: both kept; equal cost lower acc: dropped; costlier equal acc: kept
    # (docs/design.md#frontier: dominated only by a strictly more accurate cheaper-or-equal point).
    assert keep.tolist() == [True, True, True, False, True, True, True]
    strict = pareto_mask(cost, acc, strict=True)
    assert strict.tolist() == [True, True, True, False, False, True, True]
    boot = np.stack([acc, acc], axis=1)
    assert (pareto_mask_batch(cost, boot)[:, 0] == keep).all()


def test_tolerance_frontier_edges():
    # beats the best kept by exactly 0.002 -> not kept; by 0.0021 -> kept
    assert tolerance_mask([1, 2, 3], [0.700, 0.702, 0.7041]).tolist() == [True, False, True]
    # a point within 5% relative cost that is at least as accurate knocks out the cheaper one
    assert tolerance_mask([100, 104], [0.70, 0.75]).tolist() == [False, True]
    # ...but not at 6%
    assert tolerance_mask([100, 106], [0.70, 0.75]).tolist() == [True, True]
    # an exact tie in accuracy within the window keeps the cheaper one only
    assert tolerance_mask([100, 103], [0.75, 0.75]).tolist() == [True, False]
    # equal costs, equal accuracies: the first in input order is kept
    assert tolerance_mask([5, 5], [0.8, 0.8]).tolist() == [True, False]
    # equal costs, different accuracies: the more accurate one
    assert tolerance_mask([5, 5], [0.7, 0.8]).tolist() == [False, True]


# ---------------------------------------------------------------- regimes


def test_category_and_classify():
    assert category(10, 0) == QUANTITY and category(0, 3) == QUALITY
    assert category(1, 1) == MIXED and category(0, 0) is None
    rng = np.random.default_rng(0)
    acc = np.array([0.80, 0.70, 0.71])
    boot = acc[:, None] + rng.normal(0, 0.003, (3, 200))
    cats = [QUANTITY, MIXED, QUALITY]
    cl = classify(acc, boot, cats)
    # p >= 1 / (1 + n_boot): the most confidence 200 resamples can give
    assert cl.regime == QUANTITY and cl.confidence == pytest.approx(1 - 1 / 201)
    assert cl.margin == pytest.approx(0.09)
    # six noisy equal "mixed" cells against two endpoints: not enough to call it
    acc = np.full(8, 0.7)
    boot = acc[:, None] + rng.normal(0, 0.01, (8, 400))
    cats = [QUANTITY] + [MIXED] * 6 + [QUALITY]
    assert classify(acc + [0, 0.001, 0, 0, 0, 0, 0, 0], boot, cats).regime == UNDETERMINED


def test_boundaries():
    regimes = pd.DataFrame({"model": "m", "weak_labeler": "w", "weak_price": 0.1, "method": "all",
                            "budget": [8, 16, 64, 256, 1024],
                            "regime": [QUANTITY, QUANTITY, UNDETERMINED, MIXED, QUALITY]})
    b = boundaries(regimes)
    assert list(zip(b["from_regime"], b["to_regime"], b["budget_below"], b["budget_above"])) == \
        [(QUANTITY, MIXED, 16, 256), (MIXED, QUALITY, 256, 1024)]


# ---------------------------------------------------------------- fits


def test_monotone_fit_is_increasing():
    x = np.log([8, 16, 64, 256, 1024, 4096])
    y = np.array([0.60, 0.66, 0.72, 0.80, 0.90, 0.93])
    grid = np.linspace(x.min(), x.max(), 50)
    pred = fit_monotone(x, y)(grid)
    assert np.all(np.diff(pred) >= -1e-9)
    assert np.max(np.abs(fit_monotone(x, y)(x) - y)) < 0.03
    few = fit_monotone(x[:2], y[:2])(grid)          # isotonic fallback
    assert np.all(np.diff(few) >= 0)


def test_frontier_fit_band_covers_truth():
    rng = np.random.default_rng(1)
    cost = np.array([8, 16, 64, 256, 1024, 4096, 20, 300], dtype=float)
    truth = 0.5 + 0.45 / (1 + np.exp(-(np.log(cost) - 5) / 1.2))
    truth[6:] -= 0.05                                   # dominated points
    boot = truth[:, None] + rng.normal(0, 0.004, (8, 60))
    fit = frontier_fit(cost, truth, boot, max_boot=60)
    assert np.all(fit.lo <= fit.fit + 1e-9) and np.all(fit.fit <= fit.hi + 1e-9)
    assert fit.x.min() == pytest.approx(8) and fit.x.max() == pytest.approx(4096)


# ---------------------------------------------------------------- synthetic truth


@pytest.fixture(scope="module")
def synthetic_surface():
    recs = synthetic.make_records(variants=("seq_sft", "seq_sft+logconf"), seed=3)
    (surface,) = build_surfaces(records_from_dicts(recs).ok, n_boot=200, seed=0)
    return surface


def test_frontier_matches_noise_free_truth():
    recs = synthetic.make_records(variants=("seq_sft", "seq_sft+logconf"), noise=0.0)
    (surface,) = build_surfaces(records_from_dicts(recs).ok, n_boot=5)
    cells = surface.cells
    cost = pricing.costs(cells["n_weak"], cells["n_oracle"], 1, 0.1)
    got = set(zip(cells["variant"][pareto_mask(cost, cells["accuracy"])],
                  cells["n_weak"][pareto_mask(cost, cells["accuracy"])],
                  cells["n_oracle"][pareto_mask(cost, cells["accuracy"])]))
    # brute force on the true surface: nothing cheaper-or-equal is strictly more accurate
    truth = set()
    pts = [(v, w, o, pricing.cost(w, o, 1, 0.1), float(synthetic.true_accuracy(w, o, v)))
           for v, w, o in zip(cells["variant"], cells["n_weak"], cells["n_oracle"])]
    for v, w, o, c, a in pts:
        if not any(c2 <= c and a2 > a for _, _, _, c2, a2 in pts):
            truth.add((v, w, o))
    assert got == truth
    assert all(v == "seq_sft" for v, _, _ in got)     # logconf is 0.015 worse everywhere


def test_best_within_budget_matches_truth(synthetic_surface):
    table = best_within_budget(synthetic_surface, [0.1], synthetic.BUDGETS)
    seq = table[table["method"] == "seq_sft"].set_index("budget")
    for budget in synthetic.BUDGETS:
        w, o, acc = synthetic.true_best(budget)
        assert (seq.at[float(budget), "n_weak"], seq.at[float(budget), "n_oracle"]) == (w, o)
        assert seq.at[float(budget), "accuracy"] == pytest.approx(acc, abs=0.01)
    assert table.loc[table["budget"] == 8, "weak_fraction"].iloc[0] == 1.0
    assert (table.loc[table["method"] == "all", "variant"] == "seq_sft").all()
