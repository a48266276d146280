r"""Main job: run a config's whole sweep in-process, then write the answer.

  python -m scalable_elicitation.main --config=configs/cost_sweep.py --workdir=workdir
  python -m scalable_elicitation.main --config=configs/cost_sweep.py:smoke --workdir=/tmp/w \
      --config.train.lr=1e-3

Records go to WORKDIR/runs/RUN_ID/result.json; a killed sweep resumes where it stopped. With
`config.settle` > 0 it then adds seeds where a budget's decision is still open (`experiment.settle`,
up to `config.max_seeds`). At the end it draws WORKDIR/frontier.png, writes the analysis report to
WORKDIR/report/ (report.md, the
CSVs and figures) and prints the recommendation.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from scalable_elicitation import experiment, hostmem

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (records, caches, figures).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the planned runs and their status only.")


def run_sweep(config, workdir, points, *, dry_run=False, out=print) -> list[dict]:
    """Run (or list) every planned run with `experiment.run_experiment`, then write the figure
    and report of WORKDIR and print the recommendation with `out` (see `plots.finish_sweep`);
    returns this sweep's records."""
    import jax

    from scalable_elicitation.plots import finish_sweep
    from scalable_elicitation.runner import Sweep

    if not dry_run:  # before anything is written or loaded
        hostmem.prepare(config.get("platform", "auto"))  # before JAX starts its CPU threads
        experiment.check_start(config)
    sweep = Sweep(config, workdir)
    specs = sweep.plan(points)
    if dry_run:
        for line in experiment.dry_run_lines(sweep, specs):
            out(line)
        return []
    experiment.use_compilation_cache(sweep)
    tracker = None
    if config.get("tensorboard", True):  # per-step losses and per-run metrics, WORKDIR/tb
        from scalable_elicitation.tracking import Tracker
        tracker = Tracker(workdir, wandb=False)
    done = experiment.run_experiment(sweep, specs, tracker=tracker)
    records = done.records
    if config.get("settle", 0) > 0 and jax.process_count() == 1:
        records += experiment.settle(sweep, specs, tolerance=float(config.settle),
                                     max_seeds=int(config.max_seeds), tracker=tracker, out=out)
    if jax.process_index() == 0:  # one report per sweep, from the records every process shares
        finish_sweep(workdir, out, tolerance=float(config.analysis.tolerance)
                     if "analysis" in config else None)
    return records


def main(argv):
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    config = _CONFIG.value
    try:
        points = experiment.sweep_points(flags.FLAGS["config"].config_filename, config)
        if not points:
            raise ValueError("the config file's sweep(add, config) added no grid point")
        recs = run_sweep(config, _WORKDIR.value, points, dry_run=_DRY_RUN.value)
    except (ValueError, FileNotFoundError) as err:  # bad config or data: say what, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in recs if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed; rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


def parse_flags(argv):
    """absl flag parsing with one clear line for a bad `--config.KEY=VALUE` override (a typo'd
    key on the locked config) instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip() and ln.strip() != ")"]
        msg = (lines[-1] if lines else str(err)).strip("\"'")
        print(f"error: bad flag or config override ({msg}); overrides given: {bad or 'none'}. "
              "Check the key against the config file (python -m scalable_elicitation.main "
              "--config=FILE --workdir=DIR --dry_run lists the grid).", file=sys.stderr)
        sys.exit(2)


def run_main():
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run_main()
