"""Multi-host JAX on CPU: two processes (jax.distributed over localhost, gloo collectives) run
the smoke sweep through `launch.sweep` and reach the single-process metrics within 1e-5.

Every process builds the same full host batch and contributes its devices' rows
(`stage.to_global`), and scores and features come back replicated, so every process can read
them. Weights load shard by shard: each process reads only the slices its devices hold.
"""
import hashlib
import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from test_weight_slices import save_tiny_qwen2, tiny_qwen2_tensors

from scalable_elicitation.models import load_pretrained
from scalable_elicitation.models import weights as W
from scalable_elicitation.sharding import make_mesh

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "cost_sweep.py")
GRID = ("--config.budgets=(8,)", "--config.seeds=1")  # three runs, both stages

def _worker_cmd(*args):
    return [sys.executable, "-m", "launch.sweep", *args]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    for k in ("SE_MULTIHOST", "SE_COORDINATOR_ADDRESS", "SE_NUM_PROCESSES", "SE_PROCESS_ID",
              "SLURM_ARRAY_TASK_ID"):
        env.pop(k, None)
    env.update(extra)
    return env


def _two_processes(cmd_of):
    """Two processes of one jax.distributed job over localhost, `cmd_of(i)` the command of
    process i (output captured)."""
    port = _free_port()
    return [subprocess.Popen(
        cmd_of(i), cwd=ROOT,
        env=_env(1, SE_COORDINATOR_ADDRESS=f"localhost:{port}", SE_NUM_PROCESSES="2",
                 SE_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs, timeout):
    """Each process's (stdout, stderr) once all exited 0; a process still running after
    `timeout` (a hang) is killed and the test fails."""
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def _metrics(workdir):
    out = {}
    for path in sorted(pathlib.Path(workdir, "runs").glob("*/result.json")):
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok", rec.get("error")
        out[rec["run_id"]] = {"metrics": rec["metrics"], "stages": rec["stages"]}
    return out


def _floats(a, b, path=""):
    """(path, x, y) for every number in two records of the same shape."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            yield from _floats(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _floats(x, y, f"{path}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        yield path, float(a), float(b)
    else:
        assert a == b, path


@pytest.mark.slow
def test_two_process_cpu_run_matches_single_process(tmp_path):
    args = [f"--config={CONFIG}:smoke", *GRID]
    single = subprocess.run(_worker_cmd(f"--workdir={tmp_path / 'one'}", *args), cwd=ROOT,
                            env=_env(1), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    procs = _two_processes(lambda i: _worker_cmd(f"--workdir={tmp_path / 'two'}", *args))
    outs = _finish(procs, 400)
    for i, (_, err) in enumerate(outs):
        assert f"multi-host JAX: process {i} of 2, 1 local of 2 devices" in err

    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == 3 and set(one) == set(two)
    for run_id in one:
        for path, x, y in _floats(one[run_id], two[run_id]):
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-5, (run_id, path, x, y)
    # process 0 alone took the locks and logged the starts
    for d in (tmp_path / "two" / "runs").iterdir():
        assert len((d / "starts.log").read_text().splitlines()) == 1


@pytest.mark.slow
def test_two_process_sweep_with_a_held_lock_finishes(tmp_path):
    """A run whose lock a live worker holds: process 0 sees it busy, decides so for both
    processes, and both skip it twice (first pass and retry) with the same collective calls,
    so the sweep ends instead of hanging."""
    args = [f"--config={CONFIG}:smoke", *GRID]
    workdir = tmp_path / "w"
    dry = subprocess.run(_worker_cmd(f"--workdir={workdir}", "--dry_run", *args), cwd=ROOT,
                         env=_env(1), capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    ids = [line.split()[0] for line in dry.stdout.splitlines()]
    assert len(ids) == 3
    held = workdir / "runs" / ids[0]
    held.mkdir(parents=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "time": 0}  # pytest: alive
    (held / "lock").write_text(json.dumps(holder))

    procs = _two_processes(lambda i: _worker_cmd(f"--workdir={workdir}", *args))
    outs = _finish(procs, 400)  # a hang fails here
    assert f"1 run(s) held by live workers, left to them: {ids[0]}" in outs[0][1]
    assert json.loads((held / "lock").read_text()) == holder  # untouched
    assert not (held / "result.json").exists() and not (held / "starts.log").exists()
    for run_id in ids[1:]:
        rec = json.loads((workdir / "runs" / run_id / "result.json").read_text())
        assert rec["status"] == "ok", rec.get("error")
        assert len((workdir / "runs" / run_id / "starts.log").read_text().splitlines()) == 1


_DECIDE = """
import json, sys
from launch import multihost
assert multihost.maybe_initialize()
from scalable_elicitation.sharding import broadcast_flag
own = [bool(int(x)) for x in sys.argv[1].split(",")]
print(json.dumps([broadcast_flag(x) for x in own]))
"""


def test_two_processes_save_together_whatever_their_own_clocks_say(tmp_path):
    """Whether to save is process 0's call on every process (`sharding.broadcast_flag`, used by
    the engine's saves): with clocks that disagree, both save or both skip, never one alone
    (Orbax waits for every process, so a split decision hangs)."""
    own = {0: "1,0,1,0", 1: "0,1,1,0"}  # each process's own clock: save now?
    procs = _two_processes(lambda i: [sys.executable, "-c", _DECIDE, own[i]])
    outs = _finish(procs, 120)
    decided = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert decided[0] == decided[1] == [True, False, True, False]  # process 0's clock


_GROUP = """
import json, sys
import jax, numpy as np
from launch import multihost
multi = multihost.maybe_initialize()
from scalable_elicitation.batching import BatchSpec, Features, FeatureStats
from scalable_elicitation.groups import Member, run_stages_grouped
from scalable_elicitation.sharding import make_mesh
from scalable_elicitation.stage import StageConfig, predict
from scalable_elicitation.train import Steps
steps = Steps.for_probe(16, 2, make_mesh({"data": jax.device_count()}))
rng = np.random.default_rng(0)
members = []
for i, n in enumerate((60, 90, 40)):
    x = rng.normal(size=(n, 16)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    data = FeatureStats.of(x).apply(Features(x, np.zeros(n, bool)))
    tr, va = np.arange(n - 12), np.arange(n - 12, n)
    members.append(Member(steps.fresh_params(jax.random.key(i)), data.take(tr), y[tr],
                          data.take(va), y[va], StageConfig(lr=0.02, max_visits=1500),
                          seed_path=[i], key=jax.random.key(10 + i)))
spec = BatchSpec(32, (1,), 0)
out = run_stages_grouped(steps, members, spec=spec, group_sharding=sys.argv[1])
test = FeatureStats.of(x).apply(Features(x, np.zeros(len(x), bool)))
print(json.dumps([{"record": r.record, "evaluations": r.evaluations,
                   "scores": predict(steps, r.params, test, spec).tolist()} for r in out]))
"""


def test_two_processes_train_a_group_with_whole_runs_on_each_process(tmp_path):
    """Whole runs on the devices of two processes (`group_sharding=runs`, one device each): no
    process reads an array it cannot address, both get every member's record, and each member
    equals the group trained by one process on one device."""
    single = subprocess.run([sys.executable, "-c", _GROUP, "rows"], cwd=ROOT, env=_env(1),
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    alone = json.loads(single.stdout.strip().splitlines()[-1])
    procs = _two_processes(lambda i: [sys.executable, "-c", _GROUP, "runs"])
    outs = _finish(procs, 180)
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert got[0] == got[1]  # every process sees all members' results
    assert len(got[0]) == len(alone) == 3
    for a, b in zip(alone, got[0]):
        assert a["evaluations"] == b["evaluations"] > 0
        assert a["record"]["steps"] == b["record"]["steps"]
        for path, x, y in _floats(a["record"], b["record"]):
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-5, (path, x, y)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)

_LOAD = """
import hashlib, json, sys
from launch import multihost
assert multihost.maybe_initialize()
import numpy as np
from flax import nnx
from scalable_elicitation.models import load_pretrained
from scalable_elicitation.models import weights as W
from scalable_elicitation.sharding import make_mesh
reads, real_get, real_slice = [], W.SafetensorsSource.get, W.SafetensorsSource.get_slice
W.SafetensorsSource.get = lambda s, n: reads.append([n, None]) or real_get(s, n)
def get_slice(source, name, index):
    out = real_slice(source, name, index)
    reads.append([name, int(out.size)])
    return out
W.SafetensorsSource.get_slice = get_slice
bundle = load_pretrained(sys.argv[1], dtype="float32", trainable="head",
                         mesh=make_mesh({"fsdp": 2}))
shards = {}
for path, var in nnx.to_flat_state(nnx.state(bundle.model, nnx.Param)):
    for shard in var.value.addressable_shards:
        index = [list(s.indices(n)[:2]) for s, n in zip(shard.index, var.value.shape)]
        digest = hashlib.sha256(np.asarray(shard.data).tobytes()).hexdigest()
        shards.setdefault(".".join(map(str, path)), []).append([index, digest])
print(json.dumps({"shards": shards, "reads": reads}))
"""


def test_two_processes_each_read_and_load_only_their_weight_shards(tmp_path):
    """fsdp=2 over two processes of one device each: the model loads, each process's shards
    equal the single-process load's slices bit for bit, and each process reads exactly its half
    of every sharded tensor (`jax.make_array_from_callback`), never a whole one."""
    folder = save_tiny_qwen2(tmp_path / "tiny")
    procs = _two_processes(lambda i: [sys.executable, "-c", _LOAD, str(folder)])
    outs = _finish(procs, 120)
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    single = load_pretrained(folder, dtype="float32", trainable="head",
                             mesh=make_mesh({"fsdp": 2}))
    params = {".".join(map(str, path)): var.value
              for path, var in nnx.to_flat_state(nnx.state(single.model, nnx.Param))}
    targets = {m.source: m.target for m in W.llama_hf_map(single.config)[0]}
    sizes = {W.normalise_hf_name(k, "llama"): v.size for k, v in tiny_qwen2_tensors().items()}
    for run in got:
        assert [n for n, size in run["reads"] if size is None] == []  # `get` reads whole
        for target in set(targets.values()):
            (index, digest), = run["shards"][target]  # one local device
            want = np.asarray(params[target])[tuple(slice(a, b) for a, b in index)]
            assert hashlib.sha256(want.tobytes()).hexdigest() == digest, (target, index)
        read = {}
        for name, size in run["reads"]:
            read[name] = read.get(name, 0) + size
        assert set(read) == set(targets)
        for name, target in targets.items():
            half = not params[target].sharding.is_fully_replicated
            assert read[name] == (sizes[name] // 2 if half else sizes[name]), name
    assert got[0]["shards"]["embed"][0][0] != got[1]["shards"]["embed"][0][0]
