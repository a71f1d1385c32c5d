"""Debian metadata of a site variant, written through python-debian:
debian/control (deb822), debian/changelog (Changelog) and the settings file
debian/rules hands to the renderer; and the control and changelog of a site
policy package."""

from __future__ import annotations

import datetime
import email.utils
import json
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path

from debian.changelog import Changelog, format_date
from debian.deb822 import Deb822

from aa_pkg.config import DEFAULT_PACKAGE, Config, SitePolicy
from aa_pkg.errors import ConfigError
from aa_pkg.render import Paths
from aa_pkg.source import debian_skeleton

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


def _skeleton() -> tuple[Deb822, Changelog]:
    """The main package's debian/control source paragraph and debian/changelog."""
    skeleton = debian_skeleton()
    source = next(Deb822.iter_paragraphs((skeleton / "control").read_text(), use_apt_pkg=False))
    return source, Changelog((skeleton / "changelog").read_text())


def complete_site_policy(site: SitePolicy) -> SitePolicy:
    """Fill in what the settings left out from the main package's debian/: its
    maintainer, and its changelog date, so that two builds are byte-identical."""
    source, changelog = _skeleton()
    return replace(site, maintainer=site.maintainer or source["Maintainer"],
                   date=site.date or email.utils.parsedate_to_datetime(changelog.date))


def site_policy_description(site: SitePolicy) -> str:
    """Synopsis, then the extended description (Debian Policy 5.6.13)."""
    synopsis = site.description or f"site AppArmor profiles for {site.depends_on}"
    names = ", ".join(p.name for p in site.profiles)
    paragraphs = [
        (f"These AppArmor profiles are installed into {Paths(site.depends_on).vendor_policy}/, from where "
         f"{site.depends_on} loads them from the initramfs, before init runs. Installing, upgrading or "
         f"removing this package rebuilds the initramfs (a file trigger of {site.depends_on})."),
        f"Profile files: {names}.",
    ]
    body = "\n.\n".join(textwrap.fill(p, 72, break_long_words=False, break_on_hyphens=False)
                         for p in paragraphs)
    return synopsis + "".join(f"\n {line}" for line in body.splitlines())


def write_site_policy_control(site: SitePolicy, control: Path) -> None:
    main, _ = _skeleton()
    assert site.maintainer is not None, "complete_site_policy first"
    source = Deb822()
    source["Source"] = site.package
    source["Section"] = "admin"
    source["Priority"] = "optional"
    source["Maintainer"] = site.maintainer
    source["Build-Depends"] = "debhelper-compat (= 13)"
    source["Standards-Version"] = main["Standards-Version"]
    source["Rules-Requires-Root"] = "no"
    binary = Deb822()
    binary["Package"] = site.package
    binary["Architecture"] = "all"
    # The plugin directory and its file trigger belong to the main package.
    binary["Depends"] = f"{site.depends_on}, ${{misc:Depends}}"
    binary["Description"] = site_policy_description(site)
    control.write_text("\n".join(p.dump() for p in (source, binary)))


def write_site_policy_changelog(site: SitePolicy, changelog_path: Path) -> None:
    _, main = _skeleton()
    assert site.maintainer is not None and site.date is not None, "complete_site_policy first"
    changelog = Changelog()
    changelog.new_block(
        package=site.package,
        version=site.version,
        distributions=main.distributions,
        urgency="medium",
        author=site.maintainer,
        date=format_date(site.date.timestamp(), localtime=False),
    )
    changelog.add_change("")
    text = f"Site AppArmor profiles for {site.depends_on}: {', '.join(p.name for p in site.profiles)}."
    changelog.add_change(textwrap.fill(text, 78, initial_indent="  * ", subsequent_indent="    ",
                                       break_long_words=False, break_on_hyphens=False))
    changelog.add_change("")
    changelog_path.write_text(str(changelog))
