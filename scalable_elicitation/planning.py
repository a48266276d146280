"""Planning a sweep, without JAX (docs/design.md#cost-model, #results-record): config validation,
grid points to run specs, per-point overrides, the config that identifies a run, run ids and their
status.

    planner = Planner(config, workdir)
    specs = planner.plan(points)        # points from the config file's sweep(add, config)
    planner.run_dir(spec), planner.status(spec)

`runner.Sweep` is a `Planner` that can also run.
"""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from typing import Any

from scalable_elicitation import budget as budget_lib
from scalable_elicitation import grouping, identity, labelers, methods, records, selection
from scalable_elicitation.data.registry import resolve_options, task_kind
from scalable_elicitation.paths import as_path


POINT_KEYS = ("budget", "fraction", "seed")
LOSSES = ("xent", "logconf")
SCHEDULES = ("default", "api")
# train.small_stage_val: a stage too small for a carve-out validates on the previous stage's
# carve-out ("previous") or not at all ("none", the study's rule); `schedules.borrows_validation`
SMALL_STAGE_VALIDATION = ("previous", "none")
WEAK_FITS = ("cv_l2", "engine")  # config.weak_fit.kind (`run_program.uses_weak_fit`)
PLATFORMS = ("auto", "cpu", "gpu", "tpu")  # config.platform (`sharding.check_platform`)
# Config keys (top-level blocks) that everything a sweep shares per seed depends on: the task,
# the test set, the weak labels, the pools, the prices and the grid. A sweep point may not
# override them (a separate sweep may); every other key, the learner's included, it may.
SHARED_KEYS = ("task", "task_options", "n_test", "labeler", "oracle_share", "prices",
               "budgets", "fractions", "seeds", "seed_offset", "seed_rule")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    n_weak: int
    n_oracle: int
    seed: int
    budget: Fraction | None
    fractions: tuple[Fraction, ...]
    grid_points: tuple[tuple[Fraction, Fraction], ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()  # per-point config overrides (method, k, ...)


def validate(config) -> None:
    """Check the config before anything loads or compiles; errors name the key."""
    def need(cond, key, msg):
        if not cond:
            raise ValueError(f"config.{key}: {msg}")

    need(config.method in methods.REGISTRY, "method",
         f"{config.method!r}; allowed: {tuple(methods.REGISTRY)}")
    need(config.trainable in ("lora", "full", "head"), "trainable",
         f"{config.trainable!r}; allowed: lora, full, head")
    need(config.pooling in ("", "last", "first", "mean"), "pooling",
         f"{config.pooling!r}; allowed: '' (the family's), last, first, mean")
    need(config.loss in LOSSES, "loss", f"{config.loss!r}; allowed: {', '.join(LOSSES)}")
    need(config.oracle_selection in selection.KINDS, "oracle_selection",
         f"{config.oracle_selection!r}; allowed: {', '.join(selection.KINDS)}")
    need(config.selection_temperature >= 0, "selection_temperature", "must be >= 0")
    need(config.schedule in SCHEDULES, "schedule",
         f"{config.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    need(config.k >= 1, "k", f"{config.k} must be >= 1")
    need(config.shot_source in ("weak", "oracle"), "shot_source",
         f"{config.shot_source!r}; allowed: weak, oracle")
    need(config.mixture.weak_weight >= 0 and config.mixture.oracle_weight >= 0,
         "mixture", "weights must be >= 0")
    need(len(config.budgets) > 0, "budgets", "needs at least one budget")
    for b in config.budgets:
        need(budget_lib.exact(b) >= 0, "budgets", f"budget {b} must be >= 0")
    for f in config.fractions:
        need(0 <= budget_lib.exact(f) <= 1, "fractions", f"fraction {f} must be in [0, 1]")
    budget_lib.Prices.of(config.prices.oracle, config.prices.weak)
    need(config.seeds >= 1, "seeds", f"{config.seeds} must be >= 1")
    settle = config.get("settle", 0.0)
    need(isinstance(settle, (int, float)) and 0 <= settle < 1, "settle",
         f"{settle!r}: a tolerance in accuracy, 0 (off) to below 1, e.g. 0.02")
    need(isinstance(config.get("max_seeds", 20), int) and (
        not settle or config.get("max_seeds", 20) >= config.seeds), "max_seeds",
        f"{config.get('max_seeds')!r}: a whole number >= seeds ({config.seeds})")
    if "analysis" in config:
        tol = config.analysis.get("tolerance", 0.02)
        need(isinstance(tol, (int, float)) and 0 <= tol < 1, "analysis.tolerance",
             f"{tol!r}: a tolerance in accuracy, 0 to below 1, e.g. 0.02")
    need(isinstance(config.get("parallel_runs", 0), int) and config.get("parallel_runs", 0) >= 0,
         "parallel_runs", f"{config.get('parallel_runs')!r}; allowed: 0 (as many as fit the "
         "device), 1 (one at a time) or more")
    placement, mesh = config.get("group_sharding", "auto"), dict(config.get("mesh", {}))
    error = grouping.placement_error(placement, mesh)
    need(error is None, "group_sharding", error)
    need(config.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype",
         f"{config.dtype!r}; allowed: auto, float32, bfloat16, float16")
    need(config.get("attention", "auto") in ("auto", "einsum", "fused"), "attention",
         f"{config.get('attention')!r}; allowed: auto, einsum, fused")
    need(config.get("platform", "auto") in PLATFORMS, "platform",
         f"{config.get('platform')!r}; allowed: {', '.join(PLATFORMS)}")
    need(config.n_test >= 2, "n_test", f"{config.n_test} must be >= 2")
    need(config.train.lr > 0, "train.lr", f"{config.train.lr} must be > 0")
    need(config.train.max_visits >= 1, "train.max_visits", "must be >= 1")
    need(isinstance(config.get("host_poll_steps", 512), int)
         and config.get("host_poll_steps", 512) >= 1, "host_poll_steps",
         f"{config.get('host_poll_steps')!r} must be a whole number >= 1")
    micro = config.train.get("micro_batch", 0)
    need(isinstance(micro, int) and micro >= 0
         and (micro == 0 or config.train.batch_size % micro == 0), "train.micro_batch",
         f"{micro!r}: rows per device per pass, a whole number >= 0 that divides "
         f"train.batch_size={config.train.batch_size} (0: the whole batch in one pass)")
    lab_micro, lab_batch = config.labeler.get("micro_batch", 0), config.labeler.batch_size
    need(isinstance(lab_micro, int) and lab_micro >= 0
         and (lab_micro == 0 or lab_batch % lab_micro == 0), "labeler.micro_batch",
         f"{lab_micro!r}: rows per device per pass, a whole number >= 0 that divides "
         f"labeler.batch_size={lab_batch} (0: the whole batch in one pass)")
    need(config.train.get("min_eval_visits", 0) >= 0, "train.min_eval_visits",
         f"{config.train.get('min_eval_visits')} must be >= 0 (0: evaluate from the first step)")
    need(config.train.get("small_stage_val", "none") in SMALL_STAGE_VALIDATION,
         "train.small_stage_val", f"{config.train.get('small_stage_val')!r}; allowed: "
         f"{', '.join(SMALL_STAGE_VALIDATION)}")
    fit = config.get("weak_fit", None)
    if fit is not None:  # docs/decisions.md#a-student-that-learns-through-noisy-labels
        need(fit.kind in WEAK_FITS, "weak_fit.kind",
             f"{fit.kind!r}; allowed: {', '.join(WEAK_FITS)}")
        need(len(fit.cs) > 0 and all(float(v) > 0 for v in fit.cs), "weak_fit.cs",
             f"{tuple(fit.cs)!r}: one or more penalties C > 0")
        need(isinstance(fit.folds, int) and fit.folds >= 2, "weak_fit.folds",
             f"{fit.folds!r} must be a whole number >= 2")
        need(isinstance(fit.get("hard", True), bool), "weak_fit.hard",
             f"{fit.get('hard')!r} must be True or False")
    need(isinstance(config.get("weak_truth", False), bool), "weak_truth",
         f"{config.get('weak_truth')!r} must be True or False")
    need(config.labeler.kind in labelers.KINDS, "labeler.kind",
         f"{config.labeler.kind!r}; allowed: {', '.join(labelers.KINDS)}")
    try:
        task_kind(config.task)
        resolve_options(config.task, set_options(config))
    except ValueError as err:
        raise ValueError(f"config.task: {err}") from None


def set_options(config) -> dict:
    """The task options that are set (None means the task's default)."""
    return {k: v for k, v in config.task_options.items() if v is not None}


class Planner:
    """A validated sweep config, its prices and labeller, and where its records live."""

    def __init__(self, config, workdir: str | os.PathLike):
        validate(config)
        unknown = identity.unclassified(records.flatten(config.to_dict()))
        if unknown:  # a developer's omission: the run id must know what a key means
            raise ValueError(f"config keys {unknown} are not classified in "
                             "scalable_elicitation/identity.py (defines, grid or placement); "
                             "classify them before planning a sweep")
        self.config = config
        self.workdir = as_path(workdir)  # a local folder or gs://bucket/...
        self.cache_dir = self.workdir / "cache"
        self.prices = budget_lib.Prices.of(config.prices.oracle, config.prices.weak)
        self.task_options = set_options(config)
        self.labeler = labelers.make_labeler(config.labeler, self.cache_dir)

    def plan(self, points: list[dict]) -> list[RunSpec]:
        """Runs for grid points {budget, fraction, seed, **overrides} (from the config's
        `sweep(add, config)`): one run per distinct (overrides, n_weak, n_oracle, seed),
        listing every (budget, fraction) it serves. Overrides are config keys (dotted for
        nested ones) that vary per point, e.g. method, k or model; an override of a key the
        sweep shares (`SHARED_KEYS`) or an unknown key fails here, before any run."""
        shared = sorted({k for pt in points for k in pt
                         if k not in POINT_KEYS and k.split(".")[0] in SHARED_KEYS})
        if shared:
            raise ValueError(f"sweep points override {shared}, which every run of a sweep "
                             f"shares (task, test set, weak labels, pools, prices, grid: "
                             f"{', '.join(SHARED_KEYS)}); set them with --config.KEY=VALUE or "
                             "run a separate sweep per value")
        merged: dict[tuple, list[tuple[Fraction, Fraction]]] = {}
        for pt in points:
            missing = [k for k in POINT_KEYS if k not in pt]
            if missing:
                raise ValueError(f"sweep point {pt}: missing {missing}")
            overrides = tuple(sorted((k, v) for k, v in pt.items() if k not in POINT_KEYS))
            self.run_config(overrides)  # unknown or invalid override keys fail here
            p = budget_lib.labels_for(pt["budget"], pt["fraction"], self.prices)
            merged.setdefault((overrides, p.n_weak, p.n_oracle, int(pt["seed"])), []).append(
                (p.budget, p.fraction))
        specs = []
        for (overrides, nw, no, seed), pts in merged.items():
            pts = sorted(set(pts))
            b0 = pts[0][0]
            specs.append(RunSpec(nw, no, seed, b0, tuple(f for b, f in pts if b == b0),
                                 tuple(pts), overrides))
        return specs

    def run_config(self, overrides=()):
        """The sweep's config with one point's overrides applied (and validated)."""
        if not overrides:
            return self.config
        c = self.config.copy_and_resolve_references()
        with c.unlocked():
            for key, value in overrides:
                node = c
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node[part]
                if leaf not in node:
                    raise ValueError(f"sweep override {key!r} is not a config key")
                node[leaf] = value
        validate(c)
        return c

    def effective(self, spec: RunSpec) -> dict:
        """The config that identifies a run (its id hashes this): the task, the model, the
        method with its options and its own keys, training, the labeller, prices, counts.
        What is in it and what is not follows `identity` (a test checks every key)."""
        c = self.run_config(spec.overrides)
        method = {"method": c.method, "loss": c.loss, "schedule": c.schedule,
                  **selection.identity(c), **methods.get(c.method).identity(c)}
        return {"task": c.task, "task_options": self.task_options, "n_test": c.n_test,
                "split_seed": c.get("split_seed", 0),
                "model": c.model, "trainable": c.trainable, "dtype": c.dtype,
                "lora": dict(c.lora), "max_length": c.max_length, "pooling": c.pooling,
                **method,
                # micro-batching changes how a step is computed, not what: not in the id
                "train": {k: v for k, v in c.train.items()
                          if identity.kind(f"train.{k}") == identity.DEFINES},
                "labeler": self.labeler.config_dict(), "oracle_share": c.oracle_share,
                "prices": {"oracle": str(self.prices.oracle), "weak": str(self.prices.weak)},
                "n_weak": spec.n_weak, "n_oracle": spec.n_oracle, "seed": spec.seed,
                # how a weak stage learns (run-defining); a ceiling run's weak stage trains on
                # ground truth (only when set, so other runs' ids do not carry it).
                # `config.ceiling` only adds runs: not run-defining.
                **({"weak_fit": dict(c.weak_fit)} if "weak_fit" in c else {}),
                **({"weak_truth": True} if c.get("weak_truth", False) else {})}

    def run_id(self, spec: RunSpec) -> str:
        return records.run_id(self.effective(spec))

    def run_dir(self, spec: RunSpec):
        return self.workdir / "runs" / self.run_id(spec)

    def status(self, spec: RunSpec) -> str:
        """`done`, `infeasible`, `failed` or `todo`, from the record on disk."""
        rec = records.read_record(self.run_dir(spec) / "result.json")
        if rec is None:
            return "todo"
        return {"ok": "done"}.get(rec.get("status"), rec.get("status", "todo"))
