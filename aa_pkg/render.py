"""Render the shipped files from aa_pkg/templates into a package tree.

This is the single source of every file the .deb ships: debian/rules calls it
(`python3 -m aa_pkg render`) and so does `aa-pkg build`, through debian/rules.
It needs only jinja2 and the standard library, because debian/rules runs it
with Debian's python3 and the packages listed in Build-Depends.
"""

from __future__ import annotations

import email.utils
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from aa_pkg import findings, integrity, settings
from aa_pkg.config import DEFAULT_PROFILE, NOT_POLICY_FILES, Config, SitePolicy

TEMPLATES = Path(__file__).parent / "templates"
KERNEL_PARAMETER = "aa_fullsystem"  # our own escape hatch; the same in every site variant


@dataclass(frozen=True)
class Paths:
    """Where things live on the target system, derived from the package and profile names."""

    package: str
    profile: str = DEFAULT_PROFILE

    @property
    def share(self) -> PurePosixPath:
        return PurePosixPath("/usr/share") / self.package

    @property
    def etc(self) -> PurePosixPath:
        return PurePosixPath("/etc") / self.package

    @property
    def state(self) -> PurePosixPath:
        return self.etc / "state"

    @property
    def defaults(self) -> PurePosixPath:
        return self.share / "defaults"

    @property
    def functions(self) -> PurePosixPath:
        return self.share / "functions"

    @property
    def one_set_check(self) -> PurePosixPath:
        # A perl program: whether compiled policy files can be one write
        # (initramfs/one-set-check.pl.j2).
        return self.share / "one-set-check"

    @property
    def json_string(self) -> PurePosixPath:
        # An awk program: its input as one JSON string (cli/json-string.awk.j2).
        return self.share / "json-string"

    @property
    def audit_reader(self) -> PurePosixPath:
        # An awk program: AppArmor's audit records in kernel log text, as
        # tab-separated fields (cli/audit-records.awk.j2).
        return self.share / "audit-records"

    @property
    def stub_profile(self) -> PurePosixPath:
        return self.share / "init-stub"

    @property
    def full_profile(self) -> PurePosixPath:
        return PurePosixPath("/etc/apparmor.d") / self.profile

    @property
    def init_abi(self) -> PurePosixPath:
        # Found by `abi <abi/NAME>,` through the parser's include search
        # path, which starts at /etc/apparmor.d (apparmor.d(5), "abi").
        return PurePosixPath("/etc/apparmor.d/abi") / self.package

    @property
    def levels(self) -> PurePosixPath:
        # The rules of each level, as shipped; aa-fullsystem copies the
        # configured one to level_init and level_roles.
        return self.share / "levels"

    @property
    def level_dir(self) -> PurePosixPath:
        # Inside /etc/apparmor.d, so the full profile finds the copies on the
        # parser's include path (`include <DIR/NAME>`, apparmor.d(5)), at
        # build time too (aa_pkg.check). A directory: apparmor.service loads
        # the files of /etc/apparmor.d, not of its subdirectories.
        return PurePosixPath("/etc/apparmor.d") / f"{self.package}.d"

    @property
    def level_init(self) -> PurePosixPath:
        return self.level_dir / "init-exec"

    @property
    def level_roles(self) -> PurePosixPath:
        return self.level_dir / "roles"

    @property
    def disable_link(self) -> PurePosixPath:
        # apparmor.service skips a profile with a link of its name here
        # (aa-disable(8)); the postrm makes one on remove, for the full
        # profile dpkg keeps as a conffile.
        return PurePosixPath("/etc/apparmor.d/disable") / self.profile

    @property
    def removed_marker(self) -> PurePosixPath:
        # That the disable link is the postrm's, not the admin's.
        return self.last_good.parent / "removed"

    @property
    def built_digests(self) -> PurePosixPath:
        # The digest of the policy each kernel's initramfs was built from
        # (aafs_policy_digest), one file per kernel version, written by the
        # hook: 'aa-fullsystem status' says which initramfs is stale.
        return self.last_good.parent / "initramfs"

    @property
    def pam_config(self) -> PurePosixPath:
        # pam-auth-update(8)'s profiles: our pam_apparmor line, enabled by
        # aa-fullsystem at the hardened level only.
        return PurePosixPath("/usr/share/pam-configs") / self.package

    @property
    def local_init(self) -> PurePosixPath:
        return PurePosixPath("/etc/apparmor.d/local") / self.profile

    @property
    def force_complain(self) -> PurePosixPath:
        # apparmor_parser loads a profile in complain mode when a file of the
        # same name exists here (apparmor.d(5), "force-complain").
        return PurePosixPath("/etc/apparmor.d/force-complain") / self.profile

    @property
    def vendor_policy(self) -> PurePosixPath:
        return self.share / "policy.d"

    @property
    def admin_policy(self) -> PurePosixPath:
        return self.etc / "policy.d"

    @property
    def hook(self) -> PurePosixPath:
        return PurePosixPath("/usr/share/initramfs-tools/hooks") / self.package

    @property
    def boot_script(self) -> PurePosixPath:
        return PurePosixPath("/usr/share/initramfs-tools/scripts/init-bottom") / self.package

    @property
    def systemd_unit(self) -> PurePosixPath:
        # A link to /dev/null: the sysvinit script's job is apparmor.service's
        # under systemd (see debian/sysvinit-script.sh.j2).
        return PurePosixPath("/usr/lib/systemd/system") / f"{self.package}.service"

    @property
    def initramfs_builder(self) -> PurePosixPath:
        # What both generators' adapters (the hook, the dracut module) source.
        return self.share / "initramfs-build"

    @property
    def dracut_module(self) -> PurePosixPath:
        # dracut.modules(7): modules.d/NNname; the number only orders the
        # modules' install(), and the hook's own number orders the hooks.
        return PurePosixPath("/usr/lib/dracut/modules.d") / f"90{self.package}"

    @property
    def dracut_hook_name(self) -> str:
        return f"{self.package}-load.sh"

    @property
    def last_good(self) -> PurePosixPath:
        # The policy the hook last shipped after it compiled: what goes into
        # the next initramfs when the configured policy no longer compiles
        # (an upgrade's new full profile, an admin's typo). Variable state,
        # hence /var/lib (FHS 5.8); removed on purge.
        return PurePosixPath("/var/lib") / self.package / "last-good"

    @property
    def compiled_policy(self) -> PurePosixPath:
        # What a build of the initramfs makes from its input (the shipped
        # profiles, and `early all`'s compiled policy), kept under a key of
        # everything it follows from: a build whose inputs did not change
        # copies it instead of checking and compiling again. Data
        # the hook can always make again, hence /var/cache (FHS 5.5);
        # removed on purge.
        return PurePosixPath("/var/cache") / self.package / "compiled"

    @property
    def compiled_objects(self) -> PurePosixPath:
        # Each installed policy file compiled alone, under a key of what its
        # binary follows from: a build whose input changed compiles only
        # the files with no binary for their content. /var/cache, as above.
        return PurePosixPath("/var/cache") / self.package / "objects"

    @property
    def initramfs_dir(self) -> PurePosixPath:
        # Our files inside the initramfs image.
        return PurePosixPath("/usr/lib") / self.package

    @property
    def attach_probe(self) -> PurePosixPath:
        # Shipped where the initramfs holds it: copied there unchanged.
        return self.initramfs_dir / "attach-probe"

    @property
    def boot_record(self) -> PurePosixPath:
        # initramfs-tools moves /run into the real root before exec'ing init,
        # so this survives into the running system (initramfs-tools(7)).
        return PurePosixPath("/run") / self.package / "boot"


