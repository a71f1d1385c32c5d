import configparser
from pathlib import Path

from aa_pkg.source import DEBIAN_FILES, copy_source, debian_skeleton

REPO = Path(__file__).resolve().parent.parent


def test_setup_cfg_ships_every_debian_source_file() -> None:
    """An installed aa-pkg builds from its data_files copy of debian/: keep it complete."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    shipped = set()
    for target, files in cfg["options.data_files"].items():
        for name in files.replace(",", " ").split():
            assert name.startswith("debian/")
            shipped.add(name.removeprefix("debian/"))
    assert shipped == set(DEBIAN_FILES)
    # ...and the list is the whole source: nothing else tracked in debian/.
    tracked = {str(p.relative_to(REPO / "debian")) for p in (REPO / "debian").rglob("*")
               if p.is_file() and not p.name.startswith(".") and "rendered" not in p.parts}
    assert set(DEBIAN_FILES) <= tracked


def test_copy_source_is_clean(tmp_path: Path) -> None:
    root = copy_source(tmp_path, "x")
    assert debian_skeleton() == REPO / "debian"
    assert sorted(str(p.relative_to(root / "debian")) for p in (root / "debian").rglob("*") if p.is_file()) \
        == sorted(DEBIAN_FILES)
    assert not list(root.rglob("__pycache__"))
    assert (root / "aa_pkg" / "templates" / "initramfs" / "initramfs-tools-hook.sh.j2").is_file()
