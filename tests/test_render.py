"""The rendered files: their place, form, and the real validators on them."""

from __future__ import annotations

import stat
from pathlib import Path

import jinja2
import pytest

import vm
from aa_pkg.config import Config, Mode, Stage
from aa_pkg.render import CONTROL_FILES, MAINTAINER_SCRIPTS, TEMPLATES, Paths, environment, render_package, shipped_files
from aa_pkg.run import run

INITRAMFS_NAME = r"[A-Za-z0-9_-]+"  # initramfs-tools(7): other names are skipped silently


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[Path, Path]:
    tree, debian = tmp_path / "tree", tmp_path / "debian"
    render_package(Config(), tree, debian)
    return tree, debian


def test_every_shipped_file_in_place_with_mode(rendered: tuple[Path, Path]) -> None:
    tree, debian = rendered
    for shipped in shipped_files(Paths("apparmor-fullsystem", "fullsystem-init")):
        path = tree / shipped.destination.relative_to("/")
        assert stat.S_IMODE(path.stat().st_mode) == shipped.mode, path
    for script in MAINTAINER_SCRIPTS:
        assert (debian / f"apparmor-fullsystem.{script}").read_text().startswith("#!/bin/sh\nset -e\n")
    assert (tree / "usr/share/initramfs-tools/hooks/apparmor-fullsystem").read_text().startswith("#!/bin/sh\n")
    assert (tree / "etc/apparmor-fullsystem/policy.d").is_dir()


def test_initramfs_script_names_are_valid() -> None:
    import re

    paths = Paths("apparmor-fullsystem", "fullsystem-init")
    assert re.fullmatch(INITRAMFS_NAME, paths.hook.name)
    assert re.fullmatch(INITRAMFS_NAME, paths.boot_script.name)


def test_every_template_is_shipped() -> None:
    used = {s.template for s in shipped_files(Paths("p", "q"))} | {f"{s}.sh.j2" for s in MAINTAINER_SCRIPTS} \
        | {f"{c}.j2" for c in CONTROL_FILES}
    assert used == {p.name for p in TEMPLATES.glob("*.j2")}


def test_every_template_opens_with_a_header_naming_its_place() -> None:
    for template in TEMPLATES.glob("*.j2"):
        text = template.read_text()
        assert text.startswith("{# "), template
        assert "Installed as" in text.split("#}")[0] or "Rendered to" in text.split("#}")[0], template


def test_undefined_values_are_errors() -> None:
    with pytest.raises(jinja2.UndefinedError):
        environment().from_string("{{ nope }}").render()


def test_shquote_filter() -> None:
    assert environment().from_string("{{ v | shquote }}").render(v="a b'c") == "'a b'\"'\"'c'"


def test_defaults_follow_the_config(tmp_path: Path) -> None:
    render_package(Config(stage=Stage.FULL, mode=Mode.ENFORCE, profile_name="acme-init"), tmp_path, tmp_path)
    assert (tmp_path / "usr/share/apparmor-fullsystem/defaults").read_text().endswith("STAGE=full\nMODE=enforce\n")
    assert "profile acme-init /" in (tmp_path / "etc/apparmor.d/acme-init").read_text()
    assert "profile acme-init /" in (tmp_path / "usr/share/apparmor-fullsystem/init-stub").read_text()


def shell_files(tree: Path, debian: Path) -> list[Path]:
    from aa_pkg.check import shell_scripts

    return shell_scripts(tree) + sorted(p for p in debian.iterdir() if p.suffix[1:] in MAINTAINER_SCRIPTS)


@pytest.mark.tools
def test_shell_scripts_pass_sh_n_checkbashisms_shellcheck(rendered: tuple[Path, Path]) -> None:
    vm.require_tools("checkbashisms", "shellcheck", "dash")
    scripts = shell_files(*rendered)
    assert len(scripts) == 6
    for script in scripts:
        run(["sh", "-n", script])
        run(["dash", "-n", script])
        run(["checkbashisms", "--force", "--posix", script])
        run(["shellcheck", "--shell=dash", "--severity=style", script])


@pytest.mark.tools
def test_profiles_compile_with_the_parser(rendered: tuple[Path, Path]) -> None:
    vm.require_tools("apparmor_parser")
    tree, _ = rendered
    for profile in (tree / "usr/share/apparmor-fullsystem/init-stub", tree / "etc/apparmor.d/fullsystem-init"):
        run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "--quiet",
             "--Include", tree / "etc/apparmor.d", profile])


@pytest.mark.tools
def test_stub_and_full_profile_share_the_name_and_attachment(rendered: tuple[Path, Path]) -> None:
    """The full profile replaces the stub in place only if the names match."""
    vm.require_tools("apparmor_parser")
    tree, _ = rendered

    def names(profile: Path) -> str:
        return run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "--names",
                    "--Include", tree / "etc/apparmor.d", profile]).stdout

    assert names(tree / "usr/share/apparmor-fullsystem/init-stub") == "fullsystem-init\n"
    assert names(tree / "etc/apparmor.d/fullsystem-init") == "fullsystem-init\n"
