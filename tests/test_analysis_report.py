"""Acceptance tests of the analysis on synthetic records from a known surface, and its CLIs."""
import json
import subprocess
import sys
import warnings

import pandas as pd
import pytest

from analysis import pricing, report, synthetic
from analysis import recommend as rec_mod
from analysis.aggregate import build_surfaces
from analysis.records import CorruptRecordWarning, records_from_dicts
from analysis.regimes import category, regime_table

VARIANTS = ("seq_sft", "kshot_sft(k=2,weak)")


def _true_regime(budget, variants):
    """Category of the noise-free best grid point of ``budget`` over ``variants``, that point, and
    its accuracy gap to the runner-up."""
    pts = {(v, *pricing.grid_counts(budget, f, 1, 0.1)) for v in variants
           for f in synthetic.FRACTIONS}
    ranked = sorted(pts, key=lambda p: -float(synthetic.true_accuracy(p[1], p[2], p[0])))
    v, w, o = ranked[0]
    gap = float(synthetic.true_accuracy(w, o, v) - synthetic.true_accuracy(*ranked[1][1:], ranked[1][0]))
    return category(w, o), (v, w, o), gap


@pytest.fixture(scope="module")
def records():
    return synthetic.make_records(variants=VARIANTS, seed=7)


@pytest.fixture(scope="module")
def surface(records):
    (s,) = build_surfaces(records_from_dicts(records).ok, n_boot=200, seed=0)
    return s


def test_regimes_match_truth(surface):
    table = regime_table(surface)
    for method, variants in (("all", VARIANTS), ("seq_sft", ("seq_sft",))):
        t = table[table["method"] == method].set_index("budget")
        for budget in synthetic.BUDGETS:
            truth, (v, w, o), gap = _true_regime(budget, variants)
            assert t.at[float(budget), "regime"] == truth, (method, budget)
            if gap > 0.005:  # the best point itself is identifiable at this noise (sd 0.005)
                assert (t.at[float(budget), "best_n_weak"], t.at[float(budget), "best_n_oracle"]) == (w, o)
    regimes = set(table.loc[table["method"] == "all", "regime"])
    assert regimes == {"quantity-dominant", "mixed", "quality-dominant"}
    t = table[table["method"] == "seq_sft"].set_index("budget")
    assert t.at[64.0, "best_oracle_fraction"] == pytest.approx(25 / 64)


def test_noisy_surface_gives_undetermined():
    recs = synthetic.make_records(variants=("seq_sft",), noise=0.05, seed=1)
    (s,) = build_surfaces(records_from_dicts(recs).ok, n_boot=200, seed=0)
    table = regime_table(s)
    assert "undetermined" in set(table["regime"])
    assert (table.loc[table["regime"] == "undetermined", "confidence"] < 0.9).all()


def test_recommend_matches_truth(surface):
    # true best at 256 beats the runner-up by 0.008 (noise sd 0.005, 3 seeds)
    r = rec_mod.recommend({"oracle": 1, "weak": 0.1}, 256, surface, method="seq_sft")
    assert (r.n_weak, r.n_oracle, r.method) == (520, 204, "seq_sft")
    assert r.regime == "mixed" and r.oracle_fraction == pytest.approx(204 / 256)
    lo, hi = r.accuracy_band
    assert lo <= r.expected_accuracy <= hi
    assert abs(r.expected_accuracy - synthetic.true_best(256)[2]) < 0.01
    best = rec_mod.recommend((1, 0.1), 1024, surface)
    assert (best.n_weak, best.n_oracle) == (0, 1024) and best.regime == "quality-dominant"
    small = rec_mod.recommend((1, 0.1), 8, surface)
    assert (small.n_weak, small.n_oracle) == (80, 0) and small.regime == "quantity-dominant"
    # A budget between grid budgets: the best affordable measured point, plus the scaled mix.
    mid = rec_mod.recommend((1, "0.1"), 100, surface, method="seq_sft")
    assert mid.cost <= 100 and mid.scaled_n_oracle * 1 + mid.scaled_n_weak * 0.1 <= 100 + 1e-9
    with pytest.raises(ValueError, match="no measured configuration"):
        rec_mod.recommend((1, 0.1), 0.5, surface)
    with pytest.raises(ValueError, match="prices"):
        rec_mod.recommend({"oracle": 1}, 8, surface)


