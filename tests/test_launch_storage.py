"""Where a sweep's files live: local folders and gs:// URIs through one path layer
(scalable_elicitation.paths), and locks refused, before any run, on storage that cannot hold them.

gs:// is served offline by a fake epath backend that maps the bucket to a temporary folder, so
these tests show which path layer the files take, not Cloud Storage's own behaviour.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath

from launch import lock as lock_lib
from launch import sweep as sweep_lib
from scalable_elicitation import paths, records

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "cost_sweep.py")


class _FakeGcs(epath_backend._OsPathBackend):  # noqa: SLF001  (epath's own local backend)
    """gs://BUCKET/KEY stored as ROOT/BUCKET/KEY; records every path it is asked about."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.seen = []

    def _local(self, path):
        text = os.fspath(path)
        assert text.startswith("gs://"), text  # only URIs may reach this backend
        self.seen.append(text)
        return str(self.root / text[len("gs://"):])

    def _uri(self, local):
        return "gs://" + os.path.relpath(local, self.root)


def _wrap(name, n_paths=1):
    def method(self, *args, **kwargs):
        args = [self._local(a) for a in args[:n_paths]] + list(args[n_paths:])
        return getattr(epath_backend._OsPathBackend, name)(self, *args, **kwargs)
    return method


for _name in ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree", "remove",
              "stat"):
    setattr(_FakeGcs, _name, _wrap(_name))
for _name in ("rename", "replace", "copy"):
    setattr(_FakeGcs, _name, _wrap(_name, 2))
_FakeGcs.glob = lambda self, path: [self._uri(p) for p in
                                    epath_backend._OsPathBackend.glob(self, self._local(path))]


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """A fake gs:// store in tmp_path/bucket-root, with the test running in tmp_path/cwd."""
    fake = _FakeGcs(tmp_path / "bucket-root")
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", fake)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield fake
    assert not (cwd / "gs:").exists() and list(cwd.iterdir()) == []  # nothing local


def test_paths_keep_uris_and_refuse_the_pathlib_mangled_form():
    uri = paths.as_path("gs://bucket/sweep") / "runs" / "abc"
    assert str(uri) == "gs://bucket/sweep/runs/abc" and paths.is_uri(uri)
    assert isinstance(paths.as_path("rel/dir"), pathlib.Path)
    with pytest.raises(ValueError, match="gs://bucket/sweep"):
        paths.as_path(pathlib.Path("gs://bucket/sweep"))  # pathlib made it gs:/bucket/sweep
    with pytest.raises(ValueError, match="a run lock needs a filesystem path"):
        lock_lib.RunLock("gs://bucket/sweep/runs/abc")


def test_records_and_scores_on_gs(gcs, tmp_path):
    from scalable_elicitation.records import write_scores
    run = "gs://bucket/sweep/runs/abc"
    records.atomic_write_json(f"{run}/result.json", {"status": "ok", "n": np.int64(3)})
    assert records.read_record(f"{run}/result.json") == {"status": "ok", "n": 3}
    assert records.read_record(f"{run}/missing.json") is None
    write_scores(paths.as_path(run) / "scores.parquet", ["a", "b"], [0, 1], [0.5, -0.5])
    import pyarrow.parquet as pq
    local = tmp_path / "bucket-root" / "bucket" / "sweep" / "runs" / "abc"
    assert json.loads((local / "result.json").read_text())["status"] == "ok"
    assert pq.read_table(local / "scores.parquet").column("id").to_pylist() == ["a", "b"]
    assert f"{run}/scores.parquet" in gcs.seen


def test_checkpoints_on_gs_keep_the_uri_and_are_removed_there(gcs, tmp_path, monkeypatch):
    from scalable_elicitation import checkpoint
    given = []

    class Manager:  # Orbax writes arrays through tensorstore's own gcs driver: not offline
        def __init__(self, directory, **kwargs):
            given.append(directory)

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Manager)
    run = "gs://bucket/sweep/runs/abc"
    checkpoint.StageCheckpointer(paths.as_path(run) / "ckpt" / "stage0").manager  # made lazily
    assert [str(d) for d in given] == [f"{run}/ckpt/stage0"] and paths.is_uri(given[0])
    ckpt = tmp_path / "bucket-root" / "bucket" / "sweep" / "runs" / "abc" / "ckpt" / "stage0"
    ckpt.mkdir(parents=True)
    (ckpt / "state").write_text("x")
    checkpoint.remove_run_checkpoints(run)
    assert not ckpt.parent.exists() and f"{run}/ckpt" in gcs.seen


def test_sweep_run_dirs_and_status_on_gs(gcs, tmp_path):
    from ml_collections import config_flags  # noqa: F401  (the config file imports it)
    import importlib.util

    from scalable_elicitation.runner import RunSpec, Sweep
    spec_ = importlib.util.spec_from_file_location("cost_sweep_cfg", CONFIG)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    sweep = Sweep(module.get_config("smoke"), "gs://bucket/sweep")
    spec = RunSpec(n_weak=4, n_oracle=2, seed=0, budget=None, fractions=(), grid_points=())
    run_dir = sweep.run_dir(spec)
    assert str(run_dir).startswith("gs://bucket/sweep/runs/") and sweep.status(spec) == "todo"
    records.atomic_write_json(run_dir / "result.json", {"status": "ok"})
    assert sweep.status(spec) == "done"


