"""Multi-host JAX start-up: `jax.distributed.initialize()` when the environment asks for it.

One process per host (per GPU node, per TPU VM worker) runs the same command. Switches:

  SE_MULTIHOST=1                      initialise; JAX detects the cluster itself (SLURM under
                                      srun, TPU pod slices, Open MPI, Kubernetes JobSet)
  SE_COORDINATOR_ADDRESS=host:port    explicit set-up (implies SE_MULTIHOST); needs also
  SE_NUM_PROCESSES=N SE_PROCESS_ID=i  ... the process count and this process's index
  SE_LOCAL_DEVICE_IDS=0,1             optional: the local devices this process uses

On CPU (JAX_PLATFORMS=cpu) cross-process collectives go through gloo, which must be chosen
before the backend starts; this module does that.
"""
from __future__ import annotations

import os
from typing import Mapping

ENV_SWITCH = "SE_MULTIHOST"
_EXPLICIT = ("SE_COORDINATOR_ADDRESS", "SE_NUM_PROCESSES", "SE_PROCESS_ID")


def requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was launched as one of several (env switch or explicit set-up)."""
    return env.get(ENV_SWITCH, "").lower() in ("1", "true", "yes") or any(
        env.get(k) for k in _EXPLICIT)


def initialize_kwargs(env: Mapping[str, str] = os.environ) -> dict:
    """Arguments for `jax.distributed.initialize` from SE_* variables (empty: auto-detect)."""
    given = {k: env.get(k) for k in _EXPLICIT if env.get(k)}
    if not given:
        return {}
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
        kwargs["local_device_ids"] = [int(x) for x in env["SE_LOCAL_DEVICE_IDS"].split(",")]
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


def broadcast_flag(value: bool) -> bool:
    """Process 0's `value`, on every process (a collective: every process must call it)."""
    import jax
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(1 if value else 0)))
