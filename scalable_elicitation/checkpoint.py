"""The one module that talks to Orbax: checkpoints of a run's stages, for exact resume.

Layout: `RUN_DIR/ckpt/stage{i}/` holds an Orbax `CheckpointManager` for stage i. While a stage
trains, each save holds the train state (step, trainable params, optimizer state, RNG key data),
the best evaluation's params and the early-stopping counters. When the stage ends, its kept
params and stage record are saved as the final step and marked done.

Resume order, for each stage in turn:
1. stage marked done -> load its kept params and record, skip training;
2. else a mid-stage checkpoint -> restore state, best params and counters, continue at the
   saved step (the data order is a pure function of the step, so the same batches follow);
3. else start the stage fresh.
Every process calls save (Orbax requires it on multi-host); writes are atomic (Orbax writes a
temporary folder and finalises the step only once it is complete). RUN_DIR may be a local
folder or an object-store URI (`scalable_elicitation.paths`): Orbax takes both as `epath` paths.
"""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from scalable_elicitation.paths import as_path, is_uri

DONE_STEP = 2**31 - 1  # the final, "stage done" checkpoint


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if hasattr(x, "sharding") else x, tree)


class StageCheckpointer:
    """Mid-stage and end-of-stage checkpoints of one stage of one run. When to save is the
    engine's decision (`groups`: on process 0's clock, the same on every process, since Orbax
    expects every process to call the manager); a checkpointer writes when asked."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = as_path(directory)
        self._opened = None

    @property
    def manager(self):
        """The Orbax manager, made on first use (making one costs tens of milliseconds, and
        most stages of a fast sweep never save)."""
        if self._opened is None:
            self._opened = ocp.CheckpointManager(
                self.directory if is_uri(self.directory) else self.directory.absolute(),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                     enable_async_checkpointing=False))
        return self._opened

    def _empty(self) -> bool:
        """Nothing saved yet (no folder): restores need no manager."""
        return self._opened is None and not self.directory.exists()

    # -- mid-stage ---------------------------------------------------------------------------
    def save(self, step: int, state, best: dict) -> None:
        has_best = best["params"] is not None
        tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
                "key": jax.random.key_data(state.key),
                "best_params": best["params"] if has_best else state.params}
        meta = {"kind": "mid", "step": int(step), "best_metric": float(best["metric"]),
                "best_step": int(best["step"]), "bad": int(best["bad"]), "has_best": has_best}
        self.manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, template_state):
        """(state, best, step) from the latest mid-stage checkpoint, or None."""
        if self._empty():
            return None
        step = self.manager.latest_step()
        if step is None or step == DONE_STEP:
            return None
        template = {"step": template_state.step, "params": template_state.params,
                    "opt_state": template_state.opt_state,
                    "key": jax.random.key_data(template_state.key),
                    "best_params": template_state.params}
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template)), meta=ocp.args.JsonRestore()))
        tree, meta = got["state"], got["meta"]
        state = template_state.replace(step=tree["step"], params=tree["params"],
                                       opt_state=tree["opt_state"],
                                       key=jax.random.wrap_key_data(tree["key"]))
        best = {"metric": meta["best_metric"] if meta["has_best"] else -np.inf,
                "step": meta["best_step"], "bad": meta["bad"],
                "params": tree["best_params"] if meta["has_best"] else None}
        return state, best, int(meta["step"])

    # -- end of stage ------------------------------------------------------------------------
    def save_done(self, params, record: dict) -> None:
        self.manager.save(DONE_STEP, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params}),
            meta=ocp.args.JsonSave({"kind": "done", "record": record})), force=True)
        self.manager.wait_until_finished()

    def restore_done(self, template_params):
        """(kept params, stage record) if the stage finished, else None."""
        if self._empty():
            return None
        if DONE_STEP not in self.manager.all_steps():
            return None
        got = self.manager.restore(DONE_STEP, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract({"params": template_params})),
            meta=ocp.args.JsonRestore()))
        return got["state"]["params"], got["meta"]["record"]

    def close(self):
        if self._opened is not None:
            self._opened.close()


def remove_run_checkpoints(run_dir: str | os.PathLike) -> None:
    """Drop a finished run's checkpoints (its record holds what matters)."""
    if jax.process_index() != 0:
        return
    ckpt = as_path(run_dir) / "ckpt"
    if is_uri(ckpt):
        ckpt.rmtree(missing_ok=True)
    else:
        shutil.rmtree(ckpt, ignore_errors=True)
