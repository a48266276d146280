"""Load results records (docs/design.md#results-record) into a tidy pandas table.

Every ``result.json`` under the given folders (recursively) and every ``*.jsonl`` file of records
is read. A torn file, a truncated JSONL line or a record missing a required field is skipped with
a :class:`CorruptRecordWarning` naming the file (and line); the rest still load.

Cells (docs/design.md#cells) aggregate runs that differ only in seed. A run's *identity* is every
value of its flattened config that defines it (:func:`config_identity`: everything except the seed,
the grid, the prices it was priced at, execution details such as the mesh, and options that do not
apply to its method). Runs whose method variant matches but whose identity differs are never merged:
a :class:`VariantSplitWarning` names the differing keys and each identity becomes its own variant,
e.g. ``seq_sft[trainable=lora]`` beside ``seq_sft[trainable=head]``.

A run's per-example test scores (``scores.parquet`` beside its ``result.json``: id, label, score;
prediction = score > 0) are found here and read by :mod:`analysis.resample`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from analysis import pricing, weak_to_strong
from scalable_elicitation import identity, methods
from scalable_elicitation.records import (REQUIRED_ALWAYS, REQUIRED_OK, STATUSES, flatten,
                                          variant_name)

# Method-variant options (docs/design.md#methods), read from the flattened config by their last key
# part.
OPTION_KEYS = {
    "loss": ("loss",),
    "oracle_selection": ("oracle_selection",),
    "schedule": ("schedule",),
    "k": ("k", "k_shots", "kshot", "num_shots"),
    "shot_source": ("shot_source",),
}
# Methods whose runs show k shots: those identified by a shot source (methods.REGISTRY).
SHOT_METHODS = tuple(name for name, m in methods.REGISTRY.items() if "shot_source" in m.keys)
# The cell of an aggregate: everything but the seed (docs/design.md#cells). ``variant`` carries
# every other config value that defines a run (see :func:`config_identity` and
# :func:`assign_variants`).
CELL_KEYS = ("task", "model", "variant", "weak_labeler", "n_weak", "n_oracle")
# Flattened config keys that do not define a run are those `scalable_elicitation.identity` calls
# grid or placement (seeds, grid, prices: cost is re-priced from the counts; mesh, group size,
# checkpoints, ...), the one classification the planner's run id follows too; and the keys
# already in the cell key or the variant name.
IN_CELL_KEYS = frozenset({"task", "model", "method", "weak_labeler"})
# Config keys that only some methods use: each method names its own (``Method.keys``, the keys
# that identify its runs); for every other method they do not define a run.
METHOD_KEYS = frozenset(k for m in methods.REGISTRY.values() for k in m.keys)
# Differing keys named first in a split variant's suffix (the rest alphabetically).
NAMING_PRIORITY = ("trainable", "pooling", "dtype", "max_length", "train.lr", "n_test")
# Keys that may differ between tasks without making the runs different methods.
TASK_SPECIFIC_PREFIXES = ("task_options.",)
TASK_SPECIFIC_KEYS = frozenset({"n_test"})
LABELER_KEYS = {"noise": {"kind", "rate", "soft", "only_where"}, "file": {"kind"}}
LABELER_NOISE_ONLY = {"rate", "soft", "only_where"}
SCORES_FILE = "scores.parquet"
EXCLUDED_COLUMNS = list(REQUIRED_ALWAYS) + [
    "error", "budget", "weak_labeler", "variant", "identity", "planned.weak", "planned.oracle",
    "prices.oracle", "prices.weak", "oracle_fractions", "grid_points", "source"]


class CorruptRecordWarning(UserWarning):
    """A results file or line could not be read and was skipped."""


class VariantSplitWarning(UserWarning):
    """Runs of one method variant differ in a config value that defines a run; they were kept
    apart as separate variants instead of being merged."""


@dataclasses.dataclass
class Records:
    """What :func:`load_records` read.

    Attributes:
      ok: one row per ``ok`` run (flattened columns, plus ``variant``, ``identity`` and
        ``example_scores``: the path of its ``scores.parquet``, in-memory ``(ids, correct)``
        arrays, or None).
      excluded: one row per ``infeasible`` or ``failed`` run (``status``, ``error``, ``variant``,
        ``planned.weak``/``planned.oracle``, prices, ``budget``, ``grid_points``, ...).
      skipped: ``(location, reason)`` for each unreadable file or line.
      n_duplicates: records dropped because their ``run_id`` was already read.
      variant_splits: one line per group of runs kept apart as separate variants.
    """

    ok: pd.DataFrame
    excluded: pd.DataFrame
    skipped: list[tuple[str, str]]
    n_duplicates: int = 0
    variant_splits: list[str] = dataclasses.field(default_factory=list)
    # ok ceiling runs (`analysis.weak_to_strong`): set apart, never in the cost-accuracy analysis
    ceiling: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def counts(self) -> dict[str, int]:
        """Number of records by status, plus ``skipped`` (unreadable) and ``duplicates``."""
        out = {s: 0 for s in STATUSES}
        out["ok"] = len(self.ok)
        if len(self.excluded):
            for s, n in self.excluded["status"].value_counts().items():
                out[str(s)] = int(n)
        out["skipped"] = len(self.skipped)
        out["duplicates"] = self.n_duplicates
        return out


def _find_option(config: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of a method option in a flattened config, preferring the shortest key."""
    hits = [(key.count("."), key) for key in config
            if key.rsplit(".", 1)[-1] in names and config[key] is not None]
    if not hits:
        return None
    return config[min(hits)[1]]


