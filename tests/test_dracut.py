"""dracut: PID 1 confined on Debian 13 when dracut builds the initramfs.

One trixie guest whose initramfs generator is dracut (installing it removes
initramfs-tools), then our package, installed by apt: its trigger makes
dracut rebuild with our module. What differs from initramfs-tools is only
the adapter (the dracut module): the boot script and the build are shared,
so this test follows each path through the adapter once, on the real thing.

  boot 1  fresh install: the stub, loaded by the pre-pivot hook; then, in
          the guest, `aa-fullsystem stage full` and `early all` (dracut
          rebuilds every kernel's initramfs).
  boot 2  full stage with the whole policy precompiled: udevd runs under its
          own profile from its first instruction. Then init's profile is
          broken (a local addition that does not compile): `aa-fullsystem
          check` names the file and line, and dracut's rebuild ships the
          last policy that compiled.
  boot 3  the machine still boots with PID 1 under the full profile, and
          the record says which policy is the last good copy. Without that
          copy, dracut's rebuild fails and keeps the image byte for byte.
  boot 4  aa_fullsystem=off: nothing loaded, PID 1 unconfined, the record
          says why (apparmor=0 is test_boot's: the boot script, which reads
          the command line, is the same). Then `apt-get purge`.
  boot 5  nothing of ours on disk or in the initramfs, PID 1 unconfined.
"""

from __future__ import annotations

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import LAST_GOOD, PROFILE, PURGE, RECORD, REPORT, drop_stale_root, leftovers, unconfined_since_init, where
    from .test_early import EARLY_SERVICES, service_profile
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import LAST_GOOD, PROFILE, PURGE, RECORD, REPORT, drop_stale_root, leftovers, unconfined_since_init, where
    from test_early import EARLY_SERVICES, service_profile

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SUITE = "trixie"
DRACUT_CONF = "/etc/dracut.conf.d/90-aafs-test.conf"

# In the chroot, hostonly would look at the host's devices, so the first
# image is generic; in the booted guest, hostonly (its own devices). Both
# hold only the kernel modules that mount the root (drivers: exclusively
# these, dracut.conf(5)) at zstd's level 1, as the base image's
# MODULES=list does for initramfs-tools (tests/vm.py): a generic image
# with every storage driver took 100 s to boot under TCG.
ONLY_ROOT_DRIVERS = f'drivers+=" {" ".join(vm.ROOT_MODULES)} "\ncompress="zstd -1 -q -T0"\n'
CHROOT_DRACUT = 'hostonly="no"\n' + ONLY_ROOT_DRIVERS
FAST_DRACUT = f"""
cat >{DRACUT_CONF} <<'EOF'
hostonly="yes"
{ONLY_ROOT_DRIVERS}EOF
"""

UDEVD = "systemd-udevd"
LABELS = f"""
pid=$(pidof {UDEVD} | cut -d' ' -f1)
echo "@@ udevd.label=$(cat /proc/$pid/attr/current 2>&1)"
echo "@@ generator=$(. /usr/share/apparmor-fullsystem/functions; aafs_generator)"
echo "@@ initramfs_tools_installed=$(dpkg-query -W -f '${{db:Status-Status}}' initramfs-tools 2>/dev/null)"
"""

TO_FULL_EARLY_ALL = """
aa-fullsystem stage full
echo "@@ stage_exit=$?"
aa-fullsystem early all
echo "@@ early_exit=$?"
"""

# An admin's local addition to init's profile that does not compile.
BREAK_INIT_PROFILE = f"""
echo 'this is not a rule,' >>/etc/apparmor.d/local/{PROFILE}
aa-fullsystem check >/run/check.log 2>&1
echo "@@ check_exit=$?"
cat /run/check.log
grep -q "/etc/apparmor.d/local/{PROFILE}.*line" /run/check.log && echo "@@ check_names_file_and_line=yes"
dracut --force /boot/initrd.img-$(uname -r) $(uname -r) >/run/dracut.log 2>&1
echo "@@ dracut_exit=$?"
cat /run/dracut.log
"""

# The broken profile again, without the last good copy: the hook fails,
# dracut stops before it writes the image, and the previous one is kept
# (the dracut module's install()), byte for byte, with nothing beside it.
NO_LAST_GOOD = f"""
initrd=/boot/initrd.img-$(uname -r)
before=$(sha256sum "$initrd" | cut -d' ' -f1)
ls /boot >/run/boot-before
mv {LAST_GOOD} {LAST_GOOD}.saved
dracut --force "$initrd" "$(uname -r)" >/run/dracut-no-last-good.log 2>&1
echo "@@ no_last_good_dracut_exit=$?"
mv {LAST_GOOD}.saved {LAST_GOOD}
cat /run/dracut-no-last-good.log
after=$(sha256sum "$initrd" | cut -d' ' -f1)
echo "@@ initrd_kept=$(test -n "$before" && test "$before" = "$after" && echo yes)"
ls /boot | diff /run/boot-before - && echo "@@ boot_unchanged=yes"
"""

