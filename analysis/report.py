"""Build the analysis report from results records.

    python -m analysis.report --results WORKDIR/runs [MORE ...] --out OUT \
        [--weak_prices 0.5 0.1 0.01] [--budgets 8 16 64] [--n_boot 2000]

Writes to OUT: decisions.csv (per budget: what to buy, its regret bound, what is ruled out;
:mod:`analysis.decisions`), frontier.csv (Pareto, per method variant and ``all``),
frontier_tolerance.csv (the study's variant), frontier_fit.csv, oracle_fraction_fit.csv,
regimes.csv, regime_boundaries.csv, best_within_budget.csv and .md, prompt_effect.csv (k-shot
minus seq_sft per grid point where both ran; :mod:`analysis.prompt_effect`), figures as PNG and
PDF, and report.md.
Corrupt records are skipped with a warning; the exit status is 0 when some ok records exist.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, io, pricing, weak_to_strong
from analysis.aggregate import Surface, build_surfaces
from analysis.decisions import (TOLERANCE, decision_lines, decision_table, long_name,
                                parse_configuration_name, plain_sentence)
from analysis.resample import DEFAULT_N_BOOT
from analysis.fits import frontier_fit
from analysis.prompt_effect import (prompt_effect_figure, prompt_effect_sentence,
                                    prompt_effect_table)
from analysis.records import Records, load_records
from analysis.regimes import (CONFIDENCE_MEANING, MIXED, QUALITY, QUANTITY, REGIME_COLUMNS,
                              REGIMES, UNDETERMINED, boundaries, category, regime_table)
from analysis.tables import (ALL, best_within_budget, best_within_budget_markdown, frontier_table,
                             markdown_table, method_mask, priced, selection_bias_sentence)


def _suffix(surface: Surface, many: bool) -> str:
    if not many:
        return ""
    return "_" + re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(surface.scope))


def _fit_rows(surface: Surface, weak_prices, oracle_price, fit_boot: int):
    """Monotone frontier fit of ``all`` per weak price: (fits by price, table rows)."""
    fits, rows = {}, []
    model, labeler = surface.scope
    for wp in weak_prices:
        cells = priced(surface, oracle_price, wp)
        m = method_mask(surface, ALL)
        fit = frontier_fit(cells["cost"][m], cells["accuracy"][m], surface.boot[m],
                           max_boot=fit_boot)
        fits[float(wp)] = fit
        rows.append(pd.DataFrame({"model": model, "weak_labeler": labeler, "weak_price": float(wp),
                                  "method": ALL, "cost": fit.x, "fit": fit.fit,
                                  "lo": fit.lo, "hi": fit.hi}))
    return fits, rows


def _fraction_fit_rows(surface: Surface, fits) -> list[pd.DataFrame]:
    """Table rows of the per-budget curves of accuracy vs oracle fraction (measured means joined
    by lines, :func:`analysis.fits.fraction_fit`)."""
    variant = figures.main_variant(surface)
    model, labeler = surface.scope
    return [pd.DataFrame({"model": model, "weak_labeler": labeler, "weak_price": pw,
                          "oracle_price": po, "method": variant, "budget": budget,
                          "oracle_fraction": cf.x, "fit": cf.fit, "lo": cf.lo, "hi": cf.hi})
            for (po, pw, budget), cf in fits.items()]


def _missing(row) -> list[str]:
    """``"quantity-dominant (infeasible)"``-style notes for the categories a budget lacked."""
    out = []
    for col, why in (("infeasible_categories", "infeasible: the pool is too small"),
                     ("failed_categories", "its runs failed")):
        value = getattr(row, col, "")
        if isinstance(value, str) and value:
            out += [f"{c} ({why})" for c in value.split(";")]
    return out


def _good_categories(row) -> list[str]:
    """The categories (in :data:`REGIMES` order) of a decision row's good buys."""
    cats = {category(*parse_configuration_name(g))
            for g in (row.good_buys or "").split(";") if g}
    return [c for c in REGIMES if c in cats]


