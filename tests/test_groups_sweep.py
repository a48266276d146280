"""Sweeps trained in groups give the records of one-at-a-time sweeps
(docs/design.md#many-runs-at-once): every
method and option of `:smoke`, and a killed group's resume. (Split from test_groups.py so the
two test workers share the slow sweeps.)"""
import numpy as np
import pytest

from test_groups import assert_same_record


def _records(workdir):
    import json
    import pathlib
    return {p.parent.name: json.loads(p.read_text())
            for p in pathlib.Path(workdir, "runs").glob("*/result.json")}


def assert_same_sweep(alone, together):
    """Two sweeps' records agree run by run: status, counts and stage lengths exactly, test
    metrics and validation metrics within 1e-4, per-example scores within 1e-4."""
    import pandas as pd
    a, b = _records(alone), _records(together)
    assert a.keys() == b.keys() and a
    for run_id, ra in a.items():
        rb = b[run_id]
        assert ra["status"] == rb["status"] == "ok", (run_id, ra.get("error"), rb.get("error"))
        for k in ("n_weak", "n_oracle", "n_shots", "cost", "test_truncated"):
            assert ra[k] == rb[k], (run_id, k)
        for k in ("accuracy", "auroc"):
            np.testing.assert_allclose(ra["metrics"][k], rb["metrics"][k], atol=1e-4)
        assert len(ra["stages"]) == len(rb["stages"])
        for sa, sb in zip(ra["stages"], rb["stages"]):
            assert_same_record(sa, sb)
        scores = [pd.read_parquet(f"{d}/runs/{run_id}/scores.parquet")["score"].to_numpy()
                  for d in (alone, together)]
        np.testing.assert_allclose(*scores, atol=1e-4)


def test_methods_sweep_records_do_not_depend_on_the_group(tmp_path):
    """`:smoke` with every method and option (log-conf, entropy selection, mixture, k-shot,
    the API schedule, ICL) one at a time and in groups of 4: the same records."""
    from configs import methods as methods_config
    from scalable_elicitation import experiment, runner

    learners = {}  # one loaded model and its compiled steps for both sweeps, as in one sweep

    def sweep(parallel):
        c = methods_config.get_config("smoke,variants=all")
        c.fractions = ("0.5",)
        c.mesh.data = 1  # schedule=api trains batches of 1
        c.parallel_runs = parallel
        s = runner.Sweep(c, tmp_path / f"p{parallel}", learners=learners)
        points = experiment.sweep_points("configs/methods.py", c)
        points.append({**points[0], "schedule": "api"})
        specs = s.plan(points)
        assert s.group_size(specs) == parallel
        done = experiment.run_experiment(s, specs, out=lambda m: None, show_progress=False)
        assert len(done.records) == len(specs) == 7
        return tmp_path / f"p{parallel}"

    assert_same_sweep(sweep(1), sweep(4))


class _Kill(BaseException):  # like KeyboardInterrupt: not a failed run
    pass


@pytest.mark.parametrize("placement", ["rows", "runs"])
def test_killed_group_resumes_every_run_with_the_records_of_an_uninterrupted_sweep(
        tmp_path, monkeypatch, placement):
    """A group killed mid-stage resumes from its checkpoints; with `runs`, its runs spread
    over 4 devices (saved from and restored into the sharded group)."""
    import shutil

    from configs import cost_sweep
    from scalable_elicitation import runner

    c = cost_sweep.get_config("smoke")
    c.host_poll_steps = 2  # a host check (and save) every two steps
    c.mesh.data = 1 if placement == "rows" else 4
    c.group_sharding = placement
    c.train.max_visits = 640  # stages of 20 steps, so the kill lands mid-stage
    c.checkpoint_interval_s = 0.0
    c.parallel_runs = 4
    points = [{"budget": 8, "fraction": f, "seed": 0} for f in ("0.5", "1")] + [
        {"budget": 2, "fraction": "0", "seed": 0}]
    # one Sweep throughout, so the model compiles once: a resume reads only what is on disk
    sweep = runner.Sweep(c, tmp_path / "w")
    specs = sweep.plan(points)

    def group(progress=None):
        sweep.progress = progress
        return sweep.run_group(specs, shapes=sweep.group_shapes(specs))

    def kill(msg):
        if msg.startswith("weak 5/"):
            raise _Kill()

    runs = tmp_path / "w" / "runs"
    with pytest.raises(_Kill):
        group(kill)
    assert not list(runs.glob("*/result.json"))
    assert list(runs.glob("*/ckpt/stage0/*"))  # saved mid-stage

    seen = []
    recs = group(seen.append)
    assert [r["status"] for r in recs] == ["ok"] * 3
    # the stages running at the kill went on from their saves (the 8-label oracle stage of the
    # mixed run had not begun: it starts at step 1)
    assert seen and not [m for m in seen if m.startswith(("weak 1/", "oracle 1/4"))]
    assert not list(runs.glob("*/ckpt"))
    shutil.move(runs, tmp_path / "killed" / "runs")
    group()  # uninterrupted, from scratch
    assert_same_sweep(tmp_path / "w", tmp_path / "killed")
