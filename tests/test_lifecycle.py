"""One machine's whole life with the package, every step applied by a reboot.

On each suite, one guest, booted six times; every step is taken inside the
running guest, the way an admin takes it, and checked after the next boot:

  boot 1  fresh install: stub, complain           -> aa-fullsystem stage full
  boot 2  full profile from the initramfs          -> mode enforce; install a
                                                      site-policy package
  boot 3  enforce, zero DENIED, site profile
          loaded before PID 1                      -> upgrade to 0.2
  boot 4  0.2 keeps stage and mode                 -> upgrade to 0.3, whose
                                                      full profile is broken
  boot 5  still enforced under the last good
          policy, and status says why              -> apt-get purge
  boot 6  PID 1 unconfined, nothing of ours on disk or in the initramfs
"""

from __future__ import annotations

import re

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (COUNT, DENIALS, FULL_PROFILE, INITRAMFS_PROOF, NO_PRINTK_RATELIMIT, PROFILE, REPORT,
                        drop_stale_root, new_machine, runs_cleanly, unconfined_since_init, where)
    from .test_site_policy import PROBE_FILE as SITE_FILE
    from .test_site_policy import PROBE_PROFILE as SITE_PROFILE
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (COUNT, DENIALS, FULL_PROFILE, INITRAMFS_PROOF, NO_PRINTK_RATELIMIT, PROFILE, REPORT,
                       drop_stale_root, new_machine, runs_cleanly, unconfined_since_init, where)
    from test_site_policy import PROBE_FILE as SITE_FILE
    from test_site_policy import PROBE_PROFILE as SITE_PROFILE

pytestmark = [pytest.mark.vm, pytest.mark.slow]

PACKAGE = "apparmor-fullsystem"
DEBS = "/root/lifecycle"        # the .debs the admin installs from inside the guest
STEP_TIMEOUT = 900              # a boot plus initramfs rebuilds under TCG

# Every boot: the version and state, and whether the kernel knows the site profile.
FACTS = rf"""
echo "@@ version=$(dpkg-query -W -f '${{Version}}' {PACKAGE} 2>/dev/null)"
echo "@@ state=$(grep -v '^#' /etc/{PACKAGE}/state 2>/dev/null | tr '\n' ' ')"
echo "@@ site_loaded=$(grep -c '^{SITE_PROFILE} ' /sys/kernel/security/apparmor/profiles)"
echo "@@ init_profile_loaded=$(grep -c '^{PROFILE} ' /sys/kernel/security/apparmor/profiles)"
"""


def step(name: str, command: str) -> str:
    """Shell that runs an admin's command, shows its output, reports its exit status."""
    return rf"""
echo "--- {name}: {command}"
{command} >/root/{name}.log 2>&1
echo "@@ {name}_exit=$?"
cat /root/{name}.log
"""


def boot(machine: vm.Machine, script: str) -> vm.Boot:
    result = machine.boot(script=REPORT + FACTS + script, timeout=STEP_TIMEOUT)
    drop_stale_root(machine)
    print(f"--- {machine.suite} boot {len(machine.boots)}\n{result.output}")
    assert result.reached_multi_user, where(result)
    return result


def confined_everywhere(result: vm.Boot) -> None:
    unconfined = unconfined_since_init(result)
    assert not unconfined, f"unconfined userspace processes: {unconfined}\n{where(result)}"


def no_denials(result: vm.Boot) -> None:
    v = result.values
    assert v["suppressed_dmesg"] == "0", "the kernel dropped log lines\n" + where(result)
    assert v["denied_dmesg"] == "0", where(result)


