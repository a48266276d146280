"""What the main job leaves after a sweep: `WORKDIR/frontier.png` (accuracy against cost, one
line per oracle fraction, one panel per method variant, 90% bands) and the full analysis report
in `WORKDIR/report/`, with its recommendation printed.

Everything is computed by `analysis` (no JAX there) from the records on disk, so the figure's
bands, the report's and `python -m analysis.report`'s are one and the same resampling, and
variant names come from one place (`analysis.records`).
"""
from __future__ import annotations

import pathlib
from typing import Callable

from scalable_elicitation.paths import atomic_write

REPORT_DIR = "report"


# resamples behind every band and decision (analysis.resample.DEFAULT_N_BOOT; not imported at
# module level so that importing this module stays cheap)
N_BOOT = 2000


def frontier_figure(records, path: pathlib.Path, *, n_boot: int = N_BOOT,
                    seed: int = 0) -> pathlib.Path | None:
    """Accuracy vs cost (log axis) at the sweep's prices, one line per oracle fraction with 90%
    bands (seeds and test examples resampled, `analysis.resample`), weak-label test accuracy
    dashed, one panel per method variant and one row per (model, weak labeller). `records` is an
    `analysis.records.Records` or a list of record dicts. Written atomically; None when no run
    succeeded."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from analysis import pricing
    from analysis.aggregate import build_surfaces
    from analysis.fits import percentile_band
    from analysis.io import figure_bytes
    from analysis.records import Records, records_from_dicts

    if not isinstance(records, Records):
        records = records_from_dicts(records)
    ok = records.ok
    if ok.empty:
        return None
    surfaces = build_surfaces(ok, n_boot=n_boot, seed=seed, excluded=records.excluded)
    n_cols = max(s.cells["variant"].nunique() for s in surfaces)
    fig, axes = plt.subplots(len(surfaces), n_cols, figsize=(5.0 * n_cols, 4.2 * len(surfaces)),
                             sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    weak_acc = ok["weak_label_test_accuracy"].dropna() if "weak_label_test_accuracy" in ok \
        else []
    for row, surface in zip(axes, surfaces):
        cell_of = {(v, int(w), int(o)): i for i, (v, w, o) in enumerate(zip(
            surface.cells["variant"], surface.cells["n_weak"], surface.cells["n_oracle"]))}
        members = surface.members.dropna(subset=["oracle_fraction"])
        fractions = sorted(members["oracle_fraction"].unique())
        lo, hi = percentile_band(surface.boot.T, 0.9)
        for ax, variant in zip(row, sorted(surface.cells["variant"].unique())):
            mine = members[members["variant"] == variant]
            for j, f in enumerate(fractions):
                pts = mine[mine["oracle_fraction"] == f]
                if pts.empty:
                    continue
                idx = [cell_of[(v, int(w), int(o))] for v, w, o in
                       zip(pts["variant"], pts["n_weak"], pts["n_oracle"])]
                cost = [pricing.cost(w, o, po, pw) for w, o, po, pw in zip(
                    pts["n_weak"], pts["n_oracle"], pts["sweep_oracle_price"],
                    pts["sweep_weak_price"])]
                order = np.argsort(cost, kind="stable")
                x = np.asarray(cost)[order]
                idx = np.asarray(idx)[order]
                acc = surface.cells["accuracy"].to_numpy()[idx]
                ax.errorbar(x, acc, yerr=[np.clip(acc - lo[idx], 0, None),
                                          np.clip(hi[idx] - acc, 0, None)],
                            fmt="o-", ms=4, capsize=2, lw=1.2,
                            color=cmap(j / max(1, len(fractions) - 1)),
                            label=f"oracle fraction {f:g}")
            if len(weak_acc):
                ax.axhline(float(np.mean(weak_acc)), ls="--", color="grey",
                           label="weak-label accuracy (test)")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("labelling cost (oracle-label units)")
            model, labeler = surface.scope
            ax.set_title(f"{variant}\n{model}, weak labeller {labeler}", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in row[surface.cells["variant"].nunique():]:
            ax.set_visible(False)
        row[0].set_ylabel("test accuracy (mean over seeds, 90% band)")
    axes[0][0].legend(fontsize=7)
    prices = sorted({float(p) for p in ok["prices.weak"]})
    fig.suptitle(f"tasks {', '.join(sorted(ok['task'].unique()))}; weak price "
                 f"{', '.join(f'{p:g}' for p in prices)}", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    atomic_write(path, figure_bytes(fig, "png", dpi=110))
    plt.close(fig)
    return path


def finish_sweep(workdir, out: Callable[[str], None] = print, *,
                 n_boot: int = N_BOOT, tolerance: float | None = None) -> str | None:
    """After a sweep: draw `WORKDIR/frontier.png`, write the report to `WORKDIR/report/`
    (report.md, decisions.csv and the other CSVs, figures) from every record under
    `WORKDIR/runs`, and print with `out` the answer (one plain sentence per budget), then one
    decision line per budget (across all variants, at the sweep's prices: the good buys within
    `tolerance` of the best configuration measured there, the one to buy, the accuracy to expect
    corrected for the choice, what is ruled out, what keeps an open budget open, and the seeds
    each configuration got; `analysis.decisions`), then the recommendation paragraph. Returns
    the paragraph (None when there is no report: an object-store workdir, or no ok run)."""
    from analysis.decisions import decision_lines
    from analysis.records import load_records
    from analysis.report import write_report

    if "://" in str(workdir):
        out(f"no report for an object-store workdir; run `python -m analysis.report --results "
            f"{workdir}/runs --out REPORT_DIR` on a mounted copy")
        return None
    workdir = pathlib.Path(workdir)
    try:
        records = load_records(workdir / "runs")
    except (ValueError, FileNotFoundError) as err:
        out(f"no report: {err}")
        return None
    frontier_figure(records, workdir / "frontier.png", n_boot=n_boot)
    try:
        report = write_report(records, workdir / REPORT_DIR, n_boot=n_boot,
                              **({} if tolerance is None else {"tolerance": tolerance}))
    except ValueError as err:  # no ok record (all infeasible or failed)
        out(f"no report: {err}")
        return None
    lines = decision_lines(report.decisions) if report.decisions is not None else []
    if report.answer:
        out("\nThe answer:\n" + "\n".join(report.answer))
    if lines:
        out(f"\nDecisions ({workdir / REPORT_DIR / 'decisions.csv'}):\n" + "\n".join(lines))
    out(f"\nRecommendation ({workdir / REPORT_DIR / 'report.md'}):\n{report.recommendation}")
    from analysis.weak_to_strong import largest_point_line
    w2s = largest_point_line(report.weak_to_strong)
    if w2s:
        out(f"\n{w2s} ({workdir / REPORT_DIR / 'weak_to_strong.csv'})")
    return report.recommendation
