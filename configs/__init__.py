"""Experiment families: `configs/NAME.py` exposes `get_config(arg=None)` (presets after the colon
of `--config=configs/NAME.py:ARG`, parsed by `common.parse_arg`) and `sweep(add, config)`."""
