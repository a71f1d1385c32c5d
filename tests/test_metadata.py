"""debian/changelog of a variant, read back by dpkg's own parser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import vm
from aa_pkg.config import load_config
from aa_pkg.metadata import add_changelog_entry
from aa_pkg.source import debian_skeleton


@pytest.mark.tools
@pytest.mark.parametrize("text", [
    "One line.",
    "First item.\nSecond item,\n  continued.\n\n    - a sub-item\n  -- two spaces: a change line, not a trailer",
    "evil (9.9) unstable; urgency=high\nLocal variables:\nvim: set ft=changelog\n# not a comment",
    "\tTabbed.\nA tab\tinside.",
])
def test_accepted_text_is_one_entry_for_dpkg(tmp_path: Path, text: str) -> None:
    """Whatever text the config accepts, dpkg-parsechangelog reads one new entry by our maintainer, no warning."""
    vm.require_tools("dpkg-parsechangelog")
    config = tmp_path / "site.toml"
    config.write_text("[package]\nversion = '0.1+acme1'\nmaintainer = 'ACME <security@acme.example>'\n"
                      f"changelog = '''{text}'''\n")
    changelog = tmp_path / "changelog"
    shutil.copyfile(debian_skeleton() / "changelog", changelog)

    def entries() -> list[str]:
        result = subprocess.run(["dpkg-parsechangelog", "-l", str(changelog), "--format", "rfc822", "--all"],
                                capture_output=True, text=True, check=True)
        assert result.stderr == ""  # dpkg warns about every line it cannot place
        return [line for line in result.stdout.splitlines() if line.startswith(("Version:", "Maintainer:", " "))]

    base = entries()
    add_changelog_entry(load_config(config), changelog)
    new = entries()
    assert new[-len(base):] == base
    ours = new[:-len(base)]
    assert ours[:2] == ["Version: 0.1+acme1", "Maintainer: ACME <security@acme.example>"]
    assert not any(line.startswith(("Version:", "Maintainer:")) for line in ours[2:])
    changes = "\n".join(ours)
    assert all(line.strip() in changes for line in text.splitlines())
