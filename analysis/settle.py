"""Settle: spend compute, not labels, where a budget's decision is still open
(docs/design.md#settle).

After the grid's seeds, a budget is *open* when the configuration to buy (:mod:`analysis.decisions`)
has a simultaneous regret bound above the tolerance. Its *contenders* are that configuration and
those whose comparison with it keeps the bound above the tolerance (``A_j - A_c + q se_cj > tol``);
every other configuration of the budget is already known to be far enough behind, or close enough,
not to matter. :func:`plan_seeds` asks for more seeds of the contenders only, the same new seed
ids for each of them (so they stay paired seed by seed), and the main job runs them as ordinary
records (new run ids, resumable, never a duplicate), re-analyses and repeats
(`scalable_elicitation.experiment.settle`). This is racing for best-arm identification with an
epsilon-good stopping rule: successive elimination (Even-Dar, Mannor & Mansour 2006) and racing
(Maron & Moore 1994) sample every surviving arm each round and drop the ones confidently behind;
LUCB (Kalyanakrishnan et al. 2012) stops when the leader's lower bound clears every rival's upper
bound less epsilon, which is our "chosen bound <= tolerance". We sample all surviving
contenders per round (a seed costs about a second, and runs train together in groups) and use
the paired, simultaneous bound of Hsu's multiple comparisons with the best for the stop.

A budget stops being asked for seeds when it is settled, when its contenders reach
``max_seeds``, or when what is left is the test set's own noise (more seeds cannot bring the
bound below the tolerance; the decision's ``remaining`` says how large a test set would).

Seeds per round: the projection of :func:`analysis.decisions.decide` (the seed part of each
pair's scale shrinks as ``1 / sqrt(seeds)``) bounded to at least 2 more and at most twice the
current count, so a bad projection from few seeds costs at most one doubling.

Caveat, stated in the docs: re-testing after adding samples is sequential, and the 90% level
of a bound is per look; the rounds are few (typically 1-3) and the stopping rule needs the
bound to clear the tolerance, which the simulation in tests/test_analysis_settle.py checks
end to end (final choice truly best at >= 90% of budgets where the best leads by the tolerance).
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import pandas as pd

from analysis.aggregate import build_surfaces
from analysis.decisions import LEVEL, decide
from analysis.records import Records
from analysis.regimes import budget_points
from analysis.resample import DEFAULT_N_BOOT
from analysis.tables import ALL

MIN_STEP = 2  # seeds added per contender and round, at least


@dataclasses.dataclass(frozen=True)
class Request:
    """New seeds for one cell of one task: ``run_id`` is one of its records (the template the
    runner copies with each new seed)."""

    task: str
    budget: float
    variant: str
    n_weak: int
    n_oracle: int
    seeds: tuple[int, ...]
    run_id: str


@dataclasses.dataclass
class Plan:
    """What :func:`plan_seeds` decided: the requests, and per open budget one status line."""

    requests: list[Request]
    status: list[str]


def _seeds_of(frame: pd.DataFrame, keys) -> dict[tuple, set[int]]:
    out: dict[tuple, set[int]] = {}
    for row in frame[list(keys) + ["seed"]].itertuples(index=False):
        out.setdefault(tuple(row[:-1]), set()).add(int(row[-1]))
    return out


def plan_seeds(records: Records, tolerance: float, max_seeds: int, level: float = LEVEL,
               n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> Plan:
    """The seeds to add to the contenders of every open budget (module docstring)."""
    if tolerance <= 0:
        raise ValueError(f"settle tolerance must be > 0, got {tolerance}")
    ok = records.ok
    if ok.empty:
        return Plan([], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surfaces = build_surfaces(ok, n_boot=n_boot, seed=seed, excluded=records.excluded)
    keys = ("task", "model", "variant", "weak_labeler", "n_weak", "n_oracle")
    have = _seeds_of(ok, keys)
    ex = records.excluded.dropna(subset=["planned.weak", "planned.oracle"]) \
        if len(records.excluded) else records.excluded
    tried: dict[tuple, set[int]] = {}  # a failed or infeasible record's seed: not asked again
    for t, m, v, w, nw, no, sd in zip(ex["task"], ex["model"], ex["variant"], ex["weak_labeler"],
                                      ex["planned.weak"], ex["planned.oracle"], ex["seed"]):
        tried.setdefault((t, m, v, w, int(nw), int(no)), set()).add(int(sd))
    template = {tuple(r[:-1]): r[-1] for r in ok[list(keys) + ["run_id"]].itertuples(
        index=False)}
    requests, status = [], []
    for s in surfaces:
        tasks = s.cells["tasks"].iloc[0].split("+")
        for point in budget_points(s):
            if point.method != ALL or len(point.idx) < 2:
                continue
            cells = s.cells.iloc[point.idx].reset_index(drop=True)
            d = decide(cells["accuracy"].to_numpy(), s.boot[point.idx], cells, level, tolerance,
                       None if s.test_dev is None else s.test_dev[point.idx],
                       None if s.test_run_var is None else s.test_run_var[point.idx])
            if d.settled:
                continue
            where = f"budget {point.budget:g}"
            if not math.isfinite(d.seeds_needed):
                status.append(f"{where}: only the test set's noise is left (bound at least "
                              f"{d.test_floor:.3f} with unlimited seeds); no seeds added")
                continue
            rows = cells[d.contenders]
            cell_keys = [(t, r.model, r.variant, r.weak_labeler, r.n_weak, r.n_oracle)
                         for t in tasks for r in rows.itertuples(index=False)]
            held = [have.get(k, set()) | tried.get(k, set()) for k in cell_keys]
            union = sorted(set().union(*held))
            now = max(len(h) for h in held)
            if min(len(h) for h in held) >= max_seeds:
                status.append(f"{where}: contenders have {max_seeds} seeds, the cap (max_seeds); "
                              "still open")
                continue
            target = int(min(max_seeds, max(now + MIN_STEP, min(d.seeds_needed, 2 * now))))
            ids = union[:target] + list(range(max(union) + 1 if union else 0,
                                              (max(union) + 1 if union else 0) + target
                                              - len(union[:target])))
            for key, h in zip(cell_keys, held):
                missing = tuple(i for i in ids if i not in h)
                if missing and key in template:
                    requests.append(Request(key[0], point.budget, key[2], int(key[4]),
                                            int(key[5]), missing, template[key]))
            status.append(f"{where}: bound {d.regret_upper:.3f} > {tolerance:g}; "
                          f"{int(d.contenders.sum())} contenders to {target} seeds each")
    return Plan(requests, status)