def regime_reading(decisions: pd.DataFrame, level: float = 0.9) -> list[str]:
    """The regime in words that follow from the decisions (never contradicting the answer):
    per budget, the categories of its good buys, or that it is open."""
    out = []
    d = decisions[decisions["method"] == ALL] if len(decisions) else decisions
    for (model, labeler, po, pw), t in d.groupby(["model", "weak_labeler", "oracle_price",
                                                  "weak_price"], sort=False):
        parts = []
        for row in t.sort_values("budget").itertuples():
            cats = _good_categories(row)
            good = [long_name(g) for g in (row.good_buys or "").split(";") if g]
            if not cats:
                parts.append(f"at {row.budget:g} it is still open")
            elif len(good) == 1:
                parts.append(f"at {row.budget:g} the one good buy is {good[0]} ({cats[0]})")
            elif len(cats) == 1:
                parts.append(f"at {row.budget:g} the good buys are all {cats[0]}")
            else:
                parts.append(f"at {row.budget:g} {' and '.join(cats)} configurations are equally "
                             "good buys, so no category is strictly best there, and none need be")
        out.append(f"How to split, for {model} with weak labeller {labeler} (prices oracle "
                   f"{po:g}, weak {pw:g}): " + "; ".join(parts) + ".")
    return out


def recommendation_paragraph(regimes: pd.DataFrame, bounds: pd.DataFrame,
                             bwb: pd.DataFrame, level: float = 0.9,
                             single_seed: bool = False,
                             decisions: pd.DataFrame | None = None) -> str:
    """One paragraph in words: how to split by budget (from the decisions when given), the
    regime test's calls, where they change, and the best method.

    A budget where a category could not be bought says so, and its regime is stated as a
    comparison among the categories that were measured, never as a comparison with the one
    that was not. ``single_seed``: some task had no configuration with two seeds (see
    :mod:`analysis.resample`), which the paragraph then says.
    """
    if regimes.empty:
        return ("No budget of a sweep could be classified (records carry no grid budget), so no "
                "regime is stated; see the best-within-budget table.")
    sentences = regime_reading(decisions, level) if decisions is not None else []
    overall = regimes[regimes["method"] == ALL]
    say = {QUANTITY: "buy only weak labels", QUALITY: "buy only oracle labels",
           MIXED: "buy a mix (weak first, then oracle)"}
    for (model, labeler, pw, po), t in overall.groupby(
            ["model", "weak_labeler", "weak_price", "oracle_price"], sort=False):
        t = t.sort_values("budget")
        parts, caveats = [], []
        for row in t.itertuples():
            missing = _missing(row)
            if missing:
                compared = row.compared_categories or "nothing"
                caveats.append(f"at budget {row.budget:g} the sweep could not buy "
                               f"{' or '.join(missing)}, so "
                               + (f"the call there is among {compared.replace(';', ', ')} only"
                                  if ";" in compared else
                                  f"only {compared} was measured and no regime is stated"))
        complete = t[[not _missing(r) for r in t.itertuples()]]
        for regime in (QUANTITY, MIXED, QUALITY, UNDETERMINED):
            r = t[t["regime"] == regime]
            if r.empty:
                continue
            budgets = ("budget " if len(r) == 1 else "budgets ") + ", ".join(
                f"{b:g}" + ("*" if b not in set(complete["budget"]) else "") for b in r["budget"])
            if regime == MIXED:
                share = ", ".join(f"{100 * f:.0f}%" for f in r["best_oracle_fraction"])
                parts.append(f"at {budgets} {say[regime]}, spending {share} on oracle labels")
            elif regime == UNDETERMINED:
                parts.append(f"at {budgets} it names no category: it asks whether one category "
                             f"is strictly the best at confidence {level:g}, a stronger claim "
                             "than a good buy's (within the tolerance of the best), and it does "
                             "not make every configuration a good buy: `decisions.csv` says "
                             "which are good buys and which are ruled out there")
            else:
                parts.append(f"at {budgets} {say[regime]}")
        sentences.append(f"The regime test, for {model} with weak labeller {labeler} at the "
                         f"sweep's prices (oracle {po:g}, weak {pw:g}): " + "; ".join(parts)
                         + ".")
        if caveats:
            sentences.append("* " + "; ".join(caveats) + ".")
        b = bounds[(bounds["weak_price"] == pw) & (bounds["method"] == ALL)
                   & (bounds["model"] == model) & (bounds["weak_labeler"] == labeler)]
        if len(b):
            sentences.append("The regime changes " + ", ".join(
                f"from {r.from_regime} to {r.to_regime} between budgets {r.budget_below:g} and "
                f"{r.budget_above:g}" for r in b.itertuples()) + ".")
    sentences.append(CONFIDENCE_MEANING)
    if single_seed:
        sentences.append("With one seed per configuration, seed noise could only be estimated "
                         "from the differences between neighbouring configurations, so every "
                         "call is conservative; more seeds (e.g. `--config.seeds=3`) sharpen "
                         "them.")
    sentences += best_method_sentences(bwb)
    sentences.append("For another budget or price pair, run `python -m analysis.recommend`.")
    return " ".join(sentences)


