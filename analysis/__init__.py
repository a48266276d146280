"""Offline analysis of results records: frontiers, fits, regimes, tables, figures, advice.

Reads only the records of SPEC section 11 and never imports JAX. Entry points:
``python -m analysis.report`` (the full report) and ``python -m analysis.recommend`` (one budget).
Library: :func:`analysis.records.load_records`, :func:`analysis.aggregate.build_surfaces`,
:mod:`analysis.frontier`, :mod:`analysis.fits`, :mod:`analysis.regimes`, :mod:`analysis.tables`,
:func:`analysis.recommend.recommend`.
"""
