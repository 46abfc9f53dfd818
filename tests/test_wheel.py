"""The wheel holds everything ``python -m reports build`` needs: built, installed into a new
venv outside the checkout, and run there on a committed reference input."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / "reports/reference/nvidia-h200/quick.json"


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


@pytest.mark.slow
def test_the_installed_wheel_builds_a_report_outside_the_checkout(tmp_path):
    # The wheel, from this checkout's setuptools (no index: --no-build-isolation).
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
        "-q", "-w", str(wheels), cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("hollowbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "results_format/schema.py" in names and "results_format/SCHEMA.md" in names
    assert not [n for n in names if n.startswith(("bench/", "tests/"))]
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
