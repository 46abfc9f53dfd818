"""What the machine is and what a point used: versions, NVML GPU facts, energy, memory.

Every probe degrades to None when its source is missing (no NVML, no GPU, not Linux, a backend
not installed), so a sweep records what it can and never fails for want of telemetry.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import itertools
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_format.schema import CONDITION_KEYS

POWER_SAMPLE_S = 0.01
VERSIONS = ("torch", "jax", "jaxlib", "equinox", "numpy", "pytest_benchmark")  # distributions


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model string (``model name`` in /proc/cpuinfo on Linux)."""
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """``machine_info["hollowbench"]`` as results_format/SCHEMA.md describes it."""
    torch = sys.modules.get("torch")
    return {
        "node": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_avg": load_avg(),
        "python": platform.python_version(),
        **{name: _version(name.replace("_", "-")) for name in VERSIONS},
        "cuda": getattr(getattr(torch, "version", None), "cuda", None),
        "torch_num_threads": torch.get_num_threads() if torch else None,
        "torch_compile_min_rows": _torch_compile_min_rows(),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "gpus": NVML.gpus(),
    }


def _torch_compile_min_rows() -> int | None:
    """From how many rows torch's eager hollow_forward runs Inductor-compiled regions on a CPU
    (None: never, or no torch): its "eager" figures there are partly compiled."""
    if importlib.util.find_spec("torch") is None:
        return None
    from impls.torch_backend import taylor

    return taylor.COMPILE_MIN_ROWS


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews CPU timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class _Nvml:
    """Lazy NVML access through nvidia-ml-py (``pynvml``); None/[] where it is unavailable."""

    def __init__(self):
        self._lib = None
        self._tried = False

    @property
    def lib(self):
        if not self._tried:
            self._tried = True
            with contextlib.suppress(Exception):  # not installed, no driver, no GPU: no NVML
                import pynvml

                pynvml.nvmlInit()
                self._lib = pynvml
        return self._lib

    def call(self, name: str, *args):
        """``pynvml.<name>(*args)``, or None when NVML or the query is unsupported."""
        try:
            return getattr(self.lib, name)(*args)
        except Exception:  # no NVML (lib None) raises AttributeError
            return None

    def gpus(self) -> list[dict[str, Any]]:
        lib, driver = self.lib, _text(self.call("nvmlSystemGetDriverVersion"))
        out = []
        for index in range(self.call("nvmlDeviceGetCount") or 0):  # none without NVML
            h = lib.nvmlDeviceGetHandleByIndex(index)
            memory = self.call("nvmlDeviceGetMemoryInfo", h)
            limit_mw = self.call("nvmlDeviceGetEnforcedPowerLimit", h)
            max_clock = functools.partial(self.call, "nvmlDeviceGetMaxClockInfo", h)
            gpu = {
                "index": index,
                "name": _text(self.call("nvmlDeviceGetName", h)),
                "uuid": _text(self.call("nvmlDeviceGetUUID", h)),
                "driver": driver,
                "memory_total_bytes": memory.total if memory else None,
                "sm_clock_max_mhz": max_clock(lib.NVML_CLOCK_SM),
                "mem_clock_max_mhz": max_clock(lib.NVML_CLOCK_MEM),
                "power_limit_w": limit_mw / 1000 if limit_mw else None,
            }
            out.append(gpu)
        return out

    def handle(self, device: str):
        """The NVML handle of CUDA device ``cuda:N`` (CUDA_VISIBLE_DEVICES-aware), or None."""
        if self.lib is None or not device.startswith("cuda:"):
            return None
        ordinal = int(device.removeprefix("cuda:"))
        # CUDA may order devices unlike NVML; torch knows each one's UUID, NVML finds it by UUID.
        with contextlib.suppress(Exception):  # no torch, or it cannot see the device
            uuid = str(sys.modules["torch"].cuda.get_device_properties(ordinal).uuid)
            return self.call("nvmlDeviceGetHandleByUUID", f"GPU-{uuid.removeprefix('GPU-')}")
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        entry = visible[ordinal] if ordinal < len(visible) and visible[ordinal] else str(ordinal)
        if entry.isdigit():
            return self.call("nvmlDeviceGetHandleByIndex", int(entry))
        return self.call("nvmlDeviceGetHandleByUUID", entry)


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


NVML = _Nvml()