def _write_corrupt_results(records, folder):
    synthetic.write_runs(records, folder)
    torn = folder / "runs" / "torn" / "result.json"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"run_id": "torn", "status": "ok", "task"')
    good = [r for r in records if r["status"] == "ok"][:2]
    extra = [dict(good[0], run_id="jsonl-1", seed=101), {"run_id": "x", "status": "ok"},
             dict(good[1], run_id="jsonl-2", seed=102)]
    lines = [json.dumps(r) for r in extra] + [json.dumps(dict(good[1], run_id="jsonl-3"))[:50]]
    (folder / "extra.jsonl").write_text("\n".join(lines))
    failed = dict(good[0], run_id="failed-1", status="failed", error="OOM")
    (folder / "runs" / "failed-1").mkdir()
    (folder / "runs" / "failed-1" / "result.json").write_text(json.dumps(failed))


def test_report_cli_writes_everything_despite_corrupt_input(records, tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    _write_corrupt_results(records, results)
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--results", str(results), "--out", str(out),
         "--weak_prices", "0.5", "0.1", "0.01", "--n_boot", "60", "--fit_boot", "15"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torn" in proc.stderr and "extra.jsonl:2" in proc.stderr and "extra.jsonl:4" in proc.stderr
    for name in ("frontier.csv", "frontier_tolerance.csv", "regimes.csv", "regime_boundaries.csv",
                 "best_within_budget.csv", "best_within_budget.md", "frontier_fit.csv",
                 "oracle_fraction_fit.csv", "report.md"):
        assert (out / name).stat().st_size > 0, name
    for stem in ("accuracy_vs_oracle_fraction", "frontier", "frontier_by_method",
                 "oracle_fraction_fits"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(out.glob(".*.tmp"))
    frontier = pd.read_csv(out / "frontier.csv")
    assert {"weak_price", "method", "n_weak", "n_oracle", "cost", "accuracy",
            "accuracy_std"} <= set(frontier.columns)
    assert set(frontier["method"]) == set(VARIANTS) | {"all"}
    assert set(frontier["weak_price"]) == {0.5, 0.1, 0.01}
    regimes = pd.read_csv(out / "regimes.csv")
    assert {"weak_price", "method", "budget", "regime", "best_oracle_fraction",
            "confidence"} <= set(regimes.columns)
    assert set(regimes["regime"]) <= {"quantity-dominant", "mixed", "quality-dominant",
                                      "undetermined"}
    bwb = pd.read_csv(out / "best_within_budget.csv")
    assert set(bwb["budget"]) == set(map(float, synthetic.BUDGETS))
    assert (bwb["cost"] <= bwb["budget"]).all() and "weak_fraction" in bwb.columns
    md = (out / "report.md").read_text()
    n_inf = sum(r["status"] == "infeasible" for r in records)
    assert f"{n_inf} infeasible and 1 failed" in md and "3 unreadable" in md
    assert "## Recommendation" in md and "quantity-dominant" in md
    assert "frontier.png" in md


def test_report_custom_budgets_and_errors(records, tmp_path, capsys):
    synthetic.write_runs([r for r in records if r["task"] == "synthetic"][:120], tmp_path / "r")
    out = tmp_path / "o"
    code = report.main(["--results", str(tmp_path / "r"), "--out", str(out), "--budgets", "5", "17",
                        "--n_boot", "20", "--fit_boot", "5"])
    assert code == 0
    bwb = pd.read_csv(out / "best_within_budget.csv")
    assert sorted(set(bwb["budget"])) == [5.0, 17.0]
    assert bwb.loc[bwb["budget"] == 5, "accuracy"].isna().all()   # nothing costs <= 5 here
    (tmp_path / "empty").mkdir()
    assert report.main(["--results", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no readable results records" in capsys.readouterr().err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "r.jsonl").write_text(json.dumps(dict(records[0], status="infeasible")) + "\n")
    assert report.main(["--results", str(only_bad), "--out", str(out)]) == 2
    assert "no ok records" in capsys.readouterr().err


def test_recommend_cli(records, tmp_path, capsys):
    synthetic.write_runs(records, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptRecordWarning)
        code = rec_mod.main(["--results", str(tmp_path), "--budget", "256", "--oracle_price", "1",
                             "--weak_price", "0.1", "--method", "seq_sft", "--n_boot", "50"])
    assert code == 0
    text = capsys.readouterr().out
    assert "n_weak=520, n_oracle=204" in text and "seq_sft" in text and "mixed" in text
    assert rec_mod.main(["--results", str(tmp_path), "--budget", "64", "--weak_price", "0.1",
                         "--method", "nope"]) == 2
