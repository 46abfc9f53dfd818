"""XLA flags the tools add for JAX on a CPU. XLA reads XLA_FLAGS once, when JAX makes its CPU
client, and aborts the process on a flag it does not know, so a flag is tried in a child first.
"""

from __future__ import annotations

import os
import subprocess
import sys

# XLA:CPU's concurrency-optimised scheduler (jaxlib 0.10) can deadlock a jitted XTrace step
# (impls/jax_backend/estimators.py), beyond the per-point limit's reach.
CPU_SCHEDULER_OFF = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# XLA's CPU runtime puts each thunk (a fusion, a dot, a copy) in a jax.profiler trace only with
# this; off, a CPU profile has no per-kernel times.
CPU_THUNK_TRACES = "--xla_cpu_enable_xprof_traceme=true"


def add_flag(flag: str) -> bool:
    """Add ``flag`` to XLA_FLAGS unless its name is there already (the user's setting wins) or
    this XLA does not know it. Whether XLA_FLAGS names it now."""
    flags = os.environ.get("XLA_FLAGS", "")
    if flag.split("=")[0] in flags:
        return True
    trial = f"{flags} {flag}".strip()
    if not accepts(trial):
        return False
    os.environ["XLA_FLAGS"] = trial
    return True


def accepts(flags: str) -> bool:
    """Whether JAX starts its CPU client with XLA_FLAGS ``flags`` (False without JAX)."""
    probe = "import jax; jax.devices('cpu')"
    env = os.environ | {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=False)
    return run.returncode == 0
