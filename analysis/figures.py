"""Figures (matplotlib, Agg backend), each saved as PNG and PDF."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

from analysis import pricing  # noqa: E402
from analysis.aggregate import Surface  # noqa: E402
from analysis.fits import CurveFit, fraction_fit, percentile_band  # noqa: E402
from analysis.io import save_figure  # noqa: E402
from analysis.tables import ALL, priced  # noqa: E402

MAX_PANELS = 6


def main_variant(surface: Surface) -> str:
    """The variant the single-variant figures show: ``seq_sft`` if present, else the commonest."""
    counts = surface.cells["variant"].value_counts()
    return "seq_sft" if "seq_sft" in counts.index else str(counts.sort_index().idxmax())


def _sweep_prices(surface: Surface) -> list[tuple[float, float]]:
    m = surface.members.dropna(subset=["budget"])
    pairs = m[["sweep_oracle_price", "sweep_weak_price"]].drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()), key=lambda p: -p[1])


def _budget_points(surface: Surface, variant: str, po: float, pw: float) -> pd.DataFrame:
    """Cells of one variant on one sweep's grid, one row per (budget, fraction) they serve."""
    m = surface.members
    m = m[(m["variant"] == variant) & (m["sweep_oracle_price"] == po) & (m["sweep_weak_price"] == pw)]
    m = m.dropna(subset=["budget"])
    pts = m.merge(surface.cells.reset_index().rename(columns={"index": "cell"}),
                  on=["variant", "n_weak", "n_oracle"])
    spend = [pricing.oracle_spend_fraction(w, o, po, pw) for w, o in zip(pts["n_weak"], pts["n_oracle"])]
    pts["x"] = pts["oracle_fraction"].where(pts["oracle_fraction"].notna(), pd.Series(spend, index=pts.index))
    return pts.sort_values(["budget", "x"])


def weak_test_accuracy(ok: pd.DataFrame, surface: Surface) -> float:
    """Accuracy of the weak labels on the test set, for the surface's scope and tasks: the mean
    over each task's seeds (a seed fixes the labeller), then over tasks, as the surface averages
    accuracy. NaN when the records do not carry ``weak_label_test_accuracy``.

    The figures' y axis is test accuracy; the labeller's accuracy on the training pool
    (``weak_label_accuracy``) is another quantity on another sample and would misplace the line.
    """
    col = "weak_label_test_accuracy"
    if ok is None or col not in ok.columns:
        return float("nan")
    model, labeler = surface.scope
    tasks = str(surface.cells["tasks"].iloc[0]).split("+")
    runs = ok[(ok["model"] == model) & (ok["weak_labeler"] == labeler) & ok["task"].isin(tasks)]
    runs = runs.assign(**{col: pd.to_numeric(runs[col], errors="coerce")}).dropna(subset=[col])
    if runs.empty:
        return float("nan")
    per_seed = runs.groupby(["task", "seed"])[col].mean()
    return float(per_seed.groupby(level="task").mean().mean())


def _weak_line(ax, weak_accuracy: float | None) -> None:
    """The weak labels' own test accuracy, dashed (nothing when unknown)."""
    if weak_accuracy is not None and np.isfinite(weak_accuracy):
        ax.axhline(weak_accuracy, color="0.3", ls="--", lw=1.2,
                   label=f"weak labels, test accuracy ({weak_accuracy:.3f})")


def fraction_fits(surface: Surface, variant: str | None = None, max_boot: int | None = None,
                  level: float = 0.9) -> dict[tuple[float, float, float], CurveFit]:
    """Per-budget curves of accuracy vs oracle fraction for one variant (default: the main one):
    the measured means joined by lines (:func:`analysis.fits.fraction_fit`), keyed by (sweep
    oracle price, sweep weak price, budget), with bands from the same resamples as every band."""
    variant = variant or main_variant(surface)
    out = {}
    for po, pw in _sweep_prices(surface):
        pts = _budget_points(surface, variant, po, pw)
        for budget, p in pts.groupby("budget"):
            if p["x"].nunique() >= 2:
                boot = surface.boot[p["cell"].to_numpy()][:, :max_boot]
                out[(po, pw, budget)] = fraction_fit(p["x"], p["accuracy"], boot, level=level)
    return out


