"""Accelerator targets a sweep can be compiled for on a CPU-only machine (launch/preflight.py):
TPU slices by the names TPU VMs are created with, GPUs by card and count.

Each target names how to get its compile-only devices (`jax.experimental.topologies`) and the
numbers a roofline needs: memory per device, peak dense bfloat16 FLOP/s per device, memory
bandwidth per device and interconnect bandwidth per device (one direction). The peaks are the
vendors' published figures (Cloud TPU system architecture pages; NVIDIA's H100/H200/A100 data
sheets, dense, without sparsity); memory and bandwidth of GPUs are read from the XLA device
descriptions in `target_specs/` (docs/preflight.md names their source).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re

SPECS = pathlib.Path(__file__).parent / "target_specs"
GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu" | "cuda"
    topology: str  # TPU: "v5e:2x4"; CUDA: "HOSTSx1xGPUS"... see `devices`
    chips: int
    hosts: int
    # bytes of device memory a program may use per chip (TPU: as the compiler counts it; GPU:
    # the card's times the share JAX's client gives a process, `gpu_memory_fraction`)
    memory: int
    peak_flops: float  # dense bfloat16 FLOP/s per chip
    hbm_bw: float  # bytes/s per chip
    link_bw: float  # interconnect bytes/s per chip, one direction (ICI / NVLink)
    chips_per_host: tuple[int, int, int] | None = None
    chip_config: str | None = None  # TPU v4/v5p: "megacore", one device per chip
    spec_file: str | None = None  # CUDA: the XLA GpuTargetConfig (text proto) of the card
    extra: str = "tpu"  # the setup.py extra whose JAX can compile for it
    card_memory: int = 0  # GPU: the card's whole memory (its description's)

    @property
    def kind(self) -> str:
        return "gpu" if self.platform == "cuda" else "tpu"


def _tpu(name, topology, chips, hosts, memory_gib, tflops, hbm_gbs, ici_gbs, per_host,
         megacore=False):
    return Target(name, "tpu", topology, chips, hosts, int(memory_gib * GIB), tflops * 1e12,
                  hbm_gbs * 1e9, ici_gbs * 1e9, per_host, "megacore" if megacore else None)


def _gpu(name, spec_file, count, hosts, tflops, nvlink_gbs):
    return Target(name, "cuda", f"1x{hosts}x{count // hosts}", count, hosts, 0, tflops * 1e12,
                  0.0, nvlink_gbs * 1e9, spec_file=spec_file, extra="gpu")


# TPU memory is what XLA's TPU compiler offers a program (v5e: "available HBM (15.75G)" in its
# out-of-memory message for a 16 GiB chip); ICI: per chip, one direction.
TARGETS = {t.name: t for t in [
    _tpu("v4-8", "v4:2x2x1", 4, 1, 32, 275, 1228, 300, (2, 2, 1), megacore=True),
    _tpu("v5litepod-8", "v5e:2x4", 8, 1, 15.75, 197, 819, 200, (2, 4, 1)),
    _tpu("v5litepod-32", "v5e:4x8", 32, 8, 15.75, 197, 819, 200, (2, 2, 1)),
    _tpu("v5p-8", "v5p:2x2x1", 4, 1, 95, 459, 2765, 600, (2, 2, 1), megacore=True),
    _tpu("v5p-64", "v5p:2x4x4", 32, 8, 95, 459, 2765, 600, (2, 2, 1), megacore=True),
    _tpu("v6e-8", "v6e:2x4", 8, 1, 31.25, 918, 1640, 448, (2, 4, 1)),
    _gpu("h100x8", "h100_sxm.txtpb", 8, 1, 989, 450),
    _gpu("h100x16", "h100_sxm.txtpb", 16, 2, 989, 450),
    _gpu("h200x8", "h200.txtpb", 8, 1, 989, 450),
    _gpu("a100-80gbx8", "a100_sxm_80.txtpb", 8, 1, 312, 300),
]}
ALIASES = {"v5e-8": "v5litepod-8", "v5e-32": "v5litepod-32", "2xh100x8": "h100x16"}


def get(name: str) -> Target:
    """The target called `name` (or an alias); ValueError listing the known ones."""
    key = ALIASES.get(name, name)
    if key not in TARGETS:
        raise ValueError(f"--target={name!r}; known: {', '.join(TARGETS)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    target = TARGETS[key]
    if target.platform == "cuda":  # memory and bandwidth from the card's description
        text = (SPECS / target.spec_file).read_text()
        card = int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))
        bw = float(re.search(r"memory_bandwidth:\s*(\d+)", text).group(1))
        target = dataclasses.replace(target, memory=int(card * gpu_memory_fraction()),
                                     card_memory=card, hbm_bw=bw)
    return target


def gpu_memory_fraction(env=None) -> float:
    """The share of a GPU's memory JAX's client lets a process use: XLA_CLIENT_MEM_FRACTION
    (or its older name XLA_PYTHON_CLIENT_MEM_FRACTION) where set, else JAX's default 0.75,
    which also bounds the allocator with preallocation off (jax.readthedocs.io, "GPU memory
    allocation"). A preflight reads the environment the launch runs in (launch/
    gpu_slurm.sbatch runs it before `srun`), so it sizes groups against what the sweep's
    `bytes_limit` will say."""
    env = os.environ if env is None else env
    for name in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        if env.get(name):
            try:
                value = float(env[name])
            except ValueError:
                value = -1.0
            if not 0 < value <= 1:
                raise ValueError(f"{name}={env[name]!r}: a fraction in (0, 1]")
            return value
    return 0.75


class MissingExtra(RuntimeError):
    """The installed JAX cannot compile for a target; the message names the extra."""


def devices(target: Target) -> list:
    """The target's compile-only devices, every process's (a multi-host slice is compiled as
    the whole pod). MissingExtra when this JAX cannot make them."""
    import importlib.util

    from jax.experimental import topologies
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM
    # compile-only use takes no chip: several processes (test workers) may load libtpu
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    hint = (f"the installed JAX cannot compile for {target.name} ({target.platform}); install "
            f"the project's '{target.extra}' extra: pip install -e '.[{target.extra}]'"
            + ("" if target.extra != "gpu" else " (jax[cuda12]; run with JAX_PLATFORMS=cpu)"))
    plugin = "libtpu" if target.platform == "tpu" else "jax_cuda12_plugin"
    if importlib.util.find_spec(plugin) is None:
        raise MissingExtra(f"{hint} [no module {plugin}]")
    try:
        if target.platform == "tpu":
            kw = {"chips_per_host_bounds": target.chips_per_host}
            if target.chip_config:
                kw["chip_config_name"] = target.chip_config
            desc = topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                                **kw)
        else:
            desc = topologies.get_topology_desc(
                platform="cuda", topology_name="cuda",
                target_config=(SPECS / target.spec_file).read_text(),
                topology=target.topology)
    except Exception as err:  # noqa: BLE001 - no plugin: a missing module or backend error
        raise MissingExtra(f"JAX could not make {target.name}'s compile-only devices with "
                           f"{plugin} installed: {type(err).__name__}: "
                           f"{str(err).splitlines()[0][:300]}") from None
    found = list(desc.devices)
    if len(found) != target.chips:
        raise MissingExtra(f"{target.name}: JAX made {len(found)} devices of topology "
                           f"{target.topology}, expected {target.chips}; {hint}")
    return found
