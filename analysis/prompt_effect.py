"""The few-shot prompt's effect (docs/design.md#kshot_sft, #analysis): ``kshot_sft - seq_sft``.

The study's second headline is that a few-shot prompt in front of every finetuning input adds up
to 5 accuracy points at a fixed budget, most at small budgets. This module measures it on a
sweep that ran both methods: for each grid point (weak price, budget, oracle fraction) where a
``kshot_sft`` variant and ``seq_sft`` both have ok runs, the difference of their mean accuracies
with a central ``level`` interval of the same difference over the paired resamples of
:mod:`analysis.resample`. A resample draws the seeds once for both cells (the shared labeller
effect of a seed cancels, both cells buying the same labels) and the test examples once for
both, so the interval is the one for the difference, not for two independent means. Each
cell's own seed noise is drawn independently (:mod:`analysis.resample` does not share it across
cells, although the two methods of a seed train on the same labels), which errs wide.

The intervals are pointwise: each holds at ``level`` on its own, not all rows at once.

A k-shot run buys the same labels as the ``seq_sft`` run of its grid point; its k shots come out
of them (docs/design.md#cost-model), so its ``n_weak`` and ``n_oracle`` (shots included) equal the
``seq_sft`` run's and the two cells pair by grid point.

Nothing here imports JAX.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.aggregate import Surface
from analysis.fits import percentile_band
from analysis.io import save_figure

CONTROL = "seq_sft"
TREATMENT = re.compile(r"^kshot_sft(\(|$)")  # kshot_sft and kshot_sft(k=K,SOURCE)
POINT_KEYS = ["sweep_oracle_price", "sweep_weak_price", "budget", "oracle_fraction"]
COLUMNS = ["model", "weak_labeler", "tasks", "weak_price", "oracle_price", "budget",
           "oracle_fraction", "variant", "n_weak", "n_oracle", "seq_sft_accuracy",
           "kshot_accuracy", "difference", "difference_lo", "difference_hi", "n_seeds"]


def _points(surface: Surface) -> pd.DataFrame:
    """The surface's grid points with the index of the cell that served each."""
    cells = surface.cells.reset_index().rename(columns={"index": "cell"})
    keys = ["variant", "n_weak", "n_oracle"]
    members = surface.members.dropna(subset=["budget", "oracle_fraction"])
    return members.merge(cells[keys + ["cell"]], on=keys, how="inner")


def prompt_effect_table(surface: Surface, level: float = 0.9) -> pd.DataFrame:
    """One row per (grid point, k-shot variant) where ``seq_sft`` also ran: ``difference`` =
    k-shot minus seq_sft mean accuracy and its central ``level`` interval from the paired
    resamples (:data:`COLUMNS`). Empty when the surface lacks either method."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    points = _points(surface)
    control = points[points["variant"] == CONTROL]
    treated = points[points["variant"].map(lambda v: bool(TREATMENT.match(str(v))))]
    pairs = treated.merge(control, on=POINT_KEYS, suffixes=("", "_control"))
    if pairs.empty:
        return pd.DataFrame(columns=COLUMNS)
    model, labeler = surface.scope
    cells = surface.cells
    boot = np.asarray(surface.boot, dtype=np.float64)
    diffs = boot[pairs["cell"].to_numpy()] - boot[pairs["cell_control"].to_numpy()]  # [P, B]
    lo, hi = percentile_band(diffs.T, level)
    acc = cells["accuracy"].to_numpy(dtype=float)
    seeds = cells["n_seeds"].to_numpy()
    out = pd.DataFrame({
        "model": model, "weak_labeler": labeler, "tasks": cells["tasks"].iloc[0],
        "weak_price": pairs["sweep_weak_price"].to_numpy(dtype=float),
        "oracle_price": pairs["sweep_oracle_price"].to_numpy(dtype=float),
        "budget": pairs["budget"].to_numpy(dtype=float),
        "oracle_fraction": pairs["oracle_fraction"].to_numpy(dtype=float),
        "variant": pairs["variant"].to_numpy(),
        "n_weak": pairs["n_weak"].to_numpy(dtype=int),
        "n_oracle": pairs["n_oracle"].to_numpy(dtype=int),
        "seq_sft_accuracy": acc[pairs["cell_control"]],
        "kshot_accuracy": acc[pairs["cell"]],
        "difference": acc[pairs["cell"]] - acc[pairs["cell_control"]],
        "difference_lo": lo, "difference_hi": hi,
        "n_seeds": np.minimum(seeds[pairs["cell"]], seeds[pairs["cell_control"]]),
    })
    return out.sort_values(["weak_price", "variant", "budget", "oracle_fraction"],
                           ignore_index=True)[COLUMNS]


def prompt_effect_sentence(table: pd.DataFrame, level: float = 0.9) -> str:
    """What the table says in words: the largest and smallest difference, how many intervals
    lie above 0, below 0 or straddle it, and the mean difference per budget."""
    if table.empty:
        return ("No grid point has both kshot_sft and seq_sft runs, so the prompt's effect is "
                "not measured.")
    above = int((table["difference_lo"] > 0).sum())
    below = int((table["difference_hi"] < 0).sum())
    by_budget = table.groupby("budget")["difference"].mean()
    best = table.loc[table["difference"].idxmax()]
    return (f"The prompt's effect (k-shot minus seq_sft accuracy) at {len(table)} grid points: "
            f"its {100 * level:.0f}% interval lies above 0 at {above}, below 0 at {below}, and "
            f"contains 0 at {len(table) - above - below} (pointwise intervals). Mean difference "
            "by budget: " + ", ".join(f"{b:g}: {100 * d:+.1f} points"
                                      for b, d in by_budget.items())
            + f". Largest: {100 * best['difference']:+.1f} points at budget "
            f"{best['budget']:g}, oracle fraction {best['oracle_fraction']:g} "
            f"({100 * best['difference_lo']:+.1f} to {100 * best['difference_hi']:+.1f}).")


def prompt_effect_figure(table: pd.DataFrame, path_stem: str | Path) -> list[Path]:
    """The difference against budget (log axis), one line per (variant, oracle fraction) with
    its interval as bars, one panel per weak price; [] when the table is empty."""
    if table.empty:
        return []
    from analysis import figures  # matplotlib only when there is something to draw
    plt = figures.plt
    prices = sorted(table["weak_price"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(prices), figsize=(5.2 * len(prices), 3.8), squeeze=False)
    for ax, price in zip(axes[0], prices):
        part = table[table["weak_price"] == price]
        groups = list(part.groupby(["variant", "oracle_fraction"], sort=True))
        for j, ((variant, fraction), g) in enumerate(groups):
            g = g.sort_values("budget")
            x = g["budget"].to_numpy() * (1.0 + 0.04 * (j - (len(groups) - 1) / 2))
            y = 100 * g["difference"].to_numpy()
            err = 100 * np.vstack([g["difference"] - g["difference_lo"],
                                   g["difference_hi"] - g["difference"]])
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3,
                        label=f"{variant}, oracle fraction {fraction:g}")
        ax.axhline(0.0, color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("budget (oracle-label units)")
        ax.set_ylabel("k-shot minus seq_sft accuracy (points)")
        ax.set_title(f"weak price {price:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written = save_figure(fig, path_stem)
    plt.close(fig)
    return written
