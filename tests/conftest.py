"""Shared fixtures: the .debs built once per session, and a signing key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aa_pkg.build import build
from aa_pkg.config import Config, load_config

import vm

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`aa-pkg build` with the default settings: the package every test installs."""
    vm.require_tools("dpkg-buildpackage", "dh", "dh_apparmor", "apparmor_parser")
    return build(Config(), tmp_path_factory.mktemp("aa-pkg-build"))


def clean_checkout(destination: Path) -> Path:
    """The files git tracks, as a fresh clone would have them (plus uncommitted edits)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="session")
def root_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dpkg-buildpackage -us -uc -b` at the root of a clean copy of the repository."""
    vm.require_tools("dpkg-buildpackage", "dh", "dh_apparmor", "apparmor_parser")
    work = tmp_path_factory.mktemp("dpkg-buildpackage")
    source = clean_checkout(work / "apparmor-fullsystem")
    subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source, check=True,
                   capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
    (deb,) = work.glob("*.deb")
    return deb


def make_key(home: Path, name: str) -> str:
    vm.require_tools("gpg")
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
                    f"{name} <{name}@test.invalid>", "ed25519", "sign", "never"], check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--homedir", home, "--batch", "--with-colons", "--list-keys"],
                             check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="session")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("gpg") / "home"
    return home, make_key(home, "repo")


@pytest.fixture(scope="session")
def newer_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("newer")
    config = work / "site.toml"
    config.write_text('[package]\nversion = "0.2"\nchangelog = "A newer build for the upgrade test."\n')
    return build(load_config(config), work / "out")
