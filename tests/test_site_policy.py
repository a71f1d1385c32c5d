"""Site policy packages ([site_policy]): settings, generated source, and the real build."""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path

import pytest
from debian.deb822 import Deb822

import vm
from aa_pkg import build as build_module
from aa_pkg.build import build_packages, build_site_policy
from aa_pkg.config import load_config
from aa_pkg.errors import ConfigError, PolicyError
from aa_pkg.metadata import complete_site_policy, write_site_policy_control
from aa_pkg.render import TEMPLATES, render_site_policy
from conftest import SITE_PROBE_FILE as PROBE_FILE
from conftest import SITE_PROBE_PACKAGE as PROBE_PACKAGE
from conftest import SITE_PROBE_PATH as PROBE_PATH
from conftest import SITE_PROBE_PROFILE as PROBE_PROFILE
from test_build import errors_and_warnings, lintian
from test_main import aa_pkg, build_fails_cleanly

# PROBE_*: what the session fixture site_policy_deb (conftest.py) ships, under
# the names the VM tests import from here.
__all__ = ["PROBE_FILE", "PROBE_PACKAGE", "PROBE_PATH", "PROBE_PROFILE"]
POLICY_DIR = "usr/share/apparmor-fullsystem/policy.d"
PROFILES = {
    "usr.local.bin.aafs-site-test": """abi <abi/3.0>,
include <tunables/global>

profile aafs-site-test /usr/local/bin/aafs-site-test {
  include <abstractions/base>
  /usr/local/bin/aafs-site-test mr,
  owner @{HOME}/.aafs-site-test rw,
}
""",
    "aafs-site-other": """abi <abi/3.0>,
include <tunables/global>

profile aafs-site-other /usr/local/bin/aafs-site-other flags=(complain) {
  include <abstractions/base>
  /etc/hostname r,
}
""",
}
BROKEN = """abi <abi/3.0>,
profile broken /usr/local/bin/broken {
  this is not a rule,
}
"""


def site(tmp_path: Path, table: str = "", profiles: dict[str, str] = PROFILES, before: str = "") -> Path:
    """A config file with a [site_policy] table and a profiles/ directory next to it."""
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    for name, text in profiles.items():
        (directory / name).write_text(text)
    config = tmp_path / "policy.toml"
    config.write_text(before + '[site_policy]\npackage = "site-policy-example"\nversion = "1.0"\n'
                      'profiles = "profiles/"\n' + table)
    return config


# --- settings ---------------------------------------------------------------

def test_minimal_table(tmp_path: Path) -> None:
    config = load_config(site(tmp_path))
    assert config.is_default  # the main package is the standard one: only the site policy is built
    policy = config.site_policy
    assert policy is not None
    assert (policy.package, policy.version, policy.depends_on) == ("site-policy-example", "1.0", "apparmor-fullsystem")
    assert [p.name for p in policy.profiles] == sorted(PROFILES)
    assert policy.description is None and policy.maintainer is None and policy.date is None


def test_full_table_and_variant_defaults(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, 'description = "ACME site profiles"\ndate = 2027-01-02\n', before="""
[package]
name = "apparmor-fullsystem-acme"
version = "0.1+acme1"
maintainer = "ACME Security <security@acme.example>"
"""))
    assert not config.is_default
    policy = config.site_policy
    assert policy is not None
    assert policy.depends_on == "apparmor-fullsystem-acme"  # the variant of this file
    assert policy.maintainer == "ACME Security <security@acme.example>"  # [package]'s
    assert policy.description == "ACME site profiles"
    assert policy.date == datetime.datetime(2027, 1, 2, tzinfo=datetime.UTC)
    explicit = load_config(site(tmp_path, 'depends_on = "apparmor-fullsystem"\nmaintainer = "A B <a@b.example>"\n'))
    assert explicit.site_policy is not None
    assert (explicit.site_policy.depends_on, explicit.site_policy.maintainer) == ("apparmor-fullsystem",
                                                                                  "A B <a@b.example>")


