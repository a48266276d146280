"""Results records (SPEC section 11): stable run ids and atomic writes.

Paths go through `scalable_elicitation.paths` (`as_path` is re-exported here for the runner): a
local folder or an object-store URI such as `gs://bucket/sweep`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

from scalable_elicitation.paths import as_path, is_uri


def run_id(effective: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a run's effective config (canonical JSON)."""
    payload = json.dumps(effective, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`. On an
    object store (`gs://`) one upload replaces the object whole, so readers never see a torn
    record; there a rename would be a copy and a delete, so the object is written directly."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(path):
        path.write_bytes(data)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=_plain)
                              + "\n").encode())


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
