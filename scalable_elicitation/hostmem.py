"""Host memory for runs on the CPU backend: keep freed memory in the process.

XLA:CPU allocates each call's temporaries afresh, as one block (1.6 GiB for a LoRA step of
SmolLM2-135M at 32 x 64), from one of its worker threads, and frees it when the call ends.
glibc's malloc serves a block that large with its own `mmap` (a worker thread's arena cannot
hold it) and unmaps it on free, so every call faults the whole block in again, zero-filled by
the kernel, 4 KiB at a time: about 400,000 page faults and a second of kernel time per step on
2 cores, a tenth of the step (benchmarks/RESULTS.md, "Ours against PyTorch + peft").
PyTorch's allocator keeps what it freed, so its steady-state step faults no page at all.

`prepare` tells glibc to do the same for a run on the CPU: one arena for every thread, no
`mmap`, no trimming, so a freed block is reused by the next call. It is process-wide, so the
entry points call it, before JAX starts its CPU threads (a thread picks its arena at its first
allocation). It changes where memory comes from, not what is computed: records are unchanged.
The cost is that the process keeps its peak memory until it exits. On a GPU or TPU the
temporaries live on the device, and host threads (tokenisers, data) keep their own arenas,
so nothing is changed there. No JAX import here.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_UP_TO = 2**31 - 1  # M_TRIM_THRESHOLD is an int: free memory above the top beyond this
# is still returned to the system (a run whose temporaries exceed 2 GiB keeps faulting)
ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")

_applied = False


def accelerator_installed() -> bool:
    """Whether an installed package gives JAX a GPU or TPU backend (a CUDA or ROCm plugin, or
    libtpu), read from the installed distributions without starting any backend."""
    names = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return any(n.lower().startswith(ACCELERATOR_PLUGINS) for n in names)


def runs_on_cpu(wanted: str) -> bool:
    """Whether a run asking for `wanted` (config.platform: auto, cpu, gpu or tpu) will run on
    the CPU backend, decided without starting one: "cpu", JAX_PLATFORMS=cpu, or "auto" with
    no accelerator plugin installed."""
    if wanted == "cpu" or os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    return wanted == "auto" and not accelerator_installed()


def keep_freed_memory() -> bool:
    """glibc's malloc, for this whole process: one arena, no `mmap`, no trimming (see the
    module docstring). Returns whether it applied (glibc only; elsewhere nothing changes)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_UP_TO)))
    return _applied


def prepare(wanted: str) -> bool:
    """Entry points call this first, before JAX starts a backend: on a run for the CPU
    (`runs_on_cpu`), keep freed memory. Returns whether it did."""
    return runs_on_cpu(wanted) and keep_freed_memory()