@dataclass(frozen=True)
class Roles:
    """The profiles of the hardened level's roles, named after init's profile."""

    profile: str

    @property
    def service(self) -> str:
        return f"{self.profile}-service"

    @property
    def system(self) -> str:
        return f"{self.profile}-system"

    @property
    def admin(self) -> str:
        return f"{self.profile}-admin"

    @property
    def pkg(self) -> str:
        return f"{self.profile}-pkg"

    @property
    def kernel(self) -> str:
        return f"{self.profile}-kernel"

    @property
    def powered(self) -> tuple[str, ...]:
        """The roles with power, each with all of init's rights."""
        return (self.system, self.admin, self.pkg, self.kernel)

    def purpose(self) -> dict[str, str]:
        return {
            self.system: "PID 1's machinery: generators, shutdown, and the helpers that mount, check, load and configure the system.",
            self.admin: "The administrator: sessions started by getty, sshd and systemd's rescue shells.",
            self.pkg: "Package management run by the system: apt-daily and unattended-upgrades.",
            self.kernel: ("The kernel's own helpers (call_usermodehelper): programs the kernel executes by"
                          " itself, with its own credentials, whose label is unconfined; from an unconfined"
                          " task an exec enters the profile attached to the program's path, this one."),
        }


# What init's profile attaches to: init (PID 1), systemd's or sysvinit's,
# by the path the kernel resolves (AppArmor attaches by it; /lib and /sbin
# are links into /usr since Debian 12's merged /usr, so a resolved path
# never starts with them). Two alternatives, neither the tail of the other:
# apparmor 4.1.8's parser (Debian 14) compiles an attachment whose
# alternatives match one path at different lengths, such as the
# /{,usr/}{lib/systemd/systemd,sbin/init} this package used to ship, into
# one that attaches to nothing, and PID 1 stayed unconfined (file rules of
# that shape compile correctly). The boot script checks that init attaches.
INIT_ATTACHMENT = "/usr/{lib/systemd/systemd,sbin/init}"


