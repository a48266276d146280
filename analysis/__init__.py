"""Offline analysis of results records: frontiers, fits, regimes, tables, figures, advice.

Reads only the records of docs/design.md#results-record (and each run's per-example
``scores.parquet``) and never imports JAX. Entry points: ``python -m analysis.report`` (the full
report), ``python -m analysis.recommend`` (one budget) and ``python -m analysis.calibration`` (how
often the regime call is right on surfaces with a known answer). Library:
:func:`analysis.records.load_records`, :func:`analysis.aggregate.build_surfaces`,
:mod:`analysis.resample` (the one resampling behind every band and confidence),
:mod:`analysis.frontier`, :mod:`analysis.fits`, :mod:`analysis.regimes`, :mod:`analysis.tables`,
:func:`analysis.recommend.recommend`.
"""
