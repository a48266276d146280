"""Elicitation methods (docs/design.md#methods): shots, ICL prefix cache, entropy selection,
mixture."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import methods as methods_config
from scalable_elicitation import experiment, methods, runner as R, selection
from scalable_elicitation.batching import make_batch, to_global
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.main import run_sweep
from scalable_elicitation.prompts import PromptBuilder, label_token_ids, make_shots

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_entropy_selection_picks_most_uncertain():
    scores = np.array([5.0, 0.1, -3.0, -0.05, 2.0, 0.0])
    got = selection.entropy_select(scores, 3, 0.0, np.random.default_rng(0))
    assert sorted(got.tolist()) == [1, 3, 5]  # |score| smallest = entropy largest
    # sampling: never repeats, and prefers uncertain examples over many draws
    counts = np.zeros(len(scores))
    for s in range(300):
        pick = selection.entropy_select(scores, 2, 1.0, np.random.default_rng(s))
        assert len(set(pick.tolist())) == 2
        counts[pick] += 1
    assert counts[5] > counts[0] and counts[3] > counts[2]


def test_label_tokens_resolved_after_newline():
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(32,),
                                    max_length=32, mesh=(("data", 1),)))
    id0, id1 = label_token_ids(learner.tokenizer)
    assert learner.tokenizer.decode([id0]) == "0" and learner.tokenizer.decode([id1]) == "1"


class _TwoTokenLabels:
    def __call__(self, text, add_special_tokens=False):
        ids = [10] if text == "\n" else [10, 1, 2] if text.startswith("\n") else [3]
        return {"input_ids": ids}


def test_multi_token_label_fails_clearly():
    with pytest.raises(ValueError, match="single-token labels"):
        label_token_ids(_TwoTokenLabels())


def test_icl_prefix_cache_equals_full_prompt():
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(32, 64),
                                    max_length=32, mesh=(("data", 1),)))
    shots = make_shots(["aa01", "bb02", "cc03"], ["good film", "awful", "fine day"],
                       [0.9, 0.2, 0.7])
    builder = PromptBuilder(learner.tokenizer, shots, shot_max_length=16, input_max_length=32,
                            seed=0)
    texts = ["what a movie", "no", "somewhat longer input text here"]
    cached = learner.icl_scores_many([builder], ["1", "2", "3"], texts)[0]
    id0, id1 = label_token_ids(learner.tokenizer)
    model = learner.bundle.model
    for text, got in zip(texts, cached):
        ids = np.asarray([builder.prefix() + builder.suffix(text)[0]], np.int32)
        logits = model.last_lm_logits(jnp.asarray(ids), jnp.ones_like(ids))
        want = float(logits[0, id1] - logits[0, id0])
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want))


def test_icl_scores_of_many_runs_at_once_equal_each_alone():
    """Runs' prompts scored together (KV caches stacked on a run axis, prefixes of two padded
    lengths) give each run's own scores (docs/design.md#many-runs-at-once)."""
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(32, 64),
                                    max_length=32, mesh=(("data", 1),)))
    texts = ["what a movie", "no", "somewhat longer input text here"]
    builders = []
    for r, shown in enumerate([[0.9, 0.2], [0.1, 0.8], [1.0, 0.0]]):
        words = ["good film", "awful"] if r < 2 else ["a much longer shot " * 20, "bad"]
        builders.append(PromptBuilder(learner.tokenizer,
                                      make_shots([f"aa0{r}", f"bb0{r}"], words, shown),
                                      shot_max_length=64, input_max_length=32, seed=r))
    assert len({len(b.prefix()) > 64 for b in builders}) == 2  # two prefix length buckets
    together = learner.icl_scores_many(builders, ["1", "2", "3"], texts)
    for builder, got in zip(builders, together):  # alone: not from the kept scores
        np.testing.assert_allclose(got, learner.icl_scores_uncached([builder], texts)[0], atol=1e-5)
    assert not np.allclose(together[0], together[1])  # the shots matter


