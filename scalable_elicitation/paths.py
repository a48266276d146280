"""Workdir paths: local folders and object-store URIs (`gs://bucket/x`) through one layer.

`as_path` keeps a local path a `pathlib.Path` (POSIX renames, fsync and exclusive create
behave as before) and makes a URI an `etils.epath.Path`, the path type Orbax already uses, so
`gs://bucket/x` is never read as a local folder named `gs:`. `pathlib.Path("gs://b/x")` is
`gs:/b/x`, a relative local path: that mangled form is refused with a clear error instead.

Imports neither JAX nor `etils` until a URI is seen.
"""
from __future__ import annotations

import os
import pathlib
import re
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
