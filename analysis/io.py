"""Atomic file writes: every output lands under its final name whole or not at all."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A crash mid-write leaves the previous file (or none), never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write_atomic(path, _write)


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to CSV (no index) atomically."""
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_figure(fig, path_stem: str | os.PathLike) -> list[Path]:
    """Save a matplotlib figure as ``STEM.png`` and ``STEM.pdf``, each atomically."""
    stem = Path(path_stem)
    out = []
    for ext in ("png", "pdf"):
        target = stem.with_suffix(f".{ext}")
        out.append(write_atomic(target, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=130,
                                                                          bbox_inches="tight")))
    return out
