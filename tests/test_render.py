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


# Where each template runs, by its folder (the package's own; site-policy/
# renders a site policy package's debian/).
FOLDERS = ("shared", "initramfs", "boot", "cli", "debian", "policy")


def package_templates() -> list[Path]:
    return sorted(p for p in TEMPLATES.rglob("*.j2") if p.parent.name != "site-policy")


def test_every_template_is_shipped() -> None:
    """Every template but the partials (_*.j2, included by others) is a shipped file, in a folder by where it runs."""
    used = {s.template for s in shipped_files(Paths("p", "q"))} | {f"debian/{s}.sh.j2" for s in MAINTAINER_SCRIPTS} \
        | {f"debian/{c}" for c in CONTROL_FILES}
    templates = package_templates()
    assert used == {str(p.relative_to(TEMPLATES)) for p in templates if not p.name.startswith("_")}
    assert {p.parent.name for p in templates} == set(FOLDERS)
    assert not list(TEMPLATES.glob("*.j2")), "a template outside the folders"


def test_every_template_opens_with_a_header_naming_its_place() -> None:
    for template in package_templates():
        text = template.read_text()
        header = text.split("#}")[0]
        assert text.startswith("{# "), template
        if template.name.startswith("_"):
            assert "Included by" in header, template
            name = str(template.relative_to(TEMPLATES))
            assert any(f'"{name}"' in other.read_text() for other in package_templates()), template
        else:
            assert "Installed as" in header or "Rendered to" in header, template


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

    return shell_scripts(tree) + sorted(p for p in debian.iterdir() if p.suffix[1:] in (*MAINTAINER_SCRIPTS, "init"))


@pytest.mark.tools
def test_shell_scripts_pass_sh_n_checkbashisms_shellcheck(rendered: tuple[Path, Path]) -> None:
    vm.require_tools("checkbashisms", "shellcheck", "dash")
    scripts = shell_files(*rendered)
    # hook, boot script, the boot script's attach probe, functions, shared
    # builder, dracut's pre-pivot hook, aa-fullsystem, postinst, prerm,
    # postrm, the sysvinit script
    assert len(scripts) == 11
    for script in scripts:
        run(["sh", "-n", script])
        run(["dash", "-n", script])
        run(["checkbashisms", "--force", "--posix", script])
        run(["shellcheck", "--shell=dash", "--severity=style", script])


@pytest.mark.tools
def test_dracut_module_setup_passes_bash_n_and_shellcheck(rendered: tuple[Path, Path]) -> None:
    """dracut sources module-setup.sh into its bash (dracut.modules(7))."""
    from aa_pkg.check import shell_scripts

    vm.require_tools("shellcheck", "bash")
    (script,) = shell_scripts(rendered[0], "bash")
    assert script.name == "module-setup.sh" and script.parent.parent.name == "modules.d"
    run(["bash", "-n", script])
    run(["shellcheck", "--shell=bash", "--severity=style", script])


@pytest.mark.tools
def test_profiles_compile_with_the_parser(rendered: tuple[Path, Path]) -> None:
    """The stub, and the full profile with the rules of each level and mode (aa_pkg.check)."""
    from aa_pkg.check import LEVEL_VARIANTS, check_policy

    vm.require_tools("apparmor_parser")
    tree, _ = rendered
    assert {init for init, _ in LEVEL_VARIANTS} == {"standard.init", "hardened.init"}
    assert {roles for _, roles in LEVEL_VARIANTS} == {"roles-enforce", "roles-complain"}
    check_policy(Config(), tree)


def level_includes(tree: Path, directory: Path, level: str = "standard", mode: str = "enforce") -> Path:
    """A directory with the level's rules where the full profile includes them, as aafs_sync_level copies them."""
    paths = Paths("apparmor-fullsystem", "fullsystem-init")
    levels = tree / paths.levels.relative_to("/")
    (directory / paths.level_dir.name).mkdir(parents=True)
    (directory / paths.level_dir.name / paths.level_init.name).write_bytes((levels / f"{level}.init").read_bytes())
    (directory / paths.level_dir.name / paths.level_roles.name).write_bytes((levels / f"roles-{mode}").read_bytes())
    return directory


@pytest.mark.tools
def test_stub_and_full_profile_share_the_name_and_attachment(rendered: tuple[Path, Path], tmp_path: Path) -> None:
    """The full profile replaces the stub in place only if the names match; its file adds the roles."""
    vm.require_tools("apparmor_parser")
    tree, _ = rendered
    includes = level_includes(tree, tmp_path / "levels")

    def names(profile: Path) -> str:
        return run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "--names",
                    "--Include", includes, "--Include", tree / "etc/apparmor.d", profile]).stdout

    assert names(tree / "usr/share/apparmor-fullsystem/init-stub") == "fullsystem-init\n"
    assert sorted(names(tree / "etc/apparmor.d/fullsystem-init").split()) == [
        "fullsystem-init", "fullsystem-init-admin", "fullsystem-init-admin//DEFAULT", "fullsystem-init-admin//root",
        "fullsystem-init-kernel", "fullsystem-init-pkg", "fullsystem-init-service", "fullsystem-init-system"]


def test_kernel_role_attachment_loses_ties_to_a_site_profile() -> None:
    """Each helper's attachment loops inside its own path (a "*" standing for
    the second-to-last character, which differs from the last), so the
    kernel ranks it below a literal attachment of the same path; shown on
    the real kernels by the VM tests' modprobe_site_label."""
    import re

    from aa_pkg.render import KERNEL_HELPER_ATTACHMENT, KERNEL_HELPERS, loses_ties

    assert loses_ties("/usr/bin/kmod") == "/usr/bin/km*d"
    for helper in KERNEL_HELPERS:
        pattern = loses_ties(helper)
        regex = re.escape(pattern).replace(r"\*", "[^/]*")
        assert re.fullmatch(regex, helper), pattern
        # The loop consumes at least the character "*" replaced, and the
        # literal part before it is shorter than the path.
        looped = helper[len(pattern.split("*")[0])]
        assert looped != helper[-1] and len(pattern.split("*")[0]) < len(helper), pattern
        assert pattern.removeprefix("/usr/") in KERNEL_HELPER_ATTACHMENT
    for impossible in ("/usr/bin/x", "/usr/sbin/tee", "/usr/bin/a/"):
        with pytest.raises(ValueError, match="last two characters"):
            loses_ties(impossible)
