"""k-shot runs share their prompts per seed (issue 23): the shots are the seed's pool prefix,
each input's shot order comes from (seed, input id), prompted features are encoded as one prefix
per shot order plus the input's own tokens, and only the texts runs use are featurised."""
import json

import numpy as np
import pytest

from configs import methods as methods_config
from scalable_elicitation import methods, prompt_inputs, runner as R
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.planning import RunSpec
from scalable_elicitation.prompts import PromptBuilder, make_shots


def probe_learner():
    return Learner(LearnerConfig("tiny:llama", trainable="head", buckets=(16, 32, 128),
                                 max_length=32, mesh=(("data", 1),), pooling="mean"))


def test_prefix_features_equal_whole_prompt_features():
    """A prompt featurised as an encoded prefix (one per shot order) plus the input's tokens
    gives the whole prompt's features, pooled over the input's own tokens."""
    learner = probe_learner()
    shots = make_shots(["aa01", "bb02"], ["good film", "awful acting all along"], [0.9, 0.2])
    builder = PromptBuilder(learner.tokenizer, shots, shot_max_length=16, input_max_length=32,
                            seed=0)
    ids = [f"{i:04x}" for i in range(12)]
    texts = [f"input number {i} " + "word " * i for i in range(12)]
    assert len({tuple(builder.order(i)) for i in ids}) == 2  # both orders are exercised
    got = learner.prompted(builder, ids, texts)
    want = learner.prepare(builder.encode(ids, texts))
    np.testing.assert_allclose(got.features, want.features, atol=2e-5, rtol=1e-4)
    np.testing.assert_array_equal(got.truncated, want.truncated)


def smoke_probe(**overrides):
    """The methods smoke config as a probe on cached features (the CPU default's kind)."""
    c = methods_config.get_config("smoke")
    c.parallel_runs = 1
    c.trainable, c.pooling = "head", "mean"
    c.length_buckets = (16, 32, 128)
    for k, v in overrides.items():
        c[k] = v
    return c


def spec(n_weak, n_oracle, seed=0):
    return RunSpec(n_weak, n_oracle, seed, None, (), (),
                   (("k", 2), ("method", "kshot_sft"), ("shot_source", "weak")))


def test_runs_of_a_seed_see_one_prompt_and_pay_for_their_shots(tmp_path):
    """Two runs of one seed at different budgets get identical prompts for the same input; each
    is charged for its 2 shots (bought weak labels, not trained on); one that cannot afford
    them is infeasible with the reason."""
    sweep = R.Sweep(smoke_probe(), tmp_path)
    c = sweep.run_config(spec(4, 0).overrides)
    weak, pools = sweep.data.weak_labels(0), sweep.data.pools(0)
    test = sweep.data.task().test
    prompts = []
    for n in (4, 40):
        bought = methods.get("kshot_sft").take_shots(
            c, weak, methods.Bought(pools.take("weak", n), pools.take("oracle", 0)))
        assert list(bought.shots.ids) == list(pools.take("weak", 2)["id"])  # the pool's prefix
        builder = prompt_inputs.make_builder(sweep.data.learner_for(c), bought.shots, c, 0)
        prompts.append([t.tolist() for t in builder.encode(test["id"], test["text"]).tokens])
    assert prompts[0] == prompts[1]

    small, large = sweep.run(spec(20, 2)), sweep.run(spec(40, 4))
    for rec, (n_weak, n_oracle) in ((small, (20, 2)), (large, (40, 4))):
        assert rec["status"] == "ok", rec.get("error")
        ledger = json.loads((sweep.run_dir(spec(n_weak, n_oracle)) / "ledger.json").read_text())
        assert (rec["n_weak"], rec["n_oracle"], rec["n_shots"]) == (n_weak, n_oracle, 2)
        assert set(ledger["shots"]) <= set(ledger["weak"])
        assert sum(s["n_train"] + s["n_val"] for s in rec["stages"]) == n_weak - 2 + n_oracle
        assert rec["cost"] == pytest.approx(n_oracle + 0.1 * n_weak)
    short = sweep.run(spec(1, 8))
    assert short["status"] == "infeasible" and "k=2 weak shots" in short["error"]


def test_a_seed_featurises_only_what_its_runs_use(tmp_path, monkeypatch):
    """The prompted texts featurised for a seed's k-shot runs are the texts they train,
    validate and are tested on: the statistics that standardise them come from the weak pool's
    prefix, which the largest run trains on (a separate sample of 256 training texts cost 256
    prompted texts per seed); a second run of the seed computes nothing new."""
    monkeypatch.setattr(prompt_inputs, "PROMPT_STATS_SIZE", 24)
    sweep = R.Sweep(smoke_probe(), tmp_path)
    learner = sweep.data.learner
    sweep.data.feature_stats()  # the plain statistics: all training texts (docs/design.md#model)
    before = learner.features_computed
    assert sweep.run(spec(40, 4))["status"] == "ok"
    used = 40 - 2 + 4 + len(sweep.data.task().test)  # trained and validated on, tested on
    assert learner.features_computed - before == used
    before = learner.features_computed
    assert sweep.run(spec(30, 0))["status"] == "ok"  # inside the first run's texts
    assert learner.features_computed == before
