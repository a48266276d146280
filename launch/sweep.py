r"""Sweep worker: expand a config's `sweep(add, config)` into runs and run the ones left to do.

  python -m launch.sweep --config=configs/cost_sweep.py:smoke --workdir=/tmp/w --dry_run
  python -m launch.sweep --config=configs/cost_sweep.py --workdir=/tmp/w --shard=0/4 \
      --config.train.lr=0.05

Any number of workers may share a sweep folder: a run in progress holds
WORKDIR/runs/RUN_ID/lock, finished runs (`ok` or `infeasible` records) are skipped, `failed`
ones are retried, and a lock left by a dead worker is taken over. Every start of a run appends
"host pid time" to WORKDIR/runs/RUN_ID/starts.log. `--shard=i/n` (or a SLURM array's
SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT) takes runs i, i+n, i+2n, ... of the plan.

`--dry_run` prints one line per run on stdout and nothing else:
  RUN_ID METHOD n_weak=N n_oracle=N cost=C seed=S STATUS      STATUS: todo | done | infeasible | failed
A run needing more labels than its seed's pool holds is `infeasible` before anything runs.

Storage: WORKDIR must be a filesystem path (records, scores and checkpoints may sit on a gcsfuse
mount of a bucket). Locks need a POSIX filesystem with an atomic exclusive create (launch/lock.py);
`--lock_dir=DIR` keeps them (and the starts logs, as DIR/RUN_ID/) apart from WORKDIR, and a
worker refuses to start, before any run, when the lock folder is an object store.

Multi-host (same command in every process): set SE_MULTIHOST=1 (see launch/multihost.py).
Process 0 takes the locks, decides each run (run, finished or busy) and broadcasts the decision,
so every process makes the same collective calls whatever the lock states; it also writes the
records. Every process trains.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time

from absl import app, flags, logging

from launch import lock as lock_lib
from launch import multihost
from scalable_elicitation import experiment, hostmem, paths

# The main job's module defines --config (config_flags, lock_config=True), --workdir and
# --dry_run at import; defining them again would be a DuplicateFlagError, so this worker shares
# them and adds its own flags below. Importing it does not import JAX.
from scalable_elicitation import main as main_lib  # noqa: E402  (defines the shared flags)

FLAGS = flags.FLAGS
_SHARD = flags.DEFINE_string("shard", None, "i/n: run the i-th of n round-robin slices of the "
                             "plan (default: from SLURM_ARRAY_TASK_ID/COUNT, else 0/1).")
_STALE_AFTER = flags.DEFINE_float("stale_after", 3600.0, "Seconds without a heartbeat after "
                                  "which another host's lock counts as stale (same-host locks "
                                  "are stale as soon as their pid is dead).")
_WANDB = flags.DEFINE_bool("wandb", None, "Also log to Weights & Biases (default: SE_WANDB).")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", True, "Write scalars under WORKDIR/tb/RUN_ID.")
_LOCK_DIR = flags.DEFINE_string("lock_dir", None, "Folder for run locks and starts logs "
                                "(LOCK_DIR/RUN_ID/lock); default WORKDIR/runs. Must be a POSIX "
                                "filesystem every worker of the sweep sees (not an object "
                                "store, nor a gcsfuse mount).")

# what process 0 decided about a run, broadcast to every process
FINISHED, CLAIMED, BUSY = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def select(self, items: list) -> list:
        return items[self.index::self.count]


def parse_shard(text: str | None, env=os.environ) -> Shard:
    """`i/n` from the flag, else from a SLURM array task, else the whole plan (0/1)."""
    if text:
        i, sep, n = text.partition("/")
        try:
            shard = Shard(int(i), int(n))
        except ValueError:
            raise ValueError(f"--shard={text!r}: expected i/n with integers, e.g. 0/4") from None
        if not sep or not 0 <= shard.index < shard.count:
            raise ValueError(f"--shard={text!r}: need 0 <= i < n, e.g. 0/4")
        return shard
    if env.get("SLURM_ARRAY_TASK_ID") is not None:
        try:
            task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is missing "
                             "or not an integer; pass --shard=i/n instead") from None
        if not 0 <= task < count:
            raise ValueError(f"SLURM array task {task} (id - SLURM_ARRAY_TASK_MIN) is outside "
                             f"[0, {count}); submit the array as --array=0-{count - 1}")
        return Shard(task, count)
    return Shard(0, 1)


def storage_problem(workdir: str, lock_dir: str | None, *, dry_run: bool = False) -> str | None:
    """Why this worker cannot use its storage (None when it can), checked before any run."""
    if paths.is_uri(workdir):
        return (f"--workdir={workdir}: the sweep worker needs a filesystem path (its task and "
                "feature cache and its locks are files); mount the bucket (gcsfuse, see "
                "README) and pass the mount's path, with --lock_dir on a POSIX filesystem")
    try:
        paths.as_path(workdir)
        if lock_dir is not None:
            paths.as_path(lock_dir)
    except ValueError as err:
        return str(err)
    if dry_run:  # lists runs, takes no lock
        return None
    return lock_lib.storage_problem(lock_dir if lock_dir is not None
                                    else os.path.join(workdir, "runs"))


def _finished(sweep, spec) -> bool:
    return sweep.status(spec) in ("done", "infeasible")


class Worker:
    """Runs the runs of one shard that are not done, each under its lock, through the one
    experiment loop (`experiment.run_experiment`), with the tracker passed in."""

    def __init__(self, sweep, *, stale_after: float = 3600.0, tracker=None, out=None,
                 lock_root=None):
        self.sweep = sweep
        self.stale_after = stale_after
        self.tracker = tracker
        self.out = out or (lambda msg: print(msg, file=sys.stderr))
        self.lock_root = None if lock_root is None else paths.local_path(lock_root, "--lock_dir")
        self.records: list[dict] = []
        self.skipped_busy: list[str] = []

    def lock_dir(self, spec):
        """Where the run's lock and starts log live: its run folder, or LOCK_ROOT/RUN_ID."""
        run_dir = self.sweep.run_dir(spec)
        return run_dir if self.lock_root is None else self.lock_root / run_dir.name

    def _lock(self, spec) -> tuple[lock_lib.RunLock | None, int]:
        """On process 0: (the run's lock, CLAIMED) if the run is still to do and nobody else
        holds it, else (None, FINISHED or BUSY)."""
        if _finished(self.sweep, spec):
            return None, FINISHED
        lock = lock_lib.RunLock(self.lock_dir(spec), stale_after=self.stale_after)
        if not lock.acquire():
            return None, FINISHED if _finished(self.sweep, spec) else BUSY
        if _finished(self.sweep, spec):  # finished between our look and the lock
            lock.release()
            return None, FINISHED
        if lock.took_over:
            held = lock.took_over
            self.out(f"taking over stale lock of {self.sweep.run_dir(spec).name} from "
                     f"{held.get('host')} pid {held.get('pid')}")
        lock.log_start()
        return lock, CLAIMED

    @contextlib.contextmanager
    def claim(self, spec):
        """Yields `run`, `skipped` (finished) or `busy` (another worker holds it), the same on
        every process, holding the run's lock until the record is written. A collective on
        multi-host: every process claims the same specs in the same order, and each claim makes
        exactly one broadcast, whatever the lock states."""
        lock, outcome = self._lock(spec) if multihost.is_leader() else (None, FINISHED)
        outcome = multihost.broadcast_int(outcome)  # process 0's decision, everywhere
        try:
            yield {CLAIMED: experiment.RUN, BUSY: experiment.BUSY}.get(outcome,
                                                                      experiment.SKIPPED)
        finally:
            if lock is not None:
                lock.release()  # after the record: Sweep.run has written it on process 0

    def run_all(self, specs, *, desc: str = "runs", show_progress: bool = False) -> list[dict]:
        """One pass over `specs`, then one more over those busy in the first."""
        done = experiment.run_experiment(
            self.sweep, specs, claim=self.claim, tracker=self.tracker, out=self.out,
            prepare=False, desc=desc, show_progress=show_progress)
        self.records, self.skipped_busy = done.records, done.busy
        return self.records


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    try:
        shard = parse_shard(_SHARD.value)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    problem = storage_problem(FLAGS.workdir, _LOCK_DIR.value, dry_run=FLAGS.dry_run)
    if problem:  # before anything is written, and in every process alike
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not FLAGS.dry_run:  # before JAX starts its CPU threads (docs/design.md#host-memory)
        hostmem.prepare(FLAGS.config.get("platform", "auto"))
    if multihost.maybe_initialize():
        import jax
        logging.info("multi-host JAX: process %d of %d, %d local of %d devices",
                     jax.process_index(), jax.process_count(), jax.local_device_count(),
                     jax.device_count())

    from scalable_elicitation import runner as runner_lib

    config = FLAGS.config
    try:
        experiment.check_start(config, dry_run=FLAGS.dry_run)
    except ValueError as err:  # a bad value, or a GPU/TPU job on a CPU-only install: say so
        print(f"error: {err}", file=sys.stderr)
        return 2
    points = experiment.sweep_points(FLAGS["config"].config_filename, config)
    if not points:
        raise app.UsageError("the config file defines no sweep(add, config)")
    real_stdout = sys.stdout
    # stdout carries the dry-run lines only: anything else that prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        sweep = runner_lib.Sweep(config, FLAGS.workdir)
        specs = shard.select(sweep.plan(points))
        logging.info("shard %d/%d: %d run(s)", shard.index, shard.count, len(specs))
        if FLAGS.dry_run:
            lines = experiment.dry_run_lines(sweep, specs)
            if multihost.is_leader():
                real_stdout.write("".join(line + "\n" for line in lines))
                real_stdout.flush()
            return 0
        experiment.use_compilation_cache(sweep)
        try:  # bad data fails once, clearly, before any run takes a lock
            sweep.prepare(s.seed for s in specs)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        tracker = None
        if _TENSORBOARD.value or _WANDB.value:
            from scalable_elicitation.tracking import Tracker
            tracker = Tracker(FLAGS.workdir, wandb=_WANDB.value)
        worker = Worker(sweep, stale_after=_STALE_AFTER.value, tracker=tracker,
                        lock_root=_LOCK_DIR.value)
        t0 = time.time()
        recs = worker.run_all(specs, desc=f"runs {shard.index}/{shard.count}",
                              show_progress=multihost.is_leader())
        failed = [r for r in recs if r["status"] == "failed"]
        logging.info("ran %d run(s) in %.1f s; %d failed", len(recs), time.time() - t0,
                     len(failed))
    if failed:
        print(f"{len(failed)} run(s) failed; rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=main_lib.parse_flags)
