"""The main job's first figure: accuracy against cost, one line per oracle fraction."""
from __future__ import annotations

import pathlib


def frontier_figure(records: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    """Accuracy vs cost (log axis), one line per oracle fraction, weak-label accuracy dashed.
    Written atomically; returns the path, or None when no run succeeded."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scalable_elicitation.records import atomic_write_bytes

    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    by_fraction: dict[float, list[tuple[float, float]]] = {}
    for r in ok:
        for f in r.get("oracle_fractions") or [None]:
            by_fraction.setdefault(f, []).append((r["cost"], r["metrics"]["accuracy"]))
    cmap = plt.get_cmap("viridis")
    keys = sorted(by_fraction, key=lambda f: -1 if f is None else f)
    for i, f in enumerate(keys):
        pts = sorted(by_fraction[f])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                color=cmap(i / max(1, len(keys) - 1)), label=f"oracle fraction {f:g}"
                if f is not None else "run")
    weak_acc = [r["weak_label_test_accuracy"] for r in ok if r.get("weak_label_test_accuracy")]
    if weak_acc:
        ax.axhline(sum(weak_acc) / len(weak_acc), ls="--", color="grey",
                   label="weak-label accuracy (test)")
    ax.set_xscale("log")
    ax.set_xlabel("labelling cost (oracle-label units)")
    ax.set_ylabel("test accuracy")
    r0 = ok[0]
    ax.set_title(f"{r0['task']} / {r0['model']} / {r0['method']}, weak price "
                 f"{r0['prices']['weak']:g}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(pathlib.Path(path), buf.getvalue())
    return pathlib.Path(path)