def method_options(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """Method-variant options of a run, from its (flattened) config: loss, k, shot_source, ..."""
    opts = {name: _find_option(config, keys) for name, keys in OPTION_KEYS.items()}
    if method not in SHOT_METHODS:
        opts["k"] = opts["shot_source"] = None
    elif opts["shot_source"] is None and opts["k"] is not None:
        opts["shot_source"] = "weak"  # weak shots by default (docs/design.md#kshot_sft)
    return opts


def _check_record(rec: Any) -> str | None:
    """Why a parsed record cannot be used, or None if it can."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    flat = flatten(rec)
    missing = [k for k in REQUIRED_ALWAYS if flat.get(k) is None]
    if missing:
        return f"missing required field(s) {missing}"
    if rec["status"] not in STATUSES:
        return f"status {rec['status']!r} is not one of {list(STATUSES)}"
    if rec["status"] != "ok":
        return None
    missing = [k for k in REQUIRED_OK if flat.get(k) is None]
    if missing:
        return f"ok record missing required field(s) {missing}"
    for key in ("n_weak", "n_oracle"):
        value = flat[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or float(value) != int(value):
            return f"{key} must be a non-negative integer, got {value!r}"
    for key in ("prices.oracle", "prices.weak"):
        try:
            if pricing.to_fraction(flat[key]) <= 0:
                return f"{key} must be positive, got {flat[key]!r}"
        except ValueError as e:
            return f"{key}: {e}"
    acc = flat["metrics.accuracy"]
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc) \
            or not 0 <= acc <= 1:
        return f"metrics.accuracy must be a number in [0, 1], got {acc!r}"
    return None


def base_variant(rec: dict[str, Any]) -> str:
    """The method-variant name of a record (method and options, docs/design.md#cells), before any
    suffix that :func:`assign_variants` adds to keep differing configs apart."""
    config = flatten(rec.get("config") or {})
    opts = method_options(rec["method"], config)
    if rec["method"] in SHOT_METHODS and opts["k"] is None and rec.get("n_shots"):
        opts["k"], opts["shot_source"] = rec["n_shots"], opts["shot_source"] or "weak"
    return variant_name(rec["method"], opts)


def _plain_value(value: Any) -> Any:
    """A JSON-able, hashable-when-dumped form of a config value (lists stay lists)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    return value


def config_identity(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config values that define a run beyond its task, model, method variant, weak
    labeller, counts and seed: a flat ``{dotted key: value}``.

    Dropped: what :mod:`scalable_elicitation.identity` calls grid or placement (seeds, grid,
    prices, mesh, group size, checkpointing, ...), the cell's own keys, the method options already
    in the variant name, and options that do not apply: other
    methods' own keys (shot settings for methods without shots, ``mixture.*`` outside
    ``mixture_sft``: ``Method.keys``), ``selection_temperature`` without entropy selection,
    ``lora.*`` unless ``trainable`` is ``lora``, and labeller keys its kind does not use.
    """
    option_names = {n for names in OPTION_KEYS.values() for n in names}
    trainable = config.get("trainable")
    selection = config.get("oracle_selection")
    kind = config.get("labeler.kind")
    out = {}
    for key, value in config.items():
        last = key.rsplit(".", 1)[-1]
        if key in IN_CELL_KEYS or not identity.defines(key):
            continue
        if "." not in key and last in option_names:
            continue  # in the variant name (or irrelevant to this method)
        top = key.split(".", 1)[0]
        known = methods.REGISTRY.get(method)
        if top in METHOD_KEYS and top not in (known.keys if known is not None else ()):
            continue
        if key == "selection_temperature" and selection not in (None, "entropy"):
            continue
        if key.startswith("lora.") and trainable not in (None, "lora"):
            continue
        if key.startswith("labeler.") and kind is not None:
            keep = LABELER_KEYS.get(kind)
            if keep is not None and last not in keep:
                continue
            if keep is None and kind == "model" and last in LABELER_NOISE_ONLY:
                continue
        out[key] = _plain_value(value)
    return out


def _example_scores(rec: dict[str, Any], source: str) -> Any:
    """Where a run's per-example test scores are: in memory (``rec["scores"]``, as
    ``(ids, correct)``), the ``scores.parquet`` beside its ``result.json``, or None."""
    scores = rec.get("scores")
    if isinstance(scores, dict) and {"id", "label", "score"} <= set(scores):
        ids = np.asarray(scores["id"]).astype(str)
        correct = (np.asarray(scores["score"], dtype=float) > 0) == \
            (np.asarray(scores["label"]).astype(int) == 1)
        return ids, correct
    if source.endswith("result.json"):
        path = Path(source).parent / SCORES_FILE
        if path.is_file():
            return str(path)
    return None


def _to_row(rec: dict[str, Any], source: str) -> dict[str, Any]:
    """One table row from a valid ``ok`` record."""
    row: dict[str, Any] = {}
    for key, value in rec.items():
        if key == "scores":
            continue
        if key == "config" and isinstance(value, dict):
            config = flatten(value)
            row.update({f"config.{k}": v for k, v in config.items()})
        elif isinstance(value, dict):
            row.update(flatten(value, key + "."))
        else:
            row[key] = value
    config = flatten(rec.get("config") or {})
    opts = method_options(rec["method"], config)
    if rec["method"] in SHOT_METHODS and opts["k"] is None and rec.get("n_shots"):
        opts["k"], opts["shot_source"] = rec["n_shots"], opts["shot_source"] or "weak"
    for name, value in opts.items():
        row[f"config.{name}"] = value
    row["variant"] = variant_name(rec["method"], opts)
    row["identity"] = json.dumps(config_identity(rec["method"], config), sort_keys=True,
                                 default=str)
    row["weak_labeler"] = _labeler_name(rec.get("weak_labeler"))
    for ci in ("metrics.accuracy_ci", "metrics.auroc_ci"):
        value = row.get(ci)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            row[f"{ci}_lo"], row[f"{ci}_hi"] = value
    stages = rec.get("stages")
    row["n_stages"] = len(stages) if isinstance(stages, list) else None
    row["example_scores"] = _example_scores(rec, source)
    row["source"] = source
    return row


def _labeler_name(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _excluded_row(rec: dict[str, Any], source: str) -> dict[str, Any]:
    """One row for an ``infeasible`` or ``failed`` record: what it would have bought, where."""
    config = flatten(rec.get("config") or {})
    planned = rec.get("planned") if isinstance(rec.get("planned"), dict) else {}
    prices = rec.get("prices") if isinstance(rec.get("prices"), dict) else {}
    row = {k: rec.get(k) for k in REQUIRED_ALWAYS + ("error", "budget")}
    row.update({
        "weak_labeler": _labeler_name(rec.get("weak_labeler")),
        "variant": base_variant(rec),
        "identity": json.dumps(config_identity(rec["method"], config), sort_keys=True,
                               default=str),
        "planned.weak": planned.get("weak"), "planned.oracle": planned.get("oracle"),
        "prices.oracle": prices.get("oracle"), "prices.weak": prices.get("weak"),
        "oracle_fractions": rec.get("oracle_fractions"), "grid_points": rec.get("grid_points"),
        "source": source})
    return row


def assign_variants(frames: list[pd.DataFrame]) -> list[str]:
    """Give runs of one method variant that differ in a defining config value their own
    variant names, in place; returns one line per split (also warned as
    :class:`VariantSplitWarning`).

    Runs are grouped by (model, weak labeller, variant) over all tasks. Within a task every
    distinct identity gets its own name; across tasks, identities that differ in more than
    task-specific keys (``task_options.*``, ``n_test``) do too, since tasks are averaged per
    variant. The suffix names as few of the differing keys as achieve that (keys every run has
    first, then alphabetically, task-specific keys last), so names agree across tasks:
    ``seq_sft[trainable=lora]``. Records without an identity column are left as they are.
    """
    frames = [f for f in frames if len(f) and "identity" in f.columns]
    if not frames:
        return []
    cols = ["task", "model", "weak_labeler", "variant", "identity"]
    allrows = pd.concat([f[cols] for f in frames], ignore_index=True)
    renames: dict[tuple, str] = {}
    lines = []
    for (model, labeler, variant), g in allrows.groupby(["model", "weak_labeler", "variant"],
                                                        sort=True):
        idents = {i: json.loads(i) for i in g["identity"].unique()}
        if len(idents) < 2:
            continue
        # Sets of identities that must get distinct names: each task's own, and across tasks
        # the identities without task-specific keys (tasks may differ in their options).
        groups = [[idents[i] for i in t["identity"].unique()]
                  for _, t in g.groupby("task", sort=True)]
        groups.append([_without_task_keys(d) for d in idents.values()])
        if all(_n_distinct(t, None) < 2 for t in groups):
            continue  # differs only in task-specific keys between tasks: nothing merges
        keys = sorted(set().union(*idents.values()))
        differing = [k for k in keys
                     if len({json.dumps(d.get(k, "unset"), default=str)
                             for d in idents.values()}) > 1]
        # task-specific keys count only where they differ within a task
        task_keys = [k for k in differing if not _without_task_keys({k: 0})
                     and any(_n_distinct(t, [k]) > 1 for t in groups[:-1])]
        general = [k for k in differing if _without_task_keys({k: 0})]
        rank = {k: i for i, k in enumerate(NAMING_PRIORITY)}
        general.sort(key=lambda k: (not all(k in d for d in idents.values()),
                                    rank.get(k, len(rank)), k))
        differing = general + task_keys
        order = differing
        chosen: list[str] = []
        for key in order:
            if all(_n_distinct(t, chosen) == _n_distinct(t, None) for t in groups):
                break
            if sum(_n_distinct(t, chosen + [key]) for t in groups) > \
                    sum(_n_distinct(t, chosen) for t in groups):
                chosen.append(key)
        names = {}
        for ident, d in idents.items():
            inner = ",".join(f"{k}={_fmt_value(d.get(k, 'unset'))}" for k in chosen)
            names[ident] = f"{variant}[{inner}]"
            renames[(model, labeler, variant, ident)] = names[ident]
        line = (f"{len(g)} runs of {variant} ({model}, weak labeller {labeler}) differ in "
                f"config {differing}; kept apart as {sorted(set(names.values()))}")
        lines.append(line)
        warnings.warn(line, VariantSplitWarning, stacklevel=3)
    if renames:
        for f in frames:
            keys = zip(f["model"], f["weak_labeler"], f["variant"], f["identity"])
            f["variant"] = [renames.get(k, k[2]) for k in keys]
    return lines


def _suffix_values(ident: dict[str, Any], keys: list[str] | None) -> str:
    if keys is None:
        return json.dumps(ident, sort_keys=True, default=str)
    return json.dumps([ident.get(k, "unset") for k in keys], default=str)


def _n_distinct(identities: list[dict[str, Any]], keys: list[str] | None) -> int:
    """Distinct identities (``keys=None``) or distinct values of ``keys`` among them."""
    return len({_suffix_values(d, keys) for d in identities})


def _without_task_keys(ident: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ident.items() if not k.startswith(TASK_SPECIFIC_PREFIXES)
            and k not in TASK_SPECIFIC_KEYS}


def _fmt_value(value: Any) -> str:
    if isinstance(value, list):
        return "(" + " ".join(_fmt_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def find_result_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``result.json`` and ``*.jsonl`` under ``paths`` (a path may also be such a file)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"results path {str(p)!r} does not exist")
        if p.is_file():
            files.append(p)
            continue
        for root, dirs, names in os.walk(p):
            dirs.sort()
            for name in sorted(names):
                if name == "result.json" or name.endswith(".jsonl"):
                    files.append(Path(root) / name)
    return files


def _iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, parsed JSON or exception)`` for each record in a file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        yield str(path), e
        return
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", e
    else:
        try:
            yield str(path), json.loads(text)
        except json.JSONDecodeError as e:
            yield str(path), e


def _collect(items: Iterable[tuple[str, Any]]) -> Records:
    """Validate ``(location, parsed record or exception)`` pairs into a :class:`Records`."""
    ok_rows, bad_rows, skipped, ceiling_rows = [], [], [], []
    seen: set[str] = set()
    n_dup = 0
    for where, rec in items:
        if isinstance(rec, Exception):
            reason = f"unreadable JSON ({type(rec).__name__}: {rec})"
        else:
            reason = _check_record(rec)
        if reason is not None:
            skipped.append((where, reason))
            warnings.warn(f"skipping {where}: {reason}", CorruptRecordWarning, stacklevel=3)
            continue
        run_id = str(rec["run_id"])
        if run_id in seen:
            n_dup += 1
            continue
        seen.add(run_id)
        if weak_to_strong.is_ceiling(rec):  # a different labeller variant, not purchasable
            if rec["status"] == "ok":
                ceiling_rows.append(_to_row(rec, where))
            continue
        if rec["status"] == "ok":
            ok_rows.append(_to_row(rec, where))
        else:
            bad_rows.append(_excluded_row(rec, where))
    ok = pd.DataFrame(ok_rows)
    if len(ok):
        for col in ("n_weak", "n_oracle", "seed"):
            ok[col] = ok[col].astype(int)
        for col in ("task", "model", "method", "variant", "weak_labeler"):
            ok[col] = ok[col].astype(str)
    excluded = pd.DataFrame(bad_rows, columns=EXCLUDED_COLUMNS)
    for col in ("task", "model", "variant", "weak_labeler"):
        excluded[col] = excluded[col].astype(str)
    splits = assign_variants([ok, excluded])
    ceiling = pd.DataFrame(ceiling_rows)
    if len(ceiling):
        for col in ("n_weak", "n_oracle", "seed"):
            ceiling[col] = ceiling[col].astype(int)
    return Records(ok=ok, excluded=excluded, skipped=skipped, n_duplicates=n_dup,
                   variant_splits=splits, ceiling=ceiling)


def records_from_dicts(records: Iterable[dict[str, Any]], source: str = "<memory>") -> Records:
    """Validate in-memory records (e.g. from :mod:`analysis.synthetic`) like :func:`load_records`."""
    return _collect((f"{source}[{i}]", rec) for i, rec in enumerate(records))


def load_records(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> Records:
    """Read every results record under ``paths`` into a :class:`Records`.

    Unreadable files, lines and records are skipped with a :class:`CorruptRecordWarning` naming
    the file and, for JSONL, the line. Raises FileNotFoundError for a missing path and ValueError
    when nothing readable was found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    files = find_result_files(paths)
    records = _collect(item for path in files for item in _iter_file(path))
    if records.ok.empty and records.excluded.empty:
        where = ", ".join(map(str, paths))
        raise ValueError(
            f"no readable results records under {where}: found {len(files)} result.json/*.jsonl "
            f"file(s), {len(records.skipped)} unreadable. Point --results at a folder holding "
            "runs/*/result.json.")
    return records


def as_frame(results) -> pd.DataFrame:
    """Accept a :class:`Records`, a DataFrame of ok runs, or path(s) to load; return ok runs."""
    if isinstance(results, Records):
        frame = results.ok
    elif isinstance(results, pd.DataFrame):
        frame = results
    else:
        frame = load_records(results).ok
    if len(frame) == 0:
        raise ValueError("no ok results records to analyse (all runs infeasible, failed or unreadable)")
    return frame
