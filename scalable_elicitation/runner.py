"""The scheduler of a sweep (docs/design.md#many-runs-at-once): which runs train, together or
alone, and what happens to their records.

    sweep = Sweep(config, workdir)   # a validated `planning.Planner`
    for spec in sweep.plan(points): sweep.run(spec)

`Sweep` drives each run's program (`run_program.RunProgram`, a generator that yields the stages
it waits for) and trains the pending stages of many runs as groups on the one stage engine
(`groups`). What the runs share (task, weak labels, pools, learners) is `sweep.data`
(`shared.SharedData`). Records marked `ok` or `infeasible` are skipped on a rerun; `failed`
ones are retried.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import traceback
from typing import Any

import jax
import numpy as np

from scalable_elicitation import aot, grouping, groups, memory, records, schedules
from scalable_elicitation.checkpoint import remove_run_checkpoints
from scalable_elicitation.data import PoolExhaustedError
from scalable_elicitation.methods import InfeasibleRun
from scalable_elicitation.planning import Planner, RunSpec
from scalable_elicitation.run_program import RunProgram
from scalable_elicitation.shared import SharedData
from scalable_elicitation.stage import split_validation, stage_schedule


class Sweep(Planner):
    """A planned sweep's scheduler: the plan and its shapes, group sizes, and the loop that
    advances every run's program to its next stage, trains stages together and writes the
    records. `progress(message)`, if set, sees each training step (a progress bar's postfix);
    `learners` is a learner cache to share (`shared.SharedData`)."""

    def __init__(self, config, workdir: str | os.PathLike, *, progress=None,
                 learners: dict | None = None):
        super().__init__(resolve_auto_dtype(config), workdir)
        self.progress = progress
        self.data = SharedData(self, learners)
        self.program = RunProgram(self, self.data,
                                  lambda msg: self.progress(msg) if self.progress else None)
        self._planned: list[RunSpec] = []  # the last plan: its shapes serve every stage

    def plan(self, points: list[dict]) -> list[RunSpec]:
        specs = super().plan(points)
        self._planned = specs
        return specs

    def group_size(self, specs) -> int:
        """How many runs train together: `config.parallel_runs`, or with 0 as many as fit the
        device's memory (`auto_group_size`) for the sweep's largest stage."""
        if self.config.get("parallel_runs", 0) >= 1:
            return int(self.config.parallel_runs)
        specs = list(specs)
        if not specs:
            return 1
        rows, val_rows, _ = stage_shapes(self.config, specs)
        mesh = self.data.learner.steps.mesh
        # a group large enough to fill the devices with whole runs may place them so
        # (`grouping.placement`); the memory of all its devices is then the group's
        axis = groups.run_mesh_axis(mesh, self.config.get("group_sharding", "auto"),
                                    len(specs))
        devices = 1 if axis is None else mesh.shape[axis]  # whole runs spread over them
        start = auto_group_size(self.data.learner, rows, len(specs), devices=devices,
                                val_rows=val_rows)
        device = jax.local_devices()[0]
        limit = (device.memory_stats() or {}).get("bytes_limit")
        if device.platform == "cpu" or not limit:
            return start
        # an accelerator: the memory model's size checked, and corrected, by the compiler
        learner = self.data.learner
        lrn = aot.learned(learner.cfg, list(mesh.devices.flat))
        return compiled_group_size(lrn, self.config, specs, limit, start,
                                   min(len(specs), grouping.max_auto_group(
                                       device.platform, learner.probe)))

    def group_shapes(self, specs) -> groups.Shapes:
        """The padded shapes of every group of these runs: their largest stage's training
        and validation rows and steps, and the group size, so the loop compiles once."""
        return groups.Shapes(*stage_shapes(self.config, specs), self.group_size(specs))

    def prepare(self, seeds) -> None:
        """Load each seed's task and weak labels up front, so bad data fails once, clearly,
        before any run (instead of as a failed record per run)."""
        self.data.feature_stats()
        for seed in sorted(set(seeds)):
            self.data.weak_labels(seed)

    # -- runs -------------------------------------------------------------------------------
    def run(self, spec: RunSpec, log=None) -> records.Record:
        """Run one grid point unless its record says ok/infeasible; returns the record.
        `log`, if given, receives every training step's loss as `log.scalar(name, value,
        step)` (e.g. a `tracking.RunLog`)."""
        return self.run_group([spec], [log], together=False)[0]

    def run_group(self, specs, logs=None, *, together: bool = True,
                  shapes: groups.Shapes | None = None) -> list[records.Record]:
        """Run these grid points, returning their records in order (finished ones are read
        back, not rerun). With `together`, their stages train as groups
        (docs/design.md#many-runs-at-once): every run advances to its next stage, the pending
        stages that share a model and shapes train in one `groups.run_stages_grouped` call, and
        each run continues with its own result (a selection between stages is the run's own
        step). Else each stage trains alone, as a group of one. A record does not depend on
        the runs it trained with; `shapes` (`group_shapes` of the whole sweep, by default of
        the last `plan`) keeps every group, and every stage trained alone, at one compiled
        shape."""
        shapes = shapes or self.group_shapes(self._planned or specs)
        if not together:  # lone stages: groups of one, not padded to the group size
            shapes = dataclasses.replace(shapes, members=1)
        logs = list(logs) if logs is not None else [None] * len(specs)
        recs: list[records.Record | None] = [None] * len(specs)
        live: dict[int, _Live] = {}
        for i, spec in enumerate(specs):
            out = self.run_dir(spec)
            existing = records.read_record(out / "result.json")
            if existing is not None and existing.get("status") in ("ok", "infeasible"):
                recs[i] = existing
                continue
            base = self.program.base_record(spec)
            live[i] = _Live(self.program.run(spec, base, out, logs[i]), base, out,
                            time.time())
            self._advance(live, recs, i, None)
        while live:
            pending = {i: r.job for i, r in live.items()}
            for batch in _stage_batches(pending, together, shapes.members or len(specs)):
                t0 = time.time()
                jobs = [pending[i] for i in batch]
                results = _or_errors(lambda: type(jobs[0]).train(  # a group, or one alone
                    jobs, shapes=shapes,
                    group_sharding=self.config.get("group_sharding", "auto"),
                    host_poll_steps=self.config.get("host_poll_steps", groups.ITERS_PER_CALL)),
                    len(jobs))
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


def compiled_group_size(lrn, config, specs, memory_bytes: int, start: int, cap: int,
                        compile_at=None, seen: dict | None = None) -> int:
    """The largest group of these runs whose compiled group loop (`aot.loop_program` of the
    learner `lrn`, at the sweep's stage shapes) needs at most `grouping.COMPILED_SHARE` of
    `memory_bytes` per device, searched from `start` (the memory model's size) by compiling
    (`aot.largest_fitting`); at least 1. `compile_at(program, size)` defaults to
    `aot.compile_memory`. Used by `Sweep.group_size` on an accelerator, and by
    launch/preflight.py for a target, so both choose the same size."""
    rows, val_rows, steps = stage_shapes(config, specs)
    prog = aot.loop_program("", lrn, loss=config.loss, rows=rows, val_rows=val_rows,
                            steps=steps, members=start,
                            group_sharding=config.get("group_sharding", "auto"))
    compile_at = compile_at or aot.compile_memory
    size = aot.largest_fitting(lambda g: compile_at(prog, g),
                               int(grouping.COMPILED_SHARE * memory_bytes), start, cap, seen)
    return max(1, size)


def stage_shapes(config, specs) -> tuple[int, int, int]:
    """(training rows, validation rows, steps) of the largest stage of these runs: the sizes
    every group of a sweep is padded to (`Sweep.group_shapes`)."""
    sizes = {n for s in specs for n in (s.n_weak, s.n_oracle) if n > 0}
    rows = val = steps = 0
    for n in sizes:
        cfg = schedules.stage_config(config, "oracle", n)
        tr, va = split_validation(n, cfg, np.random.default_rng(0))  # sizes only
        rows, val = max(rows, len(tr)), max(val, len(va))
        steps = max(steps, stage_schedule(len(tr), len(va), cfg,
                                          config.train.batch_size).total)
    return rows, val, steps


def resolve_auto_dtype(config, platform: str | None = None):
    """The config with `dtype="auto"` made concrete for this backend: float32 on CPU,
    bfloat16 on GPU and TPU (float32 matmuls run as TF32 or several bfloat16 passes there, at
    about half the speed and twice the memory). Resolved before anything is hashed, so a run's
    id and record name the dtype it used, and a CPU sweep's records are those of float32.
    `platform`: the backend it will run on (default JAX's; a preflight names its target's)."""
    if config.get("dtype") != "auto":
        return config
    config = config.copy_and_resolve_references()
    config.dtype = "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"
    return config


def auto_group_size(learner, rows: int, n_runs: int, *, memory_share: float = 0.5,
                    cap: int | None = None, devices: int = 1, val_rows: int | None = None) -> int:
    """The automatic group size (`grouping.auto_group_size`) for this learner: the bytes one
    member adds to a group (`memory.estimate(...).per_member`: its state, gradients, one
    pass's activations at the learner's dtypes, widths, micro-batch, remat and longest
    bucket, and its stored training and validation rows, `groups.padded_rows` of the
    largest stage's) against the free memory of the devices a group spreads over
    (`groups.device_memory`). The frozen base is not counted: it is loaded already, so the
    devices' free memory excludes it. On an accelerator each term is one device's share of
    the learner's mesh when every member spans the mesh (`devices=1`: runs placed as rows),
    and the weights a split base gathers are taken from the free memory; CPU devices share
    one pool of RAM, so there the group is counted whole."""
    platform, free = groups.device_memory(devices)
    mesh = dict(learner.steps.mesh.shape) if platform != "cpu" and devices == 1 else None
    estimate = member_estimate(learner.cfg, learner.bundle, learner.steps.micro_batch,
                               learner.probe, rows, platform, val_rows=val_rows, mesh=mesh)
    cap = cap or grouping.max_auto_group(platform, learner.probe)
    return grouping.auto_group_size(estimate.per_member, max(free - estimate.gathered, 0),
                                    n_runs, cap, memory_share)


def member_estimate(cfg, bundle, micro_batch: int, probe: bool, rows: int, platform: str,
                    *, val_rows: int | None = None, mesh=None) -> memory.Estimate:
    """`memory.estimate` for a learner's config and model (`cfg` a `LearnerConfig`, `bundle`
    its model, loaded or abstract) with a stage of `rows` training and `val_rows` (default
    `rows`) validation examples, padded as a group pads them (`groups.padded_rows`), on one
    device of `mesh` ({axis: size}; None: the whole group on one device): the numbers
    `auto_group_size` sizes groups with, and launch/preflight.py sets beside the
    compiler's."""
    length = min([b for b in cfg.buckets if b >= cfg.max_length] or [max(cfg.buckets)])
    targets = (bundle.lora.targets or bundle.config.lora_targets) if bundle.lora else ()
    train_rows, val_rows = groups.padded_rows(rows, rows if val_rows is None else val_rows,
                                              cfg.batch_size)
    return memory.estimate(
        memory.Arch.of(bundle.config), scope="head" if probe else cfg.trainable,
        batch_size=cfg.batch_size, length=length,
        param_dtype=bundle.build_args.get("param_dtype", cfg.dtype),
        compute_dtype=bundle.build_args.get("compute_dtype") or cfg.dtype,
        micro_batch=micro_batch, remat=cfg.remat, train_rows=train_rows,
        val_rows=val_rows, lora_rank=cfg.lora_rank, lora_targets=targets,
        platform=platform, attention=cfg.attention, mesh=mesh)


@dataclasses.dataclass
class _Live:
    """A run in flight in `Sweep.run_group`."""
    gen: Any  # the run's `RunProgram.run` generator
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


def _stage_batches(pending: dict[int, Any], together: bool, size: int) -> list[list[int]]:
    """Which pending jobs run together. Stages: those on the same compiled steps with
    compatible shapes (`groups.compatibility`), at most `size` at a time, ordered by their
    planned steps so a group's members finish at similar times (a finished member idles until
    its group ends). ICL scoring: runs with the same `IclJob.group_key`, at most `size` at a time.
    Each alone without `together`."""
    if not together:
        return [[i] for i in sorted(pending)]
    kinds: dict[tuple, list[int]] = {}
    for i in sorted(pending):
        job = pending[i]
        kinds.setdefault(job.group_key(), []).append(i)
    out = []
    for members in kinds.values():
        members.sort(key=lambda i: (pending[i].planned_steps, i))
        out += [members[k:k + size] for k in range(0, len(members), size)]
    return out
