"""The crash-safe JSON-lines journal: one line per finished point, on disk before the next starts.

Each line is written with a single ``write`` on a file opened for appending, then flushed and
fsynced, so a ``kill -9`` (or the OOM killer) loses at most the point that was running. Every
line carries ``schema_version``; the session line also the session's id, which the sweep's
JSON names (``hollowbench.session``) so that a reader takes each point from one of the two.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from results_format.schema import SCHEMA_VERSION, VERSION_KEY


def journal_path(explicit: str | None, json_file: Any, rootdir: Path, cwd: Path) -> Path:
    """The journal's absolute path: ``--bench-journal``; else beside ``--benchmark-json`` (an
    open file up to pytest-benchmark 5.2, then a Path, or a str); else under the rootdir's
    ``.benchmarks/``. Relative paths are from ``cwd``, as pytest-benchmark takes its JSON's."""
    if explicit:
        return (cwd / explicit).absolute()
    if json_file is not None:
        path = json_file if isinstance(json_file, str | os.PathLike) else json_file.name
        return (cwd / path).absolute().with_suffix(".journal.jsonl")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return (rootdir / ".benchmarks" / f"hollowbench-{stamp}.journal.jsonl").absolute()


def _jsonable(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy / JAX / torch scalars
    return item() if callable(item) else str(value)


class Journal:
    """Appends records to ``path``, each with ``schema_version``; the first append of a session
    writes the session line (``{"kind": "session", "schema_version", "session": its id,
    "started", "machine_info": machine_info()}``)."""

    def __init__(self, path: Path, machine_info: Callable[[], dict[str, Any]]):
        self.path = path
        self.session = uuid.uuid4().hex
        self._machine_info = machine_info
        self._started = datetime.now(UTC).isoformat()
        self._session_written = False

    def append(self, record: dict[str, Any]) -> None:
        if not self._session_written:
            self._session_written = True
            machine = self._machine_info()
            session = {"kind": "session", "session": self.session, "started": self._started}
            self._write(session | {"machine_info": machine})
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"kind": record.get("kind"), VERSION_KEY: SCHEMA_VERSION} | record
        line = (json.dumps(record, default=_jsonable) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def parse(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a journal's text. A torn last line (a
    crash mid-write) gives None as its record; a bad line elsewhere raises ValueError."""
    lines = [(no, line) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    for no, line in lines:
        try:
            yield no, json.loads(line)
        except json.JSONDecodeError as exc:
            if no != lines[-1][0]:
                raise ValueError(f"line {no} is not valid JSON ({exc.msg})") from None
            yield no, None


def read(path: Path) -> list[dict[str, Any]]:
    """Every complete record in a journal; a torn last line is dropped."""
    return [record for _, record in parse(Path(path).read_text()) if record is not None]
