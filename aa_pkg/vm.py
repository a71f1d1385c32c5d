"""Boot a Debian system in QEMU, to see what the package does to PID 1.

The one VM layer: `aa-pkg verify` (aa_pkg/verify.py) boots a user's
package through it, and the test suite boots every guest through it
(tests/vm.py adds pytest's skips). Typical use (as root or not, below)::

    m = Machine.create("trixie", workdir)
    m.install_debs([deb])                      # real apt-get, runs our dpkg trigger
    b = m.boot(script="echo @@ pid1=$(cat /proc/1/attr/current)")
    assert b.reached_multi_user and b.values["pid1"] == "..."

Life of a machine and where the truth is
----------------------------------------
1. ``base_tarball(suite)`` builds (once, cached outside the repo) a minimal
   bootable Debian with mmdebstrap.  Everything the guest needs beyond the
   package list is written by ``CUSTOMIZE_HOOK`` below, the one place that
   configures the guest.
2. ``Machine.create()`` unpacks it into ``workdir/root``.  Until the first
   boot, that DIRECTORY is the machine: ``chroot_run()`` and
   ``install_debs()`` change it.
3. The first ``boot()`` turns the directory into ``workdir/disk.img`` (ext4,
   ``mke2fs -d``).  From then on the IMAGE is the machine and the directory
   is a stale leftover: the guest may change files (e.g. ``aa-fullsystem
   stage full``, a regenerated initrd) and the next boot must see exactly
   that.  Copying changes back and forth would give two truths, so after the
   first boot ``chroot_run()``/``install_debs()`` refuse, and changes between
   boots are made by the guest itself, via a boot script.
   ``read_file()``, ``initrd_size()`` and the kernel/initrd used by ``boot()``
   read whichever is the truth (the image through ``debugfs``, no mount).

The guest
---------
``vm-probe.service`` (baked into the tarball) starts once multi-user.target
is active, prints a report to the serial console between markers, runs the
boot script (read from the second disk, /dev/vdb) and powers the guest off.
Script lines of the form ``@@ key=value`` end up in ``Boot.values``.

Root, or not
------------
As root, the directory is changed directly.  As another user (``aa-pkg
verify`` run as one), everything that must be root there (unpacking the
base with its owners, the chroot, ``mke2fs -d``) runs as root of a user
namespace of its own (``as_root``), with this user as its root and the
user's subordinate ids (subuid(5)) as the rest, as mmdebstrap's unshare
mode builds the base.  Files root owns in the guest are then this user's
on the host, so the code here writes them directly in both cases.

Only the standard library is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "PACKAGES",
    "SUITES",
    "Boot",
    "BootError",
    "ChrootError",
    "Machine",
    "UserNamespaceError",
    "as_root",
    "base_tarball",
    "cache_dir",
    "missing_tools",
]

SUITES = ("bookworm", "trixie")
# Debian testing: booted by its own tests (test_forky), not by every
# parametrized one, to keep the suite's time.
TESTING = "forky"
KNOWN_SUITES = SUITES + (TESTING,)

# What the base system is made of.  Everything the probe uses (sh, tr, cut,
# systemctl) is already in minbase + systemd-sysv.
PACKAGES = (
    "systemd-sysv", "linux-image-amd64", "apparmor", "initramfs-tools",
    "udev", "kmod", "procps", "zstd", "e2fsprogs",
    # Our dependencies besides these, for the tests that install the .deb
    # with dpkg -i (test_maintscripts): apt's tests pull them in themselves.
    "libpam-apparmor",
)

HOSTNAME = "aa-vm"

# Where the probe (PROBE_SCRIPT) is installed in the guest.
PROBE_PATH = "/usr/local/sbin/vm-probe"

# The kernel modules that mount a guest's root (virtio disk, ext4): all
# its initramfs holds, with initramfs-tools here and with dracut
# (test_dracut).
ROOT_MODULES = ("virtio_pci", "virtio_blk", "ext4")

# Markers the probe prints on the serial console.  They are matched as whole
# lines, so systemd's own console messages (e.g. "Starting vm-probe.service")
# can never be mistaken for them.
BEGIN = "=== vm-probe begin ==="
SCRIPT = "=== vm-probe script ==="
END = "=== vm-probe end ==="

# The probe that runs in the guest.  It writes straight to the serial port
# (not through the journal) and streams, so a script that hangs still shows
# how far it got.  The serial port is also the kernel's and systemd's
# console.  The kernel writes to the port directly, not through the tty, so
# its messages can land in the middle of a line of ours: the probe turns
# the kernel's console level down to errors before it prints anything
# (panics and oopses still show; the rest, e.g. AppArmor denials, is in
# dmesg and the journal), then waits for systemd to finish starting units.
PROBE_SCRIPT = r"""#!/bin/sh
# Installed by the VM layer of aa-pkg (aa_pkg/vm.py).  Runs once per boot.
exec </dev/null >/dev/ttyS0 2>&1
uptime=$(cut -d' ' -f1 /proc/uptime)
echo 4 >/proc/sys/kernel/printk
echo "=== vm-probe begin ==="
echo "vm-probe: uptime=$uptime"
echo "vm-probe: multi-user.target=$(systemctl is-active multi-user.target)"
echo "vm-probe: system-state=$(systemctl is-system-running --wait)"
# The host passes the script as NUL-padded text on a raw disk.
if [ -b /dev/vdb ]; then tr -d '\000' </dev/vdb >/run/vm-probe.sh; fi
echo "=== vm-probe script ==="
status=0
if [ -s /run/vm-probe.sh ]; then
    (cd /root && /bin/sh /run/vm-probe.sh)
    status=$?
