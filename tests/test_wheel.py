"""The wheel holds everything ``python -m reports build`` needs: built, installed into a new
venv outside the checkout, and run there on a committed reference input."""

from __future__ import annotations

import fnmatch
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / "reports/reference/nvidia-h200/quick.json"


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def fresh_source(to: Path) -> Path:
    """A copy of what the wheel is built from (pyproject.toml, the README and the packages it
    names), without build/ or egg-info: setuptools reuses the checkout's build/, where a deleted
    module would live on and reappear in the wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, to / name)
    for folder in ROOT.iterdir():
        if folder.is_dir() and any(fnmatch.fnmatch(folder.name, glob) for glob in include):
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
            shutil.copytree(folder, to / folder.name, ignore=ignore)
    return to


@pytest.mark.slow
def test_the_installed_wheel_builds_a_report_outside_the_checkout(tmp_path):
    # The wheel, from a fresh copy with this checkout's setuptools (no index:
    # --no-build-isolation).
    wheels = tmp_path / "wheels"
    source = fresh_source(tmp_path / "source")
    run(sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
        "-q", "-w", str(wheels), cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("hollowbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "results_format/schema.py" in names and "results_format/SCHEMA.md" in names
    assert not [n for n in names if n.startswith(("bench/", "tests/"))]
    assert [n for n in names if n.endswith(".py") and not (ROOT / n).exists()] == []  # no stale
    # A bare venv with the wheel alone; its third-party packages (pandas, matplotlib, ...) from
    # this interpreter's site-packages through a .pth line, which adds that folder but not the
    # .pth files in it (so no editable install of this checkout comes along).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
        "--no-index", "-q", str(wheel), cwd=tmp_path)  # fmt: skip
    purelib = Path(
        run(
            str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (purelib / "third_party.pth").write_text("\n".join(sorted(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run(str(python), "-c", "import reports, results_format; print(reports.__file__)",
                cwd=tmp_path, env=env)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv)
    out = tmp_path / "report"
    built = run(str(python), "-m", "reports", "build", str(INPUT), "--out", str(out),
                cwd=tmp_path, env=env)  # fmt: skip
    assert "wrote" in built.stdout and (out / "report.md").exists()
    assert (out / "tables" / "points.csv").stat().st_size > 0
