"""The sweep worker (launch/sweep.py): locks, shards, dry run, and workers sharing a sweep."""
import json
import multiprocessing
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from launch import lock as lock_lib
from launch.sweep import Shard, parse_shard
from tb_events import read_scalars

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "cost_sweep.py")


def worker_env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("SLURM_ARRAY_TASK_ID", None)
    return env


def start_worker(workdir, *overrides, log=None):
    cmd = [sys.executable, "-m", "launch.sweep", f"--config={CONFIG}:smoke",
           f"--workdir={workdir}", *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE,
                            stderr=log or subprocess.PIPE, text=True)


def run_dirs(workdir):
    return sorted(p for p in (pathlib.Path(workdir) / "runs").iterdir() if p.is_dir())


def dry_run(workdir, *overrides):
    out = subprocess.run([sys.executable, "-m", "launch.sweep", f"--config={CONFIG}:smoke",
                          f"--workdir={workdir}", "--dry_run", *overrides], cwd=ROOT,
                         env=worker_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


LINE = re.compile(r"^[0-9a-f]{16} seq_sft n_weak=(\d+) n_oracle=(\d+) cost=(\S+) seed=\d+ "
                  r"(todo|done|infeasible|failed)$")


# -- locks ------------------------------------------------------------------------------------
def test_lock_is_exclusive_and_released(tmp_path):
    a, b = lock_lib.RunLock(tmp_path), lock_lib.RunLock(tmp_path)
    assert a.acquire() and not b.acquire()
    holder = json.loads((tmp_path / "lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == lock_lib.hostname()
    assert "time" in holder
    a.release()
    assert not (tmp_path / "lock").exists() and b.acquire()
    b.release()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_same_host_lock_is_taken_over(tmp_path):
    stale = {"host": lock_lib.hostname(), "pid": _dead_pid(), "time": time.time()}
    (tmp_path / "lock").write_text(json.dumps(stale))
    lock = lock_lib.RunLock(tmp_path, stale_after=1e9)  # same host: age does not matter
    assert lock.acquire() and lock.took_over == stale
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_live_lock_is_kept_and_other_host_goes_stale_by_heartbeat_age(tmp_path):
    live = {"host": lock_lib.hostname(), "pid": os.getppid(), "time": time.time()}
    (tmp_path / "lock").write_text(json.dumps(live))
    assert not lock_lib.RunLock(tmp_path, stale_after=0.01).acquire()
    other = {"host": "some-other-host", "pid": os.getpid(), "time": time.time()}
    (tmp_path / "lock").write_text(json.dumps(other))
    assert not lock_lib.RunLock(tmp_path, stale_after=60).acquire()  # fresh heartbeat
    old = time.time() - 120
    os.utime(tmp_path / "lock", (old, old))
    lock = lock_lib.RunLock(tmp_path, stale_after=60)
    assert lock.acquire() and lock.took_over == other
    lock.release()


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock = lock_lib.RunLock(tmp_path, stale_after=60, heartbeat_s=0.05)
    assert lock.acquire()
    old = time.time() - 120
    os.utime(tmp_path / "lock", (old, old))
    time.sleep(0.3)
    assert time.time() - (tmp_path / "lock").stat().st_mtime < 5
    lock.release()


def _race(run_dir, stale_after, queue, tried):
    lock = lock_lib.RunLock(run_dir, stale_after=stale_after)
    won = lock.acquire()
    if won:
        lock.log_start()
    queue.put(won)
    tried.wait(timeout=60)  # hold until every racer has tried (a slow fork must not come late)
    lock.release()


@pytest.mark.parametrize("stale_first", [False, True])
def test_racing_processes_one_winner(tmp_path, stale_first):
    if stale_first:  # everybody sees the same stale lock and tries to take it over
        (tmp_path / "lock").write_text(json.dumps(
            {"host": lock_lib.hostname(), "pid": _dead_pid(), "time": 0}))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    tried = ctx.Barrier(8)
    procs = [ctx.Process(target=_race, args=(tmp_path, 3600, queue, tried)) for _ in range(8)]
    for p in procs:
        p.start()
    wins = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(wins) == 1
    assert len(lock_lib.starts(tmp_path)) == 1


def test_starts_log_line_has_host_pid_time(tmp_path):
    lock = lock_lib.RunLock(tmp_path)
    assert lock.acquire()
    lock.log_start()
    lock.release()
    host, pid, stamp = lock_lib.starts(tmp_path)[0].split()
    assert host == lock_lib.hostname() and int(pid) == os.getpid()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", stamp)


def test_every_process_makes_the_same_collective_calls_whatever_the_locks(tmp_path,
                                                                          monkeypatch):
    """Process 0 decides each run and broadcasts it: a run whose lock another worker holds is
    retried by every process, not by process 0 alone (which would hang a multi-host sweep)."""
    import types

    from launch import multihost
    from launch import sweep as sweep_lib

    class FakeSweep:
        def run_dir(self, spec):
            return tmp_path / "runs" / spec.name

        def status(self, spec):
            return "done" if spec.name == "c" else "todo"

        def run(self, spec):
            return {"run_id": spec.name, "status": "ok", "metrics": None}

        def group_size(self, specs):
            return 2  # runs claimed, and run, two at a time

        def run_group(self, specs, logs=None, **kwargs):
            return [self.run(s) for s in specs]

        def group_shapes(self, specs):
            return None

    specs = [types.SimpleNamespace(name=n, n_weak=1, n_oracle=0, seed=0) for n in "abc"]
    (tmp_path / "runs" / "a").mkdir(parents=True)  # run a: held by a live worker
    (tmp_path / "runs" / "a" / "lock").write_text(json.dumps(
        {"host": lock_lib.hostname(), "pid": os.getppid(), "time": time.time()}))

    def play(leader, script):
        calls = []

        def broadcast(value):
            calls.append(value)
            return value if leader else script[len(calls) - 1]  # process 0's value
        monkeypatch.setattr(multihost, "is_leader", lambda: leader)
        monkeypatch.setattr(multihost, "broadcast_int", broadcast)
        worker = sweep_lib.Worker(FakeSweep(), out=lambda msg: None)
        worker.run_all(specs)
        return calls, worker

    sent, leader = play(True, None)
    received, follower = play(False, sent)
    assert len(received) == len(sent) == 4  # a, b, c, then a again
    assert leader.skipped_busy == follower.skipped_busy == ["a"]
    assert [r["run_id"] for r in leader.records] == [r["run_id"] for r in follower.records]


# -- shards -----------------------------------------------------------------------------------
def test_shards_from_flag_and_slurm_cover_the_plan_once():
    assert parse_shard("1/3", env={}) == Shard(1, 3)
    assert parse_shard(None, env={}) == Shard(0, 1)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_shard(None, env=env) == Shard(1, 3)
    assert parse_shard("2/3", env=env) == Shard(2, 3)  # the flag wins
    items = list(range(10))
    slices = [Shard(i, 3).select(items) for i in range(3)]
    assert sorted(sum(slices, [])) == items and slices[1] == [1, 4, 7]
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad, env={})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT"):
        parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "0"})


