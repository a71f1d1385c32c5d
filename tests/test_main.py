"""The command line: errors are one line and a hint, never a traceback or a partial .deb."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def aa_pkg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aa_pkg", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def build_fails_cleanly(config: Path, out: Path) -> tuple[str, str]:
    """`python -m aa_pkg build` exits 1 with two lines, error and hint, and writes no .deb."""
    result = aa_pkg("build", "--config", str(config), "--out", str(out), cwd=config.parent)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
    error, hint = lines
    assert error.startswith("aa-pkg: error: ") and hint.startswith("aa-pkg: hint: ")
    return error.removeprefix("aa-pkg: error: "), hint.removeprefix("aa-pkg: hint: ")


@pytest.mark.parametrize("text", [
    "[package]\nname = 'Bad Name'\n",
    "[policy]\nmode = 'enforce'\n",
    "[policy]\nprofile_name = '../../etc/passwd'\n",
    "[nonsense]\n",
    "not toml at all [\n",
    # a line break in the changelog trailer
    "[package]\nversion = '0.1+acme1'\nmaintainer = \"ACME\\rforged (9.9) unstable; urgency=high <a@acme.example>\"\n",
    "[package]\nversion = '0.1+acme1'\nmaintainer = \"ACME\\u2028 -- Mallory <a@acme.example>\"\n",
])
def test_bad_config_fails_cleanly(tmp_path: Path, text: str) -> None:
    config = tmp_path / "site.toml"
    config.write_text(text)
    out = tmp_path / "dist"
    result = aa_pkg("build", "--config", str(config), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"aa-pkg: error: {config}")
    assert lines[1].startswith("aa-pkg: hint: ")
    assert "Traceback" not in result.stderr
    assert not out.exists() or not list(out.iterdir())


def test_config_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_bytes(b"[package]\nversion = '0.1+acme1'\nchangelog = 'Caf\xe9 build.'\n")
    error, hint = build_fails_cleanly(config, tmp_path / "dist")
    assert error == f"{config}: not UTF-8: byte 0xe9 on line 3"
    assert "UTF-8" in hint


PROFILE = b"""abi <abi/3.0>,
profile acme /usr/sbin/acme flags=(complain) {
  /usr/sbin/acme mr,
}
"""
# The two keys that name a directory of profiles, and a config file that sets each.
PROFILE_KEYS = {
    "[policy] extra_profiles": "[policy]\nextra_profiles = '{}'\n",
    "[site_policy] profiles": "[site_policy]\npackage = 'site-policy-acme'\nversion = '1.0'\nprofiles = '{}'\n",
}


def profiles_config(tmp_path: Path, key: str, files: dict[str, bytes], directory: str = "profiles") -> Path:
    """site.toml with `key` set to `directory`, which holds `files`."""
    (tmp_path / "profiles").mkdir()
    for name, data in files.items():
        (tmp_path / "profiles" / name).write_bytes(data)
    config = tmp_path / "site.toml"
    config.write_text(PROFILE_KEYS[key].format(directory))
    return config


@pytest.mark.parametrize("key", PROFILE_KEYS)
def test_profile_not_utf8(tmp_path: Path, key: str) -> None:
    profile = tmp_path / "profiles" / "usr.sbin.acme"
    config = profiles_config(tmp_path, key, {profile.name: PROFILE.replace(b",\n", b",\n# Caf\xe9\n", 1)})
    error, hint = build_fails_cleanly(config, tmp_path / "dist")
    assert error == f"{config}: {key}: {profile}: not UTF-8: byte 0xe9 on line 2"
    assert "UTF-8" in hint


@pytest.mark.parametrize("key", PROFILE_KEYS)
@pytest.mark.parametrize(("name", "rule"), [
    (".hidden", "apparmor_parser and the initramfs hook skip '.*' (not a policy file)"),
    ("README", "apparmor_parser and the initramfs hook skip 'README' (not a policy file)"),
    ("usr.sbin.acme.pacnew", "apparmor_parser and the initramfs hook skip '*.pacnew' (not a policy file)"),
    ("usr.sbin.acme.dpkg-tmp", "apparmor_parser and the initramfs hook skip '*.dpkg-*' (not a policy file)"),
    ("usr.sbin.acme.bak", "dh_clean deletes '*.bak' before the build"),
    ("TAGS", "dh_clean deletes 'TAGS' before the build"),
])
def test_profile_file_name_that_would_be_dropped(tmp_path: Path, key: str, name: str, rule: str) -> None:
    """A file the build or the target would drop, beside one that is fine, is refused with the rule."""
    config = profiles_config(tmp_path, key, {"usr.sbin.acme": PROFILE, name: PROFILE.replace(b"acme", b"other")})
    error, hint = build_fails_cleanly(config, tmp_path / "dist")
    assert error.startswith(f"{config}: {key}: profile file name {name!r} is refused: ")
    assert rule in error
    assert hint.startswith("rename or remove it")


@pytest.mark.tools
def test_extra_profile_that_does_not_compile(tmp_path: Path) -> None:
    """Compiled before the build: the error names the user's file and line, not its copy in debian/rendered/."""
    import vm

    vm.require_tools("apparmor_parser", "dpkg-buildpackage", "dh", "dh_apparmor")
    broken = PROFILE.replace(b"  /usr/sbin/acme mr,\n", b"  this is not a rule,\n")
    config = profiles_config(tmp_path, "[policy] extra_profiles", {"usr.sbin.acme": PROFILE, "broken": broken})
    error, hint = build_fails_cleanly(config, tmp_path / "dist")
    assert error.startswith(f"{tmp_path / 'profiles' / 'broken'}: does not compile: ")
    assert "at line 3" in error and "debian/rendered" not in error
    assert hint == "fix the profile; apparmor_parser names the line"


