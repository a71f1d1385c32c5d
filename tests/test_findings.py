"""The findings table (aa_pkg/findings.py) and the status that reports from it.

status's findings in a chroot, as text and JSON, are test_maintscripts's;
on booted guests, test_boot's and test_forky's.
"""

from __future__ import annotations

import re

from aa_pkg.config import Config
from aa_pkg.findings import FINDINGS
from aa_pkg.render import context, environment


def test_status_reports_exactly_the_table_codes() -> None:
    cli = environment().get_template("cli/aa-fullsystem.sh.j2").render(context(Config()))
    body = cli[cli.index("\nstatus_findings() {"):]
    body = body[:body.index("\n}\n")]
    # Every call names its code as a word: no code is computed, so none
    # escapes this list.
    calls = re.findall(r"\bfinding (\S+) ", body)
    assert calls == [c for c in calls if re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c)], calls
    assert sorted(calls) == sorted(FINDINGS)     # each once, none missing


def test_the_man_page_lists_every_code() -> None:
    page = environment().get_template("cli/aa-fullsystem.8.j2").render(context(Config()))
    section = page[page.index(".SH STATUS FINDINGS"):page.index(".SH THREAT MODEL")]
    listed = re.findall(r"^\.TP\n\.B (\S+)$", section, re.MULTILINE)
    assert [code.replace("\\-", "-") for code in listed] == list(FINDINGS)
