"""What identifies a run (docs/design.md#cells): one classification of every config key, read by
the planner (`planning.Planner.effective`, the run id) and by the analysis
(`analysis.records.config_identity`, which runs share a cell). No JAX.

Every flattened config key is exactly one of:

* ``defines``: what a run computes (task, model, method and options, training, labeller, pool
  split). In the run id and in the analysis's identity; two runs that differ here are different
  variants.
* ``grid``: which run of the grid it is (seed ids, grid, prices, a config family's lists of
  variants or sizes to sweep, whether ceiling runs are added; the counts come from these).
  The seed, the prices and the counts are in the run id (the record of each is its own), but
  not in the analysis's identity: cells aggregate seeds and are re-priced from their counts.
* ``placement``: how and where a run executes (mesh, group size and sharding, host polling,
  attention kernel, micro-batching, checkpoints, tracking) and what the main job does around
  the runs (settle, analysis). Equal results within float tolerance: in neither.

A key no rule covers is an error where the config is planned (`unclassified`), so a new config
key must be classified here before a sweep can hash it; records read by the analysis that carry
keys this code does not know (older or foreign records) count them as ``defines``: keeping runs
apart is the safe mistake.
"""
from __future__ import annotations

DEFINES, GRID, PLACEMENT = "defines", "grid", "placement"

# exact keys and block prefixes ("lora." covers lora.rank, ...), by kind
_EXACT = {
    DEFINES: ("task", "n_test", "split_seed", "model", "trainable", "dtype", "max_length",
              "pooling", "method", "loss", "schedule", "oracle_selection",
              "selection_temperature", "k", "shot_source", "shot_max_length", "oracle_share",
              "weak_truth"),
    GRID: ("seed", "seeds", "seed_offset", "seed_rule", "budgets", "fractions", "budget",
           "fraction", "grid_points", "n_weak", "n_oracle", "variants", "sizes", "ks",
           "ceiling"),
    PLACEMENT: ("parallel_runs", "group_sharding", "host_poll_steps", "attention", "platform",
                "checkpoint", "checkpoint_interval_s", "remat", "length_buckets",
                "tensorboard", "progress", "train.micro_batch", "labeler.micro_batch",
                "settle", "max_seeds"),
}
_PREFIXES = {
    DEFINES: ("task_options.", "lora.", "mixture.", "train.", "labeler.", "weak_fit."),
    GRID: ("prices.",),
    PLACEMENT: ("mesh.", "tracking.", "wandb.", "tensorboard.", "analysis."),
}


def kind(key: str) -> str | None:
    """``defines``, ``grid`` or ``placement`` for a flattened config key (exact keys before
    prefixes, so ``train.micro_batch`` is placement inside the defining ``train.`` block);
    None when no rule covers it."""
    for k, keys in _EXACT.items():
        if key in keys:
            return k
    for k, prefixes in _PREFIXES.items():
        if key.startswith(prefixes):
            return k
    return None


def defines(key: str) -> bool:
    """Whether a flattened config key defines a run for the analysis (unknown keys do)."""
    return kind(key) in (DEFINES, None)


def unclassified(flat_keys) -> list[str]:
    """The flattened config keys no rule classifies (a config's keys must all be)."""
    return sorted(k for k in flat_keys if kind(k) is None)
