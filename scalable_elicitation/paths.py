"""Workdir paths: local folders and object-store URIs (`gs://bucket/x`) through one layer.

`as_path` keeps a local path a `pathlib.Path` (POSIX renames, fsync and exclusive create
behave as before) and makes a URI an `etils.epath.Path`, the path type Orbax already uses, so
`gs://bucket/x` is never read as a local folder named `gs:`. `pathlib.Path("gs://b/x")` is
`gs:/b/x`, a relative local path: that mangled form is refused with a clear error instead.

`atomic_write` is the package's one atomic write: every record, cache entry, score file, table
and figure lands under its final name whole or not at all.

Imports neither JAX nor `etils` until a URI is seen.
"""
from __future__ import annotations

import os
import pathlib
import re
import tempfile
from typing import Union

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_MANGLED = re.compile(r"^(gs|s3|az|hf):/(?!/)")  # what pathlib makes of "gs://..."

Path = Union[pathlib.Path, "epath.Path"]  # noqa: F821  (epath is imported lazily)


def is_uri(path: str | os.PathLike) -> bool:
    """Whether `path` names an object in a store (`gs://...`, `s3://...`), not a file."""
    return bool(_SCHEME.match(os.fspath(path)))


def as_path(path: str | os.PathLike) -> Path:
    """`path` as a path object of the right kind: `epath.Path` for a URI, else `pathlib.Path`."""
    text = os.fspath(path)
    if is_uri(text):
        from etils import epath
        return path if isinstance(path, epath.Path) else epath.Path(text)
    if _MANGLED.match(text):
        meant = _MANGLED.sub(r"\1://", text)
        raise ValueError(f"{text!r} looks like the URI {meant!r} with its '//' collapsed "
                         "(pathlib does that): pass URIs as strings")
    return path if isinstance(path, pathlib.Path) else pathlib.Path(text)


def local_path(path: str | os.PathLike, what: str = "this") -> pathlib.Path:
    """`path` as a local `pathlib.Path`; a URI raises ValueError naming `what` needs a file."""
    if is_uri(path):
        raise ValueError(f"{what} needs a filesystem path, not the object-store URI "
                         f"{os.fspath(path)!r}")
    return as_path(path)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path` whole or not at all; returns the path. Locally: a
    temporary file in the same folder, fsync, then rename over `path`, so a crash leaves the
    previous file (or none), never a torn one. On an object store (`gs://`) one upload replaces
    the object whole (a rename there would be a copy and a delete), so it is written directly."""
    path = as_path(path)
    data = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(path):
        path.write_bytes(data)
        return path
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
    return path
