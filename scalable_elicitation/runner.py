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

import dataclasses
import functools
import os
import pathlib
import platform
import time
import traceback
from typing import Any

import jax
import numpy as np

from scalable_elicitation import groups, methods, records, schedules, selection
from scalable_elicitation.batching import BatchSpec, FeatureStats
from scalable_elicitation.checkpoint import StageCheckpointer, remove_run_checkpoints
from scalable_elicitation.data import PoolExhaustedError, load_task, make_pools
from scalable_elicitation.labelers import cached_weak_labels
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.metrics import auroc, bootstrap_auroc, wilson
from scalable_elicitation.methods import STREAMS, Bought, InfeasibleRun
from scalable_elicitation.planning import Planner, RunSpec
from scalable_elicitation.prompt_inputs import SeedPrompts, make_builder, stats_sample
from scalable_elicitation.prompts import PromptBuilder
from scalable_elicitation.stage import predict, run_stage, split_validation, stage_schedule
from scalable_elicitation.train import Steps


def learner_config(config) -> LearnerConfig:
    """The learner a (run's) config asks for: model, trainable scope, lengths, batch, mesh."""
    c = config
    return LearnerConfig(
        c.model, trainable=c.trainable, dtype=c.dtype, lora_rank=c.lora.rank,
        lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, max_length=c.max_length,
        buckets=tuple(c.length_buckets), batch_size=c.train.batch_size,
        mesh=tuple(c.mesh.items()), remat=c.remat, pooling=c.pooling or None)