def test_icl_scores_with_the_base_sharded_equal_data_parallel():
    """With the base sharded (fsdp) the ICL jits keep rows split and gather weights
    (`learner.icl_functions`); the scores are the data-parallel mesh's."""
    texts = ["what a movie", "no", "somewhat longer input text here"]
    scores = []
    for mesh in ((("data", -1),), (("data", 1), ("fsdp", -1))):
        learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(32, 64),
                                        max_length=32, mesh=mesh))
        builders = [PromptBuilder(learner.tokenizer,
                                  make_shots([f"aa0{r}", f"bb0{r}"], ["good film", "awful"],
                                             shown),
                                  shot_max_length=16, input_max_length=32, seed=r)
                    for r, shown in enumerate([[0.9, 0.2], [0.1, 0.8]])]
        scores.append(learner.icl_scores_uncached(builders, texts))
    assert not np.allclose(scores[0][0], scores[0][1])
    for data, fsdp in zip(*scores):
        np.testing.assert_allclose(fsdp, data, rtol=1e-5, atol=1e-5)


def test_inputs_cut_at_max_length_fit_when_the_largest_bucket_is_max_length():
    """An in-context input is its text cut to max_length tokens, then a newline (and the
    tokenizer's trailing tokens): one longer than a largest bucket of max_length. Scoring
    (and a probe's prompted features) must not fail on it: it takes a bucket of its own."""
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(32,),
                                    max_length=32, mesh=(("data", 1),)))
    builder = PromptBuilder(learner.tokenizer,
                            make_shots(["aa01", "bb02"], ["good film", "awful"], [0.9, 0.2]),
                            shot_max_length=16, input_max_length=32, seed=0)
    texts = ["a long input text " * 12, "no"]
    assert len(builder.suffix(texts[0])[0]) > 32 and builder.suffix(texts[0])[1]
    scores = learner.icl_scores_uncached([builder], texts)[0]
    assert scores.shape == (2,) and np.isfinite(scores).all()
    ids = np.asarray([builder.prefix() + builder.suffix(texts[0])[0]], np.int32)
    logits = learner.bundle.model.last_lm_logits(jnp.asarray(ids), jnp.ones_like(ids))
    id0, id1 = label_token_ids(learner.tokenizer)
    want = float(logits[0, id1] - logits[0, id0])
    assert abs(scores[0] - want) <= 1e-4 * max(1.0, abs(want))
    from scalable_elicitation.learner import _prompted_by_prefix
    probe = Learner(LearnerConfig("tiny:llama", trainable="head", buckets=(32,),
                                  max_length=32, mesh=(("data", 1),)))
    features = _prompted_by_prefix(probe, builder, ["1", "2"], texts)
    assert features.features.shape[0] == 2 and np.isfinite(features.features).all()
    assert features.truncated.tolist() == [True, False]


def test_icl_runs_with_equal_prompts_are_scored_once(monkeypatch):
    """Runs of a seed that show the same shots (issue 23: on a grid, every run with at least k
    oracle labels) share one encoded prefix and one scoring pass, within a call and across
    calls; a different prompt or other inputs are scored anew."""
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(32, 64),
                                    max_length=32, mesh=(("data", 1),)))
    scored = []
    original = Learner.icl_scores_uncached

    def counting(self, builders, texts):
        scored.append(len(builders))
        return original(self, builders, texts)

    monkeypatch.setattr(Learner, "icl_scores_uncached", counting)

    def builder(shown, seed=0):
        return PromptBuilder(learner.tokenizer, make_shots(["aa01", "bb02"], ["good", "bad"],
                                                           shown),
                             shot_max_length=16, input_max_length=32, seed=seed)

    texts, ids = ["what a movie", "no"], ["1", "2"]
    a, b = learner.icl_scores_many([builder([1, 0]), builder([1, 0])], ids, texts)
    np.testing.assert_array_equal(a, b)
    again = learner.icl_scores_many([builder([1, 0]), builder([0, 1])], ids, texts)
    np.testing.assert_array_equal(again[0], a)
    learner.icl_scores_many([builder([1, 0])], ["1"], texts[:1])
    assert scored == [1, 1, 1]


