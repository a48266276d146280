"""The one experiment loop: a config file's grid points, the dry-run listing, and running every
planned run with one summary line each. `main.py` calls it in-process; `launch/sweep.py` calls
the same loop and only adds what a cluster worker needs, passed in explicitly: a shard of the
plan, a `claim` (run locks, decided on process 0), and a `tracker` (TensorBoard, W&B) that
receives every training step's loss and each run's summary.

    sweep = runner.Sweep(config, workdir)
    specs = sweep.plan(sweep_points(config_path, config))
    done = run_experiment(sweep, specs)          # done.records, done.busy

Runs train in groups of `config.parallel_runs` (0: as many as fit the device, 1: one at a
time); a run's record does not depend on its group.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import pathlib
import sys
from typing import Callable, ContextManager

from scalable_elicitation.grouping import RUNS_PER_GROUP_CLAIMED

RUN, SKIPPED, BUSY = "run", "skipped", "busy"  # what a claim decides about a run


def sweep_points(config_path: str, config) -> list[dict]:
    """Grid points from the config file's `sweep(add, config)` (none if it has no `sweep`)."""
    path = config_path.split(":", 1)[0]
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} not found (e.g. configs/cost_sweep.py)")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    points: list[dict] = []
    if hasattr(module, "sweep"):
        module.sweep(lambda **kw: points.append(kw), config)
    return points


def feasibility(sweep, spec) -> str | None:
    """Why a run cannot be bought from its seed's pools (None when it can)."""
    pools = sweep.data.pools(spec.seed)
    for source, n in (("weak", spec.n_weak), ("oracle", spec.n_oracle)):
        size = pools.size(source)
        if n > size:
            return f"needs {n} {source} labels; the {source} pool of seed {spec.seed} has {size}"
    return None


def dry_run_lines(sweep, specs) -> list[str]:
    """One line per run: `RUN_ID METHOD n_weak=N n_oracle=N cost=C seed=S STATUS`, STATUS one
    of todo, done, infeasible (also before it ran: more labels than the pool holds), failed."""
    lines = []
    for s in specs:
        status = sweep.status(s)
        if status == "todo" and feasibility(sweep, s) is not None:
            status = "infeasible"
        cost = float(sweep.prices.cost(s.n_oracle, s.n_weak))
        method = sweep.run_config(s.overrides).method
        lines.append(f"{sweep.run_id(s)} {method} n_weak={s.n_weak} n_oracle={s.n_oracle} "
                     f"cost={cost:g} seed={s.seed} {status}")
    return lines


def summary_line(spec, rec: dict) -> str:
    """The line a finished run prints: its id, counts, status, accuracy or error."""
    acc = (rec.get("metrics") or {}).get("accuracy")
    return (f"run {rec['run_id']} n_weak={spec.n_weak} n_oracle={spec.n_oracle} "
            f"seed={spec.seed}: {rec['status']}"
            + (f" accuracy={acc:.3f}" if acc is not None else "")
            + (f" ({rec.get('error')})" if rec["status"] != "ok" else ""))


@dataclasses.dataclass
class Done:
    """What one pass of the loop did: the records of the runs it ran (or found finished, without
    a claim), and the ids of runs left busy (held by live workers)."""
    records: list[dict]
    busy: list[str]


def check_start(config, *, dry_run: bool = False) -> None:
    """Before anything is written or loaded: the config is valid, and JAX runs on the backend
    the run asked for (`sharding.check_platform`; not for a dry run, which lists a GPU job's
    runs on any machine). Raises ValueError naming the problem."""
    from scalable_elicitation.planning import validate
    from scalable_elicitation.sharding import check_platform
    validate(config)
    if not dry_run:
        check_platform(config.get("platform", "auto"))


def use_compilation_cache(sweep) -> str:
    """Keep XLA's compiled programs in WORKDIR/cache/xla (jax's persistent compilation cache):
    a rerun, or a killed sweep resuming, loads what it compiled before (on 2 CPU cores the
    default compiles a feature extractor per length bucket and the training loops, seconds
    each). A cache chosen already (JAX_COMPILATION_CACHE_DIR, jax.config) is kept. Entries are
    keyed by the program, the compile options and jax's version, so none is used stale. Call
    it before the first compile (entry points do)."""
    import jax
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = str(sweep.cache_dir / "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def run_claimed(sweep, specs, *, claim: Callable[..., ContextManager[str]] | None = None,
                tracker=None, out: Callable[[str], None] = print, together: bool = True,
                shapes=None) -> list[tuple[str, dict | None]]:
    """Run planned runs together (`Sweep.run_group`; one at a time when not `together`),
    each under `claim(spec)` (a context that yields RUN, SKIPPED or BUSY and holds whatever it
    took until the group's records are written); with a tracker, each run's per-step losses
    and summary go to its own log. Returns (decision, record or None) per spec."""
    with contextlib.ExitStack() as stack:
        decisions = [stack.enter_context(claim(s)) if claim is not None else RUN for s in specs]
        todo = [s for s, d in zip(specs, decisions) if d == RUN]
        logs = [stack.enter_context(tracker.open(sweep.run_dir(s).name))
                if tracker is not None else None for s in todo]
        recs = sweep.run_group(todo, logs, together=together, shapes=shapes) if todo else []
        for log, rec in zip(logs, recs):
            if log is not None:
                log.summary(rec)
    for spec, rec in zip(todo, recs):
        out(summary_line(spec, rec))
    it = iter(recs)
    return [(d, next(it) if d == RUN else None) for d in decisions]


