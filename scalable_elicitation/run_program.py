"""One run of a planned sweep -> one record (docs/design.md): what a run does, as a generator
the scheduler (`runner.Sweep`) drives.

A run buys its labels from nested prefixes of the per-seed pools, asks its method
(`methods.REGISTRY[config.method]`) for its shots and stages, trains the stages (yielding a
`StageJob` for each, which the scheduler trains alone or with other runs' stages), evaluates on
the fixed test set (an in-context run yields an `IclJob` instead), and returns its record after
writing the per-example `scores.parquet` and its `ledger.json` atomically.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import platform
from typing import Callable

import jax
import numpy as np

from scalable_elicitation import groups, methods, records, schedules, selection, weak_fit
from scalable_elicitation.batching import BatchSpec, FeatureStats
from scalable_elicitation.checkpoint import StageCheckpointer
from scalable_elicitation.learner import Learner
from scalable_elicitation.metrics import auroc, bootstrap_auroc, wilson
from scalable_elicitation.methods import STREAMS, Bought, InfeasibleRun
from scalable_elicitation.planning import RunSpec
from scalable_elicitation.prompt_inputs import make_builder, stats_sample
from scalable_elicitation.prompts import PromptBuilder
from scalable_elicitation.shared import SharedData
from scalable_elicitation.sharding import broadcast_flag
from scalable_elicitation.stage import predict, split_validation, stage_schedule
from scalable_elicitation.train import Steps

@dataclasses.dataclass
class _Inputs:
    """How a run turns examples into what its learner takes: plain or prompted, standardised
    for a probe."""
    learner: Learner
    builder: PromptBuilder | None
    stats: FeatureStats | None

    def raw(self, split):
        if self.builder is None:
            return self.learner.data(split["id"], split["text"])
        return self.learner.prompted(self.builder, split["id"], split["text"])

    def __call__(self, split):
        data = self.raw(split)
        return self.stats.apply(data) if self.stats is not None else data


class RunProgram:
    """The runs of one sweep: `base_record(spec)` and `run(spec, ...)`, a run as a generator.
    `planner` gives each run's config (`run_config`), its id and the prices; `data` what runs
    share; `progress(message)` is read at call time (a progress bar's postfix)."""

    def __init__(self, planner, data: SharedData, progress: Callable[[str], None]):
        self.planner = planner
        self.data = data
        self.progress = progress

    def base_record(self, spec: RunSpec) -> records.Record:
        """The fields of a run's record known before it runs."""
        p = self.planner
        c = p.run_config(spec.overrides)
        return {
            "run_id": records.run_id(p.effective(spec)), "task": c.task, "model": c.model,
            "method": c.method, "seed": spec.seed, "weak_labeler": p.labeler.name,
            "weak_label_accuracy": None, "weak_label_positive_rate": None,
            "weak_label_ece": None,
            "prices": {"oracle": float(p.prices.oracle), "weak": float(p.prices.weak)},
            "budget": float(spec.budget) if spec.budget is not None else None,
            "oracle_fractions": [float(f) for f in spec.fractions],
            "grid_points": [[float(b), float(f)] for b, f in spec.grid_points],
            "planned": {"weak": spec.n_weak, "oracle": spec.n_oracle},
            "config": records.flatten(c.to_dict()), "versions": dict(_versions()), "n_test": None,
        }

    def run(self, spec: RunSpec, rec: dict, out: pathlib.Path, log):
        """One run as a generator: it yields a `StageJob` per training stage, is sent back
        (StageResult, seconds), and returns the run's record (`runner.Sweep` drives it)."""
        c = self.planner.run_config(spec.overrides)
        method = methods.get(c.method)
        pools = self.data.pools(spec.seed)  # raises PoolExhaustedError before any training
        bought = Bought(pools.take("weak", spec.n_weak), pools.take("oracle", spec.n_oracle))
        weak = self.data.weak_labels(spec.seed)
        learner = self.data.learner_for(c)
        # shots (k-shot SFT, ICL): bought labels of their source, not also trained on
        bought = method.take_shots(c, weak, bought)
        inputs = self._inputs(c, spec, method, learner, bought.shots)
        ledger = {"weak": [], "oracle": [],
                  "shots": bought.shots.ids if bought.shots is not None else []}
        params, stages = yield from self._train_stages(c, spec, method, weak, bought, inputs,
                                                       ledger, out, log)
        for sid, src in zip(ledger["shots"], bought.shots.sources if bought.shots else ()):
            ledger[src].append(sid)
        metrics, y, scores, truncated = yield from self._evaluate(spec, method, weak, inputs,
                                                                  params)
        n_weak, n_oracle, n_shots = (len(ledger["weak"]), len(ledger["oracle"]),
                                     len(ledger["shots"]))
        used = sum(s["n_train"] + s["n_val"] for s in stages) + n_shots
        if used != n_weak + n_oracle:
            raise AssertionError(f"ledger ({n_weak} + {n_oracle}) != labels used ({used})")
        if jax.process_index() == 0:
            test_ids = self.data.task().test["id"]
            records.write_scores(out / "scores.parquet", test_ids, y, scores,
                                 weak=weak.lookup(test_ids))
            records.atomic_write_json(out / "ledger.json", ledger)
        return {**rec, "status": "ok", "weak_label_accuracy": weak.metrics["pool_accuracy"],
                "weak_label_positive_rate": weak.metrics["pool_positive_rate"],
                "weak_label_ece": weak.metrics["pool_ece"],
                "weak_label_test_accuracy": weak.metrics["test_accuracy"],
                "n_weak": n_weak, "n_oracle": n_oracle, "n_shots": n_shots,
                "cost": float(self.planner.prices.cost(n_oracle, n_weak)), "stages": stages,
                "metrics": metrics, "n_test": len(y), "test_truncated": truncated,
                "shot_truncated": inputs.builder.shot_truncations if inputs.builder else 0}

    # -- pieces of a run --------------------------------------------------------------------
    def _inputs(self, c, spec: RunSpec, method, learner: Learner, shots) -> _Inputs:
        """The run's input pipeline: plain, or with its shots' prompt. A seed's runs share
        their shots (its pool's prefix), so their prompts, prompted features and the
        statistics that standardise a probe's prompted features (`prompt_inputs`: the seed's
        weak-pool prefix, once per seed) are computed once. An in-context run reads no
        features: no statistics."""
        builder = make_builder(learner, shots, c, spec.seed) if shots is not None else None
        inputs = _Inputs(learner, builder, self.data.feature_stats(learner))
        if inputs.stats is not None and builder is not None and not method.in_context:
            inputs.stats = self.data.prompts.stats(
                learner, builder, stats_sample(self.data.pools(spec.seed).weak, shots.ids))
        return inputs

    def _train_stages(self, c, spec, method, weak, bought, inputs, ledger, out, log):
        """The method's stages in order, each continuing from the last one's kept params
        (generator); returns (params, stage records) and fills the ledger."""
        learner = inputs.learner
        params = learner.steps.fresh_params(jax.random.fold_in(jax.random.key(spec.seed),
                                                               STREAMS["init"]))
        stages, previous_val = [], None  # the last stage's own validation (inputs, labels)
        for index, stage in enumerate(method.stages(c, weak, bought, spec.seed)):
            split, targets, weights = stage.split, stage.targets, stage.weights
            if stage.source == "weak" and c.get("weak_truth", False):
                # a ceiling run (weak-to-strong): the same texts, their ground truth
                targets = split["label"].astype(np.float32)
            if stage.source == "oracle" and c.oracle_selection == "entropy":
                split = self._select_by_entropy(c, spec, learner, params, inputs, len(split),
                                                exclude=ledger["shots"])
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
        return params, stages

    def _evaluate(self, spec, method, weak, inputs, params):
        """Scores on the fixed test set (an in-context run yields an `IclJob` to be scored
        with the other ICL runs of its group) and the metrics (generator)."""
        test = self.data.task().test
        learner = inputs.learner
        if method.in_context:
            scores, _ = yield IclJob(learner, inputs.builder, test)
            truncated = int(sum(inputs.builder.suffix(t)[1] for t in test["text"]))
        else:
            test_inputs = (self.data.test_inputs(learner, inputs.stats)
                           if inputs.builder is None else inputs(test))
            scores = predict(learner.steps, params, test_inputs, learner.spec)
            truncated = int(test_inputs.truncated.sum())
        y = test["label"].astype(int)
        pred = (scores > 0).astype(int)
        k = int((pred == y).sum())
        metrics = {
            "accuracy": k / len(y), "auroc": auroc(scores, y),
            "accuracy_ci": list(wilson(k, len(y))),
            "auroc_ci": list(bootstrap_auroc(scores, y, seed=spec.seed)),
            "agreement_with_weak": float(np.mean(pred == (weak.lookup(test["id"]) > 0.5))),
        }
        return metrics, y, scores, truncated

    def _select_by_entropy(self, c, spec, learner, params, inputs, n, exclude=()):
        """Buy the n oracle labels the current model is least sure of (`selection`)."""
        pools = self.data.pools(spec.seed)
        pool = selection.candidates(pools.take("oracle", pools.size("oracle")), exclude)
        if n > len(pool):
            raise InfeasibleRun(f"entropy selection needs {n} oracle labels; the pool holds "
                                f"{len(pool)} after the shots")
        scores = predict(learner.steps, params, inputs(pool), learner.spec)
        rng = np.random.default_rng([spec.seed, STREAMS["selection"]])
        return pool.take(np.sort(selection.entropy_select(scores, n, c.selection_temperature,
                                                          rng)))

    def _stage(self, c, spec, learner, index, source, split, targets, weights, params, inputs,
               out, log, previous_val=None):
        """One stage (with checkpoints), as a generator: yields its `StageJob` and returns
        (kept params, stage record, its own validation (inputs, labels) or None). A stage too
        small for a carve-out may be validated on `previous_val`, the previous stage's
        (`schedules.borrows_validation`). A finished stage's checkpoint is reused without
        training; a stage that trained for at least `checkpoint_interval_s` saves its kept
        params, so a run killed in a later stage resumes after it (a shorter one is retrained,
        identically: the data order and initialisation are pure functions of the seed)."""
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
            self.progress(f"{source} {step}/{total} loss {loss:.3f}")
            if log is not None:
                log.scalar(f"{source}/loss", loss, step)

        if source == "weak" and uses_weak_fit(c, learner):
            # every label bought trains the fit; K-fold CV over them is its validation. A later
            # stage too small for a carve-out may borrow them (as it would the carve-out)
            fit = weak_fit.cross_validated_fit(
                data.features, targets, weights, cs=tuple(c.weak_fit.cs),
                folds=c.weak_fit.folds, hard=c.weak_fit.hard, rng=np.random.default_rng(
                    [spec.seed, STREAMS["data"], index, WEAK_FIT_SALT]))
            return (weak_fit.probe_params(fit, params), weak_fit_record(fit, n, data),
                    (data, targets) if n else None)

        ckpt = StageCheckpointer(out / "ckpt" / f"stage{index}") if c.checkpoint else None
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
            # process 0's clock decides for all (`sharding.broadcast_flag`)
            if ckpt and broadcast_flag(took >= c.checkpoint_interval_s):
                ckpt.save_done(result.params, result.record)
            return result.params, result.record, own_val
        finally:
            if ckpt:
                ckpt.close()


WEAK_FIT_SALT = 0x77666974  # the folds' stream, apart from the carve-out's at the same path


def uses_weak_fit(c, learner: Learner) -> bool:
    """Whether a weak stage is the cross-validated L2 fit (`weak_fit`): a linear probe on
    frozen features under `weak_fit.kind = "cv_l2"` with the plain loss (`loss=logconf`, Burns
    et al.'s recipe, and LoRA and full finetuning keep the engine's early-stopped AdamW,
    docs/decisions.md)."""
    return (learner.probe and c.get("weak_fit", {}).get("kind", "engine") == "cv_l2"
            and c.get("loss", "xent") == "xent")


def weak_fit_record(fit, n: int, data) -> dict:
    """A weak stage's record when it is the cross-validated fit: the fields of
    `stage.stage_record` (no steps or carve-out: every label trains the fit, the solver's
    iterations in `fit_iterations`) and the fit's own: the chosen C and the held-out accuracy
    against the purchased labels per C of the grid."""
    return {"source": "weak", "n_train": n, "n_val": 0, "val_borrowed": 0,
            "visits": 0, "planned_visits": 0, "steps": 0, "best_step": 0,
            "val_metric": None, "truncated": int(data.truncated.sum()),
            "final_loss": None, "fit": "cv_l2", "fit_c": fit.c,
            "fit_cv_accuracy": [None if np.isnan(a) else float(a) for a in fit.cv_accuracy],
            "fit_iterations": fit.iterations, "fit_converged": fit.converged}


@dataclasses.dataclass
class StageJob:
    """A stage a run waits for: the member to train, on which steps, with which batches.
    Stage jobs with equal `group_key`s can train together (`train`)."""
    member: groups.Member
    steps: Steps
    spec: BatchSpec
    checkpoint_interval_s: float

    @property
    def planned_steps(self) -> int:
        m = self.member
        return stage_schedule(len(m.train), len(m.val) if m.has_val else 0, m.cfg,
                              self.spec.batch_size).total

    def group_key(self) -> tuple:
        return (id(self.steps), groups.compatibility(self.member, self.spec))

    @staticmethod
    def train(jobs: list["StageJob"], *, shapes: groups.Shapes, host_poll_steps: int,
              group_sharding: str) -> list:
        """Train these jobs' stages as one group (one job: a group of one) on the engine;
        each job's `StageResult`, or its error in its place."""
        first = jobs[0]
        return groups.run_stages_grouped(
            first.steps, [j.member for j in jobs], spec=first.spec,
            checkpoint_interval_s=first.checkpoint_interval_s, iters_per_call=host_poll_steps,
            return_errors=True, shapes=shapes, group_sharding=group_sharding)


@dataclasses.dataclass
class IclJob:
    """An in-context run waiting for its test scores: its prompt and the test inputs. Jobs
    with equal `group_key`s are scored together (`train`): one model, one input encoding,
    the same test inputs."""
    learner: Learner
    builder: PromptBuilder
    test: object  # the test split
    planned_steps = 0

    def group_key(self) -> tuple:
        return ("icl", id(self.learner), self.builder.input_max_length,
                hash(tuple(str(i) for i in self.test["id"])))

    @staticmethod
    def train(jobs: list["IclJob"], **_) -> list[np.ndarray]:
        """Each job's test scores: the runs' prompts scored together (no training)."""
        first = jobs[0]
        return first.learner.icl_scores_many([j.builder for j in jobs], first.test["id"],
                                             first.test["text"])


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