fi
echo "vm-probe: script-exit=$status"
echo "=== vm-probe end ==="
# Power off at once: with --force, PID 1 (asked directly, not logind,
# which is not installed) stops no unit one by one but kills every process,
# then syncs, unmounts and detaches the disks before it powers off
# (systemd-shutdown(8)), so the image is whole. The orderly way took about
# 3 s of every boot under TCG, and nothing a test reads is written while
# units stop.
systemctl --force poweroff || echo o >/proc/sysrq-trigger
"""

# Wanted by multi-user.target and ordered after it: systemd accepts this
# and starts the probe only once the target's start job has finished, so
# "multi-user.target=active" in the report is meaningful.  Type=idle (as
# for gettys) also lets the rest of the boot transaction go first, and
# counts the probe as started once it runs, so boot-up completes and
# "systemctl is-system-running --wait" in the probe returns.
PROBE_UNIT = f"""\
[Unit]
Description=aa-pkg probe (runs the script from /dev/vdb, powers off)
After=multi-user.target

[Service]
Type=idle
ExecStart={PROBE_PATH}

[Install]
WantedBy=multi-user.target
"""

# The probe under sysvinit (Machine.use_sysvinit): the same report, with
# the runlevel for multi-user.target and sysvinit's poweroff, which runs
# the rc 0 scripts and unmounts before it powers off.
SYSV_PROBE_SCRIPT = (PROBE_SCRIPT
                     .replace('echo "vm-probe: multi-user.target=$(systemctl is-active multi-user.target)"',
                              'runlevel=$(runlevel | cut -d" " -f2)\n'
                              'case $runlevel in [2-5]) state=active ;; *) state="runlevel $runlevel" ;; esac\n'
                              'echo "vm-probe: multi-user.target=$state"')
                     .replace('echo "vm-probe: system-state=$(systemctl is-system-running --wait)"',
                              'echo "vm-probe: system-state=sysvinit"'))
SYSV_PROBE_SCRIPT = SYSV_PROBE_SCRIPT[:SYSV_PROBE_SCRIPT.index("# Power off at once")] + "/sbin/poweroff\n"
assert "systemctl" not in SYSV_PROBE_SCRIPT, "PROBE_SCRIPT changed: adapt SYSV_PROBE_SCRIPT"
# inittab(5): "once" entries start in file order, after the "wait" entry
# that runs rc 2 has finished, so the probe sees the booted system.
SYSV_PROBE_INITTAB = "vp:2345:once:/usr/local/sbin/vm-probe-sysv\n"

# The one place that turns the mmdebstrap result into a bootable test guest.
# mmdebstrap runs it on the host with "$1" = the new root directory.
CUSTOMIZE_HOOK = f"""set -e
root="$1"
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
echo {HOSTNAME} > "$root/etc/hostname"
printf '127.0.0.1 localhost\\n127.0.1.1 {HOSTNAME}\\n' > "$root/etc/hosts"
mkdir -p "$root/usr/local/sbin"
cat > "$root{PROBE_PATH}" <<'EOF_PROBE'
{PROBE_SCRIPT}EOF_PROBE
chmod 755 "$root{PROBE_PATH}"
cat > "$root/etc/systemd/system/vm-probe.service" <<'EOF_UNIT'
{PROBE_UNIT}EOF_UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../vm-probe.service \\
    "$root/etc/systemd/system/multi-user.target.wants/vm-probe.service"
