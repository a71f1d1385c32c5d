"""Debian 14 (forky, testing at the time of writing): PID 1 confined there too.

One guest, the package installed with apt into a minimal forky with dbus,
a service whose program has a profile of its own (and one with
NoNewPrivileges=), and the harness's probe given the administrator's role
(as in test_hardened), so that it keeps reading its script from the raw
disk at the hardened level.

  boot 1  a fresh install (stub, complain): PID 1 is fullsystem-init
          (complain), the boot script's own check saw init attach,
          apparmor.service ran (libapparmor1 is a dependency: forky's
          systemd loads it at run time, and without it reports AppArmor
          off), no process started after init is unconfined. Then the
          admin's commands: stage full, mode enforce, level hardened.
  boot 2  full, enforce, hardened: PID 1 fullsystem-init (enforce), the
          services in their own profiles stacked on init's and the service
          role, the kernel's own modprobe in the kernel role (or in a site's
          kmod profile, which outranks it), the system running with no
          failed unit and not one apparmor="DENIED" line, dbus-daemon
          mediating D-Bus with AppArmor in the service role; a root service
          still gets PID 1 to run apparmor_parser for it (the hole the
          README admits). Then init's profile gets the attachment this
          package shipped before forky was supported,
          /{,usr/}{lib/systemd/systemd,sbin/init}, which forky's parser
          (apparmor 4.1.8) compiles into one that attaches to nothing.
  boot 3  that initramfs loads the profile, yet PID 1 runs unconfined: the
          boot record and `aa-fullsystem status` say so in words.
"""

from __future__ import annotations

import json

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (ASK_PID1, DBUS_FACTS, DENIALS, FULL_PROFILE, PROFILE, REPORT, add_ask_pid1, add_modprobe_probes,
                        add_profiled_services, assert_modprobe_labels, assert_pid1_asked, count_every_denial,
                        drop_stale_root, modprobe_labels, new_machine, probe_is_admin, runs_cleanly,
                        unconfined_since_init, unit_facts, where)
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (ASK_PID1, DBUS_FACTS, DENIALS, FULL_PROFILE, PROFILE, REPORT, add_ask_pid1, add_modprobe_probes,
                       add_profiled_services, assert_modprobe_labels, assert_pid1_asked, count_every_denial,
                       drop_stale_root, modprobe_labels, new_machine, probe_is_admin, runs_cleanly,
                       unconfined_since_init, unit_facts, where)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

ADMIN = f"{PROFILE}-admin"
SERVICE = f"{PROFILE}-service"
OWN = "aafs-probe-svc"
NNP = "aafs-probe-nnp"
OLD_ATTACHMENT = "/{,usr/}{lib/systemd/systemd,sbin/init}"

STATUS_JSON = 'echo "@@ status_json=$(aa-fullsystem --json status)"\n'
SERVICES = unit_facts(OWN, NNP) + r"""
echo "@@ libapparmor=$(dpkg-query -W -f '${Status}' libapparmor1 2>&1)"
""" + STATUS_JSON

HARDEN = """
for command in "stage full" "mode enforce" "level hardened"; do
    aa-fullsystem $command >/run/aafs.log 2>&1
    echo "@@ command.${command%% *}=$?"
    cat /run/aafs.log
done
"""

BREAK_ATTACHMENT = f"""
sed -i 's#^profile {PROFILE} [^ ]*#profile {PROFILE} {OLD_ATTACHMENT}#' {FULL_PROFILE}
grep '^profile {PROFILE} ' {FULL_PROFILE}
update-initramfs -u >/run/update.log 2>&1
echo "@@ update_initramfs=$?"
cat /run/update.log
"""


@pytest.fixture(scope="module")
def forky(built_deb, tmp_path_factory) -> vm.Machine:
    machine = new_machine(vm.TESTING, tmp_path_factory.mktemp("forky") / "machine", built_deb)
    root = machine.root
    count_every_denial(root)
    probe_is_admin(root)
    add_modprobe_probes(root)
    add_profiled_services(root, {OWN: False, NNP: True})
    add_ask_pid1(root)
    # The system bus, as on most systems: D-Bus mediated by this kernel,
    # and the bus forky's systemd-run asks PID 1 through.
    machine.chroot_run(["apt-get", "install", "-y", "--no-install-recommends", "dbus", "libpam-systemd"])
    machine.chroot_run(["systemctl", "enable", f"{OWN}.service", f"{NNP}.service"])
    return machine