class Sweep(Planner):
    """A planned sweep and what its runs share, built lazily and kept: the task (one training
    split and one test set, whatever the seed), per seed the weak labels and pools, per learner
    config (a point may override the model, lengths or batch size) the learner, i.e. loaded
    weights and compiled steps, and a probe's feature statistics and test inputs."""

    def __init__(self, config, workdir: str | os.PathLike, *, progress=None):
        super().__init__(config, workdir)
        self.progress = progress  # progress(message), e.g. a progress bar's postfix
        self._task = None
        self._weak: dict[int, Any] = {}
        self._pools: dict[int, Any] = {}
        self._stats: dict[tuple, FeatureStats] = {}
        self._learners: dict[LearnerConfig, Learner] = {}
        self._tests: dict[tuple, Any] = {}
        self._prompts = SeedPrompts()  # issue 23: prompted-feature statistics, once per seed

    # -- shared, built lazily --------------------------------------------------------------
    def task(self):
        """The task's splits: one balanced training split, like the test set fixed by the task
        (`config.split_seed`), never by a run's seed. A run's seed draws its pools, the
        labeller's examples, the initialisation and the batch order from it, so every seed
        reuses the same texts' features."""
        if self._task is None:
            self._task = load_task(self.config.task, seed=self.config.get("split_seed", 0),
                                   n_test=self.config.n_test, cache_dir=self.cache_dir,
                                   **self.task_options)
        return self._task

    def weak_labels(self, seed: int):
        if seed not in self._weak:
            self._weak[seed] = cached_weak_labels(self.labeler, self.task(), seed,
                                                  self.cache_dir)
        return self._weak[seed]

    def pools(self, seed: int):
        if seed not in self._pools:
            weak = self.weak_labels(seed)
            self._pools[seed] = make_pools(self.task().train, seed=seed,
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

    def feature_stats(self, learner: Learner | None = None) -> FeatureStats | None:
        """A probe's per-dimension feature statistics over the task's unlabelled training
        texts (SPEC section 5); None when the model is finetuned."""
        learner = self.learner if learner is None else learner
        if not learner.probe:
            return None
        key = learner.cfg
        if key not in self._stats:
            train = self.task().train
            self._stats[key] = learner.feature_stats(train["id"], train["text"])
        return self._stats[key]

    def group_size(self, specs) -> int:
        """How many runs train together: `config.parallel_runs`, or with 0 as many as fit the
        device's memory (`groups.auto_group_size`) for the sweep's largest stage."""
        if self.config.get("parallel_runs", 0) >= 1:
            return int(self.config.parallel_runs)
        specs = list(specs)
        if not specs:
            return 1
        largest = max(max(s.n_weak, s.n_oracle) for s in specs)
        mesh = self.learner.steps.mesh
        axis = groups.run_mesh_axis(mesh, self.config.get("group_sharding", "rows"))
        devices = 1 if axis is None else mesh.shape[axis]  # whole runs spread over them
        return groups.auto_group_size(self.learner, largest, len(specs), devices=devices)

    def group_shapes(self, specs) -> groups.Shapes:
        """The padded shapes of every group of these runs: their largest stage's training
        and validation rows and steps, and the group size, so the loop compiles once."""
        c, sizes = self.config, {n for s in specs for n in (s.n_weak, s.n_oracle) if n > 0}
        rows = val = steps = 0
        for n in sizes:
            cfg = schedules.stage_config(c, "oracle", n)
            tr, va = split_validation(n, cfg, np.random.default_rng(0))  # sizes only
            rows, val = max(rows, len(tr)), max(val, len(va))
            steps = max(steps, stage_schedule(len(tr), len(va), cfg,
                                              c.train.batch_size).total)
        return groups.Shapes(rows, val, steps, self.group_size(specs))

    def prepare(self, seeds) -> None:
        """Load each seed's task and weak labels up front, so bad data fails once, clearly,
        before any run (instead of as a failed record per run)."""
        self.feature_stats()
        for seed in sorted(set(seeds)):
            self.weak_labels(seed)

    # -- runs -------------------------------------------------------------------------------
    def run(self, spec: RunSpec, log=None) -> records.Record:
        """Run one grid point unless its record says ok/infeasible; returns the record.
        `log`, if given, receives every training step's loss as `log.scalar(name, value,
        step)` (e.g. a `tracking.RunLog`)."""
        return self.run_group([spec], [log], together=False)[0]

    def run_group(self, specs, logs=None, *, together: bool = True,
                  shapes: groups.Shapes | None = None) -> list[records.Record]:
        """Run these grid points, returning their records in order (finished ones are read
        back, not rerun). With `together`, their stages train as groups (SPEC section 13): every
        run advances to its next stage, the pending stages that share a model and shapes train
        in one `groups.run_stages_grouped` call, and each run continues with its own result (a
        selection between stages is the run's own step). Else each stage trains alone with
        `stage.run_stage`. A record does not depend on the runs it trained with; `shapes`
        (`group_shapes` of the whole sweep) keeps every group at one compiled shape."""
        shapes = shapes or groups.Shapes()
        logs = list(logs) if logs is not None else [None] * len(specs)
        recs: list[records.Record | None] = [None] * len(specs)
        live: dict[int, _Live] = {}
        for i, spec in enumerate(specs):
            out = self.run_dir(spec)
            existing = records.read_record(out / "result.json")
            if existing is not None and existing.get("status") in ("ok", "infeasible"):
                recs[i] = existing
                continue
            base = self._base_record(spec)
            live[i] = _Live(self._train_and_eval(spec, base, out, logs[i]), base, out,
                            time.time())
            self._advance(live, recs, i, None)
        while live:
            pending = {i: r.job for i, r in live.items()}
            for batch in _stage_batches(pending, together, shapes.members or len(specs)):
                t0 = time.time()
                jobs = [pending[i] for i in batch]
                if isinstance(jobs[0], IclJob):
                    results = _or_errors(lambda: _icl_scores(jobs), len(jobs))
                elif together:
                    results = _or_errors(lambda: groups.run_stages_grouped(
                        jobs[0].steps, [j.member for j in jobs], spec=jobs[0].spec,
                        checkpoint_interval_s=jobs[0].checkpoint_interval_s,
                        return_errors=True, shapes=shapes,
                        group_sharding=self.config.get("group_sharding", "rows")), len(jobs))
                else:
                    results = [_or_errors(lambda: [_run_alone(j)], 1)[0] for j in jobs]
                took = time.time() - t0
                for i, result in zip(batch, results):
                    self._advance(live, recs, i, result, took)
        return recs

    def _advance(self, live, recs, i, result, took: float = 0.0) -> None:
        """Send run i its stage's result (or error) and take its next stage, or finish it."""
        run = live[i]
        try:
            if isinstance(result, BaseException):
                run.job = run.gen.throw(result)
            else:
                run.job = run.gen.send(None if result is None else (result, took))
            return
        except StopIteration as stop:
            rec = stop.value
        except (PoolExhaustedError, InfeasibleRun) as err:
            rec = records.not_ok(run.base, "infeasible", str(err))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # a failed run is recorded and retried by the next sweep
            rec = records.not_ok(run.base, "failed", f"{type(err).__name__}: {err}",
                                 traceback.format_exc(limit=8))
        rec["wall_s"] = round(time.time() - run.t0, 3)
        if jax.process_index() == 0:
            records.atomic_write_json(run.out / "result.json", rec)
        if rec["status"] != "failed":
            remove_run_checkpoints(run.out)
        recs[i] = rec
        del live[i]

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
            "config": records.flatten(c.to_dict()), "versions": dict(_versions()), "n_test": None,
        }

    def _train_and_eval(self, spec: RunSpec, rec: dict, out: pathlib.Path, log):
        """One run as a generator: it yields a `StageJob` per training stage, is sent back
        (StageResult, seconds), and returns the run's record (`run_group` drives it)."""
        c = self.run_config(spec.overrides)
        method = methods.get(c.method)
        pools = self.pools(spec.seed)  # raises PoolExhaustedError before any training
        bought = Bought(pools.take("weak", spec.n_weak), pools.take("oracle", spec.n_oracle))
        weak = self.weak_labels(spec.seed)
        task = self.task()
        learner = self.learner_for(c)
        steps = learner.steps
        key = jax.random.key(spec.seed)

        # -- shots (k-shot SFT, ICL): bought labels of their source, not also trained on
        bought = method.take_shots(c, weak, bought)
        shots = bought.shots
        shot_ids = shots.ids if shots is not None else []
        # issue 23: a seed's runs share their shots (its pool's prefix), so their prompts,
        # prompted features and the statistics standardising them (`prompt_inputs`)
        builder = make_builder(learner, shots, c, spec.seed) if shots is not None else None

        def raw_inputs(split):
            if builder is None:
                return learner.data(split["id"], split["text"])
            return learner.prompted(builder, split["id"], split["text"])

        stats = self.feature_stats(learner)
        if stats is not None and builder is not None and not method.in_context:
            # (an in-context run's LM scores read no features: no statistics to compute)
            stats = self._prompts.stats(learner, builder, stats_sample(pools.weak, shot_ids))

        def inputs(split):
            data = raw_inputs(split)
            return stats.apply(data) if stats is not None else data

        # -- stages
        ledger: dict[str, list[str]] = {"weak": [], "oracle": [], "shots": shot_ids}
        stages = []
        params = steps.fresh_params(jax.random.fold_in(key, STREAMS["init"]))
        previous_val = None  # the last stage's own validation (inputs, labels), if it had one
        for index, stage in enumerate(method.stages(c, weak, bought, spec.seed)):
            split, targets, weights = stage.split, stage.targets, stage.weights
            if stage.source == "oracle" and c.oracle_selection == "entropy":
                split = self._select_by_entropy(c, spec, learner, params, inputs, len(split),
                                                exclude=shot_ids)
                targets = split["label"].astype(np.float32)
                weights = np.ones(len(split), np.float32)
            params, stage_record, previous_val = yield from self._stage(
                c, spec, learner, index, stage.source, split, targets, weights, params, inputs,
                out, log, previous_val)
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
        if method.in_context:  # scored with the other ICL runs of a group (`run_group`)
            scores, _ = yield IclJob(learner, builder, test)
            truncated = int(sum(builder.suffix(t)[1] for t in test["text"]))
        else:
            test_inputs = (self.test_inputs(learner, stats) if builder is None
                           else inputs(test))
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

    def test_inputs(self, learner: Learner, stats):
        """The test inputs without a prompt, standardised for a probe: the same for every run
        of the learner, so built once."""
        key = learner.cfg
        if key not in self._tests:
            test = self.task().test
            data = learner.data(test["id"], test["text"])
            self._tests[key] = stats.apply(data) if stats is not None else data
        return self._tests[key]

    def _stage(self, c, spec, learner, index, source, split, targets, weights, params, inputs,
               out, log, previous_val=None):
        """One stage (with checkpoints), as a generator: yields its `StageJob` and returns
        (kept params, stage record, its own validation (inputs, labels) or None). A stage too
        small for a carve-out may be validated on `previous_val`, the previous stage's
        (`schedules.borrows_validation`). A finished stage's checkpoint is reused without training;
        a stage that trained for at least `checkpoint_interval_s` saves its kept params, so a
        run killed in a later stage resumes after it (a shorter one is retrained, identically:
        the data order and initialisation are pure functions of the seed)."""
        n = len(split)
        stage_cfg = schedules.stage_config(c, source, n)
        rng = np.random.default_rng([spec.seed, STREAMS["data"], index])
        tr, va = split_validation(n, stage_cfg, rng)
        data = inputs(split)
        own_val = (data.take(va), targets[va]) if len(va) else None
        val = own_val
        if index > 0:  # methods yield only stages with labels: this one continues
            stage_cfg = dataclasses.replace(stage_cfg, continues=True)
        if schedules.borrows_validation(c, stage_cfg, len(va), 0 if previous_val is None
                                        else len(previous_val[1])):
            stage_cfg = dataclasses.replace(stage_cfg, borrowed_val=True)
            val = previous_val

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
                return (*done, own_val)
            member = groups.Member(
                params, data.take(tr), targets[tr], val[0] if val else None,
                val[1] if val else None, stage_cfg,
                seed_path=[spec.seed, STREAMS["train"], index],
                key=jax.random.fold_in(jax.random.fold_in(jax.random.key(spec.seed),
                                                          STREAMS["train"]), index),
                source=source, weights=weights[tr], checkpoint=ckpt, progress=progress)
            result, took = yield StageJob(
                member, learner.steps, schedules.batch_spec(c, learner.spec, learner.steps.mesh,
                                                            n),
                c.checkpoint_interval_s)
            if ckpt and took >= c.checkpoint_interval_s:
                ckpt.save_done(result.params, result.record)
            return result.params, result.record, own_val
        finally:
            if ckpt:
                ckpt.close()


