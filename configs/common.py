"""What every config file shares: the preset parser (in the spirit of big_vision's
`configs/common.py`).

    arg = parse_arg(arg, model="", smoke=False)   # "smoke,model=minilm" -> smoke=True, ...
"""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Presets from the part of `--config=FILE:ARG` after the colon: comma-separated `key=value`
    pairs and bare flags (a bare `key` means `key=True`). `spec` names every preset with its
    default, whose type the value is read as (bool: true/false/1/0/yes/no); an unknown key or an
    unreadable value fails with the allowed keys."""
    out = dict(spec)
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, eq, value = (s.strip() for s in part.partition("="))
        if key not in spec:
            raise ValueError(f"unknown preset {key!r} in {arg!r}; allowed: {sorted(spec)}")
        default = spec[key]
        if isinstance(default, bool):
            if not eq:
                out[key] = True
            elif value.lower() in ("true", "1", "yes"):
                out[key] = True
            elif value.lower() in ("false", "0", "no"):
                out[key] = False
            else:
                raise ValueError(f"preset {key}={value!r}: expected true or false")
        elif not eq:
            raise ValueError(f"preset {key!r} needs a value ({key}=...); default {default!r}")
        else:
            try:
                out[key] = type(default)(value) if default is not None else value
            except ValueError:
                raise ValueError(f"preset {key}={value!r}: expected "
                                 f"{type(default).__name__}") from None
    return ml_collections.ConfigDict(out)
