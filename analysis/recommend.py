"""Recommend a label mix and method for a budget at given prices.

    python -m analysis.recommend --results WORKDIR/runs --budget 64 --oracle_price 1 --weak_price 0.1

The recommendation is the decision of :mod:`analysis.decisions` among the *measured*
configurations that the budget affords at these prices (costs re-priced exactly from the counts):
the good buys (simultaneous 90% regret bound at most ``--tolerance`` below the best of those
configurations), the one to buy (the smallest bound; ties to the higher mean, then to fewer
oracle labels), the accuracy to expect from it corrected for having chosen it with a 90% band,
and the configurations and categories ruled out at 90% (simultaneous over all pairs), all from
one set of paired resamples (seeds and test examples drawn jointly for every cell,
:mod:`analysis.resample`).
The regime of the choice (:mod:`analysis.regimes`) is reported with the p-value of its category's
lead. Categories the sweep could not buy at this budget (infeasible or failed runs) are named,
since they were never compared. The same oracle share scaled to spend the whole budget is
reported beside it, as an extrapolation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from fractions import Fraction

import numpy as np

from analysis import pricing
from analysis.aggregate import Surface, build_surfaces
from analysis.decisions import TOLERANCE, decision_row, long_name
from analysis.records import Records, as_frame, load_records
from analysis.regimes import REGIMES, category, classify
from analysis.resample import DEFAULT_N_BOOT
from analysis.tables import ALL, method_mask, priced


@dataclasses.dataclass
class Recommendation:
    """What to buy, with what method, and what accuracy to expect."""

    n_weak: int
    n_oracle: int
    method: str
    cost: float
    expected_accuracy: float
    accuracy_band: tuple[float, float]
    n_seeds: int
    regime: str
    category: str | None
    confidence: float
    oracle_fraction: float
    scaled_n_weak: int
    scaled_n_oracle: int
    oracle_price: float
    weak_price: float
    budget: float
    model: str
    weak_labeler: str
    tasks: str
    infeasible_categories: tuple[str, ...] = ()
    compared_cheaper: tuple[str, ...] = ()
    regret_upper: float = 0.0
    ruled_out_categories: tuple[str, ...] = ()
    ruled_out_configurations: tuple[str, ...] = ()
    n_candidates: int = 1
    level: float = 0.9
    measured_accuracy: float = float("nan")  # the chosen one's mean, before the correction
    good_buys: tuple[str, ...] = ()  # n_weak+n_oracle, smallest bound first
    tolerance: float = 0.02
    remaining: str = ""

    @property
    def p_value(self) -> float:
        """p-value of the lead of the best configuration's category (``1 - confidence``)."""
        return 1.0 - self.confidence

    def summary(self) -> str:
        """A few human-readable lines."""
        lo, hi = self.accuracy_band
        pct = f"{100 * self.level:.0f}%"
        ruled = ", ".join(self.ruled_out_categories) or "no category"
        good = "; ".join(map(long_name, self.good_buys))
        lines = [
            f"budget {self.budget:g} at prices oracle {self.oracle_price:g}, weak {self.weak_price:g} "
            f"({self.model}, weak labeller {self.weak_labeler}, tasks {self.tasks}):",
            (f"  good buys (each at most {self.tolerance:g} below the best of the "
             f"{self.n_candidates} measured configurations this budget affords, {pct} "
             f"simultaneous): {good}" if good else
             f"  no configuration is known to be within {self.tolerance:g} of the best of the "
             f"{self.n_candidates} this budget affords: {self.remaining}"),
            f"  buy n_weak={self.n_weak}, n_oracle={self.n_oracle} (cost {self.cost:g}, "
            f"{100 * self.oracle_fraction:.0f}% of it on oracle labels) and use {self.method}: "
            "the smallest regret bound",
            f"  expect accuracy {self.expected_accuracy:.3f} ({pct} band {lo:.3f}-{hi:.3f}: its "
            f"mean over {self.n_seeds} seeds, {self.measured_accuracy:.3f}, less the bias of "
            "having chosen it, from a bootstrap of the choose-then-report procedure)",
            f"  at most {self.regret_upper:.3f} below the best of the {self.n_candidates} measured "
            f"configurations this budget affords ({pct}, simultaneous: multiple comparisons with "
            "the best)",
            f"  ruled out ({pct}, simultaneous over all pairs): {ruled}; "
            f"{len(self.ruled_out_configurations)} of {self.n_candidates} configurations"
            + _listed([long_name(r) for r in self.ruled_out_configurations]),
            f"  regime: {self.regime}" + (
                f" (the best is {self.category}; p = {self.p_value:.2g} for its lead over the "
                f"best of the other categories, after picking the best of several "
                f"configurations; named when p <= {1 - self.level:.2f})"
                if np.isfinite(self.confidence) else ""),
        ]
        for c in self.infeasible_categories:
            lines.append(f"  {c}: the sweep could not buy it at this budget (infeasible or "
                         "failed); " + ("compared with a cheaper measured point of it instead"
                                        if c in self.compared_cheaper else "not compared"))
        if (self.scaled_n_weak, self.scaled_n_oracle) != (self.n_weak, self.n_oracle):
            lines.append(f"  same oracle share over the whole budget (extrapolated, not measured): "
                         f"n_weak={self.scaled_n_weak}, n_oracle={self.scaled_n_oracle}")
        return "\n".join(lines)


