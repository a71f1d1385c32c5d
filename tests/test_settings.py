"""The settings table (aa_pkg/settings.py) and the shell rendered from it.

aafs_read_state (shared/functions.sh.j2) is run here under dash, as the hook and
aa-fullsystem run it, on state files made from the table: every value of
every setting, alone and against the stage, a value no setting has, a line
no setting owns, a required line missing. aa-fullsystem's own refusals are
test_maintscripts's (in a chroot, as root).
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

from aa_pkg.config import Config
from aa_pkg.render import context, environment
from aa_pkg.settings import BOOT_RECORD_KEYS, FULL, SETTINGS, STAGE

try:                    # tests/ imported as a package
    from . import vm
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm


def test_table() -> None:
    assert [s.key for s in SETTINGS] == ["STAGE", "MODE", "EARLY", "LEVEL"]
    assert STAGE.default is None and FULL in STAGE.values
    for setting in SETTINGS:
        assert len(setting.values) == len(set(setting.values)) >= 2
        assert setting.default is None or setting.default in setting.values
        if setting.needs_full:
            # The value the stub stage refuses is never the default: a
            # missing line must not make a state invalid.
            assert setting.needs_full.value != setting.default
            assert setting.needs_full.back in setting.values and setting.needs_full.back != setting.needs_full.value


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("functions") / "functions"
    path.write_text(environment().get_template("shared/functions.sh.j2").render(context(Config())))
    return path


def read_state(functions: Path, tmp_path: Path, lines: list[str]) -> tuple[int, str]:
    """aafs_read_state on a file of lines: its status and what it said, or the settings it set."""
    vm.require_tools("dash")
    state = tmp_path / "state"
    state.write_text("".join(line + "\n" for line in lines))
    script = (f'. "{functions}"; aafs_read_state "{state}" 2>&1 && echo '
              + " ".join(f'"{s.key}=${s.var}"' for s in SETTINGS))
    result = subprocess.run(["dash", "-c", script], capture_output=True, text=True)
    return result.returncode, result.stdout.strip().replace(str(state), "STATE")


def valid(values: dict[str, str]) -> bool:
    return values["STAGE"] == FULL or all(
        s.needs_full is None or values[s.key] != s.needs_full.value for s in SETTINGS)


def test_every_combination(functions: Path, tmp_path: Path) -> None:
    """Each combination of values is read as written, or refused by the rule with the setting's reason."""
    for combination in itertools.product(*(s.values for s in SETTINGS)):
        values = dict(zip((s.key for s in SETTINGS), combination))
        status, said = read_state(functions, tmp_path, [f"{k}={v}" for k, v in values.items()])
        if valid(values):
            assert (status, said) == (0, " ".join(f"{k}={v}" for k, v in values.items())), values
        else:
            broken = next(s for s in SETTINGS if s.needs_full and values[s.key] == s.needs_full.value)
            assert status == 1, values
            assert said == (f"STATE: {broken.key}={broken.needs_full.value} needs STAGE={FULL} "
                            f"({broken.needs_full.why})"), values


def test_defaults_and_required_lines(functions: Path, tmp_path: Path) -> None:
    required = [s for s in SETTINGS if s.default is None]
    status, said = read_state(functions, tmp_path, [f"{s.key}={s.values[0]}" for s in required])
    assert status == 0
    assert said == " ".join(f"{s.key}={s.default or s.values[0]}" for s in SETTINGS)
    status, said = read_state(functions, tmp_path, ["# only a comment", ""])
    assert (status, said) == (1, "STATE: needs both a STAGE= and a MODE= line")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_a_bad_value_names_file_line_and_values(functions: Path, tmp_path: Path, setting) -> None:
    status, said = read_state(functions, tmp_path, ["# state", f"{setting.key}=bogus"])
    values = " or ".join(f"'{v}'" for v in setting.values)
    assert (status, said) == (1, f"STATE line 2: '{setting.key}=bogus': {setting.key} must be {values}")


def test_a_line_no_setting_owns(functions: Path, tmp_path: Path) -> None:
    status, said = read_state(functions, tmp_path, ["STAGE=stub", "SPEED=fast"])
    assert (status, said) == (1, "STATE line 2: unknown setting 'SPEED=fast' "
                                 "(expected STAGE=, MODE=, EARLY= or LEVEL=)")


def test_the_cli_offers_what_the_table_has() -> None:
    cli = environment().get_template("cli/aa-fullsystem.sh.j2").render(context(Config()))
    for setting in SETTINGS:
        assert f"       aa-fullsystem {setting.command} {'|'.join(setting.values)}\n" in cli
        assert f"{setting.key}={'|'.join(setting.values)}" in cli      # the invalid state's hint


def test_the_boot_record_has_the_keys_status_reads() -> None:
    """The boot script's finish() writes exactly the keys aa-fullsystem reads (and puts into its JSON)."""
    boot = environment().get_template("boot/load-policy.sh.j2").render(context(Config()))
    finish = boot[boot.index("\nfinish() {"):]
    finish = finish[:finish.index("\n}\n")]
    written = tuple(re.findall(r'^\t\techo "([a-z_]+)=', finish, re.MULTILINE))
    assert written == BOOT_RECORD_KEYS
    cli = environment().get_template("cli/aa-fullsystem.sh.j2").render(context(Config()))
    for key in BOOT_RECORD_KEYS:
        assert f"\t\t{key}) _record_{key}=${{_line#*=}} ;;\n" in cli
        assert f'printf \'"{key}":%s' in cli
