"""The preflight (launch/preflight.py): reading compiled programs, targets, exit codes; and,
where the tpu extra is installed, the sweep's real programs compiled for TPU topologies on
this CPU (the GPU ones where the cuda12 plugin is)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import preflight, targets
from scalable_elicitation import memory
from scalable_elicitation.models.known import HUB_CONFIGS, arch_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_TPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA = importlib.util.find_spec("jax_cuda12_plugin") is not None
needs_tpu = pytest.mark.skipif(not HAS_TPU, reason="the tpu extra (libtpu) is not installed: "
                               "pip install -e '.[tpu]' to compile for TPU targets")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="the cuda12 plugin is not installed: "
                                "pip install -e '.[gpu]' to compile for GPU targets")


def test_census_counts_loop_bodies_times_their_trip_counts():
    """XLA's cost analysis counts a loop body once; the census multiplies it out."""
    n, m, k, trips = 16, 32, 24, 7
    w = jnp.ones((trips, k, k), jnp.float32)

    def f(x, w):
        def body(h, wi):
            return jnp.tanh(h @ wi), None
        return jax.lax.scan(body, x, w)[0] @ jnp.ones((k, m))

    compiled = jax.jit(f).lower(jnp.ones((n, k)), w).compile()
    want = trips * 2 * n * k * k + 2 * n * k * m
    assert preflight.census(compiled.as_text()).flops == pytest.approx(want)
    reported = compiled.cost_analysis()
    reported = reported[0] if isinstance(reported, list) else reported
    assert reported["flops"] < 0.5 * want  # what the census corrects


def test_census_finds_collectives_with_their_bytes():
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    x = jax.device_put(np.ones((8, 128), np.float32), NamedSharding(mesh, P("d")))
    compiled = jax.jit(lambda x: x.sum(0), out_shardings=NamedSharding(mesh, P())).lower(
        x).compile()
    c = preflight.census(compiled.as_text())
    assert "all-reduce" in c.collectives
    count, nbytes = c.collectives["all-reduce"]
    assert count >= 1 and nbytes >= 128 * 4


def test_study_models_are_known_without_a_download():
    cfg = arch_config("meta-llama/Meta-Llama-3-8B")
    arch = memory.Arch.of(cfg)
    assert arch.base_params() == 8_030_261_248  # the published count of Llama-3-8B
    assert arch_config("Qwen/Qwen1.5-0.5B").tie_word_embeddings
    assert set(HUB_CONFIGS) >= {"meta-llama/Meta-Llama-3-8B", "Qwen/Qwen1.5-0.5B",
                                "Qwen/Qwen1.5-4B"}
    with pytest.raises(ValueError, match="not known without a download"):
        arch_config("someone/some-model")


def test_targets_and_their_descriptions():
    with pytest.raises(ValueError, match="v5p-8"):
        targets.get("v9-8")
    assert targets.get("v5e-8").name == "v5litepod-8"
    h100 = targets.get("h100x8")
    assert h100.card_memory == 84942979072 and h100.hbm_bw > 3e12  # read from its description
    # a process gets JAX's share of the card: 0.75 unless the launch's environment says
    assert targets.gpu_memory_fraction({}) == 0.75
    assert targets.gpu_memory_fraction({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}) == 0.9
    with pytest.raises(ValueError, match="XLA_CLIENT_MEM_FRACTION"):
        targets.gpu_memory_fraction({"XLA_CLIENT_MEM_FRACTION": "90"})
    assert h100.memory == int(84942979072 * targets.gpu_memory_fraction())
    assert targets.get("h100x16").hosts == 2


def test_train_flops_count_what_lora_skips():
    arch = memory.Arch.of(arch_config("meta-llama/Meta-Llama-3-8B"))
    full = memory.train_flops(arch, "full", 512, 512)
    lora = memory.train_flops(arch, "lora", 512, 512)
    fwd = memory.forward_flops(arch, 512, 512)
    assert full == pytest.approx(3 * fwd) and 2 * fwd < lora < 2.01 * fwd