def assert_refused(path: Path, names: str, hint: str) -> None:
    """load_config refuses the file, naming the file and the key, with a hint."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message and names in caught.value.message
    assert caught.value.hint is not None and hint in caught.value.hint


@pytest.mark.parametrize(("table", "names", "hint"), [
    ("depends-on = 'apparmor-fullsystem'\n", "[site_policy] depends-on: unknown key", "known keys in [site_policy]"),
    ("depends_on = 'Apparmor Fullsystem'\n", "[site_policy] depends_on: 'Apparmor Fullsystem' is not allowed",
     "name the main package"),
    ("depends_on = 'site-policy-example'\n", "[site_policy] package: 'site-policy-example' is the name of the main",
     "a name of its own"),
    ('description = "two\\nlines"\n', "[site_policy] description", "one line of at most 80 characters"),
    (f"description = '{'x' * 81}'\n", "[site_policy] description", "one line of at most 80 characters"),
    ("maintainer = 'nobody'\n", "[site_policy] maintainer", "Full Name <address@example.org>"),
    ("date = 'yesterday'\n", "[site_policy] date", "bare date"),
])
def test_bad_values_name_file_key_and_fix(tmp_path: Path, table: str, names: str, hint: str) -> None:
    path = site(tmp_path, table)
    assert_refused(path, names, hint)


@pytest.mark.parametrize(("text", "names", "hint"), [
    ("[site_policy]\nversion = '1.0'\nprofiles = 'profiles'\n", "[site_policy] package: missing", "add package ="),
    ("[site_policy]\npackage = 'site-x'\nprofiles = 'profiles'\n", "[site_policy] version: missing", "add version ="),
    ("[site_policy]\npackage = 'site-x'\nversion = '1.0'\n", "[site_policy] profiles: missing", "add profiles ="),
    ("[site_policy]\npackage = 'site_x'\n", "[site_policy] package: 'site_x' is not allowed", "lower-case letters"),
    ("[site_policy]\nversion = '1.0-1'\n", "[site_policy] version: '1.0-1' is not allowed", "without a '-revision'"),
    ("[site_policy]\nprofiles = 'nowhere'\n", "[site_policy] profiles", "create it or fix the path"),
    ("[site_policy]\nprofiles = 'empty'\n", "[site_policy] profiles", "add the profiles the package ships"),
    (("[package]\nname = 'site-x'\nversion = '1'\n"
      "[site_policy]\npackage = 'site-x'\nversion = '1.0'\nprofiles = 'profiles'\n"),
     "[site_policy] package: 'site-x' is the name of the main package", "its own"),
    ("[site-policy]\n", "[site-policy]: unknown section", "site_policy"),
])
def test_bad_tables(tmp_path: Path, text: str, names: str, hint: str) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a").write_text(PROFILES["aafs-site-other"])
    (tmp_path / "empty").mkdir()
    path = tmp_path / "policy.toml"
    path.write_text(text)
    assert_refused(path, names, hint)


def test_profile_file_names_follow_the_extra_profiles_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[site_policy\] profiles: profile file name 'x.dpkg-old'"):
        load_config(site(tmp_path, profiles={**PROFILES, "x.dpkg-old": ""}))


# --- the generated source ---------------------------------------------------

def test_site_policy_templates_open_with_a_header() -> None:
    templates = sorted((TEMPLATES / "site-policy").glob("*.j2"))
    assert [t.name for t in templates] == ["copyright.j2", "format.j2", "install.j2", "rules.j2"]
    for template in templates:
        assert template.read_text().startswith("{# Rendered to "), template


def test_generated_source(tmp_path: Path) -> None:
    policy = load_config(site(tmp_path)).site_policy
    assert policy is not None
    source = tmp_path / "source"
    completed = complete_site_policy(policy)
    render_site_policy(completed, source)
    write_site_policy_control(completed, source / "debian/control")
    rules = source / "debian/rules"
    assert rules.read_text().startswith("#!/usr/bin/make -f\n") and rules.stat().st_mode & 0o777 == 0o755
    assert "deb-triggers(5)" in rules.read_text()
    install = [line for line in (source / "debian/install").read_text().splitlines() if not line.startswith("#")]
    assert install == [f"profiles/{name} {POLICY_DIR}/" for name in sorted(PROFILES)]
    for name, text in PROFILES.items():
        assert (source / "profiles" / name).read_text() == text
        assert (source / "profiles" / name).stat().st_mode & 0o777 == 0o644
    assert (source / "debian/source/format").read_text() == "3.0 (native)\n"
    assert "Files: *\nCopyright: 2026 apparmor-fullsystem developers\n" in (source / "debian/copyright").read_text()
    control, binary = Deb822.iter_paragraphs((source / "debian/control").read_text(), use_apt_pkg=False)
    assert control["Build-Depends"] == "debhelper-compat (= 13)" and control["Rules-Requires-Root"] == "no"
    assert binary["Depends"] == "apparmor-fullsystem, ${misc:Depends}"


# --- the real build -----------------------------------------------------------

def dpkg_deb(*args: str | Path) -> str:
    vm.require_tools("dpkg-deb")
    return subprocess.run(["dpkg-deb", *map(str, args)], check=True, capture_output=True, text=True).stdout


def require_build_tools() -> None:
    vm.require_tools("dpkg-buildpackage", "dh", "apparmor_parser")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_build_tools()
    work = tmp_path_factory.mktemp("site-policy")
    (deb,) = build_packages(load_config(site(work)), work / "out")
    return deb


@pytest.mark.tools
@pytest.mark.slow
def test_package_contents(example: Path) -> None:
    assert example.name == "site-policy-example_1.0_all.deb"
    listing = {line.split()[-1]: line.split()[0] for line in dpkg_deb("-c", example).splitlines()}
    profiles = {path: mode for path, mode in listing.items() if path.startswith(f"./{POLICY_DIR}/")
                and not path.endswith("/")}
    assert profiles == {f"./{POLICY_DIR}/{name}": "-rw-r--r--" for name in PROFILES}
    assert set(listing) - set(profiles) == {
        "./", "./usr/", "./usr/share/", "./usr/share/apparmor-fullsystem/", f"./{POLICY_DIR}/",
        "./usr/share/doc/", "./usr/share/doc/site-policy-example/",
        "./usr/share/doc/site-policy-example/changelog.gz", "./usr/share/doc/site-policy-example/copyright"}
    assert all("root/root" in line for line in dpkg_deb("-c", example).splitlines())
    assert dpkg_deb("-f", example, "Package", "Architecture", "Section", "Depends").splitlines() == [
        "Package: site-policy-example", "Architecture: all", "Section: admin", "Depends: apparmor-fullsystem"]
    # No maintainer scripts, no triggers, no conffiles: the main package's
    # file trigger on policy.d rebuilds the initramfs (deb-triggers(5)).
    assert control_members(example) == ["control", "md5sums"]


def control_members(deb: Path) -> list[str]:
    """The control area's files, from `dpkg-deb -I` ("<size> bytes, <n> lines [*] <name> [interpreter]")."""
    members = []
    for line in dpkg_deb("-I", deb).splitlines():
        words = line.split()
        if words[1:2] == ["bytes,"] and "lines" in words:
            members.append(next(w for w in words[words.index("lines") + 1:] if w != "*"))
    return sorted(members)


