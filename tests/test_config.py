from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from aa_pkg.config import Config, Mode, Stage, load_config
from aa_pkg.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_empty_file_is_the_default_package(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.is_default
    assert config.package == "apparmor-fullsystem" and config.stage is Stage.STUB and config.mode is Mode.COMPLAIN


def test_full_site_config(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "usr.sbin.acme").write_text("profile acme /usr/sbin/acme { }\n")
    config = load_config(write(tmp_path, """
[package]
name = "apparmor-fullsystem-acme"
version = "0.1+acme1"
changelog = "ACME build."
maintainer = "ACME Security <security@acme.example>"
date = 2026-11-25
[policy]
stage = "full"
mode = "enforce"
profile_name = "acme-init"
extra_profiles = "profiles"
"""))
    assert not config.is_default
    assert config.package == "apparmor-fullsystem-acme"
    assert config.changelog is not None and config.changelog.version == "0.1+acme1"
    assert config.changelog.date == datetime.datetime(2026, 11, 25, tzinfo=datetime.timezone.utc)
    assert (config.stage, config.mode, config.profile_name) == (Stage.FULL, Mode.ENFORCE, "acme-init")
    assert [p.name for p in config.extra_profiles] == ["usr.sbin.acme"]


@pytest.mark.parametrize(("text", "names", "hint"), [
    ("[package]\nnmae = 'x'\n", "[package] nmae: unknown key", "known keys in [package]"),
    ("[pakage]\n", "[pakage]: unknown section", "known sections: package, policy"),
    ("[package]\nname = 'apparmor.full'\n", "[package] name: 'apparmor.full' is not allowed", "lower-case"),
    ("[package]\nname = 'x; rm -rf /'\n", "[package] name", "lower-case"),
    ("[policy]\nprofile_name = 'init$(reboot)'\n", "[policy] profile_name", "start with a lower-case letter"),
    ("[policy]\nprofile_name = 'a/b'\n", "[policy] profile_name", "start with a lower-case letter"),
    ("[policy]\nstage = 'ful'\n", "[policy] stage: 'ful' is not one of 'stub', 'full'", "set it to one of"),
    ("[policy]\nmode = 'enforce'\n", "[policy] mode: 'enforce' needs stage = 'full'", "stub is always"),
    ("[policy]\nstage = 3\n", "[policy] stage: 3 is not one of", "set it to one of"),
    ("[package]\nversion = '1.0-1'\n", "[package] version: '1.0-1' is not allowed", "without a '-revision'"),
    ("[package]\nmaintainer = 'nobody'\n", "[package] maintainer", "Full Name <address@example.org>"),
    ("[package]\nchangelog = 'x'\n", "[package] changelog: needs a version", "add version"),
    ("[package]\nversion = '1.0'\ndate = '2026'\n", "[package] date", "bare date"),
    ("[policy]\nextra_profiles = 'nowhere'\n", "[policy] extra_profiles", "create it or fix the path"),
    ("[package\n", "not valid TOML", "README.md"),
    ("package = 1\n", "package: must be a [section]", "[package]"),
])
def test_bad_values_name_file_key_and_fix(tmp_path: Path, text: str, names: str, hint: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert names in caught.value.message
    assert caught.value.hint is not None and hint in caught.value.hint


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 3"):
        load_config(write(tmp_path, "[package]\nname = 'a'\nversion = \n"))


def test_extra_profile_file_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad name").write_text("")
    with pytest.raises(ConfigError, match="profile file name 'bad name' is not allowed"):
        load_config(write(tmp_path, "[policy]\nextra_profiles = 'profiles'\n"))
    (tmp_path / "profiles" / "bad name").rename(tmp_path / "profiles" / "x.dpkg-old")
    with pytest.raises(ConfigError, match="x.dpkg-old"):
        load_config(write(tmp_path, "[policy]\nextra_profiles = 'profiles'\n"))


SKIP = "apparmor_parser and the initramfs hook skip"


@pytest.mark.parametrize(("name", "rules"), [
    (".hidden", [f"{SKIP} '.*'"]),
    (".SUMS", [f"{SKIP} '.*'", "dh_clean deletes '.SUMS'"]),
    ("README", [f"{SKIP} 'README'"]),
    *[(f"acme{suffix}", [f"{SKIP} '*.dpkg-*'"])
      for suffix in (".dpkg-new", ".dpkg-old", ".dpkg-dist", ".dpkg-bak", ".dpkg-remove", ".dpkg-tmp")],
    *[(f"acme{suffix}", [f"{SKIP} '*{suffix}'"]) for suffix in (".pacsave", ".pacnew", ".rpmnew", ".rpmsave")],
    ("acme.orig", [f"{SKIP} '*.orig'", "dh_clean deletes '*.orig'"]),
    ("acme.rej", [f"{SKIP} '*.rej'", "dh_clean deletes '*.rej'"]),
    ("acme~", [f"{SKIP} '*~'", "dh_clean deletes '*~'"]),
    ("#acme#", ["dh_clean deletes '#*#'"]),
    ("acme.bak", ["dh_clean deletes '*.bak'"]),
    ("DEADJOE", ["dh_clean deletes 'DEADJOE'"]),
    ("TAGS", ["dh_clean deletes 'TAGS'"]),
])
def test_profile_file_names_that_would_be_dropped(tmp_path: Path, name: str, rules: list[str]) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / name).write_text("profile acme /usr/sbin/acme { }\n")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "[policy]\nextra_profiles = 'profiles'\n"))
    prefix = f"{tmp_path / 'site.toml'}: [policy] extra_profiles: profile file name {name!r} is refused: "
    assert caught.value.message.startswith(prefix)
    reasons = caught.value.message.removeprefix(prefix).split("; ")
    assert len(reasons) == len(rules) and all(reason.startswith(rule) for reason, rule in zip(reasons, rules))


@pytest.mark.parametrize("name", ["usr.sbin.acme", "acme.dpkg", "acme_1.0", "bakery", "README.acme", "tags"])
def test_profile_file_names_that_are_kept(tmp_path: Path, name: str) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / name).write_text("profile acme /usr/sbin/acme { }\n")
    config = load_config(write(tmp_path, "[policy]\nextra_profiles = 'profiles'\n"))
    assert [p.name for p in config.extra_profiles] == [name]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_default_config_is_default() -> None:
    assert Config().is_default
