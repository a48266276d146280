"""Host memory on the CPU backend (`scalable_elicitation.hostmem`): with `prepare`, a jitted
call's temporaries stay in the process instead of being page-faulted in afresh each call.

Each check runs in its own Python process (the setting is process-wide and must come before
JAX starts its threads), beside a control process without it, so a setting that did nothing
would fail the test."""
import json
import platform
import subprocess
import sys

import pytest

from scalable_elicitation import hostmem

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Runs a jitted function whose compiled temporaries are one large block (and whose output is
# as large), 16 times to settle the heap (it grows while frees and allocations interleave),
# then 8 more, and prints the temporary block's size and the minor page faults of those 8.
JITTED = r"""
import json, resource, sys
from scalable_elicitation import hostmem
applied = hostmem.prepare("cpu") if sys.argv[1] == "prepare" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(x * 2.0)[::-1]) + 1.0)
x = jnp.ones((1 << 24,), jnp.float32)  # 64 MiB
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
for _ in range(16):
    f(x).block_until_ready()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "temp": temp, "faults": faults}))
"""

def _run(script: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux)")
def test_a_jitted_calls_temporaries_are_not_faulted_in_again():
    kept, control = _run(JITTED, "prepare"), _run(JITTED, "control")
    assert kept["applied"] and not control["applied"]
    pages = kept["temp"] // 4096
    assert kept["temp"] >= 32 << 20, kept  # over glibc's largest mmap threshold
    assert min(control["faults"]) > pages, control  # the control faults both in every call
    assert sum(kept["faults"]) <= 2 * pages, kept  # at most two late growths of the heap


def test_only_a_run_on_the_cpu_is_prepared(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert hostmem.runs_on_cpu("cpu")
    assert not hostmem.runs_on_cpu("gpu") and not hostmem.runs_on_cpu("tpu")
    assert hostmem.runs_on_cpu("auto") == (not hostmem.accelerator_installed())
    assert not hostmem.prepare("gpu")  # nothing changed (and nothing to undo)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert hostmem.runs_on_cpu("auto")


def test_an_accelerator_plugin_is_recognised_by_its_distribution(monkeypatch):
    class Dist:
        def __init__(self, name):
            self.metadata = {"Name": name}

    for name, found in (("jax-cuda12-plugin", True), ("libtpu", True),
                        ("jax_rocm7_plugin", True), ("jaxlib", False)):
        monkeypatch.setattr(hostmem.importlib.metadata, "distributions",
                            lambda name=name: [Dist("numpy"), Dist(name)])
        assert hostmem.accelerator_installed() is found, name