@pytest.mark.tools
@pytest.mark.slow
def test_installed_profiles_are_the_given_bytes(example: Path, tmp_path: Path) -> None:
    dpkg_deb("-x", example, tmp_path)
    for name, text in PROFILES.items():
        assert (tmp_path / POLICY_DIR / name).read_text() == text


@pytest.mark.tools
@pytest.mark.slow
def test_lintian_clean(example: Path) -> None:
    assert errors_and_warnings(lintian(str(example))) == []


@pytest.mark.tools
@pytest.mark.slow
def test_builds_are_reproducible(example: Path, tmp_path: Path) -> None:
    require_build_tools()
    time.sleep(1.1)  # another wall-clock second than the first build
    (again,) = build_packages(load_config(site(tmp_path)), tmp_path / "out")
    assert again.read_bytes() == example.read_bytes()


@pytest.mark.tools
@pytest.mark.slow
def test_into_a_variant(tmp_path: Path) -> None:
    require_build_tools()
    config = load_config(site(tmp_path, 'depends_on = "apparmor-fullsystem-acme"\n'
                                        'description = "ACME site profiles"\n'))
    assert config.site_policy is not None
    deb = build_site_policy(config.site_policy, tmp_path / "out")
    assert dpkg_deb("-f", deb, "Depends", "Description").startswith(
        "Depends: apparmor-fullsystem-acme\nDescription: ACME site profiles\n")
    assert f"./usr/share/apparmor-fullsystem-acme/policy.d/{min(PROFILES)}" in dpkg_deb("-c", deb)


