"""Site configuration: a TOML file parsed and validated once into a frozen Config.

Every value that ends up in a file path, a profile or a shell script is checked
here against a strict pattern, so templates never have to escape a name late.
The file format is documented in README.md ("Site variants").
"""

from __future__ import annotations

import datetime
import fnmatch
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from aa_pkg.errors import ConfigError


class Stage(StrEnum):
    STUB = "stub"  # the initramfs loads the small stub; apparmor.service swaps in the full profile
    FULL = "full"  # the initramfs loads the full profile itself: PID 1 is never under the stub


class Mode(StrEnum):
    COMPLAIN = "complain"
    ENFORCE = "enforce"


DEFAULT_PACKAGE = "apparmor-fullsystem"
DEFAULT_PROFILE = "fullsystem-init"

# The package name becomes initramfs-tools script names, which must match
# [A-Za-z0-9_-]+ (initramfs-tools(7), "Hook scripts"; hook-functions skips
# anything else silently), so the '+' and '.' Debian would allow are refused.
PACKAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
# Profile names become file names under /etc/apparmor.d and words in shell.
PROFILE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
# Debian Policy 5.6.12 without a Debian revision: the source format is 3.0 (native).
NATIVE_VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*")
# Control characters (C0, DEL, C1) and the Unicode line and paragraph
# separators, for a regex character class.
CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
# It lands in debian/control and in the changelog trailer, where any of
# those would break the line.
MAINTAINER_RE = re.compile(rf"[^<>,{CONTROL}]+ <[^<>@\s{CONTROL}]+@[^<>@\s{CONTROL}]+>")
DISTRIBUTION_RE = re.compile(r"[a-z0-9][a-z0-9.-]*")
# Profile file names are shell-safe; a name that one of these rules drops
# would build a package that silently lacks the profile, so each is refused
# with its rule. ("{}" is the pattern the name matched.)
PROFILE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What is not a policy file, one rule everywhere: the names apparmor_parser
# skips when it loads a directory, as apparmor.service makes it load
# /etc/apparmor.d (libapparmor's _aa_is_blacklisted, and README), and what
# dpkg leaves beside a file while it unpacks (*.dpkg-*). aa-pkg refuses
# these names; on the target aafs_site_profiles and the hook skip them, and
# say so (templates/shared/functions.sh.j2 renders this very list).
NOT_POLICY_FILES = (".*", "README", "*.dpkg-*", "*.pacsave", "*.pacnew", "*.rpmnew", "*.rpmsave", "*.orig",
                    "*.rej", "*~")
PROFILE_FILE_DROPPED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("apparmor_parser and the initramfs hook skip {} (not a policy file)", NOT_POLICY_FILES),
    # dh_clean(1) deletes editor and patch leftovers anywhere in the source
    # tree, and `debian/rules clean` runs before every build.
    ("dh_clean deletes {} before the build",
     ("#*#", "*~", "*.orig", "*.rej", "*.bak", "DEADJOE", "TAGS", ".SUMS")),
)
# A Description synopsis (Debian Policy 3.4.1): one line, under 80 characters.
# It lands in debian/control, where a newline would start another field.
SYNOPSIS_RE = re.compile(r"[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,78}[^\s\x00-\x1f\x7f])?")


@dataclass(frozen=True)
class Changelog:
    """A changelog entry a site variant adds on top of debian/changelog."""

    version: str
    text: str
    distribution: str | None = None
    date: datetime.datetime | None = None  # None: one second after the base entry (reproducible)


@dataclass(frozen=True)
class SitePolicy:
    """A package of site profiles for the main package's policy.d (README.md, "Site policy packages")."""

    package: str
    version: str
    profiles: tuple[Path, ...]
    depends_on: str = DEFAULT_PACKAGE  # the main package: its policy.d is where the profiles go
    description: str | None = None  # the synopsis; None: one naming depends_on
    maintainer: str | None = None  # None: debian/control's
    date: datetime.datetime | None = None  # None: debian/changelog's (reproducible)


@dataclass(frozen=True)
class Config:
    package: str = DEFAULT_PACKAGE
    maintainer: str | None = None  # None: keep debian/control's
    changelog: Changelog | None = None  # None: build debian/changelog's version as is
    stage: Stage = Stage.STUB
    mode: Mode = Mode.COMPLAIN
    profile_name: str = DEFAULT_PROFILE
    extra_profiles: tuple[Path, ...] = field(default=())
    site_policy: SitePolicy | None = None  # [site_policy]: a separate package, built by `aa-pkg build` too
    source: Path | None = None  # the file this was read from, for messages

    @property
    def is_default(self) -> bool:
        """True when the main package is the standard one (whatever else the file builds)."""
        return replace(self, source=None, site_policy=None) == Config()


def _fail(where: str, message: str, hint: str) -> ConfigError:
    return ConfigError(f"{where}: {message}", hint=hint)


