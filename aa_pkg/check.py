"""Checks on a rendered package tree, run at build time (debian/rules
dh_auto_test) so both build paths refuse a package that would not work."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from aa_pkg.config import Config
from aa_pkg.errors import CommandError, PolicyError
from aa_pkg.render import Paths, render_package
from aa_pkg.run import require_tools, run


def shipped_profiles(config: Config, tree: Path) -> list[Path]:
    paths = Paths(config.package, config.profile_name)
    profiles = [tree / paths.stub_profile.relative_to("/"), tree / paths.full_profile.relative_to("/")]
    vendor = tree / paths.vendor_policy.relative_to("/")
    profiles += sorted(p for p in vendor.iterdir() if p.is_file()) if vendor.is_dir() else []
    return profiles


def shell_scripts(tree: Path, shell: str = "sh") -> list[Path]:
    """Every shipped script for that shell: its shebang, or for a sourced
    library a first line `# shellcheck shell=SHELL` (the functions file is
    known by name)."""
    scripts = []
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink():
            head = path.read_bytes()[:64]
            if head.startswith((f"#!/bin/{shell}\n".encode(), f"# shellcheck shell={shell}\n".encode())) \
                    or (shell == "sh" and path.name == "functions"):
                scripts.append(path)
    return scripts


def parser_errors(output: str) -> str:
    """The parser's own error lines ("... for FILE ... at line N: ..."), on one line.

    It also warns on stderr when it cannot use a cache (even with --skip-cache
    and --quiet); that is not why a profile failed.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return "; ".join(errors or lines[-1:]) or "no message"


def check_profiles(profiles: Iterable[Path], include_dirs: Iterable[Path] = ()) -> None:
    """Compile every profile without loading it: a failure names the file and the parser's line.

    include_dirs come before /etc/apparmor.d in the parser's search path, for
    files the package ships there itself (the init profiles' ABI).
    """
    require_tools(["apparmor_parser"])
    includes = [arg for directory in include_dirs for arg in ("--Include", str(directory))]
    for profile in profiles:
        try:
            run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "--quiet", *includes, "--", profile])
        except CommandError as e:
            raise PolicyError(f"{profile}: does not compile: {parser_errors(e.output)}",
                              hint="fix the profile; apparmor_parser names the line") from None


# (init rules, roles) of each level and mode (roles follow the mode only), as aafs_sync_level copies them.
LEVEL_VARIANTS = (
    ("standard.init", "roles-enforce"),
    ("standard.init", "roles-complain"),
    ("hardened.init", "roles-enforce"),
    ("hardened.init", "roles-complain"),
)


def check_policy(config: Config, tree: Path) -> None:
    """Every shipped profile compiles; the full profile with the rules of every level.

    The full profile includes the level's rules from a directory the target
    fills in (aa-fullsystem level), so each variant is put into a directory
    of its own that the parser searches first.
    """
    paths = Paths(config.package, config.profile_name)
    etc = tree / "etc/apparmor.d"
    full = tree / paths.full_profile.relative_to("/")
    levels = tree / paths.levels.relative_to("/")
    others = [p for p in shipped_profiles(config, tree) if p != full]
    with tempfile.TemporaryDirectory(prefix="aa-pkg-levels-") as tmp:
        level_dir = Path(tmp) / paths.level_dir.name
        level_dir.mkdir()
        shutil.copyfile(levels / LEVEL_VARIANTS[0][0], level_dir / paths.level_init.name)
        shutil.copyfile(levels / LEVEL_VARIANTS[0][1], level_dir / paths.level_roles.name)
        check_profiles(others, include_dirs=[Path(tmp), etc])
        for init, roles in LEVEL_VARIANTS:
            shutil.copyfile(levels / init, level_dir / paths.level_init.name)
            shutil.copyfile(levels / roles, level_dir / paths.level_roles.name)
            try:
                check_profiles([full], include_dirs=[Path(tmp), etc])
            except PolicyError as e:
                raise PolicyError(f"{e} (with the level rules {init} and {roles})", hint=e.hint) from None


def check_extra_profiles(config: Config, scratch: Path) -> None:
    """Compile the variant's extra profiles before the build, as check_policy will compile their copies.

    So that an error names the user's own file, not its copy under
    debian/rendered/. As there, a rendered tree's etc/apparmor.d comes
    first, where the package's own ABI file is; check_policy also puts a
    level's rules ahead of it, but only the init profile includes those.
    """
    if config.extra_profiles:
        render_package(config, scratch / "tree", scratch / "debian")
        check_profiles(config.extra_profiles, include_dirs=[scratch / "tree" / "etc/apparmor.d"])


def check_scripts(tree: Path) -> None:
    """`sh -n` (`bash -n` for dracut's) on every script: initramfs-tools skips a script that fails it, silently."""
    for shell in ("sh", "bash"):
        for script in shell_scripts(tree, shell):
            run([shell, "-n", script])


def check_tree(config: Config, tree: Path) -> None:
    check_scripts(tree)
    check_policy(config, tree)
