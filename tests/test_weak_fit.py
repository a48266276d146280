"""The weak stage's cross-validated L2 fit (`scalable_elicitation.weak_fit`): the solver reaches
the regularised optimum, the penalty rule reads only the purchased labels (a sweep with every
test label flipped trains identically), ceiling runs train on the truth of the same texts and
stay out of the cost-accuracy analysis, and the weak-to-strong table's arithmetic."""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from analysis import weak_to_strong as w2s
from analysis.records import load_records
from configs import cost_sweep
from scalable_elicitation import weak_fit
from scalable_elicitation.experiment import sweep_points
from scalable_elicitation.main import run_sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "cost_sweep.py")


def _objective(x, y, w, b, c):
    z = x @ w + b
    return np.sum(np.logaddexp(0, z) - y * z) + w @ w / (2 * c)


def test_fit_l2_reaches_the_regularised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)) + 0.5
    y = (x @ rng.normal(size=20) + rng.logistic(size=300) > 0).astype(float)
    for c in (1e-3, 1e-1, 10.0):
        w, b, _, converged = weak_fit.fit_l2(x, y, np.ones(300), (c,), tol=1e-9)
        w, b = w[:, 0], float(b[0])
        assert converged
        # stationary: the gradient of the objective vanishes (bias unpenalised)
        p = 1 / (1 + np.exp(-(x @ w + b)))
        assert np.abs(x.T @ (p - y) + w / c).max() < 1e-5
        assert abs((p - y).sum()) < 1e-5
        # and no perturbation lowers the objective
        best = _objective(x, y, w, b, c)
        for _ in range(5):
            d = rng.normal(size=20) * 1e-3
            assert _objective(x, y, w + d, b, c) >= best - 1e-9


def test_cv_against_noisy_labels_beats_them_and_the_weak_penalty():
    # features whose variance, and signal, sit in a few directions, as real features' do; 30% of
    # the labels flipped at random
    rng = np.random.default_rng(1)
    n, d = 600, 200
    scale = 1 / np.sqrt(np.arange(1, d + 1))
    truth = rng.normal(size=d) * scale
    x = rng.normal(size=(n, d)) * scale
    noisy = (x @ truth > 0).astype(float)
    flip = rng.permutation(n)[: int(0.3 * n)]
    noisy[flip] = 1 - noisy[flip]
    x_test = rng.normal(size=(4000, d)) * scale
    y_test = x_test @ truth > 0

    def accuracy(cs):
        fit = weak_fit.cross_validated_fit(x, noisy, np.ones(n), cs=cs, folds=5,
                                           rng=np.random.default_rng(0))
        return fit, np.mean((x_test @ fit.w + fit.b > 0) == y_test)

    fit, acc = accuracy(weak_fit.DEFAULT_CS)
    _, acc_weak = accuracy((10.0,))  # barely regularised: copies the noise
    assert fit.c < 1.0 and all(0 < a < 1 for a in fit.cv_accuracy)
    assert acc > 0.7 + 0.05  # beats the labels' own 70%
    assert acc > acc_weak + 0.05


def _task_file(path: pathlib.Path, flip_test: bool) -> pathlib.Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = int(rng.random() < 0.5)
        word = rng.choice(["good great fine", "bad awful poor"][1 - label].split())
        split = "test" if i < 40 else "train"
        shown = 1 - label if (flip_test and split == "test") else label
        rows.append({"text": f"item {i} was {word} {'!' * (i % 3)}", "label": shown,
                     "split": split})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _probe_config(task: str):
    c = cost_sweep.get_config("smoke")
    c.task = task
    c.trainable, c.pooling = "head", "mean"
    c.train.lr = 0.01
    c.labeler.kind, c.labeler.rate = "noise", 0.3
    c.budgets, c.fractions, c.seeds = (6,), ("0", "0.5"), 1
    c.n_test = 40
    c.task_options.max_train = None
    c.ceiling = True
    return c


@pytest.fixture(scope="module")
def flipped_pair(tmp_path_factory):
    out = []
    for flip in (False, True):
        d = tmp_path_factory.mktemp(f"flip{int(flip)}")
        c = _probe_config(f"file:{_task_file(d / 'task.jsonl', flip)}")
        recs = run_sweep(c, d / "wd", sweep_points(CONFIG, c), out=lambda *_: None)
        out.append((d / "wd", {(r["n_weak"], r["n_oracle"], r["config"].get("weak_truth", False)):
                               r for r in recs}))
    return out


