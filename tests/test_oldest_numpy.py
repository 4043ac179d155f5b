"""The command line under the oldest numpy that ``pyproject.toml`` allows.

The rest of the suite runs under whatever numpy the resolver picked (the newest); here the floor
itself is installed (from the package registry, into a folder of the virtual environment, reused
by later runs) and put in front of the path of ``synth``, ``convert`` (with its Dask workers) and
``verify``. A floor that our code does not run on fails here, not on a user's machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.slow


def numpy_floor() -> str:
    """The version in ``numpy>=X`` of pyproject's dependencies, as pip pins it (``2.0`` → ``2.0.0``)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (floor,) = [m.group(1) for d in dependencies if (m := re.fullmatch(r"numpy>=([\d.]+)", d.replace(" ", "")))]
    return ".".join((floor.split(".") + ["0", "0"])[:3])


@pytest.fixture(scope="module")
def oldest_numpy() -> tuple[str, Path]:
    version = numpy_floor()
    target = Path(sys.prefix) / f"oldest-numpy-{version}"
    if not (target / "numpy").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(target),
                f"numpy=={version}",
            ],
            check=True,
            timeout=600,
        )
    return version, target


def test_the_cli_converts_and_verifies_under_the_oldest_allowed_numpy(oldest_numpy, tmp_path):
    version, target = oldest_numpy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert run("-c", "import numpy; print(numpy.__version__)").strip() == version
    run("-m", "pipeline.cli", "synth", "src.zip", "--patients", "1", "--shapes", "2")
    run("-m", "pipeline.cli", "convert", "src.zip", "--out", "out", "--workers", "1", "--no-progress")
    assert "both formats: OK" in run(
        "-m", "pipeline.cli", "verify", "src.zip", "--out", "out", "--workers", "1", "--no-progress"
    )