@pytest.mark.parametrize("suite", vm.SUITES)
def test_stub_full_enforce_upgrade_broken_upgrade_purge(suite, built_deb, newer_deb, broken_full_deb,
                                                        site_policy_deb, tmp_path):
    machine = new_machine(suite, tmp_path / "machine", built_deb)
    (machine.root / "etc/sysctl.d/10-aafs-test-no-printk-ratelimit.conf").write_text(NO_PRINTK_RATELIMIT)
    debs = machine.root / DEBS.lstrip("/")
    debs.mkdir()
    for deb in (newer_deb, broken_full_deb, site_policy_deb):
        (debs / deb.name).write_bytes(deb.read_bytes())

    # Boot 1: what a fresh install gives.
    b = boot(machine, step("stage_full", "aa-fullsystem stage full"))
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.loaded_stage"] == "stub", where(b)
    assert b.values["state"].startswith("STAGE=stub MODE=complain "), where(b)
    confined_everywhere(b)
    assert b.values["stage_full_exit"] == "0", where(b)

    # Boot 2: the initramfs loads the full profile itself.
    b = boot(machine, step("mode_enforce", "aa-fullsystem mode enforce")
             + step("site_install", f"apt-get install -y {DEBS}/{site_policy_deb.name}"))
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert b.values["state"].startswith("STAGE=full MODE=complain "), where(b)
    confined_everywhere(b)
    assert b.values["mode_enforce_exit"] == "0", where(b)
    assert b.values["site_install_exit"] == "0", where(b)
    assert b.values["site_loaded"] == "0", where(b)       # not before the next boot

    # Boot 3: enforced, nothing denied, the site profile loaded by the initramfs
    # (apparmor.service does not read our policy.d: only the initramfs does).
    b = boot(machine, DENIALS + step("upgrade", f"apt-get install -y {DEBS}/{newer_deb.name}"))
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert b.values["record.mode"] == "enforce", where(b)
    assert SITE_FILE in b.values["record.profiles"].split(), where(b)     # the record lists files
    assert b.values["site_loaded"] == "1", where(b)
    confined_everywhere(b)
    no_denials(b)
    runs_cleanly(b)
    assert b.values["upgrade_exit"] == "0", where(b)

    # Boot 4: the upgrade kept stage and mode; then a broken upgrade.
    b = boot(machine, DENIALS + step("broken_upgrade", f"apt-get install -y {DEBS}/{broken_full_deb.name}")
             + 'echo "@@ audit=$(dpkg --audit | wc -l)"\n')
    assert b.values["version"] == "0.2", where(b)
    assert b.values["state"].startswith("STAGE=full MODE=enforce "), where(b)
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    confined_everywhere(b)
    no_denials(b)
    runs_cleanly(b)
    assert b.values["broken_upgrade_exit"] == "0", where(b)
    assert b.values["audit"] == "0", where(b)             # dpkg finished everything
    assert f"WARNING: {FULL_PROFILE} does not compile" in b.output, where(b)
    assert re.search(rf"{re.escape(FULL_PROFILE)}\b.* at line \d+", b.output), where(b)
    assert "keeps the last full-stage policy that compiled" in b.output, where(b)

    # Boot 5: PID 1 under the last good full profile, and everyone is told.
    b = boot(machine, DENIALS + "aa-fullsystem --json status; echo\n"
             + step("purge", f"apt-get purge -y {PACKAGE} {site_policy_deb.name.split('_')[0]}")
             + rf"""
echo "--- left on disk"
find /etc /usr /var /boot \( -name '*{PACKAGE}*' -o -name '*{PROFILE}*' -o -name '*{SITE_PROFILE}*' \) \
    -not -path '{DEBS}/*' -print
echo "@@ left_on_disk=$(find /etc /usr /var /boot \( -name '*{PACKAGE}*' -o -name '*{PROFILE}*' \
    -o -name '*{SITE_PROFILE}*' \) -not -path '{DEBS}/*' -print | wc -l)"
""")
    assert b.values["version"] == "0.3", where(b)
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert b.values["record.kept_last_good"] == "init-full", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert "carries the last policy that compiled for init-full" in b.output, where(b)
    assert '"policy_compiles":"no"' in b.output, where(b)
    confined_everywhere(b)
    no_denials(b)
    assert b.values["purge_exit"] == "0", where(b)
    assert b.values["left_on_disk"] == "0", where(b)

    # Boot 6: as if the package had never been there.
    b = boot(machine, COUNT + rf"""
lsinitramfs /boot/initrd.img-$(uname -r) >/run/aafs-listing.txt 2>&1
count in_initramfs /run/aafs-listing.txt '{INITRAMFS_PROOF}' -e {PACKAGE} -e {PROFILE}
""")
    assert b.values["pid1"] == "unconfined", where(b)
    assert b.values["record"] == "absent", where(b)
    assert b.values["version"] == "", where(b)
    assert b.values["init_profile_loaded"] == "0", where(b)
    assert b.values["site_loaded"] == "0", where(b)
    assert b.values["in_initramfs"] == "0", where(b)
