"""Scalars per run: TensorBoard event files (tensorboardX), and Weights & Biases when asked.

    tracker = Tracker(workdir, wandb=False)          # one per sweep process
    with tracker.open(run_id, config=flat_config) as log:
        log.scalar("weak/loss", 0.69, step=1)         # during training
        log.scalars({"test/accuracy": 0.8}, step=0)
        log.summary(record)                            # the run's final numbers

Event files go to WORKDIR/tb/RUN_ID (point `tensorboard --logdir WORKDIR/tb` at them). wandb is
imported only when enabled (flag, or SE_WANDB=1; project from SE_WANDB_PROJECT), one wandb run
per sweep run, grouped by the sweep folder's name. Only process 0 writes; on other processes
every call is a no-op, so callers need no `if process_index() == 0`.
"""
from __future__ import annotations

import math
import numbers
import os
import pathlib
from typing import Any, Mapping


def _process_index() -> int:
    try:
        import jax
        return jax.process_index()
    except Exception:  # noqa: BLE001 - no backend (analysis machines): a single process
        return 0


def wandb_requested(env: Mapping[str, str] = os.environ) -> bool:
    return env.get("SE_WANDB", "").lower() in ("1", "true", "yes")


class RunLog:
    """The open log of one run; get one from `Tracker.open`."""

    def __init__(self, tracker: "Tracker", run_id: str, config: Mapping[str, Any] | None):
        self.run_id = run_id
        self._writer = None
        self._wandb_run = None
        if not tracker.active:
            return
        from tensorboardX import SummaryWriter
        self.logdir = tracker.workdir / "tb" / run_id
        self._writer = SummaryWriter(logdir=str(self.logdir), flush_secs=10)
        if config:
            self._writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in
                                                      sorted(config.items())), 0)
        if tracker.use_wandb:
            import wandb  # lazily: an optional dependency (pip install '.[wandb]')
            self._wandb_run = wandb.init(
                project=tracker.wandb_project, entity=tracker.wandb_entity, name=run_id,
                id=run_id, resume="allow", group=tracker.workdir.name,
                dir=str(tracker.workdir), config=dict(config or {}), reinit="finish_previous")

    def scalar(self, name: str, value, step: int) -> None:
        self.scalars({name: value}, step)

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Log finite numbers; other values (None, strings, NaN) are skipped."""
        clean = {k: float(v) for k, v in values.items()
                 if isinstance(v, numbers.Real) and not isinstance(v, bool) and
                 math.isfinite(float(v))}
        if not clean:
            return
        if self._writer is not None:
            for k, v in clean.items():
                self._writer.add_scalar(k, v, int(step))
        if self._wandb_run is not None:
            self._wandb_run.log(clean, step=int(step))

    def summary(self, record: Mapping[str, Any]) -> None:
        """A run's final numbers from its results record
        (docs/design.md#results-record), at step 0:
        test metrics, counts, cost, wall time, and per stage its steps and validation metric."""
        values = {"run/cost": record.get("cost"), "run/n_weak": record.get("n_weak"),
                  "run/n_oracle": record.get("n_oracle"), "run/wall_s": record.get("wall_s")}
        for k, v in (record.get("metrics") or {}).items():
            values[f"test/{k}"] = v
        for st in record.get("stages") or []:
            src = st.get("source", "stage")
            for k in ("steps", "best_step", "val_metric", "final_loss", "visits"):
                values[f"{src}/{k}"] = st.get(k)
        self.scalars(values, 0)
        if self._wandb_run is not None:
            self._wandb_run.summary.update({"status": record.get("status"), **{
                k: v for k, v in values.items() if v is not None}})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Tracker:
    """Scalar logging for the runs of one sweep folder."""

    def __init__(self, workdir: str | os.PathLike, *, wandb: bool | None = None,
                 wandb_project: str | None = None, wandb_entity: str | None = None,
                 enabled: bool | None = None):
        self.workdir = pathlib.Path(workdir)
        self.active = (_process_index() == 0) if enabled is None else enabled
        self.use_wandb = wandb_requested() if wandb is None else wandb
        self.wandb_project = wandb_project or os.environ.get("SE_WANDB_PROJECT",
                                                             "scalable_elicitation")
        self.wandb_entity = wandb_entity or os.environ.get("SE_WANDB_ENTITY") or None

    def open(self, run_id: str, config: Mapping[str, Any] | None = None) -> RunLog:
        """The log of `run_id`: runs trained together each have their own, open at the same
        time (close it, or use it as a context)."""
        return RunLog(self, run_id, config)
