"""The environment a fresh machine gets: the lock covers pyproject.toml, and CI runs the
README's own test command (so a green CI means the README's command passes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "cpu.lock"


def _pins() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def _locked_extras() -> list[str]:
    """The extras the lock was compiled for, from pip-compile's command in its header."""
    match = re.search(r"--extra=(\S+)", LOCK.read_text())
    assert match, "the lock's header lost its pip-compile command"
    return match[1].split(",")


def test_the_lock_pins_every_dependency_within_pyproject_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(_locked_extras()) == set(extras) - {"all"}, "regenerate the lock (docs/install.md)"
    pins = _pins()
    wanted = [*project["dependencies"], *(r for name in _locked_extras() for r in extras[name])]
    for raw in wanted:
        req = Requirement(raw)
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, (
            f"{req.name} is not in {LOCK.name}: regenerate it (docs/install.md)"
        )
        assert req.specifier.contains(pinned, prereleases=True), f"{raw} vs locked {pinned}"
    assert pins["torch"].local == "cpu"  # any other torch build pulls gigabytes of CUDA


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if "requirements/" in line]


def test_ci_runs_the_readmes_test_command():
    tests = [c for c in _readme_commands() if c.endswith("&& pytest")]
    assert len(tests) == 1, tests
    assert tests[0] in (ROOT / ".ci" / "run").read_text()


def test_the_readmes_main_job_installs_the_lock_then_sweeps_and_reports():
    (main,) = [c for c in _readme_commands() if "pytest bench" in c]
    assert "pip install -c requirements/cpu.lock" in main
    assert "--benchmark-json results.json" in main and "python -m reports build" in main
