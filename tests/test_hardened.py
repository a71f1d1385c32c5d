"""The hardened level, enforced: what a root service can no longer do, and who still can.

One guest per suite, on a system that adds openssh-server, cron and
unattended-upgrades to the base. The package is installed with apt and the
admin's own commands (`aa-fullsystem stage full`, `mode enforce`, `level
hardened`, and `early all`) are run in the chroot before the first boot,
where the initramfs is built at the host's speed (the in-guest path of
those commands is test_lifecycle's); the kernel's reinstall in boot 1
rebuilds it in the guest, precompiling the whole policy, roles included.

  boot 1  hardened, enforce: PID 1 and the roles from the initramfs; not one
          apparmor="DENIED" line from the standard boot; each protected
          operation, run by a root service that PID 1 starts and that has no
          profile of its own (a oneshot unit), is refused, and run by root
          logged in over ssh, succeeds; a NoNewPrivileges= service with a
          profile of its own runs under it; sshd's sessions are the admin's,
          cron's jobs a service's; status lists the refusals. Then root
          reinstalls the kernel from a local .deb over ssh.
  boot 2  (bookworm) aa_fullsystem=off on the kernel command line: PID 1
          unconfined, and a protected operation by a service succeeds: the
          escape hatch still works.
  boot 3  the initramfs the kernel's reinstall built, the whole policy
          precompiled: zero DENIED again; unattended-upgrades, started by
          PID 1, upgrades a package whose postinst runs update-initramfs.
          Then `aa-fullsystem mode complain` (bookworm) or `level standard`
          (trixie).
  boot 4  (bookworm) hardened, complain: each protected operation runs for
          the service, and the kernel logs each (but a hard link, which no
          rule refuses) as apparmor="AUDIT" or "ALLOWED" naming its target;
          nothing is refused, and status counts all the records the kernel
          logged.
  boot 5  (trixie) the standard level: services run with init's rights
          again. Every protected operation, run by the same service,
          succeeds, and the check that found each refused in boot 1 says
          "not refused" (and no AUDIT record is left): the policy without
          its rules, shown failing each check.

Boots 2, 4 and 5 each run on one suite (HATCH_SUITE and the others below).

The boot script is the harness's probe (tests/vm.py), itself a service: a
line in local/fullsystem-init puts it in the admin's role, as the console
would be (the site additions the README documents), so that it can read
its script from the raw disk /dev/vdb and turn the console's log level down.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from aa_pkg import integrity

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (ASK_PID1, COUNT, DENIALS, KERNEL_FIRST_LINE, MODPROBE_AUTOLOAD, PROFILE, REPORT,
                        add_ask_pid1, add_modprobe_probes, add_profiled_services, assert_modprobe_labels,
                        assert_pid1_asked, count_every_denial, drop_stale_root, modprobe_labels, probe_is_admin,
                        recount, runs_cleanly, unconfined_since_init, unit, unit_facts, where)
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (ASK_PID1, COUNT, DENIALS, KERNEL_FIRST_LINE, MODPROBE_AUTOLOAD, PROFILE, REPORT,
                       add_ask_pid1, add_modprobe_probes, add_profiled_services, assert_modprobe_labels,
                       assert_pid1_asked, count_every_denial, drop_stale_root, modprobe_labels, probe_is_admin,
                       recount, runs_cleanly, unconfined_since_init, unit, unit_facts, where)

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def concrete(pattern: str) -> list[str]:
    """The directories an integrity.INSTRUCTIONS pattern names, spelt out:
    each brace alternative, and "*" as a name of our own ("/run/*.d/" is
    /run/aafs.d/, which the glob must cover as it covers tmpfiles.d)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m:
        return [d for alt in m[1].split(",") for d in concrete(pattern[:m.start()] + alt + pattern[m.end():])]
    return [pattern.replace("*", "aafs")]


# Every place the threat model derives as one a program with power reads
# instructions from (aa_pkg/integrity.py), written to in one go: a file in
# each, the directory made first (and removed after) where there is none.
INSTRUCTION_DIRS = [d for source in integrity.INSTRUCTIONS for d in concrete(source.path)]
assert all(d.endswith("/") for d in INSTRUCTION_DIRS), INSTRUCTION_DIRS
WRITE_INSTRUCTION_PLACES = f"""s=0
for d in {" ".join(INSTRUCTION_DIRS)}; do
    made=
    if [ ! -d "$d" ]; then mkdir "$d" 2>/dev/null && made=1 || {{ s=1; continue; }}; fi
    if touch "$d/aafs-probe" 2>/dev/null; then rm -f "$d/aafs-probe"; echo "written $d"; else s=1; fi
    [ -z "$made" ] || rmdir "$d"
done
exit $s"""

SERVICE = f"{PROFILE}-service"
ADMIN = f"{PROFILE}-admin"
PKG = f"{PROFILE}-pkg"
# dbus and libpam-systemd: the system bus and logind, which ssh logins register with.
EXTRA_PACKAGES = ("openssh-server", "openssh-client", "cron", "unattended-upgrades", "dbus", "libpam-systemd",
                  # LVM on a second disk, activated at boot (udev, then a unit PID 1 starts)
                  "lvm2")
OPS_DIR = "/usr/local/lib/aafs-ops"
KERNEL_DEB = "/root/kernel.deb"
UU_PACKAGE = "aafs-uu-probe"
UU_REPO = "/srv/aafs-test-repository"
UU_LABEL = "/run/aafs-uu-postinst-label"

SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o LogLevel=ERROR root@localhost"

# A chain: plant an instruction, have the program that reads it run, and
# succeed only if it ran with power: a file in /boot.
CHAIN = "rm -f /boot/aafs-chain; {plant}; {run}; {clean}; test -e /boot/aafs-chain && rm /boot/aafs-chain"

ODD_PROGRAM = "aafs touch"
ODD_FILE = '/boot/aafs "odd" name'

