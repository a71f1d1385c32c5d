"""The VM layer for the tests: aa_pkg.vm, the one the product's `aa-pkg
verify` boots through, plus pytest's skip when a tool is missing.

Every name of aa_pkg.vm is reachable here (vm.Machine, vm.SUITES, ...);
a test that changes one changes it in aa_pkg.vm (vm.impl).
"""

from __future__ import annotations

import os

import pytest

from aa_pkg import vm as impl
from aa_pkg.vm import *  # noqa: F401,F403  (the names a test uses: vm.Machine, ...)


def __getattr__(name: str):
    # The rest of aa_pkg.vm (TESTING, ROOT_MODULES, qemu_command, ...).
    return getattr(impl, name)


def _unavailable(reason: str) -> None:
    """Skip the test, unless CI asked for the tools to be there."""
    if os.environ.get("AA_PKG_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} (AA_PKG_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    """pytest.skip if a program is missing; pytest.fail with AA_PKG_REQUIRE_TOOLS=1."""
    missing = impl.missing_tools(*names)
    if missing:
        _unavailable("missing tools: " + ", ".join(missing))


def require_root() -> None:
    """Same as require_tools(), for running as root (chroot, mounts, ownership)."""
    if os.geteuid() != 0:
        _unavailable("VM tests need root")