def _measured(ax, surface: Surface, p: pd.DataFrame, color, level: float = 0.9, **kw) -> None:
    """Each cell's mean accuracy as a marker with its central ``level`` band as a bar."""
    lo, hi = percentile_band(surface.boot[p["cell"].to_numpy()].T, level)
    ax.errorbar(p["x"], p["accuracy"], yerr=[np.clip(p["accuracy"] - lo, 0, None),
                                             np.clip(hi - p["accuracy"], 0, None)],
                color=color, marker="o", ms=3.5, capsize=2, **kw)


def accuracy_vs_oracle_fraction(surface: Surface, path_stem,
                                fits: dict[tuple[float, float, float], CurveFit] | None = None,
                                weak_accuracy: float | None = None) -> list:
    """The study's main figure: accuracy vs oracle spending fraction, one curve per budget, the
    weak labels' test accuracy dashed; one row per sweep price, one column per variant; bars are
    90% bands. With ``fits`` (from :func:`fraction_fits`), the main variant only, each curve drawn
    with its shaded band and the measured means, with their bars, on top."""
    with_fits = fits is not None
    variants = [main_variant(surface)] if with_fits else \
        sorted(surface.cells["variant"].unique())[:MAX_PANELS]
    prices = _sweep_prices(surface)
    if not prices:
        return []
    budgets = sorted(surface.members["budget"].dropna().unique())
    norm = LogNorm(min(budgets), max(budgets)) if len(budgets) > 1 else Normalize(0, 2 * budgets[0])
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(prices), len(variants), squeeze=False, sharey=True,
                             figsize=(4.6 * len(variants) + 1.2, 3.8 * len(prices)))
    for r, (po, pw) in enumerate(prices):
        for c, variant in enumerate(variants):
            ax = axes[r, c]
            pts = _budget_points(surface, variant, po, pw)
            for budget, p in pts.groupby("budget"):
                color = cmap(norm(budget))
                cf = fits.get((po, pw, budget)) if with_fits else None
                if cf is not None:
                    ax.fill_between(cf.x, cf.lo, cf.hi, color=color, alpha=0.2, lw=0)
                    ax.plot(cf.x, cf.fit, color=color, lw=1.5, label=f"B={budget:g}")
                    _measured(ax, surface, p, color, ls="none", elinewidth=1.0)
                else:
                    _measured(ax, surface, p, color, lw=1.3, label=f"B={budget:g}")
            _weak_line(ax, weak_accuracy)
            ax.set_title(f"{variant}, weak price {pw:g}" + (
                " (means joined, 90% bands)" if with_fits else " (90% bands)"), fontsize=9)
            ax.set_xlabel("oracle spending fraction")
            ax.set_xlim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("test accuracy (mean over seeds)")
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(_scope_title(surface), fontsize=10)
    fig.tight_layout()
    out = save_figure(fig, path_stem)
    plt.close(fig)
    return out


def _scope_title(surface: Surface) -> str:
    model, labeler = surface.scope
    return f"{model}, weak labeller {labeler}, tasks {surface.cells['tasks'].iloc[0]}"


def _step(ax, cost, acc, **kw):
    order = np.argsort(cost, kind="stable")
    ax.step(np.asarray(cost)[order], np.asarray(acc)[order], where="post", **kw)