@pytest.mark.parametrize("key", PROFILE_KEYS)
@pytest.mark.parametrize(("directory", "message"), [
    ("", "is empty"),
    ("profiles", "profiles contains no profiles"),
    ("profiles/", "profiles contains no profiles"),
])
def test_no_profiles(tmp_path: Path, key: str, directory: str, message: str) -> None:
    config = profiles_config(tmp_path, key, {}, directory)
    (tmp_path / "profiles" / "subdirectory").mkdir()
    (tmp_path / "profiles" / "subdirectory" / "usr.sbin.acme").write_bytes(PROFILE)  # not loaded from there
    error, _ = build_fails_cleanly(config, tmp_path / "dist")
    assert error.startswith(f"{config}: {key}: ") and error.endswith(message)


FORGED_TRAILER = " -- Mallory <mallory@evil.example>  Mon, 01 Jan 2024 00:00:00 +0000"


@pytest.mark.parametrize(("text", "message"), [
    (f"Real change.\n{FORGED_TRAILER}", "line 2 starts with one space"),
    ("Real change.\n evil (9.9) unstable; urgency=high", "line 2 starts with one space"),
    (f"Real change.\u2028{FORGED_TRAILER}", "line 1 holds U+2028"),
    (f"Real change.\r{FORGED_TRAILER}", "line 1 holds U+000D"),
])
def test_changelog_text_cannot_end_the_entry(tmp_path: Path, text: str, message: str) -> None:
    """No text can forge a trailer (maintainer, date) or an entry in debian/changelog."""
    config = tmp_path / "site.toml"
    config.write_text(f"[package]\nversion = '0.1+acme1'\nchangelog = {json.dumps(text)}\n")
    error, hint = build_fails_cleanly(config, tmp_path / "dist")
    assert error.startswith(f"{config}: [package] changelog: {message}")
    assert "line" in hint


def test_help_and_version(tmp_path: Path) -> None:
    assert "build" in aa_pkg("--help", cwd=tmp_path).stdout
    assert aa_pkg("--version", cwd=tmp_path).stdout.startswith("aa-pkg ")


def test_query(tmp_path: Path) -> None:
    assert aa_pkg("query", "profile_name", cwd=tmp_path).stdout == "fullsystem-init\n"