# One protected operation each (README, THREAT MODEL): a shell command that
# succeeds for root with every right, and that leaves nothing behind.
PROTECTED = {
    "write_boot": "touch /boot/aafs-probe && rm /boot/aafs-probe",
    # The same by a program and into a file whose names the kernel logs in
    # hex (a space, a quote): status must still name both.
    "write_boot_odd_names": f"cp /usr/bin/touch '/var/tmp/{ODD_PROGRAM}' && {{ '/var/tmp/{ODD_PROGRAM}' '{ODD_FILE}';"
                            f" s=$?; rm -f '/var/tmp/{ODD_PROGRAM}' '{ODD_FILE}'; exit $s; }}",
    "write_initramfs_hooks": "touch /etc/initramfs-tools/hooks/aafs-probe && rm /etc/initramfs-tools/hooks/aafs-probe",
    "write_initramfs_scripts": "touch /usr/share/initramfs-tools/scripts/aafs-probe"
                               " && rm /usr/share/initramfs-tools/scripts/aafs-probe",
    "write_kernel_hooks": "touch /etc/kernel/postinst.d/aafs-probe && rm /etc/kernel/postinst.d/aafs-probe",
    "write_modules_tree": 'touch "/usr/lib/modules/$(uname -r)/aafs-probe" && rm "/usr/lib/modules/$(uname -r)/aafs-probe"',
    "write_modprobe_conf": "touch /etc/modprobe.d/aafs-probe.conf && rm /etc/modprobe.d/aafs-probe.conf",
    "write_bootloader_conf": "touch /etc/default/grub && rm /etc/default/grub",
    "write_policy": "touch /etc/apparmor.d/aafs-probe && rm /etc/apparmor.d/aafs-probe",
    "write_policy_state": "touch /etc/apparmor-fullsystem/aafs-probe && rm /etc/apparmor-fullsystem/aafs-probe",
    "write_last_good": "touch /var/lib/apparmor-fullsystem/aafs-probe && rm /var/lib/apparmor-fullsystem/aafs-probe",
    # The compiled policy the hook copies into the next initramfs (README).
    "write_policy_cache": "touch /var/cache/apparmor-fullsystem/aafs-probe && rm /var/cache/apparmor-fullsystem/aafs-probe",
    "write_site_policy": "touch /etc/apparmor-fullsystem/policy.d/aafs-probe"
                         " && rm /etc/apparmor-fullsystem/policy.d/aafs-probe",
    "write_unit": "touch /etc/systemd/system/aafs-probe.service && rm /etc/systemd/system/aafs-probe.service",
    "load_policy": "apparmor_parser --replace /etc/apparmor.d/aafs-probe-svc",
    "load_module": "modprobe dummy && rmmod dummy",
    "read_dev_mem": "dd if=/dev/mem of=/dev/null bs=1 count=1 status=none",
    "read_dev_port": "dd if=/dev/port of=/dev/null bs=1 count=1 status=none",
    "read_kcore": "dd if=/proc/kcore of=/dev/null bs=1 count=1 status=none",
    "read_raw_disk": "dd if=/dev/vda of=/dev/null bs=512 count=1 status=none",
    # kexec_load(2) with no segments unloads the (absent) kexec image: 0
    # with CAP_SYS_BOOT, EPERM without.
    "kexec": "perl -e 'exit(syscall(246, 0, 0, 0, 0) == -1 ? do { print \"$!\\n\"; 1 } : 0)'",
    "write_sysctl": "v=$(cat /proc/sys/kernel/sysrq) && echo \"$v\" >/proc/sys/kernel/sysrq",
    "write_ld_preload": "touch /etc/ld.so.preload && rm /etc/ld.so.preload",
    "ptrace_init": "perl -e 'open(my $f, \"<\", \"/proc/1/mem\") or die \"$!\\n\"'",
    # BPF and perf (CAP_BPF, CAP_PERFMON; CAP_SYS_ADMIN, which the kernel
    # takes in their place, is refused quietly): a hash map (bpf(2) 321,
    # BPF_MAP_CREATE), a CPU clock counting the kernel too (perf_event_open
    # 298), which upstream gives only with CAP_PERFMON from
    # perf_event_paranoid 2 and Debian only with CAP_SYS_ADMIN at its 3.
    "load_bpf": "perl -e 'my $a = pack(\"L4\", 1, 4, 4, 1) . (\"\\0\" x 104);"
                " syscall(321, 0, $a, length $a) >= 0 or die \"bpf: $!\\n\"'",
    "open_perf": "perl -e 'my $a = pack(\"LLQQQQQ\", 1, 64, 0, 0, 0, 0, 1) . (\"\\0\" x 16);"
                 " syscall(298, $a, 0, -1, -1, 0) >= 0 or die \"perf_event_open: $!\\n\"'",
    # The kernel's own settings in /sys, each written back as it is.
    "write_sys_kernel": "f=/sys/kernel/mm/transparent_hugepage/enabled"
                        " && v=$(sed -n 's/.*\\[\\(.*\\)\\].*/\\1/p' $f) && echo \"$v\" >$f",
    "write_module_param": "f=/sys/module/printk/parameters/time && v=$(cat $f) && echo \"$v\" >$f",
    # A driver bound by hand: the first PCI device's override, cleared
    # (it has none).
    "write_driver_override": "d=$(ls -d /sys/bus/pci/devices/* | head -n 1) && echo >\"$d/driver_override\"",
    # A new input device (keystrokes into the administrator's console), and
    # an MSR (msr is loaded by the boot script, a service may not load it).
    "open_uinput": "perl -e 'open(my $f, \">\", \"/dev/uinput\") or die \"$!\\n\"'",
    "read_msr": "dd if=/dev/cpu/0/msr of=/dev/null bs=8 count=1 skip=2 status=none",
    # Another role's profile for the next exec, and a process of a role with
    # power (sshd, the administrator's).
    "change_profile": f"aa-exec -p {PROFILE}-admin -- true",
    "ptrace_admin": "pid=$(pidof -s sshd) && perl -e 'open(my $f, \"<\", \"/proc/$ARGV[0]/mem\") or die \"$!\\n\"' \"$pid\"",
    # Not on any list: /etc, /opt and the top level are the system's (the rule).
    "write_etc": "touch /etc/aafs-probe && rm /etc/aafs-probe",
    "write_opt": "mkdir -p /opt && touch /opt/aafs-probe && rm /opt/aafs-probe",
    "write_top_level": "touch /aafs-probe && rm /aafs-probe",
    "write_run_unit": "touch /run/systemd/system/aafs-probe.service && rm /run/systemd/system/aafs-probe.service",
    "write_apt_archives": "touch /var/cache/apt/archives/aafs-probe.deb && rm /var/cache/apt/archives/aafs-probe.deb",
    # ... and every other place of the derivation, each refused (all_refused).
    "write_instruction_places": WRITE_INSTRUCTION_PLACES,
    # Instructions left for a program with power, end to end: each succeeds
    # only if the program ran them with power (a file in /boot).
    "udev_rule": CHAIN.format(
        plant="mkdir -p /run/udev/rules.d && printf '%s\\n' 'ACTION==\"change\", KERNEL==\"null\","
              " RUN+=\"/usr/bin/touch /boot/aafs-chain\"' >/run/udev/rules.d/99-aafs.rules",
        run="udevadm control --reload && udevadm trigger --action=change --settle /sys/class/mem/null",
        clean="rm -f /run/udev/rules.d/99-aafs.rules; udevadm control --reload"),
    "modprobe_conf": CHAIN.format(
        plant="mkdir -p /run/modprobe.d && echo 'install net-pf-12 /usr/bin/touch /boot/aafs-chain'"
              " >/run/modprobe.d/aafs.conf",
        run=MODPROBE_AUTOLOAD, clean="rm -f /run/modprobe.d/aafs.conf"),
    "login_script": CHAIN.format(
        plant="printf '#!/bin/sh\\ntouch /boot/aafs-chain\\n' >/etc/update-motd.d/99-aafs"
              " && chmod +x /etc/update-motd.d/99-aafs",
        run=f"{SSH} true", clean="rm -f /etc/update-motd.d/99-aafs"),
    # Another name for a protected file.
    "rename_parent": "mv /var/lib /var/aafs-lib && { touch /var/aafs-lib/dpkg/aafs-probe; s=$?;"
                     " mv /var/aafs-lib /var/lib; rm -f /var/lib/dpkg/aafs-probe; exit $s; }",
    "hard_link": "ln /etc/hostname /var/tmp/aafs-link && rm /var/tmp/aafs-link",
    # (/dev: the one file system mounted without nodev.)
    "device_node": "mknod /dev/aafs-disk b $(stat -c '%Hr %Lr' /dev/vda) && { dd if=/dev/aafs-disk of=/dev/null"
                   " bs=512 count=1 status=none; s=$?; rm -f /dev/aafs-disk; exit $s; }",
    # open_tree(2) (428 on x86_64), OPEN_TREE_CLONE: /proc again, detached,
    # where no rule names /proc/sys/kernel/sysrq.
    "detached_tree": "v=$(cat /proc/sys/kernel/sysrq) && perl -e 'my $p = \"/proc\"; my $fd = syscall(428, -100, $p, 1);"
                     " die \"open_tree: $!\\n\" if $fd < 0; open(my $f, \">\", \"/proc/self/fd/$fd/sys/kernel/sysrq\")"
                     " or die \"open: $!\\n\"; print $f \"$ARGV[0]\\n\"' \"$v\"",
}
# /dev/kmem is gone from Linux since 5.13 (no kernel of ours has it).