def _preflight(*args, env_extra=None, timeout=900):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    env.pop("XLA_FLAGS", None)  # the target's devices, not 8 fake CPU ones
    return subprocess.run([sys.executable, "-m", "launch.preflight", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(HAS_CUDA, reason="the cuda12 plugin is installed: GPU targets compile")
def test_a_target_without_its_extra_exits_2_naming_it(tmp_path):
    out = _preflight("--config=configs/cost_sweep.py:smoke", "--target=h100x8",
                     f"--out={tmp_path / 'x.json'}")
    assert out.returncode == 2, out.stderr
    line = [x for x in out.stderr.splitlines() if x.startswith("preflight:")][0]
    assert "'gpu' extra" in line and "pip install -e '.[gpu]'" in line
    assert not (tmp_path / "x.json").exists()


def test_an_unknown_target_exits_2():
    out = _preflight("--config=configs/cost_sweep.py:smoke", "--target=v9-8")
    assert out.returncode == 2 and "known:" in out.stderr


@needs_tpu
@pytest.mark.parametrize("target", ["v5e-8", "v5p-8"])
def test_tiny_models_compile_the_real_programs_for_tpu(target, tmp_path, monkeypatch):
    """The smoke config's programs (train loop at the scheduler's group size, scoring) and a
    probe's (features forward, labeller stage) compile for the target's devices; no
    workdir or record appears."""
    from configs import cost_sweep
    monkeypatch.chdir(tmp_path)
    config = cost_sweep.get_config("smoke")
    rows, failures = preflight.run(config, str(ROOT / "configs/cost_sweep.py"), target,
                                   search=False, log=lambda m: None)
    assert not failures
    by = {r["program"]: r for r in rows}
    assert set(by) == {"eval", "train_loop"}
    n = targets.get(target).chips
    for r in rows:
        assert r["target"] == targets.get(target).name and r["n_devices"] == n
        assert r["fits"] and 0 < r["bytes_per_device"]["total"] < r["device_bytes"]
        assert r["flops_per_step"] > 0 and 0 < r["mfu_ceiling"] <= 1
    loop = by["train_loop"]
    # the compiled program's FLOPs against the analytic count of the same step: the program
    # also runs the loss, the optimizer and the pooling, so it may only exceed it modestly
    assert 0.8 < loop["flops_per_step"] / loop["model_flops_per_step"] < 3
    assert list(tmp_path.iterdir()) == [] and not pathlib.Path(preflight.NO_WORKDIR).exists()


@needs_tpu
def test_probe_and_labeller_programs_compile_for_tpu(monkeypatch, tmp_path):
    from configs import cost_sweep
    monkeypatch.chdir(tmp_path)
    config = cost_sweep.get_config("model=tiny:llama")
    config.labeler.source = "tiny:bert"
    config.budgets, config.fractions, config.seeds = (8,), ("0", "1"), 1
    rows, failures = preflight.run(config, None, "v5p-8", search=False, log=lambda m: None)
    assert not failures
    assert {r["program"] for r in rows} == {"features", "train_loop", "labeler_features",
                                            "labeler_train_loop"}


def _study_512(members: int):
    """`:study` with Llama-3-8B at the study's sequence of 512, `members` runs a group."""
    from configs import cost_sweep
    config = cost_sweep.get_config("study")
    config.model = "meta-llama/Meta-Llama-3-8B"
    config.labeler.kind = "noise"
    config.max_length, config.length_buckets = 512, (512,)
    config.parallel_runs = members
    return config


@needs_tpu
def test_study_step_for_v5p_8_bytes_are_the_compilers(tmp_path, monkeypatch):
    """The 8B study step (sequence 512, one run) compiles for v5p-8; the row's bytes are the
    compiler's own, and the memory model's are within 15% of them (issue 28, item 3)."""
    from scalable_elicitation import aot, runner
    from scalable_elicitation.shared import learner_config
    monkeypatch.chdir(tmp_path)
    config = _study_512(1)
    target = targets.get("v5p-8")
    rows, failures = preflight.run(config, None, "v5p-8", search=False, log=lambda m: None)
    assert not failures
    loop = [r for r in rows if r["program"] == "train_loop"][0]
    devices = targets.devices(target)
    config = runner.resolve_auto_dtype(config, "tpu")
    lrn = aot.learned(learner_config(config, "tpu"), devices)
    assert dict(lrn.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    from scalable_elicitation.planning import Planner
    specs = Planner(config, preflight.NO_WORKDIR).plan(
        [{"budget": b, "fraction": f, "seed": 0} for b in config.budgets
         for f in config.fractions])
    r, v, s = runner.stage_shapes(config, specs)
    fn, args = aot.loop_program("", lrn, loss="xent", rows=r, val_rows=v, steps=s, members=1,
                                group_sharding="auto").build(1)
    m = fn.lower(*args).compile().memory_analysis()
    assert loop["bytes_per_device"] == {
        "argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
        "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes,
        "total": memory.xla_bytes(m)}
    assert loop["fits"] and loop["bytes_per_device"]["total"] < 95 * (1 << 30)
    compiled, model = loop["bytes_per_device"]["total"], loop["memory_model_bytes"]
    assert abs(model - compiled) <= 0.15 * compiled, (model, compiled)


@needs_tpu
def test_a_config_that_cannot_fit_exits_3_with_one_clear_line(tmp_path):
    """Full finetuning of Qwen1.5-4B in float32 with the base on every v5e chip (64 GB of
    weights and Adam state a chip) cannot fit 16 GiB: exit 3, one line per program that does
    not fit, naming it, the shortfall and the setting that fits (the base sharded)."""
    out = _preflight("--config=configs/cost_sweep.py:smoke", "--config.model=Qwen/Qwen1.5-4B",
                     "--config.trainable=full", "--config.dtype=float32", "--target=v5e-8",
                     "--nosearch", f"--out={tmp_path / 'r.json'}")
    assert out.returncode == 3, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if x.startswith("DOES NOT FIT")]
    rows = json.loads((tmp_path / "r.json").read_text())
    failing = [r["program"] for r in rows if not r["fits"]]
    assert "train_loop" in failing and len(lines) == len(failing), out.stderr[-3000:]
    for program, line in zip(failing, lines):  # one line per program, in order
        assert line.startswith(f"DOES NOT FIT: {program} on v5litepod-8: needs ")
        assert "short by" in line and "--config.mesh.data=1 --config.mesh.fsdp=-1 fits" in line


@needs_cuda
def test_h100_study_attention_reaches_cudnn():
    """On an H100 target the study's fused attention compiles to cuDNN's fused kernel."""
    from configs import cost_sweep
    config = cost_sweep.get_config("study")
    config.model = "meta-llama/Meta-Llama-3-8B"
    config.labeler.kind = "noise"
    config.parallel_runs = 1
    rows, _ = preflight.run(config, None, "h100x8", search=False, log=lambda m: None)
    loop = [r for r in rows if r["program"] == "train_loop"][0]
    assert "cudnn" in loop["attention"]


@pytest.mark.parametrize("start", [1, 4, 40])
def test_largest_fitting_group_is_found_by_a_few_compiles(start):
    """`aot.largest_fitting` against a 'compiler' whose bytes grow 3 per member from 10, with
    a bump the line through two sizes does not predict: the edge is found, by few compiles."""
    from scalable_elicitation import aot
    calls = []

    def compile_at(g):
        calls.append(g)
        return aot.Memory(0, 0, 10 + 3 * g + (2 if g > 11 else 0), 0)

    # 10 + 3g + 2 <= 50 -> g <= 12
    assert aot.largest_fitting(compile_at, 50, start, 64) == 12
    assert len(calls) <= 8 and len(set(calls)) == len(calls)
    assert aot.largest_fitting(compile_at, 12, start, 64) == 0  # one run does not fit
    refused = aot.largest_fitting(lambda g: aot.Memory(0, 0, 99, 0, "RESOURCE_EXHAUSTED"),
                                  50, start, 64)
    assert refused == 0


@needs_tpu
@pytest.mark.parametrize("target,sizes", [
    ("v5p-8", (8,)),  # one run: test_study_step_for_v5p_8_bytes_are_the_compilers
    pytest.param("v5e-8", (1, 2), marks=pytest.mark.slow)])
def test_memory_model_meets_the_compiler_for_the_study_step(target, sizes):
    """The study's 8B LoRA step at sequence 512 (micro-batch 1 of 32, bfloat16, the base
    sharded): the memory model's bytes per device (`Plan.model_bytes`) within 15% of the TPU
    compiler's for the group loop, 8 runs on v5p-8 (and, with `-m slow`, 1 and 2 on v5e-8,
    where 3 do not fit 16 GiB; issue 28, item 3; docs/preflight.md#the-memory-model)."""
    from scalable_elicitation.runner import resolve_auto_dtype
    target = targets.get(target)
    devices = targets.devices(target)
    for members in sizes:
        config = resolve_auto_dtype(_study_512(members), platform="tpu")
        plan = preflight.plan(config, None, target, devices)
        loop = [p for p in plan.programs if p.name == "train_loop"][0]
        result = preflight.compile_program(loop, members)
        compiled, model = result.total, plan.model_bytes(members)
        assert result.error is None and compiled > 4 * (1 << 30)
        assert abs(model - compiled) <= 0.15 * compiled, (target.name, members, model, compiled)


@needs_tpu
def test_fused_attention_compiles_to_the_pallas_flash_kernel_for_v5e(tmp_path, monkeypatch):
    """A tiny Llama's LoRA programs (the group loop, scoring) on v5e-8 with the fused
    attention: at 128 tokens (whole kernel blocks) the compiled HLO runs the Pallas splash
    kernel (a Mosaic custom call) under the group's vmap and with the
    rows split over the chips (the base sharded: fsdp 8); at the smoke preset's 32 tokens,
    and at 128 on the data-parallel mesh (where a group may place whole runs on chips),
    XLA's own attention."""
    from configs import cost_sweep
    monkeypatch.chdir(tmp_path)
    found = {}
    for length, fsdp in ((128, -1), (32, -1), (128, 1)):
        config = cost_sweep.get_config("smoke")
        config.attention = "fused"
        config.max_length, config.length_buckets = length, (length,)
        config.mesh.data, config.mesh.fsdp = (1, -1) if fsdp == -1 else (-1, 1)
        config.parallel_runs = 2
        rows, failures = preflight.run(config, None, "v5e-8", search=False, log=lambda m: None)
        assert not failures
        found[length, fsdp] = {r["program"]: r["attention"] for r in rows}
    kernel, xla = "fused: pallas kernel", "fused: xla (generic)"
    assert found[128, -1] == {"eval": kernel, "train_loop": kernel}
    assert found[32, -1] == found[128, 1] == {"eval": xla, "train_loop": xla}


def test_a_refusals_arguments_are_each_devices_shards():
    """A compile refused for want of memory names only its temporaries; the arguments a
    device holds are counted from the abstract arguments' shardings (a PRNG key included)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from scalable_elicitation import aot
    from scalable_elicitation.sharding import make_mesh
    mesh = make_mesh({"fsdp": 8})
    split = jax.ShapeDtypeStruct((16, 4), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
    whole = jax.ShapeDtypeStruct((3,), jnp.float32, sharding=NamedSharding(mesh, P()))
    key = jax.eval_shape(lambda: jax.random.key(0))
    assert aot.argument_bytes({"w": split, "b": whole, "key": key}) == 2 * 4 * 2 + 3 * 4 + 8


def _icl_smoke(**changes):
    from configs import cost_sweep
    from scalable_elicitation import runner
    config = cost_sweep.get_config("smoke")
    config.method = "icl"
    config.mesh.data, config.mesh.fsdp = 1, -1  # the base sharded, as the study's
    config.parallel_runs = 4  # the group size, without the search
    config.seeds = 2
    for key, value in changes.items():
        config[key] = value
    return runner.resolve_auto_dtype(config, "cpu")


def test_icl_prompts_and_prefix_length_are_counted_from_the_runs():
    """Prompts are distinct per seed and shot mix (k=2: 2 oracle, 1+1, 2 weak); the
    prefix bucket is the longest any ICL run's k shots can need."""
    from scalable_elicitation.planning import Planner, RunSpec
    planner = Planner(_icl_smoke(), preflight.NO_WORKDIR)

    def spec(n_weak, n_oracle, seed, **overrides):
        return RunSpec(n_weak, n_oracle, seed, None, (), (), tuple(sorted(overrides.items())))

    specs = [spec(20, 0, 0), spec(10, 1, 0), spec(0, 2, 0), spec(0, 8, 0), spec(20, 0, 1),
             spec(40, 8, 0)]  # (0,2) (1,1) (2,0) (2,0) (0,2) (2,0): 3 mixes of seed 0, 1 of 1
    assert preflight.icl_scoring(planner, specs) == (256, 4)  # 2 + 2 x (64 + 4) -> 256
    assert preflight.icl_scoring(planner, specs + [spec(0, 64, 0, k=32)]) == (4096, 5)
    assert preflight.icl_scoring(planner, [spec(20, 0, 0, method="seq_sft")]) is None


def test_icl_programs_are_the_learners_own_jits():
    """`aot.icl_programs` lowers to exactly what `Learner.icl_scores_uncached` runs (the
    prefix encoding, and the scoring of stacked prefixes), shardings included, on an FSDP
    mesh of the 8 CPU devices; the prefix bucket an abstract k-shot prompt is given holds
    the real one's."""
    from scalable_elicitation import aot
    from scalable_elicitation.batching import make_batch, to_global
    from scalable_elicitation.learner import (Learner, LearnerConfig, _padded_prefix,
                                              icl_functions)
    from scalable_elicitation.prompts import PromptBuilder, make_shots
    lcfg = LearnerConfig("tiny:llama", trainable="lora", buckets=(32,), max_length=32,
                         batch_size=16, mesh=(("data", 1), ("fsdp", -1)))
    learner = Learner(lcfg)
    builders = [PromptBuilder(learner.tokenizer,
                              make_shots([f"aa0{r}", f"bb0{r}"], ["word " * 40, "other " * 40],
                                         [1.0, 0.0]),
                              shot_max_length=16, input_max_length=32, seed=r)
                for r in range(3)]
    encode_fn, score_fn = icl_functions(learner.bundle)
    p_ids, p_mask = _padded_prefix(builders[0].prefix(), learner.spec.pad_id)
    assert p_ids.shape[1] == aot.icl_prefix_length(2, 16)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[
        encode_fn(*_padded_prefix(b.prefix(), learner.spec.pad_id)) for b in builders])
    batch = make_batch([np.asarray(builders[0].suffix("some text")[0], np.int32)],
                       np.zeros(1), np.ones(1), 16, (32,), learner.spec.pad_id)
    batch = to_global({k: batch[k] for k in ("input_ids", "attention_mask")},
                      learner.steps.mesh)
    lrn = aot.learned(lcfg, jax.devices())
    prefix_prog, score_prog = aot.icl_programs("", lrn, prefix_length=p_ids.shape[1], runs=3)
    assert (prefix_prog.name, score_prog.name, score_prog.members) == ("icl_prefix",
                                                                        "icl_scores", 3)
    fn, args = prefix_prog.build(1)
    assert fn.lower(*args).as_text() == encode_fn.func.lower(
        *encode_fn.args, p_ids, p_mask).as_text()
    fn, args = score_prog.build(3)
    assert fn.lower(*args).as_text() == score_fn.func.lower(
        *score_fn.args, batch["input_ids"], batch["attention_mask"], stacked).as_text()


def test_an_icl_plan_lists_its_scoring_and_it_compiles_on_cpu():
    """A config whose runs are in-context (the method, or a point's override) plans the
    ICL programs beside the others, stacking as many prompts as a scheduler's batch holds
    distinct ones; they compile on the 8 CPU devices (as the v5p-8 target's stand-in), and
    with the base sharded the scoring keeps its rows split: the weights are gathered, no
    activation is all-reduced (XLA's own choice all-reduced every row's activations)."""
    from scalable_elicitation import experiment
    from scalable_elicitation.planning import Planner
    target = targets.get("v5p-8")
    config = _icl_smoke()
    path = str(ROOT / "configs/cost_sweep.py")
    p = preflight.plan(config, path, target, jax.devices())
    by = {q.name: q for q in p.programs}
    assert list(by) == ["eval", "train_loop", "icl_prefix", "icl_scores"]
    planner = Planner(config, preflight.NO_WORKDIR)
    specs = planner.plan(experiment.sweep_points(path, config))
    assert {s.seed for s in specs} == {0, 1}
    prefix_length, prompts = preflight.icl_scoring(planner, specs)
    assert prompts > p.group_size and by["icl_scores"].members == p.group_size
    _, args = by["icl_scores"].build(by["icl_scores"].members)
    assert args[1].shape == (config.train.batch_size, 32)  # one batch of the input bucket
    kv = jax.tree.leaves(args[3])[0]
    assert kv.shape[0] == p.group_size and kv.shape[3] == prefix_length == 256
    for name in ("icl_prefix", "icl_scores"):
        result = preflight.compile_program(by[name], by[name].members)
        assert result.error is None and result.total > 0
    assert "all-reduce" not in result.census.collectives
    assert "all-gather" in result.census.collectives

    plain = preflight.plan(_icl_smoke(method="seq_sft"), path, target, jax.devices())
    assert [q.name for q in plain.programs] == ["eval", "train_loop"]
    # configs/methods.py keeps config.method=seq_sft and makes its icl points by override
    from configs import methods as methods_config
    from scalable_elicitation.runner import resolve_auto_dtype
    mixed = resolve_auto_dtype(methods_config.get_config("smoke"), "cpu")
    mixed.parallel_runs = 2
    p = preflight.plan(mixed, str(ROOT / "configs/methods.py"), target, jax.devices())
    assert [q.name for q in p.programs][-2:] == ["icl_prefix", "icl_scores"]


@needs_tpu
def test_icl_scoring_compiles_for_tpu(monkeypatch, tmp_path):
    """The ICL programs compile for a TPU slice and fit, in the run's rows."""
    monkeypatch.chdir(tmp_path)
    config = _icl_smoke()
    rows, failures = preflight.run(config, str(ROOT / "configs/cost_sweep.py"), "v5e-8",
                                   search=False, log=lambda m: None)
    assert not failures
    by = {r["program"]: r for r in rows}
    assert {"icl_prefix", "icl_scores"} <= set(by)
    assert by["icl_scores"]["members"] == 4 and by["icl_scores"]["fits"]
    assert "all-reduce" not in by["icl_scores"]["collectives"]


# Synthetic HLO in XLA:TPU's form (no `known_trip_count`): a group loop over steps (its bound
# carried, so unread: per step) around a 3-layer scan (s32, 0..2) whose body holds a collective
# matmul as XLA:TPU writes an FSDP all-gather on v5e/v6e: a u32 counter that starts from a
# copied constant and advances by 2, two ring permutes a trip, and one dot a trip.
def _counted_loop_hlo(direction="LT", start=0, step=2, limit=4, counter_right=False,
                      update="add", inner_bound="constant"):
    compare = (f"compare(%limit, %i), direction={direction}" if counter_right
               else f"compare(%i, %limit), direction={direction}")
    bound = ("%limit = u32[]{:T(128)} constant(" + str(limit) + ")" if inner_bound == "constant"
             else "%limit = u32[]{:T(128)} get-tuple-element(%p), index=2")
    return f"""HloModule jit_loop, is_scheduled=true

%ring_cond (p: (bf16[16,8], u32[], u32[])) -> pred[] {{
  %p = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:T(128)}}, u32[]{{:T(128)}}) parameter(0)
  {bound}
  %i = u32[]{{:T(128)}} get-tuple-element(%p), index=1
  ROOT %cmp = pred[]{{:T(512)}} {compare}, metadata={{op_name="dot_general"}}
}}

%ring_body (q: (bf16[16,8], u32[], u32[])) -> (bf16[16,8], u32[], u32[]) {{
  %q = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:T(128)}}, u32[]{{:T(128)}}) parameter(0)
  %two = u32[]{{:T(128)}} constant({abs(step)})
  %w = bf16[16,8]{{1,0:T(8,128)(2,1)}} get-tuple-element(%q), index=0
  %j = u32[]{{:T(128)}} get-tuple-element(%q), index=1
  %j.copy = u32[]{{:T(128)}} copy(%j)
  %n = u32[]{{:T(128)}} get-tuple-element(%q), index=2
  %cp-start.1 = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:S(2)}}, u32[]{{:S(2)}}) collective-permute-start(%w), channel_id=51, source_target_pairs={{{{0,1}},{{1,0}}}}
  %cp-done.1 = bf16[16,8]{{1,0:T(8,128)(2,1)}} collective-permute-done(%cp-start.1)
  %cp-start.2 = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:S(2)}}, u32[]{{:S(2)}}) collective-permute-start(%cp-done.1), channel_id=52, source_target_pairs={{{{0,1}},{{1,0}}}}
  %fusion.1 = bf16[4,8]{{1,0:T(8,128)(2,1)}} fusion(%w), kind=kOutput, calls=%fused_dot
  %cp-done.2 = bf16[16,8]{{1,0:T(8,128)(2,1)}} collective-permute-done(%cp-start.2)
  %next = u32[]{{:T(128)}} {update}(%j.copy, %two)
  ROOT %t = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:T(128)}}, u32[]{{:T(128)}}) tuple(%cp-done.2, %next, %n)
}}

%fused_dot (param_0: bf16[16,8]) -> bf16[4,8] {{
  %param_0 = bf16[16,8]{{1,0}} parameter(0)
  %x = bf16[4,16]{{1,0}} constant({{...}})
  ROOT %dot.1 = bf16[4,8]{{1,0}} dot(%x, %param_0), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
}}

%layer_cond (a: (s32[], bf16[16,8])) -> pred[] {{
  %a = (s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) parameter(0)
  %three = s32[]{{:T(128)}} constant(3)
  %k = s32[]{{:T(128)}} get-tuple-element(%a), index=0
  ROOT %lt = pred[]{{:T(512)}} compare(%k, %three), direction=LT
}}

%layer_body (b: (s32[], bf16[16,8])) -> (s32[], bf16[16,8]) {{
  %b = (s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) parameter(0)
  %one = s32[]{{:T(128)}} constant(1)
  %zero = u32[]{{:T(128)}} constant({start})
  %lim = u32[]{{:T(128)}} constant({limit})
  %k.1 = s32[]{{:T(128)}} get-tuple-element(%b), index=0
  %v = bf16[16,8]{{1,0:T(8,128)(2,1)}} get-tuple-element(%b), index=1
  %zero.copy = u32[]{{:T(128)}} copy(%zero)
  %init = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:T(128)}}, /*index=2*/u32[]{{:T(128)}}) tuple(%v, %zero.copy, %lim)
  %ring = (bf16[16,8]{{1,0:T(8,128)(2,1)}}, u32[]{{:T(128)}}, u32[]{{:T(128)}}) while(%init), condition=%ring_cond, body=%ring_body
  %out = bf16[16,8]{{1,0:T(8,128)(2,1)}} get-tuple-element(%ring), index=0
  %k.2 = s32[]{{:T(128)}} add(%k.1, %one)
  ROOT %r = (s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) tuple(%k.2, %out)
}}

%step_cond (c: (s32[], s32[], bf16[16,8])) -> pred[] {{
  %c = (s32[]{{:T(128)}}, s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) parameter(0)
  %s = s32[]{{:T(128)}} get-tuple-element(%c), index=0
  %e = s32[]{{:T(128)}} get-tuple-element(%c), index=1
  ROOT %go = pred[]{{:T(512)}} compare(%s, %e), direction=LT
}}

%step_body (d: (s32[], s32[], bf16[16,8])) -> (s32[], s32[], bf16[16,8]) {{
  %d = (s32[]{{:T(128)}}, s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) parameter(0)
  %s.1 = s32[]{{:T(128)}} get-tuple-element(%d), index=0
  %e.1 = s32[]{{:T(128)}} get-tuple-element(%d), index=1
  %h = bf16[16,8]{{1,0:T(8,128)(2,1)}} get-tuple-element(%d), index=2
  %z = s32[]{{:T(128)}} constant(0)
  %li = (s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) tuple(%z, %h)
  %layers = (s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) while(%li), condition=%layer_cond, body=%layer_body
  %h.1 = bf16[16,8]{{1,0:T(8,128)(2,1)}} get-tuple-element(%layers), index=1
  %u = s32[]{{:T(128)}} constant(1)
  %s.2 = s32[]{{:T(128)}} add(%s.1, %u)
  ROOT %o = (s32[]{{:T(128)}}, s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) tuple(%s.2, %e.1, %h.1)
}}

ENTRY %main (w0: bf16[16,8], n0: s32[]) -> bf16[16,8] {{
  %w0 = bf16[16,8]{{1,0:T(8,128)(2,1)}} parameter(0)
  %n0 = s32[]{{:T(128)}} parameter(1)
  %s0 = s32[]{{:T(128)}} constant(0)
  %st = (s32[]{{:T(128)}}, s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) tuple(%s0, %n0, %w0)
  %steps = (s32[]{{:T(128)}}, s32[]{{:T(128)}}, bf16[16,8]{{1,0:T(8,128)(2,1)}}) while(%st), condition=%step_cond, body=%step_body
  ROOT %res = bf16[16,8]{{1,0:T(8,128)(2,1)}} get-tuple-element(%steps), index=2
}}
"""


DOT_FLOPS = 2 * 4 * 8 * 16  # the ring body's dot: [4,16] x [16,8]
SHARD_BYTES = 16 * 8 * 2  # what one permute delivers (its -done's type)


def test_census_reads_a_collective_matmuls_loop_per_step():
    """XLA:TPU's collective matmul (a u32 counter from a copied 0, step 2, limit 4: 2 trips)
    inside a 3-layer scan inside the group loop over steps: every figure is per step, the
    ring's dots and permutes counted 3 x 2 times, each permute its shard's bytes (not the
    -start's tuple of operand, result and context words)."""
    c = preflight.census(_counted_loop_hlo())
    assert c.flops == pytest.approx(3 * 2 * DOT_FLOPS)
    assert c.collectives == {"collective-permute": [3 * 2 * 2, 3 * 2 * 2 * SHARD_BYTES]}
    assert c.step_loops == ["steps"] and c.unread_loops == [] and c.reliable


@pytest.mark.parametrize("kw, trips", [
    ({}, 2),  # 0, 2 < 4
    ({"step": 1, "limit": 7}, 7),
    ({"step": 3, "limit": 7}, 3),  # 0, 3, 6 < 7: a partial last stride still runs
    ({"direction": "LE", "step": 1, "limit": 4}, 5),
    ({"direction": "NE", "step": 2, "limit": 8}, 4),
    ({"direction": "GT", "counter_right": True, "step": 1, "limit": 6}, 6),  # 6 > i
    ({"direction": "GT", "start": 8, "step": 2, "limit": 0, "update": "subtract"}, 4),
    ({"direction": "GE", "start": 7, "step": 1, "limit": 0, "update": "subtract"}, 8),
    ({"start": 5, "step": 1, "limit": 4}, 0),  # false at once
])
def test_trip_counts_of_counted_loops(kw, trips):
    c = preflight.census(_counted_loop_hlo(**kw))
    assert c.flops == pytest.approx(3 * trips * DOT_FLOPS)
    assert c.collectives.get("collective-permute", [0])[0] == 3 * trips * 2


@pytest.mark.parametrize("kw", [{"inner_bound": "carried"},  # the limit is not a constant
                                {"direction": "NE", "step": 2, "limit": 7},  # never equal
                                {"direction": "LT", "update": "subtract"}])  # counts away
def test_a_loop_it_cannot_count_inside_a_step_is_named(kw):
    """A loop inside a step whose trip count is not read counts once, and the census says
    so (the table marks its figures "?") instead of printing a step's figure silently."""
    c = preflight.census(_counted_loop_hlo(**kw))
    assert c.unread_loops == ["ring"] and not c.reliable
    assert c.flops == pytest.approx(3 * DOT_FLOPS)
    r = {"program": "train_loop", "target": "v5litepod-8", "mesh": {"fsdp": 8}, "members": 1,
         "bytes_per_device": dict.fromkeys(("argument", "output", "temp", "alias", "total"), 0),
         "device_bytes": 1, "fits": True, "max_group_size": None, "flops_per_step": 1e12,
         "flops_source": "compiled program's dots x loop trip counts",
         "step_time_lower_bound_s": 1.0, "mfu_ceiling": 0.5, "attention": "einsum: xla",
         "collectives": {"collective-permute": {"count": 6, "bytes": 6}},
         "census_unread_loops": c.unread_loops}
    text = preflight.table([r])
    assert "| 1.00 ? | 1 ? | 0.50 ? |" in text and "counted once, in train_loop (ring)" in text
    assert "?" not in preflight.table([{**r, "census_unread_loops": []}])


@needs_tpu
def test_census_counts_tpu_collective_matmuls():
    """An FSDP MLP (weights split on their input dimension over 8 chips, 16 members' rows on
    each) compiled for v5e-8: XLA:TPU turns the weight all-gathers into collective matmuls
    (`windowed_dot_general` loops of ring collective-permutes, a u32 counter stepping by 2;
    v6e does the same from about 24 members, in a slower compile). The census counts their
    dots and permutes with the loops' trip counts: the FLOPs are the analytic count, and
    each gather moves at least the (n - 1) / n of a weight it lacks."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    devices = targets.devices(targets.get("v5e-8"))
    n, members, tokens, d, f, layers = len(devices), 16, 64, 4096, 14336, 2
    mesh = jax.make_mesh((n,), ("fsdp",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("fsdp"))
    x = jax.ShapeDtypeStruct((n, members, tokens, d), jnp.bfloat16, sharding=rows)
    up = jax.ShapeDtypeStruct((layers, d, f), jnp.bfloat16,
                              sharding=NamedSharding(mesh, P(None, "fsdp")))
    down = jax.ShapeDtypeStruct((layers, f, d), jnp.bfloat16,
                                sharding=NamedSharding(mesh, P(None, None, "fsdp")))

    def grads(x, up, down):
        def layer(h, w):
            return jax.lax.with_sharding_constraint(jnp.tanh(h @ w[0]) @ w[1], rows), None

        def loss(up, down):
            return jax.lax.scan(layer, x, (up, down))[0].astype(jnp.float32).sum()
        return jax.grad(loss, argnums=(0, 1))(up, down)

    hlo = jax.jit(grads).lower(x, up, down).compile().as_text()
    assert "windowed_dot_general" in hlo  # the form this test is about
    c = preflight.census(hlo)
    assert c.reliable
    # a forward and two backward matmuls per weight, per layer
    analytic = 3 * 2 * n * members * tokens * d * f * 2 * layers
    assert c.flops * n == pytest.approx(analytic, rel=0.01)
    count, nbytes = c.collectives["collective-permute"]
    gathered = 2 * layers * 2 * d * f * 2  # each weight gathered for the forward and backward
    assert (n - 1) / n * gathered <= nbytes <= 2 * gathered
    assert count >= 2 * layers * 2 * (n - 1)
