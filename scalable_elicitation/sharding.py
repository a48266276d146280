"""Logical axis names -> mesh axes, by one rules table.

Model code tags every parameter dimension with a logical name (metadata key `axes` on the NNX
Variable). This module is the only place that reads that metadata. A dimension that its mesh axis
does not divide (SmolLM2's 9 heads on tensor=2) is replicated with a warning, not an error.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None for replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("lora", None),
    ("labels", None),
    ("norm", None),
    ("positions", None),
    ("types", None),
)

AXES_KEY = "axes"


def freeze_rules(rules) -> tuple:
    """Rules as a hashable tuple (configs may hold lists)."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh with explicit Auto axis types (newer JAX defaults differ).

    `shape` maps axis names to sizes; -1 in one place takes the remaining devices; a mesh
    smaller than the device count uses the first devices.
    """
    if not isinstance(shape, Mapping):
        shape = dict(zip(MESH_AXES, shape))
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} unknown; allowed: {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    devices = devices if devices is not None else jax.devices()
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {dict(shape)}: at most one axis may be -1")
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        if n % rest:
            raise ValueError(f"mesh shape {dict(shape)} does not divide {n} devices")
        sizes[sizes.index(-1)] = n // rest
    if int(np.prod(sizes)) > n:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"have {n}; use -1 on one axis to take the rest")
    devices = list(devices)[:int(np.prod(sizes))]  # a smaller mesh uses the first devices
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
    """PartitionSpec for one array from its logical axis names and the rules table."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used and mesh.shape.get(t, 1) > 1)
        size = int(np.prod([mesh.shape[t] for t in targets])) if targets else 1
        if targets and dim % size:
            warnings.warn(f"dimension {name!r} of size {dim} is not divisible by mesh axes "
                          f"{targets} (size {size}); replicating it", stacklevel=2)
            targets = ()
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return P(*spec)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_specs(state, mesh: Mesh, rules=DEFAULT_RULES):
    """PartitionSpecs for an NNX State (or abstract state), from each Variable's `axes`."""
    def one(v):
        if not isinstance(v, nnx.Variable):  # plain arrays (e.g. a probe's head): replicated
            return P()
        axes = v.get_metadata().get(AXES_KEY)
        shape = v.value.shape
        if axes is None:
            axes = (None,) * len(shape)
        if len(axes) != len(shape):
            raise ValueError(f"axes {axes} do not match shape {shape}")
        return v.replace(logical_to_spec(axes, shape, mesh, rules))
    return jax.tree.map(one, state, is_leaf=_is_var)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an NNX State, matching its tree structure."""
    specs = state_specs(state, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES, leading: int = 0) -> NamedSharding:
    """Sharding of a [B, ...] batch array: batch over the data-parallel axes, rest replicated.
    `leading` unsharded axes may come first (e.g. [T, B, ...] for a chunk of steps)."""
    axes = ("batch",) + (None,) * (ndim - 1)
    table = dict(rules)
    target = table["batch"]
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if mesh.shape.get(t, 1) > 1)
    spec = P(*(None,) * leading,
             targets if len(targets) > 1 else (targets[0] if targets else None), *axes[1:])
    return NamedSharding(mesh, spec)


def data_parallel_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways a batch is split: the product of the mesh axes that `batch` maps to."""
    target = dict(rules)["batch"]
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    return int(np.prod([mesh.shape.get(t, 1) for t in targets]))


def check_platform(wanted: str) -> str:
    """The backend JAX runs on (`jax.default_backend()`), after checking it is the one a run
    asked for (`config.platform`: auto, cpu, gpu or tpu). A GPU or TPU job on an install whose
    jaxlib only has the CPU backend would otherwise train on the CPU, silently and for days:
    a ValueError says so, with the install that fixes it."""
    found = jax.default_backend()
    if wanted in ("auto", found):
        return found
    raise ValueError(
        f"config.platform={wanted!r}, but JAX runs on {found!r} (jax {jax.__version__}; "
        f"devices: {', '.join(sorted({d.platform for d in jax.devices()}))}). Install JAX for "
        f"{wanted} (SE_EXTRAS={wanted},analysis bash scripts/bootstrap.sh, i.e. pip install "
        f"'.[{wanted}]'), or pass --config.platform=auto to run on {found!r}")


def broadcast_int(value: int) -> int:
    """Process 0's `value`, on every process (a collective: every process must call it, the
    same number of times in the same order; the others' `value` is ignored)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def broadcast_flag(value: bool) -> bool:
    """Process 0's decision, on every process (a collective, as `broadcast_int`): decisions
    made from a process's own clock (when to save) must not split between processes."""
    return bool(broadcast_int(1 if value else 0))


# The mesh a step is being traced for, while `Steps` traces it (`activation_sharding`).
_ACTIVATIONS: contextvars.ContextVar = contextvars.ContextVar("activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """While a step is traced: the mesh over which `constrain_rows` splits activations."""
    token = _ACTIVATIONS.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATIONS.reset(token)


def constrain_rows(x):
    """`x` [rows, ...] with its rows split over the batch's mesh axes, when a step for a mesh
    that shards weights (fsdp or tensor > 1) is being traced. Without it XLA's propagation,
    seeing weights split on their input dimension, split the contraction instead and kept
    every row of every activation on every device (an 8B LoRA step on v5e-8: 0.9 GiB of
    saved MLP activations a member where 0.1 would do; docs/preflight.md). A data-parallel
    mesh needs none (its rows stay split), and whole runs on devices must not be split."""
    ctx = _ACTIVATIONS.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    if mesh.shape.get("fsdp", 1) * mesh.shape.get("tensor", 1) == 1:
        return x
    if x.shape[0] % data_parallel_size(mesh, rules):
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, rules))


def traced_mesh():
    """(mesh, rules) of the step being traced (`activation_sharding`), or None."""
    return _ACTIVATIONS.get()


def traced_platform() -> str:
    """The platform a step is being traced for: its mesh's devices' (compile-only ones of a
    preflight target included) while `activation_sharding` is active, else JAX's backend."""
    ctx = _ACTIVATIONS.get()
    if ctx is not None:
        return ctx[0].devices.flat[0].platform
    return jax.default_backend()
