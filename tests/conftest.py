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


def pytest_itemcollected(item: pytest.Item) -> None:
    """Which tests share a pytest-xdist worker (--dist loadgroup, setup.cfg).

    A worker runs a group at a time. A module is one group, so its
    module-scoped fixtures are made once; a test about one suite joins the
    group of its module and suite, so the bookworm and the trixie guests of
    a module boot side by side, one on each worker. (Marked here, as each
    test is collected: xdist reads the marks in a collection_modifyitems
    hook of its own, which may run before ours.)
    """
    params = item.callspec.params.values() if isinstance(item, pytest.Function) and hasattr(item, "callspec") else ()
    suites = [value for value in params if isinstance(value, str) and value in vm.SUITES]
    item.add_marker(pytest.mark.xdist_group(item.module.__name__ + "".join(f"-{suite}" for suite in suites)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The VM tests first, longest module first (xdist keeps this order
    with --no-loadscope-reorder, setup.cfg).

    So that the longest guests (dracut's, then the lifecycle's) start
    first and the short tests fill the gaps at the end, instead of one
    guest running alone while the other worker idles.
    """
    items.sort(key=lambda item: VM_MODULES_LONGEST_FIRST.index(item.module.__name__)
               if item.module.__name__ in VM_MODULES_LONGEST_FIRST else len(VM_MODULES_LONGEST_FIRST))


# Minutes per guest, one vCPU, from a full run (.ci/run, 2 cores, 2069 s):
# dracut 8.5 (trixie only, one test), lifecycle 7, hardened 6-7, early 4,
# forky 4.5, boot 8 in all (a shared stub machine and three more per
# suite, none over 3), sysvinit 2 (bookworm only), the harness 1.
VM_MODULES_LONGEST_FIRST = ["test_dracut", "test_lifecycle", "test_hardened", "test_early", "test_forky", "test_backports", "test_verify", "test_boot",
                            "test_sysvinit", "test_publish", "test_vm_harness"]


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


@pytest.fixture(scope="session")
def broken_full_deb(newer_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 0.3: the 0.2 package, repacked with a full profile that does not compile.

    What an upgrade looks like when its new full profile (a conffile) fails on
    a machine's parser. Repacked with dpkg-deb rather than built, because no
    setting of aa-pkg can (or should) produce a profile that does not compile.
    """
    vm.require_tools("dpkg-deb")
    work = tmp_path_factory.mktemp("broken")
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", newer_deb, tree], check=True)
    profile = tree / "etc/apparmor.d/fullsystem-init"
    text = profile.read_text()
    end = text.rstrip().rindex("}")
    profile.write_text(text[:end] + "  this is not a rule,\n" + text[end:])
    control = tree / "DEBIAN/control"
    control.write_text(control.read_text().replace("Version: 0.2\n", "Version: 0.3\n"))
    assert "Version: 0.3\n" in control.read_text()
    # dh_md5sums leaves conffiles out of md5sums (dpkg keeps their sums in
    # the conffiles database), so nothing else needs updating.
    assert "etc/apparmor.d/fullsystem-init" not in (tree / "DEBIAN/md5sums").read_text()
    deb = work / "apparmor-fullsystem_0.3_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, deb], check=True, capture_output=True)
    return deb


# The site policy package a VM test installs to see a site profile loaded at
# boot: its profile is named SITE_PROBE_PROFILE, attaches to SITE_PROBE_PATH
# and is in complain mode, so loading it restricts nothing.
SITE_PROBE_PACKAGE = "site-policy-probe"
SITE_PROBE_PROFILE = "aafs-site-probe"
SITE_PROBE_PATH = "/usr/local/bin/aafs-site-probe"
SITE_PROBE_FILE = "usr.local.bin.aafs-site-probe"  # in /usr/share/apparmor-fullsystem/policy.d/


def _site_policy_probe(work: Path, version: str, profiles: dict[str, str]) -> Path:
    """`aa-pkg build` of a [site_policy] config: SITE_PROBE_PACKAGE at version, shipping profiles."""
    from aa_pkg.build import build_packages

    vm.require_tools("dpkg-buildpackage", "dh", "apparmor_parser")
    (work / "profiles").mkdir()
    for name, text in profiles.items():
        (work / "profiles" / name).write_text(text)
    config = work / "policy.toml"
    config.write_text(f'[site_policy]\npackage = "{SITE_PROBE_PACKAGE}"\nversion = "{version}"\nprofiles = "profiles"\n')
    (deb,) = build_packages(load_config(config), work / "out")
    return deb


def _site_probe_profile(name: str, path: str) -> str:
    return f"""abi <abi/3.0>,
include <tunables/global>

profile {name} {path} flags=(complain) {{
  include <abstractions/base>
  {path} mr,
}}
"""


@pytest.fixture(scope="session")
def site_policy_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SITE_PROBE_PACKAGE 1.0, for apparmor-fullsystem: one profile."""
    return _site_policy_probe(tmp_path_factory.mktemp("site-policy-probe"), "1.0",
                              {SITE_PROBE_FILE: _site_probe_profile(SITE_PROBE_PROFILE, SITE_PROBE_PATH)})


# What the upgrade of the site policy package to 1.1 adds: a second
# profile, in a file of its own.
SITE_PROBE_PROFILE_2 = "aafs-site-probe-2"
SITE_PROBE_FILE_2 = "usr.local.bin.aafs-site-probe-2"


@pytest.fixture(scope="session")
def site_policy_deb_1_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SITE_PROBE_PACKAGE 1.1: 1.0's profile and SITE_PROBE_PROFILE_2."""
    return _site_policy_probe(tmp_path_factory.mktemp("site-policy-probe-1.1"), "1.1", {
        SITE_PROBE_FILE: _site_probe_profile(SITE_PROBE_PROFILE, SITE_PROBE_PATH),
        SITE_PROBE_FILE_2: _site_probe_profile(SITE_PROBE_PROFILE_2, f"/usr/local/bin/{SITE_PROBE_PROFILE_2}")})


# Seconds spent in each test module (setup, call and teardown of its tests,
# so module fixtures count where they are made), summed over the workers.
_MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    """The run ends with a table of time per module, longest first."""
    if not _MODULE_SECONDS:
        return
    terminalreporter.section("time per module (seconds, summed over workers)")
    for module, seconds in sorted(_MODULE_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:9.1f}  {module}")
    terminalreporter.write_line(f"{sum(_MODULE_SECONDS.values()):9.1f}  (all)")