def test_the_penalty_rule_reads_no_test_label(flipped_pair):
    (wd_a, a), (wd_b, b) = flipped_pair
    assert a.keys() == b.keys() and len(a) == 3  # all-weak, its ceiling, a mixed run
    for key, ra in a.items():
        rb = b[key]
        assert ra["status"] == rb["status"] == "ok"
        weak_a = [s for s in ra["stages"] if s["source"] == "weak"]
        weak_b = [s for s in rb["stages"] if s["source"] == "weak"]
        assert weak_a and weak_a[0]["fit"] == "cv_l2"
        # identical chosen penalty, CV scores and training record
        assert weak_a == weak_b
        assert ra["stages"] == rb["stages"]
        sa = pd.read_parquet(wd_a / "runs" / ra["run_id"] / "scores.parquet")
        sb = pd.read_parquet(wd_b / "runs" / rb["run_id"] / "scores.parquet")
        np.testing.assert_array_equal(sa["score"], sb["score"])  # identical parameters
        np.testing.assert_array_equal(sa["label"], 1 - sb["label"])
        assert ra["metrics"]["accuracy"] == pytest.approx(1 - rb["metrics"]["accuracy"])


def test_ceiling_runs_train_on_truth_and_stay_out_of_the_decisions(flipped_pair):
    wd, recs = flipped_pair[0]
    weak, ceiling = recs[(60, 0, False)], recs[(60, 0, True)]
    lw = json.loads((wd / "runs" / weak["run_id"] / "ledger.json").read_text())
    lc = json.loads((wd / "runs" / ceiling["run_id"] / "ledger.json").read_text())
    assert lw == lc  # the same texts
    assert weak["stages"][0]["fit_cv_accuracy"] != ceiling["stages"][0]["fit_cv_accuracy"]
    records = load_records(wd / "runs")
    assert len(records.ceiling) == 1 and len(records.ok) == 2
    assert not records.variant_splits  # the ceiling run does not split the variant
    table = w2s.weak_to_strong_table(records.ok, records.ceiling, n_boot=200)
    assert list(table["n_weak"]) == [60] and table["seeds"].iloc[0] == 1
    row = table.iloc[0]
    assert row["ceiling"] == pytest.approx(ceiling["metrics"]["accuracy"])
    assert row["labels"] == pytest.approx(weak["weak_label_test_accuracy"])
    assert bool(row["test_resampled"])
    report = (wd / "report" / "report.md").read_text()
    assert "## Weak-to-strong" in report and (wd / "report" / "weak_to_strong.csv").exists()
    decisions = pd.read_csv(wd / "report" / "decisions.csv")
    assert len(decisions)  # decided from the two purchasable runs only


def test_pgr_table_arithmetic_and_band():
    ok = pd.DataFrame({
        "task": "t", "model": "m", "weak_labeler": "L", "variant": "seq_sft",
        "identity": json.dumps({"a": 1}), "n_weak": 100, "n_oracle": 0, "seed": [0, 1, 2],
        "metrics.accuracy": [0.75, 0.70, 0.80], "weak_label_test_accuracy": [0.70, 0.70, 0.70],
        "example_scores": None})
    ceiling = ok.copy()
    ceiling["identity"] = json.dumps({"a": 1, "weak_truth": True})
    ceiling["metrics.accuracy"] = [0.90, 0.90, 0.90]
    table = w2s.weak_to_strong_table(ok, ceiling, n_boot=500)
    row = table.iloc[0]
    assert row["pgr"] == pytest.approx((0.75 - 0.70) / (0.90 - 0.70))
    assert row["pgr_lo"] <= row["pgr"] <= row["pgr_hi"] and row["pgr_lo"] < row["pgr_hi"]
    assert not row["test_resampled"]
    line = w2s.largest_point_line(table)
    assert line.startswith("Weak-to-strong") and "PGR 0.25" in line


def test_words_labeller_is_weak_by_capacity_and_never_labels_its_training_texts(tmp_path):
    from scalable_elicitation.data import load_task
    from scalable_elicitation.labelers import WordsLabeler, make_labeler
    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        label = int(i % 2 == 0)
        cue = rng.choice(["good", "great"] if label else ["bad", "awful"])
        other = rng.choice(["good", "great", "bad", "awful"])  # a cue of either class
        text = f"row {i} {cue} {other} thing" if rng.random() < 0.8 else f"row {i} {other}"
        rows.append({"text": text, "label": label})
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(f"file:{path}", seed=0, n_test=100)
    labeller = make_labeler(cost_sweep.get_config("capacity").labeler, None)
    assert isinstance(labeller, WordsLabeler) and labeller.n_train == 400
    weak = WordsLabeler(n_train=60).label(task, seed=3)
    assert len(weak.train_ids) == 60 and not set(weak.train_ids) & set(weak.ids)
    assert 0.6 < weak.metrics["test_accuracy"] < 1.0  # learns the cues, but not perfectly
    again = WordsLabeler(n_train=60).label(task, seed=3)
    np.testing.assert_array_equal(weak.soft, again.soft)