def boot(machine: vm.Machine, script: str) -> vm.Boot:
    result = machine.boot(script=script, timeout=900)
    drop_stale_root(machine)
    print(f"--- forky boot {len(machine.boots)}\n{result.output}")
    assert result.reached_multi_user, where(result)
    return result


def test_forky_confines_pid1_from_install_to_hardened_enforce(forky):
    # Boot 1: the fresh install.
    b = boot(forky, REPORT + SERVICES + HARDEN)
    v = b.values
    assert v["pid1"] == f"{PROFILE} (complain)", where(b)
    assert v["record.loaded_stage"] == "stub" and v["record.outcome"] == "loaded", where(b)
    assert v["record.init_attach"] == "yes", where(b)
    assert v["record.init_label"] == f"{PROFILE} (complain)", where(b)
    assert v["record.init_path"] == "/usr/lib/systemd/systemd", where(b)
    assert json.loads(v["status_json"])["boot"]["init_attach"] == "yes", where(b)
    assert v["libapparmor"] == "install ok installed", where(b)
    assert v["apparmor_service"] == "active", where(b)
    assert not unconfined_since_init(b), where(b)
    for name in (OWN, NNP):
        assert v[f"{name}.label"] == f"{name}//&{PROFILE} (complain)", where(b)
    for command in ("stage", "mode", "level"):
        assert v[f"command.{command}"] == "0", where(b)

    # Boot 2: full stage, enforce mode, hardened level.
    b = boot(forky, REPORT + SERVICES + DBUS_FACTS + ASK_PID1 + modprobe_labels() + DENIALS + BREAK_ATTACHMENT)
    v = b.values
    assert v["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert (v["record.loaded_stage"], v["record.mode"], v["record.level"]) == ("full", "enforce", "hardened"), where(b)
    assert v["record.init_attach"] == "yes", where(b)
    assert v["script_shell"] == f"{ADMIN} (enforce)", where(b)
    for name in (OWN, NNP):
        assert v[f"{name}.label"] == f"{name}//&{PROFILE}//&{SERVICE} (mixed)", where(b)
    assert not unconfined_since_init(b), where(b)
    # forky's parser compiles the kernel role's attachment into one that
    # attaches, and a site's kmod profile outranks it.
    assert_modprobe_labels(b)
    # dbus-daemon mediates with AppArmor on this kernel, in the service role.
    assert v["dbus.label"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert "AppArmor D-Bus mediation is enabled" in v["dbus_log"], where(b)
    # A root service still gets PID 1 to run apparmor_parser for it: forky's
    # 7.x kernel mediates AF_UNIX, its parser (apparmor 4.1.8) cannot (README).
    assert_pid1_asked(b)
    runs_cleanly(b)
    assert v["suppressed_dmesg"] == "0", where(b)
    assert v["denied_dmesg"] == "0", where(b)
    assert v["update_initramfs"] == "0", where(b)

    # Boot 3: an attachment forky's parser compiles into one that matches
    # nothing. The profile loads; init does not enter it, and the boot says so.
    b = boot(forky, REPORT + STATUS_JSON)
    v = b.values
    assert v["pid1"] == "unconfined", where(b)
    assert v["record.loaded_stage"] == "full", where(b)
    assert v["record.init_attach"] == "no" and v["record.outcome"] == "failed", where(b)
    assert v["record.init_label"] == "unconfined", where(b)
    assert "but init did not attach" in v["record.reason"], where(b)
    assert "but init did not attach" in b.output.split("--- aa-fullsystem status", 1)[1], where(b)
    report = json.loads(v["status_json"])
    assert report["boot"]["init_attach"] == "no" and report["pid1_confined"] is False, report
    assert "but init did not attach" in report["verdict"], report