def test_lock_storage_is_checked_against_the_mount_table():
    mounts = ("/dev/sda1 / ext4 rw 0 0\n"
              "bucket /mnt/gcs fuse.gcsfuse rw,nosuid,nodev 0 0\n"
              "filer:/vol /mnt/nfs nfs4 rw 0 0\n"
              "bucket2 /mnt/with\\040space fuse.gcsfuse rw 0 0\n")
    assert lock_lib.mount_type("/mnt/gcs/sweeps/a/runs", mounts) == "fuse.gcsfuse"
    assert lock_lib.mount_type("/mnt/gcsother/x", mounts) == "ext4"
    assert lock_lib.mount_type("/mnt/with space/x", mounts) == "fuse.gcsfuse"
    problem = lock_lib.storage_problem("/mnt/gcs/sweeps/a/runs", mounts)
    assert "fuse.gcsfuse" in problem and "--lock_dir" in problem
    assert lock_lib.storage_problem("/mnt/nfs/sweeps/a/runs", mounts) is None
    assert "object-store URI" in lock_lib.storage_problem("gs://bucket/locks", mounts)


def test_sweep_worker_storage_checks(monkeypatch):
    assert "gcsfuse" in sweep_lib.storage_problem("gs://bucket/sweep", None, dry_run=True)
    assert "object-store URI" in sweep_lib.storage_problem("/tmp/w", "gs://bucket/locks")
    monkeypatch.setattr(lock_lib, "mount_type", lambda path, mounts=None: (
        "fuse.gcsfuse" if str(path).startswith("/mnt/gcs") else "ext4"))
    assert "fuse.gcsfuse" in sweep_lib.storage_problem("/mnt/gcs/sweep", None)
    assert sweep_lib.storage_problem("/mnt/gcs/sweep", None, dry_run=True) is None  # no locks
    assert sweep_lib.storage_problem("/mnt/gcs/sweep", "/var/tmp/se-locks") is None


@pytest.mark.parametrize("extra", [("--dry_run",), ()])
def test_cli_with_a_gs_workdir_errors_before_touching_anything(tmp_path, extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("SLURM_ARRAY_TASK_ID", None)
    had_root_gs = pathlib.Path("/gs").exists()
    out = subprocess.run([sys.executable, "-m", "launch.sweep", f"--config={CONFIG}:smoke",
                          "--workdir=gs://bucket/sweep", *extra], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "error: --workdir=gs://bucket/sweep" in out.stderr
    assert "gcsfuse" in out.stderr and not out.stdout
    assert list(tmp_path.iterdir()) == []  # no local gs: folder, nothing at all
    assert pathlib.Path("/gs").exists() == had_root_gs


def test_worker_keeps_locks_in_lock_dir(tmp_path):
    """--lock_dir: the lock and starts log of a run live in LOCK_DIR/RUN_ID."""

    @dataclasses.dataclass
    class FakeSweep:
        root: pathlib.Path

        def run_dir(self, spec):
            return self.root / "runs" / spec.name

        def status(self, spec):
            return "todo"

        def run(self, spec):
            assert (tmp_path / "locks" / spec.name / "lock").exists()  # held while running
            return {"run_id": spec.name, "status": "ok", "metrics": None}

        def group_size(self, specs):
            return 2  # runs claimed, and run, two at a time

        def run_group(self, specs, logs=None, **kwargs):
            return [self.run(s) for s in specs]

        def group_shapes(self, specs):
            return None

    worker = sweep_lib.Worker(FakeSweep(tmp_path / "work"), lock_root=tmp_path / "locks",
                              out=lambda msg: None)
    spec = types.SimpleNamespace(name="run1", n_weak=1, n_oracle=0, seed=0)
    assert [r["run_id"] for r in worker.run_all([spec])] == ["run1"]
    assert len(lock_lib.starts(tmp_path / "locks" / "run1")) == 1
    assert not (tmp_path / "work").exists()  # the fake sweep itself wrote nothing


def test_compilation_cache_in_the_workdir_unless_one_is_chosen(tmp_path):
    """Entry points keep XLA's compiled programs in WORKDIR/cache/xla, so a rerun or a resumed
    sweep skips its compiles; a cache chosen already (here the test suite's) is kept."""
    import jax

    from scalable_elicitation import experiment

    class Sweep:
        cache_dir = tmp_path / "cache"

    chosen = jax.config.jax_compilation_cache_dir
    assert chosen  # tests/conftest.py chose one
    assert experiment.use_compilation_cache(Sweep) == chosen
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert experiment.use_compilation_cache(Sweep) == str(tmp_path / "cache" / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache" / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", chosen)
