"""Shared bits of the benchmarks: peak FLOP/s table, FLOP counts, a table printer."""
from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip (vendor datasheets). Unknown chips (CPUs) print MFU as n/a.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def chip_peak() -> tuple[str, float | None]:
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return kind, peak * jax.device_count()
    return kind, None


def forward_flops(cfg, n_params_nonembed: int, tokens: int, length: int) -> float:
    """2 N per token for the matmuls plus attention scores and values (4 L d per token)."""
    attn = 4 * cfg.num_layers * length * cfg.num_heads * cfg.head_dim
    return tokens * (2 * n_params_nonembed + attn)


def step_hparams(shape=(), **values) -> dict:
    """A train step's per-run hyperparameters (`Steps.step_fn`'s `hp`) as float32 arrays of
    `shape` (a leading run axis for vmapped groups); `values` replace the defaults."""
    import jax.numpy as jnp
    hp = dict(lr=1e-4, warmup=2.0, total=1000.0, logconf_ramp=200.0, logconf_coef=0.5)
    hp.update(values)
    return {k: jnp.full(shape, v, jnp.float32) for k, v in hp.items()}


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))


def host_memory_as_entry_points() -> bool:
    """Host memory as the entry points set it (`hostmem.prepare`, docs/design.md#host-memory):
    a benchmark calls it before JAX starts a backend, so our side runs as a run does."""
    from scalable_elicitation import hostmem
    return hostmem.prepare("auto")
