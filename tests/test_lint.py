"""Linters are tests: ruff and mypy (strict) on aa_pkg/."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("linter", [["ruff", "check", "aa_pkg"], ["mypy"]])
def test_linter(linter: list[str]) -> None:
    tool = Path(sys.executable).parent / linter[0]
    if not tool.exists():
        import vm

        vm.require_tools(linter[0])
        tool = Path(linter[0])
    result = subprocess.run([str(tool), *linter[1:]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
