"""`pip install .` gives a working aa-pkg, including the debian/ skeleton it builds from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aa_pkg.source import DEBIAN_FILES
from conftest import clean_checkout

pytestmark = pytest.mark.slow


def test_pip_install_outside_a_checkout(tmp_path: Path) -> None:
    source = clean_checkout(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    subprocess.run([venv / "bin/pip", "install", "-q", "--no-build-isolation", "--no-deps", str(source)],
                   check=True, capture_output=True)
    skeleton = venv / "share/aa-pkg/debian"
    assert all((skeleton / name).is_file() for name in DEBIAN_FILES)
    for command in ([venv / "bin/aa-pkg", "query", "profile_name"],
                    [venv / "bin/python", "-m", "aa_pkg", "query", "profile_name"]):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True)
        assert result.stdout == "fullsystem-init\n"
    # The installed copy finds its own skeleton, not a checkout's.
    located = subprocess.run([venv / "bin/python", "-c", "from aa_pkg.source import debian_skeleton as d; print(d())"],
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert located == str(skeleton)