# What the kernel's refusal of each operation names (the record's name=,
# capname= or peer=, as `aa-fullsystem status` reads them): one of these.
REFUSED_TARGET = {
    "write_boot": ('name="/boot/aafs-probe"',),
    "write_boot_odd_names": ("name=" + ODD_FILE.encode().hex().upper(),),
    "write_initramfs_hooks": ('name="/etc/initramfs-tools/hooks/aafs-probe"',),
    "write_initramfs_scripts": ('name="/usr/share/initramfs-tools/scripts/aafs-probe"',),
    "write_kernel_hooks": ('name="/etc/kernel/postinst.d/aafs-probe"',),
    "write_modules_tree": ('name="/usr/lib/modules/',),
    "write_modprobe_conf": ('name="/etc/modprobe.d/aafs-probe.conf"',),
    "write_bootloader_conf": ('name="/etc/default/grub"',),
    "write_policy": ('name="/etc/apparmor.d/aafs-probe"',),
    "write_policy_state": ('name="/etc/apparmor-fullsystem/aafs-probe"',),
    "write_last_good": ('name="/var/lib/apparmor-fullsystem/aafs-probe"',),
    "write_policy_cache": ('name="/var/cache/apparmor-fullsystem/aafs-probe"',),
    "write_site_policy": ('name="/etc/apparmor-fullsystem/policy.d/aafs-probe"',),
    "write_unit": ('name="/etc/systemd/system/aafs-probe.service"',),
    "load_policy": ('capname="mac_admin"', 'name="/sys/kernel/security/apparmor/'),
    "load_module": ('capname="sys_module"',),
    "read_dev_mem": ('name="/dev/mem"',),
    "read_dev_port": ('name="/dev/port"',),
    "read_kcore": ('name="/proc/kcore"',),
    "read_raw_disk": ('name="/dev/vda"',),
    "kexec": ('capname="sys_boot"',),
    "write_sysctl": ('name="/proc/sys/kernel/sysrq"',),
    "write_ld_preload": ('name="/etc/ld.so.preload"',),
    "ptrace_init": (f'peer="{PROFILE}"',),
    "load_bpf": ('capname="bpf"',),
    "open_perf": (),         # CAP_SYS_ADMIN first (QUIET_REFUSAL)
    "write_sys_kernel": ('name="/sys/kernel/mm/transparent_hugepage/enabled"',),
    "write_module_param": ('name="/sys/module/printk/parameters/time"',),
    "write_driver_override": ('/driver_override"',),
    "open_uinput": ('name="/dev/uinput"',),
    "read_msr": ('name="/dev/cpu/0/msr"',),
    "change_profile": ('operation="change_onexec"',),
    "ptrace_admin": (f'peer="{PROFILE}-admin',),
    "write_etc": ('name="/etc/aafs-probe"',),
    "write_opt": ('name="/opt/',),
    "write_top_level": ('name="/aafs-probe"',),
    "write_run_unit": ('name="/run/systemd/system/aafs-probe.service"',),
    "write_apt_archives": ('name="/var/cache/apt/archives/aafs-probe.deb"',),
    "write_instruction_places": tuple(f'name="{d}' for d in INSTRUCTION_DIRS),
    "udev_rule": ('name="/run/udev/rules.d/',),
    "modprobe_conf": ('name="/run/modprobe.d/',),
    "login_script": ('name="/etc/update-motd.d/99-aafs"',),
    "rename_parent": ('name="/var/lib/"',),
    "hard_link": ('name="/var/tmp/aafs-link"',),
    "device_node": ('capname="mknod"',),
    "detached_tree": (),     # CAP_SYS_ADMIN is refused quietly: no record
}
assert REFUSED_TARGET.keys() == PROTECTED.keys()
# Refused in enforce mode, yet not logged in complain mode: a hard link is
# refused by AppArmor's link subset rule (the link's rights must be its
# target's), not by a rule, so complain mode has nothing to audit (an
# "audit link /** -> TARGET" rule in the complain roles logged nothing
# either, on 6.1 and 6.12).
UNLOGGED_IN_COMPLAIN = {"hard_link"}
# Operations the kernel refuses for want of CAP_SYS_ADMIN, which the
# service role refuses quietly (no record): the error the service gets.
QUIET_REFUSAL = {
    "detached_tree": "open_tree: Operation not permitted",
    # Debian's kernel asks for CAP_SYS_ADMIN at kernel.perf_event_paranoid=3,
    # its default, before any other check ("security,perf: Allow further
    # restriction of perf_event_open").
    "open_perf": "perf_event_open: Permission denied",
}
assert all(not REFUSED_TARGET[name] for name in QUIET_REFUSAL)
assert all(REFUSED_TARGET[name] for name in PROTECTED if name not in QUIET_REFUSAL)
# Operations whose refusal must name every target, not one of them.
ALL_REFUSED = {"write_instruction_places"}

