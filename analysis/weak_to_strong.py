"""Weak-to-strong generalisation (Burns et al. 2023): does a student trained on weak labels beat
them, and by how much of the gap to the same student trained on ground truth?

A *ceiling run* (`config.weak_truth`, added per all-weak point by `config.ceiling`) is the same
student, seed, texts and counts as an all-weak run, its weak stage trained on those texts' ground
truth. Ceiling runs are a different labeller variant, not a purchasable configuration: they are
set apart when records load (`analysis.records`, `Records.ceiling`) and never enter the
cost-accuracy analysis. Per weak-label count (all-weak runs of a task, model, labeller and
variant, matched seed by seed to their ceiling runs):

    labels   the weak labels' own test accuracy (hard at 0.5)
    student  the all-weak run's test accuracy
    ceiling  the ceiling run's test accuracy
    PGR      (student - labels) / (ceiling - labels), means over the matched seeds

with a 90% band from resamples of the seeds and the test examples jointly: resample b draws one
multiset of the matched seeds and one multiset of test examples (shared by every run of the task
and by the labels), and recomputes every mean and the PGR on it. Self-contained: it reads each
run's `scores.parquet` (its `weak` column holds the labels' P(y=1) on the test examples); a run
without per-example scores keeps its recorded accuracies fixed under the test resample (the band
is then narrower than it should be, and the table says so in `test_resampled`).

Nothing here imports JAX.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

CEILING_KEY = "weak_truth"  # flattened config key of a ceiling run
COLUMNS = ["task", "model", "weak_labeler", "variant", "n_weak", "seeds", "labels", "student",
           "ceiling", "pgr", "pgr_lo", "pgr_hi", "student_minus_labels_lo",
           "student_minus_labels_hi", "test_resampled"]


def is_ceiling(rec: dict) -> bool:
    """Whether a record is a ceiling run (its flattened config sets `weak_truth`)."""
    config = rec.get("config") if isinstance(rec, dict) else None
    return bool(isinstance(config, dict) and config.get(CEILING_KEY) is True)


def _student_identity(identity: str) -> str:
    d = json.loads(identity)
    d.pop(CEILING_KEY, None)
    return json.dumps(d, sort_keys=True, default=str)


def _scores(path_or_arrays):
    """(ids, student correct, weak correct or None) of a run's test examples, or None."""
    if path_or_arrays is None:
        return None
    if isinstance(path_or_arrays, tuple):
        ids, correct = path_or_arrays
        return np.asarray(ids).astype(str), np.asarray(correct, bool), None
    table = pd.read_parquet(path_or_arrays)
    label = table["label"].to_numpy().astype(int) == 1
    correct = (table["score"].to_numpy(float) > 0) == label
    weak = ((table["weak"].to_numpy(float) > 0.5) == label) if "weak" in table else None
    return table["id"].astype(str).to_numpy(), correct, weak


def matched_pairs(ok: pd.DataFrame, ceiling: pd.DataFrame) -> pd.DataFrame:
    """One row per (all-weak run, its ceiling run): same task, identity but `weak_truth`,
    weak-label count and seed."""
    cols = ["task", "model", "weak_labeler", "variant", "identity", "n_weak", "n_oracle", "seed",
            "metrics.accuracy", "weak_label_test_accuracy", "example_scores"]
    if ok.empty or ceiling.empty or "identity" not in ceiling:
        return pd.DataFrame(columns=cols + ["ceiling_accuracy", "ceiling_scores"])
    weak = ok[(ok["n_oracle"] == 0) & (ok["n_weak"] > 0)][cols].copy()
    weak["identity"] = [_student_identity(i) for i in weak["identity"]]
    ceil = ceiling[(ceiling["n_oracle"] == 0) & (ceiling["n_weak"] > 0)].copy()
    ceil["identity"] = [_student_identity(i) for i in ceil["identity"]]
    ceil = ceil[["task", "identity", "n_weak", "seed", "metrics.accuracy", "example_scores"]]
    ceil = ceil.rename(columns={"metrics.accuracy": "ceiling_accuracy",
                                "example_scores": "ceiling_scores"})
    return weak.merge(ceil, on=["task", "identity", "n_weak", "seed"], how="inner")