def frontier_figure(surface: Surface, weak_prices, frontiers: pd.DataFrame,
                    tolerance: pd.DataFrame, fits: dict, path_stem, oracle_price=1,
                    weak_accuracy: float | None = None) -> list:
    """Frontier vs cost (log axis), one panel per weak price: every configuration coloured by its
    weak fraction, the overall Pareto frontier (black steps, each point with its 90% band), the
    study's tolerance frontier (triangles) and the monotone curve through the frontier points
    with its 90% band (grey, :func:`analysis.fits.frontier_fit`); every measured mean is drawn
    beside it."""
    n = len(weak_prices)
    fig, axes = plt.subplots(1, n, squeeze=False, sharey=True, figsize=(4.8 * n + 1.0, 4.0))
    cmap = plt.get_cmap("coolwarm")
    sc = None
    for ax, wp in zip(axes[0], weak_prices):
        cells = priced(surface, oracle_price, wp)
        sc = ax.scatter(cells["cost"], cells["accuracy"], c=cells["weak_fraction"], cmap=cmap,
                        vmin=0, vmax=1, s=14, alpha=0.75, edgecolors="none", zorder=2)
        fr = frontiers[(frontiers["weak_price"] == float(wp)) & (frontiers["method"] == ALL)]
        _step(ax, fr["cost"], fr["accuracy"], color="k", lw=1.2, zorder=3, label="Pareto frontier")
        ax.scatter(fr["cost"], fr["accuracy"], c=fr["weak_fraction"], cmap=cmap, vmin=0, vmax=1,
                   s=36, edgecolors="k", linewidths=0.8, zorder=4)
        if len(fr) and "accuracy_lo" in fr.columns:
            ax.errorbar(fr["cost"], fr["accuracy"],
                        yerr=[np.clip(fr["accuracy"] - fr["accuracy_lo"], 0, None),
                              np.clip(fr["accuracy_hi"] - fr["accuracy"], 0, None)],
                        fmt="none", ecolor="k", elinewidth=0.8, capsize=2, zorder=4)
        tol = tolerance[(tolerance["weak_price"] == float(wp)) & (tolerance["method"] == ALL)]
        ax.scatter(tol["cost"], tol["accuracy"] + 0.012, marker="v", color="k", s=14, zorder=4,
                   label="tolerance frontier (study)")
        fit = fits.get(float(wp))
        if fit is not None:
            ax.fill_between(fit.x, fit.lo, fit.hi, color="0.5", alpha=0.25, lw=0, zorder=1,
                            label="monotone curve, 90% band")
            ax.plot(fit.x, fit.fit, color="0.35", lw=1.5, zorder=1)
        _weak_line(ax, weak_accuracy)
        ax.set_xscale("log")
        ax.set_xlabel(f"cost (oracle price {float(oracle_price):g})")
        ax.set_title(f"weak price {float(wp):g}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("test accuracy (mean over seeds)")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    if sc is not None:
        fig.colorbar(sc, ax=axes[0, -1], label="weak fraction of spend", fraction=0.05)
    fig.suptitle(_scope_title(surface), fontsize=10)
    out = save_figure(fig, path_stem)
    plt.close(fig)
    return out


def frontier_by_method(surface: Surface, weak_prices, frontiers: pd.DataFrame, path_stem,
                       weak_accuracy: float | None = None) -> list:
    """Pareto frontier of each method variant vs cost (log axis), one panel per weak price."""
    n = len(weak_prices)
    fig, axes = plt.subplots(1, n, squeeze=False, sharey=True, figsize=(4.8 * n + 1.5, 4.0))
    methods = sorted(m for m in frontiers["method"].unique() if m != ALL)
    colors = plt.get_cmap("tab10")
    for ax, wp in zip(axes[0], weak_prices):
        for k, method in enumerate(methods):
            fr = frontiers[(frontiers["weak_price"] == float(wp)) & (frontiers["method"] == method)]
            _step(ax, fr["cost"], fr["accuracy"], color=colors(k % 10), lw=1.4, label=method)
            ax.plot(fr["cost"], fr["accuracy"], "o", color=colors(k % 10), ms=3)
        _weak_line(ax, weak_accuracy)
        ax.set_xscale("log")
        ax.set_xlabel("cost")
        ax.set_title(f"weak price {float(wp):g}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("test accuracy (mean over seeds)")
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(_scope_title(surface) + ": frontier per method", fontsize=10)
    fig.tight_layout()
    out = save_figure(fig, path_stem)
    plt.close(fig)
    return out