def run_experiment(sweep, specs, *, claim=None, tracker=None, out=None, prepare: bool = True,
                   desc: str = "runs", show_progress: bool = True, shapes=None) -> Done:
    """Every run of `specs` that is not done, in groups of `sweep.group_size(specs)` trained
    together (docs/design.md#many-runs-at-once), then once more those a live worker held (it may
    have died meanwhile, leaving a stale lock). Each seed's task and weak labels load first, so bad
    data fails once, before any run (`prepare`). Summary lines go to `out` (default: above a
    progress bar on stderr). `shapes`: the padded shapes to compile for (default: these runs'
    own; settle passes the whole plan's, so added seeds reuse its compiled programs)."""
    if prepare:
        sweep.prepare(s.seed for s in specs)
    from tqdm import tqdm
    bar = tqdm(total=len(specs), desc=desc, unit="run", file=sys.stderr,
               disable=not show_progress)
    out = out or (lambda msg: bar.write(msg, file=sys.stderr))
    sweep.progress = lambda msg: bar.set_postfix_str(msg, refresh=False)
    size = sweep.group_size(specs)
    shapes = shapes or sweep.group_shapes(specs)  # one compiled shape for every group and stage
    # runs claimed and driven together: several groups' worth, so each stage group can be
    # formed from stages of similar length (runs of one budget and fraction differ by seed)
    chunk_size = size * RUNS_PER_GROUP_CLAIMED if size > 1 else 1
    records, busy = [], []

    def one_pass(todo, first: bool):
        left = []
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            got = run_claimed(sweep, chunk, claim=claim, tracker=tracker, out=out,
                              together=size > 1, shapes=shapes)
            for spec, (decision, rec) in zip(chunk, got):
                left += [spec] if decision == BUSY else []
                records.extend([rec] if rec is not None else [])
            bar.update(len(chunk) if first else 0)
        return left

    try:
        busy = one_pass(list(specs), True)
        still = one_pass(busy, False)
    finally:
        bar.close()
    done = Done(records, [sweep.run_dir(s).name for s in still])
    if done.busy:
        out(f"{len(done.busy)} run(s) held by live workers, left to them: " + " ".join(done.busy))
    return done


def settle(sweep, specs, *, tolerance: float, max_seeds: int, tracker=None,
           out: Callable[[str], None] = print, max_rounds: int = 10) -> list[dict]:
    """Add seeds where a budget's decision is still open (`analysis.settle`): after the grid's
    runs, while some budget's chosen configuration has a regret bound above `tolerance` and its
    contenders have fewer than `max_seeds` seeds, run new seeds of those contenders (the specs
    of the grid with new seed ids: ordinary records, resumable, never a duplicate: a seed with
    any record is not asked for again), re-analyse and repeat; at most `max_rounds` rounds.
    Prints one line per round and budget. Returns the records it ran."""
    from analysis.records import load_records
    from analysis.settle import plan_seeds

    by_id = {sweep.run_id(s): s for s in specs}
    shapes = sweep.group_shapes(specs)  # the whole plan's: added seeds reuse its programs
    added: list[dict] = []
    for round_ in range(1, max_rounds + 1):
        plan = plan_seeds(load_records(sweep.workdir / "runs"), tolerance, max_seeds)
        new = []
        for req in plan.requests:
            template = by_id.get(req.run_id)
            if template is None:  # a record of another sweep in this workdir: not ours to grow
                continue
            for seed in req.seeds:
                spec = dataclasses.replace(template, seed=int(seed))
                by_id[sweep.run_id(spec)] = spec  # a template for the next rounds too
                if sweep.status(spec) == "todo":
                    new.append(spec)
        for line in plan.status:
            out(f"settle round {round_}: {line}")
        if not new:
            break
        out(f"settle round {round_}: {len(new)} new run(s)")
        added += run_experiment(sweep, new, tracker=tracker, shapes=shapes, desc="settle",
                                show_progress=False, out=lambda msg: None).records
    return added