def weak_to_strong_table(ok: pd.DataFrame, ceiling: pd.DataFrame, *, n_boot: int = 2000,
                         seed: int = 0, level: float = 0.9) -> pd.DataFrame:
    """The weak-to-strong table (`COLUMNS`), one row per (task, model, labeller, variant,
    weak-label count) with at least one matched seed."""
    pairs = matched_pairs(ok, ceiling)
    rows = []
    rng = np.random.default_rng(seed)
    q = (1 - level) / 2
    for key, g in pairs.groupby(["task", "model", "weak_labeler", "variant", "n_weak"],
                                sort=True):
        g = g.sort_values("seed")
        student = g["metrics.accuracy"].to_numpy(float)
        labels = g["weak_label_test_accuracy"].to_numpy(float)
        ceil = g["ceiling_accuracy"].to_numpy(float)
        row = dict(zip(["task", "model", "weak_labeler", "variant", "n_weak"], key))
        row.update(seeds=len(g), labels=labels.mean(), student=student.mean(),
                   ceiling=ceil.mean(), pgr=_pgr(student.mean(), labels.mean(), ceil.mean()))
        boot_s, boot_l, boot_c, resampled = _resampled(g, student, labels, ceil, n_boot, rng)
        row["test_resampled"] = resampled
        pgr = _pgr(boot_s, boot_l, boot_c)
        row["pgr_lo"], row["pgr_hi"] = (np.nanquantile(pgr, [q, 1 - q]) if np.isfinite(pgr).any()
                                        else (np.nan, np.nan))
        row["student_minus_labels_lo"], row["student_minus_labels_hi"] = np.quantile(
            boot_s - boot_l, [q, 1 - q])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _pgr(student, labels, ceiling):
    gap = np.asarray(ceiling, float) - np.asarray(labels, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(gap) > 1e-12, (np.asarray(student, float) - labels) / gap, np.nan)


def _resampled(g: pd.DataFrame, student, labels, ceil, n_boot: int, rng):
    """[n_boot] resampled means of the student's, the labels' and the ceiling's accuracy: one
    multiset of seeds and one of test examples per resample (per-example scores where every
    run has them, else the recorded accuracies)."""
    n = len(g)
    pick = rng.integers(0, n, size=(n_boot, n))
    per_run = [(_scores(s), _scores(c)) for s, c in zip(g["example_scores"], g["ceiling_scores"])]
    usable = all(s is not None and c is not None and s[2] is not None
                 and np.array_equal(s[0], per_run[0][0][0]) and np.array_equal(c[0], s[0])
                 for s, c in per_run)
    if not usable:
        return (student[pick].mean(1), labels[pick].mean(1), ceil[pick].mean(1), False)
    n_test = len(per_run[0][0][0])
    # counts of each test example in each resample: [n_boot, n_test]
    counts = rng.multinomial(n_test, np.full(n_test, 1.0 / n_test), size=n_boot)
    acc = {k: np.stack([counts @ arr.astype(float) / n_test for arr in arrs], axis=1)
           for k, arrs in (("s", [s[1] for s, _ in per_run]), ("l", [s[2] for s, _ in per_run]),
                           ("c", [c[1] for _, c in per_run]))}  # [n_boot, runs]
    rows = np.arange(n_boot)[:, None]
    return (acc["s"][rows, pick].mean(1), acc["l"][rows, pick].mean(1),
            acc["c"][rows, pick].mean(1), True)


def largest_point_line(table: pd.DataFrame, level: float = 0.9) -> str | None:
    """The one line the main job prints: the PGR at the largest all-weak point (per task,
    model, labeller and variant; None without a ceiling run)."""
    if table is None or table.empty:
        return None
    parts = []
    for _, g in table.groupby(["task", "model", "weak_labeler", "variant"], sort=True):
        r = g.sort_values("n_weak").iloc[-1]
        parts.append(
            f"{r['task']}/{r['variant']}: PGR {r['pgr']:.2f} [{r['pgr_lo']:.2f}, "
            f"{r['pgr_hi']:.2f}] at {int(r['n_weak'])} weak labels ({int(r['seeds'])} seeds: "
            f"labels {r['labels']:.3f}, student {r['student']:.3f}, ceiling "
            f"{r['ceiling']:.3f})")
    return f"Weak-to-strong ({level:.0%} band): " + "; ".join(parts)


def markdown(table: pd.DataFrame, level: float = 0.9) -> list[str]:
    """The report's section."""
    lines = ["## Weak-to-strong", "",
             "The student trained on weak labels only against the labels themselves and against "
             "the same student trained on the ground truth of the same texts (ceiling runs, "
             "`config.ceiling`; not purchasable configurations, so outside every other table). "
             f"PGR = (student - labels) / (ceiling - labels); {level:.0%} bands resample seeds "
             "and test examples jointly. Table: `weak_to_strong.csv`.", ""]
    if table is None or table.empty:
        return lines + ["No all-weak run has a ceiling run (set `config.ceiling=True`).", ""]
    lines += ["| task | variant | weak labels | seeds | labels | student | ceiling | PGR "
              f"({level:.0%} band) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['task']} | {r['variant']} | {int(r['n_weak'])} | {int(r['seeds'])} "
                     f"| {r['labels']:.3f} | {r['student']:.3f} | {r['ceiling']:.3f} | "
                     f"{r['pgr']:.2f} [{r['pgr_lo']:.2f}, {r['pgr_hi']:.2f}] |")
    if not table["test_resampled"].all():
        lines.append("")
        lines.append("Rows without per-example test scores (`test_resampled` False) resample "
                     "seeds only: their bands are too narrow.")
    return lines + [""]

