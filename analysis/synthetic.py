"""Synthetic results records from a known accuracy surface, for tests and demonstrations.

    python -m analysis.synthetic OUT_DIR   # writes OUT_DIR/runs/*/result.json and scores.parquet

The surface (``true_accuracy``) has the study's three regimes at weak price 1/10: weak labels help
quickly but saturate near 0.72, oracle labels help slowly up to 0.95, and weak pre-training costs a
little once oracle labels are plentiful. Records follow docs/design.md#results-record, with
counts from the grid (docs/design.md#cost-model) and Gaussian noise per seed.

With ``per_example=True`` every ok record also carries its per-example test scores (``scores``:
id, label, score; written as ``scores.parquet`` by :func:`write_runs`), drawn so that runs of a
task share one test set and agree on its easy and hard examples as real classifiers do: example
``i`` has an easiness ``z_i ~ N(0, 1)``, a run with accuracy ``a`` gets it right when
``z_i + tau * eps_ri > -Phi^-1(a) sqrt(1 + tau^2)`` (``eps`` fresh per run; ``tau = 0.5`` makes two
runs of equal accuracy 0.75 disagree on about 16% of examples). Its recorded accuracy is then
the share it got right, so the test set's sampling noise is in the records too.

:func:`grid_records` builds records from any true-accuracy function of the counts, for the
calibration surfaces of :mod:`analysis.calibration`.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import ndtri

from analysis import pricing
from analysis.io import write_text
from scalable_elicitation.records import write_scores

BUDGETS = (8, 16, 64, 256, 1024, 4096)
FRACTIONS = (0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1)
# variant -> (method, config options, accuracy offset)
VARIANTS = {
    "seq_sft": ("seq_sft", {}, 0.0),
    "seq_sft+logconf": ("seq_sft", {"loss": "logconf"}, -0.015),
    "kshot_sft(k=2,weak)": ("kshot_sft", {"k": 2, "shot_source": "weak"}, 0.0),
}
WEAK_POOL = 40_000  # weak labels available; bigger all-weak points are infeasible


def true_accuracy(n_weak, n_oracle, variant: str = "seq_sft"):
    """Noise-free accuracy of a run that bought ``n_weak`` weak and ``n_oracle`` oracle labels.

    ``kshot_sft(k=2,weak)`` gains up to 3 points at small label counts, fading with more labels.
    """
    n_weak = np.asarray(n_weak, dtype=float)
    n_oracle = np.asarray(n_oracle, dtype=float)
    s = 1 - np.exp(-n_weak / 100)           # weak-label saturation
    r = 1 - np.exp(-n_oracle / 300)         # oracle-label saturation
    acc = 0.5 + 0.22 * s * (1 - r) + 0.45 * r - 0.04 * s * r
    offset = VARIANTS[variant][2]
    if variant.startswith("kshot_sft"):
        offset = 0.03 * np.exp(-(n_weak + n_oracle) / 500)
    return acc + offset


class TestSet:
    """One task's synthetic test set: ids, balanced labels and per-example easiness."""

    def __init__(self, task: str, n_test: int, rng: np.random.Generator):
        self.ids = np.asarray([f"{task}-{i}" for i in range(n_test)])
        self.labels = rng.permutation(np.arange(n_test) % 2)
        self.easiness = rng.normal(size=n_test)

    def scores(self, accuracy: float, rng: np.random.Generator, tau: float = 0.5) -> dict:
        """Per-example scores of a run whose expected accuracy is ``accuracy``."""
        a = float(np.clip(accuracy, 1e-3, 1 - 1e-3))
        noise = tau * rng.normal(size=len(self.ids))
        margin = self.easiness + noise + ndtri(a) * np.sqrt(1 + tau ** 2)
        correct = margin > 0
        sign = np.where(self.labels == 1, 1.0, -1.0) * np.where(correct, 1.0, -1.0)
        return {"id": self.ids, "label": self.labels,
                "score": (sign * (np.abs(margin) + 1e-3)).astype(np.float32)}


