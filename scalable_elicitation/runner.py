"""The sweep runner: one run of a planned sweep -> one record (SPEC sections 2, 6, 7, 11).

    sweep = Sweep(config, workdir)   # a `planning.Planner` plus the per-seed caches
    for spec in sweep.plan(points): sweep.run(spec)

A run buys its labels from nested prefixes of the per-seed pools, asks its method
(`methods.REGISTRY[config.method]`) for its shots and stages, trains the stages, evaluates on the
fixed test set, and writes `result.json`, the per-example `scores.parquet` and its `ledger.json`
atomically. Records marked `ok` or `infeasible` are skipped on a rerun; `failed` ones are
retried.
"""
from __future__ import annotations

import os
import pathlib
import platform
import time
import traceback
from typing import Any

import jax
import numpy as np

from scalable_elicitation import methods, records, schedules, selection
from scalable_elicitation.batching import FeatureStats
from scalable_elicitation.checkpoint import StageCheckpointer, remove_run_checkpoints
from scalable_elicitation.data import PoolExhaustedError, load_task, make_pools
from scalable_elicitation.labelers import cached_weak_labels
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.metrics import auroc, bootstrap_auroc, wilson
from scalable_elicitation.methods import STREAMS, Bought, InfeasibleRun
from scalable_elicitation.planning import Planner, RunSpec
from scalable_elicitation.prompts import PromptBuilder, make_shots
from scalable_elicitation.stage import predict, run_stage, split_validation

PROMPT_STATS_SIZE = 256  # unlabelled training texts whose prompted features standardise a probe


def learner_config(config) -> LearnerConfig:
    """The learner a (run's) config asks for: model, trainable scope, lengths, batch, mesh."""
    c = config
    return LearnerConfig(
        c.model, trainable=c.trainable, dtype=c.dtype, lora_rank=c.lora.rank,
        lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, max_length=c.max_length,
        buckets=tuple(c.length_buckets), batch_size=c.train.batch_size,
        mesh=tuple(c.mesh.items()), remat=c.remat, pooling=c.pooling or None)


