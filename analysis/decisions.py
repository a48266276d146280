"""A decision per budget (docs/design.md#decisions): the good buys, the one to buy, the accuracy
to expect from it, what is ruled out, and what keeps an open budget open.

A regime name answers "which of three categories is strictly best", which a few seeds can rarely
settle at margins of 0.01-0.03; and "buy the most accurate" prints a coin flip as a decision when
the runner-up is 0.005 behind with a standard error of 0.02. A user splitting a budget needs
something else, and the same paired resamples (:mod:`analysis.resample`: seeds and test
examples drawn jointly) give it:

* **every configuration's regret bound**: a one-sided 90% upper bound on how far its true
  accuracy lies below the best configuration measured at that budget. Multiple comparisons with
  the best (Hsu 1984): with ``T_ij = ((B_j - A_j) - (B_i - A_i)) / se_ij`` the studentised centred
  resampled differences and ``q`` the ``level`` quantile of ``max_{j != i} T_ij``, the bounds
  ``mu_i - mu_j <= A_i - A_j + q se_ij`` hold for every ``j`` at once when ``i`` is the truly
  best cell, and since the regret of ``c`` is ``mu_i - mu_c`` for that ``i``,
  ``regret <= max(0, max_j (A_j - A_c + q se_cj))`` holds at ``level`` for every ``c`` at once.
  Which cell is truly best is unknown; ``q`` is computed with the most accurate one standing in
  for it (the usual bootstrap plug-in). Studentising keeps a noisy competitor from setting the
  bar for all the others;
* **the good buys**: the configurations whose bound is at most the tolerance
  (``analysis.tolerance``, :data:`TOLERANCE`), all within it of the best at once; **the one to
  buy**: the smallest bound (minimax regret among the measured configurations), ties to the
  higher mean accuracy, then to fewer oracle labels;
* **the accuracy to expect** from it: its mean less the bias of having chosen it, with a band for
  its true mean, from a bootstrap of the whole choose-then-report procedure
  (:func:`analysis.tables.chosen_optimism`);
* **what is ruled out**: configuration ``j`` when its regret's lower bound is above 0,
  ``max_i (A_i - A_j - q2 se_ij) > 0``, with ``q2`` the ``level`` quantile of the maximum of
  ``|T_ij|`` over all pairs (simultaneous over all pairs, so the whole ruled-out list holds at
  ``level`` together). A category (:data:`analysis.regimes.REGIMES`) is ruled out when every one
  of its measured configurations is; a category not measured at a budget (infeasible or never
  planned) is never ruled out but listed as not measured;
* **what keeps a budget open** when nothing is a good buy: the contenders, and how many seeds
  each, or how large a test set, would settle it (:class:`Decision`); :mod:`analysis.settle`
  acts on it.

``se_ij`` is a robust scale of the resampled difference (half its 15.9-84.1% range): the seed part
of a resample is Student-t on few degrees of freedom, whose variance may not exist.

:func:`decision_table` gives the decisions at each sweep's own prices and budgets (budget
membership as in :func:`analysis.regimes.regime_table`), per method variant and across all
(``all``); ``python -m analysis.recommend`` re-prices for any budget and price pair.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.aggregate import Surface
from analysis.fits import percentile_band
from analysis.regimes import REGIMES, budget_points, category
from analysis.resample import robust_scale
from analysis.tables import chosen_optimism

LEVEL = 0.9
# analysis.tolerance: how far below the best configuration measured at a budget a good buy may
# be (accuracy points / 100). 0.02 is about the test-set noise of one run's accuracy at the
# default's 1,000 test examples (0.014) and half the smallest margin the study's regime
# boundaries move by; a user who must tell 0.01 apart sets it lower and pays in seeds.
TOLERANCE = 0.02
DECISION_COLUMNS = ["model", "weak_labeler", "tasks", "weak_price", "oracle_price", "budget",
                    "method", "variant", "n_weak", "n_oracle", "cost", "accuracy", "accuracy_lo",
                    "accuracy_hi", "expected_accuracy", "expected_lo", "expected_hi",
                    "selection_bias", "regret_upper", "tolerance", "good_buys", "n_good_buys",
                    "remaining", "contenders", "seeds", "ruled_out_categories",
                    "ruled_out_configurations", "n_ruled_out", "n_candidates",
                    "not_measured_categories", "n_seeds"]


@dataclasses.dataclass
class Decision:
    """Outcome of :func:`decide` over ``n`` candidate cells.

    Attributes:
      chosen: index of the configuration to buy: the smallest regret bound, ties to the higher
        mean accuracy, then to fewer oracle labels.
      accuracy_band: central ``level`` band of its resampled mean accuracy (not corrected for
        the choice).
      regret_upper: its one-sided simultaneous upper bound on regret (0 when nothing can beat
        it).
      regret_lower: [n] simultaneous lower bound on each candidate's regret (>= 0).
      ruled_out: [n] whether a candidate's regret is bounded away from 0.
      q_best, q_pairs: the studentised critical values behind the two.
      regret_uppers: [n] every candidate's upper bound (simultaneous with the chosen one's).
      good: [n] regret_uppers <= tolerance: the good buys.
      expected, expected_band: the chosen cell's accuracy corrected for having been chosen, and
        a ``level`` band for its true mean (:func:`analysis.tables.chosen_optimism`).
      contenders: [n] the cells that keep an open decision open (the chosen one and those whose
        comparison with it leaves its bound above the tolerance); all False when settled.
      seeds_needed: projected seeds per contender at which the bound would reach the tolerance
        (inf when the test set's noise alone keeps it above; NaN when settled or unknown).
      test_floor: the chosen cell's bound if seeds were unlimited (test-set noise only; NaN
        unknown).
      test_factor: how many times larger a test set would bring ``test_floor`` to the tolerance
        (NaN when seeds can settle it or nothing is known).
    """

    chosen: int
    accuracy_band: tuple[float, float]
    regret_upper: float
    regret_lower: np.ndarray
    ruled_out: np.ndarray
    q_best: float
    q_pairs: float
    regret_uppers: np.ndarray = None
    good: np.ndarray = None
    expected: float = float("nan")
    expected_band: tuple[float, float] = (float("nan"), float("nan"))
    contenders: np.ndarray = None
    seeds_needed: float = float("nan")
    test_floor: float = float("nan")
    test_factor: float = float("nan")

    @property
    def settled(self) -> bool:
        return not bool(self.contenders.any())


def pair_statistics(acc, boot, chosen: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(se, t_chosen, t_all)`` of the studentised centred resampled differences
    ``T[i, j, b] = ((B_j - A_j) - (B_i - A_i)) / se[i, j]`` (0 where ``se`` is 0):
    ``se`` [n, n]; ``t_chosen`` [n_boot] the max over ``j != chosen`` of ``T[chosen, j]``;
    ``t_all`` [n_boot] the max over all ordered pairs. One row ``i`` at a time, so memory stays
    [n, n_boot] however many configurations compete."""
    acc = np.asarray(acc, dtype=np.float64)
    centred = (np.asarray(boot, dtype=np.float64) - acc[:, None]).astype(np.float32)
    n, n_boot = centred.shape
    se = np.zeros((n, n))
    t_chosen, t_all = np.full(n_boot, -np.inf), np.full(n_boot, -np.inf)
    for i in range(n):
        diff = centred - centred[i]                                        # [n, B]: j - i
        se[i] = robust_scale(diff, axis=1)
        t = np.divide(diff, se[i][:, None].astype(np.float32), out=np.zeros_like(diff),
                      where=se[i][:, None] > 0)
        t[i] = -np.inf
        top = t.max(axis=0)
        t_all = np.maximum(t_all, top)
        if i == chosen:
            t_chosen = top
    return se, t_chosen, t_all