# -- the CLI on the smoke config --------------------------------------------------------------
def test_dry_run_lists_grid_with_costs_and_marks_infeasible(tmp_path):
    lines = dry_run(tmp_path, "--config.budgets=(2,8,100000)", "--config.seeds=1")
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines  # nothing but run lines on stdout
    rows = [(int(m[1]), int(m[2]), float(m[3]), m[4]) for m in parsed]
    # 3 budgets x 3 fractions, 1 seed: no merges in this grid; and a ceiling run (the same
    # texts' ground truth, config.ceiling) beside each of the 3 all-weak points
    assert len(rows) == 9 + 3
    all_weak = [r for r in rows if r[1] == 0 and r[0] > 0]
    assert len(all_weak) == 6 and len(set(all_weak)) == 3
    for nw, no, cost, status in rows:
        assert cost == pytest.approx(no + 0.1 * nw)
        assert status == ("infeasible" if cost > 1000 else "todo")
    assert not list(tmp_path.glob("runs/*/result.json"))  # nothing ran
    sharded = dry_run(tmp_path, "--config.budgets=(2,8,100000)", "--config.seeds=1",
                      "--shard=1/4")
    assert sharded == lines[1::4]


def test_two_workers_finish_every_run_exactly_once(tmp_path):
    # one budget of the smoke grid: 3 runs for two workers to share
    grid = ("--config.budgets=(8,)", "--config.seeds=1")
    workers = [start_worker(tmp_path, *grid) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    expected = dry_run(tmp_path, *grid)
    assert expected and all(line.endswith(" done") for line in expected)
    dirs = run_dirs(tmp_path)
    assert len(dirs) == len(expected)
    pids = set()
    for d in dirs:
        starts = lock_lib.starts(d)
        assert len(starts) == 1, (d.name, starts)
        pids.add(int(starts[0].split()[1]))
        rec = json.loads((d / "result.json").read_text())
        assert rec["status"] == "ok"
        assert not (d / "lock").exists()
        # every training step's loss reached the run's TensorBoard log
        (events,) = (tmp_path / "tb" / d.name).glob("events.out.tfevents.*")
        scalars = read_scalars(events)
        for stage in rec["stages"]:
            logged = scalars[f"{stage['source']}/loss"]
            assert [step for step, _ in logged] == list(range(1, stage["steps"] + 1))
            assert logged[-1][1] == pytest.approx(stage["final_loss"], rel=1e-6)
    assert pids <= {w.pid for w in workers}


@pytest.mark.slow  # 35 s of subprocess sweeps; the default run keeps the two-worker test
def test_killed_worker_restarts_without_loss_or_duplicates(tmp_path):
    grid = ("--config.budgets=(8,)", "--config.seeds=1")  # three runs
    first = start_worker(tmp_path, *grid, log=subprocess.DEVNULL)
    deadline = time.time() + 120
    victim = None
    while victim is None and time.time() < deadline and first.poll() is None:
        for lock_path in (tmp_path / "runs").glob("*/lock"):
            holder = lock_lib.read_holder(lock_path)
            if holder and holder.get("pid") == first.pid:
                victim = lock_path.parent
        time.sleep(0.05)
    assert victim is not None, "the worker never started a run"
    assert not (victim / "result.json").exists()
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (victim / "lock").exists()  # left behind by the dead worker
    again = start_worker(tmp_path, *grid)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"taking over stale lock of {victim.name}" in err
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3 and victim in dirs
    for d in dirs:
        starts = lock_lib.starts(d)
        pids = [int(s.split()[1]) for s in starts]
        if d == victim:  # the interrupted start and the restart
            assert pids == [first.pid, again.pid]
        else:
            assert len(starts) == 1
        assert json.loads((d / "result.json").read_text())["status"] == "ok"
        assert not (d / "lock").exists()
    assert all(line.endswith(" done") for line in dry_run(tmp_path, *grid))


def test_tracker_writes_tensorboard_events(tmp_path):
    from scalable_elicitation.tracking import Tracker
    tracker = Tracker(tmp_path, wandb=False)
    with tracker.open("abc123", config={"train.lr": 0.1}) as log:
        log.scalar("weak/loss", 0.5, step=1)
        log.scalar("weak/loss", 0.25, step=2)
        log.summary({"status": "ok", "cost": 4.0, "n_weak": 40, "n_oracle": 0, "wall_s": 1.0,
                     "metrics": {"accuracy": 0.75, "accuracy_ci": [0.5, 0.9]},
                     "stages": [{"source": "weak", "steps": 3, "val_metric": None}]})
    log.scalar("ignored/after_close", 1.0, step=0)  # a closed log: a no-op
    events = list((tmp_path / "tb" / "abc123").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_scalars(events[0])
    assert {"weak/loss", "test/accuracy", "run/cost", "weak/steps"} <= set(scalars)
    assert "ignored/after_close" not in scalars and "test/accuracy_ci" not in scalars
    assert scalars["weak/loss"] == [(1, 0.5), (2, 0.25)]


def test_a_dry_run_refuses_a_bad_value_with_exit_2_and_lists_a_gpu_job_anywhere(tmp_path):
    """A dry run checks the config as a real start does (exit 2, the key and what is
    allowed, no traceback), but not the backend: it lists a GPU job's runs on any machine."""
    bad = subprocess.run([sys.executable, "-m", "launch.sweep", f"--config={CONFIG}:smoke",
                          f"--workdir={tmp_path / 'w'}", "--dry_run",
                          "--config.train.micro_batch=5"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "error: config.train.micro_batch: 5" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "w").exists()
    assert dry_run(tmp_path, "--config.platform=gpu")
