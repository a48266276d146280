"""Test set-up: 8 fake CPU devices, so sharding code runs on real meshes, and no network."""
import os
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
# One persistent XLA compilation cache for the run's workers and the processes tests start: many
# tests build the same tiny models and steps (a fresh `Sweep` re-traces them, and XLA:CPU takes
# 5-9 s to compile a transformer's train loop), so a program compiled once is loaded after that.
# Keys hash the program, the compile options and jax's version, so a stale entry is never used.
# JAX_COMPILATION_CACHE_DIR chooses another place; JAX_ENABLE_COMPILATION_CACHE=false turns it off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"scalable-elicitation-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def group_loop_spy(monkeypatch):
    """The shardings of the stacked trainable parameters going into each call of the group
    loop (`groups.group_loop`) and coming out of it: a list of (in, out) trees."""
    import jax

    from scalable_elicitation import groups
    seen, real = [], groups.group_loop

    def spy(*args):
        loop = real(*args)

        def call(carry, *rest):
            before = jax.tree.map(lambda x: x.sharding, carry["state"].params)
            out = loop(carry, *rest)
            seen.append((before, jax.tree.map(lambda x: x.sharding, out["state"].params)))
            return out
        return call

    monkeypatch.setattr(groups, "group_loop", spy)
    return seen
