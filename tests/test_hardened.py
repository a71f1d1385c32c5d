"""The hardened level, enforced: what a root service can no longer do, and who still can.

One guest per suite, on a system that adds openssh-server, cron and
unattended-upgrades to the base. The package is installed with apt and the
admin's own commands (`aa-fullsystem stage full`, `mode enforce`, `level
hardened`) are run in the chroot before the first boot, where the
initramfs is built at the host's speed (the in-guest path of those commands
is test_lifecycle's).

  boot 1  hardened, enforce: PID 1 and the roles from the initramfs; not one
          apparmor="DENIED" line from the standard boot; each protected
          operation, run by a root service that PID 1 starts and that has no
          profile of its own (a oneshot unit), is refused, and run by root
          logged in over ssh, succeeds; a NoNewPrivileges= service with a
          profile of its own runs under it; sshd's sessions are the admin's,
          cron's jobs a service's.
          Then, as the admin: `aa-fullsystem level standard`.
  boot 2  aa_fullsystem=off on the kernel command line: PID 1 unconfined, and
          a protected operation by a service succeeds: the escape hatch
          still works.
  boot 3  the standard level: services run with init's rights again.

The boot script is the harness's probe (tests/vm.py), itself a service: a
line in local/fullsystem-init puts it in the admin's role, as the console
would be (the site additions the README documents), so that it can read
its script from the raw disk /dev/vdb and turn the console's log level down.
"""

from __future__ import annotations

import shlex

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (DENIALS, FAST_INITRAMFS, NO_PRINTK_RATELIMIT, PROFILE, REPORT, drop_stale_root, processes,
                        where)
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (DENIALS, FAST_INITRAMFS, NO_PRINTK_RATELIMIT, PROFILE, REPORT, drop_stale_root, processes,
                       where)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SERVICE = f"{PROFILE}-service"
ADMIN = f"{PROFILE}-admin"
EXTRA_PACKAGES = ("openssh-server", "openssh-client", "cron", "unattended-upgrades")
OPS_DIR = "/usr/local/lib/aafs-ops"

# One protected operation each (README, THREAT MODEL): a shell command that
# succeeds for root with every right, and that leaves nothing behind.
PROTECTED = {
    "write_boot": "touch /boot/aafs-probe && rm /boot/aafs-probe",
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
}
# /dev/kmem is gone from Linux since 5.13 (no kernel of ours has it).

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


def own_profile(name: str) -> str:
    return f"""abi <abi/3.0>,
include <tunables/global>
profile {name} /usr/local/bin/{name} flags=(complain) {{
  /** rmix,
}}
"""


def unit(program: str, nnp: bool = False) -> str:
    return (f"[Unit]\nDescription=aafs test service\n\n[Service]\n{'NoNewPrivileges=yes' + chr(10) if nnp else ''}"
            f"ExecStart={program} infinity\n\n[Install]\nWantedBy=multi-user.target\n")


SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o LogLevel=ERROR root@localhost"


def run_ops(role: str, names) -> str:
    """Shell: each operation as a service (oneshot) or as root over ssh; "@@ op.NAME.ROLE=STATUS OUTPUT"."""
    script = ""
    for name in names:
        if role == "service":
            script += (f"systemctl start aafs-op@{name}.service\n"
                       f"echo \"@@ op.{name}.service=$(systemctl show -p ExecMainStatus --value aafs-op@{name}.service)"
                       f" $(head -c 300 /run/aafs-op-{name}.out | tr '\\n' ' ')\"\n")
        else:
            script += (f"{SSH} sh {OPS_DIR}/{name} >/run/aafs-ssh.out 2>&1\n"
                       f"echo \"@@ op.{name}.admin=$? $(head -c 300 /run/aafs-ssh.out | tr '\\n' ' ')\"\n")
    return script


LABELS = "".join(rf"""
pid=$(systemctl show -p MainPID --value {unit}.service)
echo "@@ {unit}.label=$(cat /proc/$pid/attr/current 2>&1)"
echo "@@ {unit}.active=$(systemctl is-active {unit}.service)"
""" for unit in (OWN, NNP, PLAIN, "ssh", "cron")) + f"""
echo "@@ ssh_session=$({SSH} cat /proc/self/attr/current 2>&1)"
systemctl start aafs-op@whoami.service
echo "@@ service_session=$(cat /run/aafs-op-whoami.out)"
"""

