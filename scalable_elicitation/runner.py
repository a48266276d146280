"""The sweep runner: config -> planned runs -> one record per run (SPEC sections 2, 6, 7.1, 11).

    runner = Sweep(config, workdir)   # loads task, weak labels, model once
    for spec in runner.plan(): runner.run(spec)

A run buys its labels from nested prefixes of the per-seed pools, trains the weak stage then the
oracle stage (`seq_sft`), evaluates on the fixed test set, and writes `result.json`, the
per-example `scores.parquet` and its `ledger.json` atomically. Records marked `ok` or
`infeasible` are skipped on a rerun; `failed` ones are retried.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import platform
import time
import traceback
from fractions import Fraction
from typing import Any

import jax
import numpy as np

from scalable_elicitation import budget as budget_lib
from scalable_elicitation.checkpoint import StageCheckpointer, remove_run_checkpoints
from scalable_elicitation import labels as labels_lib
from scalable_elicitation import records
from scalable_elicitation.data import PoolExhaustedError, load_task, make_pools
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.models.sharding import data_parallel_size
from scalable_elicitation.prompts import PromptBuilder, make_shots
from scalable_elicitation.stage import (FeatureStats, StageConfig, predict, run_stage,
                                        split_validation)

METHODS = ("seq_sft", "kshot_sft", "icl", "mixture_sft")
POINT_KEYS = ("budget", "fraction", "seed")


class InfeasibleRun(ValueError):
    """A run that cannot be made with what its grid point bought (e.g. fewer labels than
    shots); recorded as `infeasible` with this message."""
STREAMS = {"data": 1, "init": 2, "train": 3, "selection": 4}  # named RNG streams of a run
PROMPT_STATS_SIZE = 256  # unlabelled training texts whose prompted features standardise a probe


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

    need(config.method in METHODS, "method", f"{config.method!r}; allowed: {METHODS}")
    need(config.trainable in ("lora", "full", "head"), "trainable",
         f"{config.trainable!r}; allowed: lora, full, head")
    need(config.pooling in ("", "last", "first", "mean"), "pooling",
         f"{config.pooling!r}; allowed: '' (the family's), last, first, mean")
    need(config.loss in ("xent", "logconf"), "loss", f"{config.loss!r}; allowed: xent, logconf")
    need(config.oracle_selection in ("random", "entropy"), "oracle_selection",
         f"{config.oracle_selection!r}; allowed: random, entropy")
    need(config.selection_temperature >= 0, "selection_temperature", "must be >= 0")
    need(config.schedule in ("default", "api"), "schedule",
         f"{config.schedule!r}; allowed: default, api")
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
    need(config.n_test >= 2, "n_test", f"{config.n_test} must be >= 2")
    need(config.train.lr > 0, "train.lr", f"{config.train.lr} must be > 0")
    need(config.train.max_visits >= 1, "train.max_visits", "must be >= 1")
    need(config.labeler.kind in ("model", "noise", "file"), "labeler.kind",
         f"{config.labeler.kind!r}; allowed: model, noise, file")
    from scalable_elicitation.data.registry import resolve_options, task_kind
    try:
        task_kind(config.task)
        resolve_options(config.task, set_options(config))
    except ValueError as err:
        raise ValueError(f"config.task: {err}") from None


def set_options(config) -> dict:
    """The task options that are set (None means the task's default)."""
    return {k: v for k, v in config.task_options.items() if v is not None}


def make_labeler(cfg, cache_dir):
    kind = cfg.kind
    if kind == "model":
        return labels_lib.ModelLabeler(
            source=cfg.source, n_train=cfg.n_train, trainable=cfg.trainable, lr=cfg.lr,
            epochs=cfg.epochs, batch_size=cfg.batch_size, max_length=cfg.max_length,
            cache_dir=str(cache_dir))
    if kind == "noise":
        return labels_lib.NoiseLabeler(rate=cfg.rate, soft=cfg.get("soft", False))
    return labels_lib.FileLabeler()


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_auroc(scores, labels, n_boot=200, seed=0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = []
    n = len(labels)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if labels[idx].min() != labels[idx].max():
            vals.append(labels_lib.auroc(scores[idx], labels[idx]))
    if not vals:
        return (float("nan"), float("nan"))
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))


