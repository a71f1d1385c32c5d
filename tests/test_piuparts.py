"""piuparts: install -> purge, and previous version -> upgrade -> purge, in fresh chroots."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import vm
from aa_pkg.publish import Target, publish

pytestmark = [pytest.mark.tools, pytest.mark.slow]

MIRROR = "http://deb.debian.org/debian"


def piuparts(tmp_path: Path, *args: str, suite: str = "bookworm") -> str:
    vm.require_tools("piuparts", "debootstrap")
    vm.require_root()
    log = tmp_path / "piuparts.log"
    result = subprocess.run(["piuparts", f"--distribution={suite}", f"--mirror={MIRROR}", f"--log-file={log}",
                             *args], capture_output=True, text=True)
    output = log.read_text() if log.exists() else result.stdout + result.stderr
    assert result.returncode == 0, "\n".join(line for line in output.splitlines()
                                             if "ERROR" in line or "FAIL" in line or line.startswith("  "))
    return output


def test_install_and_purge(tmp_path: Path, built_deb: Path) -> None:
    assert "PASS: Installation and purging test." in piuparts(tmp_path, str(built_deb))


def test_upgrade_from_previous_version(tmp_path: Path, built_deb: Path, newer_deb: Path,
                                       signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], Target(root=repo, gnupghome=signing[0], key=signing[1]))
    output = piuparts(tmp_path, f"--bindmount={repo}", f"--extra-repo=deb [trusted=yes] file://{repo} stable main",
                      str(newer_deb))
    assert "PASS: Installation, upgrade and purging tests." in output


def dracut_base() -> Path:
    """A trixie base whose initramfs generator is dracut (cached beside the VM images)."""
    vm.require_tools("mmdebstrap")
    base = vm.cache_dir() / "piuparts-trixie-dracut.tar.gz"
    if not base.exists():
        tmp = base.with_name(f".{base.name}.tmp.tar.gz")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--include=dracut", "trixie", str(tmp)],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
        tmp.replace(base)
    return base


def test_install_and_purge_on_a_dracut_system(tmp_path: Path, built_deb: Path) -> None:
    """Installed next to dracut (no initramfs-tools pulled in), purged without a trace."""
    # mmdebstrap's cleanup removes debconf's tmp.ci from the base, and
    # debconf makes it again at the first configure: not ours.
    output = piuparts(tmp_path, f"--basetgz={dracut_base()}", "--ignore=/var/cache/debconf/tmp.ci/",
                      str(built_deb), suite="trixie")
    assert "PASS: Installation and purging test." in output
    assert "Processing triggers for dracut" in output
    assert "Unpacking initramfs-tools " not in output
