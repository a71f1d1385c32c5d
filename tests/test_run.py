from __future__ import annotations

import pytest

from aa_pkg.errors import CommandError, ToolMissingError
from aa_pkg.run import require_tools, run


def test_missing_tool_names_the_debian_package() -> None:
    with pytest.raises(ToolMissingError) as caught:
        require_tools(["lintian", "no-such-tool-aa"])
    assert "no-such-tool-aa" in caught.value.message
    assert caught.value.hint is not None and "apt-get install" in caught.value.hint


def test_known_tool_maps_to_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aa_pkg.run.which", lambda tool: None)
    with pytest.raises(ToolMissingError) as caught:
        require_tools(["dpkg-buildpackage", "apparmor_parser"])
    assert caught.value.hint == "install it: apt-get install apparmor dpkg-dev"


def test_environment_is_fixed() -> None:
    result = run(["sh", "-c", 'echo "$LC_ALL $TZ $SOURCE_DATE_EPOCH"'], source_date_epoch=1234)
    assert result.stdout == "C.UTF-8 UTC 1234\n"


def test_arguments_are_not_a_shell_string() -> None:
    assert run(["echo", "$(reboot); x"]).stdout == "$(reboot); x\n"


def test_failure_keeps_the_end_of_stderr() -> None:
    with pytest.raises(CommandError) as caught:
        run(["sh", "-c", "echo first >&2; echo last words >&2; exit 3"])
    assert "exit status 3" in caught.value.message
    assert "last words" in caught.value.message