class Sweep:
    """Everything a sweep shares: task, weak labels, pools, the learner (model and steps)."""

    def __init__(self, config, workdir: str | pathlib.Path, *, progress=None):
        validate(config)
        self.config = config
        self.workdir = records.as_path(workdir)  # a local folder or gs://bucket/...
        self.cache_dir = self.workdir / "cache"
        self.progress = progress
        self.prices = budget_lib.Prices.of(config.prices.oracle, config.prices.weak)
        self.task_options = set_options(config)
        self._tasks: dict[int, Any] = {}
        self._weak: dict[int, Any] = {}
        self._pools: dict[int, Any] = {}
        self._stats: dict[int, FeatureStats] = {}
        self._learner = None
        self.labeler = make_labeler(config.labeler, self.cache_dir)

    # -- shared, built lazily --------------------------------------------------------------
    def task(self, seed: int):
        if seed not in self._tasks:
            self._tasks[seed] = load_task(self.config.task, seed=seed, n_test=self.config.n_test,
                                          cache_dir=self.cache_dir, **self.task_options)
        return self._tasks[seed]

    def weak_labels(self, seed: int):
        if seed not in self._weak:
            self._weak[seed] = labels_lib.cached_weak_labels(self.labeler, self.task(seed), seed,
                                                             self.cache_dir)
        return self._weak[seed]

    def pools(self, seed: int):
        if seed not in self._pools:
            weak = self.weak_labels(seed)
            self._pools[seed] = make_pools(self.task(seed).train, seed=seed,
                                           exclude_ids=weak.train_ids,
                                           oracle_share=self.config.oracle_share)
        return self._pools[seed]

    def feature_stats(self, seed: int) -> FeatureStats | None:
        """A probe's per-dimension feature statistics over the seed's unlabelled training
        texts (SPEC section 5); None when the model is finetuned."""
        if not self.learner.probe:
            return None
        if seed not in self._stats:
            train = self.task(seed).train
            self._stats[seed] = self.learner.feature_stats(train["id"], train["text"])
        return self._stats[seed]

    @property
    def learner(self) -> Learner:
        if self._learner is None:
            c = self.config
            self._learner = Learner(LearnerConfig(
                c.model, trainable=c.trainable, dtype=c.dtype, lora_rank=c.lora.rank,
                lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, max_length=c.max_length,
                buckets=tuple(c.length_buckets), batch_size=c.train.batch_size,
                mesh=tuple(c.mesh.items()), remat=c.remat, pooling=c.pooling or None),
                cache_dir=self.cache_dir)
        return self._learner

    def prepare(self, seeds) -> None:
        """Load each seed's task and weak labels up front, so bad data fails once, clearly,
        before any run (instead of as a failed record per run)."""
        for seed in sorted(set(seeds)):
            self.weak_labels(seed)
            self.feature_stats(seed)

    # -- planning --------------------------------------------------------------------------
    def plan(self, points: list[dict]) -> list[RunSpec]:
        """Runs for grid points {budget, fraction, seed, **overrides} (from the config's
        `sweep(add, config)`): one run per distinct (overrides, n_weak, n_oracle, seed),
        listing every (budget, fraction) it serves. Overrides are config keys (dotted for
        nested ones) that vary per point, e.g. method or k."""
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
        """The config that identifies a run (its id hashes this)."""
        c = self.run_config(spec.overrides)
        method = {"method": c.method, "loss": c.loss, "oracle_selection": c.oracle_selection,
                  "schedule": c.schedule}
        if c.oracle_selection == "entropy":
            method["selection_temperature"] = c.selection_temperature
        if c.method in ("kshot_sft", "icl"):
            method.update(k=c.k, shot_source=c.shot_source, shot_max_length=c.shot_max_length)
        if c.method == "mixture_sft":
            method["mixture"] = dict(c.mixture)
        return {"task": c.task, "task_options": self.task_options, "n_test": c.n_test,
                "model": c.model, "trainable": c.trainable, "dtype": c.dtype,
                "lora": dict(c.lora), "max_length": c.max_length, "pooling": c.pooling,
                **method,
                "train": dict(c.train),
                "labeler": self.labeler.config_dict(), "oracle_share": c.oracle_share,
                "prices": {"oracle": str(self.prices.oracle), "weak": str(self.prices.weak)},
                "n_weak": spec.n_weak, "n_oracle": spec.n_oracle, "seed": spec.seed}

    def run_dir(self, spec: RunSpec) -> pathlib.Path:
        return self.workdir / "runs" / records.run_id(self.effective(spec))

    def status(self, spec: RunSpec) -> str:
        """`done`, `infeasible`, `failed` or `todo`, from the record on disk."""
        rec = records.read_record(self.run_dir(spec) / "result.json")
        if rec is None:
            return "todo"
        return {"ok": "done"}.get(rec.get("status"), rec.get("status", "todo"))

    # -- one run ---------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> dict:
        """Run one grid point unless its record says ok/infeasible; returns the record."""
        out = self.run_dir(spec)
        existing = records.read_record(out / "result.json")
        if existing is not None and existing.get("status") in ("ok", "infeasible"):
            return existing
        t0 = time.time()
        base = self._base_record(spec)
        try:
            rec = self._train_and_eval(spec, base, out)
        except (PoolExhaustedError, InfeasibleRun) as err:
            rec = {**base, "status": "infeasible", "error": str(err), "n_weak": 0,
                   "n_oracle": 0, "n_shots": 0, "cost": 0.0, "stages": [], "metrics": None}
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a failed run is recorded and retried by the next sweep
            rec = {**base, "status": "failed", "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=8), "n_weak": 0, "n_oracle": 0,
                   "n_shots": 0, "cost": 0.0, "stages": [], "metrics": None}
        rec["wall_s"] = round(time.time() - t0, 3)
        if jax.process_index() == 0:
            records.atomic_write_json(out / "result.json", rec)
        if rec["status"] != "failed":
            remove_run_checkpoints(out)
        return rec

    def _base_record(self, spec: RunSpec) -> dict:
        c = self.run_config(spec.overrides)
        eff = self.effective(spec)
        return {
            "run_id": records.run_id(eff), "task": c.task, "model": c.model,
            "method": c.method, "seed": spec.seed, "weak_labeler": self.labeler.name,
            "weak_label_accuracy": None, "weak_label_positive_rate": None,
            "weak_label_ece": None,
            "prices": {"oracle": float(self.prices.oracle), "weak": float(self.prices.weak)},
            "budget": float(spec.budget) if spec.budget is not None else None,
            "oracle_fractions": [float(f) for f in spec.fractions],
            "grid_points": [[float(b), float(f)] for b, f in spec.grid_points],
            "planned": {"weak": spec.n_weak, "oracle": spec.n_oracle},
            "config": _flatten(c.to_dict()), "versions": _versions(), "n_test": None,
        }

    def _train_and_eval(self, spec: RunSpec, rec: dict, out: pathlib.Path) -> dict:
        c = self.run_config(spec.overrides)
        pools = self.pools(spec.seed)  # raises PoolExhaustedError before any training
        weak_split = pools.take("weak", spec.n_weak)
        oracle_split = pools.take("oracle", spec.n_oracle)
        weak = self.weak_labels(spec.seed)
        task = self.task(spec.seed)
        learner = self.learner
        steps = learner.steps
        key = jax.random.key(spec.seed)
        ledger: dict[str, list[str]] = {"weak": [], "oracle": [], "shots": []}
        shot_ids: list[str] = []

        # -- shots (k-shot SFT, ICL): bought labels of their source, not also trained on
        builder, shot_sources = None, []
        if c.method in ("kshot_sft", "icl"):
            shots, weak_split, oracle_split, shot_ids, shot_sources = self._draw_shots(
                c, weak, weak_split, oracle_split)
            builder = PromptBuilder(learner.tokenizer, shots, shot_max_length=c.shot_max_length,
                                    input_max_length=c.max_length, seed=spec.seed)

        def raw_inputs(split, shuffle=True):
            if builder is None:
                return learner.data(split["id"], split["text"])
            return learner.prepare(builder.encode(split["id"], split["text"], shuffle=shuffle))

        stats = self.feature_stats(spec.seed)
        if stats is not None and builder is not None:
            # prompted features differ from plain ones: standardise with the prompt's own
            # statistics over a fixed sample of unlabelled training texts
            sample = task.train.take(np.random.default_rng([spec.seed, STREAMS["data"], 7])
                                     .permutation(len(task.train))[:PROMPT_STATS_SIZE])
            stats = FeatureStats.of(raw_inputs(sample).features)

        def inputs(split, shuffle=True):
            data = raw_inputs(split, shuffle)
            return stats.apply(data) if stats is not None else data

        # -- stages
        stages = []
        params = steps.fresh_params(jax.random.fold_in(key, STREAMS["init"]))
        stage_plan = self._stage_plan(c, weak, weak_split, oracle_split, spec.seed)
        for index, (source, split, targets, weights) in enumerate(stage_plan):
            if source == "oracle" and c.oracle_selection == "entropy":
                split = self._select_by_entropy(c, spec, pools, params, inputs, len(split),
                                                exclude=shot_ids)
                targets = split["label"].astype(np.float32)
                weights = np.ones(len(split), np.float32)
            params, stage_record = self._stage(c, spec, index, source, split, targets, weights,
                                               params, inputs, out)
            stages.append(stage_record)
            for src in ("weak", "oracle"):
                if source in (src, "mixture"):
                    ids = split["id"][split["source"] == src] if source == "mixture" \
                        else split["id"]
                    ledger[src] += [str(i) for i in ids]
        ledger["shots"] = shot_ids
        for sid, src in zip(shot_ids, shot_sources):
            ledger[src].append(sid)

        # -- evaluation on the fixed test set
        test = task.test
        if c.method == "icl":
            scores = learner.icl_scores(builder, test["id"], test["text"])
            truncated = int(sum(builder.suffix(t)[1] for t in test["text"]))
        else:
            test_inputs = inputs(test)
            scores = predict(steps, params, test_inputs, self._batch_spec(c, None))
            truncated = int(test_inputs.truncated.sum())
        y = test["label"].astype(int)
        pred = (scores > 0).astype(int)
        k = int((pred == y).sum())
        weak_test = weak.lookup(test["id"])
        metrics = {
            "accuracy": k / len(y), "auroc": labels_lib.auroc(scores, y),
            "accuracy_ci": list(wilson(k, len(y))),
            "auroc_ci": list(bootstrap_auroc(scores, y, seed=spec.seed)),
            "agreement_with_weak": float(np.mean(pred == (weak_test > 0.5))),
        }
        n_weak, n_oracle, n_shots = len(ledger["weak"]), len(ledger["oracle"]), len(shot_ids)
        used = sum(s["n_train"] + s["n_val"] for s in stages) + n_shots
        if used != n_weak + n_oracle:
            raise AssertionError(f"ledger ({n_weak} + {n_oracle}) != labels used ({used})")
        if jax.process_index() == 0:
            _write_scores(out / "scores.parquet", test["id"], y, scores)
            records.atomic_write_json(out / "ledger.json", ledger)
        return {**rec, "status": "ok", "weak_label_accuracy": weak.metrics["pool_accuracy"],
                "weak_label_positive_rate": weak.metrics["pool_positive_rate"],
                "weak_label_ece": weak.metrics["pool_ece"],
                "weak_label_test_accuracy": weak.metrics["test_accuracy"],
                "n_weak": n_weak, "n_oracle": n_oracle, "n_shots": n_shots,
                "cost": float(self.prices.cost(n_oracle, n_weak)), "stages": stages,
                "metrics": metrics, "n_test": len(y), "test_truncated": truncated,
                "shot_truncated": builder.shot_truncations if builder else 0}

    # -- pieces of a run --------------------------------------------------------------------
    def _draw_shots(self, c, weak, weak_split, oracle_split):
        """The run's fixed shots: the first k bought labels of `shot_source` (k-shot SFT), or
        up to k bought labels, oracle first (ICL). Returns shots, the remaining splits and ids."""
        if c.method == "kshot_sft":
            src = weak_split if c.shot_source == "weak" else oracle_split
            if len(src) < c.k:
                raise InfeasibleRun(f"kshot_sft needs k={c.k} {c.shot_source} shots but the "
                                    f"grid point bought {len(src)} {c.shot_source} labels")
            picked = src.take(np.arange(c.k))
            rest = src.take(np.arange(c.k, len(src)))
            sources = [c.shot_source] * c.k
            if c.shot_source == "weak":
                weak_split = rest
            else:
                oracle_split = rest
        else:  # icl: the bought labels are the prompt; no training
            n_o = min(c.k, len(oracle_split))
            n_w = min(c.k - n_o, len(weak_split))
            if n_o + n_w == 0:
                raise InfeasibleRun("icl needs at least one bought label for its prompt")
            picked_o, picked_w = oracle_split.take(np.arange(n_o)), weak_split.take(np.arange(n_w))
            from scalable_elicitation.data import concat_splits
            picked = concat_splits([picked_o, picked_w])
            sources = ["oracle"] * n_o + ["weak"] * n_w
            weak_split, oracle_split = weak_split.take(np.arange(0)), oracle_split.take(
                np.arange(0))
        shown = np.array([weak.lookup([i])[0] if s == "weak" else float(y)
                          for i, s, y in zip(picked["id"], sources, picked["label"])])
        return (make_shots(picked["id"], picked["text"], shown), weak_split, oracle_split,
                [str(i) for i in picked["id"]], sources)

    def _stage_plan(self, c, weak, weak_split, oracle_split, seed):
        """(source, split, targets, weights) per stage; empty stages are skipped."""
        if c.method == "icl":
            return []
        if c.method == "mixture_sft":
            from scalable_elicitation.data import concat_splits
            parts, targets, weights = [], [], []
            for src, split, w in (("weak", weak_split, c.mixture.weak_weight),
                                  ("oracle", oracle_split, c.mixture.oracle_weight)):
                if len(split):
                    parts.append(split.with_column("source", np.asarray([src] * len(split))))
                    targets.append(weak.lookup(split["id"]) if src == "weak"
                                   else split["label"].astype(np.float32))
                    weights.append(np.full(len(split), w, np.float32))
            if not parts:
                return []
            union = concat_splits(parts)
            order = np.random.default_rng([seed, STREAMS["data"], 99]).permutation(len(union))
            return [("mixture", union.take(order), np.concatenate(targets)[order].astype(
                np.float32), np.concatenate(weights)[order])]
        plan = []
        if len(weak_split):
            plan.append(("weak", weak_split, weak.lookup(weak_split["id"]).astype(np.float32),
                         np.ones(len(weak_split), np.float32)))
        if len(oracle_split):
            plan.append(("oracle", oracle_split, oracle_split["label"].astype(np.float32),
                         np.ones(len(oracle_split), np.float32)))
        return plan

    def _select_by_entropy(self, c, spec, pools, params, inputs, n, exclude=()):
        """Buy the n oracle labels of highest predictive entropy under the current model
        (temperature 0), or sample n without replacement with probability proportional to
        H^(1/T) (Gumbel top-k on the `selection` stream)."""
        pool = pools.take("oracle", pools.size("oracle"))
        pool = pool.take(~np.isin(pool["id"], np.asarray(list(exclude), dtype=pool["id"].dtype)))
        if n > len(pool):
            raise InfeasibleRun(f"entropy selection needs {n} oracle labels; the pool holds "
                                f"{len(pool)} after the shots")
        scores = predict(self.learner.steps, params, inputs(pool), self._batch_spec(c, None))
        rng = np.random.default_rng([spec.seed, STREAMS["selection"]])
        return pool.take(np.sort(entropy_select(scores, n, c.selection_temperature, rng)))

    def _batch_spec(self, c, n_train):
        """The batch spec of a stage: fixed, or the API-style rule on the stage's size."""
        spec = self.learner.spec
        if c.schedule != "api" or n_train is None:
            return spec
        bs = api_batch_size(n_train)
        dp = data_parallel_size(self.learner.steps.mesh)
        if bs % dp and dp > 1:
            raise ValueError(f"schedule=api uses batch size {bs} for {n_train} labels, which "
                             f"the data-parallel size {dp} does not divide; use a mesh with "
                             "config.mesh.data=1")
        return dataclasses.replace(spec, batch_size=bs)

    def _stage(self, c, spec, index, source, split, targets, weights, params, inputs, out):
        """Train one stage (with checkpoints) and return (kept params, stage record)."""
        learner = self.learner
        api = c.schedule == "api"
        n = len(split)
        stage_cfg = StageConfig(
            lr=c.train.lr, max_visits=c.train.max_visits,
            small_stage_visits=c.train.small_stage_visits, eval_every=c.train.eval_every,
            patience=c.train.patience, min_delta=c.train.min_delta, use_validation=not api,
            epochs=api_epochs(n, api_batch_size(n)) if api else None,
            loss=c.loss if source == "weak" else "xent")
        rng = np.random.default_rng([spec.seed, STREAMS["data"], index])
        tr, va = split_validation(n, stage_cfg, rng)
        data = inputs(split)

        def progress(step, total, loss):
            if self.progress:
                self.progress(f"{source} {step}/{total} loss {loss:.3f}")
            if getattr(self, "tracker", None) is not None:
                self.tracker.scalar(f"{source}/loss", loss, step)

        ckpt = (StageCheckpointer(out / "ckpt" / f"stage{index}",
                                  min_interval_s=c.checkpoint_interval_s)
                if c.checkpoint else None)
        try:
            done = ckpt.restore_done(params) if ckpt else None
            if done is not None:  # finished before an interruption: reuse its result
                return done
            result = run_stage(
                learner.steps, params, data.take(tr), targets[tr],
                data.take(va) if len(va) else None, targets[va] if len(va) else None,
                stage_cfg, seed_path=[spec.seed, STREAMS["train"], index],
                key=jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed),
                                                          STREAMS["train"]), index),
                spec=self._batch_spec(c, n), source=source, weights=weights[tr],
                progress=progress, checkpoint=ckpt)
            if ckpt:
                ckpt.save_done(result.params, result.record)
            return result.params, result.record
        finally:
            if ckpt:
                ckpt.close()


