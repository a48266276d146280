"""How many runs train together, and where (docs/design.md#many-runs-at-once): the grouping
policy in one place, without JAX, so `planning` validates a config with it before anything
loads and the scheduler (`runner`) sizes groups with it from numbers it reads off the learner
and the devices.

- `group_sharding`: "rows" (each run's batch over the data axis, as a run alone), "runs"
  (whole runs on devices; the model must fit one device: mesh fsdp = tensor = 1), or "auto"
  (`placement`: whole runs when they fill the devices and the model fits one, else rows).
- The automatic group size (`config.parallel_runs = 0`): as many runs as fit `memory_share`
  of the free memory (a member's bytes from `memory.estimate`), at most the platform's cap
  (`max_auto_group`).
- A worker claims `RUNS_PER_GROUP_CLAIMED` groups' runs at once (`experiment`), so groups form
  from stages of similar length.
"""
from __future__ import annotations

GROUP_SHARDINGS = ("auto", "rows", "runs")
# The largest automatic group per (platform, learner is a probe). On CPU a member's step costs
# about the same inside a group as alone (no idle units to fill), so a group only saves host
# and per-call work, and long groups idle their finished members. Measured on 2 cores
# (benchmarks/RESULTS.md): probes in groups of 8 trained the default grid as fast as one at a
# time (16 and 64 were slower), which keeps the group engine in use on the default; a
# transformer's group loop compiles for 5-9 s (tiny LoRA: 0.7x), so finetuning goes one at a
# time there. An accelerator reads the shared frozen base once per step for all members.
MAX_AUTO_GROUP = {("cpu", True): 8, ("cpu", False): 1}
MAX_AUTO_GROUP_ACCELERATOR = 64
# On an accelerator the memory model's group size is checked by compiling the group loop
# (`runner.compiled_group_size`): the largest group whose compiled bytes stay within this share
# of a device's memory (the rest for the runtime, the scoring step's buffers and fragmentation).
COMPILED_SHARE = 0.9
RUNS_PER_GROUP_CLAIMED = 4  # a worker claims (and drives) this many groups' runs at once


def placement_error(mode: str, mesh_shape: dict) -> str | None:
    """Why `group_sharding=mode` cannot place groups on a mesh of this shape (None if it
    can)."""
    if mode not in GROUP_SHARDINGS:
        return f"{mode!r}; allowed: {', '.join(GROUP_SHARDINGS)}"
    if mode == "runs" and mesh_shape.get("fsdp", 1) * mesh_shape.get("tensor", 1) > 1:
        return (f"'runs' puts whole runs on devices, so the model must fit one device: set "
                f"mesh.fsdp and mesh.tensor to 1 (mesh is {dict(mesh_shape)}) or use 'rows'")
    return None


def placement(mode: str, mesh_shape: dict, members: int) -> str:
    """Where a group of `members` runs goes: `mode` itself unless "auto", which puts whole
    runs on devices when the model lives whole on each device (mesh fsdp = tensor = 1), the
    data axis has several devices, and the group has a member for each of them. Then every
    device computes whole batches of its own members, the same work per device as splitting
    each run's rows over the devices, without the per-step all-reduce of every run's
    gradients; a smaller group would leave devices to padding, so its rows are split
    instead (benchmarks/RESULTS.md, "Placement")."""
    if mode != "auto":
        return mode
    whole = mesh_shape.get("fsdp", 1) * mesh_shape.get("tensor", 1) == 1
    data = mesh_shape.get("data", 1)
    return "runs" if whole and data > 1 and members >= data else "rows"


def max_auto_group(platform: str, probe: bool) -> int:
    """The platform's cap on an automatic group."""
    return MAX_AUTO_GROUP.get((platform, probe), MAX_AUTO_GROUP_ACCELERATOR)


def auto_group_size(per_run: int, free_bytes: int, n_runs: int, cap: int,
                    memory_share: float = 0.5) -> int:
    """How many members of `per_run` bytes fit `memory_share` of `free_bytes`: at least 1, at
    most `cap` and the number of runs."""
    return int(max(1, min(cap, n_runs, memory_share * free_bytes // max(per_run, 1))))