# A root service started by PID 1, without a profile of its own: the
# oneshot runs OPS_DIR/NAME and keeps its exit status for `systemctl show`.
OP_UNIT = f"""\
[Unit]
Description=aafs test: protected operation %i, as a service

[Service]
Type=oneshot
ExecStart=/bin/sh {OPS_DIR}/%i
StandardOutput=file:/run/aafs-op-%i.out
StandardError=inherit
"""

# Services whose programs have profiles of their own (one with
# NoNewPrivileges=), and one whose program has none.
OWN = "aafs-probe-svc"
NNP = "aafs-probe-nnp"
PLAIN = "aafs-probe-plain"

# The operations of one run, one after the other in one process of the
# role: a single oneshot service (aafs-op@batch) or a single ssh login, each
# operation's exit status and output kept apart. One unit start or login
# per run, not per operation: under TCG each costs seconds.
BATCH = f"""ROLE=${{ROLE:-service}}
for name in $(cat /run/aafs-batch-names); do
    sh {OPS_DIR}/"$name" >"/run/aafs-$ROLE-$name.out" 2>&1
    echo $? >"/run/aafs-$ROLE-$name.status"
done
"""


def run_ops(role: str, names) -> str:
    """Shell: each operation as a service (one oneshot) or as root over ssh
    (one login); "@@ op.NAME.ROLE=STATUS OUTPUT"."""
    names = list(names)
    # read_msr's device: loading its driver is itself protected.
    script = "modprobe msr\n" if "read_msr" in names else ""
    script += f"echo {' '.join(names)} >/run/aafs-batch-names\n"
    if role == "service":
        script += "systemctl start aafs-op@batch.service\n"
    else:
        script += f"{SSH} ROLE=admin sh {OPS_DIR}/batch\n"
    for name in names:
        script += (f"echo \"@@ op.{name}.{role}=$(cat /run/aafs-{role}-{name}.status 2>&1)"
                   f" $(head -c 300 /run/aafs-{role}-{name}.out | tr '\\n' ' ')\"\n")
    return script


def denied_records(boot: vm.Boot) -> list[str]:
    """The kernel's apparmor="DENIED" records of the boot, as DENIALS printed them from dmesg."""
    return [line for line in boot.output.splitlines() if 'apparmor="DENIED"' in line and "audit:" in line]


def of_service(records: list[str]) -> list[str]:
    """The records of the service role."""
    return [record for record in records if f'profile="{SERVICE}"' in record]


def names_targets(records: list[str], name: str) -> bool:
    """Whether RECORDS name operation NAME's target: one of them, or every
    one where the operation must be refused for each (ALL_REFUSED)."""
    named = [any(t in record for record in records) for t in REFUSED_TARGET[name]]
    return all(named) if name in ALL_REFUSED else any(named)


def audit_records(boot: vm.Boot) -> list[str]:
    """The kernel's records of what complain mode let through, as DENIALS
    printed them: apparmor="AUDIT" (an audit rule's, which complain mode's
    roles have instead of deny rules) and apparmor="ALLOWED" (no rule at
    all, e.g. for changing profile)."""
    return [line for line in boot.output.splitlines()
            if ('apparmor="AUDIT"' in line or 'apparmor="ALLOWED"' in line) and "audit:" in line]


def audited_for_service(boot: vm.Boot, name: str) -> bool:
    """Whether operation NAME, in complain mode, ran for the service and left
    the record of what enforce mode refuses: an AUDIT (or ALLOWED) record of
    the service role naming its target (every target where enforce mode
    must refuse every one). An operation whose refusal leaves no record has
    none here."""
    if status(boot.values[f"op.{name}.service"]) != "0":
        return False
    return names_targets(of_service(audit_records(boot)), name)


def refused_to_service(boot: vm.Boot, name: str) -> bool:
    """Whether the kernel refused operation NAME to the service: its run
    failed, and a DENIED record of the service role names its target
    (matched by what it names, not by when it came: the kernel's audit
    thread prints a record after the operation). CAP_SYS_ADMIN's refusal
    leaves no record; the service's own error says it."""
    if status(boot.values[f"op.{name}.service"]) == "0":
        return False
    if name in QUIET_REFUSAL:
        return QUIET_REFUSAL[name] in boot.values[f"op.{name}.service"]
    return names_targets(of_service(denied_records(boot)), name)


LABELS = unit_facts(OWN, NNP, PLAIN, "ssh", "cron", "dbus", "systemd-logind") + f"""
echo "@@ ssh_session=$({SSH} cat /proc/self/attr/current 2>&1)"
systemctl start aafs-op@whoami.service
echo "@@ service_session=$(cat /run/aafs-op-whoami.out)"
systemctl start aafs-op@busctl.service
echo "@@ busctl_service=$(systemctl show -p ExecMainStatus --value aafs-op@busctl.service) $(cat /run/aafs-op-busctl.out)"
"""

# An ordinary user, whom the admin may log in as, and the chain a service
# plays with them: a key of its own in their authorized_keys, a setuid copy
# of bash in /var/tmp, a login as them and the copy run with -p. The login
# must not be the administrator's: uid 0 then buys no power.
USER = "aafs-user"
SSH_OPTIONS = "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
LOGIN_AS_USER = f"""rm -rf /run/aafs-key /var/tmp/aafs-bash; rm -f /boot/aafs-chain
mkdir /run/aafs-key && ssh-keygen -q -t ed25519 -N '' -f /run/aafs-key/id \\
  && cat /run/aafs-key/id.pub >>/home/{USER}/.ssh/authorized_keys \\
  && cp /usr/bin/bash /var/tmp/aafs-bash && chmod 4755 /var/tmp/aafs-bash \\
  && ssh -i /run/aafs-key/id {SSH_OPTIONS} {USER}@localhost \\
     '/var/tmp/aafs-bash -p -c "cat /proc/self/attr/current; id -u; touch /boot/aafs-chain"'
sed -i '$d' /home/{USER}/.ssh/authorized_keys; rm -rf /run/aafs-key /var/tmp/aafs-bash
test -e /boot/aafs-chain && rm /boot/aafs-chain
"""
USER_SESSION = f"""
echo "@@ user_session=$(ssh {SSH_OPTIONS} {USER}@localhost cat /proc/self/attr/current 2>&1)"
systemctl start aafs-op@login_as_user.service
echo "@@ login_as_user=$(systemctl show -p ExecMainStatus --value aafs-op@login_as_user.service)" \\
     "$(tr '\\n' ' ' </run/aafs-op-login_as_user.out)"
"""

