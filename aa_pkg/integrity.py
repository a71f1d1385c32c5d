"""What a service may write at the hardened level, derived from who reads what.

The rule (Biba's, applied to roles): whatever a program with power reads as
instructions is out of a service's write reach. The programs with power are
PID 1 and the system, admin and package roles, and the kernel's own helpers.
AppArmor labels programs, not files, so the rule is written as paths:

- The top level is the system's. A service writes only in the trees where
  data lives (FHS 3.0: /var, /run, /tmp, /srv, /home, /media, /mnt) and
  in the kernel's virtual file systems (/dev, /proc, /sys). Everything
  else (/etc, /usr, /boot, /efi, /root, /opt, the /bin, /lib and /sbin
  links, a top-level directory a site adds) is read-only to it, so
  /etc's configuration, every program, library, hook and unit file, and
  the boot chain need no list. This is systemd's ProtectSystem=full
  (systemd.exec(5)), for every service at once and with /opt and /root.
- Inside the data trees, the few places that a program with power reads
  as instructions are taken back one by one (INSTRUCTIONS below, each with
  its reader and the man page that says so); the kernel's settings in
  /proc and /sys and the raw devices are the role template's own rules.
- The directories above each of those are not renamed, removed or
  re-created by a service: AppArmor checks a rename against the names of
  the object renamed, not of what is inside it (security/apparmor/lsm.c,
  apparmor_path_rename), so renaming /run/systemd away, writing under the
  new name and renaming it back would otherwise reach /run/systemd/system.

Only the standard library: debian/rules renders with Debian's python3.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

# The top-level trees where a service may write (FHS 3.0 chapters 3.5, 3.12,
# 3.15, 3.17, 3.18, 5 and the kernel's virtual file systems).
DATA_ROOTS = ("dev", "home", "media", "mnt", "proc", "run", "srv", "sys", "tmp", "var")


@dataclass(frozen=True)
class Instructions:
    """A subtree of the data trees that a program with power reads as instructions."""

    path: str       # an AppArmor path pattern, a directory ending in "/" or a file
    reader: str     # who reads it, and the man page or source that says so

    @property
    def rule(self) -> str:
        """The pattern covering the path and, for a directory, all below it."""
        return f"{self.path}{{,**}}" if self.path.endswith("/") else self.path


INSTRUCTIONS = (
    # /run: runtime configuration, read before /etc's by each loader.
    Instructions("/run/*.d/", "systemd-tmpfiles, -sysctl, -modules-load, -binfmt, -sysusers, kmod's"
                 " modprobe and depmod: tmpfiles.d(5), sysctl.d(5), modules-load.d(5), binfmt.d(5),"
                 " sysusers.d(5), modprobe.d(5), depmod.d(5)"),
    Instructions("/run/systemd/system{,.control,.attached}/", "PID 1: units and drop-ins (systemd.unit(5), unit load path)"),
    Instructions("/run/systemd/user{,.control}/", "users' service managers: units (systemd.unit(5))"),
    Instructions("/run/systemd/transient/", "PID 1: transient units (systemd.unit(5))"),
    Instructions("/run/systemd/generator{,.early,.late}/", "PID 1: generators' output (systemd.generator(7))"),
    Instructions("/run/systemd/*.conf.d/", "PID 1, journald, logind and the other daemons:"
                 " drop-ins (systemd-system.conf(5), systemd.syntax(7))"),
    Instructions("/run/systemd/network/", "systemd-networkd and -udevd's link files (systemd.network(5))"),
    Instructions("/run/udev/", "udevd: rules (udev(7), /run/udev/rules.d) and the device database,"
                 " whose SYSTEMD_WANTS= PID 1 starts units from (systemd.device(5))"),
    Instructions("/run/initramfs/", "systemd-shutdown: execs /run/initramfs/shutdown as PID 1 at"
                 " shutdown (systemd-shutdown(8))"),
    Instructions("/run/sudo/", "sudo: timestamps that waive the password (sudoers(5), timestamp_type)"),
    # /var: package management's state and downloads, and state PID 1 acts on.
    Instructions("/var/lib/dpkg/", "dpkg: the package database and maintainer scripts (dpkg(1), FILES)"),
    Instructions("/var/lib/apt/", "apt: package lists, trusted once verified (apt-secure(8))"),
    Instructions("/var/cache/apt/", "apt and unattended-upgrades: downloaded packages, installed as found"
                 " (apt.conf(5), Dir::Cache::archives)"),
    Instructions("/var/cache/debconf/", "maintainer scripts: debconf's answers (debconf(7))"),
    Instructions("/var/lib/ucf/", "ucf: configuration file hashes (ucf(1))"),
    Instructions("/var/lib/dkms/", "dkms, run by package management: module sources it builds and"
                 " installs (dkms(8))"),
    Instructions("/var/lib/polkit-1/", "polkitd: local authority rules that grant privileged D-Bus"
                 " calls (pklocalauthority(8))"),
    Instructions("/var/lib/systemd/linger/", "logind and PID 1: users whose service manager starts at"
                 " boot (loginctl(1), enable-linger)"),
    Instructions("/var/cache/apparmor/", "apparmor_parser: the policy cache it loads (apparmor_parser(8))"),
)


def ancestors(patterns: Iterable[str]) -> list[str]:
    """The literal directories above each pattern, "/" excluded, outermost first ("/run/systemd/")."""
    found: list[str] = []
    for pattern in patterns:
        parts = PurePosixPath(pattern).parts[1:-1]     # the leading "/" and the last name dropped
        for depth in range(1, len(parts) + 1):
            if any(c in part for part in parts[:depth] for c in "*?[{"):
                break
            directory = "/" + "/".join(parts[:depth]) + "/"
            if directory not in found:
                found.append(directory)
    return found


def not_one_of(names: Iterable[str]) -> list[str]:
    """AppArmor globs that match every path component (no "/") except the given names.

    AppArmor's globs have no negation but a negated character class, so the
    complement of a finite set of names is spelled out over the trie of those
    names: at each prefix, any character that continues no name ("prefix[^..]*"),
    and the prefix itself where it is not a name.
    """
    unique = sorted(set(names))
    if not unique or any(not n or "/" in n for n in unique):
        raise ValueError(f"names must be non-empty path components: {unique!r}")
    names = unique
    globs = []
    prefixes = sorted({n[:i] for n in names for i in range(len(n) + 1)})
    for prefix in prefixes:
        following = sorted({n[len(prefix)] for n in names if n.startswith(prefix) and len(n) > len(prefix)})
        globs.append(f"{prefix}[^/{''.join(following)}]*" if following else f"{prefix}?*")
        if prefix and prefix not in names:
            globs.append(prefix)
    return globs


def outside_data_roots() -> str:
    """One pattern for every top-level entry but the data roots, and all below it."""
    return "/{" + ",".join(not_one_of(DATA_ROOTS)) + "}{,/**}"


def all_but(directory: str, kept: str) -> str:
    """A pattern for the directory, and all below it, but one path below it and what that holds.

    all_but("/sys/kernel/", "security/apparmor/.access"): the kernel's settings
    without AppArmor's query interface, which dbus-daemon writes its questions
    to. Built from not_one_of, one level at a time.
    """
    if not directory.endswith("/") or kept.startswith("/") or not kept:
        raise ValueError(f"all_but({directory!r}, {kept!r}): a directory ending in / and a relative path")
    alternatives, prefix = [""], directory
    for name in kept.split("/"):
        alternatives.append(prefix.removeprefix(directory) + "{" + ",".join(not_one_of([name])) + "}{,/**}")
        prefix += name + "/"
    return directory + "{" + ",".join(alternatives) + "}"