# console=ttyS0 would start a login prompt on the port the probe writes to;
# nobody logs in on the virtual terminals either (getty-static starts
# tty2-6 without D-Bus).
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@.service"
ln -sf /dev/null "$root/etc/systemd/system/getty-static.service"
# Every initramfs of a guest, built in a chroot on the host or in the
# booted guest under TCG, holds only the modules that mount its root
# (MODULES=list, initramfs-tools(7)), compressed at zstd's fastest level.
# Debian's MODULES=most copies every driver (minutes per rebuild under
# TCG); "dep" looks at the devices of whatever builds it, in a chroot the
# host's. Every hook, ours included, runs as with any other setting.
mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESSLEVEL=1\n' > "$root/etc/initramfs-tools/conf.d/aafs-test-vm"
printf '%s\\n' {' '.join(ROOT_MODULES)} >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all
"""

DISK_SIZE = "3G"   # sparse; a base system uses well under 1G of it

QEMU = "qemu-system-x86_64"

# One virtual CPU. With two, each in its own host thread (multi-threaded
# TCG, the default), trixie's kernel dies now and then in early boot with
# "Oops: int3" (in enqueue_timer, sched_clock_cpu): the kernel patches its
# own code live (static keys, through an int3: text_poke_bp), and the
# other vCPU, in a thread of its own, still ran a translation that held
# the int3. tools/probe-tcg-race, 150 boots of trixie's kernel to a static
# /init: 3 such panics with two vCPUs, none with one. A CI run boots trixie
# dozens of times, so it almost always met one. The host's second core
# goes to a second guest instead: the tests run in two pytest-xdist
# workers (setup.cfg), one guest each (conftest.py).
VCPUS = 1

# Test guests boot with "norandmaps" (kernel-parameters.txt: no address
# space randomisation, as randomize_va_space=0). Under TCG, qemu finds the
# code it translated for a guest block by the block's virtual address as
# well as its physical page (accel/tcg: tb_lookup and tb_htable_lookup
# compare tb->pc with pc; qemu 7.2, Debian 12's, has no position-
# independent blocks for x86, which CF_PCREL brought in qemu 8.0). With
# randomisation, every exec maps the program and its libraries elsewhere
# and all of their code is translated anew: mkinitramfs alone runs some
# 700 processes. Measured on the same machine, our package installed
# (bookworm / trixie): update-initramfs -u 37.8 -> 11.8 s / 44.0 -> 17.4 s,
# aa-fullsystem status 5.2 -> 1.4 s / 3.7 -> 1.6 s, boot to the probe
# 15.7 -> 12.3 s / 21.5 -> 15.9 s. Nothing under test depends on where a
# process's code is mapped: AppArmor mediates by path and label.
# tools/bench-boot, whose figures stand for real machines, keeps it
# (Machine.randomize_addresses).
NO_ADDRESS_RANDOMIZATION = "norandmaps"


def usable_accel(kvm: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """"kvm" when /dev/kvm opens and this host is no guest itself, else "tcg".

    On a guest (the CPU's "hypervisor" flag), KVM would be nested, and
    nested KVM stalls on the hosts this was built on; TCG only costs time.
    """
    try:
        os.close(os.open(kvm, os.O_RDWR))
    except OSError:
        return "tcg"
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:
        return "tcg"
    return "tcg" if " hypervisor" in flags else "kvm"


def qemu_command(kernel: Path, initrd: Path, log_path: Path, vcpus: int, append: str,
                 accel: str = "tcg") -> list[str]:
    """qemu booting kernel and initrd (accel: "tcg" or "kvm"), its console in log_path; no disks."""
    return [
        QEMU, "-accel", accel, *(["-cpu", "host"] if accel == "kvm" else []),
        "-m", "2048", "-smp", str(vcpus),
        # -nodefaults: none of the pc machine's default devices (VGA,
        # network card, parallel port, floppy, CD-ROM), whose drivers udev
        # would load at every boot for nothing (about 5 s of a 30 s boot
        # under TCG); the serial console below is the only one.
        "-nodefaults", "-nographic", "-monitor", "none", "-serial", f"file:{log_path}",
        # -no-reboot: a reboot (or a panic, thanks to panic=-1 below)
        # ends qemu at once instead of booting again or hanging until
        # the timeout; a guest that cannot start PID 1 fails in seconds.
        "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 {append}".strip(),
    ]


class ChrootError(subprocess.CalledProcessError):
    """A command in the chroot failed; str() includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n--- output ---\n{_tail(self.output or '', 60)}"


class BootError(RuntimeError):
    """The guest did not get to (or through) the probe."""

    def __init__(self, reason: str, log_path: Path, log: str):
        self.reason, self.log_path, self.log = reason, log_path, log
        super().__init__(
            f"{reason}; full serial log: {log_path}\n"
            f"--- last lines of the serial log ---\n{_tail(log, 40)}")


# ---------------------------------------------------------------------------
# The tools it needs.

def _tools_path() -> str:
    # /usr/sbin is not on a user's PATH (Debian's /etc/profile), yet mke2fs
    # and debugfs are there, and run by anybody.
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def missing_tools(*names: str) -> list[str]:
    """Those of the programs names that are not installed."""
    return [n for n in names if shutil.which(n, path=_tools_path()) is None]


def tool(name: str) -> str:
    """The path of the program name, found as missing_tools() finds it; name if it is missing."""
    return shutil.which(name, path=_tools_path()) or name


# ---------------------------------------------------------------------------
# Root, or root of a user namespace.

# How many ids of the guest a user namespace maps: the guest's root, then
# its system users and groups (Debian's are below 65536: nobody is 65534).
GUEST_IDS = 65536

# The tools that make a user namespace with more than one id in it: the
# setuid helpers that check /etc/subuid and /etc/subgid (user_namespaces(7),
# "Defining user and group ID mappings").
USERNS_TOOLS = {"newuidmap": "uidmap", "newgidmap": "uidmap", "unshare": "util-linux"}


class UserNamespaceError(RuntimeError):
    """This user cannot be root of a user namespace here; str() says why, args[1] the fix."""


def unprivileged() -> bool:
    """True when not root: the guest's root is then made in a user namespace."""
    return os.geteuid() != 0


def subordinate_ids(table: str, user: str, own_id: int) -> tuple[int, int] | None:
    """(first, count) of the first range of at least GUEST_IDS ids that table
    (/etc/subuid or /etc/subgid: NAME_OR_ID:FIRST:COUNT lines, subuid(5)) gives user."""
    try:
        lines = Path(table).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(own_id)) \
                and fields[1].isdigit() and fields[2].isdigit() and int(fields[2]) >= GUEST_IDS:
            return int(fields[1]), int(fields[2])
    return None


