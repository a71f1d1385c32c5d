"""Checks before and during the build, on the real apparmor_parser."""

from __future__ import annotations

from pathlib import Path

import pytest

import vm
from aa_pkg.check import check_extra_profiles
from aa_pkg.config import Config
from aa_pkg.errors import PolicyError

pytestmark = pytest.mark.tools


@pytest.mark.parametrize("package", ["apparmor-fullsystem", "apparmor-fullsystem-acme"])
def test_extra_profiles_see_the_packages_own_abi(tmp_path: Path, package: str) -> None:
    """The check before the build has debian/rules' include path: the ABI file the package ships."""
    vm.require_tools("apparmor_parser")
    profile = tmp_path / "usr.sbin.acme"
    profile.write_text(f"abi <abi/{package}>,\nprofile acme /usr/sbin/acme flags=(complain) {{\n  /** r,\n}}\n")
    check_extra_profiles(Config(package=package, extra_profiles=(profile,)), tmp_path / "check")
    # and another package's ABI is not there
    with pytest.raises(PolicyError, match=f"{profile}: does not compile"):
        check_extra_profiles(Config(package=f"{package}-other", extra_profiles=(profile,)), tmp_path / "again")