# The programs Debian's kernels execute on their own (call_usermodehelper),
# by resolved path: modprobe for module autoloading (/proc/sys/kernel/modprobe,
# /sbin/modprobe, kmod's), systemd-coredump as kernel.core_pattern's pipe,
# request-key for the key retention service (/sbin/request-key, keyutils),
# and the poweroff and reboot commands of orderly_poweroff() and
# orderly_reboot() (/sbin/poweroff and /sbin/reboot: systemctl under
# systemd, halt under sysvinit). Each must attach: alternatives, none the
# tail of another (see INIT_ATTACHMENT).
KERNEL_HELPERS = (
    "/usr/bin/kmod",
    "/usr/bin/systemctl",
    "/usr/lib/systemd/systemd-coredump",
    "/usr/sbin/halt",
    "/usr/sbin/request-key",
)


def loses_ties(path: str) -> str:
    """An attachment for PATH that any other profile naming PATH outranks.

    Two profiles whose attachments match an exec equally well are a conflict,
    and the kernel then attaches neither (security/apparmor/domain.c,
    find_attach, "Match is equivalent, so conflict"): a site profile for
    /usr/bin/kmod would leave the kernel's own modprobe, which starts
    unconfined, unconfined. The kernel ranks a match by the characters matched
    before the first loop in the attachment's DFA (match.c, leftmatch_fb), so
    "/usr/bin/km*d" ranks 11 where a literal "/usr/bin/kmod" ranks 13: the
    "*" takes the second-to-last character, and so loops on it. It must
    differ from the last, or "*" and the literal consume it together and
    there is no loop. The wider match stays under /usr: no service writes
    there at the hardened level, and at the standard level a service has
    init's rights, which the kernel role does not exceed.
    """
    if len(path) < 3 or path[-2] == path[-1] or "/" in path[-2:]:
        raise ValueError(f"{path}: no tie-losing attachment (the last two characters must differ)")
    return path[:-2] + "*" + path[-1]


KERNEL_HELPER_ATTACHMENT = "/usr/{" + ",".join(loses_ties(p).removeprefix("/usr/") for p in KERNEL_HELPERS) + "}"


# Who runs in a role with power in the hardened level (level-hardened-init):
# literal, resolved paths, for bookworm (systemd 252) and trixie (257).
SYSTEM_PROGRAMS = (
    *(f"/usr/lib/systemd/system-generators/systemd-{name}-generator" for name in (
        "bless-boot", "cryptsetup", "debug", "factory-reset", "fstab", "getty", "gpt-auto",
        "hibernate-resume", "import", "integritysetup", "rc-local", "run", "ssh", "system-update",
        "sysv", "tpm2", "veritysetup")),
    "/usr/lib/systemd/systemd-shutdown",
    "/usr/lib/systemd/systemd-modules-load",
    "/usr/lib/systemd/systemd-sysctl",
    "/usr/lib/systemd/systemd-binfmt",
    "/usr/lib/systemd/systemd-fsck",
    "/usr/lib/systemd/systemd-remount-fs",
    "/usr/lib/systemd/systemd-growfs",
    "/usr/lib/systemd/systemd-makefs",
    "/usr/lib/systemd/systemd-cryptsetup",
    "/usr/lib/systemd/systemd-quotacheck",
    "/usr/lib/systemd/systemd-random-seed",
    "/usr/lib/systemd/systemd-user-runtime-dir",
    "/usr/lib/systemd/systemd-update-done",
    "/usr/bin/systemd-tmpfiles",
    "/usr/bin/systemd-sysusers",
    "/usr/bin/systemd-hwdb",
    "/usr/bin/systemd-machine-id-setup",
    "/usr/bin/udevadm",
    "/usr/bin/kmod",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/sbin/swapon",
    "/usr/sbin/swapoff",
    "/usr/sbin/fsck",
    "/usr/sbin/e2fsck",
    "/usr/sbin/ldconfig",
    "/usr/lib/apparmor/apparmor.systemd",
    "/usr/sbin/apparmor_parser",
    # Debian's services whose work is a protected operation, whichever unit
    # or udev rule starts them: assembling storage from raw block devices
    # and device-mapper (lvm2's lvm, dmeventd and lvmpolld; mdadm and mdmon;
    # multipathd), reading a disk's SMART data (smartd), flashing firmware
    # (fwupd), loading a crash kernel (kdump-tools), configuring the system
    # from its cloud's data (cloud-init), and running guests or containers,
    # which load AppArmor profiles of their own (libvirt, Docker,
    # containerd). A path the system does not have matches nothing.
    "/usr/sbin/lvm",
    "/usr/sbin/dmeventd",
    "/usr/sbin/lvmpolld",
    "/usr/sbin/mdadm",
    "/usr/sbin/mdmon",
    "/usr/sbin/multipathd",
    "/usr/sbin/smartd",
    "/usr/lib/fwupd/fwupd",
    "/usr/libexec/fwupd/fwupd",
    "/usr/sbin/kdump-config",
    "/usr/bin/cloud-init",
    "/usr/sbin/libvirtd",
    "/usr/sbin/virtqemud",
    "/usr/sbin/dockerd",
    "/usr/bin/containerd",
)
ADMIN_PROGRAMS = (
    "/usr/sbin/agetty",
    "/usr/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/systemd/systemd-sulogin-shell",
    "/usr/sbin/sulogin",
)
PKG_PROGRAMS = ("/usr/lib/apt/apt.systemd.daily",)


