"""Debian metadata of a site variant, written through python-debian:
debian/control (deb822), debian/changelog (Changelog) and the settings file
debian/rules hands to the renderer."""

from __future__ import annotations

import datetime
import email.utils
import json
import shutil
from pathlib import Path

from debian.changelog import Changelog, format_date
from debian.deb822 import Deb822

from aa_pkg.config import DEFAULT_PACKAGE, Config
from aa_pkg.errors import ConfigError

SITE_CONFIG = "aa-pkg.toml"  # debian/rules passes it to `aa_pkg render` when present
SITE_PROFILES = "site-profiles"


def rewrite_control(config: Config, control: Path) -> None:
    source, *binaries = list(Deb822.iter_paragraphs(control.read_text(), use_apt_pkg=False))
    source["Source"] = config.package
    if config.maintainer:
        source["Maintainer"] = config.maintainer
    binary = binaries[0]
    binary["Package"] = config.package
    if config.package != DEFAULT_PACKAGE:
        # A variant takes the standard package's place: same paths in
        # /etc/apparmor.d and the same profile name, so never both at once.
        for field in ("Provides", "Conflicts", "Replaces"):
            binary[field] = DEFAULT_PACKAGE
    control.write_text("\n".join(p.dump() for p in (source, *binaries)))


def add_changelog_entry(config: Config, changelog_path: Path) -> None:
    changelog = Changelog(changelog_path.read_text())
    if config.changelog is None:
        if config.package != changelog.package:
            raise ConfigError(f"{config.source}: [package] name differs from debian/changelog's "
                              f"{changelog.package!r} but no version is given",
                              hint="add version = '...' (e.g. '0.1+site1') so the variant has its own changelog entry")
        return
    entry = config.changelog
    if entry.date is not None:
        date = format_date(entry.date.timestamp(), localtime=False)
    else:
        # One second after the base entry: reproducible (no clock read), and
        # later than the entry below it, as Debian Policy 4.4 requires.
        base = email.utils.parsedate_to_datetime(changelog.date)
        date = format_date((base + datetime.timedelta(seconds=1)).timestamp(), localtime=False)
    changelog.new_block(
        package=config.package,
        version=entry.version,
        distributions=entry.distribution or changelog.distributions,
        urgency="medium",
        author=config.maintainer or changelog.author,
        date=date,
    )
    changelog.add_change("")
    for line in entry.text.strip().splitlines():
        changelog.add_change(f"  * {line.strip()}" if line.strip() and not line.startswith(" ") else line)
    changelog.add_change("")
    changelog_path.write_text(str(changelog))


def write_site_config(config: Config, debian: Path) -> None:
    """The settings the renderer needs, with extra profiles copied into the tree."""
    lines = ["# Written by aa-pkg build; read by debian/rules (aa_pkg render).", "[package]",
             f"name = {json.dumps(config.package)}", "[policy]",
             f"stage = {json.dumps(str(config.stage))}", f"mode = {json.dumps(str(config.mode))}",
             f"profile_name = {json.dumps(config.profile_name)}"]
    if config.extra_profiles:
        target = debian / SITE_PROFILES
        target.mkdir()
        for profile in config.extra_profiles:
            shutil.copy2(profile, target / profile.name)
        lines.append(f"extra_profiles = {json.dumps(SITE_PROFILES)}")
    # TOML basic strings accept JSON string escapes, and every value here is
    # validated already, so json.dumps quotes them exactly.
    (debian / SITE_CONFIG).write_text("\n".join(lines) + "\n")


def apply_config(config: Config, source: Path) -> None:
    debian = source / "debian"
    if config.is_default:
        return
    add_changelog_entry(config, debian / "changelog")
    rewrite_control(config, debian / "control")
    write_site_config(config, debian)
