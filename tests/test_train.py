"""The train step's pieces: the masked soft cross-entropy, log-confidence targets and the
learning-rate schedule."""
import jax
import jax.numpy as jnp
import numpy as np

from scalable_elicitation.train import learning_rate, logconf_targets, soft_cross_entropy


def test_soft_cross_entropy_masks_padding():
    logits = jnp.array([[0.0, 1.0], [2.0, 0.0], [5.0, -5.0]])
    targets = jnp.array([[0.3, 0.7], [1.0, 0.0], [0.0, 1.0]])
    w = jnp.array([1.0, 1.0, 0.0])
    logp = jax.nn.log_softmax(logits)
    expect = -(targets[:2] * logp[:2]).sum(-1).mean()
    np.testing.assert_allclose(soft_cross_entropy(logits, targets, w), expect, rtol=1e-6)


def test_logconf_target_matches_hand_computation():
    logits = jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]))
    y = jnp.array([1.0, 1.0, 0.0, 0.0, 1.0])
    w = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])  # last row is padding
    out = logconf_targets(logits, y, w, stage_step=100.0)
    p0 = np.array([0.9, 0.2, 0.6, 0.3])
    t = np.quantile(p0, 0.5)  # prior = mean(y) over real rows = 0.5
    h1 = np.where(p0 >= t, 0.0, 1.0)
    c = 0.5 * min(1.0, 100 / 200)
    expect = (1 - c) * np.stack([1 - y[:4], y[:4]], -1) + c * np.stack([1 - h1, h1], -1)
    np.testing.assert_allclose(np.asarray(out[:4]), expect, rtol=1e-5)


def test_learning_rate_warmup_then_cosine_to_zero():
    lr = [float(learning_rate(jnp.int32(s), 1.0, 4.0, 20.0)) for s in range(21)]
    assert lr[0] == 0.0 and abs(lr[2] - 0.5) < 1e-6 and abs(lr[4] - 1.0) < 1e-6
    assert abs(lr[20]) < 1e-6 and all(a >= b for a, b in zip(lr[4:], lr[5:]))
