"""Gradient accumulation (`train.micro_batch`): a step taken in micro-batches makes the same
update as the whole batch at once (float32, within 1e-5), for the plain and the
log-confidence loss (whose self-labels need the whole batch's quantile), with padding rows,
alone and under `jax.vmap` as a group trains; and the config's edge refuses a micro-batch
that does not divide the batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalable_elicitation.models import load_pretrained
from scalable_elicitation.sharding import make_mesh
from scalable_elicitation.train import Steps

ROWS = 16


def _batch(seed, rows=ROWS, length=12, real=11):
    """Token ids of varied lengths, soft targets, and `rows - real` padding rows (weight 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 250, (rows, length)).astype(np.int32)
    lengths = rng.integers(3, length + 1, rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    weight = np.where(np.arange(rows) < real, rng.uniform(0.5, 1.5, rows), 0.0)
    return {"input_ids": jnp.asarray(ids * mask), "attention_mask": jnp.asarray(mask),
            "target": jnp.asarray(rng.uniform(0, 1, rows), jnp.float32),
            "weight": jnp.asarray(weight, jnp.float32)}


def _hp():
    # learning rate 1 at step 7 of a 50-step stage: with `_plain_steps` a step subtracts
    # about the gradient itself, so comparing updates compares gradients (Adam's first steps
    # divide a near-zero gradient by its own size, turning float32 rounding into 1e-4)
    return {"lr": jnp.float32(1.0), "warmup": jnp.float32(2.0), "total": jnp.float32(50.0),
            "logconf_ramp": jnp.float32(4.0), "logconf_coef": jnp.float32(0.5)}


@pytest.fixture(scope="module")
def bundle():
    return load_pretrained("tiny:llama", dtype="float32", trainable="lora", seed=1,
                           mesh=make_mesh({"data": 2}, jax.devices()[:2]))


def _plain_steps(bundle, micro=0):
    """The model's steps with a plain gradient step for an optimizer."""
    return Steps.for_model(bundle, optimizer=optax.identity(), micro_batch=micro)


def _state(steps, seed, step=7):
    """A state some steps into a stage (the logconf coefficient is then nonzero), with LoRA
    factors moved off their zero initialisation so every gradient is nonzero."""
    params = steps.fresh_params(jax.random.key(seed))
    params = jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(seed + 1), p.shape, p.dtype),
        params)
    state = steps.init_state(params, jax.random.key(seed + 2))
    return state.replace(step=jnp.int32(step))


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


@pytest.mark.parametrize("loss", ["xent", "logconf"])
@pytest.mark.parametrize("micro", [1, 4])
def test_micro_batches_make_the_whole_batch_update(bundle, loss, micro):
    whole, split = _plain_steps(bundle), _plain_steps(bundle, micro)
    state, batch = _state(whole, 0), _batch(0)
    new_w, m_w = jax.jit(whole.step_fn(loss))(state, whole.frozen, batch, _hp())
    new_s, m_s = jax.jit(split.step_fn(loss))(state, split.frozen, batch, _hp())
    assert float(m_w["grad_norm"]) > 1e-4  # a real gradient, not two zeros compared
    _close(m_w["loss"], m_s["loss"])
    _close(m_w["grad_norm"], m_s["grad_norm"])
    _close(new_w.params, new_s.params)
    # the update moved the parameters: equality above is not of two unchanged states
    moved = max(float(jnp.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(new_w.params), jax.tree.leaves(state.params)))
    assert moved > 1e-5


def test_logconf_self_labels_use_the_whole_batch(bundle):
    """The accumulated logconf step differs from one that took each micro-batch's own
    quantile: the whole-batch prior is what makes the two equal above."""
    whole = Steps.for_model(bundle)
    state, batch = _state(whole, 3), _batch(3)
    _, m_w = jax.jit(whole.step_fn("logconf"))(state, whole.frozen, batch, _hp())
    per_micro = []
    for j in range(4):  # micro-batches of 4 rows, each with its own quantile
        rows = np.arange(j, ROWS, 4)
        mb = {k: v[rows] for k, v in batch.items()}
        _, m = jax.jit(whole.step_fn("logconf"))(state, whole.frozen, mb, _hp())
        per_micro.append(float(m["loss"]) * float(mb["weight"].sum()))
    local = sum(per_micro) / float(batch["weight"].sum())
    assert abs(local - float(m_w["loss"])) > 1e-4


@pytest.mark.parametrize("loss", ["xent", "logconf"])
def test_a_group_of_runs_accumulates_like_each_run_alone(bundle, loss):
    """Under `jax.vmap` (the group engine's step), members with different batches and
    padding: micro-batched equals whole-batch for every member."""
    whole, split = _plain_steps(bundle), _plain_steps(bundle, 4)
    states = [_state(whole, s) for s in (5, 6)]
    batches = [_batch(5), _batch(6, real=3)]
    stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    hp = stack([_hp(), _hp()])
    args = (stack(states), whole.frozen, stack(batches), hp)
    in_axes = (0, None, 0, 0)
    new_w, m_w = jax.jit(jax.vmap(whole.step_fn(loss), in_axes=in_axes))(*args)
    new_s, m_s = jax.jit(jax.vmap(split.step_fn(loss), in_axes=in_axes))(*args)
    _close(m_w["loss"], m_s["loss"])
    _close(new_w.params, new_s.params)


def test_learner_and_config_refuse_a_micro_batch_that_does_not_divide_the_batch():
    from configs.cost_sweep import get_config
    from scalable_elicitation.learner import Learner, LearnerConfig
    from scalable_elicitation.planning import validate

    config = get_config("smoke")
    config.train.micro_batch = 5
    with pytest.raises(ValueError, match="train.micro_batch"):
        validate(config)
    config.train.micro_batch = 0
    config.labeler.micro_batch = 3
    with pytest.raises(ValueError, match="labeler.micro_batch: 3: rows per device"):
        validate(config)
    with pytest.raises(ValueError, match="micro_batch=3 rows per device"):
        Learner(LearnerConfig("tiny:llama", batch_size=32, micro_batch=3,
                              mesh=(("data", 1),)))


def test_the_study_preset_accumulates_one_sequence_at_a_time_and_ids_ignore_it(tmp_path):
    from configs.cost_sweep import get_config
    from scalable_elicitation.planning import Planner, RunSpec

    study = get_config("study")
    assert study.train.micro_batch == 1 and study.train.batch_size == 32
    config = get_config("smoke")
    spec = RunSpec(n_weak=4, n_oracle=2, seed=0, budget=None, fractions=())
    base = Planner(config, tmp_path).run_id(spec)
    config.train.micro_batch = 8
    assert Planner(config, tmp_path).run_id(spec) == base  # how a step runs, not what
    config.train.micro_batch = 0
    config.train.batch_size = 16
    assert Planner(config, tmp_path).run_id(spec) != base