@dataclass(frozen=True)
class Shipped:
    template: str
    destination: PurePosixPath
    mode: int


def shipped_files(paths: Paths) -> list[Shipped]:
    """Every file in the binary package, with its mode. Directories follow from these."""
    return [
        Shipped("initramfs/initramfs-tools-hook.sh.j2", paths.hook, 0o755),
        Shipped("boot/load-policy.sh.j2", paths.boot_script, 0o755),
        Shipped("boot/attach-probe.sh.j2", paths.attach_probe, 0o755),
        Shipped("initramfs/build.sh.j2", paths.initramfs_builder, 0o644),
        Shipped("initramfs/dracut-module-setup.sh.j2", paths.dracut_module / "module-setup.sh", 0o755),
        Shipped("boot/dracut-pre-pivot.sh.j2", paths.dracut_module / paths.dracut_hook_name, 0o755),
        Shipped("shared/functions.sh.j2", paths.functions, 0o644),
        Shipped("cli/audit-records.awk.j2", paths.audit_reader, 0o644),
        Shipped("cli/json-string.awk.j2", paths.json_string, 0o644),
        Shipped("initramfs/one-set-check.pl.j2", paths.one_set_check, 0o644),
        Shipped("shared/defaults.j2", paths.defaults, 0o644),
        Shipped("policy/pam-auth-update.j2", paths.pam_config, 0o644),
        Shipped("policy/pid1-stub.apparmor.j2", paths.stub_profile, 0o644),
        Shipped("policy/pid1-full.apparmor.j2", paths.full_profile, 0o644),
        Shipped("policy/pid1.abi.j2", paths.init_abi, 0o644),
        Shipped("policy/level-standard-pid1.apparmor.j2", paths.levels / "standard.init", 0o644),
        Shipped("policy/level-hardened-pid1.apparmor.j2", paths.levels / "hardened.init", 0o644),
        Shipped("policy/roles-enforce.apparmor.j2", paths.levels / "roles-enforce", 0o644),
        Shipped("policy/roles-complain.apparmor.j2", paths.levels / "roles-complain", 0o644),
        Shipped("cli/aa-fullsystem.sh.j2", PurePosixPath("/usr/sbin/aa-fullsystem"), 0o755),
        Shipped("cli/aa-fullsystem.8.j2", PurePosixPath("/usr/share/man/man8/aa-fullsystem.8"), 0o644),
    ]


# Maintainer scripts go into debian/<package>.<name>, where dh_installdeb adds
# the debhelper snippets and installs them into the control area, as it does
# with the triggers file; dh_installinit installs debian/<package>.init as
# the sysvinit script. Template (under templates/debian/) and name.
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
CONTROL_FILES = {"triggers.j2": "triggers", "sysvinit-script.sh.j2": "init"}


def shquote(value: Any) -> str:
    return shlex.quote(str(value))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = shquote
    return env


