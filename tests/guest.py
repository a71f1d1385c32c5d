"""What the VM tests share: where the package puts things, and what a boot reports.

The shell snippets run in the guest as (part of) a boot script (tests/vm.py
Machine.boot); lines "@@ key=value" become Boot.values.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import NamedTuple

try:                    # tests/ imported as a package
    from . import vm
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm

PROFILE = "fullsystem-init"                      # Config() defaults
FULL_PROFILE = f"/etc/apparmor.d/{PROFILE}"
STATE = "/etc/apparmor-fullsystem/state"
RECORD = "/run/apparmor-fullsystem/boot"
INITRAMFS_DIR = "usr/lib/apparmor-fullsystem"    # our files inside the initramfs
LAST_GOOD = "/var/lib/apparmor-fullsystem/last-good"

# This boot's initramfs, unpacked, ready for its boot script to run in it
# as /init runs it ("chroot $initramfs /scripts/init-bottom/..."): its
# shell, its parser, its files, with the kernel's /proc, /sys and /dev and
# an empty /run, in which the script makes its record as at boot.
# LEAVE_INITRAMFS undoes the mounts.
ENTER_INITRAMFS = rf"""
unpacked=$(mktemp -d)
unmkinitramfs /boot/initrd.img-$(uname -r) "$unpacked"
initramfs=$(find "$unpacked" -type d -path '*/{INITRAMFS_DIR}' | head -n 1)
initramfs=${{initramfs%/{INITRAMFS_DIR}}}
mkdir -p "$initramfs/proc" "$initramfs/sys" "$initramfs/dev" "$initramfs/run"
mount -t proc proc "$initramfs/proc"
# Slaves: mounts under a shared /sys (systemd makes / shared) would pass
# LEAVE_INITRAMFS's unmounts back to the system's own securityfs.
mount --rbind --make-rslave /sys "$initramfs/sys"
mount --bind --make-slave /dev "$initramfs/dev"
mount -t tmpfs tmpfs "$initramfs/run"
"""
LEAVE_INITRAMFS = r"""
umount -R "$initramfs/proc" "$initramfs/sys" "$initramfs/dev" "$initramfs/run"
"""

# What every boot reports.  Lines "@@ key=value" become Boot.values; the
# process table is printed as "proc|PID|PPID|COMM|START|LABEL" (labels contain
# spaces), START being proc(5)'s starttime in clock ticks since boot: the
# 20th field after the command's ")" in /proc/PID/stat.
def report(record: str = RECORD) -> str:
    """REPORT, for a package (a site variant) whose boot record is record."""
    return rf"""
echo "@@ pid1=$(cat /proc/1/attr/current 2>&1)"
echo "@@ clk_tck=$(getconf CLK_TCK)"
echo "@@ aa_enabled=$(cat /sys/module/apparmor/parameters/enabled 2>&1)"
echo "@@ script_shell=$(cat /proc/$$/attr/current 2>&1)"
if [ -e {record} ]; then
    echo "--- {record}"
    cat {record}
    sed 's/^/@@ record./' {record}
else
    echo "@@ record=absent"