def test_prompts_render_and_truncate_inputs_not_shots():
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(128,),
                                    max_length=8, mesh=(("data", 1),)))
    shots = make_shots(["aa01", "bb02"], ["first shot", "second"], [1.0, 0.0])
    b = PromptBuilder(learner.tokenizer, shots, shot_max_length=64, input_max_length=8, seed=3)
    text = b.render_text("ff00", "the input")
    assert text.endswith("the input\n") and "first shot\n1" in text and "second\n0" in text
    enc = b.encode(["ff00"], ["a very long input that will be cut"])
    assert enc.truncated[0]
    decoded = learner.tokenizer.decode(enc.tokens[0].tolist())
    assert "first shot\n1" in decoded and "second\n0" in decoded  # shots survive
    orders = {tuple(b.order(f"{i:04x}")) for i in range(20)}
    assert len(orders) == 2  # reshuffled per input


def smoke(**overrides):
    c = methods_config.get_config("smoke")
    c.parallel_runs = 1  # methods in groups: tests/test_groups.py
    with c.unlocked():
        for k, v in overrides.items():
            c[k] = v
    return c


def test_weak_shots_show_weak_labels_never_ground_truth(tmp_path):
    config = smoke(method="kshot_sft", k=4)
    config.labeler.rate = 1.0  # every weak label is wrong
    sweep = R.Sweep(config, tmp_path)
    weak = sweep.data.weak_labels(0)
    pools = sweep.data.pools(0)
    bought = methods.Bought(pools.take("weak", 10), pools.take("oracle", 2))
    after = methods.get("kshot_sft").take_shots(config, weak, bought)
    shots = make_shots(after.shots.split["id"], after.shots.split["text"], after.shots.shown)
    truth = dict(zip(pools.take("weak", 10)["id"], pools.take("weak", 10)["label"]))
    assert len(shots) == 4 and len(after.weak) == 6 and len(after.oracle) == 2
    assert all(s.label != truth[s.id] for s in shots)


def test_mixture_weights_change_the_loss():
    learner = Learner(LearnerConfig("tiny:llama", trainable="lora", buckets=(16,),
                                    max_length=16, batch_size=4, mesh=(("data", 1),)))
    steps = learner.steps
    toks = [np.arange(3, 3 + n) for n in (4, 5, 6, 7)]
    y = np.array([1.0, 0.0, 0.3, 1.0])
    hp = {k: jnp.float32(v) for k, v in dict(lr=0.0, warmup=2, total=10, logconf_ramp=200,
                                               logconf_coef=0.5).items()}

    params = jax.tree_util.tree_map_with_path(  # a head large enough for distinct losses
        lambda path, x: x * 3000 if "head" in jax.tree_util.keystr(path) else x,
        steps.fresh_params(jax.random.key(0)))
    batch0 = to_global(make_batch(toks, y, np.ones(4), 4, (16,), 256), steps.mesh)
    logits = np.asarray(steps.logits(params, steps.frozen, batch0), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_example = -((1 - y) * logp[:, 0] + y * logp[:, 1])

    def loss(weights):
        state = steps.init_state(params, jax.random.key(1))
        batch = to_global(make_batch(toks, y, weights, 4, (16,), 256), steps.mesh)
        return float(jax.jit(steps.step_fn("xent"))(state, steps.frozen, batch, hp)[1]["loss"])

    for w in ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 2.0, 2.0]):
        w = np.asarray(w)
        assert loss(w) == pytest.approx((w * per_example).sum() / w.sum(), rel=1e-4)
    assert abs(loss(np.array([1.0, 1.0, 1.0, 1.0])) - loss(np.array([0.2, 0.2, 1, 1]))) > 1e-3