def _run_id(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def make_records(budgets=BUDGETS, fractions=FRACTIONS, oracle_price=1, weak_price=0.1,
                 variants=tuple(VARIANTS), tasks=("synthetic",), noise: float = 0.005,
                 seed: int = 0, model: str = "toy-model", weak_labeler: str = "toy-weak",
                 weak_pool: int = WEAK_POOL, n_test: int = 1000, per_example: bool = False,
                 n_seeds=None, tau: float = 0.5, config: dict | None = None,
                 binomial: bool = False) -> list[dict]:
    """Records for a grid sweep of :func:`true_accuracy`: one run per distinct (n_weak, n_oracle)
    of a budget, listing every fraction it serves; ``n_seeds`` seeds per point, or the study's
    rule by default (7 where the smaller non-empty stage has <= 10 labels, else 3). Gaussian seed
    noise of sd ``noise``; with ``per_example`` also per-example scores (module docstring); with
    ``binomial`` (and no per-example scores) the recorded accuracy is the share right of
    ``n_test`` independent examples, so it carries test-set noise without the scores."""
    def truth(n_weak, n_oracle, variant):
        return true_accuracy(n_weak, n_oracle, variant)
    return grid_records(truth, budgets, fractions, oracle_price, weak_price, variants, tasks,
                        noise, seed, model, weak_labeler, weak_pool, n_test, per_example,
                        n_seeds, tau, config, binomial)


def grid_records(truth, budgets=BUDGETS, fractions=FRACTIONS, oracle_price=1, weak_price=0.1,
                 variants=("seq_sft",), tasks=("synthetic",), noise: float = 0.005,
                 seed: int = 0, model: str = "toy-model", weak_labeler: str = "toy-weak",
                 weak_pool: int = WEAK_POOL, n_test: int = 1000, per_example: bool = False,
                 n_seeds=None, tau: float = 0.5, config: dict | None = None,
                 binomial: bool = False, labeller_sd: float = 0.0,
                 share_noise: float = 0.0) -> list[dict]:
    """Records for a grid sweep whose noise-free accuracy is ``truth(n_weak, n_oracle,
    variant)`` (see :func:`make_records`). ``config`` adds flattened config keys to every run.

    Seed noise like the real design's (issue 20) with ``labeller_sd`` and ``share_noise``: a seed
    fixes the weak labeller, so seed ``s`` of a task adds ``w * L_s`` to every cell that bought
    weak labels, ``L_s ~ N(0, labeller_sd^2)`` and ``w = n_weak / (n_weak + n_oracle)``; each
    (cell, seed) adds its own ``N(0, (noise + share_noise * w)^2)``. Both 0 by default (the
    plain model: independent noise of sd ``noise``)."""
    rng = np.random.default_rng(seed)

    def effect(t: int, s: int) -> float:  # its own stream: the other draws stay as they were
        return float(np.random.default_rng([seed, 7, t, s]).normal(0, labeller_sd)) \
            if labeller_sd else 0.0
    records = []
    for t, task in enumerate(tasks):
        test = TestSet(task, n_test, rng) if per_example else None
        for variant in variants:
            method, options, _ = VARIANTS.get(variant, (variant, {}, 0.0))
            for budget in budgets:
                points: dict[tuple[int, int], list[float]] = {}
                for f in fractions:
                    points.setdefault(pricing.grid_counts(budget, f, oracle_price, weak_price),
                                      []).append(f)
                for (n_weak, n_oracle), fracs in points.items():
                    stages = [n for n in (n_weak, n_oracle) if n > 0]
                    if n_seeds is not None:
                        seeds = int(n_seeds)
                    else:
                        seeds = 7 if stages and min(stages) <= 10 else 3
                    for s in range(seeds):
                        rec = _base_record(task, model, method, options, config, s, n_weak,
                                           n_oracle, n_test, oracle_price, weak_price, variant,
                                           weak_labeler, budget, fracs)
                        if n_weak > weak_pool:
                            rec.update(status="infeasible", n_weak=0, n_oracle=0, cost=0,
                                       error=f"needs {n_weak} weak labels, pool holds {weak_pool}")
                            records.append(rec)
                            continue
                        w = n_weak / max(n_weak + n_oracle, 1)
                        acc = float(np.clip(truth(n_weak, n_oracle, variant) + w * effect(t, s)
                                            + rng.normal(0, noise + share_noise * w), 0, 1))
                        _measure(rec, acc, test, rng, tau, binomial, n_test, oracle_price,
                                 weak_price)
                        records.append(rec)
    return records


def _base_record(task, model, method, options, config, s, n_weak, n_oracle, n_test,
                 oracle_price, weak_price, variant, weak_labeler, budget, fracs) -> dict:
    """The fields of a synthetic record known before it is measured."""
    cfg = {"task": task, "model": model, "method": method, **options, **(config or {}),
           "seed": s, "n_weak": n_weak, "n_oracle": n_oracle, "n_test": n_test}
    return {"run_id": _run_id([cfg, float(weak_price), variant]), "task": task,
            "model": model, "method": method, "seed": s, "weak_labeler": weak_labeler,
            "weak_label_accuracy": 0.72, "prices": {"oracle": oracle_price, "weak": weak_price},
            "budget": budget, "oracle_fractions": fracs,
            "grid_points": [[budget, f] for f in fracs],
            "planned": {"weak": n_weak, "oracle": n_oracle}, "n_shots": options.get("k", 0),
            "config": cfg, "versions": {"analysis": "synthetic"}, "wall_s": 1.0}


def _measure(rec: dict, acc: float, test, rng, tau, binomial, n_test, oracle_price,
             weak_price) -> None:
    """Complete ``rec`` as an ok run of expected accuracy ``acc`` (per-example scores on the
    task's ``test`` set, or a binomial draw, or ``acc`` itself)."""
    n_weak, n_oracle = rec["planned"]["weak"], rec["planned"]["oracle"]
    if test is not None:
        rec["scores"] = test.scores(acc, rng, tau)
        acc = float(np.mean((rec["scores"]["score"] > 0) == (rec["scores"]["label"] == 1)))
    elif binomial:
        acc = float(rng.binomial(n_test, acc) / n_test)
    rec.update(status="ok", n_weak=n_weak, n_oracle=n_oracle,
               cost=pricing.cost(n_weak, n_oracle, oracle_price, weak_price),
               stages=[{"source": src, "n_train": n, "n_val": 0} for src, n in
                       (("weak", n_weak), ("oracle", n_oracle)) if n > 0],
               metrics={"accuracy": acc, "auroc": min(1.0, acc + 0.05),
                        "accuracy_ci": [acc - 0.03, acc + 0.03], "auroc_ci": [acc, acc + 0.1],
                        "agreement_with_weak": 0.7},
               n_test=n_test)


class SeededSurface:
    """One task whose record for any configuration and seed can be drawn at any time, the same
    every time: for simulations that add seeds after the grid (:mod:`analysis.settle`).

    Seed ``s`` fixes an effect ``L_s ~ N(0, labeller_sd^2)`` that moves a cell of weak share
    ``w`` by ``(w - anti (1 - w)) L_s``: with ``anti = 0`` the shared labeller effect of
    :func:`grid_records`; with ``anti > 0`` a seed that helps the weak-heavy cells hurts the
    oracle-heavy ones (its pools' draw of easy texts went to one side), so cells at the two ends
    are negatively correlated across seeds. Each (cell, seed) adds its own
    ``N(0, (noise + share_noise w)^2)`` and is scored per example on the task's one test set.
    """

    def __init__(self, truth, task: str = "synthetic", model: str = "toy-model", seed: int = 0,
                 n_test: int = 1000, noise: float = 0.01, share_noise: float = 0.05,
                 labeller_sd: float = 0.03, anti: float = 0.0, tau: float = 0.5,
                 oracle_price=1, weak_price=0.1):
        self.truth, self.task, self.model, self.seed = truth, task, model, seed
        self.noise, self.share_noise, self.labeller_sd, self.anti = (noise, share_noise,
                                                                     labeller_sd, anti)
        self.tau, self.n_test = tau, n_test
        self.oracle_price, self.weak_price = oracle_price, weak_price
        self.test = TestSet(task, n_test, np.random.default_rng([seed, 1]))

    def record(self, budget, n_weak: int, n_oracle: int, fractions, s: int) -> dict:
        """The record of configuration (n_weak, n_oracle) at ``budget`` (serving
        ``fractions``) with seed ``s``."""
        rec = _base_record(self.task, self.model, "seq_sft", {}, None, s, n_weak, n_oracle,
                           self.n_test, self.oracle_price, self.weak_price, "seq_sft",
                           "toy-weak", budget, list(fractions))
        w = n_weak / max(n_weak + n_oracle, 1)
        effect = np.random.default_rng([self.seed, 7, s]).normal(0, self.labeller_sd)
        rng = np.random.default_rng([self.seed, 8, n_weak, n_oracle, s])
        acc = float(np.clip(self.truth(n_weak, n_oracle) + (w - self.anti * (1 - w)) * effect
                            + rng.normal(0, self.noise + self.share_noise * w), 0, 1))
        _measure(rec, acc, self.test, rng, self.tau, False, self.n_test, self.oracle_price,
                 self.weak_price)
        return rec

    def grid(self, budgets, fractions, seeds) -> list[dict]:
        """Records of every grid point (one run per distinct counts of a budget) and seed."""
        out = []
        for budget in budgets:
            points: dict[tuple[int, int], list[float]] = {}
            for f in fractions:
                points.setdefault(pricing.grid_counts(budget, f, self.oracle_price,
                                                      self.weak_price), []).append(f)
            for (n_weak, n_oracle), fracs in points.items():
                out += [self.record(budget, n_weak, n_oracle, fracs, s) for s in seeds]
        return out


def write_runs(records: list[dict], folder) -> Path:
    """Write each record as ``folder/runs/RUN_ID/result.json`` and its per-example scores, if it
    has them, as ``scores.parquet`` beside it (atomically)."""
    folder = Path(folder)
    for rec in records:
        rec = dict(rec)
        scores = rec.pop("scores", None)
        run = folder / "runs" / rec["run_id"]
        if scores is not None:
            write_scores(run / "scores.parquet", scores["id"], scores["label"], scores["score"])
        write_text(run / "result.json", json.dumps(rec, indent=1))
    return folder


def true_best(budget, oracle_price=1, weak_price=0.1, fractions=FRACTIONS,
              variant: str = "seq_sft") -> tuple[int, int, float]:
    """The grid point of ``budget`` with the highest noise-free accuracy: (n_weak, n_oracle, acc)."""
    pts = {pricing.grid_counts(budget, f, oracle_price, weak_price) for f in fractions}
    best = max(pts, key=lambda p: float(true_accuracy(p[0], p[1], variant)))
    return best[0], best[1], float(true_accuracy(best[0], best[1], variant))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m analysis.synthetic OUT_DIR")
    out = write_runs(make_records(per_example=True), sys.argv[1])
    print(f"wrote synthetic records under {out / 'runs'}")
