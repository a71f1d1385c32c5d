"""`aa-pkg build`: source tree -> dpkg-buildpackage -> the .deb in the output directory.

Building through debian/rules is deliberate: debhelper adds the
update-initramfs trigger (dh_installinitramfs) and the profile reload
(dh_apparmor), so `aa-pkg build` and `dpkg-buildpackage` at the repository
root cannot drift apart. With the default settings the two are byte-identical.

A [site_policy] table describes a second, separate package: site profiles
for the main package's policy.d. Its small debian/ source is generated
(aa_pkg.render, aa_pkg.metadata) and built the same way, by debhelper.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from aa_pkg.check import check_extra_profiles, check_profiles
from aa_pkg.config import Config, SitePolicy
from aa_pkg.errors import AaPkgError, CommandError
from aa_pkg.metadata import apply_config, complete_site_policy, write_site_policy_changelog, write_site_policy_control
from aa_pkg.render import render_site_policy
from aa_pkg.run import require_tools, run
from aa_pkg.source import copy_source

log = logging.getLogger(__name__)

BUILD_TOOLS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "dh_apparmor", "apparmor_parser")
SITE_POLICY_TOOLS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "apparmor_parser")


def check_build_dependencies(source: Path) -> None:
    try:
        run(["dpkg-checkbuilddeps"], cwd=source)
    except CommandError as e:
        unmet = re.search(r"Unmet build dependencies: (.*)", e.message)
        names = " ".join(re.sub(r"\s*\([^)]*\)|<[^>]*>|:any", "", unmet.group(1)).split()) if unmet else ""
        raise AaPkgError("build dependencies of the package are missing" + (f": {names}" if names else ""),
                         hint=f"install them: apt-get install {names}" if names else "run: apt-get build-dep .") from None


def build_packages(config: Config, out: Path) -> list[Path]:
    """`aa-pkg build`: every package the settings describe.

    A file with only [site_policy] builds only that package: the standard
    main package comes from a plain `aa-pkg build`. With a variant in the same
    file ([package], [policy]), the variant is built too and is what the site
    policy depends on, so one file describes a site.
    """
    site = config.site_policy
    if site is None:
        return [build(config, out)]
    if config.is_default:
        return [build_site_policy(site, out)]
    # Check the site profiles before building the variant: a broken one writes no .deb at all.
    require_tools({*BUILD_TOOLS, *SITE_POLICY_TOOLS})
    check_profiles(site.profiles)
    return [build(config, out), build_site_policy(site, out)]


def build(config: Config, out: Path) -> Path:
    """The main package, or the site variant the settings describe."""
    require_tools(BUILD_TOOLS)
    with tempfile.TemporaryDirectory(prefix="aa-pkg-build-") as tmp:
        workdir = Path(tmp)
        check_extra_profiles(config, workdir / "check")
        source = copy_source(workdir, config.package)
        apply_config(config, source)
        return build_source(source, out)


def build_site_policy(site: SitePolicy, out: Path) -> Path:
    """A site policy package: the checked profiles, installed 0644 into the main package's policy.d."""
    require_tools(SITE_POLICY_TOOLS)
    check_profiles(site.profiles)
    site = complete_site_policy(site)
    assert site.date is not None
    with tempfile.TemporaryDirectory(prefix="aa-pkg-site-policy-") as tmp:
        source = Path(tmp) / site.package
        render_site_policy(site, source)
        write_site_policy_control(site, source / "debian" / "control")
        write_site_policy_changelog(site, source / "debian" / "changelog")
        # dpkg-buildpackage would take it from debian/changelog as well; the
        # same value, said once here: the generated changelog's date.
        return build_source(source, out, source_date_epoch=int(site.date.timestamp()))


def build_source(source: Path, out: Path, source_date_epoch: int | None = None) -> Path:
    """dpkg-buildpackage on a source tree in its own work directory; the one .deb goes to `out`."""
    check_build_dependencies(source)
    log.info("building %s", source)
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source, source_date_epoch=source_date_epoch)
    debs = sorted(source.parent.glob("*.deb"))
    if len(debs) != 1:
        raise AaPkgError(f"dpkg-buildpackage made {len(debs)} .deb files, expected 1")
    return publish_atomically(debs[0], out)


def publish_atomically(deb: Path, out: Path) -> Path:
    """Copy under a temporary name, then rename: out/ never holds a partial .deb."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / deb.name
    partial = out / f".{deb.name}.partial"
    shutil.copyfile(deb, partial)
    os.replace(partial, target)
    return target
