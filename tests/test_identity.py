"""One definition of what identifies a run (scalable_elicitation/identity.py), read by the planner
and by the analysis: every config key classified, the run id hashing exactly the defining keys,
and records that differ only in where or how they ran being one variant."""
import warnings

import pytest

from analysis.records import VariantSplitWarning, config_identity, records_from_dicts
from analysis.synthetic import grid_records
from configs import cost_sweep, methods, prompt_vs_sft
from scalable_elicitation import identity
from scalable_elicitation.planning import Planner, RunSpec
from scalable_elicitation.records import flatten

CONFIGS = [cost_sweep.get_config(None), cost_sweep.get_config("smoke"),
           cost_sweep.get_config("study"), cost_sweep.get_config("model=minilm,lora"),
           methods.get_config("smoke,variants=all"), prompt_vs_sft.get_config("smoke")]
PLACEMENT_VALUES = {"parallel_runs": (0, 4), "group_sharding": ("auto", "runs"),
                    "host_poll_steps": (512, 7), "attention": ("auto", "einsum"),
                    "train.micro_batch": (0, 8), "mesh.data": (-1, 2), "platform": ("auto", "cpu"),
                    "checkpoint_interval_s": (60.0, 5.0), "settle": (0.02, 0.0),
                    "max_seeds": (20, 9)}


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "smoke", "study", "lora", "methods",
                                                 "prompt_vs_sft"])
def test_every_config_key_is_classified(config):
    assert identity.unclassified(flatten(config.to_dict())) == []


def test_the_run_id_hashes_the_defining_keys_and_no_placement_key(tmp_path):
    config = cost_sweep.get_config("smoke")
    planner = Planner(config, tmp_path)
    spec = RunSpec(2, 1, 0, None, ())
    effective = flatten(planner.effective(spec))
    placement = [k for k in flatten(config.to_dict()) if identity.kind(k) == identity.PLACEMENT]
    assert placement and not set(placement) & set(effective)
    # every defining key of the config is hashed (the labeller's and the method's own keys as
    # their owners report them; options of other methods are not the run's)
    defining = {k for k, v in flatten(config.to_dict()).items()
                if identity.kind(k) == identity.DEFINES and v is not None}  # None: task default
    not_this_method = {"k", "shot_source", "shot_max_length", "selection_temperature",
                       "mixture.weak_weight", "mixture.oracle_weight"}
    labeller_unused = {k for k in defining if k.startswith("labeler.")}
    only_when_set = {"weak_truth"}  # a ceiling run's flag: hashed when True, so no other id moves
    assert defining - not_this_method - labeller_unused - only_when_set <= set(effective)
    assert {k for k in effective if identity.kind(k) is None} <= {
        k for k in effective if k.startswith("labeler.")}
    with config.unlocked():
        config.parallel_runs, config.host_poll_steps, config.attention = 3, 9, "einsum"
        config.train.micro_batch = 8
    assert Planner(config, tmp_path).run_id(spec) == planner.run_id(spec)


def test_an_unclassified_config_key_stops_planning(tmp_path):
    config = cost_sweep.get_config("smoke")
    with config.unlocked():
        config.brand_new_knob = 3
    with pytest.raises(ValueError, match=r"brand_new_knob.*not classified"):
        Planner(config, tmp_path)


@pytest.mark.parametrize("key", sorted(PLACEMENT_VALUES))
def test_records_differing_only_in_a_placement_key_are_one_variant(key):
    a, b = PLACEMENT_VALUES[key]
    assert identity.kind(key) == identity.PLACEMENT
    recs = []
    for i, value in enumerate((a, b)):  # two sweeps of the same grid, placed differently
        recs += grid_records(lambda w, o, v: 0.7, budgets=(8,), fractions=(0, 1), n_seeds=2,
                             seed=i, config={key: value}, model="m")
    for j, rec in enumerate(recs):
        rec["run_id"] = f"r{j}"
        rec["seed"] = rec["config"]["seed"] = j  # distinct seeds: nothing deduplicated
    with warnings.catch_warnings():
        warnings.simplefilter("error", VariantSplitWarning)
        ok = records_from_dicts(recs).ok
    assert ok["variant"].nunique() == 1 and ok["identity"].nunique() == 1
    # a defining key still splits them
    assert config_identity("seq_sft", {key: a, "train.lr": 1}) != \
        config_identity("seq_sft", {key: a, "train.lr": 2})
    assert config_identity("seq_sft", {key: a}) == config_identity("seq_sft", {key: b})
