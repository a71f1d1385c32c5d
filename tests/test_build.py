"""Both build paths, reproducibility, lintian, site variants: on the real tools."""

from __future__ import annotations

import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from debian.debfile import DebFile

import vm
from aa_pkg.build import build
from aa_pkg.config import load_config
from conftest import clean_checkout

pytestmark = [pytest.mark.tools, pytest.mark.slow]


def contents(deb: Path) -> dict[str, tuple[int, str]]:
    """path -> (mode, owner) of every member of data.tar."""
    with tarfile.open(fileobj=DebFile(str(deb)).data.tgz().fileobj) as tar:  # type: ignore[no-untyped-call]
        return {m.name: (m.mode, f"{m.uname}/{m.gname}") for m in tar.getmembers()}


def control_files(deb: Path) -> dict[str, bytes]:
    control = DebFile(str(deb)).control
    return {name: control.get_content(name) for name in ("postinst", "postrm", "triggers", "conffiles")}


def test_aa_pkg_build_matches_dpkg_buildpackage(built_deb: Path, root_deb: Path) -> None:
    assert built_deb.name == root_deb.name == "apparmor-fullsystem_0.1_all.deb"
    assert contents(built_deb) == contents(root_deb)
    assert control_files(built_deb) == control_files(root_deb)
    # Not only the same list, modes and scripts: the same bytes.
    assert built_deb.read_bytes() == root_deb.read_bytes()


def test_package_layout(built_deb: Path) -> None:
    files = contents(built_deb)
    assert files["./usr/share/initramfs-tools/hooks/apparmor-fullsystem"][0] == 0o755
    assert files["./usr/share/initramfs-tools/scripts/init-bottom/apparmor-fullsystem"][0] == 0o755
    assert files["./usr/share/apparmor-fullsystem/initramfs-build"][0] == 0o644      # sourced by both adapters
    assert files["./usr/lib/dracut/modules.d/90apparmor-fullsystem/module-setup.sh"][0] == 0o755
    assert files["./usr/lib/dracut/modules.d/90apparmor-fullsystem/apparmor-fullsystem-load.sh"][0] == 0o755
    assert files["./usr/sbin/aa-fullsystem"][0] == 0o755
    assert "./usr/share/man/man8/aa-fullsystem.8.gz" in files
    assert "./etc/apparmor-fullsystem/policy.d" in files
    assert all(owner == "root/root" for _, owner in files.values())
    scripts = control_files(built_deb)
    triggers = [line.split("#")[0].strip() for line in scripts["triggers"].decode().splitlines()]
    assert set(filter(None, triggers)) == {"activate-noawait update-initramfs",
                                           "interest-noawait /usr/share/apparmor-fullsystem/policy.d",
                                           "interest-noawait /etc/apparmor-fullsystem/policy.d"}
    # The sysvinit script is one too (dh_installdeb: every file under /etc).
    assert sorted(scripts["conffiles"].split()) == [b"/etc/apparmor.d/abi/apparmor-fullsystem",
                                                    b"/etc/apparmor.d/fullsystem-init",
                                                    b"/etc/init.d/apparmor-fullsystem"]
    # Either generator: Debian's dracut is interested in the same trigger.
    depends = DebFile(str(built_deb)).debcontrol()["Depends"]  # type: ignore[no-untyped-call]
    assert "initramfs-tools | dracut" in [d.strip() for d in depends.split(",")], depends
    # dh_apparmor's reload, after our own state handling
    postinst = scripts["postinst"].decode()
    assert postinst.index("aafs_sync_force_complain") < postinst.index("apparmor_parser -r -T -W")


def test_builds_are_reproducible(built_deb: Path, tmp_path: Path) -> None:
    time.sleep(2)  # a different wall-clock second than the session's first build
    again = build(load_config(write_empty(tmp_path)), tmp_path / "again")
    assert again.read_bytes() == built_deb.read_bytes()


def write_empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("# the standard package\n")
    return path


def lintian(*args: str) -> str:
    """lintian's tags; fails the test if lintian itself did not run to its end."""
    vm.require_tools("lintian")
    result = subprocess.run(["lintian", "-EvIL", "+pedantic", "--color=never", "--fail-on", "error,warning", *args],
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    # lintian(1): 0 no tag at --fail-on's levels, 1 some, 2 it could not
    # run (a missing file, a broken installation): then no tag is no news.
    assert result.returncode in (0, 1), f"lintian exited {result.returncode}:\n{output}"
    assert (result.returncode == 1) == bool(errors_and_warnings(output)), output
    return output


def errors_and_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:2] in ("E:", "W:")]


def test_lintian_binary_clean(built_deb: Path) -> None:
    assert errors_and_warnings(lintian(str(built_deb))) == []


def test_lintian_that_cannot_run_fails_the_check(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="lintian exited 2"):
        lintian(str(tmp_path / "no-such.deb"))


def test_lintian_source_clean(tmp_path: Path) -> None:
    source = clean_checkout(tmp_path / "apparmor-fullsystem")
    subprocess.run(["dpkg-source", "-b", source.name], cwd=tmp_path, check=True, capture_output=True)
    (dsc,) = tmp_path.glob("*.dsc")
    assert errors_and_warnings(lintian(str(dsc))) == []


def test_site_variant(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "usr.sbin.acme").write_text(
        "abi <abi/3.0>,\nprofile acme /usr/sbin/acme flags=(complain) {\n  /** r,\n}\n")
    config = tmp_path / "site.toml"
    config.write_text("""
[package]
name = "apparmor-fullsystem-acme"
version = "0.1+acme1"
changelog = "ACME build: full stage from the first boot."
maintainer = "ACME Security <security@acme.example>"
[policy]
stage = "full"
profile_name = "acme-init"
extra_profiles = "profiles"
""")
    deb = build(load_config(config), tmp_path / "out")
    assert deb.name == "apparmor-fullsystem-acme_0.1+acme1_all.deb"
    control = DebFile(str(deb)).debcontrol()
    assert control["Maintainer"] == "ACME Security <security@acme.example>"
    assert control["Provides"] == control["Conflicts"] == control["Replaces"] == "apparmor-fullsystem"
    files = contents(deb)
    assert "./usr/share/apparmor-fullsystem-acme/policy.d/usr.sbin.acme" in files
    assert "./etc/apparmor.d/acme-init" in files
    assert "./usr/share/initramfs-tools/hooks/apparmor-fullsystem-acme" in files
    data = DebFile(str(deb)).data
    assert data.get_content("usr/share/apparmor-fullsystem-acme/defaults").endswith(b"STAGE=full\nMODE=complain\n")
    assert errors_and_warnings(lintian(str(deb))) == []


def test_variant_with_broken_profile_writes_no_deb(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "broken").write_text("profile broken /x {\n  this is not a rule,\n}\n")
    config = tmp_path / "site.toml"
    config.write_text("[policy]\nextra_profiles = 'profiles'\n")
    from aa_pkg.errors import PolicyError

    with pytest.raises(PolicyError) as caught:
        build(load_config(config), tmp_path / "out")
    assert caught.value.message.startswith(f"{tmp_path / 'profiles' / 'broken'}: does not compile: ")
    assert not (tmp_path / "out").exists()
