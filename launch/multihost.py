"""Multi-host JAX start-up: `jax.distributed.initialize()` when the environment asks for it.

Every process of the job runs the same command (one per TPU VM worker; under SLURM one per
node or one per GPU). Switches:

  SE_MULTIHOST=1                      initialise; JAX detects the cluster itself (SLURM under
                                      srun, TPU pod slices, Open MPI, Kubernetes JobSet)
  SE_COORDINATOR_ADDRESS=host:port    explicit set-up (implies SE_MULTIHOST); needs also
  SE_NUM_PROCESSES=N SE_PROCESS_ID=i  ... the process count and this process's index
  SE_LOCAL_DEVICE_IDS=0,1             optional: the local devices this process uses

Under SLURM, JAX alone would give each process the one GPU numbered SLURM_LOCALID, so a task
started per node would train on its node's first GPU only. `slurm_local_device_ids` instead
splits the GPUs a task sees (CUDA_VISIBLE_DEVICES) evenly over the tasks of its node: all of
them for one task per node, one each for one task per GPU.

On CPU (JAX_PLATFORMS=cpu) cross-process collectives go through gloo, which must be chosen
before the backend starts; this module does that.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

ENV_SWITCH = "SE_MULTIHOST"
_EXPLICIT = ("SE_COORDINATOR_ADDRESS", "SE_NUM_PROCESSES", "SE_PROCESS_ID")


def _int_list(key: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{key}={text!r} must be comma-separated integers, e.g. 0,1") from None


def tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed task counts, e.g. "8(x2),4" -> [8, 8, 4]."""
    counts = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"unreadable SLURM task layout {text!r}")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts


def slurm_local_device_ids(env: Mapping[str, str] = os.environ) -> list[int] | None:
    """This SLURM task's share of the GPUs it sees, or None outside a SLURM step with GPUs
    listed in CUDA_VISIBLE_DEVICES (JAX's own default applies then)."""
    if "SLURM_LOCALID" not in env or not env.get("CUDA_VISIBLE_DEVICES"):
        return None
    visible = [d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    layout = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not visible or not layout:
        return None
    tasks = tasks_per_node(layout)[int(env.get("SLURM_NODEID", 0))]
    local = int(env["SLURM_LOCALID"])
    on_node = int(env.get("SLURM_GPUS_ON_NODE") or 0)
    if len(visible) < tasks or (on_node and len(visible) < on_node):
        return list(range(len(visible)))  # srun bound this task to its own GPUs
    if len(visible) % tasks:
        raise ValueError(
            f"this node's {len(visible)} GPUs do not split evenly over its {tasks} SLURM "
            "tasks; start one task per node or one per GPU (launch/gpu_slurm.sbatch --help)")
    share = len(visible) // tasks
    return list(range(local * share, (local + 1) * share))


def requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was launched as one of several (env switch or explicit set-up)."""
    return env.get(ENV_SWITCH, "").lower() in ("1", "true", "yes") or any(
        env.get(k) for k in _EXPLICIT)


def initialize_kwargs(env: Mapping[str, str] = os.environ) -> dict:
    """Arguments for `jax.distributed.initialize` from SE_* variables (empty: auto-detect)."""
    given = {k: env.get(k) for k in _EXPLICIT if env.get(k)}
    if not given:  # JAX detects the cluster; only the local devices may need saying
        if env.get("SE_LOCAL_DEVICE_IDS"):
            return {"local_device_ids": _int_list("SE_LOCAL_DEVICE_IDS",
                                                  env["SE_LOCAL_DEVICE_IDS"])}
        ids = slurm_local_device_ids(env)
        return {} if ids is None else {"local_device_ids": ids}
    missing = [k for k in _EXPLICIT if k not in given]
    if missing:
        raise ValueError(f"explicit multi-host set-up needs all of {list(_EXPLICIT)}; missing "
                         f"{missing} (or set only {ENV_SWITCH}=1 and let JAX detect the cluster)")
    kwargs = {"coordinator_address": given["SE_COORDINATOR_ADDRESS"]}
    for key, name in (("SE_NUM_PROCESSES", "num_processes"), ("SE_PROCESS_ID", "process_id")):
        try:
            kwargs[name] = int(given[key])
        except ValueError:
            raise ValueError(f"{key}={given[key]!r} must be an integer") from None
    if not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
        raise ValueError(f"SE_PROCESS_ID={kwargs['process_id']} must be in "
                         f"[0, SE_NUM_PROCESSES={kwargs['num_processes']})")
    if env.get("SE_LOCAL_DEVICE_IDS"):
        kwargs["local_device_ids"] = _int_list("SE_LOCAL_DEVICE_IDS", env["SE_LOCAL_DEVICE_IDS"])
    return kwargs


def maybe_initialize(env: Mapping[str, str] = os.environ) -> bool:
    """Initialise multi-host JAX if requested; returns whether it did. Call before any other
    JAX use (the backend must not have started)."""
    if not requested(env):
        return False
    kwargs = initialize_kwargs(env)
    import jax
    if env.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def is_leader() -> bool:
    import jax
    return jax.process_index() == 0


def broadcast_int(value: int) -> int:
    """Process 0's `value`, on every process (`sharding.broadcast_int`, imported here lazily:
    this module loads before JAX may start)."""
    from scalable_elicitation.sharding import broadcast_int as broadcast
    return broadcast(value)
