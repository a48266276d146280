"""Config files as a package (docs/design.md#code-style): one preset parser, every family's
presets, and no `sys.path` edits to import a sibling config."""
import pathlib

import pytest

from configs import common, cost_sweep, methods, prompt_vs_sft

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_parse_arg_reads_typed_presets_and_bare_flags():
    arg = common.parse_arg("smoke,model=minilm,n=3,lora=false", smoke=False, model="", n=1,
                           lora=True, study=False)
    assert (arg.smoke, arg.model, arg.n, arg.lora, arg.study) == (True, "minilm", 3, False, False)
    assert common.parse_arg(None, smoke=False).smoke is False
    with pytest.raises(ValueError, match=r"unknown preset 'smok'.*allowed: \['model', 'smoke'\]"):
        common.parse_arg("smok", smoke=False, model="")
    with pytest.raises(ValueError, match="smoke='maybe': expected true or false"):
        common.parse_arg("smoke=maybe", smoke=False)
    with pytest.raises(ValueError, match="n='x': expected int"):
        common.parse_arg("n=x", n=1)
    with pytest.raises(ValueError, match="needs a value"):
        common.parse_arg("model", model="")


def test_every_family_takes_its_presets_through_the_one_parser():
    assert cost_sweep.get_config("model=minilm,lora").model == "minilm"
    assert cost_sweep.get_config("model=minilm,lora").trainable == "lora"
    assert cost_sweep.get_config("smoke").model == "tiny:llama"
    assert methods.get_config("smoke,variants=all").variants == "all"
    assert methods.get_config(None).variants == "seq_sft+kshot_sft+icl"
    pvs = prompt_vs_sft.get_config("smoke")
    assert (tuple(pvs.sizes), tuple(pvs.ks)) == ((16, 64), (2,))
    assert tuple(prompt_vs_sft.get_config("lora").ks) == prompt_vs_sft.KS
    for get_config in (cost_sweep.get_config, methods.get_config, prompt_vs_sft.get_config):
        with pytest.raises(ValueError, match="unknown preset 'nope'"):
            get_config("nope")


def test_config_files_edit_no_import_path():
    for path in (ROOT / "configs").glob("*.py"):
        assert "sys.path" not in path.read_text(), path.name