def context(config: Config) -> dict[str, Any]:
    paths = Paths(config.package, config.profile_name)
    return {
        "package": config.package,
        "profile": config.profile_name,
        "stage": str(config.stage),
        "mode": str(config.mode),
        "paths": paths,
        "kernel_parameter": KERNEL_PARAMETER,
        "init_attachment": INIT_ATTACHMENT,
        "not_policy_files": NOT_POLICY_FILES,
        "roles": Roles(config.profile_name),
        "role_purpose": Roles(config.profile_name).purpose(),
        "powered_roles": Roles(config.profile_name).powered,
        "kernel_helper_attachment": KERNEL_HELPER_ATTACHMENT,
        "data_roots": integrity.DATA_ROOTS,
        "outside_data_roots": integrity.outside_data_roots(),
        "kernel_settings": integrity.all_but("/sys/kernel/", "security/apparmor/.access"),
        "instructions": integrity.INSTRUCTIONS,
        # The data roots have a rule of their own.
        "instruction_ancestors": [directory for directory in integrity.ancestors(i.path for i in integrity.INSTRUCTIONS)
                                  if directory.count("/") > 2],
        "system_programs": SYSTEM_PROGRAMS,
        "admin_programs": ADMIN_PROGRAMS,
        "pkg_programs": PKG_PROGRAMS,
        "extra_profiles": [p.name for p in config.extra_profiles],
        "settings": settings.SETTINGS,
        "setting": {s.key: s for s in settings.SETTINGS},
        "full_stage": settings.FULL,
        "record_keys": settings.BOOT_RECORD_KEYS,
        "findings": findings.FINDINGS,
    }


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def render_package(config: Config, tree: Path, debian_dir: Path) -> None:
    """Write the installed tree under `tree` and the maintainer scripts into `debian_dir`."""
    env = environment()
    values = context(config)
    paths: Paths = values["paths"]
    for shipped in shipped_files(paths):
        text = env.get_template(shipped.template).render(values)
        _write(tree / shipped.destination.relative_to("/"), text, shipped.mode)
    for profile in config.extra_profiles:
        _write(tree / paths.vendor_policy.relative_to("/") / profile.name, profile.read_text(), 0o644)
    masked = tree / paths.systemd_unit.relative_to("/")
    masked.parent.mkdir(parents=True, exist_ok=True)
    masked.unlink(missing_ok=True)
    masked.symlink_to("/dev/null")
    # The plugin directories ship even when empty: other packages and the
    # admin drop profiles there (see the policy.d section of aa-fullsystem(8)).
    for directory in (paths.vendor_policy, paths.admin_policy):
        (tree / directory.relative_to("/")).mkdir(parents=True, exist_ok=True)
    for script in MAINTAINER_SCRIPTS:
        text = env.get_template(f"debian/{script}.sh.j2").render(values)
        _write(debian_dir / f"{config.package}.{script}", text, 0o755)
    for template, name in CONTROL_FILES.items():
        _write(debian_dir / f"{config.package}.{name}", env.get_template(f"debian/{template}").render(values), 0o644)


# The source tree of a site policy package, besides debian/control and
# debian/changelog (aa_pkg.metadata): template, path in the source, mode.
SITE_POLICY_SOURCE = (
    Shipped("site-policy/rules.j2", PurePosixPath("debian/rules"), 0o755),
    Shipped("site-policy/install.j2", PurePosixPath("debian/install"), 0o644),
    Shipped("site-policy/copyright.j2", PurePosixPath("debian/copyright"), 0o644),
    Shipped("site-policy/format.j2", PurePosixPath("debian/source/format"), 0o644),
)
SITE_POLICY_PROFILES = "profiles"  # where the profiles sit in that source


def site_policy_context(site: SitePolicy) -> dict[str, Any]:
    # aa_pkg.metadata.complete_site_policy fills these in from debian/.
    assert site.maintainer is not None and site.date is not None, "site policy settings not completed"
    return {
        "package": site.package,
        "depends_on": site.depends_on,
        "policy_dir": Paths(site.depends_on).vendor_policy,
        "profiles": [p.name for p in site.profiles],
        "profiles_dir": SITE_POLICY_PROFILES,
        "year": site.date.year,
        "holder": email.utils.parseaddr(site.maintainer)[0],
    }


def render_site_policy(site: SitePolicy, source: Path) -> None:
    """Write the generated source of a site policy package (but its control and changelog) under `source`."""
    env = environment()
    values = site_policy_context(site)
    for generated in SITE_POLICY_SOURCE:
        _write(source / generated.destination, env.get_template(generated.template).render(values), generated.mode)
    for profile in site.profiles:
        target = source / SITE_POLICY_PROFILES / profile.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(profile, target)  # the bytes as written: the parser checked these
        target.chmod(0o644)  # dh_install keeps the mode; policy files are data (Debian Policy 10.9)
