"""The main job's first figure: accuracy against cost, one line per oracle fraction, one panel
per method variant."""
from __future__ import annotations

import pathlib


def variant_name(record: dict) -> str:
    """A short name for a record's method and options (matches analysis' variant names)."""
    cfg = record.get("config") or {}
    method = record.get("method", "?")
    name = method
    if method in ("kshot_sft", "icl"):
        name += f"(k={cfg.get('k')}" + (f",{cfg.get('shot_source')})" if method == "kshot_sft"
                                         else ")")
    if cfg.get("loss") == "logconf":
        name += "+logconf"
    if cfg.get("oracle_selection") == "entropy":
        name += "+entropy"
    if cfg.get("schedule") == "api":
        name += "+api"
    return name


def frontier_figure(records: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    """Accuracy vs cost (log axis), one line per oracle fraction, weak-label accuracy dashed,
    one panel per method variant. Written atomically; None when no run succeeded."""
    import io

    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scalable_elicitation.records import atomic_write_bytes

    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return None
    variants = sorted({variant_name(r) for r in ok})
    fig, axes = plt.subplots(1, len(variants), figsize=(5.0 * len(variants), 4.2),
                             sharey=True, squeeze=False)
    fractions = sorted({f for r in ok for f in (r.get("oracle_fractions") or [0.0])})
    cmap = plt.get_cmap("viridis")
    weak_acc = [r["weak_label_test_accuracy"] for r in ok if r.get("weak_label_test_accuracy")]
    for ax, variant in zip(axes[0], variants):
        mine = [r for r in ok if variant_name(r) == variant]
        for i, f in enumerate(fractions):
            pts: dict[float, list[float]] = {}
            for r in mine:
                if f in (r.get("oracle_fractions") or [0.0]):
                    pts.setdefault(r["cost"], []).append(r["metrics"]["accuracy"])
            if not pts:
                continue
            xs = sorted(pts)
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], "o-", ms=4,
                    color=cmap(i / max(1, len(fractions) - 1)), label=f"oracle fraction {f:g}")
        if weak_acc:
            ax.axhline(sum(weak_acc) / len(weak_acc), ls="--", color="grey",
                       label="weak-label accuracy (test)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("labelling cost (oracle-label units)")
        ax.set_title(variant, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean over seeds)")
    axes[0][-1].legend(fontsize=7)
    r0 = ok[0]
    fig.suptitle(f"{r0['task']} / {r0['model']}, weak price {r0['prices']['weak']:g}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(pathlib.Path(path), buf.getvalue())
    return pathlib.Path(path)