def _string(where: str, value: Any, pattern: re.Pattern[str] | None, hint: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, not {type(value).__name__}", hint)
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(where, f"{value!r} is not allowed", hint)
    return value


def _choice(where: str, value: Any, enum: type[StrEnum]) -> Any:
    choices = ", ".join(repr(str(c)) for c in enum)
    if value not in {str(c) for c in enum}:
        raise _fail(where, f"{value!r} is not one of {choices}", f"set it to one of {choices}")
    return enum(value)


def _datetime(where: str, value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC)
    raise _fail(where, f"{value!r} is not a TOML date", "write a bare date such as 2026-11-25 (no quotes)")


def _changelog_text(where: str, value: Any) -> str:
    """Change lines for debian/changelog that cannot end the entry or start another.

    aa_pkg.metadata makes each line that starts with text a "  * " item and
    keeps a line that starts with a space as it is, for continuations. In
    deb-changelog(5) a change line starts with two spaces; " -- " starts
    the trailer, and dpkg-parsechangelog rejects a line with one space. Any
    other line break (U+2028, a bare CR, ...) would let Python split a line
    that the user's text meant as one.
    """
    text = _string(where, value, None, "write the changelog entry as a string")
    for number, line in enumerate(text.split("\n"), start=1):
        if control := re.search(rf"(?!\t)[{CONTROL}]", line):
            raise _fail(where, f"line {number} holds U+{ord(control[0]):04X}, a control character or line separator",
                        "write plain lines, separated by newlines")
        if line.strip() and line.startswith(" ") and not line.startswith("  "):
            raise _fail(where, f"line {number} starts with one space, which debian/changelog reads as a "
                        f"trailer or a broken line: {line!r}",
                        "start the line with text (it becomes a '  * ' item) or indent it by two spaces or more")
    return text


def _utf8(where: str, raw: bytes, hint: str) -> str:
    """The text of a file that must be UTF-8; an error names the first bad byte and its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise _fail(where, f"not UTF-8: byte 0x{raw[e.start]:02x} on line {line}", hint) from None


def _dropped(name: str) -> list[str]:
    """The rules of PROFILE_FILE_DROPPED that drop a file of this name, each with the pattern it matched."""
    reasons = []
    for rule, patterns in PROFILE_FILE_DROPPED:
        matched = [pattern for pattern in patterns if fnmatch.fnmatchcase(name, pattern)]
        if matched:
            reasons.append(rule.format(repr(matched[0])))
    return reasons


def _profile_dir(where: str, value: Any, base: Path, empty_hint: str) -> tuple[Path, ...]:
    hint = "give a directory of AppArmor profiles, relative to the config file"
    if not _string(where, value, None, hint).strip():
        # "" would be the config file's own directory, the config file among its "profiles".
        raise _fail(where, "is empty", hint)
    directory = base / value
    if not directory.is_dir():
        raise _fail(where, f"{directory} is not a directory", "create it or fix the path (relative to the config file)")
    profiles = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if path.is_dir():
            continue  # apparmor_parser does not descend into one either
        if dropped := _dropped(name):
            raise _fail(where, f"profile file name {name!r} is refused: {'; '.join(dropped)}",
                        "rename or remove it; name a profile file after the program, e.g. 'usr.sbin.acme'")
        if not PROFILE_FILE_RE.fullmatch(name):
            raise _fail(where, f"profile file name {name!r} is not allowed",
                        "rename it using letters, digits, '.', '_' and '-' only")
        if not path.is_file():
            raise _fail(where, f"{path} is not a regular file", "replace the link or special file by a regular file")
        # One rule for both keys, so a profile can move between them: the
        # main package's renderer reads extra profiles as UTF-8 text.
        _utf8(f"{where}: {path}", path.read_bytes(), "save the profile as UTF-8, e.g. with iconv -f latin1 -t utf-8")
        profiles.append(path)
    if not profiles:
        raise _fail(where, f"{directory} contains no profiles", empty_hint)
    return tuple(profiles)


# The schema: section -> key -> parser(where, value, base directory).
_Parser = Callable[[str, Any, Path], Any]
SCHEMA: dict[str, dict[str, _Parser]] = {
    "package": {
        "name": lambda w, v, b: _string(w, v, PACKAGE_NAME_RE,
                                        "use lower-case letters, digits and '-' (2 to 63 characters)"),
        "maintainer": lambda w, v, b: _string(w, v, MAINTAINER_RE, "write it as 'Full Name <address@example.org>'"),
        "version": lambda w, v, b: _string(w, v, NATIVE_VERSION_RE,
                                           "use a Debian version without a '-revision', e.g. '0.1+site1'"),
        "changelog": lambda w, v, b: _changelog_text(w, v),
        "distribution": lambda w, v, b: _string(w, v, DISTRIBUTION_RE, "use a suite name such as 'unstable'"),
        "date": lambda w, v, b: _datetime(w, v),
    },
    "policy": {
        "stage": lambda w, v, b: _choice(w, v, Stage),
        "mode": lambda w, v, b: _choice(w, v, Mode),
        "profile_name": lambda w, v, b: _string(w, v, PROFILE_NAME_RE,
                                                "start with a lower-case letter; use a-z, 0-9, '_' and '-'"),
        "extra_profiles": lambda w, v, b: _profile_dir(w, v, b, "add profiles or remove the extra_profiles key"),
    },
    "site_policy": {
        "package": lambda w, v, b: _string(w, v, PACKAGE_NAME_RE,
                                           "use lower-case letters, digits and '-' (2 to 63 characters)"),
        "version": lambda w, v, b: _string(w, v, NATIVE_VERSION_RE,
                                           "use a Debian version without a '-revision', e.g. '1.0'"),
        "profiles": lambda w, v, b: _profile_dir(w, v, b, "add the profiles the package ships"),
        "depends_on": lambda w, v, b: _string(w, v, PACKAGE_NAME_RE,
                                              "name the main package, e.g. 'apparmor-fullsystem'"),
        "description": lambda w, v, b: _string(w, v, SYNOPSIS_RE,
                                               "write one line of at most 80 characters, no control characters"),
        "maintainer": lambda w, v, b: _string(w, v, MAINTAINER_RE, "write it as 'Full Name <address@example.org>'"),
        "date": lambda w, v, b: _datetime(w, v),
    },
}
# Keys a [site_policy] table cannot do without, with an example value.
SITE_POLICY_REQUIRED = {"package": "'site-policy-acme'", "version": "'1.0'", "profiles": "'profiles/'"}


def _known(keys: Any) -> str:
    return ", ".join(sorted(keys))


def load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}", hint="check the --config path") from None
    try:
        # TOML is UTF-8 (toml.io, "Spec"); tomllib would raise a bare UnicodeDecodeError.
        data = tomllib.loads(_utf8(str(path), raw, "save the file as UTF-8, e.g. with iconv -f latin1 -t utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", hint="see README.md, 'Site variants', for an example") from None

    values: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if section not in SCHEMA:
            raise _fail(f"{path}: [{section}]", "unknown section", f"known sections: {_known(SCHEMA)}")
        if not isinstance(table, dict):
            raise _fail(f"{path}: {section}", "must be a [section]", f"write [{section}] on its own line")
        values[section] = {}
        for key, value in table.items():
            where = f"{path}: [{section}] {key}"
            if key not in SCHEMA[section]:
                raise _fail(where, "unknown key", f"known keys in [{section}]: {_known(SCHEMA[section])}")
            values[section][key] = SCHEMA[section][key](where, value, path.parent)
    config = _assemble(path, values.get("package", {}), values.get("policy", {}))
    if "site_policy" in values:
        config = replace(config, site_policy=_site_policy(path, values["site_policy"], config))
    return config


def _site_policy(path: Path, table: dict[str, Any], config: Config) -> SitePolicy:
    for key, example in SITE_POLICY_REQUIRED.items():
        if key not in table:
            raise _fail(f"{path}: [site_policy] {key}", "missing", f"add {key} = {example} to [site_policy]")
    site = SitePolicy(
        package=table["package"],
        version=table["version"],
        profiles=table["profiles"],
        # The main package of this file (a variant's name when [package] sets one).
        depends_on=table.get("depends_on", config.package),
        description=table.get("description"),
        maintainer=table.get("maintainer", config.maintainer),
        date=table.get("date"),
    )
    if site.package in {site.depends_on, config.package}:
        raise _fail(f"{path}: [site_policy] package", f"{site.package!r} is the name of the main package",
                    "give the site policy package a name of its own, e.g. 'site-policy-acme'")
    return site


def _assemble(path: Path, package: dict[str, Any], policy: dict[str, Any]) -> Config:
    changelog_keys = {"changelog", "distribution", "date"} & package.keys()
    if changelog_keys and "version" not in package:
        raise _fail(f"{path}: [package] {min(changelog_keys)}", "needs a version",
                    "add version = '...' to [package]: a changelog entry belongs to a new version")
    changelog = None
    if "version" in package:
        changelog = Changelog(
            version=package["version"],
            text=package.get("changelog", "Site build."),
            distribution=package.get("distribution"),
            date=package.get("date"),
        )
    config = Config(
        package=package.get("name", DEFAULT_PACKAGE),
        maintainer=package.get("maintainer"),
        changelog=changelog,
        stage=policy.get("stage", Stage.STUB),
        mode=policy.get("mode", Mode.COMPLAIN),
        profile_name=policy.get("profile_name", DEFAULT_PROFILE),
        extra_profiles=policy.get("extra_profiles", ()),
        source=path,
    )
    if config.mode is Mode.ENFORCE and config.stage is not Stage.FULL:
        raise _fail(f"{path}: [policy] mode", "'enforce' needs stage = 'full'",
                    "the stub is always complain-mode; set stage = 'full' or mode = 'complain'")
    return config