# A volume group on the second disk, made by the administrator. At the
# next boots Debian's initramfs activates it (lvm2's udev rules there, before
# any policy is loaded); the running system's lvm2 services (lvm2-monitor,
# dmeventd, lvm in the system role) then work on it under the hardened level.
LVM_VG = "aafs"
MAKE_LVM = f"""
pvcreate -q /dev/vdc && vgcreate -q {LVM_VG} /dev/vdc && lvcreate -q -y -L 8M -n data {LVM_VG}
echo "@@ lvm_created=$?"
"""
LVM_AT_BOOT = f"""
echo "@@ lvm_active=$(lvs --noheadings -o lv_active {LVM_VG}/data 2>&1 | tr -d ' ')"
echo "@@ lvm_monitor=$(systemctl show -p Result --value lvm2-monitor.service)"
"""
# Then activation by the running system, as for a disk added later: the
# disk's "add" event replayed, lvm2's udev rule (69-lvm.rules) runs pvscan
# in udev and asks PID 1 for a transient lvm-activate-VG unit, whose lvm
# runs in the system role. The administrator (this script) deactivates the
# group and clears lvm2's record of what it has seen online, as lvm2's own
# test suite does to replay an event; the activation is the system's.
LV_ACTIVE = f"lvs --noheadings -o lv_active {LVM_VG}/data 2>&1 | tr -d ' '"
ACTIVATED_BY_UNIT = f"journalctl -b -o cat -u lvm-activate-{LVM_VG}.service | grep -c 'now active'"
LVM_BY_THE_RUNNING_SYSTEM = f"""
units_before=$({ACTIVATED_BY_UNIT})
vgchange -q -an {LVM_VG} >/dev/null
echo "@@ lvm_off_exit=$?"
echo "@@ lvm_after_off=$({LV_ACTIVE})"
rm -f /run/lvm/pvs_online/* /run/lvm/vgs_online/*
udevadm trigger --action=add --settle /dev/vdc
echo "@@ lvm_trigger_exit=$?"
tries=60
while [ "$({LV_ACTIVE})" != active ] && [ $tries -gt 0 ]; do sleep 0.5; tries=$((tries - 1)); done
echo "@@ lvm_reactivated=$({LV_ACTIVE})"
echo "@@ lvm_activations_by_unit=$(( $({ACTIVATED_BY_UNIT}) - units_before ))"
"""
# A service that loads an AppArmor profile of its own at every boot, as
# libvirt or a container engine does: the parser it runs is in the system
# role's list, so PID 1 starts it there.
LOAD_PROFILE = "aafs-load-profile"
LOAD_PROFILE_UNIT = f"""\
[Unit]
Description=aafs test: a service that loads an AppArmor profile of its own

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/apparmor_parser --replace /etc/apparmor.d/{OWN}

[Install]
WantedBy=multi-user.target
"""
PROFILE_LOADED = f"""
echo "@@ load_profile=$(systemctl show -p Result --value {LOAD_PROFILE}.service)"
"""

# The kernel's own modprobe, started by a service's socket(2), with the
# administrator's steps over ssh.
KERNEL_HELPER = modprobe_labels("systemctl start aafs-op@autoload.service", as_admin=SSH)

# Counted before the test's own operations: what the standard boot denied.
DENIED_AT_START = COUNT + f"""
dmesg >/run/aafs-dmesg-start.txt 2>&1
count denied_at_start /run/aafs-dmesg-start.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="DENIED"'
echo "--- denials of the standard boot"
grep 'apparmor="DENIED"' /run/aafs-dmesg-start.txt
"""


@pytest.fixture(scope="module", params=vm.SUITES)
def hardened(request, built_deb, tmp_path_factory) -> vm.Machine:
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    suite = request.param
    machine = vm.Machine.create(suite, tmp_path_factory.mktemp(f"hardened-{suite}") / "machine")
    machine.chroot_run(["apt-get", "update"])
    machine._apt_updated = True
    machine.chroot_run(["apt-get", "install", "-y", "--no-install-recommends", *EXTRA_PACKAGES])
    # The image's own kernel package, for the admin to reinstall from a local .deb.
    kernel_package = machine.chroot_run(
        ["dpkg-query", "-S", machine.kernel_paths()[0]]).stdout.split(":", 1)[0]
    machine.chroot_run(["sh", "-c", 'apt-get install --reinstall --download-only -y "$1"'
                        ' && mv /var/cache/apt/archives/"$1"_*.deb ' + KERNEL_DEB + " && apt-get clean",
                        "sh", kernel_package])
    machine.install_debs([built_deb])
    uu_repository(machine, tmp_path_factory.mktemp(f"uu-{suite}"))
    root = machine.root
    count_every_denial(root)
    probe_is_admin(root)
    add_profiled_services(root, {OWN: False, NNP: True})
    (root / f"etc/systemd/system/{PLAIN}.service").write_text(unit("/usr/bin/sleep"))
    (root / "etc/systemd/system/aafs-op@.service").write_text(OP_UNIT)
    (root / f"etc/systemd/system/{LOAD_PROFILE}.service").write_text(LOAD_PROFILE_UNIT)
    assert machine.add_disk("lvm", 64) == "/dev/vdc"
    ops = root / OPS_DIR.lstrip("/")
    ops.mkdir(parents=True)
    for name, command in PROTECTED.items():
        (ops / name).write_text(command + "\n")
    (ops / "batch").write_text(BATCH)
    (ops / "whoami").write_text("cat /proc/self/attr/current\n")
    (ops / "busctl").write_text("busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId\n")
    (ops / "autoload").write_text(MODPROBE_AUTOLOAD + "\n")
    (ops / "login_as_user").write_text(LOGIN_AS_USER)
    add_modprobe_probes(root)
    add_ask_pid1(root)
    machine.chroot_run(["systemctl", "enable", f"{OWN}.service", f"{NNP}.service", f"{PLAIN}.service",
                        f"{LOAD_PROFILE}.service"])
    machine.chroot_run(["sh", "-c", ("mkdir -p -m 700 /root/.ssh && ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519"
                                     " && cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys")])
    machine.chroot_run(["sh", "-c", f"useradd -m -s /bin/bash {USER} && install -d -o {USER} -g {USER} -m 700"
                        f" /home/{USER}/.ssh && install -o {USER} -g {USER} -m 600 /root/.ssh/id_ed25519.pub"
                        f" /home/{USER}/.ssh/authorized_keys"])
    for command in (["stage", "full"], ["mode", "enforce"], ["early", "all"], ["level", "hardened"]):
        done = machine.chroot_run(["aa-fullsystem", *command])
        print(f"--- {suite}: aa-fullsystem {shlex.join(command)}\n{done.stdout}")
    # The compiled policy's directory, as the hook makes it on a running
    # kernel (in the chroot it had no kernel to compile for): the target of
    # write_policy_cache.
    machine.chroot_run(["sh", "-c", "mkdir -p /var/cache/apparmor-fullsystem/compiled"
                                    " && chmod 0700 /var/cache/apparmor-fullsystem"])
    return machine