# Counted before the test's own operations: what the standard boot denied.
DENIED_AT_START = r"""
echo "@@ denied_at_start=$(dmesg | grep -c 'apparmor="DENIED"')"
echo "--- denials of the standard boot"
dmesg | grep 'apparmor="DENIED"'
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
    machine.install_debs([built_deb])
    root = machine.root
    (root / "etc/sysctl.d/10-aafs-test-no-printk-ratelimit.conf").write_text(NO_PRINTK_RATELIMIT)
    (root / "etc/apparmor.d/local" / PROFILE).write_text(
        "# The test harness's probe is the console's administrator (tests/test_hardened.py).\n"
        f"/usr/local/sbin/vm-probe Px -> {ADMIN},\n")
    for name, nnp in ((OWN, False), (NNP, True)):
        (root / f"usr/local/bin/{name}").write_bytes((root / "usr/bin/sleep").read_bytes())
        (root / f"usr/local/bin/{name}").chmod(0o755)
        (root / f"etc/apparmor.d/{name}").write_text(own_profile(name))
        (root / f"etc/systemd/system/{name}.service").write_text(unit(f"/usr/local/bin/{name}", nnp))
    (root / f"etc/systemd/system/{PLAIN}.service").write_text(unit("/usr/bin/sleep"))
    (root / "etc/systemd/system/aafs-op@.service").write_text(OP_UNIT)
    ops = root / OPS_DIR.lstrip("/")
    ops.mkdir(parents=True)
    for name, command in PROTECTED.items():
        (ops / name).write_text(command + "\n")
    (ops / "whoami").write_text("cat /proc/self/attr/current\n")
    machine.chroot_run(["systemctl", "enable", f"{OWN}.service", f"{NNP}.service", f"{PLAIN}.service"])
    machine.chroot_run(["sh", "-c", "mkdir -p -m 700 /root/.ssh && ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519"
                        " && cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys"])
    for command in (["stage", "full"], ["mode", "enforce"], ["level", "hardened"]):
        done = machine.chroot_run(["aa-fullsystem", *command])
        print(f"--- {suite}: aa-fullsystem {shlex.join(command)}\n{done.stdout}")
    return machine


def status(op_value: str) -> str:
    """The exit status in an "@@ op.NAME.ROLE=STATUS OUTPUT" value."""
    return op_value.split(" ", 1)[0]


def boot(machine: vm.Machine, script: str, append: str = "") -> vm.Boot:
    result = machine.boot(script=script, append=append, timeout=900)
    drop_stale_root(machine)
    print(f"--- {machine.suite} boot {len(machine.boots)} ({append or 'normal'})\n{result.output}")
    assert result.reached_multi_user, where(result)
    return result


def test_hardened_enforced_refuses_services_and_keeps_the_admin(hardened):
    machine = hardened
    b = boot(machine, DENIED_AT_START + REPORT + LABELS + run_ops("service", PROTECTED) + run_ops("admin", PROTECTED)
             + DENIALS + FAST_INITRAMFS + "aa-fullsystem level standard >/run/level.log 2>&1\n"
             + 'echo "@@ level_standard_exit=$?"\ncat /run/level.log\n')
    v = b.values
    assert v["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert v["record.level"] == "hardened" and v["record.loaded_stage"] == "full", where(b)
    assert v["script_shell"] == f"{ADMIN} (enforce)", where(b)
    assert not [p for p in processes(b) if p[2] == "unconfined"], where(b)

    # The standard boot of this system, hardened and enforced, denied nothing,
    # and the count missed nothing (printk's rate limit is off).
    assert v["suppressed_dmesg"] == "0", where(b)
    assert v["denied_at_start"] == "0", where(b)

    # Who runs in which role.
    assert v["service_session"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert v[f"{PLAIN}.label"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert v["cron.label"] == f"{PROFILE}//&{SERVICE} (enforce)", where(b)
    assert v["ssh.label"] == f"{ADMIN} (enforce)", where(b)
    assert v["ssh_session"] == f"{ADMIN} (enforce)", where(b)
    for name in (OWN, NNP):
        # Its own profile (complain), stacked on init's and the service role.
        assert v[f"{name}.active"] == "active", where(b)
        assert v[f"{name}.label"] == f"{name}//&{PROFILE}//&{SERVICE} (mixed)", where(b)

    # Each protected operation: refused to the service, done by the admin.
    refused = [name for name in PROTECTED if status(v[f"op.{name}.service"]) != "0"]
    done = [name for name in PROTECTED if status(v[f"op.{name}.admin"]) == "0"]
    assert refused == list(PROTECTED), f"not refused to a service: {set(PROTECTED) - set(refused)}\n{where(b)}"
    assert done == list(PROTECTED), f"refused to the admin: {set(PROTECTED) - set(done)}\n{where(b)}"
    # ... each refusal by the service role, in the kernel log.
    assert int(v["denied_dmesg"]) >= len(PROTECTED), where(b)
    assert f'profile="{SERVICE}"' in b.output, where(b)

    assert v["level_standard_exit"] == "0", where(b)

    # Boot 2: the escape hatch, with the initramfs still of the hardened level
    # (level standard rebuilt it: this checks the hatch on the state at hand).
    b = boot(machine, REPORT + run_ops("service", ["load_module"]), append="aa_fullsystem=off")
    assert b.values["pid1"] == "unconfined", where(b)
    assert b.values["record.outcome"] == "skipped", where(b)
    assert status(b.values["op.load_module.service"]) == "0", where(b)

    # Boot 3: the standard level: services with init's rights again.
    b = boot(machine, REPORT + LABELS + run_ops("service", ["write_boot", "load_module"]) + DENIALS)
    v = b.values
    assert v["pid1"] == f"{PROFILE} (enforce)", where(b)
    assert v["record.level"] == "standard", where(b)
    assert v[f"{PLAIN}.label"] == f"{PROFILE} (enforce)", where(b)
    assert v["ssh.label"] == f"{PROFILE} (enforce)", where(b)
    assert v[f"{NNP}.label"] == f"{NNP}//&{PROFILE} (mixed)", where(b)
    assert status(v["op.write_boot.service"]) == "0", where(b)
    assert status(v["op.load_module.service"]) == "0", where(b)
    assert v["denied_dmesg"] == "0", where(b)