def binary_entropy(scores: np.ndarray) -> np.ndarray:
    """Predictive entropy H(p) (nats) of p = sigmoid(score), score = logit difference."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    return -(p * np.log(np.clip(p, 1e-300, 1)) + (1 - p) * np.log(np.clip(1 - p, 1e-300, 1)))


def entropy_select(scores, n: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of n examples: the highest entropy (temperature 0, ties by position), or a
    sample without replacement with probability proportional to H^(1/T) (Gumbel top-k)."""
    h = binary_entropy(scores)
    if temperature == 0:
        return np.argsort(-h, kind="stable")[:n]
    gumbel = -np.log(-np.log(rng.random(len(h))))
    keys = np.log(np.maximum(h, 1e-300)) / temperature + gumbel
    return np.argsort(-keys, kind="stable")[:n]


def api_batch_size(n: int) -> int:
    """API-style batch size (SPEC section 6): 1 if n < 1024, 2 if n < 4096, else 8."""
    return 1 if n < 1024 else 2 if n < 4096 else 8


def api_epochs(n: int, bs: int) -> float:
    """API-style epochs: ceil(100 / (n // bs)) if n < 30, 3 if n < 4096, 2 if n < 16384,
    else 1."""
    if n < 30:
        return float(math.ceil(100 / max(1, n // bs)))
    return 3.0 if n < 4096 else 2.0 if n < 16384 else 1.0


def _write_scores(path, ids, labels, scores):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"id": np.asarray(ids).astype(str), "label": np.asarray(labels),
                      "score": np.asarray(scores, np.float32)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    records.atomic_write_bytes(path, buf.getvalue())


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = [str(x) if isinstance(x, Fraction) else x for x in v]
        else:
            out[key] = str(v) if isinstance(v, Fraction) else v
    return out


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("jax", "flax", "optax", "transformers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