def best_method_sentences(bwb: pd.DataFrame) -> list[str]:
    """Which method wins the best-within-budget cells, and the selection bias of those entries.

    "Best method in k of n cells" is only said of scopes where two or more methods were run:
    with one method it wins every cell by default, and saying so reads like a finding.
    """
    out = []
    if bwb.empty or "method" not in bwb.columns:
        return out
    scope = [c for c in ("model", "weak_labeler") if c in bwb.columns]
    compared = bwb[bwb["method"] != ALL].groupby(scope)["method"].nunique() if scope else \
        pd.Series([bwb.loc[bwb["method"] != ALL, "method"].nunique()])
    several = compared[compared >= 2]
    best = bwb[(bwb["method"] == ALL) & bwb["variant"].notna()]
    if scope:
        best = best[best.set_index(scope).index.isin(several.index)]
    elif several.empty:
        best = best.iloc[:0]
    if len(best):
        wins = best["variant"].value_counts()
        out.append(f"Across the re-priced best-within-budget table, {wins.index[0]} is the best "
                   f"of the {int(several.max())} methods compared in {wins.iloc[0]} of "
                   f"{len(best)} (weak price, budget) cells.")
    bias = selection_bias_sentence(bwb)
    return out + ([bias] if bias else [])


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "-"
        return f"{v:g}" if float(v).is_integer() else f"{v:.3g}"
    return str(v)


def _csv_table(frame: pd.DataFrame, cols, max_rows: int = 40) -> str:
    """A markdown rendering of selected columns of a table (floats to 3 significant places)."""
    if frame.empty:
        return "(none)"
    rows = []
    for r in frame[cols].head(max_rows).itertuples(index=False):
        rows.append([_cell(v) for v in r])
    more = f"\n\n({len(frame) - max_rows} more rows in the CSV)" if len(frame) > max_rows else ""
    return markdown_table(list(cols), rows) + more


def _figures(s: Surface, out: Path, sfx: str, ffits, fr, tol, fits, weak_prices, oracle_price,
             weak_accuracy: float) -> list[tuple[str, list]]:
    """Draw one surface's figures; (name, written paths) each. ``weak_accuracy`` is the weak
    labels' test accuracy, the dashed line of every figure (its y axis is test accuracy)."""
    return [
        (f"accuracy_vs_oracle_fraction{sfx}", figures.accuracy_vs_oracle_fraction(
            s, out / f"accuracy_vs_oracle_fraction{sfx}", weak_accuracy=weak_accuracy)),
        (f"oracle_fraction_fits{sfx}", figures.accuracy_vs_oracle_fraction(
            s, out / f"oracle_fraction_fits{sfx}", fits=ffits, weak_accuracy=weak_accuracy)),
        (f"frontier{sfx}", figures.frontier_figure(
            s, weak_prices, fr, tol, fits, out / f"frontier{sfx}", oracle_price, weak_accuracy)),
        (f"frontier_by_method{sfx}", figures.frontier_by_method(
            s, weak_prices, fr, out / f"frontier_by_method{sfx}", weak_accuracy))]


