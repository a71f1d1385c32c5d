"""Find the Debian source skeleton and lay out a source tree to build from.

`aa-pkg build` builds through debian/rules (and so through debhelper), which
is how both build paths ship the same files and the same maintainer scripts.
The skeleton is the repository's debian/ directory; an installed aa-pkg
carries a copy of it under <prefix>/share/aa-pkg (setup.cfg, data_files).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from aa_pkg.errors import AaPkgError

# The files of debian/ that are sources (the rest is made by the build).
# setup.cfg's data_files lists the same files; tests/test_source.py checks it.
DEBIAN_FILES = ("changelog", "control", "copyright", "rules", "source/format",
                "tests/control", "tests/boot-confined")
PACKAGE_DIR = Path(__file__).resolve().parent


def debian_skeleton() -> Path:
    for candidate in (PACKAGE_DIR.parent / "debian", Path(sys.prefix) / "share" / "aa-pkg" / "debian"):
        if all((candidate / name).is_file() for name in DEBIAN_FILES):
            return candidate
    raise AaPkgError("cannot find the debian/ skeleton next to aa_pkg or in "
                     f"{Path(sys.prefix) / 'share' / 'aa-pkg'}",
                     hint="run aa-pkg from a checkout, or reinstall it with 'pip install .'")


def copy_source(workdir: Path, name: str) -> Path:
    """A clean source tree (debian/ skeleton + aa_pkg) under workdir; returns its root."""
    root = workdir / name
    skeleton = debian_skeleton()
    for relative in DEBIAN_FILES:
        target = root / "debian" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(skeleton / relative, target)
    shutil.copytree(PACKAGE_DIR, root / "aa_pkg", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root
