"""The sweep on the smoke config (tiny random model): records, reruns, seeds, compiles,
infeasible points, overrides, config errors, the command line, resume and TensorBoard."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import cost_sweep
from scalable_elicitation import runner as R
from scalable_elicitation.experiment import sweep_points
from scalable_elicitation.main import run_sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "cost_sweep.py")


def smoke_config(**overrides):
    c = cost_sweep.get_config("smoke")
    c.parallel_runs = 1  # these tests are about one run; groups: tests/test_groups.py
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    config = smoke_config()
    workdir = tmp_path_factory.mktemp("smoke")
    recs = run_sweep(config, workdir, sweep_points(CONFIG, config), out=lambda *_: None)
    return config, workdir, recs


def test_smoke_sweep_records_and_costs(smoke_sweep):
    config, workdir, recs = smoke_sweep
    assert recs and all(r["status"] == "ok" for r in recs)
    assert (workdir / "frontier.png").stat().st_size > 1000
    for r in recs:
        on_disk = json.loads((workdir / "runs" / r["run_id"] / "result.json").read_text())
        assert on_disk["run_id"] == r["run_id"]
        ledger = json.loads((workdir / "runs" / r["run_id"] / "ledger.json").read_text())
        assert (len(ledger["weak"]), len(ledger["oracle"])) == (r["n_weak"], r["n_oracle"])
        assert r["cost"] == pytest.approx(r["n_oracle"] * 1 + r["n_weak"] * 0.1)
        used = sum(s["n_train"] + s["n_val"] for s in r["stages"]) + r["n_shots"]
        assert used == r["n_weak"] + r["n_oracle"]
        assert (r["planned"]["weak"], r["planned"]["oracle"]) == (r["n_weak"], r["n_oracle"])
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
        # validation labels count: stages with >= 10 labels carve some out
        for s in r["stages"]:
            assert (s["n_val"] > 0) == (s["n_train"] + s["n_val"] >= 10)
        # a stage too small for a carve-out validates on the previous stage's (issue 20)
        for before, s in zip(r["stages"], r["stages"][1:]):
            if s["n_train"] < 10 and before["n_val"] > 0:
                assert s["val_borrowed"] == before["n_val"] and s["val_metric"] is not None
    assert any(s["val_borrowed"] for r in recs for s in r["stages"])  # the smoke grid has one


def test_main_job_writes_tensorboard_losses_and_metrics(smoke_sweep):
    from tb_events import read_scalars
    _, workdir, recs = smoke_sweep
    logs = sorted((workdir / "tb").iterdir())
    assert {d.name for d in logs} == {r["run_id"] for r in recs}  # one log per run
    for rec in recs:
        (events,) = (workdir / "tb" / rec["run_id"]).glob("events.out.tfevents.*")
        scalars = read_scalars(events)
        assert scalars["test/accuracy"] == [(0, pytest.approx(rec["metrics"]["accuracy"]))]
        for stage in rec["stages"]:  # every step's loss of every stage
            losses = scalars[f"{stage['source']}/loss"]
            assert [s for s, _ in losses] == list(range(1, stage["steps"] + 1))


def test_rerun_skips_done_runs_and_matches(smoke_sweep):
    config, workdir, recs = smoke_sweep
    again = run_sweep(config, workdir, sweep_points(CONFIG, config), out=lambda *_: None)
    assert [r["wall_s"] for r in again] == [r["wall_s"] for r in recs]  # read back, not rerun
    runs = list((workdir / "runs").iterdir())
    assert len(runs) == len(recs)  # nothing duplicated


def test_same_seed_same_metrics_different_seed_different_labels(smoke_sweep, tmp_path):
    config, _, recs = smoke_sweep
    points = [p for p in sweep_points(CONFIG, config) if p["budget"] == 8]
    fresh = run_sweep(config, tmp_path / "a", points, out=lambda *_: None)
    by_id = {r["run_id"]: r for r in recs}
    for r in fresh:
        assert r["metrics"] == by_id[r["run_id"]]["metrics"]
        assert r["stages"] == by_id[r["run_id"]]["stages"]
    config2 = smoke_config(seed_offset=1)
    other = run_sweep(config2, tmp_path / "b", points=[dict(p, seed=1) for p in points],
                      out=lambda *_: None)
    for r0, r1 in zip(fresh, other):
        if r0["n_oracle"] > 0:
            l0 = json.loads((tmp_path / "a" / "runs" / r0["run_id"] / "ledger.json").read_text())
            l1 = json.loads((tmp_path / "b" / "runs" / r1["run_id"] / "ledger.json").read_text())
            assert l0["oracle"] != l1["oracle"]


def test_seeds_share_one_training_split_and_draw_their_own_pools(tmp_path):
    """One balanced training split per task, fixed like the test set (issue 20, item 5): every
    seed's pools and labeller examples come from the same texts, in the seed's own order."""
    sweep = R.Sweep(smoke_config(), tmp_path)
    train_ids = set(sweep.data.task().train["id"].tolist())
    orders = []
    for seed in range(3):
        pools = sweep.data.pools(seed)
        weak = pools.take("weak", pools.size("weak"))["id"].tolist()
        oracle = pools.take("oracle", pools.size("oracle"))["id"].tolist()
        used = set(weak) | set(oracle) | set(map(str, sweep.data.weak_labels(seed).train_ids))
        assert used <= train_ids
        orders.append(weak[:20])
    assert orders[0] != orders[1] != orders[2]
    spec = sweep.plan(sweep_points(CONFIG, sweep.config))[0]
    assert sweep.effective(spec)["split_seed"] == 0  # part of the run id
    # cached weak labels of one split are never reused for another split's texts
    from scalable_elicitation.data import load_task
    from scalable_elicitation.labelers.cache import weak_labels_key
    other = load_task(sweep.config.task, seed=1, n_test=sweep.config.n_test,
                      **sweep.task_options)
    assert weak_labels_key(sweep.labeler, sweep.data.task(), 1) != \
        weak_labels_key(sweep.labeler, other, 1)


def test_one_compile_per_shape_across_runs(smoke_sweep, tmp_path):
    config, _, _ = smoke_sweep
    sweep = R.Sweep(config, tmp_path)
    specs = sweep.plan(sweep_points(CONFIG, config))
    for s in specs:
        sweep.run(s)
    # one length bucket in the smoke config: one train trace, one eval trace in all
    assert sweep.data.learner.steps.compiles == {"train": 1, "eval": 1}
    assert len({(s.n_weak, s.n_oracle) for s in specs}) >= 4


def test_budget_larger_than_pool_is_infeasible(tmp_path):
    config = smoke_config()
    rec = run_sweep(config, tmp_path, [{"budget": 100000, "fraction": "0", "seed": 0}],
                    out=lambda *_: None)[0]
    assert rec["status"] == "infeasible"
    assert "weak" in rec["error"] and rec["n_weak"] == 0 and rec["cost"] == 0.0


def test_sweep_points_may_override_learner_keys_but_not_shared_ones(tmp_path):
    sweep = R.Sweep(smoke_config(), tmp_path)
    point = {"budget": 8, "fraction": "1", "seed": 0}
    base, short = sweep.plan([point, dict(point, max_length=16)])
    assert sweep.run_id(base) != sweep.run_id(short)
    rec = sweep.run(short)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["config"]["max_length"] == 16
    used = sweep.data.learner_for(sweep.run_config(short.overrides))
    assert used.cfg.max_length == 16 and sweep.data.learner.cfg.max_length == 32  # honoured
    with pytest.raises(ValueError, match=r"sweep points override \['labeler.rate', 'n_test'\]"):
        sweep.plan([point, dict(point, n_test=8), dict(point, **{"labeler.rate": 0.1})])


def test_bad_config_values_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="config.method"):
        R.Sweep(smoke_config(method="nope"), tmp_path)
    with pytest.raises(ValueError, match=r"config.fractions"):
        R.Sweep(smoke_config(fractions=("2",)), tmp_path)
    with pytest.raises(ValueError,
                       match="config.group_sharding: 'both'; allowed: auto, rows, runs"):
        R.Sweep(smoke_config(group_sharding="both"), tmp_path)
    with pytest.raises(ValueError, match="config.group_sharding: 'runs' .* model must fit one "
                                         "device: set mesh.fsdp and mesh.tensor to 1"):
        R.Sweep(smoke_config(group_sharding="runs", **{"mesh.tensor": 2}), tmp_path)
    with pytest.raises(ValueError, match="config.train.small_stage_val: 'last'; allowed: "
                                         "previous, none"):
        R.Sweep(smoke_config(**{"train.small_stage_val": "last"}), tmp_path)
    with pytest.raises(ValueError, match="config.train.min_eval_visits: -1 must be >= 0"):
        R.Sweep(smoke_config(**{"train.min_eval_visits": -1}), tmp_path)
    with pytest.raises(ValueError, match="config.host_poll_steps: 0 must be a whole number"):
        R.Sweep(smoke_config(host_poll_steps=0), tmp_path)
    # the grouping policy is validated without JAX: planning and grouping import none
    code = ("import sys; import scalable_elicitation.planning, scalable_elicitation.grouping; "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_unknown_task_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.task: unknown task 'no_such_task'"):
        R.Sweep(smoke_config(task="no_such_task"), tmp_path)
    assert not (tmp_path / "runs").exists()


def test_cli_rejects_unknown_override_and_prints_dry_run(tmp_path):
    base = [sys.executable, "-m", "scalable_elicitation.main", f"--workdir={tmp_path}"]
    bad = subprocess.run(base + [f"--config={CONFIG}:smoke", "--config.train.nope=1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--config.train.nope=1" in bad.stderr
    assert "error: bad flag or config override" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run(base + ["--config=configs/nothing_here.py"], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    dry = subprocess.run(base + [f"--config={CONFIG}:smoke", "--dry_run"],
                         capture_output=True, text=True, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    # 6 grid runs and the ceiling runs of its 2 all-weak points (config.ceiling)
    assert len(lines) == 8 and all(line.split()[-1] == "todo" for line in lines)


def test_a_gpu_job_on_a_cpu_only_install_exits_2_before_writing_anything(tmp_path):
    for module in ("scalable_elicitation.main", "launch.sweep"):
        workdir = tmp_path / module
        run = subprocess.run(
            [sys.executable, "-m", module, f"--config={CONFIG}:smoke", f"--workdir={workdir}",
             "--config.platform=gpu"], capture_output=True, text=True, cwd=ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert run.returncode == 2, (module, run.stderr[-2000:])
        assert "error: config.platform='gpu', but JAX runs on 'cpu'" in run.stderr
        assert "SE_EXTRAS=gpu" in run.stderr and "Traceback" not in run.stderr
        assert not (workdir / "runs").exists()
    bad = subprocess.run([sys.executable, "-m", "scalable_elicitation.main",
                          f"--config={CONFIG}:smoke", f"--workdir={tmp_path / 'w'}",
                          "--config.platform=cuda"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "config.platform: 'cuda'; allowed: auto, cpu, gpu, tpu" \
        in bad.stderr


class _Kill(KeyboardInterrupt):
    """Stands in for a killed process: the runner re-raises it without writing a record."""


def test_killed_run_resumes_mid_stage_with_identical_record(tmp_path):
    config = smoke_config(checkpoint_interval_s=0.0, host_poll_steps=1)
    points = [{"budget": 8, "fraction": "0.5", "seed": 0}]  # weak stage 40 labels, oracle 4
    reference = R.Sweep(config, tmp_path / "ref")
    (spec,) = reference.plan(points)
    want = reference.run(spec)

    sweep = R.Sweep(config, tmp_path / "killed")

    def kill_at_step_2(msg):
        if msg.startswith("weak 2/"):
            raise _Kill()

    sweep.progress = kill_at_step_2
    with pytest.raises(_Kill):
        sweep.run(spec)
    run_dir = sweep.run_dir(spec)
    assert not (run_dir / "result.json").exists()
    assert any((run_dir / "ckpt" / "stage0").iterdir())  # a mid-stage checkpoint exists

    resumed = R.Sweep(config, tmp_path / "killed")
    seen = []
    resumed.progress = seen.append
    got = resumed.run(spec)
    assert seen[0].startswith("weak 2/")  # continued after the saved step, not from step 1
    assert got["metrics"] == want["metrics"]
    assert got["stages"] == want["stages"]
    assert not (run_dir / "ckpt").exists()  # checkpoints dropped once the record is written


def test_bad_task_file_fails_once_before_any_run(tmp_path):
    one_class = tmp_path / "one_class.jsonl"
    one_class.write_text("".join(json.dumps({"text": f"text {i}", "label": 1}) + "\n"
                                 for i in range(40)))
    config = smoke_config(task=f"file:{one_class}")
    with config.unlocked():
        config.task_options.max_train = None
    with pytest.raises(ValueError, match="one_class.jsonl"):
        run_sweep(config, tmp_path / "w", sweep_points(CONFIG, config), out=lambda *_: None)
    assert not (tmp_path / "w" / "runs").exists()  # no partial records


def test_dtype_auto_is_float32_on_cpu_and_bfloat16_on_accelerators(tmp_path, monkeypatch):
    """`dtype="auto"` is resolved when the sweep starts: the CPU default keeps float32 (the
    same run ids and records as an explicit float32), a GPU or TPU gets bfloat16."""
    assert cost_sweep.get_config().dtype == "auto"
    auto = R.Sweep(smoke_config(dtype="auto"), tmp_path / "a")
    explicit = R.Sweep(smoke_config(dtype="float32"), tmp_path / "b")
    assert auto.config.dtype == "float32"
    points = sweep_points(CONFIG, smoke_config())
    assert [auto.run_id(s) for s in auto.plan(points)] == \
        [explicit.run_id(s) for s in explicit.plan(points)]
    monkeypatch.setattr(R.jax, "default_backend", lambda: "gpu")
    assert R.resolve_auto_dtype(smoke_config(dtype="auto")).dtype == "bfloat16"
    with pytest.raises(ValueError, match="config.dtype: 'fp8'; allowed: auto, float32"):
        R.Sweep(smoke_config(dtype="fp8"), tmp_path / "c")
