"""sysvinit-core as PID 1: init confined from its first instruction.

One bookworm guest where sysvinit-core replaces systemd-sysv, then our
package, installed by apt. Without systemd, apparmor's own init script
loads the policy, and its "start" loads nothing once any profile is loaded
("already loaded with profiles: Skipped"), which ours are, from the
initramfs: so the package's own init script (/etc/init.d/apparmor-fullsystem)
asks it for a reload, as apparmor.service does under systemd.

  boot 1  fresh install (stub): the system's other profiles load and
          attach as before (a program with its own profile enters it),
          and the full profile replaces init's stub; then, in the guest,
          `aa-fullsystem stage full` and `mode enforce`.
  boot 2  full stage in enforce mode, not one DENIED line; a probe's
          own profile then refuses it a file, and status (no journal:
          dmesg) counts what the kernel logged; then `apt-get purge`.
  boot 3  nothing of ours on disk or in the initramfs, PID 1 unconfined.
"""

from __future__ import annotations

import json
import shutil

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (DENIALS, PROFILE, PURGE, RECORD, REPORT, count_every_denial, drop_stale_root,
                        leftovers, recount, unconfined_since_init, where)
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (DENIALS, PROFILE, PURGE, RECORD, REPORT, count_every_denial, drop_stale_root,
                       leftovers, recount, unconfined_since_init, where)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SUITE = "bookworm"

# A program with a profile of its own (a copy of sleep, so that no other
# profile claims it): complain mode, so it restricts nothing.
OWN = "aafs-probe-own"
OWN_BIN = f"/usr/local/bin/{OWN}"
OWN_PROFILE = f"""\
abi <abi/3.0>,
include <tunables/global>

# Test profile of tests/test_sysvinit.py.
profile {OWN} {OWN_BIN} flags=(complain) {{
  /** rmix,
}}
"""

# A program whose own profile, enforced, refuses it one file: the DENIED
# record status must find without a journal (it reads dmesg under sysvinit).
REFUSED = "aafs-probe-refused"
REFUSED_BIN = f"/usr/local/bin/{REFUSED}"
REFUSED_TARGET = "/etc/hostname"
REFUSED_PROFILE = f"""\
abi <abi/3.0>,
include <tunables/global>

# Test profile of tests/test_sysvinit.py: enforced, and without a rule for
# {REFUSED_TARGET}.
profile {REFUSED} {REFUSED_BIN} {{
  include <abstractions/base>
  {REFUSED_BIN} mr,
}}
"""
REFUSE_ONE = rf"""
{REFUSED_BIN} {REFUSED_TARGET} >/dev/null 2>&1
echo "@@ refused.exit=$?"
""" + recount("refused.denied_dmesg") + """
echo "@@ refused.status_json=$(aa-fullsystem --json status)"
"""

LOADED = rf"""
echo "@@ pid1_exe=$(readlink /proc/1/exe)"
echo "@@ own.loaded=$(grep -c '^{OWN} ' /sys/kernel/security/apparmor/profiles)"
echo "@@ roles.loaded=$(grep -c '^{PROFILE}-service ' /sys/kernel/security/apparmor/profiles)"
{OWN_BIN} 60 & pid=$!
# The label is the program's only once the child has executed it (until
# then it is the forked shell, with the shell's label): wait for the exec,
# at most 10 s.
tries=100
while [ "$(readlink /proc/$pid/exe)" != {OWN_BIN} ] && [ $tries -gt 0 ]; do
    sleep 0.1; tries=$((tries - 1))
done
echo "@@ own.label=$(cat /proc/$pid/attr/current)"
kill $pid
"""

TO_FULL_ENFORCE = """
aa-fullsystem stage full
echo "@@ stage_exit=$?"
aa-fullsystem mode enforce
echo "@@ mode_exit=$?"
"""

LEFTOVERS = rf"""
echo "@@ pid1=$(cat /proc/1/attr/current)"
echo "@@ record=$(test -e {RECORD} && echo present || echo absent)"
""" + leftovers("lsinitramfs") + rf"""echo "@@ own.loaded=$(grep -c '^{OWN} ' /sys/kernel/security/apparmor/profiles)"
"""


