"""aa-pkg verify's decisions without a guest: the state's commands, the
refusal of a bad state, the tools it asks for, KVM or TCG, the attach check, and which
records count as a pass. Its boots are test_verify's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from aa_pkg import vm
from aa_pkg.errors import AaPkgError, ToolMissingError
from aa_pkg.findings import FINDINGS
from aa_pkg.verify import (
    REPORT,
    VERIFY_FINDINGS,
    Result,
    State,
    check_can_run,
    not_attached,
    passing_records,
    read_boot,
)


CPU_FLAGS = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr"


@pytest.mark.parametrize(("kvm_opens", "flags", "accel"), [
    (True, CPU_FLAGS, "kvm"),
    (True, CPU_FLAGS + " hypervisor lahf_lm", "tcg"),   # a guest: KVM would be nested
    (False, CPU_FLAGS, "tcg"),                          # no /dev/kvm, or not ours to open
    (True, None, "tcg"),                                # /proc/cpuinfo unreadable
])
def test_kvm_only_where_it_opens_on_a_host_that_is_no_guest(tmp_path: Path, kvm_opens: bool, flags: str | None,
                                                            accel: str) -> None:
    """--accel auto (README, verify): KVM when /dev/kvm opens and the CPU says no hypervisor."""
    kvm, cpuinfo = tmp_path / "kvm", tmp_path / "cpuinfo"
    if kvm_opens:
        kvm.write_bytes(b"")
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\n{flags}\n")
    assert vm.usable_accel(kvm, cpuinfo) == accel


@pytest.mark.parametrize(("unprivileged", "missing", "hint"), [
    (True, ["newuidmap", "newgidmap"], "install them: apt-get install uidmap (tools/setup does)"),
    (True, ["mmdebstrap", "newgidmap"], "install them: apt-get install mmdebstrap uidmap (tools/setup does)"),
    (False, ["qemu-system-x86_64"], "install them: apt-get install qemu-system-x86 (tools/setup does)"),
])
def test_a_missing_tool_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch, unprivileged: bool,
                                                   missing: list[str], hint: str) -> None:
    """As a normal user, verify also needs the setuid helpers that map the subordinate ids."""
    asked: list[str] = []

    def missing_tools(*names: str) -> list[str]:
        asked.extend(names)
        return [name for name in names if name in missing]
    monkeypatch.setattr(vm, "unprivileged", lambda: unprivileged)
    monkeypatch.setattr(vm, "missing_tools", missing_tools)
    with pytest.raises(ToolMissingError) as caught:
        check_can_run()
    assert caught.value.message == f"aa-pkg verify needs {', '.join(missing)}"
    assert caught.value.hint == hint
    assert ("newuidmap" in asked) is unprivileged


def test_state_commands_keep_the_order_aa_fullsystem_allows() -> None:
    assert State().commands() == []
    assert State(stage="full", mode="enforce", level="hardened").commands() == [
        ["stage", "full"], ["mode", "enforce"], ["level", "hardened"]]
    # Back to the stub: what needs the full stage goes first.
    assert State(stage="stub", mode="complain", early="init").commands() == [
        ["mode", "complain"], ["early", "init"], ["stage", "stub"]]


@pytest.mark.parametrize("state, message", [
    ({"stage": "stub", "mode": "enforce"}, "--mode enforce with --stage stub: enforce mode needs the full stage"),
    ({"stage": "stub", "level": "hardened"}, "--level hardened with --stage stub: the hardened level needs the full"),
    ({"mode": "strict"}, "--mode strict: unknown mode"),
])
def test_a_state_aa_fullsystem_would_refuse_is_refused_first(state: dict, message: str) -> None:
    with pytest.raises(AaPkgError) as error:
        State(**state)
    assert error.value.message.startswith(message), error.value.message


def test_verify_codes_are_not_status_codes() -> None:
    assert not set(VERIFY_FINDINGS) & set(FINDINGS)


def test_a_process_outside_the_profile_named_for_its_program() -> None:
    values = {
        "profiles": "fullsystem-init (enforce)|/usr/sbin/chronyd (enforce)|ntpd (complain)|man_filter (enforce)",
        # Its own profile, stacked on init's: attached.
        "process.10": "/usr/sbin/chronyd//&fullsystem-init (enforce)|/usr/sbin/chronyd",
        # Named by file name, under init's label only: not attached.
        "process.20": "fullsystem-init (enforce)|/usr/sbin/ntpd",
        # No profile named for it: nothing to say.
        "process.30": "fullsystem-init (enforce)|/usr/bin/sleep",
        "process.5": "unconfined|/usr/sbin/chronyd",
    }
    assert not_attached(values) == [("5", "unconfined", "/usr/sbin/chronyd"),
                                    ("20", "fullsystem-init (enforce)", "/usr/sbin/ntpd")]


def test_only_a_passing_record_of_the_same_bytes_counts(tmp_path: Path) -> None:
    def keep(name: str, **record: object) -> None:
        (tmp_path / name).write_text(json.dumps(record))

    keep("bookworm-a.json", passed=True, suite="bookworm", debs={"p.deb": "aa" * 32})
    keep("trixie-b.json", passed=False, suite="trixie", debs={"p.deb": "bb" * 32})
    keep("trixie-c.json", passed="yes", suite="trixie", debs={"p.deb": "cc" * 32})
    (tmp_path / "trixie-d.json").write_text("{ cut short")
    assert list(passing_records("aa" * 32, tmp_path)) == [tmp_path / "bookworm-a.json"]
    assert passing_records("bb" * 32, tmp_path) == {}
    assert passing_records("cc" * 32, tmp_path) == {}
    assert passing_records("aa" * 32, tmp_path / "none") == {}


def read_report(tmp_path: Path, stand_ins: dict[str, str], multi_user: bool = True) -> tuple[str, Result]:
    """verify's REPORT (the lines before the process walk), run here with stand-ins for the guest's
    programs (name: sh body), and read_boot's result from its lines and the probe's header."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = REPORT.split("for p in /proc/")[0]
    out = subprocess.run(["sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True).stdout
    values = dict(line[3:].split("=", 1) for line in out.splitlines() if line.startswith("@@ "))
    boot = vm.Boot(log="", log_path=tmp_path / "serial.log", reached_multi_user=multi_user,
                   system_state="running" if multi_user else "runlevel 1", output=out, values=values,
                   script_exit=0, seconds_to_probe=1.0, wall_seconds=1.0, total_seconds=1.0)
    result = Result(suite="trixie", backports=False, state=State(), debs={}, accel="tcg")
    read_boot(result, boot)
    return out, result


@pytest.mark.parametrize("systemctl, finding", [
    # One unit failed: named.
    ("printf 'lvm-activate-vg0.service loaded failed failed LVM activation\\n'", "failed units: lvm-activate-vg0.service"),
    # systemctl itself failed: no list is no proof that nothing failed.
    ("echo 'Failed to connect to bus: No such file or directory' >&2; exit 1",
     "the failed units could not be listed: systemctl --failed said: Failed to connect to bus"),
    # Nothing failed: no finding.
    ("true", None),
])
def test_failed_units_are_read_or_reported_unread(tmp_path: Path, systemctl: str, finding: str | None) -> None:
    """verify's REPORT, run here with a systemctl that says what is given,
    and read_boot's finding from its lines."""
    out, result = read_report(tmp_path, {"systemctl": systemctl})
    messages = [f.message for f in result.findings if f.code == "failed-units"]
    if finding is None:
        assert messages == [], (out, messages)
    else:
        assert len(messages) == 1 and messages[0].startswith(finding), (out, messages)


STATUS_WITH_A_REFUSAL = ('{"boot": {"outcome": "loaded"}, "unconfined_processes": 0, '
                         '"denied": [{"count": 2, "profile": "site-x", "program": "x", "operation": "open", '
                         '"target": "/var/lib/x"}], "would_deny": [], '
                         '"findings": [{"code": "refused", "message": "2 refusals this boot."}, '
                         '{"code": "initramfs-leftovers", "message": "still exiting"}]}')


@pytest.mark.parametrize(("multi_user", "status", "codes", "said"), [
    # The probe saw multi-user.target inactive (sysvinit: runlevel 1).
    (False, f"echo '{STATUS_WITH_A_REFUSAL}'", ["multi-user-not-reached", "refused"],
     "multi-user.target was not active (system state: runlevel 1)"),
    # status printed no JSON (not installed, or it failed): said, not taken for "nothing found".
    (True, "echo 'aa-fullsystem: not found' >&2; exit 127", ["status-unreadable"],
     "aa-fullsystem --json status printed no JSON in the guest"),
    (True, "echo '{\"boot\": '", ["status-unreadable"], "aa-fullsystem --json status printed no JSON"),
    # status's own findings, with the refusals named; a leftover of the initramfs is no problem.
    (True, f"echo '{STATUS_WITH_A_REFUSAL}'", ["refused"], "2 refusals this boot. 2x site-x x open /var/lib/x"),
])
def test_the_guest_report_becomes_findings(tmp_path: Path, multi_user: bool, status: str, codes: list[str],
                                           said: str) -> None:
    """verify's REPORT, run here with an aa-fullsystem that says what is given, and read_boot's
    findings from its lines and the probe's header."""
    out, result = read_report(tmp_path, {"systemctl": "true", "aa-fullsystem": status}, multi_user)
    assert [f.code for f in result.findings] == codes, (out, result.findings)
    assert any(said in f.message for f in result.findings), result.findings
    assert not result.passed
