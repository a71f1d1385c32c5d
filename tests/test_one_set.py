"""The hook's check before it joins the precompiled policy into one write.

The kernel loads one write as one set, and would load two kinds of set
wrongly instead of refusing them: a policy namespace in any header applies
to every profile of the write, and nothing checks a set for two profiles
of one name (security/apparmor/policy_unpack.c, aa_unpack; policy.c,
aa_replace_profiles). The hook reads both from the parser's binaries. This
runs the perl program the shared builder runs (one-set-check, which the
hook and the dracut module share), as shipped, on binaries the real parser
wrote.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import vm
from aa_pkg.config import Config
from aa_pkg.render import render_package

INIT = "fullsystem-init"


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The installed check, as the package ships it; the builder runs that file."""
    vm.require_tools("apparmor_parser", "perl")
    tree = tmp_path_factory.mktemp("rendered")
    render_package(Config(), tree / "tree", tree / "debian")
    program = tree / "tree/usr/share/apparmor-fullsystem/one-set-check"
    builder = (tree / "tree/usr/share/apparmor-fullsystem/initramfs-build").read_text()
    assert "problem=$(perl /usr/share/apparmor-fullsystem/one-set-check \"$AAFS_PROFILE\" \"$@\" 2>&1)" in builder
    return str(program)


def compiled(directory: Path, name: str, policy: str) -> Path:
    """What apparmor_parser writes to its cache for a policy file NAME."""
    source = directory / f"{name}.txt"
    source.write_text(policy)
    binary = directory / name
    with binary.open("wb") as out:
        subprocess.run(["apparmor_parser", "--skip-kernel-load", "--stdout", "--quiet", str(source)],
                       stdout=out, check=True)
    return binary


def run_check(program: str, *binaries: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["perl", program, INIT, *map(str, binaries)], capture_output=True, text=True)


def test_a_set_with_init_and_hats_passes(check: str, tmp_path: Path) -> None:
    init = compiled(tmp_path, f"initramfs-{INIT}", f"profile {INIT} /sbin/init flags=(complain) {{}}\n")
    # Hats and child profiles are written as profiles of their own,
    # "parent//hat": the same hat name under two parents is no duplicate.
    hats = compiled(tmp_path, "hats", "profile p1 /bin/p1 { ^h {} profile child {} }\nprofile p2 /bin/p2 { ^h {} }\n")
    result = run_check(check, init, hats)
    assert (result.returncode, result.stdout) == (0, ""), result


def test_two_files_with_one_profile_name_are_named(check: str, tmp_path: Path) -> None:
    init = compiled(tmp_path, f"initramfs-{INIT}", f"profile {INIT} /sbin/init {{}}\n")
    first = compiled(tmp_path, "usr.bin.tool", "profile tool /usr/bin/tool {}\n")
    second = compiled(tmp_path, "tool-again", "profile tool /usr/bin/tool {}\n")
    result = run_check(check, init, first, second)
    assert result.returncode == 1
    assert result.stdout == "profile tool is defined in both usr.bin.tool and tool-again"


def test_a_namespace_is_named(check: str, tmp_path: Path) -> None:
    init = compiled(tmp_path, f"initramfs-{INIT}", f"profile {INIT} /sbin/init {{}}\n")
    other = compiled(tmp_path, "namespaced", "profile :other-ns:tool {}\n")
    result = run_check(check, init, other)
    assert result.returncode == 1
    assert result.stdout == "namespaced holds a profile in a policy namespace"


def test_without_init_profile_nothing_is_joined(check: str, tmp_path: Path) -> None:
    # Also what an unknown binary format looks like: no names read at all.
    tool = compiled(tmp_path, "usr.bin.tool", "profile tool /usr/bin/tool {}\n")
    result = run_check(check, tool)
    assert result.returncode == 1
    assert "no profile named fullsystem-init found in the binaries" in result.stdout