def _pair_scale(dev: np.ndarray, c: int) -> np.ndarray:
    """[n] robust scale of ``dev[j] - dev[c]`` for every ``j``."""
    return robust_scale(dev - dev[c], axis=1)


def _openness(acc, se, q, c, tolerance, n_seeds, test_dev, test_run_var):
    """``(contenders, seeds_needed, test_floor, test_factor)`` of an open decision (see
    :class:`Decision`). The seed part of each pair's scale shrinks as ``1 / sqrt(seeds)``; the
    test part that is the cell's own (``test_dev`` less the runs' own test noise) does not."""
    gap = acc - acc[c]                                                      # A_j - A_c
    contenders = gap + q * se[c] > tolerance
    contenders[c] = True
    others = np.flatnonzero(contenders & (np.arange(len(acc)) != c))
    floor = np.zeros(len(acc))
    if test_dev is not None:
        var = _pair_scale(np.asarray(test_dev, dtype=np.float64), c) ** 2
        shrinks = np.asarray(test_run_var, dtype=float)
        floor = np.sqrt(np.maximum(0.0, var - shrinks - shrinks[c]))
        floor[c] = 0.0
    test_floor = float(max(0.0, (gap + q * floor)[np.arange(len(acc)) != c].max())) \
        if test_dev is not None else float("nan")
    room = tolerance - gap[others]
    if test_dev is not None and test_floor > tolerance:
        with np.errstate(divide="ignore"):
            factor = np.where(room > 0, (q * floor[others] / np.maximum(room, 1e-12)) ** 2,
                              np.inf)
        return contenders, float("inf"), test_floor, float(factor.max())
    n = float(n_seeds[c]) if n_seeds is not None else float("nan")
    target = (room / q) ** 2 - floor[others] ** 2
    seed_var = np.maximum(se[c, others] ** 2 - floor[others] ** 2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(target > 0, n * seed_var / np.maximum(target, 1e-12), np.inf)
    return contenders, float(np.ceil(need.max())) if len(need) else n, test_floor, float("nan")


def decide(acc, boot, cells: pd.DataFrame | None = None, level: float = LEVEL,
           tolerance: float = TOLERANCE, test_dev=None, test_run_var=None) -> Decision:
    """The decision among ``n`` candidate cells (module docstring).

    Args:
      acc: [n] mean accuracies; boot: [n, n_boot] their paired resamples.
      cells: the candidates' rows (``n_oracle``, ``n_seeds``) for the tie-break to fewer oracle
        labels and the seeds projection; without it ties go to the first.
      level: the one-sided level of the regret bounds and of the ruled-out list.
      tolerance: a good buy's regret bound is at most this.
      test_dev, test_run_var: the test-set part of ``boot`` and the share of its variance more
        seeds would shrink (:class:`analysis.aggregate.Surface`), to say whether seeds or a
        larger test set would settle an open decision; None: not said.
    """
    acc = np.asarray(acc, dtype=float)
    boot = np.asarray(boot).reshape(len(acc), -1)
    if len(acc) == 0:
        raise ValueError("decide needs at least one candidate cell, got none")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    n = len(acc)
    oracle = cells["n_oracle"].to_numpy(dtype=float) if cells is not None else np.zeros(n)
    n_seeds = cells["n_seeds"].to_numpy(dtype=float) \
        if cells is not None and "n_seeds" in cells else None
    optimism = chosen_optimism(acc, boot)
    if n == 1:
        lo, hi = percentile_band(boot[0][:, None].astype(float), level)
        return Decision(0, (float(lo[0]), float(hi[0])), 0.0, np.zeros(1), np.zeros(1, bool),
                        np.nan, np.nan, np.zeros(1), np.ones(1, bool), float(acc[0]),
                        (float(lo[0]), float(hi[0])), np.zeros(1, bool))
    lead = int(np.argmax(acc))  # stands in for the truly best cell (the bootstrap plug-in)
    se, t_lead, t_all = pair_statistics(acc, boot, lead)
    q_best = float(np.quantile(t_lead, level))
    q_pairs = float(np.quantile(t_all, level))
    gap = acc[None, :] - acc[:, None]                                        # [i, j]: A_j - A_i
    bound = gap + q_best * se
    np.fill_diagonal(bound, -np.inf)
    uppers = np.maximum(0.0, bound.max(axis=1))
    c = int(np.lexsort((oracle, -acc, uppers))[0])
    lo, hi = percentile_band(boot[c][:, None].astype(float), level)
    lower = gap - q_pairs * se                # [i, j]: lower bound on mu_j - mu_i <= regret_i
    np.fill_diagonal(lower, 0.0)
    regret_lower = np.maximum(0.0, lower.max(axis=1))
    tail = (1 - level) / 2
    err_lo, err_hi = np.quantile(optimism, [tail, 1 - tail])
    d = Decision(c, (float(lo[0]), float(hi[0])), float(uppers[c]), regret_lower,
                 regret_lower > 0, q_best, q_pairs, uppers, uppers <= tolerance + 1e-12,
                 float(acc[c] - optimism.mean()),
                 (float(acc[c] - err_hi), float(acc[c] - err_lo)), np.zeros(n, bool))
    if uppers[c] > tolerance + 1e-12:
        d.contenders, d.seeds_needed, d.test_floor, d.test_factor = _openness(
            acc, se, q_best, c, tolerance, n_seeds, test_dev, test_run_var)
    return d


def ruled_out_categories(categories, ruled_out) -> list[str]:
    """Categories every measured configuration of which is ruled out (in :data:`REGIMES`
    order); a category with no measured configuration is never among them."""
    cats = np.asarray([c if c is not None else "" for c in categories], dtype=object)
    ruled_out = np.asarray(ruled_out, dtype=bool)
    return [c for c in REGIMES if (cats == c).any() and ruled_out[cats == c].all()]


def configuration_name(n_weak: int, n_oracle: int, variant: str = "",
                       many_variants: bool = False) -> str:
    """``"320 weak"``, ``"32 oracle"`` or ``"70 weak + 25 oracle"`` (with ``" (variant)"`` when
    several variants compete)."""
    w, o = int(n_weak), int(n_oracle)
    name = f"{w} weak" if not o else f"{o} oracle" if not w else f"{w} weak + {o} oracle"
    return name + (f" ({variant})" if many_variants else "")


def short_name(n_weak: int, n_oracle: int, variant: str = "", many_variants: bool = False) -> str:
    """``"320+0"`` (``n_weak+n_oracle``, with ``" (variant)"`` when several variants compete):
    the form of the ``good_buys``, ``contenders`` and ``seeds`` columns."""
    return f"{int(n_weak)}+{int(n_oracle)}" + (f" ({variant})" if many_variants else "")


def parse_configuration_name(name: str) -> tuple[int, int]:
    """(n_weak, n_oracle) of a :func:`short_name` or :func:`configuration_name` (a variant
    suffix is ignored)."""
    name = name.split(" (")[0].strip()
    if "+" in name and "weak" not in name and "oracle" not in name:
        w, o = name.split("+")
        return int(w), int(o)
    w = o = 0
    for part in name.split(" + "):
        count, kind = part.split()[:2]
        w, o = (int(count), o) if kind == "weak" else (w, int(count))
    return w, o


def long_name(short: str) -> str:
    """:func:`configuration_name` of a :func:`short_name`."""
    variant = short.split(" (", 1)[1].rstrip(")") if " (" in short else ""
    return configuration_name(*parse_configuration_name(short), variant, bool(variant))


def _names(cells: pd.DataFrame, mask, many: bool, order=None, name=configuration_name
           ) -> list[str]:
    idx = np.flatnonzero(mask)
    if order is not None:
        idx = idx[np.argsort(np.asarray(order)[idx], kind="stable")]
    return [name(cells["n_weak"].iloc[i], cells["n_oracle"].iloc[i], cells["variant"].iloc[i],
                 many) for i in idx]


def _join(names: list[str], word: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {word} {names[-1]}"


def remaining_text(d: Decision, cells: pd.DataFrame, many: bool, tolerance: float,
                   n_test: int | None = None) -> str:
    """What keeps an open decision open and what would settle it; empty when settled."""
    if d.settled:
        return ""
    rivals = d.contenders.copy()
    rivals[d.chosen] = False
    names = _names(cells, rivals, many)
    chosen = _names(cells, np.arange(len(cells)) == d.chosen, many)[0]
    head = (f"{_join(names, 'and')} {'is' if len(names) == 1 else 'are'} too close to {chosen} "
            f"to tell apart within {tolerance:g} (its bound is {d.regret_upper:.3f})")
    if np.isinf(d.seeds_needed) and np.isfinite(d.test_factor):
        size = f" (about {int(np.ceil(d.test_factor * n_test)):,} test examples)" if n_test else ""
        return (head + f"; the test set's own noise keeps the bound at {d.test_floor:.3f} or "
                f"more however many seeds run: a test set about {d.test_factor:.1f} times "
                f"larger{size} would settle it")
    if np.isfinite(d.seeds_needed):
        return head + (f"; about {int(d.seeds_needed)} seeds for each of these would settle it "
                       "(the main job's settle adds seeds up to `--config.max_seeds`)")
    return head + "; more seeds for these would narrow it"


def decision_row(cells: pd.DataFrame, boot: np.ndarray, level: float = LEVEL,
                 tolerance: float = TOLERANCE, test_dev=None, test_run_var=None,
                 n_test: int | None = None) -> dict:
    """The decision columns (:data:`DECISION_COLUMNS` from ``variant`` on) for the candidate
    ``cells`` (rows with variant, n_weak, n_oracle, accuracy, cost, n_seeds), their resamples
    and (optionally) the test-set part of them (see :func:`decide`)."""
    cells = cells.reset_index(drop=True)
    d = decide(cells["accuracy"].to_numpy(), boot, cells, level, tolerance, test_dev,
               test_run_var)
    cats = [category(w, o) for w, o in zip(cells["n_weak"], cells["n_oracle"])]
    many = cells["variant"].nunique() > 1
    best = cells.iloc[d.chosen]
    out = _names(cells, d.ruled_out, many, name=short_name)
    good = _names(cells, d.good, many, d.regret_uppers, short_name)
    seeds = [f"{short_name(w, o, v, many)}:{int(n)}" for w, o, v, n in zip(
        cells["n_weak"], cells["n_oracle"], cells["variant"], cells["n_seeds"])]
    return {"variant": best["variant"], "n_weak": int(best["n_weak"]),
            "n_oracle": int(best["n_oracle"]), "cost": float(best["cost"]),
            "accuracy": float(best["accuracy"]), "accuracy_lo": d.accuracy_band[0],
            "accuracy_hi": d.accuracy_band[1], "expected_accuracy": d.expected,
            "expected_lo": d.expected_band[0], "expected_hi": d.expected_band[1],
            "selection_bias": float(best["accuracy"]) - d.expected,
            "regret_upper": d.regret_upper, "tolerance": float(tolerance),
            "good_buys": ";".join(good), "n_good_buys": len(good),
            "remaining": remaining_text(d, cells, many, tolerance, n_test),
            "contenders": ";".join(_names(cells, d.contenders, many, name=short_name)),
            "seeds": ";".join(seeds),
            "ruled_out_categories": ";".join(ruled_out_categories(cats, d.ruled_out)),
            "ruled_out_configurations": ";".join(out), "n_ruled_out": len(out),
            "n_candidates": len(cells), "n_seeds": int(best["n_seeds"]),
            "not_measured_categories": ";".join(c for c in REGIMES if c not in cats)}


def decision_table(surface: Surface, level: float = LEVEL,
                   tolerance: float = TOLERANCE) -> pd.DataFrame:
    """The decision of every budget of every sweep at its own prices, per method variant and
    across all variants (``all``); columns :data:`DECISION_COLUMNS`. The candidates of a budget
    are the configurations measured at that grid budget (as in the regime table)."""
    model, labeler = surface.scope
    rows = []
    for point in budget_points(surface):
        if not len(point.idx):
            continue
        cells = surface.cells.iloc[point.idx].copy()
        cells["cost"] = [float(int(o) * point.oracle_price + int(w) * point.weak_price)
                         for w, o in zip(cells["n_weak"], cells["n_oracle"])]
        row = {"model": model, "weak_labeler": labeler, "tasks": surface.cells["tasks"].iloc[0],
               "weak_price": point.weak_price, "oracle_price": point.oracle_price,
               "budget": point.budget, "method": point.method}
        test = (None, None) if surface.test_dev is None else \
            (surface.test_dev[point.idx], surface.test_run_var[point.idx])
        rows.append(row | decision_row(cells, surface.boot[point.idx], level, tolerance,
                                       *test, surface.n_test))
    return pd.DataFrame(rows, columns=DECISION_COLUMNS)


def _get(row):
    return row.get if isinstance(row, dict) else lambda k, default=None: getattr(row, k, default)


def _split(value) -> list[str]:
    return [v for v in (value or "").split(";") if v] if isinstance(value, str) else []


def plain_sentence(row, level: float = LEVEL) -> str:
    """One plain sentence for a budget: what to buy, or which configurations are equally good
    buys, or that the budget is still open (a mapping or namedtuple of
    :data:`DECISION_COLUMNS`)."""
    get = _get(row)
    pct = f"{100 * level:.0f}%"
    good, tol = [long_name(g) for g in _split(get("good_buys"))], get("tolerance")
    many = get("method") == "all" and "(" in (get("good_buys") or "")
    chosen = configuration_name(get("n_weak"), get("n_oracle"), get("variant"), many)
    head = f"At {get('budget'):g} oracle-label units: "
    if len(good) > 1:
        return (head + f"any of {_join(good)} labels; each is at most {tol:g} below the best "
                f"configuration measured there ({pct}, simultaneously), and {chosen} has the "
                f"smallest bound ({get('regret_upper'):.3f}).")
    if good:
        bound = get("regret_upper")
        return (head + f"buy {chosen} labels; " + (
            f"it is at most {bound:.3f} below the best configuration measured there ({pct})"
            if bound > 0 else f"no configuration measured there is better ({pct})")
            + f", and no other is known to be within {tol:g} of the best.")
    return (head + f"not settled; the best bet now is {chosen} (at most "
            f"{get('regret_upper'):.3f} below the best, {pct}): {get('remaining')}.")


def decision_line(row, level: float = LEVEL) -> str:
    """One printed line for a decision row (a mapping or namedtuple of :data:`DECISION_COLUMNS`):
    the plain sentence, the accuracy to expect, what is ruled out."""
    get = _get(row)
    pct = f"{100 * level:.0f}%"
    ruled = [long_name(r) for r in _split(get("ruled_out_configurations"))]
    cats = _split(get("ruled_out_categories"))
    unmeasured = _split(get("not_measured_categories"))
    chosen = configuration_name(get("n_weak"), get("n_oracle"))
    line = (plain_sentence(row, level) + f" Expect accuracy {get('expected_accuracy'):.2f} "
            f"from {chosen} ({pct} {get('expected_lo'):.2f}-{get('expected_hi'):.2f}; its "
            f"measured mean {get('accuracy'):.3f} less {get('selection_bias'):.3f} for having "
            f"been chosen).")
    if ruled:
        line += (f" Ruled out ({pct}): {_join(ruled, 'and')}"
                 + (f"; every {_join(cats, 'and')} configuration measured is among them"
                    if cats else "") + ".")
    if unmeasured:
        line += f" Not measured: {', '.join(unmeasured)}."
    return line


def seeds_line(row) -> str:
    """``seeds per configuration: 320 weak 5, 32 oracle 12, ...`` for a decision row."""
    parts = [s.rsplit(":", 1) for s in _split(_get(row)("seeds"))]
    return "seeds per configuration: " + ", ".join(f"{long_name(n)} {k}" for n, k in parts)


def decision_lines(table: pd.DataFrame, method: str = "all", level: float = LEVEL) -> list[str]:
    """The printed lines of ``method``'s decisions, one per budget (with a line of its seeds per
    configuration), grouped by scope and prices."""
    lines = []
    t = table[table["method"] == method]
    for (model, labeler, po, pw), part in t.groupby(
            ["model", "weak_labeler", "oracle_price", "weak_price"], sort=False):
        lines.append(f"{model}, weak labeller {labeler}, prices oracle {po:g}, weak {pw:g}:")
        for r in part.sort_values("budget").itertuples():
            lines += ["  " + decision_line(r, level), "    " + seeds_line(r)]
    return lines