def _id_maps() -> list[list[str]]:
    """newuidmap's and newgidmap's arguments (after the PID): this user as root, GUEST_IDS - 1
    subordinate ids after it."""
    uid, gid = os.getuid(), os.getgid()
    user = pwd.getpwuid(uid).pw_name
    maps = []
    for table, own in (("/etc/subuid", uid), ("/etc/subgid", gid)):
        found = subordinate_ids(table, user, own)
        if found is None:
            raise UserNamespaceError(
                f"{table} gives {user} no range of {GUEST_IDS} ids, which the guest's system users need",
                f"as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user} "
                f"(any free range), or run as root")
        maps.append(["0", str(own), "1", "1", str(found[0]), str(GUEST_IDS - 1)])
    return maps


# Waits on its stdin until the host has written the id maps, then runs the
# command with stdin from /dev/null: a process of a new user namespace has
# no ids in it until then (user_namespaces(7)), and its execve() gives it
# root's capabilities only once uid 0 is mapped (capabilities(7),
# "Capabilities and execution of programs by root").
_WAIT_FOR_MAPS = 'read -r _ && exec "$@" </dev/null'


def as_root(args: list[str], *, mounts: bool = False, check: bool = True,
            **popen: Any) -> subprocess.CompletedProcess[Any]:
    """Run args as root, like subprocess.run(args, check=check, **popen).

    As root: directly, in a private mount namespace with mounts (what it
    mounts vanishes with it, even if we are killed). Otherwise: as root of
    a new user namespace with its own mount and PID namespaces (so it may
    mount proc, bind mounts and nothing of the host), this user as its uid
    and gid 0; everything in it ends with it.
    """
    if "stdin" in popen:
        raise ValueError("as_root: the command's stdin is /dev/null")
    if not unprivileged():
        prefix = ["unshare", "--mount", "--propagation", "private"] if mounts else []
        done: subprocess.CompletedProcess[Any] = subprocess.run(
            [*prefix, *args], check=check, stdin=subprocess.DEVNULL, **popen)
        return done
    maps = _id_maps()
    if popen.pop("capture_output", False):
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = subprocess.Popen(
        ["unshare", "--user", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
         "--", "sh", "-c", _WAIT_FOR_MAPS, "as-root", *args],
        stdin=subprocess.PIPE, **popen)
    try:
        _map_ids(proc, maps)
        out, err = proc.communicate(b"go\n" if not popen.get("text") else "go\n")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    done = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def _map_ids(proc: subprocess.Popen[Any], maps: list[list[str]]) -> None:
    """Give the new user namespace of proc its ids, once unshare(1) has made it."""
    ours = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + 10
    while True:
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/user") != ours:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise UserNamespaceError(
                "unshare --user did not make a user namespace (are unprivileged user namespaces "
                "allowed? sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)",
                "allow them (sysctl kernel.unprivileged_userns_clone=1), or run as root")
        time.sleep(0.01)
    for helper, arguments in (("newuidmap", maps[0]), ("newgidmap", maps[1])):
        done = subprocess.run([helper, str(proc.pid), *arguments], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["(nothing)"])[-1]
            raise UserNamespaceError(f"{helper} {' '.join(arguments)} failed: {said}",
                                     "check this user's lines in /etc/subuid and /etc/subgid, or run as root")


# ---------------------------------------------------------------------------
# The cached base system.