@dataclasses.dataclass
class Report:
    """What :func:`write_report` wrote: ``files`` by name, and the recommendation paragraph."""

    files: dict[str, Path]
    recommendation: str
    decisions: pd.DataFrame | None = None  # analysis.decisions.decision_table of every surface
    weak_to_strong: pd.DataFrame | None = None  # analysis.weak_to_strong.weak_to_strong_table
    answer: list[str] = dataclasses.field(default_factory=list)  # one plain sentence a budget


def write_report(records: Records, out: Path, weak_prices=None, budgets=None, oracle_price="1",
                 n_boot: int = DEFAULT_N_BOOT, fit_boot: int = 100, seed: int = 0,
                 level: float = 0.9, tolerance: float = TOLERANCE) -> Report:
    """Compute every table, fit and figure from ``records`` and write them under ``out``.

    Raises ValueError when there are no ok records.
    """
    if records.ok.empty:
        c = records.counts
        raise ValueError(f"no ok records to analyse ({c['infeasible']} infeasible, {c['failed']} "
                         f"failed, {c['skipped']} unreadable)")
    out = Path(out)
    ok = records.ok
    if weak_prices is None:
        weak_prices = sorted(ok["prices.weak"].astype(float).unique(), reverse=True)
    weak_prices = [pricing.to_fraction(w) for w in weak_prices]
    if budgets is None and "budget" in ok.columns:
        budgets = sorted(pd.to_numeric(ok["budget"], errors="coerce").dropna().unique())
    budgets = [pricing.to_fraction(b) for b in (budgets or [])]
    surfaces = build_surfaces(ok, n_boot=n_boot, seed=seed, excluded=records.excluded)
    many = len(surfaces) > 1
    frontier, tol_frontiers, regimes, bwb, fit_rows, frac_rows = [], [], [], [], [], []
    decisions, effects = [], []
    written: dict[str, Path] = {}
    figs = []
    for s in surfaces:
        fr = frontier_table(s, weak_prices, oracle_price, "pareto", level)
        tol = frontier_table(s, weak_prices, oracle_price, "tolerance", level)
        fits, rows = _fit_rows(s, weak_prices, oracle_price, fit_boot)
        frontier.append(fr), tol_frontiers.append(tol), fit_rows.extend(rows)
        ffits = figures.fraction_fits(s, max_boot=fit_boot, level=level)
        frac_rows.extend(_fraction_fit_rows(s, ffits))
        regimes.append(regime_table(s, level))
        decisions.append(decision_table(s, level, tolerance))
        effects.append(prompt_effect_table(s, level))
        if budgets:
            bwb.append(best_within_budget(s, weak_prices, budgets, oracle_price, level))
        figs += _figures(s, out, _suffix(s, many), ffits, fr, tol, fits, weak_prices,
                         oracle_price, figures.weak_test_accuracy(ok, s))
    frontier = pd.concat(frontier, ignore_index=True)
    tol_frontiers = pd.concat(tol_frontiers, ignore_index=True)
    regimes = pd.concat([r for r in regimes if len(r)], ignore_index=True) \
        if any(len(r) for r in regimes) else pd.DataFrame(columns=REGIME_COLUMNS)
    bounds = boundaries(regimes)
    bwb = pd.concat(bwb, ignore_index=True) if bwb else pd.DataFrame(
        columns=["weak_price", "budget", "method", "variant", "accuracy", "weak_fraction"])
    decisions = pd.concat(decisions, ignore_index=True)
    tables = {"decisions": decisions, "frontier": frontier, "frontier_tolerance": tol_frontiers,
              "regimes": regimes,
              "regime_boundaries": bounds, "best_within_budget": bwb,
              "frontier_fit": pd.concat(fit_rows, ignore_index=True),
              "oracle_fraction_fit": pd.concat(frac_rows, ignore_index=True) if frac_rows else
              pd.DataFrame(columns=["weak_price", "budget", "oracle_fraction", "fit", "lo", "hi"]),
              "prompt_effect": pd.concat(effects, ignore_index=True),
              # all-weak runs against their ceiling runs (analysis.weak_to_strong)
              "weak_to_strong": weak_to_strong.weak_to_strong_table(
                  records.ok, records.ceiling, n_boot=n_boot, seed=seed, level=level)}
    figs.append(("prompt_effect", prompt_effect_figure(tables["prompt_effect"],
                                                       out / "prompt_effect")))
    for name, table in tables.items():
        written[f"{name}.csv"] = io.write_csv(out / f"{name}.csv", table)
    bwb_md = best_within_budget_markdown(bwb) if len(bwb) else "No budgets given or found.\n"
    written["best_within_budget.md"] = io.write_text(out / "best_within_budget.md", bwb_md)
    for name, paths in figs:
        for p in paths:
            written[p.name] = p
    single_seed = any("no configuration has two seeds" in n for s in surfaces for n in s.notes)
    paragraph = recommendation_paragraph(regimes, bounds, bwb, level, single_seed, decisions)
    answer = answer_sentences(decisions, level)
    md = _report_markdown(records, surfaces, weak_prices, tables, bwb_md, figs, level, paragraph,
                          answer)
    written["report.md"] = io.write_text(out / "report.md", md)
    return Report(written, paragraph, decisions, tables["weak_to_strong"], answer)


