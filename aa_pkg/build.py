"""`aa-pkg build`: source tree -> dpkg-buildpackage -> the .deb in the output directory.

Building through debian/rules is deliberate: debhelper adds the
update-initramfs trigger (dh_installinitramfs) and the profile reload
(dh_apparmor), so `aa-pkg build` and `dpkg-buildpackage` at the repository
root cannot drift apart. With the default settings the two are byte-identical.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from aa_pkg.config import Config
from aa_pkg.errors import AaPkgError, CommandError
from aa_pkg.metadata import apply_config
from aa_pkg.run import require_tools, run
from aa_pkg.source import copy_source

log = logging.getLogger(__name__)

BUILD_TOOLS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "dh_apparmor", "apparmor_parser")


def check_build_dependencies(source: Path) -> None:
    try:
        run(["dpkg-checkbuilddeps"], cwd=source)
    except CommandError as e:
        unmet = re.search(r"Unmet build dependencies: (.*)", e.message)
        names = " ".join(re.sub(r"\s*\([^)]*\)|<[^>]*>|:any", "", unmet.group(1)).split()) if unmet else ""
        raise AaPkgError("build dependencies of the package are missing" + (f": {names}" if names else ""),
                         hint=f"install them: apt-get install {names}" if names else "run: apt-get build-dep .") from None


def build(config: Config, out: Path) -> Path:
    require_tools(BUILD_TOOLS)
    with tempfile.TemporaryDirectory(prefix="aa-pkg-build-") as tmp:
        workdir = Path(tmp)
        source = copy_source(workdir, config.package)
        apply_config(config, source)
        check_build_dependencies(source)
        log.info("building %s in %s", config.package, source)
        run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source)
        debs = sorted(workdir.glob("*.deb"))
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
