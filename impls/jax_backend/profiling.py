"""Kernel times of a JAX computation from a jax.profiler trace (``python -m bench.profile``)."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def kernel_times(call: Callable[[], Any], calls: int) -> tuple[dict[str, float], float]:
    """From a jax.profiler trace: ({kernel: microseconds over the calls}, their sum). On a GPU
    the events on its streams; on the CPU each thunk's (a fusion, a dot, a copy: events that
    name their ``hlo_op``), which XLA traces only under bench.harness.xla.CPU_THUNK_TRACES, set
    before JAX made its CPU client: without it, empty. CPU thunks may overlap in time."""
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                call()
        trace = next(Path(tmp).rglob("perfetto_trace.json.gz"))
        with gzip.open(trace, "rt") as fh:
            doc = json.load(fh)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    device, threads = set(), {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            if e["args"]["name"].startswith("/device:"):
                device.add(e["pid"])
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
    streams = {k for k, name in threads.items() if k[0] in device and "stream" in name.lower()}
    spans = [e for e in events if e.get("ph") == "X"]
    times = _summed(
        e
        for e in spans
        if (e.get("pid"), e.get("tid")) in streams or (not streams and e.get("pid") in device)
    )
    if not times:  # a CPU step: XLA's thunks, on the host's threads
        times = _summed(e for e in spans if "hlo_op" in e.get("args", {}))
    return times, float(sum(times.values()))


def _summed(events) -> dict[str, float]:
    """{event name: its durations' sum in microseconds}."""
    times: dict[str, float] = {}
    for e in events:
        times[e["name"]] = times.get(e["name"], 0.0) + float(e.get("dur", 0.0))
    return times
