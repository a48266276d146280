"""Load results records (SPEC section 11) into a tidy pandas table.

Every ``result.json`` under the given folders (recursively) and every ``*.jsonl`` file of records
is read. A torn file, a truncated JSONL line or a record missing a required field is skipped with
a :class:`CorruptRecordWarning` naming the file (and line); the rest still load.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from analysis import pricing

STATUSES = ("ok", "infeasible", "failed")
# Needed to place a run in any table at all.
REQUIRED_ALWAYS = ("run_id", "status", "task", "model", "method", "seed")
# Needed for an ``ok`` run to be priced and scored.
REQUIRED_OK = ("n_weak", "n_oracle", "prices.oracle", "prices.weak", "metrics.accuracy")
# Method-variant options (SPEC section 7), read from the flattened config by their last key part.
OPTION_KEYS = {
    "loss": ("loss",),
    "oracle_selection": ("oracle_selection",),
    "schedule": ("schedule",),
    "k": ("k", "k_shots", "kshot", "num_shots"),
    "shot_source": ("shot_source",),
}
# Option values that mean "the plain method" and so add nothing to the variant name.
DEFAULT_OPTION_VALUES = {
    "loss": {"xent", "ce", "cross_entropy", "default", "none", "soft_ce", "soft_xent"},
    "oracle_selection": {"random", "first", "prefix", "default", "none", "sequential"},
    "schedule": {"default", "none", "sequential", "cosine"},
}
SHOT_METHODS = ("kshot_sft", "icl")
# The cell of an aggregate: everything but the seed (SPEC section 9).
CELL_KEYS = ("task", "model", "variant", "weak_labeler", "n_weak", "n_oracle")


class CorruptRecordWarning(UserWarning):
    """A results file or line could not be read and was skipped."""


@dataclasses.dataclass
class Records:
    """What :func:`load_records` read.

    Attributes:
      ok: one row per ``ok`` run (flattened columns, plus ``variant``).
      excluded: one row per ``infeasible`` or ``failed`` run (``status``, ``error``, ...).
      skipped: ``(location, reason)`` for each unreadable file or line.
      n_duplicates: records dropped because their ``run_id`` was already read.
    """

    ok: pd.DataFrame
    excluded: pd.DataFrame
    skipped: list[tuple[str, str]]
    n_duplicates: int = 0

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


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``a.b.c`` keys; lists and scalars are kept as values."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
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
        opts["shot_source"] = "weak"  # SPEC section 7: weak shots by default
    return opts


def variant_name(method: str, options: dict[str, Any]) -> str:
    """Name of a method variant: ``seq_sft``, ``seq_sft+logconf``, ``kshot_sft(k=2,weak)``."""
    name = str(method)
    if method in SHOT_METHODS and options.get("k") is not None:
        k = options["k"]
        k = int(k) if isinstance(k, float) and k.is_integer() else k
        name += f"(k={k},{options.get('shot_source') or 'weak'})"
    for opt in ("loss", "oracle_selection", "schedule"):
        value = options.get(opt)
        if value is not None and str(value).lower() not in DEFAULT_OPTION_VALUES[opt]:
            name += f"+{value}"
    return name


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


def _to_row(rec: dict[str, Any], source: str) -> dict[str, Any]:
    """One table row from a valid record."""
    row: dict[str, Any] = {}
    for key, value in rec.items():
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
    row.setdefault("weak_labeler", None)
    if row["weak_labeler"] is None:
        row["weak_labeler"] = "none"
    elif isinstance(row["weak_labeler"], dict):
        row["weak_labeler"] = json.dumps(row["weak_labeler"], sort_keys=True)
    for ci in ("metrics.accuracy_ci", "metrics.auroc_ci"):
        value = row.get(ci)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            row[f"{ci}_lo"], row[f"{ci}_hi"] = value
    stages = rec.get("stages")
    row["n_stages"] = len(stages) if isinstance(stages, list) else None
    row["source"] = source
    return row


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
    ok_rows, bad_rows, skipped = [], [], []
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
        if rec["status"] == "ok":
            ok_rows.append(_to_row(rec, where))
        else:
            bad_rows.append({k: rec.get(k) for k in REQUIRED_ALWAYS + ("error", "budget")}
                            | {"source": where})
    ok = pd.DataFrame(ok_rows)
    if len(ok):
        for col in ("n_weak", "n_oracle", "seed"):
            ok[col] = ok[col].astype(int)
        for col in ("task", "model", "method", "variant", "weak_labeler"):
            ok[col] = ok[col].astype(str)
    excluded = pd.DataFrame(bad_rows, columns=list(REQUIRED_ALWAYS) + ["error", "budget", "source"])
    return Records(ok=ok, excluded=excluded, skipped=skipped, n_duplicates=n_dup)


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
