"""Calibration of the regime call on synthetic surfaces whose answer is known
(docs/design.md#regimes, #decisions).

    python -m analysis.calibration [--replicates 4] [--n_boot 2000] [--seed 0]

Prints, for each kind of surface, the share of budgets where :func:`analysis.regimes.classify`
named a regime, and how often it named the true one:

* **null**: every configuration at a budget has the same true accuracy (0.75), seed noise sd
  0.03, a test set of 1,000 examples scored per example; the study's eight fractions and eight
  budgets at weak price 1/10; 3 seeds and 1 seed per point. The right answer is "undetermined"
  everywhere, and a regime may be named at no more than 10% of budgets.
* **known**: budgets 8 and 16 quantity-dominant, 64 to 512 mixed, 1,024 to 8,192
  quality-dominant, the winning category ahead of the best other by a margin of 0.02 to 0.05
  (cycling over budgets, shifted per replicate); seed noise sd 0.005, the same test sets (two
  runs of equal accuracy disagree on about 16% of examples), 3 seeds (and 1 seed, for
  information: with one seed the call is deliberately conservative).

Records go through the same path as real ones (per-example scores, :mod:`analysis.resample`).
Last, the good buys (:func:`run_good_buys`): the bound's coverage, the rate at which every good
buy is truly within 0.02 of the best, and the corrected accuracy's band coverage, on surfaces
whose seed effects are shared by weak-using cells or opposite for weak- and oracle-heavy cells;
:func:`run_settle` simulates the main job's settle loop on the same surfaces.
Each replicate is its own surface (a model name), so the budgets counted are replicates x 8.

Then the decisions of :mod:`analysis.decisions` (:func:`run_decisions`), on the default grid's
shape (budgets 8-256, fractions 0, 0.2, 0.5, 0.8, 1, weak price 1/10) with the seed noise
measured on it: a labeller effect of sd 0.03 per seed shared by every cell that buys weak
labels, scaled by its weak share of training labels, and own noise of sd 0.01 + 0.05 x weak
share per (cell, seed); 3 and 5 seeds. On **null** surfaces a regime may be named, and anything
ruled out, at no more than 10% of budgets; on **known** surfaces (the best category ahead by
0.01-0.05) the regret bound must cover the chosen configuration's true regret at 90% or more of
budgets, and the truly best category be ruled out at no more than 5%.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

import numpy as np
import pandas as pd

from analysis import pricing
from analysis.aggregate import build_surfaces
from analysis.records import records_from_dicts
from analysis.regimes import MIXED, QUALITY, QUANTITY, UNDETERMINED, category, regime_table
from analysis.resample import DEFAULT_N_BOOT
from analysis.synthetic import FRACTIONS, grid_records

STUDY_BUDGETS = (8, 16, 64, 256, 512, 1024, 4096, 8192)
KNOWN_REGIMES = {8: QUANTITY, 16: QUANTITY, 64: MIXED, 256: MIXED, 512: MIXED,
                 1024: QUALITY, 4096: QUALITY, 8192: QUALITY}
MARGINS = (0.02, 0.03, 0.04, 0.05)
WEAK_PRICE = 0.1


def _budget_of(n_weak: int, n_oracle: int, budgets) -> float:
    """The grid budget a study-grid point belongs to: the smallest budget its cost fits in."""
    cost = pricing.exact_cost(n_weak, n_oracle, 1, WEAK_PRICE)
    return min(b for b in budgets if pricing.to_fraction(b) >= cost)


def known_truth(budgets=STUDY_BUDGETS, regimes=None, margins=MARGINS, fractions=FRACTIONS,
                offset: int = 0):
    """A true-accuracy function of the counts with the regime ``regimes[budget]`` at each budget,
    ahead of the best other category by ``margins[(i + offset) % len(margins)]`` at the i-th
    budget (vary ``offset`` over replicates so every regime meets every margin)."""
    regimes = regimes or KNOWN_REGIMES
    margin = {b: margins[(i + offset) % len(margins)] for i, b in enumerate(budgets)}
    shares = {}
    for b in budgets:
        pts = {pricing.grid_counts(b, f, 1, WEAK_PRICE) for f in fractions}
        shares[b] = sorted(pricing.oracle_spend_fraction(w, o, 1, WEAK_PRICE)
                           for w, o in pts if category(w, o) == MIXED)

    def truth(n_weak, n_oracle, variant=None):
        b = _budget_of(n_weak, n_oracle, budgets)
        s = pricing.oracle_spend_fraction(n_weak, n_oracle, 1, WEAK_PRICE)
        cat, m = category(n_weak, n_oracle), margin[b]
        if regimes[b] == QUANTITY:
            return 0.75 if cat == QUANTITY else 0.75 - m - 0.05 * s
        if regimes[b] == QUALITY:
            return 0.85 if cat == QUALITY else 0.85 - m - 0.05 * (1 - s)
        best_mixed = 0.78 - 0.05 * min(abs(x - 0.5) for x in shares[b])
        return 0.78 - 0.05 * abs(s - 0.5) if cat == MIXED else best_mixed - m
    return truth, margin


def null_truth(n_weak, n_oracle, variant=None):
    """Every configuration equally accurate."""
    return 0.75


@dataclasses.dataclass
class Outcome:
    """Per budget of every replicate: the true regime, margin, the call and its confidence."""

    table: pd.DataFrame

    @property
    def named_rate(self) -> float:
        return float((self.table["regime"] != UNDETERMINED).mean())

    @property
    def correct_rate(self) -> float:
        return float((self.table["regime"] == self.table["truth"]).mean())

    @property
    def wrong_rate(self) -> float:
        t = self.table
        return float(((t["regime"] != UNDETERMINED) & (t["regime"] != t["truth"])).mean())


def run_surface(kind: str, n_seeds: int, replicates: int = 4, n_boot: int = 200,
                seed: int = 0, seed_sd: float | None = None, n_test: int = 1000) -> Outcome:
    """Build ``replicates`` surfaces of ``kind`` (``null`` or ``known``), call every budget's
    regime at level 0.9 and compare with the truth."""
    if kind not in ("null", "known"):
        raise ValueError(f"kind must be 'null' or 'known', got {kind!r}")
    if seed_sd is None:
        seed_sd = 0.03 if kind == "null" else 0.005
    records, margins = [], {}
    for r in range(replicates):
        if kind == "null":
            truth, margin = null_truth, {b: 0.0 for b in STUDY_BUDGETS}
        else:
            truth, margin = known_truth(offset=r)
        margins[f"{kind}-{r}"] = margin
        # each replicate its own model and task, so nothing (seed pools included) is shared
        records += grid_records(truth, STUDY_BUDGETS, FRACTIONS, 1, WEAK_PRICE, ("seq_sft",),
                                tasks=(f"task-{r}",), noise=seed_sd, seed=seed * 1000 + r,
                                model=f"{kind}-{r}",
                                n_test=n_test, per_example=True, n_seeds=n_seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-cell notes are irrelevant here
        surfaces = build_surfaces(records_from_dicts(records).ok, n_boot=n_boot, seed=seed)
    rows = []
    for s in surfaces:
        t = regime_table(s, fitted=False)
        t = t[t["method"] == "all"]
        for row in t.itertuples():
            b = int(row.budget)
            rows.append({"replicate": s.scope[0], "budget": b, "margin": margins[s.scope[0]][b],
                         "truth": UNDETERMINED if kind == "null" else KNOWN_REGIMES[b],
                         "regime": row.regime, "confidence": row.confidence})
    return Outcome(pd.DataFrame(rows))


# The default grid's shape (weak price 1/10) and the noise measured on it (issue 20): a labeller
# effect of sd 0.03 per seed shared by every cell that buys weak labels, scaled by its weak share
# w of the training labels, and a cell's own noise of sd 0.01 + 0.05 w per (cell, seed).
DECISION_BUDGETS = (8, 32, 64, 128, 256)
DECISION_FRACTIONS = (0, 0.2, 0.5, 0.8, 1)
DECISION_REGIMES = {8: QUANTITY, 32: MIXED, 64: MIXED, 128: QUALITY, 256: QUALITY}
DECISION_MARGINS = (0.01, 0.02, 0.03, 0.05)
REALISTIC_NOISE = {"noise": 0.01, "share_noise": 0.05, "labeller_sd": 0.03}


def realistic_records(kind: str, n_seeds: int, replicate: int, seed: int = 0) -> list[dict]:
    """Records of one replicate of a ``null`` or ``known`` surface on the default grid's shape
    with the realistic seed noise above, 1,000 test examples scored per example (one test set
    per task, so the joint test resampling is exercised). Each replicate is its own task and
    model."""
    if kind not in ("null", "known"):
        raise ValueError(f"kind must be 'null' or 'known', got {kind!r}")
    truth = null_truth if kind == "null" else known_truth(
        DECISION_BUDGETS, DECISION_REGIMES, DECISION_MARGINS, DECISION_FRACTIONS, replicate)[0]
    return grid_records(truth, DECISION_BUDGETS, DECISION_FRACTIONS, 1, WEAK_PRICE,
                        ("seq_sft",), tasks=(f"task-{replicate}",), seed=seed * 1000 + replicate,
                        model=f"{kind}-{replicate}", n_test=1000, per_example=True,
                        n_seeds=n_seeds, **REALISTIC_NOISE)


def _truth_of(kind: str, replicate: int):
    if kind == "null":
        return null_truth
    return known_truth(DECISION_BUDGETS, DECISION_REGIMES, DECISION_MARGINS, DECISION_FRACTIONS,
                       replicate)[0]


def run_decisions(kind: str, n_seeds: int, replicates: int = 20, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.9) -> pd.DataFrame:
    """Decisions and regimes (method ``all``) of every budget of ``replicates`` realistic
    surfaces, beside the truth. One row per budget: replicate, budget, regime (named or
    undetermined), regret_upper, true_regret (the chosen configuration's, against the truly best
    measured at that budget), covered (true_regret <= regret_upper), ruled_out_categories,
    true_best (the truly best categories, ``;``-joined: all three on a null surface) and
    best_ruled_out (a truly best category ruled out)."""
    from analysis.decisions import decision_table
    from analysis.regimes import REGIMES, budget_points
    records = [r for i in range(replicates) for r in realistic_records(kind, n_seeds, i, seed)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surfaces = build_surfaces(records_from_dicts(records).ok, n_boot=n_boot, seed=seed)
    rows = []
    for s in surfaces:
        truth = _truth_of(kind, int(s.scope[0].split("-")[1]))
        dec = decision_table(s, level).query("method == 'all'").set_index("budget")
        reg = regime_table(s, level, fitted=False).query("method == 'all'").set_index("budget")
        for point in budget_points(s):
            if point.method != "all":
                continue
            cells = s.cells.iloc[point.idx]
            true = np.asarray([truth(w, o) for w, o in zip(cells["n_weak"], cells["n_oracle"])])
            cats = [category(w, o) for w, o in zip(cells["n_weak"], cells["n_oracle"])]
            d = dec.loc[point.budget]
            chosen = truth(d["n_weak"], d["n_oracle"])
            best = {c for c, t in zip(cats, true) if t >= true.max() - 1e-12}
            ruled = set(filter(None, d["ruled_out_categories"].split(";")))
            rows.append({"replicate": s.scope[0], "budget": point.budget,
                         "regime": reg.loc[point.budget, "regime"],
                         "regret_upper": d["regret_upper"], "true_regret": true.max() - chosen,
                         "covered": true.max() - chosen <= d["regret_upper"] + 1e-12,
                         "ruled_out_categories": d["ruled_out_categories"],
                         "true_best": ";".join(c for c in REGIMES if c in best),
                         "best_ruled_out": bool(best & ruled)})
    return pd.DataFrame(rows)


def decision_summary(table: pd.DataFrame) -> dict[str, float]:
    """Rates over the budgets of :func:`run_decisions`: regime named, regret bound covers the
    true regret, a truly best category ruled out, anything ruled out; median regret bound."""
    return {"budgets": len(table),
            "named": float((table["regime"] != UNDETERMINED).mean()),
            "covered": float(table["covered"].mean()),
            "best_ruled_out": float(table["best_ruled_out"].mean()),
            "any_ruled_out": float((table["ruled_out_categories"] != "").mean()),
            "median_regret_upper": float(table["regret_upper"].median())}


def summary_lines(replicates: int = 4, n_boot: int = 200, seed: int = 0) -> list[str]:
    """The calibration table as text lines (see the module docstring)."""
    lines = [f"{'surface':<8} {'seeds':>5} {'budgets':>7} {'named':>7} {'true':>7} {'wrong':>7}"]
    for kind, n_seeds in (("null", 3), ("null", 1), ("known", 3), ("known", 1)):
        out = run_surface(kind, n_seeds, replicates, n_boot, seed)
        t = out.table
        true = f"{out.correct_rate:.1%}" if kind == "known" else "-"
        lines.append(f"{kind:<8} {n_seeds:>5} {len(t):>7} {out.named_rate:>7.1%} {true:>7} "
                     f"{out.wrong_rate:>7.1%}")
        if kind == "known":
            for m, tm in t.groupby("margin"):
                found = (tm["regime"] == tm["truth"]).mean()
                lines.append(f"  margin {m:.2f}: true regime named at {found:.0%} of "
                             f"{len(tm)} budgets")
    lines.append(f"decisions: {'surface':<8} {'seeds':>5} {'budgets':>7} {'named':>7} "
                 f"{'covered':>7} {'best out':>8} {'any out':>7} {'regret_upper (median)':>22}")
    for kind, n_seeds in (("null", 3), ("null", 5), ("known", 3), ("known", 5)):
        r = decision_summary(run_decisions(kind, n_seeds, 5 * replicates, n_boot, seed))
        lines.append(f"           {kind:<8} {n_seeds:>5} {r['budgets']:>7} {r['named']:>7.1%} "
                     f"{r['covered']:>7.1%} {r['best_ruled_out']:>8.1%} "
                     f"{r['any_ruled_out']:>7.1%} {r['median_regret_upper']:>22.3f}")
    lines.append("good buys: seed effects      budgets  bound covers  good buys within 0.02  "
                 "expected band covers")
    for name, anti in (("shared", 0.0), ("opposite", 1.0)):
        t = run_good_buys(anti, 5, 5 * replicates, n_boot, seed)
        lines.append(f"           {name:<16} {len(t):>8} {t['covered'].mean():>13.1%} "
                     f"{t['good_ok'].mean():>22.1%} {t['band_covers'].mean():>21.1%}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.calibration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--n_boot", type=int, default=DEFAULT_N_BOOT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print("\n".join(summary_lines(args.replicates, args.n_boot, args.seed)))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())


def seeded_surfaces(replicates: int, anti: float, seed: int = 0):
    """``replicates`` :class:`analysis.synthetic.SeededSurface` of the known decision surfaces
    (the default grid's shape, realistic noise), with seed effects of sign ``anti`` (0: shared
    by weak-using cells; 1: weak-heavy and oracle-heavy cells move in opposite directions)."""
    from analysis.synthetic import SeededSurface
    out = []
    for r in range(replicates):
        truth = known_truth(DECISION_BUDGETS, DECISION_REGIMES, DECISION_MARGINS,
                            DECISION_FRACTIONS, r)[0]
        out.append(SeededSurface(lambda w, o, t=truth: t(w, o), task=f"task-{r}",
                                 model=f"anti{anti:g}-{r}", seed=seed * 1000 + r, anti=anti,
                                 **REALISTIC_NOISE))
    return out


def judge_decisions(records: list[dict], sources, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.9, tolerance: float = 0.02) -> pd.DataFrame:
    """One row per budget of every source's surface: the decision against the truth. Columns:
    replicate, budget, chosen (name), regret_upper, true_regret, covered, n_good, good_ok
    (every good buy truly within the tolerance of the best), expected_lo/hi, true_chosen,
    band_covers, lead (the truly best's lead over the next), chosen_best, settled."""
    from analysis.decisions import decision_table, parse_configuration_name
    by_model = {s.model: s for s in sources}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surfaces = build_surfaces(records_from_dicts(records).ok, n_boot=n_boot, seed=seed)
    rows = []
    for s in surfaces:
        truth = by_model[s.scope[0]].truth
        table = decision_table(s, level, tolerance).query("method == 'all'")
        for d in table.itertuples():
            cells = s.members[(s.members["budget"] == d.budget)][["n_weak", "n_oracle"]]
            true = sorted({float(truth(w, o)) for w, o in zip(cells["n_weak"], cells["n_oracle"])},
                          reverse=True)
            best = true[0]
            chosen = float(truth(d.n_weak, d.n_oracle))
            good = [float(truth(*parse_configuration_name(g)))
                    for g in filter(None, d.good_buys.split(";"))]
            rows.append({"replicate": s.scope[0], "budget": d.budget,
                         "regret_upper": d.regret_upper, "true_regret": best - chosen,
                         "covered": best - chosen <= d.regret_upper + 1e-12,
                         "n_good": len(good),
                         "good_ok": all(best - g <= tolerance + 1e-12 for g in good),
                         "expected_lo": d.expected_lo, "expected_hi": d.expected_hi,
                         "true_chosen": chosen, "selection_bias": d.selection_bias,
                         "band_covers": d.expected_lo <= chosen <= d.expected_hi,
                         "lead": best - (true[1] if len(true) > 1 else -np.inf),
                         "chosen_best": chosen >= best - 1e-12,
                         "settled": d.regret_upper <= tolerance + 1e-12})
    return pd.DataFrame(rows)


def run_good_buys(anti: float, n_seeds: int = 5, replicates: int = 20, n_boot: int = 1000,
                  seed: int = 0, tolerance: float = 0.02) -> pd.DataFrame:
    """:func:`judge_decisions` of the grid's seeds only, on :func:`seeded_surfaces`."""
    sources = seeded_surfaces(replicates, anti, seed)
    records = [r for src in sources for r in src.grid(DECISION_BUDGETS, DECISION_FRACTIONS,
                                                      range(n_seeds))]
    return judge_decisions(records, sources, n_boot, seed, tolerance=tolerance)


def run_settle(anti: float, n_seeds: int = 5, max_seeds: int = 20, replicates: int = 20,
               n_boot: int = 1000, seed: int = 0, tolerance: float = 0.02,
               max_rounds: int = 10) -> tuple[pd.DataFrame, dict]:
    """The settle loop of the main job (:func:`analysis.settle.plan_seeds`, new seeds drawn from
    the same surfaces) after ``n_seeds`` grid seeds; returns :func:`judge_decisions` of the
    final records and counts: grid runs, runs added, runs to take every cell to the cap,
    rounds."""
    from analysis.settle import plan_seeds
    sources = seeded_surfaces(replicates, anti, seed)
    by_task = {s.task: s for s in sources}
    records = [r for src in sources for r in src.grid(DECISION_BUDGETS, DECISION_FRACTIONS,
                                                      range(n_seeds))]
    fractions = {(r["task"], r["budget"], r["n_weak"], r["n_oracle"]): r["oracle_fractions"]
                 for r in records}
    grid, rounds = len(records), 0
    for rounds in range(1, max_rounds + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = plan_seeds(records_from_dicts(records), tolerance, max_seeds, n_boot=n_boot,
                              seed=seed)
        if not plan.requests:
            break
        for q in plan.requests:
            fr = fractions[(q.task, q.budget, q.n_weak, q.n_oracle)]
            records += [by_task[q.task].record(q.budget, q.n_weak, q.n_oracle, fr, s)
                        for s in q.seeds]
    table = judge_decisions(records, sources, n_boot, seed, tolerance=tolerance)
    return table, {"grid_runs": grid, "added": len(records) - grid,
                   "to_cap": grid // n_seeds * (max_seeds - n_seeds), "rounds": rounds}