fi
echo "--- processes (kernel threads, whose exe cannot be read, left out)"
# The shell's own read and field splitting, no cut or cat: a fork costs
# milliseconds under TCG, and this runs at every boot.
for p in /proc/[0-9]*; do
    readlink "$p/exe" >/dev/null 2>&1 || continue
    label=
    {{ read -r label <"$p/attr/current"; }} 2>/dev/null
    [ -n "$label" ] || label="(unreadable)"
    # stat read once: a process that exits meanwhile is left out whole,
    # never listed without its parent.
    # (its lines joined: a task's name may hold newlines, and ") ", so the
    # fields start after the last ") "; proc_pid_stat(5): state, ppid, ...,
    # starttime the 20th from there)
    stat=
    {{ while IFS= read -r line; do stat=$stat$line; done <"$p/stat"; }} 2>/dev/null
    stat=${{stat##*) }}
    [ -n "$stat" ] || continue
    set -f
    # shellcheck disable=SC2086
    set -- $stat
    set +f
    ppid=$2 start=${{20}}
    # comm's first line: a task may name itself with a newline.
    comm=
    {{ read -r comm <"$p/comm"; }} 2>/dev/null
    echo "proc|${{p#/proc/}}|$ppid|$comm|$start|$label"
done
echo "--- kernel log: init"
dmesg | grep -e 'Run /init as init process' -e 'systemd\[1\]: systemd .* running in system mode' \
    -e 'systemd\[1\]: Running in initrd'
echo "--- end of kernel log: init"
echo "--- aa-fullsystem status"
aa-fullsystem status
echo "@@ status_exit=$?"
echo "--- failed units"
# Under sysvinit there is no systemctl: "unread", never a count of zero.
if failed=$(systemctl --failed --no-legend --plain --no-pager 2>&1); then
    printf '%s\n' "$failed"
    echo "@@ failed_units=$(printf '%s' "$failed" | grep -c .)"
else
    echo "@@ failed_units=unread"
fi
echo "@@ apparmor_service=$(systemctl is-active apparmor.service)"
"""


REPORT = report()

# count KEY FILE PROOF GREP-ARGS...: "@@ KEY=N", N the lines of FILE that
# grep GREP-ARGS matches; "@@ KEY=unread" when FILE lacks PROOF, a line
# every complete read of its source holds (the kernel's first line, a file
# every initramfs has), so that a source that failed, or was cut, never
# passes for a count of zero.
COUNT = r"""
count() {
    key=$1 file=$2 proof=$3
    shift 3
    if grep -q -e "$proof" "$file" 2>/dev/null; then
        echo "@@ $key=$(grep -c "$@" "$file")"
    else
        echo "@@ $key=unread"
    fi
}
"""
# The kernel's first line: a dmesg that holds it was read whole and has
# not wrapped.
KERNEL_FIRST_LINE = "Linux version "
# In every initramfs, whichever generator built it: the kernel modules' tree.
INITRAMFS_PROOF = "lib/modules/"

# Denials, counted where an admin would look.  The journal (and with it
# `journalctl -k`) exists in every base image, but say so if not.
DENIALS = COUNT + rf"""
dmesg >/run/aafs-dmesg.txt 2>&1
echo "--- AppArmor messages in dmesg"
grep -e 'apparmor="DENIED"' -e 'apparmor="ALLOWED"' -e 'apparmor="AUDIT"' \
    -e 'callbacks suppressed' -e 'printk limit exceeded' -e 'audit_lost' /run/aafs-dmesg.txt
count denied_dmesg /run/aafs-dmesg.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="DENIED"'
count allowed_dmesg /run/aafs-dmesg.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="ALLOWED"'
count audit_dmesg /run/aafs-dmesg.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="AUDIT"'
# Audit records printed by the kernel are rate-limited (printk_ratelimit):
# a count of zero only means something if none was dropped.
count suppressed_dmesg /run/aafs-dmesg.txt '{KERNEL_FIRST_LINE}' \
    -e 'callbacks suppressed' -e 'printk limit exceeded' -e 'audit_lost='
if command -v journalctl >/dev/null; then
    journalctl -k -b --no-pager >/run/aafs-journal-k.txt 2>&1
    journalctl -b --no-pager >/run/aafs-journal.txt 2>&1
    count denied_journal_k /run/aafs-journal-k.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="DENIED"'
    count denied_journal /run/aafs-journal.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="DENIED"'
else
    echo "@@ denied_journal_k=unavailable"
fi
"""


def recount(key: str) -> str:
    """Script: the DENIED lines in the kernel log now, as @@ KEY (after
    DENIALS, which defines count): work done after DENIALS is checked too."""
    return f"""
dmesg >/run/aafs-dmesg-{key}.txt 2>&1
count {key} /run/aafs-dmesg-{key}.txt '{KERNEL_FIRST_LINE}' -e 'apparmor="DENIED"'
"""


def count_every_denial(root: Path) -> None:
    """Turn off the kernel's printk rate limit from early boot (sysctl.d,
    read by systemd-sysctl or procps' init script), so that no audit record
    is dropped from dmesg while we count denials."""
    (root / "etc/sysctl.d/10-aafs-test-no-printk-ratelimit.conf").write_text("kernel.printk_ratelimit = 0\n")


def probe_is_admin(root: Path) -> None:
    """Put the harness's probe (tests/vm.py), itself a service, in the
    admin's role, as the console would be (a site addition the README
    documents): at the hardened level a service may neither read its script
    from the raw disk nor turn the console's log level down."""
    (root / "etc/apparmor.d/local" / PROFILE).write_text(
        "# The test harness's probe is the console's administrator (tests/guest.py).\n"
        f"/usr/local/sbin/vm-probe Px -> {PROFILE}-admin,\n")


# The kernel's own modprobe (module autoloading: the kernel execs it from a
# kernel thread, unconfined, so only an attachment gives it a label): a
# socket of a family no module provides (DECnet, gone since Linux 6.1) makes
# the kernel run modprobe net-pf-12 every time, and an install command for
# it, put in /run/modprobe.d by the administrator, records the label. Once
# with the package's kernel role alone, once with a site's profile for kmod
# loaded, which must win (render.loses_ties): an equal match would attach
# neither, and the helper would run unconfined.
MODPROBE_AUTOLOAD = "perl -e 'socket(S, 12, 2, 0)'"
MODPROBE_DIR = "/usr/local/lib/aafs-modprobe"
SITE_KMOD = "site-kmod"
SITE_KMOD_PROFILE = f"""profile {SITE_KMOD} /usr/bin/kmod {{
  capability,
  network,
  signal,
  /{{,**}} rwlkm,
  /** ix,
}}
"""


def add_modprobe_probes(root: Path) -> None:
    """The files modprobe_labels() uses: modprobe configurations that record
    the label (the first also leaves a process behind, for status) and the
    site's profile for kmod."""
    probes = root / MODPROBE_DIR.lstrip("/")
    probes.mkdir(parents=True, exist_ok=True)
    (probes / "kernel.conf").write_text(
        "install net-pf-12 /bin/sh -c 'cat /proc/self/attr/current >/run/aafs-modprobe-label;"
        " sleep 120 </dev/null >/dev/null 2>&1 &'\n")
    (probes / "site.conf").write_text(
        "install net-pf-12 /bin/sh -c 'cat /proc/self/attr/current >/run/aafs-modprobe-site-label'\n")
    (probes / SITE_KMOD).write_text(SITE_KMOD_PROFILE)


def modprobe_labels(autoload: str = MODPROBE_AUTOLOAD, as_admin: str = "sh -c") -> str:
    """Script: @@ modprobe_label (the kernel role's) and @@
    modprobe_site_label (with the site's kmod profile loaded), each from an
    autoload the command AUTOLOAD causes; the administrator's steps run
    through AS_ADMIN (the probe is the admin where probe_is_admin applies)."""
    return f"""
{as_admin} 'mkdir -p /run/modprobe.d && cp {MODPROBE_DIR}/kernel.conf /run/modprobe.d/aafs-label.conf'
{autoload}
echo "@@ modprobe_label=$(cat /run/aafs-modprobe-label 2>&1)"
{as_admin} 'cp {MODPROBE_DIR}/site.conf /run/modprobe.d/aafs-label.conf &&
    apparmor_parser --replace {MODPROBE_DIR}/{SITE_KMOD}'
{autoload}
echo "@@ modprobe_site_label=$(cat /run/aafs-modprobe-site-label 2>&1)"
{as_admin} 'apparmor_parser --remove {MODPROBE_DIR}/{SITE_KMOD}; rm /run/modprobe.d/aafs-label.conf'
"""


def assert_modprobe_labels(boot: vm.Boot, mode: str = "enforce") -> None:
    """The kernel's modprobe ran in the kernel role, and in the site's
    profile for kmod while that was loaded (enforced, as written)."""
    assert boot.values["modprobe_label"] == f"{PROFILE}-kernel ({mode})", where(boot)
    assert boot.values["modprobe_site_label"] == f"{SITE_KMOD} (enforce)", where(boot)


# `apt-get purge` of the package, from inside the guest.
PURGE = """
apt-get purge -y apparmor-fullsystem >/run/purge.log 2>&1
echo "@@ purge_exit=$?"
cat /run/purge.log
"""


def in_initramfs(lister: str = "lsinitramfs") -> str:
    """"@@ in_initramfs=N": how many files of ours this kernel's initramfs
    holds, as LISTER (lsinitramfs or lsinitrd) lists them; "unread" when the
    listing lacks the module tree every initramfs has. Leaves the listing
    in /run/aafs-listing.txt."""
    return COUNT + f"""
{lister} /boot/initrd.img-$(uname -r) >/run/aafs-listing.txt 2>&1
count in_initramfs /run/aafs-listing.txt '{INITRAMFS_PROOF}' -e apparmor-fullsystem -e {PROFILE}
"""


def leftovers(lister: str) -> str:
    """After a purge: files of ours on the root file system, in this kernel's
    initramfs (in_initramfs), and profiles of ours loaded."""
    return in_initramfs(lister) + f"""
# find's exit status is the proof the whole tree was read: "unread" otherwise.
if left=$(find / -xdev \\( -name '*apparmor-fullsystem*' -o -name '{PROFILE}*' \\) -print 2>&1); then
    echo "@@ files_left=$(printf '%s' "$left" | tr '\\n' ' ')"
else
    echo "@@ files_left=unread: $(printf '%s' "$left" | tr '\\n' ' ')"
fi
echo "@@ loaded=$(grep -c '^{PROFILE}' /sys/kernel/security/apparmor/profiles)"
"""


class Process(NamedTuple):
    pid: str
    comm: str
    label: str
    start_ticks: int
    ppid: str


def processes(boot: vm.Boot) -> list[Process]:
    """Every userspace process the report listed."""
    rows = []
    for line in boot.output.splitlines():
        if line.startswith("proc|"):
            _, pid, ppid, comm, start, label = line.split("|", 5)
            rows.append(Process(pid, comm, label, int(start or -1), ppid))
    return rows


# How `aa-fullsystem status` marks an unconfined process that started
# before the boot script finished.
FROM_INITRAMFS = " (from the initramfs)"


def from_initramfs(boot: vm.Boot, process: Process) -> bool:
    """Whether PROCESS started before the boot script finished (the record's
    finished_at_cs) and loaded policy, that is in the initramfs, before init
    was executed, or was forked by such a process since, at any depth (a
    leftover udevd's workers); not PID 1, which executes init after the
    script."""
    if process.pid == "1" or boot.values.get("record.loaded_stage") not in ("stub", "full"):
        return False
    hz = int(boot.values["clk_tck"])
    if 0 <= process.start_ticks * 100 // hz < int(boot.values["record.finished_at_cs"]):
        return True
    parent = {p.pid: p for p in processes(boot)}.get(process.ppid)
    return parent is not None and parent.label == "unconfined" and from_initramfs(boot, parent)


def kernel_init_window(boot: vm.Boot) -> tuple[int, int | None]:
    """From the kernel log's own clock, in 1/100 s since boot: when the
    initramfs's /init ran, and when init said its first word (systemd's
    start, not that of a systemd the initramfs ran, which says "Running in
    initrd." next); None for an init that says nothing in the kernel log
    (sysvinit)."""
    section = boot.output.split("--- kernel log: init\n", 1)[1].split("--- end of kernel log: init\n", 1)[0]
    run_init, init_first = None, None
    for line in section.splitlines():
        m = re.search(r"\[\s*(\d+)\.(\d\d)\d*\] (.*)$", line)
        if not m:
            continue
        cs, text = int(m[1]) * 100 + int(m[2]), m[3]
        if "Run /init as init process" in text and run_init is None:
            run_init = cs
        elif "Running in initrd" in text:
            init_first = None
        elif "running in system mode" in text and init_first is None:
            init_first = cs
    assert run_init is not None, where(boot)
    return run_init, init_first


# How far the record's clock (/proc/uptime) and the kernel log's (printk's
# local_clock) may disagree, in 1/100 s.
CLOCKS_APART_CS = 5


def unconfined_since_init(boot: vm.Boot) -> list[Process]:
    """The unconfined processes that started after init was executed: a gap
    in the policy, none expected while PID 1 is confined.

    Ones from the initramfs (a udevd slow to exit, seen under TCG) carry no
    label because none was loaded when they executed; `aa-fullsystem
    status`, where it lists one, must mark it so, and must not mark any
    other."""
    # The record's time, which the code under test writes, checked against
    # the kernel's: after the initramfs's /init ran, before init spoke.
    if "record.finished_at_cs" in boot.values:
        finished = int(boot.values["record.finished_at_cs"])
        run_init, init_first = kernel_init_window(boot)
        assert run_init <= finished + CLOCKS_APART_CS, where(boot)
        assert init_first is None or finished <= init_first + CLOCKS_APART_CS, where(boot)
    unconfined = [p for p in processes(boot) if p.label == "unconfined"]
    status_lines = boot.output.splitlines()
    for p in unconfined:
        plain, marked = f"  {p.pid} {p.comm}", f"  {p.pid} {p.comm}{FROM_INITRAMFS}"
        wrong = plain if from_initramfs(boot, p) else marked
        assert wrong not in status_lines, f"status lists {wrong.strip()!r}\n{where(boot)}"
    return [p for p in unconfined if not from_initramfs(boot, p)]


def own_profile(name: str) -> str:
    """A complain-mode profile of its own for /usr/local/bin/NAME (a copy of sleep)."""
    return f"""abi <abi/3.0>,
include <tunables/global>
profile {name} /usr/local/bin/{name} flags=(complain) {{
  /** rmix,
}}
"""


def unit(program: str, nnp: bool = False) -> str:
    """A service running PROGRAM infinity, wanted by multi-user.target."""
    return (f"[Unit]\nDescription=aafs test service\n\n[Service]\n{'NoNewPrivileges=yes' + chr(10) if nnp else ''}"
            f"ExecStart={program} infinity\n\n[Install]\nWantedBy=multi-user.target\n")


def add_profiled_services(root: Path, services: dict[str, bool]) -> None:
    """In a guest's root: NAME, a copy of sleep with a profile of its own, run
    by NAME.service (with NoNewPrivileges= where the value is true)."""
    for name, nnp in services.items():
        program = root / f"usr/local/bin/{name}"
        program.write_bytes((root / "usr/bin/sleep").read_bytes())
        program.chmod(0o755)
        (root / f"etc/apparmor.d/{name}").write_text(own_profile(name))
        (root / f"etc/systemd/system/{name}.service").write_text(unit(f"/usr/local/bin/{name}", nnp))


# Asking PID 1 to run a program with power (README, threat model): a root
# service without a profile writes a profile of its own into /run and has
# PID 1 run apparmor_parser on it (systemd-run), which init's exec rules put
# in the system role. forky's systemd-run asks through the system bus, so
# the guest needs dbus. Not refused on any Debian release (README:
# fine-grained AF_UNIX mediation needs network_v9 in the kernel and a
# parser that compiles it, apparmor 5.0; Debian 13 and 14 ship 4.1).
ASKED = "aafs-asked-pid1"
ASK_PID1_UNIT = f"""[Service]
Type=oneshot
StandardOutput=file:/run/{ASKED}.out
StandardError=inherit
ExecStart=/bin/sh -c 'echo "profile {ASKED} {{}}" >/run/{ASKED}.apparmor && \\
    systemd-run --wait --quiet /usr/sbin/apparmor_parser -r /run/{ASKED}.apparmor'
"""
ASK_PID1 = f"""
systemctl start {ASKED}.service
echo "@@ ask_pid1.status=$(systemctl show -p ExecMainStatus --value {ASKED}.service)"
echo "--- {ASKED}'s output"; cat /run/{ASKED}.out
echo "@@ ask_pid1.loaded=$(grep '^{ASKED} ' /sys/kernel/security/apparmor/profiles)"
"""


def unit_facts(*units: str) -> str:
    """Script: for each systemd unit NAME.service, "@@ NAME.active", and of
    its main process "@@ NAME.pid", "@@ NAME.exe" and "@@ NAME.label"."""
    return "".join(rf"""
pid=$(systemctl show -p MainPID --value {unit}.service)
echo "@@ {unit}.active=$(systemctl is-active {unit}.service)"
echo "@@ {unit}.pid=$pid"
echo "@@ {unit}.exe=$(readlink /proc/$pid/exe)"
echo "@@ {unit}.label=$(cat /proc/$pid/attr/current 2>&1)"
""" for unit in units)


# The system bus and logind, as a service sees them: their labels, whether
# they run, and whether dbus-daemon says it mediates D-Bus with AppArmor
# (on kernels with features/dbus).
DBUS_FACTS = unit_facts("dbus", "systemd-logind") + r"""
echo "@@ dbus_log=$(journalctl -b -u dbus.service --no-pager -o cat | grep -i apparmor | tr '\n' ' ')"
"""


def add_ask_pid1(root: Path) -> None:
    """In a guest's root: the service of ASK_PID1."""
    (root / f"etc/systemd/system/{ASKED}.service").write_text(ASK_PID1_UNIT)


def assert_pid1_asked(boot: vm.Boot) -> None:
    """ASK_PID1 got through: the service's request ran, and the kernel holds
    the profile it loaded. The hole the README admits; when a parser closes
    it, this fails, and the README's table changes with it."""
    v = boot.values
    assert v["ask_pid1.status"] == "0", where(boot)
    assert v["ask_pid1.loaded"] == f"{ASKED} (enforce)", where(boot)


def failed_units(boot: vm.Boot) -> list[str]:
    """The units REPORT listed as failed (its "--- failed units" section)."""
    assert "--- failed units\n" in boot.output, f"no list of failed units\n{where(boot)}"
    section = boot.output.split("--- failed units\n", 1)[1].split("@@ failed_units=", 1)[0]
    return [line.split()[0] for line in section.splitlines() if line.strip()]


def runs_cleanly(boot: vm.Boot, allowed_failures: tuple[str, ...] = ()) -> None:
    """systemd reached "running": no unit failed before the probe, and none
    had failed when the report was taken. A caller that expects a unit to
    fail names it in ALLOWED_FAILURES; then the system is "degraded" by
    that unit and by no other."""
    failed = failed_units(boot)
    assert boot.values["failed_units"] == str(len(failed)), where(boot)
    unexpected = [unit for unit in failed if unit not in allowed_failures]
    assert not unexpected, f"failed units: {unexpected}\n{where(boot)}"
    state = "degraded" if failed else "running"
    assert boot.system_state == state, f"system state {boot.system_state!r}\n{where(boot)}"


def where(boot: vm.Boot) -> str:
    """Context for an assertion message: the serial log and the script output."""
    return f"serial log: {boot.log_path}\n--- boot script output ---\n{boot.output}"


def sha256(machine: vm.Machine, path: str) -> str:
    return hashlib.sha256(machine.read_file(path)).hexdigest()


def chroot_text(proc) -> str:
    return f"exit {proc.returncode}, output:\n{proc.stdout}"


def drop_stale_root(machine: vm.Machine) -> None:
    """After the first boot the directory is a stale copy (tests/vm.py): free the space."""
    if machine.booted and machine.root.exists():
        shutil.rmtree(machine.root)


def new_machine(suite: str, workdir: Path, deb: Path) -> vm.Machine:
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    machine = vm.Machine.create(suite, workdir)
    machine.install_debs([deb])
    return machine


def newc(files: dict[str, bytes]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks: each path
    (relative, under the initramfs's root) a regular file of mode 0755 with
    the given contents, after an entry for each directory above it.

    The format is Documentation/driver-api/early-userspace/buffer-format.rst:
    a 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the
    name with its NUL, the data, each padded to 4 bytes; "TRAILER!!!" ends it.
    A directory entry over a symlink would replace the link (clean_path in
    init/initramfs.c): name paths whose directories are real ones, as
    usr/lib/... and scripts/... are.
    """
    out = bytearray()

    def entry(name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (len(out) // 4 + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    directories = sorted({str(parent) for path in files for parent in PurePosixPath(path).parents} - {"."})
    for directory in directories:
        entry(directory, 0o040755)
    for path, data in files.items():
        entry(path, 0o100755, data)
    entry("TRAILER!!!", 0)
    return bytes(out)


def initrd_with(initrd: bytes, files: dict[str, bytes]) -> bytes:
    """initrd with files put on top of it, for one boot (vm.Machine.boot's initrd).

    The kernel unpacks an initramfs archive after archive, compressed or
    not, each one over what the earlier ones left: a file of the same type
    is opened with O_TRUNC and rewritten (init/initramfs.c, do_name). An
    archive must begin 4-byte aligned, and zeros between archives are
    skipped (unpack_to_rootfs), so the appended one is padded to 512.
    """
    return initrd + b"\0" * (-len(initrd) % 512) + newc(files)


def initramfs_file(machine: vm.Machine, name: str, under: str = INITRAMFS_DIR, initrd: str = "") -> bytes:
    """The file UNDER/NAME (ours by default) as initrd (the newest by default) holds it."""
    initrd = initrd or machine.kernel_paths()[1]
    copy = "/tmp/aafs-initramfs-file"
    script = ('set -e; d=$(mktemp -d); unmkinitramfs "$1" "$d"; '
              'f=$(find "$d" -path "*/$2" | head -n 1); test -n "$f"; cp "$f" "$3"; rm -rf "$d"')
    machine.chroot_run(["sh", "-c", script, "sh", initrd, f"{under}/{name}", copy])
    return machine.read_file(copy)


def lsinitramfs(machine: vm.Machine) -> str:
    initrd = machine.kernel_paths()[1]
    return machine.chroot_run(["lsinitramfs", initrd]).stdout
