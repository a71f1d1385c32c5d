"""The VM tests' own checks, each fed what a broken build would give it.

A check that cannot fail proves nothing; these show, without a guest, that
the checks tests/guest.py gives the VM tests fail on the input a broken
feature produces. Their other side, passing on a working one, is every VM
test that uses them. (The kernel-side ones, with a real broken build
booted, are in the VM tests: test_boot's kernel_holds on an initramfs that
ships only the stub while its state says full, test_hardened's
refused_to_service under the policy without the rules.)
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import COUNT, KERNEL_FIRST_LINE, newc, runs_cleanly, unconfined_since_init
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import COUNT, KERNEL_FIRST_LINE, newc, runs_cleanly, unconfined_since_init


def count(tmp_path: Path, text: str, pattern: str) -> str:
    """guest.COUNT's shell function, run here on a file holding text."""
    source = tmp_path / "dmesg.txt"
    source.write_text(text)
    command = shlex.join(["count", "key", str(source), KERNEL_FIRST_LINE, "-e", pattern])
    out = subprocess.run(["sh", "-c", COUNT + command],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def test_a_count_of_zero_needs_a_whole_read(tmp_path: Path) -> None:
    """A kernel log cut short, or a dmesg that failed, is "unread", never 0."""
    whole = f"[    0.000000] {KERNEL_FIRST_LINE}6.1.0\n[    9.000000] nothing refused\n"
    assert count(tmp_path, whole, 'apparmor="DENIED"') == "@@ key=0"
    assert count(tmp_path, whole + 'audit: apparmor="DENIED"\n', 'apparmor="DENIED"') == "@@ key=1"
    assert count(tmp_path, "dmesg: read kernel buffer failed: Operation not permitted\n",
                 'apparmor="DENIED"') == "@@ key=unread"
    assert count(tmp_path, "[  500.000000] wrapped: the first lines are gone\n", 'apparmor="DENIED"') == "@@ key=unread"


def boot_with(finished_at_cs: int, init_first_cs: int, processes: list[str]) -> vm.Boot:
    """A Boot as REPORT prints one: the record's finish time, the kernel's
    lines for /init and init's first word, the process table."""
    output = "".join(line + "\n" for line in [
        *processes,
        "--- kernel log: init",
        "[    1.500000] Run /init as init process",
        f"[   {init_first_cs // 100}.{init_first_cs % 100:02d}0000] systemd[1]: systemd 252 running in system mode",
        "--- end of kernel log: init",
    ])
    values = {"clk_tck": "100", "record.finished_at_cs": str(finished_at_cs), "record.loaded_stage": "full"}
    return vm.Boot(log="", log_path=Path("serial.log"), reached_multi_user=True, system_state="running",
                   output=output, values=values, script_exit=0, seconds_to_probe=0.0,
                   wall_seconds=0.0, total_seconds=0.0)


def test_no_unconfined_process_is_hidden_by_the_record() -> None:
    """The record's finish time, which the code under test writes, cannot
    call a process started after init "from the initramfs"."""
    late_start = "proc|400|1|sshd|700|unconfined"     # started at 7.00 s, after init spoke at 2.00 s
    honest = boot_with(finished_at_cs=190, init_first_cs=200, processes=[late_start])
    assert [p.pid for p in unconfined_since_init(honest)] == ["400"]
    # A record that claims to have finished after the process started:
    # the kernel's own clock says init spoke long before.
    lying = boot_with(finished_at_cs=800, init_first_cs=200, processes=[late_start])
    with pytest.raises(AssertionError):
        unconfined_since_init(lying)


FAILED_UNIT = "apparmor.service loaded failed failed Load AppArmor profiles"


def report_of(system_state: str, failed: list[str], count: str) -> vm.Boot:
    """A Boot whose REPORT listed FAILED under "--- failed units" and counted COUNT."""
    boot = boot_with(finished_at_cs=190, init_first_cs=200, processes=[])
    output = boot.output + "--- failed units\n" + "".join(f"{line}\n" for line in failed) + f"@@ failed_units={count}\n"
    return dataclasses.replace(boot, system_state=system_state, output=output,
                               values={**boot.values, "failed_units": count})


@pytest.mark.parametrize("system_state, failed, count", [
    ("degraded", [FAILED_UNIT], "1"),   # a unit failed: systemd says so, and the list does
    ("running", [FAILED_UNIT], "1"),    # one failed after start-up finished
    ("degraded", [], "0"),              # one failed and was reset before the report
    ("running", [], "unread"),          # systemctl could not list them
    ("starting", [], "0"),              # start-up never finished
])
def test_a_boot_with_a_failed_unit_does_not_run_cleanly(system_state: str, failed: list[str], count: str) -> None:
    """runs_cleanly, which every enforce boot asserts, fails on each way a
    boot can go wrong; it passes only on "running" with none failed."""
    runs_cleanly(report_of("running", [], "0"))
    with pytest.raises(AssertionError):
        runs_cleanly(report_of(system_state, failed, count))


def test_an_allowed_failure_must_be_named() -> None:
    """A unit a test expects to fail passes only when named, and only alone."""
    runs_cleanly(report_of("degraded", [FAILED_UNIT], "1"), allowed_failures=("apparmor.service",))
    with pytest.raises(AssertionError):
        runs_cleanly(report_of("degraded", [FAILED_UNIT], "1"), allowed_failures=("ssh.service",))
    with pytest.raises(AssertionError):
        runs_cleanly(report_of("degraded", [FAILED_UNIT, "cron.service loaded failed failed cron"], "2"),
                     allowed_failures=("apparmor.service",))


def test_newc_archive_is_what_cpio_reads(tmp_path: Path) -> None:
    """guest.newc, which the fallback boots put on top of an initrd, as cpio(1) unpacks it."""
    vm.require_tools("cpio")
    files = {"usr/lib/apparmor-fullsystem/init-full": b"no profile\n",
             "scripts/init-bottom/ORDER": b"odd length"}
    subprocess.run(["cpio", "-id", "--quiet"], input=newc(files), cwd=tmp_path, check=True)
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=newc(files), check=True, capture_output=True).stdout
    assert listing.decode().split() == ["scripts", "scripts/init-bottom", "usr", "usr/lib",
                                        "usr/lib/apparmor-fullsystem", *files]