def _listed(names, most: int = 6) -> str:
    """`` (a; b; c and 4 more)`` for a printed list, empty for none."""
    if not names:
        return ""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f" ({'; '.join(names[:most])}{more})"


def parse_prices(prices) -> tuple[Fraction, Fraction]:
    """``{"oracle": 1, "weak": 0.1}`` or ``(oracle, weak)`` -> exact ``(oracle, weak)``."""
    if isinstance(prices, dict):
        missing = [k for k in ("oracle", "weak") if k not in prices]
        if missing:
            raise ValueError(f"prices is missing {missing}; pass {{'oracle': 1, 'weak': 0.1}}")
        po, pw = prices["oracle"], prices["weak"]
    else:
        try:
            po, pw = prices
        except (TypeError, ValueError) as e:
            raise ValueError(f"prices must be {{'oracle': p, 'weak': q}} or (p, q), got {prices!r}") from e
    po, pw = pricing.to_fraction(po), pricing.to_fraction(pw)
    if po <= 0 or pw <= 0:
        raise ValueError(f"prices must be positive, got oracle={po}, weak={pw}")
    return po, pw


def pick_surface(surfaces: list[Surface], model: str | None = None,
                 weak_labeler: str | None = None) -> Surface:
    """The one surface matching ``model``/``weak_labeler``; a ValueError lists the choices."""
    match = [s for s in surfaces if (model is None or s.scope[0] == model)
             and (weak_labeler is None or s.scope[1] == weak_labeler)]
    if len(match) != 1:
        choices = [f"model={m!r} weak_labeler={w!r}" for m, w in (s.scope for s in surfaces)]
        raise ValueError(f"{len(match)} result scopes match model={model!r} "
                         f"weak_labeler={weak_labeler!r}; choose one of: {choices}")
    return match[0]


