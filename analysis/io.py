"""Atomic file writes for the analysis' outputs, through the package's one atomic write
(:func:`scalable_elicitation.paths.atomic_write`): every table, report and figure lands under its
final name whole or not at all."""
from __future__ import annotations

import io
import os
from pathlib import Path

from scalable_elicitation.paths import atomic_write


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, text)


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to CSV (no index) atomically."""
    return atomic_write(path, frame.to_csv(index=False))


def figure_bytes(fig, fmt: str, **savefig_kwargs) -> bytes:
    """A matplotlib figure rendered as ``fmt`` (png, pdf) with ``fig.savefig``'s options."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return buf.getvalue()


def save_figure(fig, path_stem: str | os.PathLike) -> list[Path]:
    """Save a matplotlib figure as ``STEM.png`` and ``STEM.pdf``, each atomically."""
    stem = Path(path_stem)
    return [atomic_write(stem.with_suffix(f".{ext}"),
                         figure_bytes(fig, ext, dpi=130, bbox_inches="tight"))
            for ext in ("png", "pdf")]