@pytest.mark.tools
def test_broken_profile_builds_nothing(tmp_path: Path) -> None:
    vm.require_tools("apparmor_parser")
    path = site(tmp_path, profiles={**PROFILES, "broken": BROKEN})
    with pytest.raises(PolicyError) as caught:
        build_packages(load_config(path), tmp_path / "out")
    assert f"{tmp_path / 'profiles' / 'broken'}: does not compile" in caught.value.message
    assert "at line 3" in caught.value.message and "\n" not in caught.value.message
    assert caught.value.hint is not None and "fix the profile" in caught.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.tools
def test_profiles_are_checked_before_the_variant_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm.require_tools("apparmor_parser", "dpkg-buildpackage", "dh", "dh_apparmor")
    built: list[str] = []
    monkeypatch.setattr(build_module, "build", lambda config, out: built.append(config.package) or out / "main.deb")
    monkeypatch.setattr(build_module, "build_site_policy",
                        lambda policy, out: built.append(policy.package) or out / "site.deb")
    variant = "[package]\nname = 'apparmor-fullsystem-acme'\nversion = '0.1+acme1'\n"
    with pytest.raises(PolicyError):
        build_packages(load_config(site(tmp_path, profiles={"broken": BROKEN}, before=variant)), tmp_path)
    assert built == []
    (tmp_path / "profiles" / "broken").unlink()
    build_packages(load_config(site(tmp_path, before=variant)), tmp_path)
    assert built == ["apparmor-fullsystem-acme", "site-policy-example"]


@pytest.mark.tools
@pytest.mark.slow
def test_command_line(tmp_path: Path) -> None:
    require_build_tools()
    out = tmp_path / "dist"
    result = aa_pkg("build", "--config", str(site(tmp_path)), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out / 'site-policy-example_1.0_all.deb'}\n"


@pytest.mark.tools
def test_command_line_broken_profile(tmp_path: Path) -> None:
    vm.require_tools("apparmor_parser")
    error, hint = build_fails_cleanly(site(tmp_path, profiles={**PROFILES, "broken": BROKEN}), tmp_path / "dist")
    assert error.startswith(f"{tmp_path / 'profiles' / 'broken'}: does not compile: ")
    assert "at line 3" in error
    assert hint == "fix the profile; apparmor_parser names the line"


@pytest.mark.parametrize("table", ["nonsense = 1\n", "version = '1.0-1'\n"])
def test_command_line_bad_config(tmp_path: Path, table: str) -> None:
    config = tmp_path / "policy.toml"
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a").write_text(PROFILES["aafs-site-other"])
    config.write_text(f"[site_policy]\npackage = 'site-x'\nprofiles = 'profiles'\n{table}")
    error, _ = build_fails_cleanly(config, tmp_path / "dist")
    assert error.startswith(f"{config}: [site_policy] {table.split()[0]}: ")


# --- the session fixture a VM test installs -----------------------------------

@pytest.mark.tools
@pytest.mark.slow
def test_probe_fixture(site_policy_deb: Path, tmp_path: Path) -> None:
    assert site_policy_deb.name == f"{PROBE_PACKAGE}_1.0_all.deb"
    dpkg_deb("-x", site_policy_deb, tmp_path)
    profile = tmp_path / POLICY_DIR / PROBE_FILE
    names = subprocess.run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "--names", profile],
                           check=True, capture_output=True, text=True).stdout
    assert names == f"{PROBE_PROFILE}\n"
    assert f"profile {PROBE_PROFILE} {PROBE_PATH} flags=(complain) {{" in profile.read_text()
