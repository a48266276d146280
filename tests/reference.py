"""Host references that tests hold the device code to (never used in training)."""
import numpy as np

from scalable_elicitation.metrics import auroc


def val_metric(scores: np.ndarray, soft_labels: np.ndarray) -> float:
    """The validation metric as docs/design.md#stages defines it: AUROC against the labels
    hardened at 0.5, or accuracy when they hold one class (`groups.device_val_metric` on the
    device)."""
    hard = (np.asarray(soft_labels) > 0.5).astype(int)
    if hard.min() == hard.max():
        return float(np.mean((scores > 0).astype(int) == hard))
    return auroc(scores, hard)