def test_sysvinit_pid1_confined_and_the_other_profiles_load(built_deb, tmp_path):
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    machine = vm.Machine.create(SUITE, tmp_path / "machine")
    switch = machine.use_sysvinit()
    print(f"--- apt-get install sysvinit-core\n{switch.stdout[-2000:]}")
    root = machine.root
    shutil.copy2(root / "usr/bin/sleep", root / OWN_BIN.lstrip("/"))
    (root / "etc/apparmor.d" / OWN).write_text(OWN_PROFILE)
    shutil.copy2(root / "usr/bin/cat", root / REFUSED_BIN.lstrip("/"))
    (root / "etc/apparmor.d" / REFUSED).write_text(REFUSED_PROFILE)
    count_every_denial(root)
    install = machine.install_debs([built_deb])
    print(f"--- apt-get install our package\n{install.stdout[-3000:]}")
    # update-rc.d put our script after apparmor's, in rcS (insserv orders by the LSB headers).
    rcs = sorted(p.name for p in (root / "etc/rcS.d").iterdir())
    ours = next(name for name in rcs if name.endswith("apparmor-fullsystem"))
    theirs = next(name for name in rcs if name.endswith("apparmor") and name != ours)
    assert theirs < ours, rcs

    def boot(script: str) -> vm.Boot:
        result = machine.boot(script=REPORT + LOADED + script, timeout=900)
        drop_stale_root(machine)
        print(f"--- {SUITE} with sysvinit, boot {len(machine.boots)}\n{result.output}")
        assert result.reached_multi_user, where(result)
        assert result.values["pid1_exe"] == "/usr/sbin/init", where(result)
        assert not unconfined_since_init(result), where(result)
        return result

    # Boot 1: the stub from the initramfs; our init script had apparmor's
    # load the rest: a program with its own profile enters it, and the full
    # profile (whose file also defines the roles) replaced the stub.
    b = boot(TO_FULL_ENFORCE)
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.loaded_stage"] == "stub", where(b)
    # sysvinit's init is its own program, and the check found it.
    assert b.values["record.init_path"] == "/usr/sbin/init" and b.values["record.init_attach"] == "yes", where(b)
    assert b.values["own.loaded"] == "1", where(b)
    # Its own profile, stacked on init's (the standard level's exec rule).
    assert b.values["own.label"] == f"{OWN}//&{PROFILE} (complain)", where(b)
    assert b.values["roles.loaded"] == "1", where(b)
    assert b.values["stage_exit"] == "0" and b.values["mode_exit"] == "0", where(b)

    # Boot 2: full stage, enforce mode, and nothing denied.
    b = boot(DENIALS + REFUSE_ONE + PURGE)
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert b.values["record.mode"] == "enforce", where(b)
    assert b.values["own.loaded"] == "1", where(b)
    assert b.values["denied_dmesg"] == "0", where(b)
    assert b.values["suppressed_dmesg"] == "0", where(b)
    # Then one refusal of the probe's own profile: status, with no journal
    # to read, finds in dmesg every DENIED record the kernel logged.
    assert b.values["refused.exit"] != "0", where(b)
    report = json.loads(b.values["refused.status_json"])
    assert report["kernel_log_source"] == "dmesg", report
    assert report["denied_count"] == int(b.values["refused.denied_dmesg"]) >= 1, (report, where(b))
    assert any(r["profile"] == REFUSED and r["target"] == REFUSED_TARGET for r in report["denied"]), report
    assert b.values["purge_exit"] == "0", where(b)

    # Boot 3: purged: PID 1 unconfined, nothing of ours left; the other
    # profiles load as they did before the package came.
    b = machine.boot(script=LEFTOVERS, timeout=900)
    print(f"--- {SUITE} with sysvinit, after the purge\n{b.output}")
    assert b.reached_multi_user, where(b)
    assert b.values["pid1"] == "unconfined", where(b)
    assert b.values["record"] == "absent", where(b)
    assert b.values["files_left"] == "", where(b)
    assert b.values["in_initramfs"] == "0", where(b)
    assert b.values["loaded"] == "0", where(b)
    assert b.values["own.loaded"] == "1", where(b)