def status(op_value: str) -> str:
    """The exit status in an "@@ op.NAME.ROLE=STATUS OUTPUT" value."""
    return op_value.split(" ", 1)[0]


def uu_package(work: Path, version: str) -> Path:
    """A package whose postinst runs update-initramfs, as a kernel module's package does."""
    tree = work / f"{UU_PACKAGE}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {UU_PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: aafs tests <t@test.invalid>\n"
        "Priority: optional\nSection: admin\nDescription: test package upgraded by unattended-upgrades\n")
    (tree / "DEBIAN/postinst").write_text(
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n"
        f"    cat /proc/self/attr/current >{UU_LABEL} 2>&1 || true\n"
        "    update-initramfs -u\nfi\n")
    (tree / "DEBIAN/postinst").chmod(0o755)
    deb = work / f"{UU_PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, deb], check=True, capture_output=True)
    return deb


def uu_repository(machine: vm.Machine, work: Path) -> None:
    """Version 1.0 installed, 1.1 in a local repository unattended-upgrades may take it from; no other source."""
    vm.require_tools("dpkg-deb", "apt-ftparchive")
    old = uu_package(work, "1.0")
    (machine.root / "root" / old.name).write_bytes(old.read_bytes())
    machine.chroot_run(["dpkg", "-i", f"/root/{old.name}"])
    repo = machine.root / UU_REPO.lstrip("/")
    repo.mkdir(parents=True)
    new = uu_package(work, "1.1")
    (repo / new.name).write_bytes(new.read_bytes())
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, check=True, capture_output=True).stdout
    (repo / "Packages").write_bytes(packages)
    release = subprocess.run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Origin=aafs-test",
                              "-o", "APT::FTPArchive::Release::Label=aafs-test",
                              "-o", "APT::FTPArchive::Release::Suite=aafs-test",
                              "-o", "APT::FTPArchive::Release::Codename=aafs-test", "release", "."],
                             cwd=repo, check=True, capture_output=True).stdout
    (repo / "Release").write_bytes(release)
    apt = machine.root / "etc/apt"
    for sources in [apt / "sources.list", *apt.glob("sources.list.d/*")]:
        sources.unlink()              # the guest has no network: only the local repository
    (apt / "sources.list.d/aafs-test.list").write_text(f"deb [trusted=yes] file:{UU_REPO} ./\n")
    (apt / "apt.conf.d/51aafs-test").write_text(
        'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'
        'APT::Periodic::RandomSleep "0";\nUnattended-Upgrade::Origins-Pattern { "origin=aafs-test"; };\n')


def boot(machine: vm.Machine, script: str, append: str = "") -> vm.Boot:
    result = machine.boot(script=script, append=append, timeout=1500)
    drop_stale_root(machine)
    print(f"--- {machine.suite} boot {len(machine.boots)} ({append or 'normal'})\n{result.output}")
    assert result.reached_multi_user, where(result)
    return result


# Boots 2 and 4 run on one suite, boot 5 on the other: each shows a
# policy the boot script or the kernel treats the same on 6.1 and 6.12
# (the escape hatch; complain mode's records; the standard level, where the
# checks of boot 1 find nothing), and each guest boots for a minute or two
# under TCG. Both suites run boots 1 and 3, the hardened level enforced.
HATCH_SUITE = "bookworm"       # boot 2
COMPLAIN_SUITE = "bookworm"    # boot 4
STANDARD_SUITE = "trixie"      # boot 5
assert COMPLAIN_SUITE != STANDARD_SUITE, "boot 3 leads to boot 4 or to boot 5"

INITRD_SHA = 'sha256sum "/boot/initrd.img-$(uname -r)" | cut -d" " -f1'

STATUS = """
aa-fullsystem status
echo "@@ status_exit=$?"
echo "@@ status_json=$(aa-fullsystem --json status)"
"""

# journald stopped and its files gone: `journalctl -k -b` finds nothing and
# succeeds all the same, while the kernel's ring buffer keeps the records.
WITHOUT_JOURNAL = """
systemctl stop systemd-journald.socket systemd-journald-dev-log.socket systemd-journald-audit.socket \
    systemd-journald.service 2>/dev/null
rm -rf /run/log/journal/* /var/log/journal/*
echo "@@ journal_k_lines=$(journalctl -k -b --no-pager -o cat 2>/dev/null | grep -c 'apparmor=')"
echo "@@ status_json_no_journal=$(aa-fullsystem --json status)"
"""


REINSTALL_KERNEL = f"""
echo "@@ initrd_before=$({INITRD_SHA})"
{SSH} dpkg -i {KERNEL_DEB} >/run/kernel.log 2>&1
echo "@@ kernel_reinstall_exit=$?"
cat /run/kernel.log
echo "@@ initrd_after=$({INITRD_SHA})"
""" + recount("denied_after_reinstall")

UNATTENDED_UPGRADE = f"""
echo "@@ initrd_before_uu=$({INITRD_SHA})"
{SSH} apt-get update >/run/update.log 2>&1
echo "@@ apt_update_exit=$?"
cat /run/update.log
systemctl start apt-daily-upgrade.service
echo "@@ uu_service=$(systemctl show -p Result --value apt-daily-upgrade.service)"
echo "@@ uu_version=$(dpkg-query -W -f '${{Version}}' {UU_PACKAGE})"
echo "@@ uu_postinst_label=$(cat {UU_LABEL} 2>&1)"
echo "@@ initrd_after_uu=$({INITRD_SHA})"
echo "--- unattended-upgrades' log"
cat /var/log/unattended-upgrades/unattended-upgrades.log
"""

