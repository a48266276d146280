"""The report says only what is true (issue 20, item 3): each sentence, table column and figure
that was wrong on the default sweep, checked on synthetic records where the truth is known."""
import matplotlib.axes
import numpy as np
import pandas as pd
import pytest

from analysis import figures, report, synthetic
from analysis.aggregate import build_surfaces
from analysis.fits import fraction_fit, frontier_fit, percentile_band
from analysis.records import records_from_dicts
from analysis.regimes import CONFIDENCE_MEANING, UNDETERMINED, boundaries, regime_table
from analysis.tables import best_within_budget

BUDGETS = (8, 32, 128)
FRACTIONS = (0, 0.2, 0.5, 0.8, 1)


def _surface(variants=("seq_sft",), truth=None, noise=0.01, n_seeds=3, seed=0, n_boot=200,
             **extra):
    truth = truth or (lambda w, o, v: synthetic.true_accuracy(w, o, v))
    recs = synthetic.grid_records(truth, BUDGETS, FRACTIONS, variants=variants, noise=noise,
                                  n_seeds=n_seeds, seed=seed, binomial=True)
    for r in recs:
        r.update(extra)
    loaded = records_from_dicts(recs)
    (s,) = build_surfaces(loaded.ok, n_boot=n_boot, seed=0, excluded=loaded.excluded)
    return loaded, s


def _paragraph(surface) -> str:
    regimes = regime_table(surface)
    bwb = best_within_budget(surface, [0.1], BUDGETS)
    return report.recommendation_paragraph(regimes, boundaries(regimes), bwb)


def test_no_best_method_claim_when_one_method_was_run():
    _, one = _surface()
    assert "best method" not in _paragraph(one) and "methods compared" not in _paragraph(one)
    _, two = _surface(variants=("seq_sft", "seq_sft+logconf"))
    assert "of the 2 methods compared in" in _paragraph(two)


def test_undetermined_budget_does_not_call_every_close_configuration_a_good_buy():
    regimes = pd.DataFrame({
        "model": "m", "weak_labeler": "w", "tasks": "t", "weak_price": 0.1, "oracle_price": 1.0,
        "method": "all", "budget": [8.0, 32.0], "regime": UNDETERMINED, "category": "mixed",
        "confidence": 0.5, "margin": 0.01, "compared_categories": "quantity-dominant;mixed",
        "infeasible_categories": "", "failed_categories": "", "best_oracle_fraction": 0.5})
    bwb = pd.DataFrame(columns=["model", "weak_labeler", "method", "variant"])
    text = report.recommendation_paragraph(regimes, boundaries(regimes), bwb)
    assert "reasonable buy" not in text
    assert "decisions.csv" in text and "ruled out" in text


def test_confidence_is_described_as_a_p_value_not_a_probability_of_being_best():
    assert "p-value" in CONFIDENCE_MEANING
    assert "not a 90% probability" in CONFIDENCE_MEANING


def test_selection_bias_is_positive_on_a_surface_of_equal_cells():
    # every configuration equally accurate: the best of several noisy means is biased up
    _, s = _surface(truth=lambda w, o, v: 0.7 + 0 * np.asarray(w, dtype=float), noise=0.02)
    table = best_within_budget(s, [0.1], BUDGETS)
    assert "selection_bias" in table.columns and "n_candidates" in table.columns
    several = table[table["n_candidates"] >= 2]
    assert len(several) and (several["selection_bias"] > 0).all(), several
    # and it grows with the number of configurations picked among
    assert several.sort_values("n_candidates")["selection_bias"].iloc[-1] > \
        several.sort_values("n_candidates")["selection_bias"].iloc[0]
    sentence = report.best_method_sentences(table)[-1]
    assert sentence.startswith("Picking the best of") and "accuracy points" in sentence


def test_fraction_curve_passes_within_every_measured_band():
    # the default sweep's budget 32: a dip at fraction 0.2 (a tiny oracle stage after a weak
    # one), which a smoothing spline chosen by cross-validation smoothed away by 0.04-0.06
    f = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    acc = np.array([0.708, 0.616, 0.700, 0.725, 0.735, 0.745])
    rng = np.random.default_rng(0)
    boot = acc[:, None] + rng.normal(0, 0.006, (6, 300))
    cf = fraction_fit(f, acc, boot)
    lo, hi = percentile_band(boot.T, 0.9)
    at = np.searchsorted(cf.x, f)
    assert np.allclose(cf.x[at], f)
    assert np.all(cf.fit[at] >= lo) and np.all(cf.fit[at] <= hi), (cf.fit[at], acc)
    assert np.all(cf.lo <= cf.fit + 1e-12) and np.all(cf.fit <= cf.hi + 1e-12)


def test_figures_draw_the_weak_labels_test_accuracy(tmp_path, monkeypatch):
    # pool accuracy 0.72 (synthetic default) differs from the test accuracy 0.70
    loaded, s = _surface(weak_label_test_accuracy=0.70)
    drawn = []
    original = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        drawn.append((y, kwargs.get("label")))
        return original(self, y, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    report.write_report(loaded, tmp_path, n_boot=30, fit_boot=5)
    assert drawn and all(y == pytest.approx(0.70) for y, _ in drawn), drawn
    assert all("test accuracy" in label for _, label in drawn)
    assert figures.weak_test_accuracy(loaded.ok, s) == pytest.approx(0.70)


def test_frontier_band_stays_within_the_measured_bands():
    # the default sweep at cost 256: a tight all-oracle cell on top and three noisier mixes just
    # below it; re-selecting the maximum in every resample (and a logistic overshooting the last
    # point) put the band above every run
    rng = np.random.default_rng(0)
    cost = np.array([8, 32, 64, 128, 256, 256, 256, 256], dtype=float)
    acc = np.array([0.666, 0.747, 0.770, 0.791, 0.799, 0.785, 0.780, 0.775])
    sd = np.array([0.03, 0.012, 0.012, 0.012, 0.01, 0.035, 0.035, 0.035])
    boot = acc[:, None] + sd[:, None] * rng.normal(size=(8, 400))
    fit = frontier_fit(cost, acc, boot)
    lo, hi = percentile_band(boot.T, 0.9)
    assert fit.x[-1] == pytest.approx(256)
    assert fit.hi[-1] <= hi.max() + 1e-9 and fit.lo[-1] >= lo.min() - 1e-9, (fit.lo[-1], fit.hi[-1])
    # through every frontier point, inside its band
    for c, a, l, h in zip(cost[:5], acc[:5], lo[:5], hi[:5]):
        at = np.argmin(np.abs(fit.x - c))
        assert fit.fit[at] == pytest.approx(a) and l <= fit.fit[at] <= h
