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
from scalable_elicitation.stage import StageConfig, predict, run_stage, split_validation

METHODS = ("seq_sft",)
STREAMS = {"data": 1, "init": 2, "train": 3, "selection": 4}  # named RNG streams of a run


@dataclasses.dataclass(frozen=True)
class RunSpec:
    n_weak: int
    n_oracle: int
    seed: int
    budget: Fraction | None
    fractions: tuple[Fraction, ...]
    grid_points: tuple[tuple[Fraction, Fraction], ...] = ()


def validate(config) -> None:
    """Check the config before anything loads or compiles; errors name the key."""
    def need(cond, key, msg):
        if not cond:
            raise ValueError(f"config.{key}: {msg}")

    need(config.method in METHODS, "method", f"{config.method!r}; allowed: {METHODS}")
    need(config.trainable in ("lora", "full", "head"), "trainable",
         f"{config.trainable!r}; allowed: lora, full, head")
    need(config.loss in ("xent", "logconf"), "loss", f"{config.loss!r}; allowed: xent, logconf")
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
        resolve_options(config.task, dict(config.task_options))
    except ValueError as err:
        raise ValueError(f"config.task: {err}") from None


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
        self.workdir = pathlib.Path(workdir)
        self.cache_dir = self.workdir / "cache"
        self.progress = progress
        self.prices = budget_lib.Prices.of(config.prices.oracle, config.prices.weak)
        self.task_options = dict(config.task_options)
        self._tasks: dict[int, Any] = {}
        self._weak: dict[int, Any] = {}
        self._pools: dict[int, Any] = {}
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

    @property
    def learner(self) -> Learner:
        if self._learner is None:
            c = self.config
            self._learner = Learner(LearnerConfig(
                c.model, trainable=c.trainable, dtype=c.dtype, lora_rank=c.lora.rank,
                lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, max_length=c.max_length,
                buckets=tuple(c.length_buckets), batch_size=c.train.batch_size,
                mesh=tuple(c.mesh.items()), remat=c.remat), cache_dir=self.cache_dir)
        return self._learner

    # -- planning --------------------------------------------------------------------------
    def plan(self, points: list[dict]) -> list[RunSpec]:
        """Runs for grid points {budget, fraction, seed} (from the config's `sweep(add)`):
        one run per distinct (n_weak, n_oracle, seed), listing every point it serves."""
        merged: dict[tuple[int, int, int], list[tuple[Fraction, Fraction]]] = {}
        for pt in points:
            unknown = set(pt) - {"budget", "fraction", "seed"}
            if unknown:
                raise ValueError(f"sweep point {pt}: unknown keys {sorted(unknown)}; allowed: "
                                 "budget, fraction, seed")
            p = budget_lib.labels_for(pt["budget"], pt["fraction"], self.prices)
            merged.setdefault((p.n_weak, p.n_oracle, int(pt["seed"])), []).append(
                (p.budget, p.fraction))
        specs = []
        for (nw, no, seed), pts in merged.items():
            pts = sorted(set(pts))
            b0 = pts[0][0]
            specs.append(RunSpec(nw, no, seed, b0, tuple(f for b, f in pts if b == b0),
                                 tuple(pts)))
        return specs

    def effective(self, spec: RunSpec) -> dict:
        """The config that identifies a run (its id hashes this)."""
        c = self.config
        return {"task": c.task, "task_options": self.task_options, "n_test": c.n_test,
                "model": c.model, "trainable": c.trainable, "dtype": c.dtype,
                "lora": dict(c.lora), "max_length": c.max_length,
                "method": c.method, "loss": c.loss, "oracle_selection": "random",
                "schedule": "default", "train": dict(c.train),
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
        except PoolExhaustedError as err:
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
        c = self.config
        eff = self.effective(spec)
        return {
            "run_id": records.run_id(eff), "task": c.task, "model": c.model,
            "method": c.method, "seed": spec.seed, "weak_labeler": self.labeler.name,
            "weak_label_accuracy": None,
            "prices": {"oracle": float(self.prices.oracle), "weak": float(self.prices.weak)},
            "budget": float(spec.budget) if spec.budget is not None else None,
            "oracle_fractions": [float(f) for f in spec.fractions],
            "grid_points": [[float(b), float(f)] for b, f in spec.grid_points],
            "planned": {"weak": spec.n_weak, "oracle": spec.n_oracle},
            "config": _flatten(c.to_dict()), "versions": _versions(), "n_test": None,
        }

    def _train_and_eval(self, spec: RunSpec, rec: dict, out: pathlib.Path) -> dict:
        c = self.config
        pools = self.pools(spec.seed)  # may raise PoolExhaustedError below, before training
        weak_split = pools.take("weak", spec.n_weak)
        oracle_split = pools.take("oracle", spec.n_oracle)
        weak = self.weak_labels(spec.seed)
        task = self.task(spec.seed)
        learner = self.learner
        steps = learner.steps
        key = jax.random.key(spec.seed)
        init_key, train_key = (jax.random.fold_in(key, STREAMS["init"]),
                               jax.random.fold_in(key, STREAMS["train"]))
        params = steps.fresh_params(init_key)
        ledger = {"weak": [], "oracle": []}
        stages = []
        stage_cfg = StageConfig(
            lr=c.train.lr, max_visits=c.train.max_visits,
            small_stage_visits=c.train.small_stage_visits, eval_every=c.train.eval_every,
            patience=c.train.patience, min_delta=c.train.min_delta)
        for index, (source, split) in enumerate((("weak", weak_split),
                                                 ("oracle", oracle_split))):
            n = len(split)
            if n == 0:
                continue  # an empty stage is skipped: all-weak and all-oracle are endpoints
            targets = (weak.lookup(split["id"]) if source == "weak"
                       else split["label"]).astype(np.float32)
            rng = np.random.default_rng([spec.seed, STREAMS["data"], index])
            tr, va = split_validation(n, stage_cfg, rng)
            data = learner.data(split["id"], split["text"])
            cfg_i = dataclasses.replace(stage_cfg, loss=c.loss if source == "weak" else "xent")

            def progress(step, total, loss, _s=source):
                if self.progress:
                    self.progress(f"{_s} {step}/{total} loss {loss:.3f}")

            ckpt = (StageCheckpointer(out / "ckpt" / f"stage{index}",
                                      min_interval_s=c.checkpoint_interval_s)
                    if c.checkpoint else None)
            done = ckpt.restore_done(params) if ckpt else None
            if done is not None:  # finished before an interruption: reuse its result
                params, stage_record = done
            else:
                result = run_stage(
                    steps, params, data.take(tr), targets[tr],
                    data.take(va) if len(va) else None, targets[va] if len(va) else None,
                    cfg_i, seed_path=[spec.seed, STREAMS["train"], index],
                    key=jax.random.fold_in(train_key, index), spec=learner.spec,
                    source=source, progress=progress, checkpoint=ckpt)
                params, stage_record = result.params, result.record
                if ckpt:
                    ckpt.save_done(params, stage_record)
            if ckpt:
                ckpt.close()
            stages.append(stage_record)
            ledger[source] = [str(i) for i in split["id"]]  # train + validation: all bought
        test = task.test
        test_data = learner.data(test["id"], test["text"])
        scores = predict(steps, params, test_data, learner.spec)
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
        n_weak, n_oracle = len(ledger["weak"]), len(ledger["oracle"])
        n_shots = 0
        used = sum(s["n_train"] + s["n_val"] for s in stages) + n_shots
        if used != n_weak + n_oracle:
            raise AssertionError(f"ledger ({n_weak} + {n_oracle}) != labels used ({used})")
        if jax.process_index() == 0:
            _write_scores(out / "scores.parquet", test["id"], y, scores)
            records.atomic_write_json(out / "ledger.json", ledger)
        return {**rec, "status": "ok", "weak_label_accuracy": weak.metrics["pool_accuracy"],
                "weak_label_test_accuracy": weak.metrics["test_accuracy"],
                "n_weak": n_weak, "n_oracle": n_oracle, "n_shots": n_shots,
                "cost": float(self.prices.cost(n_oracle, n_weak)), "stages": stages,
                "metrics": metrics, "n_test": len(y)}


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