@dataclasses.dataclass
class StageJob:
    """A stage a run waits for: the member to train, on which steps, with which batches."""
    member: groups.Member
    steps: Steps
    spec: BatchSpec
    checkpoint_interval_s: float

    @property
    def planned_steps(self) -> int:
        m = self.member
        return stage_schedule(len(m.train), len(m.val) if m.has_val else 0, m.cfg,
                              self.spec.batch_size).total


@dataclasses.dataclass
class _Live:
    """A run in flight in `Sweep.run_group`."""
    gen: Any  # the run's `_train_and_eval` generator
    base: records.Record
    out: pathlib.Path
    t0: float
    job: Any = None  # the StageJob or IclJob it waits for


def _or_errors(fn, n: int) -> list:
    """fn()'s per-run results, or its error in place of each of the n runs' (a failed batch
    fails its runs, which are recorded and retried); a kill still stops the sweep."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - the runs' own failure, recorded per run
        return [err] * n


def _run_alone(job: StageJob | IclJob):
    if isinstance(job, IclJob):
        return _icl_scores([job])[0]
    m = job.member
    return run_stage(job.steps, m.params, m.train, m.targets, m.val, m.val_labels, m.cfg,
                     seed_path=m.seed_path, key=m.key, spec=job.spec, source=m.source,
                     weights=m.weights, progress=m.progress, checkpoint=m.checkpoint)


@dataclasses.dataclass
class IclJob:
    """An in-context run waiting for its test scores: its prompt and the test inputs."""
    learner: Learner
    builder: PromptBuilder
    test: Any  # the seed's test split

    def key(self) -> tuple:
        """ICL runs with equal keys are scored together: one model, one input encoding, the
        same test inputs."""
        return (id(self.learner), self.builder.input_max_length,
                hash(tuple(str(i) for i in self.test["id"])))


def _icl_scores(jobs: list[IclJob]) -> list[np.ndarray]:
    first = jobs[0]
    return first.learner.icl_scores_many([j.builder for j in jobs], first.test["id"],
                                         first.test["text"])


def _stage_batches(pending: dict[int, Any], together: bool, size: int) -> list[list[int]]:
    """Which pending jobs run together. Stages: those on the same compiled steps with
    compatible shapes (`groups.compatibility`), at most `size` at a time, ordered by their
    planned steps so a group's members finish at similar times (a finished member idles until
    its group ends). ICL scoring: runs with the same `IclJob.key`, at most `size` at a time.
    Each alone without `together`."""
    if not together:
        return [[i] for i in sorted(pending)]
    kinds: dict[tuple, list[int]] = {}
    for i in sorted(pending):
        job = pending[i]
        key = (("icl", *job.key()) if isinstance(job, IclJob) else
               (id(job.steps), groups.compatibility(job.member, job.spec)))
        kinds.setdefault(key, []).append(i)
    out = []
    for members in kinds.values():
        members.sort(key=lambda i: (getattr(pending[i], "planned_steps", 0), i))
        out += [members[k:k + size] for k in range(0, len(members), size)]
    return out


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("jax", "flax", "optax", "transformers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