LEFTOVERS = leftovers("lsinitrd")


def test_dracut_confines_pid1_with_every_path(built_deb, tmp_path):
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    machine = vm.Machine.create(SUITE, tmp_path / "machine")
    conf = machine.root / DRACUT_CONF.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(CHROOT_DRACUT)
    dracut = machine.install_packages(["dracut"])
    print(f"--- apt-get install dracut\n{dracut.stdout[-2000:]}")
    install = machine.install_debs([built_deb])
    print(f"--- apt-get install our package\n{install.stdout[-3000:]}")
    # The trigger made dracut rebuild with our module; initramfs-tools stayed gone.
    assert "Processing triggers for dracut" in install.stdout, install.stdout
    for name, (attachment, _) in EARLY_SERVICES.items():
        (machine.root / "etc/apparmor.d" / name).write_text(service_profile(name, attachment))

    def boot(script: str, append: str = "") -> vm.Boot:
        result = machine.boot(append=append, script=REPORT + LABELS + script, timeout=900)
        drop_stale_root(machine)
        print(f"--- {SUITE} with dracut, boot {len(machine.boots)} ({append or 'no parameters'})\n{result.output}")
        assert result.reached_multi_user, where(result)
        assert result.values["generator"] == "dracut", where(result)
        assert result.values["initramfs_tools_installed"] != "installed", where(result)
        return result

    # Boot 1: a fresh install, the stub.
    b = boot(FAST_DRACUT + TO_FULL_EARLY_ALL)
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.outcome"] == "loaded", where(b)
    assert b.values["record.loaded_stage"] == "stub", where(b)
    # dracut's initramfs runs systemd itself: the attach probe cannot take
    # init's name there, and the record says so instead of guessing.
    assert b.values["record.init_attach"] == "unchecked", where(b)
    assert "exists in the initramfs too" in b.values["record.init_attach_reason"], where(b)
    assert not unconfined_since_init(b), where(b)
    assert "PID 1 is confined" in b.output, where(b)
    assert b.values["stage_exit"] == "0" and b.values["early_exit"] == "0", where(b)

    # Boot 2: the full stage, the whole policy precompiled and loaded by the
    # pre-pivot hook, so udevd enters its own profile at its first exec.
    b = boot(BREAK_INIT_PROFILE)
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert b.values["record.early"] == "cache", where(b)
    assert b.values["udevd.label"] == f"aafs-test-udevd//&{PROFILE} (complain)", where(b)
    assert not unconfined_since_init(b), where(b)
    # The broken profile: refused with its file and line, and the rebuild
    # ships the last policy that compiled instead.
    assert b.values["check_exit"] != "0", where(b)
    assert b.values.get("check_names_file_and_line") == "yes", where(b)
    assert b.values["dracut_exit"] == "0", where(b)
    assert "keeps the last policy that compiled" in b.output, where(b)

    # Boot 3: still confined by the full profile, from the last good copy.
    # Then a rebuild without that copy fails and keeps this image.
    b = boot(NO_LAST_GOOD)
    assert b.values["pid1"] == f"{PROFILE} (complain)", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert b.values["record.kept_last_good"] == "init-full", where(b)
    assert not unconfined_since_init(b), where(b)
    assert b.values["no_last_good_dracut_exit"] != "0", where(b)
    assert "there is no earlier copy that did; the previous initramfs" in b.output, where(b)
    assert "no initramfs is written for" in b.output, where(b)
    assert b.values.get("initrd_kept") == "yes", where(b)
    assert b.values.get("boot_unchanged") == "yes", where(b)

    # Boot 4: the escape hatch. (The shared boot script reads the command
    # line itself: apparmor=0 takes the path test_boot shows.)
    b = boot(PURGE, append="aa_fullsystem=off")
    assert b.values["pid1"] == "unconfined", where(b)
    assert b.values["record.outcome"] == "skipped", where(b)
    assert "aa_fullsystem=off" in b.values["record.reason"], where(b)
    assert b.values["purge_exit"] == "0", where(b)

    # Boot 5: purged. Nothing of ours on disk, in the initramfs or loaded.
    b = machine.boot(script=LEFTOVERS + f"echo \"@@ pid1=$(cat /proc/1/attr/current)\"\n"
                     f"echo \"@@ record=$(test -e {RECORD} && echo present || echo absent)\"\n", timeout=900)
    print(f"--- {SUITE} with dracut, after the purge\n{b.output}")
    assert b.reached_multi_user, where(b)
    assert b.values["pid1"] == "unconfined", where(b)
    assert b.values["record"] == "absent", where(b)
    assert b.values["files_left"] == "", where(b)
    assert b.values["in_initramfs"] == "0", where(b)
    assert b.values["loaded"] == "0", where(b)