class Sweep(Planner):
    """A planned sweep and what its runs share, built lazily and kept: per seed the task, weak
    labels, pools and probe statistics; per learner config (a point may override the model,
    lengths or batch size) the learner, i.e. loaded weights and compiled steps."""

    def __init__(self, config, workdir: str | os.PathLike, *, progress=None):
        super().__init__(config, workdir)
        self.progress = progress  # progress(message), e.g. a progress bar's postfix
        self._tasks: dict[int, Any] = {}
        self._weak: dict[int, Any] = {}
        self._pools: dict[int, Any] = {}
        self._stats: dict[tuple, FeatureStats] = {}
        self._learners: dict[LearnerConfig, Learner] = {}

    # -- shared, built lazily --------------------------------------------------------------
    def task(self, seed: int):
        if seed not in self._tasks:
            self._tasks[seed] = load_task(self.config.task, seed=seed, n_test=self.config.n_test,
                                          cache_dir=self.cache_dir, **self.task_options)
        return self._tasks[seed]

    def weak_labels(self, seed: int):
        if seed not in self._weak:
            self._weak[seed] = cached_weak_labels(self.labeler, self.task(seed), seed,
                                                  self.cache_dir)
        return self._weak[seed]

    def pools(self, seed: int):
        if seed not in self._pools:
            weak = self.weak_labels(seed)
            self._pools[seed] = make_pools(self.task(seed).train, seed=seed,
                                           exclude_ids=weak.train_ids,
                                           oracle_share=self.config.oracle_share)
        return self._pools[seed]

    def learner_for(self, config) -> Learner:
        """The learner of a run's config, shared by every run that asks for the same one."""
        cfg = learner_config(config)
        if cfg not in self._learners:
            self._learners[cfg] = Learner(cfg, cache_dir=self.cache_dir)
        return self._learners[cfg]

    @property
    def learner(self) -> Learner:
        """The learner of the sweep's own config."""
        return self.learner_for(self.config)

    def feature_stats(self, seed: int, learner: Learner | None = None) -> FeatureStats | None:
        """A probe's per-dimension feature statistics over the seed's unlabelled training
        texts (SPEC section 5); None when the model is finetuned."""
        learner = self.learner if learner is None else learner
        if not learner.probe:
            return None
        key = (learner.cfg, seed)
        if key not in self._stats:
            train = self.task(seed).train
            self._stats[key] = learner.feature_stats(train["id"], train["text"])
        return self._stats[key]

    def prepare(self, seeds) -> None:
        """Load each seed's task and weak labels up front, so bad data fails once, clearly,
        before any run (instead of as a failed record per run)."""
        for seed in sorted(set(seeds)):
            self.weak_labels(seed)
            self.feature_stats(seed)

    # -- one run ---------------------------------------------------------------------------
    def run(self, spec: RunSpec, log=None) -> records.Record:
        """Run one grid point unless its record says ok/infeasible; returns the record.
        `log`, if given, receives every training step's loss as `log.scalar(name, value,
        step)` (e.g. a `tracking.RunLog`)."""
        out = self.run_dir(spec)
        existing = records.read_record(out / "result.json")
        if existing is not None and existing.get("status") in ("ok", "infeasible"):
            return existing
        t0 = time.time()
        base = self._base_record(spec)
        try:
            rec = self._train_and_eval(spec, base, out, log)
        except (PoolExhaustedError, InfeasibleRun) as err:
            rec = records.not_ok(base, "infeasible", str(err))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a failed run is recorded and retried by the next sweep
            rec = records.not_ok(base, "failed", f"{type(err).__name__}: {err}",
                                 traceback.format_exc(limit=8))
        rec["wall_s"] = round(time.time() - t0, 3)
        if jax.process_index() == 0:
            records.atomic_write_json(out / "result.json", rec)
        if rec["status"] != "failed":
            remove_run_checkpoints(out)
        return rec

    def _base_record(self, spec: RunSpec) -> records.Record:
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
            "config": records.flatten(c.to_dict()), "versions": _versions(), "n_test": None,
        }

    def _train_and_eval(self, spec: RunSpec, rec: dict, out: pathlib.Path, log) -> dict:
        c = self.run_config(spec.overrides)
        method = methods.get(c.method)
        pools = self.pools(spec.seed)  # raises PoolExhaustedError before any training
        bought = Bought(pools.take("weak", spec.n_weak), pools.take("oracle", spec.n_oracle))
        weak = self.weak_labels(spec.seed)
        task = self.task(spec.seed)
        learner = self.learner_for(c)
        steps = learner.steps
        key = jax.random.key(spec.seed)

        # -- shots (k-shot SFT, ICL): bought labels of their source, not also trained on
        bought = method.take_shots(c, weak, bought)
        shots = bought.shots
        shot_ids = shots.ids if shots is not None else []
        builder = None
        if shots is not None:
            builder = PromptBuilder(
                learner.tokenizer, make_shots(shots.split["id"], shots.split["text"], shots.shown),
                shot_max_length=c.shot_max_length, input_max_length=c.max_length, seed=spec.seed)

        def raw_inputs(split, shuffle=True):
            if builder is None:
                return learner.data(split["id"], split["text"])
            return learner.prepare(builder.encode(split["id"], split["text"], shuffle=shuffle))

        stats = self.feature_stats(spec.seed, learner)
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
        ledger: dict[str, list[str]] = {"weak": [], "oracle": [], "shots": shot_ids}
        stages = []
        params = steps.fresh_params(jax.random.fold_in(key, STREAMS["init"]))
        for index, stage in enumerate(method.stages(c, weak, bought, spec.seed)):
            split, targets, weights = stage.split, stage.targets, stage.weights
            if stage.source == "oracle" and c.oracle_selection == "entropy":
                split = self._select_by_entropy(c, spec, learner, params, inputs, len(split),
                                                exclude=shot_ids)
                targets = split["label"].astype(np.float32)
                weights = np.ones(len(split), np.float32)
            params, stage_record = self._stage(c, spec, learner, index, stage.source, split,
                                               targets, weights, params, inputs, out, log)
            stages.append(stage_record)
            for src in ("weak", "oracle"):
                if stage.source in (src, "mixture"):
                    ids = split["id"][split["source"] == src] if stage.source == "mixture" \
                        else split["id"]
                    ledger[src] += [str(i) for i in ids]
        for sid, src in zip(shot_ids, shots.sources if shots is not None else ()):
            ledger[src].append(sid)

        # -- evaluation on the fixed test set
        test = task.test
        if method.in_context:
            scores = learner.icl_scores(builder, test["id"], test["text"])
            truncated = int(sum(builder.suffix(t)[1] for t in test["text"]))
        else:
            test_inputs = inputs(test)
            scores = predict(steps, params, test_inputs, learner.spec)
            truncated = int(test_inputs.truncated.sum())
        y = test["label"].astype(int)
        pred = (scores > 0).astype(int)
        k = int((pred == y).sum())
        weak_test = weak.lookup(test["id"])
        metrics = {
            "accuracy": k / len(y), "auroc": auroc(scores, y),
            "accuracy_ci": list(wilson(k, len(y))),
            "auroc_ci": list(bootstrap_auroc(scores, y, seed=spec.seed)),
            "agreement_with_weak": float(np.mean(pred == (weak_test > 0.5))),
        }
        n_weak, n_oracle, n_shots = len(ledger["weak"]), len(ledger["oracle"]), len(shot_ids)
        used = sum(s["n_train"] + s["n_val"] for s in stages) + n_shots
        if used != n_weak + n_oracle:
            raise AssertionError(f"ledger ({n_weak} + {n_oracle}) != labels used ({used})")
        if jax.process_index() == 0:
            records.write_scores(out / "scores.parquet", test["id"], y, scores)
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
    def _select_by_entropy(self, c, spec, learner, params, inputs, n, exclude=()):
        """Buy the n oracle labels the current model is least sure of (`selection`)."""
        pools = self.pools(spec.seed)
        pool = selection.candidates(pools.take("oracle", pools.size("oracle")), exclude)
        if n > len(pool):
            raise InfeasibleRun(f"entropy selection needs {n} oracle labels; the pool holds "
                                f"{len(pool)} after the shots")
        scores = predict(learner.steps, params, inputs(pool), learner.spec)
        rng = np.random.default_rng([spec.seed, STREAMS["selection"]])
        return pool.take(np.sort(selection.entropy_select(scores, n, c.selection_temperature,
                                                          rng)))

    def _stage(self, c, spec, learner, index, source, split, targets, weights, params, inputs,
               out, log):
        """Train one stage (with checkpoints) and return (kept params, stage record)."""
        n = len(split)
        stage_cfg = schedules.stage_config(c, source, n)
        rng = np.random.default_rng([spec.seed, STREAMS["data"], index])
        tr, va = split_validation(n, stage_cfg, rng)
        data = inputs(split)

        def progress(step, total, loss):
            if self.progress:
                self.progress(f"{source} {step}/{total} loss {loss:.3f}")
            if log is not None:
                log.scalar(f"{source}/loss", loss, step)

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
                spec=schedules.batch_spec(c, learner.spec, learner.steps.mesh, n),
                source=source, weights=weights[tr], progress=progress, checkpoint=ckpt)
            if ckpt:
                ckpt.save_done(result.params, result.record)
            return result.params, result.record
        finally:
            if ckpt:
                ckpt.close()


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("jax", "flax", "optax", "transformers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