def recommend(prices, budget, results, *, method: str | None = None, model: str | None = None,
              weak_labeler: str | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
              level: float = 0.9, tolerance: float = TOLERANCE) -> Recommendation:
    """Predicted best (n_weak, n_oracle, method) for ``budget`` at ``prices``.

    Args:
      prices: ``{"oracle": 1, "weak": 0.1}`` or ``(oracle, weak)``.
      budget: total spend allowed, in the same units as the prices.
      results: a :class:`~analysis.aggregate.Surface`, a list of them, a
        :class:`~analysis.records.Records`, a DataFrame of ok runs, or folder(s) to load.
      method: restrict to one method variant (default: any).
      model, weak_labeler: choose the scope when the results hold several.
    Raises ValueError when nothing measured is affordable.
    """
    po, pw = parse_prices(prices)
    b = pricing.to_fraction(budget)
    if isinstance(results, Surface):
        surface = results
    elif isinstance(results, list) and results and all(isinstance(s, Surface) for s in results):
        surface = pick_surface(results, model, weak_labeler)
    else:
        excluded = results.excluded if isinstance(results, Records) else None
        if isinstance(results, (str, list, tuple)) or hasattr(results, "__fspath__"):
            results = load_records(results)
            excluded = results.excluded
        surface = pick_surface(build_surfaces(as_frame(results), n_boot, seed, excluded),
                               model, weak_labeler)
    cells = priced(surface, po, pw)
    if method is not None and method != ALL and method not in set(cells["variant"]):
        raise ValueError(f"method {method!r} not in the results; have {sorted(set(cells['variant']))}")
    afford = pricing.affordable(cells["n_weak"], cells["n_oracle"], po, pw, b)
    afford &= method_mask(surface, method or ALL)
    if not afford.any():
        cheapest = cells["cost"].min()
        raise ValueError(f"no measured configuration costs <= budget {float(b):g} at prices "
                         f"oracle {float(po):g}, weak {float(pw):g}; the cheapest costs {cheapest:g}")
    idx = np.flatnonzero(afford)
    cats = [category(w, o) for w, o in zip(cells["n_weak"].iloc[idx], cells["n_oracle"].iloc[idx])]
    cl = classify(cells["accuracy"].iloc[idx], surface.boot[idx], cats, level)
    test = (None, None) if surface.test_dev is None else \
        (surface.test_dev[idx], surface.test_run_var[idx])
    decision = decision_row(cells.iloc[idx], surface.boot[idx], level, tolerance, *test,
                            surface.n_test)
    missing = _unmeasured_categories(surface, po, pw, b, method)
    stand_in = tuple(c for c in missing if c in set(cats))
    chosen = (cells["variant"] == decision["variant"]) & (cells["n_weak"] == decision["n_weak"]) \
        & (cells["n_oracle"] == decision["n_oracle"]) & afford
    best = cells[chosen].iloc[0]
    lo, hi = decision["expected_lo"], decision["expected_hi"]
    n_w, n_o = int(best["n_weak"]), int(best["n_oracle"])
    share = Fraction(n_o) * po / pricing.exact_cost(n_w, n_o, po, pw)
    scaled_w, scaled_o = pricing.grid_counts(b, share, po, pw)
    return Recommendation(
        n_weak=n_w, n_oracle=n_o, method=str(best["variant"]), cost=float(best["cost"]),
        expected_accuracy=decision["expected_accuracy"], accuracy_band=(float(lo), float(hi)),
        n_seeds=int(best["n_seeds"]), regime=cl.regime, category=cl.category,
        confidence=cl.confidence, oracle_fraction=float(share), scaled_n_weak=scaled_w,
        scaled_n_oracle=scaled_o, oracle_price=float(po), weak_price=float(pw), budget=float(b),
        model=surface.scope[0], weak_labeler=surface.scope[1], tasks=str(best["tasks"]),
        infeasible_categories=missing, compared_cheaper=stand_in,
        regret_upper=decision["regret_upper"],
        ruled_out_categories=tuple(filter(None, decision["ruled_out_categories"].split(";"))),
        ruled_out_configurations=tuple(filter(None,
                                              decision["ruled_out_configurations"].split(";"))),
        n_candidates=decision["n_candidates"], level=level,
        measured_accuracy=float(best["accuracy"]),
        good_buys=tuple(filter(None, decision["good_buys"].split(";"))), tolerance=tolerance,
        remaining=decision["remaining"])


def _unmeasured_categories(surface: Surface, po, pw, budget, method) -> tuple[str, ...]:
    """Categories the sweep planned at exactly this budget and these prices but never measured
    there (infeasible or failed runs)."""
    um, mem = surface.unmeasured, surface.members

    def at(t):
        m = (t["sweep_oracle_price"] == float(po)) & (t["sweep_weak_price"] == float(pw)) & \
            (t["budget"] == float(budget))
        return t[m & (t["variant"] == method)] if method not in (None, ALL) else t[m]
    if um.empty:
        return ()
    planned = {category(w, o) for w, o in zip(at(um)["n_weak"], at(um)["n_oracle"])}
    measured = {category(w, o) for w, o in zip(at(mem)["n_weak"], at(mem)["n_oracle"])}
    return tuple(c for c in REGIMES if c in planned and c not in measured)


def main(argv=None) -> int:
    """CLI: print the recommendation for one budget and price pair."""
    ap = argparse.ArgumentParser(prog="python -m analysis.recommend", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", nargs="+", required=True, help="folders or JSONL files of records")
    ap.add_argument("--budget", required=True, type=str)
    ap.add_argument("--oracle_price", default="1", type=str)
    ap.add_argument("--weak_price", required=True, type=str)
    ap.add_argument("--method", default=None, help="restrict to one method variant")
    ap.add_argument("--model", default=None)
    ap.add_argument("--weak_labeler", default=None)
    ap.add_argument("--n_boot", default=DEFAULT_N_BOOT, type=int,
                    help="resamples (seeds and test examples drawn jointly)")
    ap.add_argument("--seed", default=0, type=int)
    ap.add_argument("--tolerance", default=TOLERANCE, type=float,
                    help="a good buy is at most this far below the best affordable configuration")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    try:
        rec = recommend({"oracle": args.oracle_price, "weak": args.weak_price}, args.budget,
                        args.results, method=args.method, model=args.model,
                        weak_labeler=args.weak_labeler, n_boot=args.n_boot, seed=args.seed,
                        tolerance=args.tolerance)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(rec) | {"p_value": rec.p_value}, indent=2) if args.json
          else rec.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