def cache_dir() -> Path:
    """$AA_VM_CACHE, or ~/.cache/apparmor-fullsystem/vm (outside the repo)."""
    env = os.environ.get("AA_VM_CACHE")
    path = Path(env) if env else Path.home() / ".cache/apparmor-fullsystem/vm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_tarball(suite: str) -> Path:
    """Path of the cached base system for suite, building it if needed."""
    if suite not in KNOWN_SUITES:
        raise ValueError(f"unknown suite {suite!r}, expected one of {KNOWN_SUITES}")
    # The key covers the hook as well as the package list, so changing the
    # probe rebuilds the tarball instead of silently using an old one.
    key = hashlib.sha256(
        "\n".join(PACKAGES + (CUSTOMIZE_HOOK,)).encode()).hexdigest()[:10]
    out = cache_dir() / f"base-{suite}-{key}.tar"
    if out.exists():
        return out
    # One builder at a time; whoever waited finds the finished file.
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.tar")
        try:
            subprocess.run(
                # unshare: as root of a user namespace, as as_root() works
                # (mmdebstrap(1), MODES); never "auto", which would try others.
                ["mmdebstrap", "--mode=" + ("unshare" if unprivileged() else "root"), "--variant=minbase",
                 # A snapshot of testing can carry a Release file past its
                 # Valid-Until; the option stays in the guest's apt.conf.d.
                 *(["--aptopt=Acquire::Check-Valid-Until \"false\""] if suite == TESTING else []),
                 "--include=" + ",".join(PACKAGES),
                 "--customize-hook=" + CUSTOMIZE_HOOK,
                 suite, str(tmp)],
                check=True, stdin=subprocess.DEVNULL)
            os.replace(tmp, out)   # atomic: readers never see half a tarball
        finally:
            tmp.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------
# Results of a boot.

@dataclass
class Boot:
    log: str                    # full serial console text (\r removed)
    log_path: Path              # the same, on disk
    reached_multi_user: bool    # probe saw multi-user.target active
    system_state: str           # "running", or "degraded" if a unit failed
    output: str                 # what the boot script printed
    values: dict[str, str]      # from script lines "@@ key=value"
    script_exit: int | None     # exit status of the boot script
    seconds_to_probe: float     # guest /proc/uptime when the probe started
    wall_seconds: float         # host time from starting qemu to the probe
    total_seconds: float        # host time until qemu exited


def _parse_boot(log: str, log_path: Path, wall: float, total: float
                ) -> Boot | None:
    """The probe's report in a serial log, or None if it did not finish."""
    lines = log.splitlines()

    def find(marker: str, start: int) -> int:
        # A marker ends its line.  It may not start it: until boot-up has
        # finished, systemd's console can leave a status line without its
        # newline ("A start job is running...", ended by a bare \r, which
        # the log has lost) just before the probe's first line.
        return next(i for i in range(start, len(lines)) if lines[i].endswith(marker))

    try:
        begin = find(BEGIN, 0)
        script = find(SCRIPT, begin)
        end = find(END, script)
    except StopIteration:
        return None
    # Nor need a header line start with its "vm-probe: ": the probe prints
    # the first ones before it waits for start-up to finish, and systemd
    # can still be drawing its status then, so a line can begin with the
    # terminal's erase-line sequence (ESC [ K) left from that drawing.
    header: dict[str, str] = {
        m.group(1): m.group(2)
        for line in lines[begin + 1:script] + lines[end - 1:end]
        if (m := re.search(r"vm-probe: ([\w.-]+)=(.*)$", line))}
    body = lines[script + 1:end - 1]       # drop the script-exit line
    values = {}
    for line in body:
        m = re.match(r"@@ ([\w.-]+)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2)
    exit_text = header.get("script-exit", "")
    return Boot(
        log=log, log_path=log_path,
        reached_multi_user=header.get("multi-user.target") == "active",
        system_state=header.get("system-state", ""),
        output="".join(line + "\n" for line in body),
        values=values,
        script_exit=int(exit_text) if exit_text.isdigit() else None,
        seconds_to_probe=float(header.get("uptime", "nan")),
        wall_seconds=wall, total_seconds=total)


# ---------------------------------------------------------------------------
# The machine.

# Runs in a private mount namespace (see chroot_run): the mounts disappear
# with the namespace when the command ends, whatever happens to us.
# "$2" says how /sys and /dev are had. As root ("new"): a sysfs of its own,
# with nothing mounted in it (so no securityfs: a chroot build names no
# AppArmor features, aa-fullsystem(8)), and /dev with its ptys. As root of
# a user namespace ("bind"): a new sysfs needs a network namespace of its
# own, which would cut apt off, and a bind of a mount whose submounts are
# locked (/dev/pts, /dev/shm) is refused unless it takes them along
# (mount_namespaces(7), "Restrictions on mount namespaces"); so both are
# bound whole, and the host's securityfs, if mounted, is hidden under an
# empty tmpfs, as a sysfs of its own would have it.
_CHROOT_SH = r"""set -e
root="$1"; sys_and_dev="$2"; shift 2
mount -t proc proc "$root/proc"
if [ "$sys_and_dev" = new ]; then
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
else
    mount --rbind /sys "$root/sys"
    if mountpoint -q "$root/sys/kernel/security"; then
        mount -t tmpfs -o ro,mode=755 none "$root/sys/kernel/security"
    fi
    mount --rbind /dev "$root/dev"
fi
# Current DNS for apt, without writing into the root.
if [ -f /etc/resolv.conf ] && [ -f "$root/etc/resolv.conf" ] \
        && [ ! -L "$root/etc/resolv.conf" ]; then
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
fi
set +e
exec chroot "$root" "$@"
"""

_CHROOT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}


