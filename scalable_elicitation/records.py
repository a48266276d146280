"""The results record (docs/design.md#results-record), one schema for the runner, `plots` and
`analysis`: its fields (`Record`), statuses and required fields, stable run ids, `flatten`, the
variant name of a run (docs/design.md#cells, the method's part asked of the method), and JSON
written atomically. No JAX: `analysis` imports it.

Paths go through `scalable_elicitation.paths`: a local folder or an object-store URI such as
`gs://bucket/sweep`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from fractions import Fraction
from typing import Any, Literal, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_elicitation import methods
from scalable_elicitation.paths import as_path, atomic_write

STATUSES = ("ok", "infeasible", "failed")
# needed to place a run in any table at all
REQUIRED_ALWAYS = ("run_id", "status", "task", "model", "method", "seed")
# needed for an ok run to be priced and scored (dotted: fields of the flattened record)
REQUIRED_OK = ("n_weak", "n_oracle", "prices.oracle", "prices.weak", "metrics.accuracy")
# option values that mean "the plain method" and add nothing to a variant name
DEFAULT_OPTION_VALUES = {
    "loss": {"xent", "ce", "cross_entropy", "default", "none", "soft_ce", "soft_xent"},
    "oracle_selection": {"random", "first", "prefix", "default", "none", "sequential"},
    "schedule": {"default", "none", "sequential", "cosine"},
}


class Stage(TypedDict):
    source: str  # weak | oracle | mixture
    n_train: int
    n_val: int
    visits: int
    planned_visits: int
    steps: int
    best_step: int
    val_metric: float | None
    truncated: int
    final_loss: float


class Metrics(TypedDict):
    accuracy: float
    auroc: float
    accuracy_ci: list[float]
    auroc_ci: list[float]
    agreement_with_weak: float


class Record(TypedDict, total=False):
    """One run's `result.json`. Every status has the identifying fields and the grid point;
    `ok` adds what was bought and measured; `infeasible` and `failed` carry `error` and zero
    counts (`failed` also a `traceback`). For an ok record, n_weak + n_oracle equals the sum
    of its stages' n_train + n_val plus n_shots."""
    run_id: str
    status: Literal["ok", "infeasible", "failed"]
    error: str
    traceback: str
    task: str
    model: str
    method: str
    seed: int
    weak_labeler: str
    weak_label_accuracy: float | None
    weak_label_positive_rate: float | None
    weak_label_ece: float | None
    weak_label_test_accuracy: float
    prices: dict[str, float]  # oracle, weak
    budget: float | None
    oracle_fractions: list[float]
    grid_points: list[list[float]]
    planned: dict[str, int]  # weak, oracle
    n_weak: int
    n_oracle: int
    n_shots: int
    cost: float
    stages: list[Stage]
    metrics: Metrics | None
    n_test: int | None
    test_truncated: int
    shot_truncated: int
    config: dict[str, Any]  # flattened
    versions: dict[str, str]
    wall_s: float


def not_ok(base: Record, status: str, error: str, traceback: str | None = None) -> Record:
    """An `infeasible` or `failed` record: nothing bought, nothing measured."""
    if status not in ("infeasible", "failed"):
        raise ValueError(f"status {status!r}: expected infeasible or failed")
    rec: Record = {**base, "status": status, "error": error, "n_weak": 0, "n_oracle": 0,
                   "n_shots": 0, "cost": 0.0, "stages": [], "metrics": None}
    if traceback is not None:
        rec["traceback"] = traceback
    return rec


def variant_name(method: str, options: dict[str, Any]) -> str:
    """Name of a method variant (docs/design.md#cells): the method's own part (`seq_sft`,
    `kshot_sft(k=2,weak)`; the plain name for a method this code does not know), then
    `+VALUE` for each of `loss`, `oracle_selection`, `schedule` that is not the default."""
    known = methods.REGISTRY.get(str(method))
    name = known.variant_name(options) if known is not None else str(method)
    for opt in ("loss", "oracle_selection", "schedule"):
        value = options.get(opt)
        if value is not None and str(value).lower() not in DEFAULT_OPTION_VALUES[opt]:
            name += f"+{value}"
    return name


def run_id(effective: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a run's effective config (canonical JSON)."""
    payload = json.dumps(effective, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as `a.b.c` keys (a record's `config`); Fractions become their exact string,
    lists and scalars are kept."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = [str(x) if isinstance(x, Fraction) else x for x in v]
        else:
            out[key] = str(v) if isinstance(v, Fraction) else v
    return out


def write_scores(path, ids, labels, scores, weak=None) -> None:
    """A run's per-example test scores (`id`, `label`, `score` = logit difference) as the
    parquet file beside its record, atomically; with `weak`, the weak labeller's P(y=1) on
    the same examples as a column `weak` (the labels' own test accuracy, resampled with the
    student's by `analysis.weak_to_strong`)."""
    cols = {"id": np.asarray(ids).astype(str), "label": np.asarray(labels),
            "score": np.asarray(scores, np.float32)}
    if weak is not None:
        cols["weak"] = np.asarray(weak, np.float32)
    table = pa.table(cols)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write(path, buf.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented JSON (numpy scalars and Fractions as plain numbers), atomically."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=_plain) + "\n")


def _plain(x):
    """JSON for numpy scalars and Fractions: plain numbers."""
    import numbers
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_record(path: str | os.PathLike) -> dict | None:
    """A record, or None when absent or unreadable (a torn write never happens with atomic
    writes, but a hand-edited file might be broken: it is then treated as not done)."""
    try:
        return json.loads(as_path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