def answer_sentences(decisions: pd.DataFrame, level: float = 0.9) -> list[str]:
    """One plain sentence per budget (across all variants, each sweep's own prices), headed by
    the scope when there are several."""
    d = decisions[decisions["method"] == ALL] if len(decisions) else decisions
    groups = list(d.groupby(["model", "weak_labeler", "oracle_price", "weak_price"], sort=False))
    out = []
    for (model, labeler, po, pw), t in groups:
        if len(groups) > 1:
            out.append(f"{model}, weak labeller {labeler}, prices oracle {po:g}, weak {pw:g}:")
        out += [plain_sentence(r, level) for r in t.sort_values("budget").itertuples()]
    return out


def _decisions_markdown(decisions: pd.DataFrame, level: float) -> list[str]:
    """The report's decisions section: one line per budget across all variants, at each sweep's
    own prices (``decisions.csv`` has every variant too)."""
    pct = f"{100 * level:.0f}%"
    lines = ["## Decisions (at each sweep's own prices)", "",
             f"For each budget: every configuration's simultaneous one-sided {pct} upper bound "
             "on how far it can lie below the best configuration measured there (its regret; "
             "multiple comparisons with the best, Hsu 1984); the good buys, those whose bound "
             "is at most the tolerance (`good_buys`); the one to buy, the smallest bound (ties "
             "to the higher mean, then to fewer oracle labels); the accuracy to expect from it, "
             "its measured mean less the bias of having chosen it (a bootstrap of the whole "
             f"choose-then-report procedure), with a {pct} band for its true mean; the "
             f"configurations ruled out (regret above 0 at {pct}, simultaneous over all pairs), "
             "named; for a budget still open, what keeps it open and what would settle it "
             "(`remaining`); and the seeds each configuration got. A category not measured at "
             "a budget is never ruled out. All from the same paired resamples. Per variant: "
             "`decisions.csv`.", ""]
    body = decision_lines(decisions, "all", level)
    return lines + ([f"    {line}" for line in body] if body else ["(no budget)"]) + [""]