class Machine:
    """One guest: workdir/root before its first boot, workdir/disk.img after."""

    def __init__(self, suite: str, workdir: Path):
        self.suite = suite
        self.workdir = Path(workdir)
        self.root = self.workdir / "root"
        self.image = self.workdir / "disk.img"
        self.transcript: list[subprocess.CompletedProcess[str]] = []
        self.boots: list[Boot] = []
        # Blank disks attached after the script disk (/dev/vdc, ...), kept
        # from boot to boot: add_disk().
        self.extra_disks: list[Path] = []
        self._apt_updated = False
        self._attempts = 0
        self.vcpus = VCPUS
        self.randomize_addresses = False     # see NO_ADDRESS_RANDOMIZATION
        self.accel = "tcg"                   # or "kvm": usable_accel()

    @classmethod
    def create(cls, suite: str, workdir: Path) -> Machine:
        """Unpack the cached base system for suite into workdir/root."""
        tarball = base_tarball(suite)
        machine = cls(suite, workdir)
        machine.root.mkdir(parents=True)      # must be new: no stale state
        # Root of a user namespace may not make device nodes (mknod(2)):
        # the base's few in /dev are left out there. The guest never sees
        # them anyway: both initramfs generators mount devtmpfs over /dev.
        no_nodes = ["--exclude=./dev/*"] if unprivileged() else []
        try:
            as_root(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", *no_nodes,
                     "-xpf", str(tarball), "-C", str(machine.root)])
        except BaseException:
            machine.drop_root()     # half a root, perhaps of ids only a namespace may remove
            raise
        return machine

    @property
    def booted(self) -> bool:
        """True once the image exists, i.e. the image is the truth."""
        return self.image.exists()

    # -- changing the machine before its first boot ------------------------

    def chroot_run(self, args: list[str], check: bool = True
                   ) -> subprocess.CompletedProcess[str]:
        """Run args in the root with /proc, /sys, /dev, /dev/pts mounted.

        stdout and stderr are captured together in .stdout, and every run is
        kept in self.transcript.  Only allowed before the first boot.
        """
        self._refuse_after_boot("chroot_run")
        # The mounts live in a private mount namespace (as_root), so they are
        # never visible on the host and vanish when the command exits, even
        # if this process is killed; nothing to clean up, nothing to leak.
        proc = as_root(
            ["sh", "-c", _CHROOT_SH, "chroot-run", str(self.root), "bind" if unprivileged() else "new", *args],
            mounts=True,
            env=_CHROOT_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", check=False)      # checked below, with the output
        proc.args = list(args)
        self.transcript.append(proc)
        if check and proc.returncode != 0:
            raise ChrootError(proc.returncode, args, output=proc.stdout)
        return proc

    def use_sysvinit(self) -> subprocess.CompletedProcess[str]:
        """Make sysvinit-core PID 1 (it replaces systemd-sysv), the probe started from inittab."""
        result = self.install_packages(["sysvinit-core"])
        probe = self.root / "usr/local/sbin/vm-probe-sysv"
        probe.write_text(SYSV_PROBE_SCRIPT)
        probe.chmod(0o755)
        with open(self.root / "etc/inittab", "a") as inittab:
            inittab.write(SYSV_PROBE_INITTAB)
        return result

    def apt_update(self) -> None:
        """apt-get update, once (mmdebstrap removes the package lists from the tarball)."""
        if not self._apt_updated:
            self.chroot_run(["apt-get", "update"])
            self._apt_updated = True

    def install_packages(self, names: list[str]) -> subprocess.CompletedProcess[str]:
        """apt-get install packages of the suite by name (from the network)."""
        self._refuse_after_boot("install_packages")
        self.apt_update()
        return self.chroot_run(["apt-get", "install", "-y", *names])

    def install_debs(self, debs: list[Path]) -> subprocess.CompletedProcess[str]:
        """apt-get install the .deb files (dependencies from the network)."""
        self._refuse_after_boot("install_debs")
        dest = self.root / "root/debs"
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for deb in map(Path, debs):
            shutil.copy2(deb, dest / deb.name)
            names.append(f"/root/debs/{deb.name}")
        try:
            self.apt_update()
            return self.chroot_run(["apt-get", "install", "-y", *names])
        finally:
            shutil.rmtree(dest)

    def _refuse_after_boot(self, what: str) -> None:
        if self.booted:
            raise RuntimeError(
                f"{what}: this machine has booted, so {self.image} is the "
                f"truth and {self.root} is stale; change files from the "
                f"guest with boot(script=...)")

    # -- reading the machine (either state) ---------------------------------

    def read_file(self, path: str) -> bytes:
        """Contents of a file of the guest, following the guest's symlinks."""
        real = self._resolve(path)
        if not self.booted:
            return (self.root / str(real).lstrip("/")).read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "file"
            self._debugfs(f"dump {_q(real)} {_q(out)}")
            if not out.exists():
                raise FileNotFoundError(f"{path} (in {self.image})")
            return out.read_bytes()

    def kernel_paths(self) -> tuple[str, str]:
        """Guest paths of the kernel and initrd boot() uses.

        The newest /boot/vmlinuz-VERSION and its /boot/initrd.img-VERSION
        (what Debian's /vmlinuz and /initrd.img symlinks point to).
        """
        if self.booted:
            out = self._debugfs("ls -p /boot")
            # "ls -p" lines look like /inode/mode/uid/gid/name/size/
            names = [line.split("/")[5] for line in out.splitlines()
                     if line.count("/") >= 7]
        else:
            names = os.listdir(self.root / "boot")
        versions = [n[len("vmlinuz-"):] for n in names
                    if n.startswith("vmlinuz-")]
        if not versions:
            raise FileNotFoundError("no /boot/vmlinuz-* in the guest")
        version = max(versions, key=_version_key)
        if f"initrd.img-{version}" not in names:
            raise FileNotFoundError(f"no /boot/initrd.img-{version} in the guest")
        return f"/boot/vmlinuz-{version}", f"/boot/initrd.img-{version}"

    def initrd_size(self) -> int:
        """Size in bytes of the initrd the next boot will use."""
        return len(self.read_file(self.kernel_paths()[1]))

    # -- booting ------------------------------------------------------------

    def add_disk(self, name: str, megabytes: int) -> str:
        """A blank disk for every boot from now on; its guest device (/dev/vdc first)."""
        disk = self.workdir / f"{name}.img"
        with open(disk, "wb") as f:
            f.truncate(megabytes * 1024 * 1024)     # sparse
        self.extra_disks.append(disk)
        return f"/dev/vd{chr(ord('c') + len(self.extra_disks) - 1)}"

    def boot(self, append: str = "", script: str = "",
             timeout: int = 240, initrd: bytes | None = None) -> Boot:
        """Boot the guest, run script at multi-user.target, power off.

        initrd, if given, is booted instead of the guest's own (a fault
        injected on top of it: guest.initrd_with). Raises BootError (with
        the serial log's tail and path) if the probe did not finish within
        timeout seconds.
        """
        self._attempts += 1
        bootdir = self.workdir / f"boot-{self._attempts}"
        bootdir.mkdir()
        if not self.booted:
            self._make_image()

        # The guest may have regenerated its initrd: take both from the disk.
        kernel_path, initrd_path = self.kernel_paths()
        kernel, initrd_file = bootdir / "vmlinuz", bootdir / "initrd.img"
        kernel.write_bytes(self.read_file(kernel_path))
        initrd_file.write_bytes(self.read_file(initrd_path) if initrd is None else initrd)

        # The script disk: text padded with NULs to whole 512-byte sectors.
        data = script.encode()
        script_img = bootdir / "script.img"
        script_img.write_bytes(data + b"\0" * (512 - len(data) % 512))

        log_path = bootdir / "serial.log"
        harness = "" if self.randomize_addresses else NO_ADDRESS_RANDOMIZATION
        cmd = qemu_command(kernel, initrd_file, log_path, self.vcpus,
                           " ".join(filter(None, ("root=/dev/vda rw", harness, append))), self.accel) + [
            "-drive", f"file={self.image},if=virtio,format=raw",
            "-drive", f"file={script_img},if=virtio,format=raw,readonly=on",
            *(arg for disk in self.extra_disks for arg in ("-drive", f"file={disk},if=virtio,format=raw")),
        ]
        (bootdir / "qemu-cmdline").write_text(" ".join(cmd) + "\n")

        start = time.monotonic()
        probe_seen = None
        timed_out = False
        with open(bootdir / "qemu.out", "wb") as qemu_out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=qemu_out, stderr=subprocess.STDOUT)
            try:
                # Poll the log, only to time when the probe starts.
                while proc.poll() is None:
                    now = time.monotonic()
                    if now - start > timeout:
                        timed_out = True
                        break
                    if probe_seen is None and BEGIN.encode() in _read(log_path):
                        probe_seen = now
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        total = time.monotonic() - start

        log = _read(log_path).decode(errors="replace").replace("\r", "")
        wall = (probe_seen or start + total) - start
        boot = _parse_boot(log, log_path, wall, total)
        if boot is None or timed_out:
            if boot is None:
                what = "the probe did not finish"
            else:
                # The probe finished, but the guest did not power off: its
                # disk may not have been written back properly.
                what = "the guest did not power off"
            how = (f"timed out after {timeout}s" if timed_out else
                   f"qemu exited with status {proc.returncode} after {total:.0f}s")
            qemu_said = (bootdir / "qemu.out").read_text(errors="replace").strip()
            if qemu_said:
                how += f"; qemu said: {qemu_said}"
            if "Kernel panic" in log and "Run /init as init process" not in log:
                how += ("; the guest kernel panicked before it ran the initramfs's /init, "
                        "so before anything of ours (see VCPUS)")
            raise BootError(f"{what} ({how})", log_path, log)
        self.boots.append(boot)
        return boot

    def _make_image(self) -> None:
        """Turn the directory into the image that is the truth from now on."""
        self._drop_apt_lists()
        tmp = self.image.with_suffix(".tmp")
        # As root of the namespace the directory was made in, mke2fs sees
        # the guest's owners (0 for root), not the host's ids behind them.
        as_root([tool("mke2fs"), "-q", "-t", "ext4", "-L", "root", "-d", str(self.root),
                 "-F", str(tmp), DISK_SIZE], stdout=subprocess.DEVNULL)
        os.replace(tmp, self.image)

    def drop_root(self) -> None:
        """Remove the directory (stale once booted). Files there that the guest's other users own
        are the host's subordinate ids when not root: only root of a namespace removes them."""
        if self.root.exists():
            as_root(["rm", "-rf", "--one-file-system", "--", str(self.root)])

    def _drop_apt_lists(self) -> None:
        """Leave out apt's package lists and caches, as mmdebstrap leaves
        them out of the base (its cleanup/apt/lists and cleanup/apt/cache).

        A chroot's apt-get update brought them; the guest has no network
        to fetch from, and with some 60,000 packages listed, every apt-get
        in the guest spent 5 s under TCG loading them (`apt-get install
        -s` of a local .deb: 5.6 s with the lists, 0.9 s without). A test
        that needs a repository in the guest lists its own, as
        test_hardened does for unattended-upgrades.
        """
        lists = self.root / "var/lib/apt/lists"
        caches = [*(self.root / "var/cache/apt").glob("*.bin"),
                  *(self.root / "var/cache/apt/archives").glob("*.deb")]
        listed = [path for path in lists.iterdir() if path.is_file() and path.name != "lock"] if lists.is_dir() else []
        for path in listed + caches:
            path.unlink()

    # -- helpers for the image ----------------------------------------------

    def _debugfs(self, request: str) -> str:
        """Run one read-only debugfs request on the image, return stdout."""
        proc = subprocess.run(
            [tool("debugfs"), "-R", request, str(self.image)],
            capture_output=True, text=True, errors="replace", check=True,
            env={**os.environ, "DEBUGFS_PAGER": "__none__"})
        return proc.stdout

    def _readlink(self, path: PurePosixPath) -> str | None:
        """Target of a symlink in the guest, or None if not a symlink."""
        if not self.booted:
            host = self.root / str(path).lstrip("/")
            return os.readlink(host) if host.is_symlink() else None
        stat = self._debugfs(f"stat {_q(path)}")
        if not re.search(r"Type: symlink", stat):
            return None
        fast = re.search(r'Fast link dest: "(.*)"', stat)
        return fast.group(1) if fast else self._debugfs(f"cat {_q(path)}")

    def _resolve(self, path: str) -> PurePosixPath:
        """path with all symlinks resolved inside the guest (like chroot)."""
        todo = list(PurePosixPath("/", path).parts[1:])
        done = PurePosixPath("/")
        for _ in range(100):
            if not todo:
                return done
            part = todo.pop(0)
            if part == "..":
                done = done.parent
                continue
            target = self._readlink(done / part)
            if target is None:
                done = done / part
                continue
            if target.startswith("/"):
                done = PurePosixPath("/")
            todo[:0] = [p for p in PurePosixPath(target).parts if p != "/"]
        raise OSError(f"too many symlinks resolving {path} in the guest")


def _q(path: str | PurePosixPath | Path) -> str:
    """Quote a path for a debugfs request."""
    return '"' + str(path) + '"'


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _version_key(version: str) -> list[tuple[int, int, str]]:
    """Sort key for kernel versions: 6.1.0-10 > 6.1.0-9."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p)
            for p in re.split(r"(\d+)", version) if p]
