"""The per-point time limit (SIGALRM) and how a point's failure is classified."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

OOM_MARKERS = ("resource_exhausted", "out of memory", "can't allocate memory", "failed to allocate")
IMPORT_FRAMES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
IMPORT_RETRY_S = 0.05


class PointTimeout(BaseException):
    """A point ran past the per-point time limit. A BaseException, so that libraries' ``except
    Exception`` blocks (torch's lazy imports) cannot swallow it and run on half-initialised."""


class NotApplicable(Exception):
    """The point cannot run on what its task built (a hollow method on a model of the user's
    own that is no HollowNet): recorded and skipped with the message as its reason."""


@contextmanager
def time_limit(seconds: float, why: str | None = None) -> Iterator[None]:
    """Raise PointTimeout in the main thread after ``seconds`` (0: no limit). SIGALRM stops a
    long native call (an XLA compilation) only when it returns to Python; an import in
    progress is let finish (the alarm re-arms), so no module is left half-initialised.
    ``why``: what the limit is, for the message (default: the per-point limit)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def on_alarm(signum, frame):
        while frame is not None:
            if frame.f_code.co_filename in IMPORT_FRAMES:  # importing: re-arm
                signal.setitimer(signal.ITIMER_REAL, IMPORT_RETRY_S)
                return
            frame = frame.f_back
        raise PointTimeout(f"ran past {why or f'the per-point limit of {seconds:g} s'}")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(exc: BaseException) -> str:
    """ "timeout", "oom" (MemoryError, torch.cuda.OutOfMemoryError, XLA RESOURCE_EXHAUSTED and
    allocator failures), "skipped" (NotApplicable) or "error"."""
    if isinstance(exc, PointTimeout):
        return "timeout"
    if isinstance(exc, NotApplicable):
        return "skipped"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    text = str(exc).lower()
    return "oom" if any(marker in text for marker in OOM_MARKERS) else "error"


def describe(exc: BaseException) -> str:
    if isinstance(exc, NotApplicable):  # the reason, as the workload words it
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
