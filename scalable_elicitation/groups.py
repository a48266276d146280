"""The stage engine (docs/design.md#many-runs-at-once): one compiled loop trains a group of runs'
stages, and a run alone is a group of one (`run_stage`), so early stopping, the validation
metric, loss checks, progress, checkpoints and the stage record are written once.

Each member of a group is one run's stage: its trainable parameters, labels, schedule and
early-stopping state. Their train states are stacked on a leading run axis, and one jitted
`lax.while_loop` advances every member a step at a time on the device: the batch of each member is
gathered on the device from its own examples (the host computes each member's `stage.batch_order`),
one `jax.vmap`-ed train step updates all members with the frozen base shared (read once per step for
all runs), and a member whose evaluation falls due is scored on its validation examples on the
device (AUROC by ranks, or accuracy with one class) and its early-stopping state updated. A member
that has finished (its steps done, or stopped early) is masked out until the group ends. The host
sees the group only every `iters_per_call` steps: for non-finite losses, progress and checkpoints.
Per-run learning-rate schedules, stage lengths, evaluation cadences, patience and thresholds are
arrays, so a group of any mix of stages compiles once per padded shape.

Each member's result equals its stage trained alone (same batches, schedule, evaluations, kept
state; metrics within float tolerance), so a record does not depend on its group
(`tests/test_groups.py`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from scalable_elicitation import grouping
from scalable_elicitation.batching import BatchSpec, Encoded, Features, bucket_for
from scalable_elicitation.sharding import batch_sharding, broadcast_flag
from scalable_elicitation.stage import (StageConfig, StageResult, batch_order, stage_record,
                                        stage_schedule)
from scalable_elicitation.train import Steps

ITERS_PER_CALL = 512  # loop steps per device call between host checks
# float32 metrics: an improvement is `metric >= best + min_delta - TIE_TOL`. Distinct AUROCs
# differ by at least 1 / (n_pos * n_neg) (> 1e-6 for validation sets up to ~2,000 labels),
# so the tolerance only absorbs float32 rounding.
TIE_TOL = 5e-7


@dataclasses.dataclass
class Member:
    """One run's stage in a group: what `run_stage` takes for it, plus its checkpointer
    (`checkpoint.StageCheckpointer`, restored on entry and saved as the group's clock allows)
    and `progress(step, total, loss)`, which sees every step's loss."""
    params: object
    train: object  # Features or Encoded
    targets: np.ndarray
    val: object | None
    val_labels: np.ndarray | None
    cfg: StageConfig
    seed_path: Sequence[int]
    key: jax.Array
    source: str = "oracle"
    weights: np.ndarray | None = None
    checkpoint: object = None
    progress: Callable | None = None

    @property
    def has_val(self) -> bool:
        return self.val is not None and len(self.val) > 0


def compatibility(member: Member, spec: BatchSpec) -> tuple:
    """Members with equal keys can share a group: loss kind, batch size and kind of inputs."""
    kind = ("features", member.train.features.shape[1]) if isinstance(member.train, Features) \
        else ("tokens",)
    return (member.cfg.loss, spec.batch_size, *kind)


def _bucket(n: int, lo: int) -> int:
    """The power of two >= max(n, lo): a few padded shapes serve every group."""
    return 1 << max(0, (max(n, lo) - 1).bit_length())


def padded_rows(rows: int, val_rows: int, batch_size: int) -> tuple[int, int]:
    """(training, validation) rows a member stores in a group padded for a stage of `rows`
    and `val_rows` (`_layout`): training rows to a power of two, validation rows to a power
    of two rounded up to whole batches."""
    val = _bucket(max(val_rows, 1), batch_size)
    return _bucket(max(rows, 1), batch_size), -(-val // batch_size) * batch_size


def _padded_order(n_train: int, total: int, batch_size: int, key_seed: Sequence[int],
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """`stage.batch_order` padded to `width` steps (steps past `total` have no real rows)."""
    idx, real = batch_order(n_train, total, batch_size, key_seed)
    out_idx = np.zeros((width, batch_size), np.int32)
    out_real = np.zeros((width, batch_size), bool)
    out_idx[:total], out_real[:total] = idx, real
    return out_idx, out_real


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Least padded sizes of a group: training rows, validation rows and steps, and the
    group size (`members`: the scheduler cuts groups to it; members are not padded to it). A
    sweep passes the sizes of its largest stage, so its groups of one size have one shape and
    the loop compiles once per group size (XLA compiles per shape; on 2 CPU cores about a
    second each for a probe)."""
    rows: int = 0
    val_rows: int = 0
    steps: int = 0
    members: int = 0


def _inputs(data, rows: int, spec: BatchSpec) -> dict[str, np.ndarray]:
    """A member's examples as one padded batch of `rows` (the data's own `batch`): features
    [rows, D], or token ids and attention mask [rows, the group's length]."""
    n = len(data)
    batch = data.batch(np.arange(n), np.zeros(n), np.zeros(n),
                       dataclasses.replace(spec, batch_size=rows))
    return {k: v for k, v in batch.items() if k not in ("target", "weight")}


def device_val_metric(scores, labels, on):
    """`stage.val_metric` on the device: AUROC (Mann-Whitney, ties one half) of the real rows
    (`on`) against labels hardened at 0.5, or accuracy of `scores > 0` with one class."""
    hard = labels > 0.5
    pos, neg = hard & on, ~hard & on
    n_pos, n_neg = pos.sum(), neg.sum()
    neg_sorted = jnp.sort(jnp.where(neg, scores, jnp.inf))
    below = jnp.searchsorted(neg_sorted, scores, side="left")
    upto = jnp.searchsorted(neg_sorted, scores, side="right")
    wins = jnp.where(pos, below + 0.5 * (upto - below), 0.0).sum()
    auc = wins / jnp.maximum(n_pos * n_neg, 1).astype(jnp.float32)
    acc = jnp.where(on, (scores > 0) == hard, False).sum() / jnp.maximum(on.sum(), 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, acc.astype(jnp.float32))


def early_stopping(metric, due, best, bad, has_best, min_delta, patience):
    """The early-stopping rule, the only one (docs/design.md#stages), for arrays of members:
    an evaluation (`due`) improves when its metric is at least the best so far plus
    `min_delta` (up to float32 rounding, `TIE_TOL`), or is the first; training stops after
    `patience` evaluations without an improvement; the kept state is the best evaluation (the
    highest metric seen, ties to the earliest), which need not be an improvement by
    `min_delta`. Returns (keep this state, evaluations without improvement, stop)."""
    first = ~has_best
    improved = first | (metric >= best + min_delta - TIE_TOL)
    better = due & (first | (metric > best))
    bad = jnp.where(due, jnp.where(improved, 0, bad + 1), bad)
    return better, bad, due & (bad >= patience)


def _select(on, new, old):
    """`new` where the member is on, else `old` (leaves have a leading run axis)."""
    return jax.tree.map(
        lambda a, b: jnp.where(on.reshape(on.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def run_mesh_axis(mesh, mode: str = "rows", members: int = 1) -> str | None:
    """The mesh axis a group of `members` runs has its run axis split over, or None.

    "rows" (the default): every member on every device, each member's batch rows split over
    the data-parallel axes and its parameters sharded as the mesh says, exactly as a lone run's
    are, so a member's numbers equal one-at-a-time training on the same mesh. "runs": whole
    runs on devices (the group padded to a multiple of the data axis), each device training its
    share of the members with its own copy of the frozen model and no communication per step
    but the group's "all done?"; a member's numbers then equal the run alone on one device
    (data-parallel training on several devices sums its batch in another order, a rounding
    difference). It needs a model that fits one device: mesh fsdp = tensor = 1. "auto": one
    or the other by the group's size (`grouping.placement`)."""
    error = grouping.placement_error(mode, dict(mesh.shape))
    if error is not None:
        raise ValueError(f"group_sharding={error}")
    if grouping.placement(mode, dict(mesh.shape), members) == "rows":
        return None
    return "data" if mesh.shape.get("data", 1) > 1 else None


def _spec(*axes) -> P:
    """A PartitionSpec, `P()` when nothing is split: the spec XLA gives the loop's replicated
    outputs, so that every call of the loop has one signature."""
    return P(*axes) if any(a is not None for a in axes) else P()


def _stacked(shardings, axis):
    """Shardings of trees stacked on a leading run axis: that axis over `axis` (or
    replicated), each leaf's own dimensions as before."""
    return jax.tree.map(lambda s: NamedSharding(s.mesh, _spec(axis, *s.spec)), shardings)


def _carry_shardings(steps: Steps, axis, carry: dict) -> dict:
    """Where the loop's carry lives: states and best parameters stacked over their own
    shardings, per-member vectors over the run axis, the loss log [steps, members] likewise
    on its second axis, the step counter everywhere."""
    mesh = steps.mesh
    out = {k: NamedSharding(mesh, _spec(axis)) for k in carry}
    out.update(state=_stacked(steps.state_sharding, axis),
               best=_stacked(steps.params_sharding, axis),
               losses=NamedSharding(mesh, _spec(None, axis)), it=NamedSharding(mesh, P()))
    return out


def _constrain(tree, shardings):
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, shardings)


def _due_evaluator(steps: Steps, eval_rows: int, axis: str | None):
    """`evaluate_due(params, frozen, consts, due) -> (metric, evaluated)` for a group loop:
    each due member scored on its validation rows (`eval_rows` per forward pass), one member
    after another, and no other (a member due every step does not make the group score all
    of its members). With whole runs on devices (`axis`), each device goes through its own
    members."""
    def member_scores(params, frozen, val):
        rows = next(iter(val.values())).shape[0]
        chunks = jax.tree.map(lambda v: v.reshape(rows // eval_rows, eval_rows, *v.shape[1:]),
                              val)

        def one(batch):
            logits = steps.logits(params, frozen, batch)
            return logits[:, 1] - logits[:, 0]

        return jax.lax.map(one, chunks).reshape(rows)

    def member_metric(params, frozen, val, val_y, val_on, is_due):
        """A member's validation metric and 1 if it is due, else (0, 0) without scoring."""
        def score():
            return device_val_metric(member_scores(params, frozen, val), val_y, val_on), 1
        return jax.lax.cond(is_due, score, lambda: (jnp.zeros((), jnp.float32), 0))

    def evaluate_due(params, frozen, k, due):
        def members(frozen, params, val, val_y, val_on, due):
            return jax.lax.map(lambda x: member_metric(x[0], frozen, *x[1:]),
                               (params, val, val_y, val_on, due))

        args = (params, k["val"], k["val_y"], k["val_on"], due)
        if axis is None:
            return members(frozen, *args)
        run = P(axis)
        specs = lambda tree: jax.tree.map(lambda s: s.spec, tree)  # noqa: E731
        local = jax.shard_map(
            members, mesh=steps.mesh, out_specs=(run, run), check_vma=False,
            in_specs=(specs(steps.frozen_sharding),
                      specs(_stacked(steps.params_sharding, axis)), run, run, run, run))
        return local(frozen, *args)

    return evaluate_due


@functools.lru_cache(maxsize=None)
def group_loop(steps: Steps, loss_kind: str, eval_rows: int, axis: str | None = None):
    """jit(carry, frozen, consts, limit) -> carry: loop steps of every unfinished member until
    all are done or `carry['it']` reaches `limit`. `eval_rows` is how many validation rows one
    forward pass scores (all of them for a probe; the batch size for a transformer). `axis`:
    the mesh axis of the run axis (`run_mesh_axis`)."""
    step = steps.step_fn(loss_kind)

    def member_batch(data, target, weight, idx, real):
        batch = {k: v[idx] for k, v in data.items()}
        batch["target"] = target[idx]
        batch["weight"] = jnp.where(real, weight[idx], 0.0)
        return batch

    evaluate_due = _due_evaluator(steps, eval_rows, axis)

    def body(c, frozen, k):
        st, on = c["state"], ~c["done"]
        width = k["order"].shape[1]
        s = jnp.minimum(st.step, width - 1)
        idx = jnp.take_along_axis(k["order"], s[:, None, None], axis=1)[:, 0]
        real = jnp.take_along_axis(k["real"], s[:, None, None], axis=1)[:, 0]
        batch = jax.vmap(member_batch)(k["train"], k["target"], k["weight"], idx, real)
        # whole members on devices, or each member's rows over the data-parallel devices as a
        # lone step's are
        batch = {name: jax.lax.with_sharding_constraint(
            v, NamedSharding(steps.mesh, _spec(axis)) if axis is not None
            else batch_sharding(steps.mesh, v.ndim - 1, leading=1))
            for name, v in batch.items()}
        new, metrics = jax.vmap(step, in_axes=(0, None, 0, 0))(st, frozen, batch, k["hp"])
        st = st.replace(step=jnp.where(on, new.step, st.step),
                        params=_select(on, new.params, st.params),
                        opt_state=_select(on, new.opt_state, st.opt_state))
        row = c["it"] % c["losses"].shape[0]  # this call's log: one row per loop step
        losses = jax.lax.dynamic_update_index_in_dim(
            c["losses"], jnp.where(on, metrics["loss"], jnp.nan), row, 0)
        s1 = st.step
        # `StageSchedule.first_eval`: multiples of eval_every from first_eval on
        due = on & k["has_val"] & (((s1 % k["eval_every"] == 0) & (s1 >= k["first_eval"]))
                                   | (s1 >= k["total"]))

        metric, ran = evaluate_due(st.params, frozen, k, due)
        better, bad, stop = early_stopping(metric, due, c["metric"], c["bad"], c["has_best"],
                                           k["min_delta"], k["patience"])
        finished = (s1 >= k["total"]) | stop
        return {"state": st, "best": _select(better, st.params, c["best"]),
                "metric": jnp.where(better, metric, c["metric"]),
                "best_step": jnp.where(better, s1, c["best_step"]),
                "has_best": c["has_best"] | due, "bad": bad, "evals": c["evals"] + ran,
                "done": c["done"] | (on & finished), "losses": losses, "it": c["it"] + 1}

    def loop(carry, frozen, consts, limit):
        where = _carry_shardings(steps, axis, carry)  # outputs placed as inputs: one signature
        out = jax.lax.while_loop(lambda c: (~c["done"].all()) & (c["it"] < limit),
                                 lambda c: _constrain(body(c, frozen, consts), where), carry)
        return _constrain(out, where)

    return jax.jit(loop, donate_argnums=(0,))


def _stack_trees(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _stack(trees, shardings=None):
    """Trees stacked on a new leading axis, in one compiled call (eager stacking dispatches
    one operation per leaf), placed as `shardings` say: arrays already on a mesh that spans
    processes can only be moved by a computation, not by `device_put`."""
    return jax.jit(_stack_trees, out_shardings=shardings)(list(trees))


@functools.lru_cache(maxsize=None)
def _replicate(mesh):
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))


def _host(steps: Steps, tree):
    """Small per-member arrays of the carry on this host, in full: copied to every device
    first, since with whole runs on devices of several processes each process addresses only
    its own members' entries, and `jax.device_get` of the rest fails."""
    return jax.device_get(_replicate(steps.mesh)(tree))


@jax.jit
def _member(tree, g):
    """Member g's slice of a stacked tree (g traced: one compile for every member)."""
    return jax.tree.map(lambda x: x[g], tree)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A group's padded shapes and placement: members G (padded to Gp), per-member schedules,
    training rows N, validation rows M, steps T, the run axis and the batch spec."""
    G: int
    Gp: int
    axis: str | None
    plans: list
    N: int
    M: int
    T: int
    spec: BatchSpec
    tokens: bool


def _layout(steps: Steps, members: Sequence[Member], spec: BatchSpec, shapes: Shapes,
            group_sharding: str) -> _Layout:
    keys = {compatibility(m, spec) for m in members}
    if len(keys) != 1:
        raise ValueError(f"a group needs members of one loss kind, batch size and input kind; "
                         f"got {sorted(keys)}")
    G, bs = len(members), spec.batch_size
    axis = run_mesh_axis(steps.mesh, group_sharding, G)
    # no padding member but what the mesh needs (every device the same number of members):
    # a padding member costs a real member's step for the group's whole life, more than the
    # compile a group of another size costs
    Gp = G if axis is None else -(-G // steps.mesh.shape[axis]) * steps.mesh.shape[axis]
    plans = [stage_schedule(len(m.train), len(m.val) if m.has_val else 0, m.cfg, bs)
             for m in members]
    tokens = isinstance(members[0].train, Encoded)
    if tokens:
        longest = max(max([len(t) for t in m.train.tokens] +
                          ([len(t) for t in m.val.tokens] if m.has_val else []) + [1])
                      for m in members)
        spec = dataclasses.replace(spec, buckets=(bucket_for(longest, spec.buckets),))
    N, M = padded_rows(max([len(m.train) for m in members] + [shapes.rows]),
                       max([len(m.val) if m.has_val else 1 for m in members]
                           + [shapes.val_rows]), bs)
    T = _bucket(max([p.total for p in plans] + [shapes.steps]), 64)
    return _Layout(G, Gp, axis, plans, N, M, T, spec, tokens)


def _initial_carry(steps: Steps, members: Sequence[Member], lay: _Layout,
                   iters_per_call: int) -> dict:
    """Fresh states, or each member's restored from its checkpoint, stacked and placed."""
    states, best, meta = [], [], []
    for m in members:
        state = steps.init_state(m.params, m.key)
        saved = m.checkpoint.restore(state) if m.checkpoint is not None else None
        if saved is None:
            states.append(state)
            best.append(state.params)
            meta.append((-np.inf, 0, 0, False))
        else:
            state, b, _ = saved
            states.append(state)
            has = b["params"] is not None
            best.append(b["params"] if has else state.params)
            meta.append((b["metric"], b["step"], b["bad"], has))
    pad = lay.Gp - lay.G
    has = np.asarray([x[3] for x in meta] + [False] * pad)
    host = {
        "metric": np.where(has, [x[0] for x in meta] + [0.0] * pad, -np.inf).astype(np.float32),
        "best_step": np.asarray([x[1] for x in meta] + [0] * pad, np.int32),
        "bad": np.asarray([x[2] for x in meta] + [0] * pad, np.int32), "has_best": has,
        "evals": np.zeros(lay.Gp, np.int32),  # validation passes made, per member
        "done": np.asarray([False] * lay.G + [True] * pad),
        # zeros, not NaN: every row is written before it is read, and a multi-process
        # device_put checks that the processes' values are equal, which NaN never is
        "losses": np.zeros((iters_per_call, lay.Gp), np.float32),
        "it": np.zeros((), np.int32)}
    where = _carry_shardings(steps, lay.axis, {**host, "state": None, "best": None})
    return {"state": _stack(states + [states[0]] * pad, where["state"]),
            "best": _stack(best + [best[0]] * pad, where["best"]),
            **jax.device_put(host, {k: where[k] for k in host})}


def _constants(steps: Steps, members: Sequence[Member], lay: _Layout) -> dict:
    """What each member trains and is evaluated on, and its schedule, padded to the group's
    shapes and stacked on the run axis (padding slots repeat the first member)."""
    pad, bs, spec, plans = lay.Gp - lay.G, lay.spec.batch_size, lay.spec, lay.plans

    def stack_rows(fn):
        rows = [fn(m, p) for m, p in zip(members, plans)]
        return jax.tree.map(lambda *xs: np.stack(xs), *rows, *[rows[0]] * pad)

    def padded(values, rows, fill=0.0):
        out = np.full(rows, fill, np.float32)
        out[:len(values)] = values
        return out

    def per_member(values, fill, dtype):
        return np.asarray(list(values) + [fill] * pad, dtype)

    order, real = stack_rows(
        lambda m, p: _padded_order(len(m.train), p.total, bs, m.seed_path, lay.T))
    consts = {
        "train": stack_rows(lambda m, p: _inputs(m.train, lay.N, spec)),
        "target": stack_rows(lambda m, p: padded(m.targets, lay.N)),
        "weight": stack_rows(lambda m, p: padded(
            np.ones(len(m.train)) if m.weights is None else m.weights, lay.N)),
        "order": order, "real": real,
        "val": stack_rows(lambda m, p: _inputs(m.val if m.has_val else m.train.take([0]),
                                               lay.M, spec)),
        "val_y": stack_rows(lambda m, p: padded(m.val_labels if m.has_val else [], lay.M)),
        "val_on": stack_rows(lambda m, p: np.arange(lay.M) < (len(m.val) if m.has_val else 0)),
        "total": per_member((p.total for p in plans), 1, np.int32),
        "eval_every": per_member((p.eval_every for p in plans), 1, np.int32),
        "first_eval": per_member((p.first_eval for p in plans), 1, np.int32),
        "has_val": per_member((p.has_val for p in plans), False, bool),
        "patience": per_member((m.cfg.patience for m in members), 1, np.int32),
        "min_delta": per_member((m.cfg.min_delta for m in members), 0.0, np.float32),
        "hp": {k: per_member((p.hparams[k] for p in plans), plans[0].hparams[k], np.float32)
               for k in plans[0].hparams},
    }
    return jax.device_put(consts, NamedSharding(steps.mesh, _spec(lay.axis)))  # [run, ...]


def _drive(loop, carry, consts, steps: Steps, members: Sequence[Member], lay: _Layout,
           iters_per_call: int, checkpoint_interval_s: float):
    """Call the loop until every member is done, reading losses, progress and non-finite
    losses on the host between calls and saving checkpoints on the group's clock. Returns
    (carry, each member's step, each member's losses, errors by member)."""
    where = _carry_shardings(steps, lay.axis, carry)
    errors: dict[int, Exception] = {}
    reported = np.asarray(_host(steps, carry["state"].step))[:lay.G].astype(np.int64)
    losses = [[] for _ in members]  # every step's loss, per member
    last_save = time.monotonic()
    while True:
        before = int(carry["it"])
        carry = loop(carry, steps.frozen, consts, carry["it"] + iters_per_call)
        done, step, log, it = _host(steps, (carry["done"], carry["state"].step,
                                            carry["losses"], carry["it"]))
        ran = log[:int(it) - before, :lay.G]  # [loop steps of this call, member]
        newly_bad = False
        for g, m in enumerate(members):
            seen = ran[:int(step[g] - reported[g]), g]  # a member steps while unfinished
            losses[g].extend(seen.tolist())
            bad_at = np.flatnonzero(~np.isfinite(seen))
            if bad_at.size and g not in errors:
                errors[g] = FloatingPointError(
                    f"non-finite loss {seen[bad_at[0]]} at step {reported[g] + bad_at[0] + 1} "
                    f"of the {m.source} stage; lower the learning rate or check the labels")
                newly_bad = True
            if m.progress is not None and g not in errors:
                for t, value in enumerate(seen):
                    m.progress(int(reported[g]) + t + 1, lay.plans[g].total, float(value))
            reported[g] = step[g]
        if newly_bad:  # a failed member stops here; the others go on
            carry["done"] = jax.device_put(
                np.asarray(done) | np.isin(np.arange(lay.Gp), list(errors)), where["done"])
            done = np.asarray(_host(steps, carry["done"]))
        if done.all():
            return carry, step, losses, errors
        # process 0's clock decides for all: every process must call Orbax alike, or a save
        # that one process starts and another skips hangs
        if broadcast_flag(time.monotonic() - last_save >= checkpoint_interval_s):
            _save_all(steps, members, carry, errors)
            last_save = time.monotonic()


def _results(steps: Steps, carry, step, losses, errors, members: Sequence[Member],
             lay: _Layout, return_errors: bool) -> list:
    """Each member's `StageResult` (kept params and record), or its error."""
    results: list = []
    fetched = _host(steps, {k: carry[k] for k in ("metric", "best_step", "has_best", "evals")})
    for g, (m, p) in enumerate(zip(members, lay.plans)):
        if g in errors:
            if not return_errors:
                raise errors[g]
            results.append(errors[g])
            continue
        n_train, taken = len(m.train), int(step[g])
        params = _member(carry["best"] if p.has_val else carry["state"].params, g)
        truncated = int(m.train.truncated.sum()) + (
            int(m.val.truncated.sum()) if p.has_val and not m.cfg.borrowed_val else 0)
        results.append(StageResult(params, stage_record(
            m.source, n_train, len(m.val) if p.has_val else 0, p, m.cfg, steps=taken,
            best_step=int(fetched["best_step"][g]), val_metric=float(fetched["metric"][g]),
            truncated=truncated, batch_size=lay.spec.batch_size,
            final_loss=float(losses[g][-1]) if losses[g] else float("nan")),
            evaluations=int(fetched["evals"][g])))
    return results


def run_stages_grouped(steps: Steps, members: Sequence[Member], *, spec: BatchSpec,
                       iters_per_call: int = ITERS_PER_CALL, checkpoint_interval_s: float = 60.0,
                       return_errors: bool = False, shapes: Shapes = Shapes(),
                       group_sharding: str = "rows") -> list:
    """Train every member's stage together; returns one `StageResult` per member, in order.
    All members must share `compatibility(member, spec)`. A member whose loss turns non-finite
    gets a `FloatingPointError` (raised, or returned in its place with `return_errors`).

    Checkpoints (members with a `checkpoint`): each is restored on entry, so a member resumes
    at its saved step; every member's state is saved when `checkpoint_interval_s` has passed
    since the group started or last saved, checked every `iters_per_call` steps (a group
    shorter than that saves nothing, as the record follows at once; the data order is a pure
    function of the step, so resuming from any save reproduces an uninterrupted run).

    `group_sharding` places the group on the mesh (`run_mesh_axis`): each run's rows over the
    devices, or whole runs on devices."""
    if not members:
        return []
    lay = _layout(steps, members, spec, shapes, group_sharding)
    carry = _initial_carry(steps, members, lay, iters_per_call)
    consts = _constants(steps, members, lay)
    loop = group_loop(steps, members[0].cfg.loss, lay.M if not lay.tokens else
                       spec.batch_size, lay.axis)
    carry, step, losses, errors = _drive(loop, carry, consts, steps, members, lay,
                                         iters_per_call, checkpoint_interval_s)
    return _results(steps, carry, step, losses, errors, members, lay, return_errors)


def run_stage(steps: Steps, params, train, targets: np.ndarray, val, val_labels, cfg: StageConfig,
              *, seed_path: Sequence[int], key, spec: BatchSpec, source: str,
              weights: np.ndarray | None = None, progress: Callable | None = None,
              checkpoint=None, iters_per_call: int = ITERS_PER_CALL,
              checkpoint_interval_s: float = 60.0, shapes: Shapes = Shapes()) -> StageResult:
    """Train one stage from `params` with a fresh optimizer and schedule: a group of one, so
    one engine (early stopping, validation metric, loss checks, progress, checkpoints, record)
    serves a run alone, a group of runs and the weak labeller. Returns the kept parameters
    (the best evaluation, or the final state without validation) and the stage's record.
    `progress(step, total, loss)` sees every step's loss; `checkpoint` (a
    `checkpoint.StageCheckpointer`) is restored on entry and saved on the group's clock."""
    member = Member(params, train, targets, val, val_labels, cfg, seed_path, key, source,
                    weights, checkpoint, progress)
    return run_stages_grouped(steps, [member], spec=spec, iters_per_call=iters_per_call,
                              checkpoint_interval_s=checkpoint_interval_s, shapes=shapes)[0]


def _save_all(steps: Steps, members, carry, errors) -> None:
    """Every unfinished member's state, best params and stopping counters to its checkpoint."""
    fetched = _host(steps, {k: carry[k] for k in ("metric", "best_step", "bad", "has_best",
                                                  "done")})
    for g, m in enumerate(members):
        if m.checkpoint is None or g in errors or fetched["done"][g]:
            continue
        state = _member(carry["state"], g)
        has = bool(fetched["has_best"][g])
        best = {"metric": float(fetched["metric"][g]) if has else -np.inf,
                "step": int(fetched["best_step"][g]), "bad": int(fetched["bad"][g]),
                "params": _member(carry["best"], g) if has else None}
        m.checkpoint.save(int(state.step), state, best)


def device_memory(devices: int = 1) -> tuple[str, int]:
    """(platform, free bytes) of this host's devices for groups: a device's own free memory
    times `devices` when whole runs spread over that many (`run_mesh_axis`), or a quarter of
    the host's RAM, one pool that every (fake CPU) device shares."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:  # each device's own memory: the devices' add up
        return device.platform, devices * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import os
    return device.platform, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
