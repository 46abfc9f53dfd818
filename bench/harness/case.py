"""What a workload hands the sweep for one point: a :class:`Case` (what the point is and how
to build what it times) whose task factory makes a :class:`Task` (what is timed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.harness.limit import NotApplicable

__all__ = ["Case", "NotApplicable", "Task"]


@dataclass
class Task:
    """What one point times: ``fn(*args)`` returns the outputs to wait for (JAX: pure and
    jittable). ``check(outputs, step)`` -> (error, error_kind) from a warm-up call's outputs;
    ``step`` is the callable timed (JAX: the compiled executable). ``measure(outputs, step)``,
    run before the check and kept if it fails, and ``info``, known at build, are extra_info
    entries. ``variant``: how the backend runs ``fn`` (``impls.VARIANTS``; None: its default)."""

    fn: Callable[..., Any]
    args: tuple
    check: Callable[[Any, Callable[..., Any]], tuple[float | None, str | None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    measure: Callable[[Any, Callable[..., Any]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Case:
    """One point as its workload describes it, before anything is built: the ``backend`` it
    runs on, ``make_task`` (builds the model and input: called once, in the point's run or in a
    compile-ahead window), ``info`` (its identity in extra_info, bench/SCHEMA.md keys),
    ``need_bytes`` (its predicted memory, None: unknown), its pytest-benchmark ``group`` and
    ``params`` (pytest's, by name: the journal's)."""

    backend: Any
    make_task: Callable[[], Task]
    info: dict[str, Any]
    need_bytes: int | None = None
    group: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