def _prompt_effect_markdown(table: pd.DataFrame, level: float) -> list[str]:
    """The report's section on the few-shot prompt's effect (:mod:`analysis.prompt_effect`);
    nothing when no grid point ran both kshot_sft and seq_sft."""
    if table.empty:
        return []
    return ["## The prompt's effect (k-shot minus seq_sft)", "",
            prompt_effect_sentence(table, level) + " Each interval is the central "
            f"{100 * level:.0f}% of the difference over the same paired resamples (seeds and "
            "test examples drawn once for both methods). Table: `prompt_effect.csv`.", "",
            _csv_table(table, ["weak_price", "budget", "oracle_fraction", "variant", "n_weak",
                               "n_oracle", "seq_sft_accuracy", "kshot_accuracy", "difference",
                               "difference_lo", "difference_hi", "n_seeds"]), ""]


def _report_markdown(records: Records, surfaces, weak_prices, tables, bwb_md, figs, level,
                     paragraph: str, answer: list[str]) -> str:
    c = records.counts
    regimes, bounds = tables["regimes"], tables["regime_boundaries"]
    lines = ["# Label quantity vs quality: analysis report", "",
             "## The answer", "", *[f"- {a}" for a in answer], "",
             "## Recommendation", "",
             paragraph, "",
             *_decisions_markdown(tables["decisions"], level),
             *_prompt_effect_markdown(tables["prompt_effect"], level),
             *weak_to_strong.markdown(tables["weak_to_strong"], level),
             "## Records", "",
             f"{c['ok']} ok runs analysed; {c['infeasible']} infeasible and {c['failed']} failed "
             f"runs excluded; {c['skipped']} unreadable file(s)/line(s) skipped; "
             f"{c['duplicates']} duplicate run id(s) ignored.", ""]
    if records.skipped:
        lines += ["Skipped:", ""] + [f"- `{w}`: {r}" for w, r in records.skipped[:20]] + [""]
    if records.variant_splits:
        lines += ["Runs of one method that differ in a config value that defines a run are kept "
                  "apart as separate variants:", ""] + \
            [f"- {line}" for line in records.variant_splits] + [""]
    for s in surfaces:
        model, labeler = s.scope
        lines.append(f"- {model}, weak labeller {labeler}: tasks {s.cells['tasks'].iloc[0]}, "
                     f"{len(s.cells)} cells, variants {', '.join(sorted(s.cells['variant'].unique()))}")
    notes = list(dict.fromkeys(n for s in surfaces for n in s.notes))
    lines += ["", f"Costs re-priced exactly at weak prices "
              f"{', '.join(f'{float(w):g}' for w in weak_prices)}. Every band, frontier frequency "
              f"and confidence below comes from one resampling: a resample draws the seeds "
              f"once for all cells (a seed's weak labeller and pools go into every cell it "
              f"ran in) and the test examples once for all runs of a task, "
              f"{int(surfaces[0].boot.shape[1])} resamples; bands are central "
              f"{100 * level:.0f}% intervals of the resampled mean accuracy. "
              + " ".join(notes), "",
              "## Regimes (at each sweep's own prices)", "",
              "The best configuration of a budget is quantity-dominant if it bought no oracle "
              "labels, quality-dominant if it bought no weak labels and mixed otherwise. Its "
              f"category is named only at confidence >= {level:g}; else `undetermined`. "
              + CONFIDENCE_MEANING + " `margin` is the lead in accuracy of the best category "
              "over the best of the others; `infeasible_categories` lists categories the grid "
              "planned but the pools could not supply at that budget (the call is then among "
              "the compared ones only); `best_oracle_fraction` is the share of the best run's "
              "spend on oracle labels. Full table: `regimes.csv`.", "",
              _csv_table(regimes[regimes["method"] == ALL] if len(regimes) else regimes,
                         ["weak_price", "budget", "regime", "confidence", "margin",
                          "infeasible_categories", "best_variant", "best_n_weak", "best_n_oracle",
                          "best_oracle_fraction", "accuracy"]),
              "", "Boundaries (`regime_boundaries.csv`):", "",
              _csv_table(bounds, ["weak_price", "method", "from_regime", "to_regime",
                                  "budget_below", "budget_above"]),
              "", "## Best within budget", "", bwb_md,
              "## Frontier (all methods)", "",
              "Pareto frontier: points not beaten by any cheaper-or-equal point with higher "
              "accuracy; `frontier_frequency` is the share of resamples whose re-selected "
              "frontier keeps the point (a stability measure, not a test). Per-variant rows "
              "and the study's tolerance frontier are in `frontier.csv` and "
              "`frontier_tolerance.csv`.", "",
              _csv_table(tables["frontier"][tables["frontier"]["method"] == ALL],
                         ["weak_price", "variant", "n_weak", "n_oracle", "cost", "accuracy",
                          "accuracy_std", "weak_fraction", "frontier_frequency"]),
              "", "## Figures", ""]
    captions = {
        "accuracy_vs_oracle_fraction": "accuracy vs oracle spending fraction, one curve per "
                                       "budget with 90% bands, the weak labels' test accuracy "
                                       "dashed",
        "oracle_fraction_fits": "per budget, the measured means (markers, 90% bars) joined by "
                                "lines, with the 90% band of the same joined resamples shaded",
        "frontier_by_method": "Pareto frontier of each method variant vs cost",
        "prompt_effect": "k-shot minus seq_sft accuracy vs budget, one line per oracle "
                         "fraction, with 90% intervals of the paired difference",
        "frontier": "all configurations coloured by weak fraction, the overall frontier, the "
                    "study's tolerance frontier and a monotone curve through the frontier points "
                    "with its 90% band (the same curve through the same cells' resampled means); "
                    "bars on frontier points are their 90% bands",
    }
    for name, paths in figs:
        if not paths:
            continue
        key = next(k for k in sorted(captions, key=len, reverse=True) if name.startswith(k))
        lines += [f"![{captions[key]}]({name}.png)", "", f"*{name}*: {captions[key]} "
                  f"([PDF]({name}.pdf)).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", nargs="+", required=True, help="folders or JSONL files of records")
    ap.add_argument("--out", required=True)
    ap.add_argument("--weak_prices", nargs="+", default=None, type=str,
                    help="weak prices to re-price at (default: the sweeps' own)")
    ap.add_argument("--budgets", nargs="+", default=None, type=str,
                    help="budgets for the best-within-budget table (default: the sweeps' own)")
    ap.add_argument("--oracle_price", default="1", type=str)
    ap.add_argument("--n_boot", default=DEFAULT_N_BOOT, type=int,
                    help="resamples (each draws seeds once for all cells and test "
                         "examples once per task)")
    ap.add_argument("--fit_boot", default=100, type=int, help="resamples used for curve-fit bands")
    ap.add_argument("--level", default=0.9, type=float, help="band and regime confidence level")
    ap.add_argument("--tolerance", default=TOLERANCE, type=float,
                    help="a good buy is at most this far below the best configuration measured "
                         "at its budget (simultaneous regret bound)")
    ap.add_argument("--seed", default=0, type=int)
    args = ap.parse_args(argv)
    if not 0 < args.level < 1:
        ap.error(f"--level must be in (0, 1), got {args.level}")
    try:
        records = load_records(args.results)
        written = write_report(records, Path(args.out), args.weak_prices, args.budgets,
                               args.oracle_price, args.n_boot, args.fit_boot, args.seed,
                               args.level, args.tolerance).files
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = records.counts
    print(f"{c['ok']} ok, {c['infeasible']} infeasible, {c['failed']} failed, {c['skipped']} "
          f"skipped; wrote {len(written)} files to {args.out} (see report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