class EnergyMeter:
    """Joules one GPU used between :meth:`start` and :meth:`stop`: NVML's total-energy counter
    (Volta and newer), else power read every 10 ms in a thread and integrated."""

    def __init__(self, device: str):
        self._handle = NVML.handle(device)
        self._start_mj = None
        self._samples: list[tuple[float, float]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self._handle is None:
            return
        self._start_mj = NVML.call("nvmlDeviceGetTotalEnergyConsumption", self._handle)
        if self._start_mj is None and self._power_w() is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> tuple[float | None, str | None]:
        """(joules, how they were measured), or (None, None) without NVML."""
        if self._start_mj is not None:
            end = NVML.call("nvmlDeviceGetTotalEnergyConsumption", self._handle)
            if end is not None:
                return (end - self._start_mj) / 1000.0, "nvml_total_energy"
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            s = self._samples
            joules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(s))
            return (joules, "nvml_power_sampling") if len(s) > 1 else (None, None)
        return None, None

    def __enter__(self) -> dict[str, Any]:
        """Meter a block: the dict it gives gets ``joules`` and ``energy_kind`` at the end."""
        self.figures: dict[str, Any] = {}
        self.start()
        return self.figures

    def __exit__(self, *exc) -> None:  # a time-out too: the power sampler must not run on
        self.figures["joules"], self.figures["energy_kind"] = self.stop()

    def _power_w(self) -> float | None:
        mw = NVML.call("nvmlDeviceGetPowerUsage", self._handle)
        return mw / 1000.0 if mw is not None else None

    def _sample(self) -> None:
        while not self._stop.is_set():
            watts = self._power_w()
            if watts is not None:
                self._samples.append((time.perf_counter(), watts))
            self._stop.wait(POWER_SAMPLE_S)