@pytest.fixture(scope="module")
def methods_sweep(tmp_path_factory):
    config = smoke()
    workdir = tmp_path_factory.mktemp("methods")
    points = experiment.sweep_points(str(ROOT / "configs" / "methods.py"), config)
    recs = run_sweep(config, workdir, points, out=lambda *_: None)
    return workdir, recs


def test_methods_sweep_counts_shots_in_ledger_and_cost(methods_sweep):
    workdir, recs = methods_sweep
    by_method = {}
    for r in recs:
        by_method.setdefault(r["method"], []).append(r)
    assert set(by_method) == {"seq_sft", "kshot_sft", "icl"}
    for r in recs:
        if r["status"] != "ok":
            assert r["status"] == "infeasible", r.get("error")
            continue
        ledger = json.loads((workdir / "runs" / r["run_id"] / "ledger.json").read_text())
        assert r["n_shots"] == len(ledger["shots"])
        assert r["cost"] == pytest.approx(r["n_oracle"] + 0.1 * r["n_weak"])
        if r["method"] == "kshot_sft":
            assert r["n_shots"] == 2
            assert set(ledger["shots"]) <= set(ledger["weak"])
            trained = sum(s["n_train"] + s["n_val"] for s in r["stages"])
            assert trained + 2 == r["n_weak"] + r["n_oracle"]
        if r["method"] == "icl":
            assert r["stages"] == [] and r["n_shots"] == r["n_weak"] + r["n_oracle"] >= 1
    assert (workdir / "frontier.png").exists()


def test_dry_run_names_each_runs_own_method(methods_sweep):
    workdir, recs = methods_sweep
    config = smoke()
    sweep = R.Sweep(config, workdir)
    specs = sweep.plan(experiment.sweep_points(str(ROOT / "configs" / "methods.py"), config))
    lines = experiment.dry_run_lines(sweep, specs)
    status = {r["run_id"]: {"ok": "done"}.get(r["status"], r["status"]) for r in recs}
    assert [line.split()[:2] for line in lines] == [
        [sweep.run_id(s), sweep.run_config(s.overrides).method] for s in specs]
    assert {line.split()[1] for line in lines} == {"seq_sft", "kshot_sft", "icl"}
    assert all(line.split()[-1] == status[line.split()[0]] for line in lines)


def test_methods_config_validates_variants():
    c = smoke()
    with c.unlocked():
        c.variants = "seq_sft+bogus"
    with pytest.raises(ValueError, match="bogus"):
        methods_config.sweep(lambda **kw: None, c)


class OracleOnly(methods.Method):
    """A toy method, as a new method would be written: trains on the bought oracle labels only
    (the weak ones it bought stay unused, so the ledger does not count them)."""
    name = "oracle_only"
    keys = ("k",)  # identifies its runs by k, to show a method's own keys reach the run id

    def stages(self, config, weak, bought, seed):
        return [methods.oracle_stage(bought.oracle)] if len(bought.oracle) else []


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, OracleOnly.name, OracleOnly())  # the registry line
    config = smoke(method="oracle_only", k=3)
    sweep = R.Sweep(config, tmp_path)
    (spec,) = sweep.plan([{"budget": 8, "fraction": "0.5", "seed": 0}])
    assert sweep.effective(spec)["method"] == "oracle_only" and sweep.effective(spec)["k"] == 3
    rec = sweep.run(spec)
    assert rec["status"] == "ok", rec.get("error")
    assert [s["source"] for s in rec["stages"]] == ["oracle"]
    assert (rec["n_weak"], rec["n_oracle"], rec["cost"]) == (0, 4, 4.0)
    assert 0.0 <= rec["metrics"]["accuracy"] <= 1.0
    assert methods.get("oracle_only").variant_name({}) == "oracle_only"
    with pytest.raises(ValueError, match="config.method: 'nope'; allowed: .*oracle_only"):
        R.Sweep(smoke(method="nope"), tmp_path)