MODE_COMPLAIN = """
aa-fullsystem mode complain >/run/mode.log 2>&1
echo "@@ mode_complain_exit=$?"
cat /run/mode.log
"""

# Back to the standard level, in enforce mode still.
LEVEL_STANDARD = """
aa-fullsystem level standard >/run/level.log 2>&1
echo "@@ level_standard_exit=$?"
cat /run/level.log
""" + recount("denied_after_level_standard")


def test_hardened_enforced_refuses_services_and_keeps_the_admin(hardened):
    machine = hardened
    b = boot(machine, DENIED_AT_START + REPORT + LABELS + run_ops("service", PROTECTED) + run_ops("admin", PROTECTED)
             + KERNEL_HELPER + USER_SESSION + PROFILE_LOADED + ASK_PID1 + MAKE_LVM + DENIALS + STATUS + WITHOUT_JOURNAL + REINSTALL_KERNEL)
    v = b.values
    assert v["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert v["record.level"] == "hardened" and v["record.loaded_stage"] == "full", where(b)
    # Built in the chroot, where no kernel features can be read: the text
    # init policy, roles and all (the kernel's reinstall below precompiles).
    assert v["record.early"] == "fallback", where(b)
    assert v["script_shell"] == f"{ADMIN} (enforce)", where(b)
    assert not unconfined_since_init(b), where(b)
    # Before the protected operations, whose oneshot units fail on purpose.
    runs_cleanly(b)

    # The standard boot of this system, hardened and enforced, denied nothing,
    # and the count missed nothing (printk's rate limit is off).
    assert v["suppressed_dmesg"] == "0", where(b)
    assert v["denied_at_start"] == "0", where(b)

    # Who runs in which role.
    assert v["service_session"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert v[f"{PLAIN}.label"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert v["cron.label"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert v["ssh.label"] == f"{ADMIN} (enforce)", where(b)
    # Root's login: the admin role's hat for root (pam_apparmor), which its
    # programs keep.
    assert v["ssh_session"] == f"{ADMIN}//root (enforce)", where(b)
    # A login is the administrator's only if root logs in: anyone else's
    # session has a service's rights, and the chain a service plays with an
    # ordinary user's login ends there, uid 0 and all.
    assert v["user_session"] == f"{ADMIN}//DEFAULT (enforce)", where(b)
    chain = v["login_as_user"]
    assert status(chain) != "0" and f"{ADMIN}//DEFAULT (enforce) 0 " in chain, where(b)
    # The system bus and logind run as services, and a service's call on the
    # bus is answered.
    for name in ("dbus", "systemd-logind"):
        assert v[f"{name}.active"] == "active", where(b)
        assert v[f"{name}.label"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert status(v["busctl_service"]) == "0", where(b)
    # The kernel's own modprobe, started by a service's socket(2), runs in
    # the kernel's role, and status names what it left running.
    # ... unless the site has a profile for it, which then attaches.
    assert_modprobe_labels(b)
    # A service that loads a profile of its own did; the administrator made
    # a volume group on the second disk for the next boots.
    assert v["load_profile"] == "success", where(b)
    # What the threat model admits: a root service gets PID 1 to run
    # apparmor_parser, in the system role, for a profile of its choosing.
    assert_pid1_asked(b)
    assert v["lvm_created"] == "0", where(b)
    for name in (OWN, NNP):
        # Its own profile (complain), stacked on init's and the service role.
        assert v[f"{name}.active"] == "active", where(b)
        assert v[f"{name}.label"] == f"{name}//&{PROFILE}//&{SERVICE} (mixed)", where(b)

    # Each protected operation: refused to the service, in the kernel's
    # record naming its target, and done by the admin.
    not_refused = [name for name in PROTECTED if not refused_to_service(b, name)]
    assert not not_refused, f"not refused to a service: {not_refused}\n{where(b)}"
    done = [name for name in PROTECTED if status(v[f"op.{name}.admin"]) == "0"]
    assert done == list(PROTECTED), f"refused to the admin: {set(PROTECTED) - set(done)}\n{where(b)}"
    # ... and everything refused was refused to a service, or to the session
    # of the ordinary user: the admin's runs of the same refused nothing.
    assert all(f'profile="{SERVICE}"' in record or f'profile="{ADMIN}//DEFAULT"' in record
               for record in denied_records(b)), where(b)
    # ... and in status.
    assert int(v["denied_dmesg"]) >= len(PROTECTED), where(b)
    report = json.loads(v["status_json"])
    assert report["configured_level"] == "hardened", report
    assert report["denied_count"] == int(v["denied_dmesg"]), report
    targets = {(d["profile"], d["program"], d["target"]) for d in report["denied"]}
    assert (SERVICE, "touch", "/boot/aafs-probe") in targets, report
    assert (SERVICE, ODD_PROGRAM, ODD_FILE) in targets, report     # decoded from the kernel's hex
    assert (SERVICE, "dd", "/dev/mem") in targets, report
    assert (SERVICE, "modprobe", "sys_module") in targets, report
    assert f"Px -> {PROFILE}-system," in report["next_step"], report
    assert f"Refused this boot: {v['denied_dmesg']} " in b.output, where(b)
    assert report["kernel_log_source"] == "journal", report
    assert report["kernel_helpers"].endswith(" sleep"), report
    assert report["logins"] == "by-user", report
    assert "Logins:       the administrator's role for root only (pam_apparmor)" in b.output, where(b)
    assert f"Kernel's helpers ({PROFILE}-kernel): " in b.output, where(b)

    # Without the journal's copy, status reads the kernel's ring buffer and
    # says so: never fewer refusals than the kernel logged.
    assert v["journal_k_lines"] == "0", where(b)
    no_journal = json.loads(v["status_json_no_journal"])
    assert no_journal["kernel_log_source"] == "dmesg", no_journal
    assert no_journal["denied_count"] >= report["denied_count"], no_journal
    assert "Kernel log: the journal holds 0 of this boot's AppArmor records" in no_journal["verdict"], no_journal

    # The administrator reinstalls the kernel over ssh: its postinst rebuilds
    # the initramfs (in the admin's role, so the hook may write /boot).
    assert v["kernel_reinstall_exit"] == "0", where(b)
    assert v["initrd_after"] != v["initrd_before"], where(b)
    assert v["denied_after_reinstall"] == v["denied_dmesg"], where(b)      # and refused nothing

    # Boot 2: the escape hatch, on the hardened level (on one suite: the
    # hatch is the boot script's; test_boot and test_dracut boot it on trixie).
    if machine.suite == HATCH_SUITE:
        b = boot(machine, REPORT + run_ops("service", ["load_module"]) + DENIALS, append="aa_fullsystem=off")
        assert b.values["pid1"] == "unconfined", where(b)
        assert b.values["record.outcome"] == "skipped", where(b)
        assert status(b.values["op.load_module.service"]) == "0", where(b)
        assert not refused_to_service(b, "load_module"), where(b)   # the check, where the policy is off

    # Boot 3: the initramfs the kernel's reinstall built, hardened, enforced;
    # then unattended-upgrades, started by PID 1, upgrades a package whose
    # postinst runs update-initramfs; then complain mode, or the standard
    # level. Denials counted after the upgrade: package management refused nothing.
    b = boot(machine, DENIED_AT_START + REPORT + LVM_AT_BOOT + LVM_BY_THE_RUNNING_SYSTEM + PROFILE_LOADED
             + UNATTENDED_UPGRADE + DENIALS
             + (MODE_COMPLAIN if machine.suite == COMPLAIN_SUITE else LEVEL_STANDARD))
    v = b.values
    assert v["initrd_before_uu"] == machine.boots[0].values["initrd_after"], where(b)
    assert v["pid1"] == f"{PROFILE} (enforce)" and v["record.level"] == "hardened", where(b)
    runs_cleanly(b)
    # The whole policy, the roles with it, precompiled and loaded before PID 1.
    assert v["record.early"] == "cache", where(b)
    # The logical volume is active, lvm2's monitor ran, the service loaded
    # its profile, and the standard boot refused nothing.
    assert v["lvm_active"] == "active", where(b)
    assert v["lvm_monitor"] == "success", where(b)
    # Deactivated, then activated again by lvm-activate-aafs.service, which
    # PID 1 ran at udev's request (refused nothing: DENIALS below).
    assert v["lvm_off_exit"] == "0" and v["lvm_after_off"] == "", where(b)
    assert v["lvm_trigger_exit"] == "0", where(b)
    assert v["lvm_reactivated"] == "active", where(b)
    assert v["lvm_activations_by_unit"] == "1", where(b)
    assert v["load_profile"] == "success", where(b)
    assert v["denied_at_start"] == "0", where(b)
    assert v["apt_update_exit"] == "0", where(b)
    assert v["uu_service"] == "success", where(b)
    assert v["uu_version"] == "1.1", where(b)
    assert v["uu_postinst_label"] == f"{PKG} (enforce)", where(b)
    assert v["initrd_after_uu"] != v["initrd_before_uu"], where(b)
    assert v["denied_dmesg"] == "0", where(b)
    if machine.suite == COMPLAIN_SUITE:
        assert v["mode_complain_exit"] == "0", where(b)
        hardened_in_complain_mode(machine)
    else:
        assert v["level_standard_exit"] == "0", where(b)
        assert v["denied_after_level_standard"] == "0", where(b)
    if machine.suite == STANDARD_SUITE:
        standard_level(machine)


def hardened_in_complain_mode(machine: vm.Machine) -> None:
    """Boot 4: the hardened level in complain mode: each protected operation
    runs for the service, and the kernel logs what enforce mode refuses
    (AUDIT, or ALLOWED where the role has no rule) naming its target, but
    for UNLOGGED_IN_COMPLAIN; nothing is refused; status counts what the
    kernel logged."""
    # A larger audit backlog: the complain boot's early records overflowed
    # the default 64 before journald read them (audit_lost=3 at 10 s, trixie).
    b = boot(machine, REPORT + LABELS + run_ops("service", PROTECTED) + DENIALS + STATUS,
             append="audit_backlog_limit=8192")
    v = b.values
    assert v["pid1"] == f"{PROFILE} (complain)", where(b)
    assert (v["record.level"], v["record.mode"]) == ("hardened", "complain"), where(b)
    assert v[f"{PLAIN}.label"] == f"{PROFILE}//&{SERVICE} (complain)", where(b)
    runs_cleanly(b)
    assert v["suppressed_dmesg"] == "0", where(b)
    assert v["denied_dmesg"] == "0", where(b)
    not_audited = [name for name in PROTECTED
                   if REFUSED_TARGET[name] and name not in UNLOGGED_IN_COMPLAIN and not audited_for_service(b, name)]
    assert not not_audited, f"not run, or run without its AUDIT record: {not_audited}\n{where(b)}"
    # What complain mode lets through without a word (README, threat model).
    assert all(status(v[f"op.{name}.service"]) == "0" and not audited_for_service(b, name)
               for name in UNLOGGED_IN_COMPLAIN), where(b)
    # CAP_SYS_ADMIN: no rule in complain mode, so nothing to log either.
    assert all(status(v[f"op.{name}.service"]) == "0" for name in QUIET_REFUSAL), where(b)
    # (at least: the kernel's audit thread may print a record after the
    # snapshot DENIALS took, and status reads the log later)
    report = json.loads(v["status_json"])
    assert report["would_deny_count"] >= len(of_service(audit_records(b))) > 0, report
    assert "Refused in enforce mode: " in b.output, where(b)


def standard_level(machine: vm.Machine) -> None:
    """Boot 5: the standard level: services with init's rights again."""
    b = boot(machine, REPORT + LABELS + run_ops("service", PROTECTED) + DENIALS)
    v = b.values
    assert v["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert v["record.level"] == "standard", where(b)
    assert v[f"{PLAIN}.label"] == f"{PROFILE} (enforce)", where(b)
    runs_cleanly(b)
    assert v["ssh.label"] == f"{PROFILE} (enforce)", where(b)
    assert v[f"{NNP}.label"] == f"{NNP}//&{PROFILE} (mixed)", where(b)
    assert v["denied_dmesg"] == "0", where(b)
    assert v["audit_dmesg"] == "0", where(b)
    # Each operation a service was refused at the hardened level: done, and
    # the check that found it refused says "not refused" under the policy
    # without those rules.
    failed = [name for name in PROTECTED if status(v[f"op.{name}.service"]) != "0"]
    assert not failed, f"failed for a service at the standard level: {failed}\n{where(b)}"
    still_refused = [name for name in PROTECTED if refused_to_service(b, name)]
    assert not still_refused, where(b)
