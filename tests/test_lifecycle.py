"""One machine's whole life with the package, every step applied by a reboot.

On each suite, one guest, booted six times; every step is taken inside the
running guest, the way an admin takes it, and checked after the next boot:

  boot 1  fresh install: stub, complain           -> aa-fullsystem stage full
                                                      (bookworm: rebuilt as
                                                      is, reused; then with
                                                      local/ changed, shipped)
  boot 2  full profile from the initramfs          -> mode enforce; install a
                                                      site-policy package (1.0)
  boot 3  enforce, zero DENIED, site profile
          loaded before PID 1                      -> upgrade to 0.2; upgrade
                                                      the site policy to 1.1
                                                      (a second profile)
  boot 4  0.2 keeps stage and mode, 1.1's new
          profile loaded before PID 1              -> upgrade to 0.3, whose
                                                      full profile is broken
  boot 5  still enforced under the last good
          policy, and status says why              -> apt-get remove the site
                                                      policy, then the package
  boot 6  removed: PID 1 unconfined, nothing of ours in the initramfs or the
          kernel, the kept full profile disabled  -> apt-get purge: nothing
                                                      of ours on disk
"""

from __future__ import annotations

import re

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (DENIALS, FULL_PROFILE, INITRAMFS_DIR, INITRAMFS_PROOF, PROFILE, REPORT, count_every_denial,
                        drop_stale_root, in_initramfs, new_machine, runs_cleanly, unconfined_since_init, where)
    from .conftest import SITE_PROBE_FILE_2 as SITE_FILE_2
    from .conftest import SITE_PROBE_PACKAGE as SITE_PACKAGE
    from .conftest import SITE_PROBE_PROFILE_2 as SITE_PROFILE_2
    from .test_site_policy import PROBE_FILE as SITE_FILE
    from .test_site_policy import PROBE_PROFILE as SITE_PROFILE
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (DENIALS, FULL_PROFILE, INITRAMFS_DIR, INITRAMFS_PROOF, PROFILE, REPORT, count_every_denial,
                       drop_stale_root, in_initramfs, new_machine, runs_cleanly, unconfined_since_init, where)
    from conftest import SITE_PROBE_FILE_2 as SITE_FILE_2
    from conftest import SITE_PROBE_PACKAGE as SITE_PACKAGE
    from conftest import SITE_PROBE_PROFILE_2 as SITE_PROFILE_2
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
echo "@@ site_2_loaded=$(grep -c '^{SITE_PROFILE_2} ' /sys/kernel/security/apparmor/profiles)"
echo "@@ init_profile_loaded=$(grep -c '^{PROFILE} ' /sys/kernel/security/apparmor/profiles)"
"""


# With `early init` too, a rebuild whose input did not change copies what
# the last build made and runs no parser; one that changed a file init's
# profile includes (local/) is built again and ships the change. One suite:
# the hook is the same on both, and each rebuild costs a minute under TCG.
KEPT_SUITE = "bookworm"
CHANGED_RULE = "/run/aafs-lifecycle-rule"
KEPT_IN_EARLY_INIT = rf"""
update-initramfs -u >/root/unchanged.log 2>&1
echo "@@ unchanged_exit=$?"
cat /root/unchanged.log
grep -q 'reused the policy compiled for the same input' /root/unchanged.log && echo "@@ unchanged_reused=yes"
echo '  {CHANGED_RULE} r,' >>/etc/apparmor.d/local/{PROFILE}
update-initramfs -u >/root/changed.log 2>&1
echo "@@ changed_exit=$?"
cat /root/changed.log
grep -q 'reused the policy' /root/changed.log && echo "@@ changed_reused=yes"
unpacked=$(mktemp -d)
unmkinitramfs /boot/initrd.img-$(uname -r) "$unpacked" && echo "@@ unpacked=yes"
init_full=$(find "$unpacked" -path '*/{INITRAMFS_DIR}/init-full' | head -n 1)
[ -n "$init_full" ] && echo "@@ init_full_found=yes"
[ -n "$init_full" ] && grep -qF '{CHANGED_RULE}' "$init_full" && echo "@@ change_in_image=yes"
rm -rf "$unpacked"
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
def test_stub_full_enforce_upgrade_broken_upgrade_remove_purge(suite, built_deb, newer_deb, broken_full_deb,
                                                               site_policy_deb, site_policy_deb_1_1, tmp_path):
    machine = new_machine(suite, tmp_path / "machine", built_deb)
    count_every_denial(machine.root)
    debs = machine.root / DEBS.lstrip("/")
    debs.mkdir()
    for deb in (newer_deb, broken_full_deb, site_policy_deb, site_policy_deb_1_1):
        (debs / deb.name).write_bytes(deb.read_bytes())

    # Boot 1: what a fresh install gives.
    b = boot(machine, step("stage_full", "aa-fullsystem stage full")
             + (KEPT_IN_EARLY_INIT if suite == KEPT_SUITE else ""))
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.loaded_stage"] == "stub", where(b)
    assert b.values["state"].startswith("STAGE=stub MODE=complain "), where(b)
    confined_everywhere(b)
    assert b.values["stage_full_exit"] == "0", where(b)
    if suite == KEPT_SUITE:
        assert b.values["unchanged_exit"] == "0", where(b)
        assert b.values.get("unchanged_reused") == "yes", where(b)
        assert b.values["changed_exit"] == "0", where(b)
        assert "changed_reused" not in b.values, where(b)
        assert b.values.get("unpacked") == "yes" and b.values.get("init_full_found") == "yes", where(b)
        assert b.values.get("change_in_image") == "yes", where(b)

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
    b = boot(machine, DENIALS + step("upgrade", f"apt-get install -y {DEBS}/{newer_deb.name}")
             + step("site_upgrade", f"apt-get install -y {DEBS}/{site_policy_deb_1_1.name}"))
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert b.values["record.mode"] == "enforce", where(b)
    assert SITE_FILE in b.values["record.profiles"].split(), where(b)     # the record lists files
    assert b.values["site_loaded"] == "1", where(b)
    confined_everywhere(b)
    no_denials(b)
    runs_cleanly(b)
    assert b.values["upgrade_exit"] == "0", where(b)
    assert b.values["site_upgrade_exit"] == "0", where(b)
    # The site policy package has no maintainer scripts: our file trigger
    # rebuilt the initramfs for its upgrade.
    site_upgrade = b.output[b.output.index("--- site_upgrade:"):]
    assert f"Processing triggers for {PACKAGE}" in site_upgrade, where(b)

    # Boot 4: the upgrade kept stage and mode; then a broken upgrade.
    b = boot(machine, DENIALS + step("broken_upgrade", f"apt-get install -y {DEBS}/{broken_full_deb.name}")
             + 'echo "@@ audit=$(dpkg --audit 2>&1)exit=$?"\n')
    assert b.values["version"] == "0.2", where(b)
    assert b.values["state"].startswith("STAGE=full MODE=enforce "), where(b)
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    # The site policy's upgrade reached the kernel through the initramfs.
    assert b.values["site_loaded"] == "1" and b.values["site_2_loaded"] == "1", where(b)
    assert SITE_FILE_2 in b.values["record.profiles"].split(), where(b)
    confined_everywhere(b)
    no_denials(b)
    runs_cleanly(b)
    assert b.values["broken_upgrade_exit"] == "0", where(b)
    assert b.values["audit"] == "exit=0", where(b)        # dpkg ran, and finished everything
    assert f"WARNING: {FULL_PROFILE} does not compile" in b.output, where(b)
    assert re.search(rf"{re.escape(FULL_PROFILE)}\b.* at line \d+", b.output), where(b)
    assert "keeps the last full-stage policy that compiled" in b.output, where(b)

    # Boot 5: PID 1 under the last good full profile, and everyone is told.
    # Then the site policy is removed (the trigger rebuilds the initramfs
    # without its files), and the package.
    b = boot(machine, DENIALS + "aa-fullsystem --json status; echo\n"
             + step("site_remove", f"apt-get remove -y {SITE_PACKAGE}")
             + rf"""
lsinitramfs /boot/initrd.img-$(uname -r) >/run/aafs-listing.txt 2>&1
count site_in_initramfs /run/aafs-listing.txt '{INITRAMFS_PROOF}' -e {SITE_FILE} -e {SITE_FILE_2}
count init_in_initramfs /run/aafs-listing.txt '{INITRAMFS_PROOF}' -e {PACKAGE}/init-
"""
             + step("remove", f"apt-get remove -y {PACKAGE}"))
    assert b.values["version"] == "0.3", where(b)
    assert b.values["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert b.values["record.kept_last_good"] == "init-full", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert "carries the last policy that compiled for init-full" in b.output, where(b)
    assert '"policy_compiles":"no"' in b.output, where(b)
    confined_everywhere(b)
    no_denials(b)
    # apparmor.service fails, by design: it loads /etc/apparmor.d, where
    # 0.3's full profile does not compile; the initramfs kept the last good
    # one, and PID 1 runs under it. No other unit fails.
    runs_cleanly(b, allowed_failures=("apparmor.service",))
    assert b.values["apparmor_service"] == "failed", where(b)
    assert b.values["site_remove_exit"] == "0", where(b)
    assert b.values["site_in_initramfs"] == "0", where(b)
    assert int(b.values["init_in_initramfs"]) >= 1, where(b)   # the rebuild kept ours
    assert b.values["remove_exit"] == "0", where(b)

    # Boot 6: removed, not purged: nothing of ours runs, the conffiles stay,
    # init's full profile disabled so that apparmor.service skips it. Then
    # the purge.
    b = boot(machine, in_initramfs() + rf"""
echo "@@ full_profile_kept=$(test -f {FULL_PROFILE} && echo yes)"
echo "@@ full_profile_disabled=$(readlink /etc/apparmor.d/disable/{PROFILE})"
echo "@@ status_dpkg=$(dpkg-query -W -f '${{db:Status-Status}}' {PACKAGE} 2>&1)"
""" + step("purge", f"apt-get purge -y {PACKAGE}") + rf"""
echo "--- left on disk"
find /etc /usr /var /boot \( -name '*{PACKAGE}*' -o -name '*{PROFILE}*' -o -name '*{SITE_PROFILE}*' \) \
    -not -path '{DEBS}/*' -print
# find's exit status is the proof the whole tree was read: "unread" otherwise.
if left=$(find /etc /usr /var /boot \( -name '*{PACKAGE}*' -o -name '*{PROFILE}*' \
        -o -name '*{SITE_PROFILE}*' \) -not -path '{DEBS}/*' -print 2>&1); then
    echo "@@ left_on_disk=$(printf '%s' "$left" | grep -c .)"
else
    echo "@@ left_on_disk=unread: $(printf '%s' "$left" | tr '\n' ' ')"
fi
""")
    assert b.values["pid1"] == "unconfined", where(b)
    assert b.values["record"] == "absent", where(b)
    assert b.values["status_dpkg"] == "config-files", where(b)
    assert b.values["apparmor_service"] == "active", where(b)
    assert b.values["init_profile_loaded"] == "0", where(b)
    assert b.values["site_loaded"] == "0" and b.values["site_2_loaded"] == "0", where(b)
    assert b.values["in_initramfs"] == "0", where(b)
    assert b.values["full_profile_kept"] == "yes", where(b)
    assert b.values["full_profile_disabled"] == FULL_PROFILE, where(b)
    assert b.values["purge_exit"] == "0", where(b)
    assert b.values["left_on_disk"] == "0", where(b)