def _proc_field(path: str, key: str) -> str | None:
    """The value of a ``key: value`` line of a /proc file; None where there is none (not Linux)."""
    with contextlib.suppress(OSError), open(path) as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` field of a /proc file, in bytes."""
    value = _proc_field(path, key)
    return int(value.split()[0]) * 1024 if value else None


class PeakMemory:
    """Peak memory between :meth:`start` and :meth:`stop`: the backend's own figure where it
    tracks its device (torch on CUDA), else the growth of the peak resident set (reset through
    /proc/self/clear_refs) after malloc_trim, which can under-read: the allocator reuses unseen.
    """

    def __init__(self, backend):
        self._backend, self._tracked, self._base = backend, False, None

    def start(self) -> None:
        self._tracked = self._backend.reset_peak_memory()
        if self._tracked:
            return
        # glibc hands free heap pages back, so a point's allocations show up as RSS growth.
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(None).malloc_trim(0)
        self._base = None
        with contextlib.suppress(OSError):  # "5" resets the peak (Linux)
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _proc_bytes("/proc/self/status", "VmRSS")

    def stop(self) -> tuple[int | None, str | None]:
        if self._tracked:
            return self._backend.peak_memory()
        peak = _proc_bytes("/proc/self/status", "VmHWM")
        if self._base is None or peak is None:
            return None, None
        return max(peak - self._base, 0), "rss_growth"


def available_bytes(backend) -> tuple[int | None, str]:
    """(bytes a new point may still use on ``backend``'s device, where the figure came from)."""
    known = backend.memory_available()
    if known is not None:
        return known
    if backend.device.startswith("cuda"):
        info = NVML.call("nvmlDeviceGetMemoryInfo", NVML.handle(backend.device))
        return (info.free if info else None), "nvml"
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        with contextlib.suppress(ValueError, OSError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available, "MemAvailable"


def cpu_snapshot() -> dict[str, tuple[int, int]] | None:
    """Per thread: (ns on a CPU, ns ready but waiting), from /proc/self/task/*/schedstat (Linux)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    out = {}
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                run, wait = fh.read().split()[:2]
            out[tid] = (int(run), int(wait))
        except (OSError, ValueError):
            continue
    return out or None


MIN_READY_NS = 1_000_000  # under 1 ms of CPU demand there is nothing to judge


def cpu_share(before: dict | None, after: dict | None) -> float | None:
    """Of the time this process's threads were ready to run between two snapshots, the fraction
    they ran (1.0: never waited for a CPU). Threads that ended in between are not counted."""
    if before is None or after is None:
        return None
    run = wait = 0
    for tid, (r1, w1) in after.items():
        r0, w0 = before.get(tid, (0, 0))
        run, wait = run + max(r1 - r0, 0), wait + max(w1 - w0, 0)
    if run + wait < MIN_READY_NS:
        return None
    return round(run / (run + wait), 4)


@dataclass(frozen=True)
class CoreTimes:
    """One reading of what the cores this process may use did: ``wall`` perf_counter seconds,
    ``idle`` seconds they idled (/proc/stat idle + iowait, summed over them), ``own`` this
    process's CPU seconds, all threads (``time.process_time``), and how many ``cores``."""

    wall: float
    idle: float
    own: float
    cores: int


# Readings kept so that a short measurement can judge others' work over a longer window: the
# kernel reports idle time in 1 / USER_HZ units (10 ms), too coarse for a 15 ms measurement.
HISTORY: collections.deque[CoreTimes] = collections.deque(maxlen=64)
OTHERS_WINDOW_S = 0.5  # others' CPU time is judged over at least this many seconds


def _usable_cores() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return None


def core_times(stat: str = "/proc/stat") -> CoreTimes | None:
    """Read (and record in HISTORY) the usable cores' idle time and this process's CPU time;
    None where /proc/stat is missing (not Linux)."""
    cores, tick = _usable_cores(), os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle, seen = 0, 0
    try:
        with open(stat) as fh:
            for line in fh:
                name, *fields = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit()):
                    continue
                if cores is None or int(name[3:]) in cores:
                    idle, seen = idle + int(fields[3]) + int(fields[4]), seen + 1
    except (OSError, ValueError, IndexError):
        return None
    if not seen:
        return None
    reading = CoreTimes(time.perf_counter(), idle / tick, time.process_time(), seen)
    HISTORY.append(reading)
    return reading


def others_seconds(before: CoreTimes, after: CoreTimes) -> float:
    """CPU seconds other processes took on the usable cores between two readings: what the
    cores neither idled nor ran this process for (never below 0: the readings are in ticks)."""
    capacity = after.cores * (after.wall - before.wall)
    return max(capacity - (after.idle - before.idle) - (after.own - before.own), 0.0)


def others_share(before: CoreTimes | None, after: CoreTimes | None) -> float | None:
    """The fraction of the usable cores' time that other processes held between two readings
    (0: only this process ran, or nothing; 1: others held every core all the time); None
    without both readings or without time between them."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    capacity = after.cores * (after.wall - before.wall)
    return round(min(others_seconds(before, after) / capacity, 1.0), 4)


def window_start(start: CoreTimes | None, end: CoreTimes | None) -> CoreTimes | None:
    """Where to judge others' work from for a measurement between ``start`` and ``end``:
    ``start`` when the measurement took OTHERS_WINDOW_S, else the latest reading in HISTORY at
    least that long before ``end`` (the oldest where none is)."""
    if start is None or end is None or end.wall - start.wall >= OTHERS_WINDOW_S:
        return start
    earlier = [r for r in HISTORY if r.wall <= start.wall]
    old = [r for r in earlier if end.wall - r.wall >= OTHERS_WINDOW_S]
    return old[-1] if old else min(earlier, key=lambda r: r.wall, default=start)


core_times()  # a first reading, so that a session's first short measurement has a window


# nvmlClocksEventReason* / nvmlClocksThrottleReason* bits (nvml.h), named as SCHEMA.md says.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int | None) -> list[str] | None:
    """The names of the set bits of an NVML throttle-reason mask (unknown bits in hex)."""
    if mask is None:
        return None
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_REASONS)
    return names + ([hex(rest)] if rest else [])


class Conditions:
    """What else happened while a point was timed: the 1-minute load average at the end; on a
    CUDA device (NVML), other compute processes, SM clock and throttle reasons at both ends."""

    def __init__(self, device: str):
        self._handle = NVML.handle(device)
        self._start: dict[str, Any] | None = None

    def start(self) -> None:
        self._start = self._gpu()

    def stop(self) -> dict[str, Any]:
        load = load_avg()
        info: dict[str, Any] = dict.fromkeys(CONDITION_KEYS)
        info["load_1m"] = load[0] if load else None
        if self._handle is None:
            return info
        start, end = self._start or self._gpu(), self._gpu()
        procs = {p["pid"]: p for p in [*start["procs"], *end["procs"]]}
        info["gpu_processes"] = sorted(procs.values(), key=lambda p: p["pid"])
        info["sm_clock_mhz"] = [start["sm_clock"], end["sm_clock"]]
        info["throttle_reasons"] = [start["throttle"], end["throttle"]]
        return info

    def _gpu(self) -> dict[str, Any]:
        if self._handle is None:
            return {}
        lib, h = NVML.lib, self._handle
        running = NVML.call("nvmlDeviceGetComputeRunningProcesses", h) or []
        me = os.getpid()
        procs = [
            {"pid": p.pid, "used_memory_bytes": getattr(p, "usedGpuMemory", None)}
            for p in running
            if getattr(p, "pid", me) != me
        ]
        mask = NVML.call("nvmlDeviceGetCurrentClocksEventReasons", h)
        if mask is None:  # the older name, before NVML 12.2
            mask = NVML.call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        return {
            "procs": procs,
            "sm_clock": NVML.call("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_SM),
            "throttle": throttle_names(mask),
        }
