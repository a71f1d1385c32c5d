"""The real package in a real boot: what PID 1 and its children run under.

Every test installs the .deb built by `aa-pkg build` (the `built_deb`
fixture) with apt-get into a fresh Debian guest (tests/vm.py), so the
package's own dpkg trigger builds the initramfs, and then boots it under
qemu.  Boots are the expensive part, so each machine serves several checks:

machine "stub" (module fixture, one per suite; default stage stub/complain)
    boot 1  PID 1, the boot record, no unconfined process, `aa-fullsystem
            status`, the initramfs contents and the FIGURES (initrd sizes
            with and without the package, this boot's times; the boot
            without the package is tools/bench-boot's), a service with a
            profile of its own and one without; no_new_privs services: one
            enters its own profile (the stack), one whose site rule is a Px
            is refused it by the kernel and named by status; the sysvinit
            script's unit masked; the kernel holds the full profile
            apparmor.service put in the stub's place
    boot 2  an escape hatch: apparmor=0 on bookworm, aa_fullsystem=0 (the
            README's other spelling of =off) on trixie
machine "broken" (stage full, complain)
    a profile that does not compile is refused by `aa-fullsystem stage`,
    `mode`, `level` and `check`, and by update-initramfs, which keeps the previous initramfs, or for a kernel
    without one (a new kernel) builds one without init's full profile
    boot    (trixie) the new kernel's initramfs: the stub, and the record
            says why
    (That the machine boots under the last full profile that compiled, and
    status says so, is test_lifecycle's boot 5, where a package upgrade
    brings the broken profile: the same initramfs, the same boot.)
machine "enforce" (stage full, mode enforce; on trixie with a second,
older kernel while the two commands run: both rebuild every installed
kernel's initramfs, and status reads each as full)
    boot 1  PID 1 in enforce mode and not one apparmor="DENIED" line
    boot 2  apparmor.service masked, so the kernel shows what the
            initramfs alone loaded: the full profile and its roles, enforced
    then, each on one suite (ONE_SUITE_EACH):
            with aa_fullsystem=stub the stub alone; with
            aa_fullsystem=complain the full profile in complain mode
            (apparmor.service masked too); the boot script's fallbacks,
            each caused by files put on top of the initrd: a full profile
            the parser refuses (the stub, and of two site profiles the one
            that loads), the stub refused too (PID 1 unconfined), no
            securityfs (PID 1 unconfined); the boot goes on and the record
            says why
machine "variant" (trixie: a site variant declaring full and enforce)
    boot 1  PID 1 under the variant's profile, enforced from the initramfs

The chroot preparation happens before a machine's first boot: after it the
disk image is the machine and the chroot is gone (see tests/vm.py).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (DENIALS, FULL_PROFILE, INITRAMFS_DIR, LAST_GOOD, PROFILE, REPORT, STATE, chroot_text,
                        count_every_denial, drop_stale_root, initramfs_file, initrd_with, lsinitramfs,
                        new_machine, processes, report, runs_cleanly, sha256, unconfined_since_init, unit_facts,
                        where)
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (DENIALS, FULL_PROFILE, INITRAMFS_DIR, LAST_GOOD, PROFILE, REPORT, STATE, chroot_text,
                       count_every_denial, drop_stale_root, initramfs_file, initrd_with, lsinitramfs,
                       new_machine, processes, report, runs_cleanly, sha256, unconfined_since_init, unit_facts,
                       where)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

# A program with a profile of its own, run as a service: a copy of sleep,
# so that no other profile can claim it by path.
PROBE_SVC = "aafs-probe-svc"
PROBE_SVC_BIN = f"/usr/local/bin/{PROBE_SVC}"
PROBE_SVC_PROFILE = f"""\
abi <abi/3.0>,
include <tunables/global>

# Test profile of tests/test_boot.py: complain mode, so it never gets in the
# way; what matters is that the service runs under it.
profile {PROBE_SVC} {PROBE_SVC_BIN} flags=(complain) {{
  /** rmix,
}}
"""
PROBE_SVC_UNIT = f"""\
[Unit]
Description=aafs test: a program with its own AppArmor profile

[Service]
ExecStart={PROBE_SVC_BIN} infinity

[Install]
WantedBy=multi-user.target
"""
# A program without a profile, run as a service: it must stay under init's.
PROBE_PLAIN = "aafs-probe-plain"
PROBE_PLAIN_UNIT = """\
[Unit]
Description=aafs test: a program without a profile of its own

[Service]
ExecStart=/usr/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""

# A program with a profile of its own, run with no_new_privs: under NNP the
# kernel allows only a transition whose label keeps the old one, which the
# stacked transition of init's profile (Pix -> &init) is, so it enters its
# own profile as any other service does.
PROBE_NNP = "aafs-probe-nnp"
PROBE_NNP_BIN = f"/usr/local/bin/{PROBE_NNP}"
PROBE_NNP_PROFILE = PROBE_SVC_PROFILE.replace(PROBE_SVC, PROBE_NNP)
PROBE_NNP_UNIT = PROBE_SVC_UNIT.replace(PROBE_SVC, PROBE_NNP).replace(
    "[Service]\n", "[Service]\nNoNewPrivileges=yes\n")
# One that init's profile sends to its own profile *without* the stack: the
# site rule the README gives for a role (`PROGRAM Px -> PROFILE,` in
# local/fullsystem-init). Under NNP the kernel refuses that transition and
# logs it (info="no new privs"); in complain mode the program runs on under
# init's profile. status must name it: the kernel's record is the source.
PROBE_NNP_PX = "aafs-probe-nnp-px"
PROBE_NNP_PX_BIN = f"/usr/local/bin/{PROBE_NNP_PX}"
PROBE_NNP_PX_PROFILE = PROBE_SVC_PROFILE.replace(PROBE_SVC, PROBE_NNP_PX)
PROBE_NNP_PX_UNIT = PROBE_NNP_UNIT.replace(PROBE_NNP, PROBE_NNP_PX)
PROBE_NNP_PX_RULE = f"{PROBE_NNP_PX_BIN} Px -> {PROBE_NNP_PX},\n"

# The sysvinit script's unit (README, sysvinit): the package masks it, so
# systemd never generates one from /etc/init.d. systemd's own answer.
SYSV_UNIT = "apparmor-fullsystem.service"
MASKED_UNIT = rf"""
echo "@@ sysv_script=$(test -x /etc/init.d/apparmor-fullsystem && echo present)"
echo "@@ sysv_unit.load=$(systemctl show -P LoadState {SYSV_UNIT} 2>&1)"
echo "@@ sysv_unit.active=$(systemctl show -P ActiveState {SYSV_UNIT} 2>&1)"
"""

# ---------------------------------------------------------------------------
# The stub machine: boots 1 to 3.

@dataclass
class StubMachine:
    machine: vm.Machine
    initrd_base: int
    initrd_pkg: int
    initramfs_listing: str
    init_bottom_order: str              # the initramfs's scripts/init-bottom/ORDER
    first: vm.Boot | None = None
    first_error: str = ""
    extra: dict[str, vm.Boot] = field(default_factory=dict)


@pytest.fixture(scope="module", params=vm.SUITES)
def stub(request, built_deb, tmp_path_factory) -> StubMachine:
    """Package installed as shipped (stage stub), two probe services, booted once."""
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    suite = request.param
    machine = vm.Machine.create(suite, tmp_path_factory.mktemp(f"stub-{suite}") / "machine")
    initrd_base = machine.initrd_size()
    machine.install_debs([built_deb])
    initrd_pkg = machine.initrd_size()
    listing = lsinitramfs(machine)
    bottom_order = initramfs_file(machine, "ORDER", under="scripts/init-bottom").decode()

    # Services whose program has its own profile (one with no_new_privs),
    # and one whose has none.
    root = machine.root
    units = root / "etc/systemd/system"
    for name, binary, profile, unit in ((PROBE_SVC, PROBE_SVC_BIN, PROBE_SVC_PROFILE, PROBE_SVC_UNIT),
                                        (PROBE_NNP, PROBE_NNP_BIN, PROBE_NNP_PROFILE, PROBE_NNP_UNIT),
                                        (PROBE_NNP_PX, PROBE_NNP_PX_BIN, PROBE_NNP_PX_PROFILE,
                                         PROBE_NNP_PX_UNIT)):
        shutil.copy2(root / "usr/bin/sleep", root / binary.lstrip("/"))
        (root / "etc/apparmor.d" / name).write_text(profile)
        (units / f"{name}.service").write_text(unit)
        # The profile compiles (apparmor.service would skip it otherwise).
        machine.chroot_run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "-Q",
                            f"/etc/apparmor.d/{name}"])
    with (root / "etc/apparmor.d/local" / PROFILE).open("a") as local:
        local.write(PROBE_NNP_PX_RULE)
    (units / f"{PROBE_PLAIN}.service").write_text(PROBE_PLAIN_UNIT)
    # Every record printed: the no_new_privs refusal comes amid the boot's
    # ALLOWED records, which the kernel's rate limit would thin out.
    count_every_denial(root)
    machine.chroot_run(["systemctl", "enable", f"{PROBE_SVC}.service", f"{PROBE_NNP}.service",
                        f"{PROBE_NNP_PX}.service", f"{PROBE_PLAIN}.service"])

    services = unit_facts(PROBE_SVC, PROBE_NNP, PROBE_NNP_PX, PROBE_PLAIN) + MASKED_UNIT
    result = StubMachine(machine, initrd_base, initrd_pkg, listing, bottom_order)
    try:
        # The no_new_privs probe's exec at boot may come before
        # apparmor.service loads its profile (no transition is tried, it
        # stays under init's). One more exec, with its profile loaded, shows
        # the transition NNP allows.
        restart_nnp = f"systemctl restart {PROBE_NNP}.service {PROBE_NNP_PX}.service\n"
        result.first = machine.boot(script=restart_nnp + REPORT + services + DENIALS + LOADED_PROFILES)
    except vm.BootError as e:
        # Reported by every test that needs this boot, with the serial log.
        result.first_error = str(e)
    drop_stale_root(machine)
    return result


def first_boot(stub: StubMachine) -> vm.Boot:
    if stub.first is None:
        pytest.fail(f"the first boot of the stub machine failed: {stub.first_error}")
    return stub.first


def test_stub_boot_confines_init_and_everything_it_starts(stub):
    """1. Normal boot: PID 1 under the stub's name, the record, no unconfined process."""
    suite = stub.machine.suite

    # The initramfs holds our boot script, the parser and the policy.
    for name in ("scripts/init-bottom/apparmor-fullsystem", "usr/sbin/apparmor_parser",
                 f"{INITRAMFS_DIR}/boot.conf", f"{INITRAMFS_DIR}/init-stub"):
        assert re.search(rf"^{re.escape(name)}$", stub.initramfs_listing, re.M), \
            f"{name} missing from the initramfs:\n{stub.initramfs_listing}"
    assert f"{INITRAMFS_DIR}/init-full" not in stub.initramfs_listing   # stage stub
    assert stub.initrd_pkg > stub.initrd_base
    # Ours runs after udev's, which tells the initramfs's udevd to exit:
    # the record's finish time then marks what the initramfs left running.
    scripts = re.findall(r"^/scripts/init-bottom/(\S+) ", stub.init_bottom_order, re.MULTILINE)
    assert scripts.index("apparmor-fullsystem") > scripts.index("udev"), stub.init_bottom_order

    boot = first_boot(stub)
    # Figures only (the boot without the package is tools/bench-boot's, which
    # boots both in the same run).
    print(f"\nFIGURES suite={suite} initrd_base={stub.initrd_base} "
          f"initrd_pkg={stub.initrd_pkg} boot_pkg_s={boot.seconds_to_probe:.1f} "
          f"boot_pkg_wall_s={boot.wall_seconds:.1f} "
          f"initramfs_load_ms={boot.values.get('record.elapsed_ms')}")
    print(f"--- {suite}: boot script output\n{boot.output}")

    assert boot.reached_multi_user, where(boot)
    assert boot.script_exit == 0, where(boot)
    assert boot.values["pid1"] == f"{PROFILE} (complain)", where(boot)
    assert boot.values.get("record.outcome") == "loaded", where(boot)
    assert boot.values.get("record.loaded_stage") == "stub", where(boot)
    # The boot script's own check: the kernel gave init's name the profile.
    assert boot.values["record.init_attach"] == "yes", where(boot)
    assert boot.values["record.init_label"] == f"{PROFILE} (complain)", where(boot)
    assert boot.values.get("record.configured_stage") == "stub", where(boot)
    assert boot.values.get("record.mode") == "complain", where(boot)
    assert boot.values.get("record.initramfs_kernel") == boot.values.get("record.kernel"), where(boot)
    # The initramfs loaded the stub (the record; and the masked boots of the
    # enforce machine show the kernel holding what an initramfs loaded);
    # apparmor.service then loaded the full profile of the same name, and the
    # kernel holds it, roles and all, in place of the stub: PID 1 keeps its
    # name, now the full profile's.
    assert kernel_holds(boot) == ("full", "complain"), where(boot)

    procs = processes(boot)
    assert len(procs) > 5, where(boot)          # the listing itself worked
    unconfined = unconfined_since_init(boot)
    assert not unconfined, f"unconfined userspace processes: {unconfined}\n{where(boot)}"
    assert boot.values["status_exit"] == "0", where(boot)
    # Zero, unless one from the initramfs was still running (see
    # unconfined_since_init).
    count = re.search(r"^Unconfined userspace processes: (\d+)$", boot.output, re.MULTILINE)
    assert count, where(boot)
    assert int(count[1]) <= len([p for p in procs if p.label == "unconfined"]), where(boot)


def test_service_with_own_profile_enters_it(stub):
    """2. A service's program with a profile of its own runs under it; one without, under init's."""
    boot = first_boot(stub)
    v = boot.values
    assert v[f"{PROBE_SVC}.active"] == "active", where(boot)
    assert v[f"{PROBE_SVC}.exe"] == PROBE_SVC_BIN, where(boot)
    # Its own profile, stacked on init's (so still inside init's
    # confinement), not init's alone and not unconfined.
    assert v[f"{PROBE_SVC}.label"] == f"{PROBE_SVC}//&{PROFILE} (complain)", where(boot)

    assert v[f"{PROBE_PLAIN}.active"] == "active", where(boot)
    assert v[f"{PROBE_PLAIN}.exe"] == "/usr/bin/sleep", where(boot)
    assert v[f"{PROBE_PLAIN}.label"] == f"{PROFILE} (complain)", where(boot)
    # The probe's own shell is another service without a profile.
    assert v["script_shell"] == f"{PROFILE} (complain)", where(boot)


def test_no_new_privs_service_enters_its_own_profile(stub):
    """2b. A no_new_privs service enters its own profile too: the stack on init's is a transition NNP allows."""
    boot = first_boot(stub)
    v = boot.values
    assert v[f"{PROBE_NNP}.active"] == "active", where(boot)
    assert v[f"{PROBE_NNP}.exe"] == PROBE_NNP_BIN, where(boot)
    assert v[f"{PROBE_NNP}.label"] == f"{PROBE_NNP}//&{PROFILE} (complain)", where(boot)
    # The kernel refused no_new_privs nothing but the Px probe's exec (below).
    refused = re.findall(r'^.*info="no new privs".*$', boot.output, re.MULTILINE)
    assert refused and all(f'name="{PROBE_NNP_PX_BIN}"' in line for line in refused), where(boot)


def test_status_names_an_exec_refused_for_no_new_privs(stub):
    """2c. A transition that is not a stack, under NNP: the kernel refuses it, status names it."""
    boot = first_boot(stub)
    v = boot.values
    # The kernel's record (DENIALS prints the boot's AppArmor lines):
    # init's profile, the exec, the program, and why.
    records = [line for line in boot.output.splitlines()
               if 'info="no new privs"' in line and 'operation="exec"' in line
               and f'profile="{PROFILE}"' in line and f'name="{PROBE_NNP_PX_BIN}"' in line]
    assert records, where(boot)
    # Complain mode lets the exec go on, without the transition: init's profile.
    assert v[f"{PROBE_NNP_PX}.active"] == "active", where(boot)
    assert v[f"{PROBE_NNP_PX}.label"] == f"{PROFILE} (complain)", where(boot)
    # status names that program, and only it.
    assert f"No own profile (no_new_privs): {PROBE_NNP_PX_BIN}" in boot.output.splitlines(), where(boot)


def test_the_sysvinit_scripts_unit_is_masked_under_systemd(stub):
    """2d. /etc/init.d/apparmor-fullsystem is for sysvinit: under systemd its unit is masked, never run."""
    boot = first_boot(stub)
    assert boot.values["sysv_script"] == "present", where(boot)
    assert boot.values["sysv_unit.load"] == "masked", where(boot)
    assert boot.values["sysv_unit.active"] == "inactive", where(boot)


# The escape hatch each suite boots, beside the enforced and the stub boots:
# the kernel's own, and ours (test_hardened boots "aa_fullsystem=off" on
# bookworm, test_dracut on trixie).
HATCH_OF_SUITE = {"bookworm": "apparmor=0", "trixie": "aa_fullsystem=0"}
assert set(HATCH_OF_SUITE) == set(vm.SUITES)


def test_escape_hatch_boots_without_policy(stub):
    """3. An escape hatch on the kernel command line: multi-user, PID 1 unconfined, the record says why."""
    if HATCH_OF_SUITE[stub.machine.suite] == "apparmor=0":
        apparmor_0_boots_without_policy(stub)
    else:
        aa_fullsystem_off_boots_unconfined(stub, HATCH_OF_SUITE[stub.machine.suite])


def apparmor_0_boots_without_policy(stub: StubMachine) -> None:
    """apparmor=0: multi-user, nothing loaded, and the record says why."""
    boot = stub.machine.boot(append="apparmor=0", script=REPORT)
    print(f"--- {stub.machine.suite} apparmor=0: boot script output\n{boot.output}")
    assert boot.reached_multi_user, where(boot)
    assert boot.values["aa_enabled"] == "N", where(boot)
    assert not boot.values["pid1"].startswith(PROFILE), where(boot)
    # The boot script writes its record before it looks at anything else,
    # and initramfs-tools moves /run into the real root.
    assert boot.values.get("record.outcome") == "skipped", where(boot)
    assert "apparmor=0" in boot.values.get("record.reason", ""), where(boot)
    assert boot.values.get("record.loaded_stage") == "none", where(boot)
    assert boot.values["status_exit"] == "0", where(boot)


def aa_fullsystem_off_boots_unconfined(stub: StubMachine, hatch: str) -> None:
    """aa_fullsystem=off (README: "or =0"): multi-user, PID 1 unconfined, record says skipped."""
    # A process that names itself with a newline and an escape sequence
    # (perl sets the task's comm from $0): status lists it on one line.
    odd = ("perl -e '$0 = \"aafs\\nx\\e[2J\"; sleep 60' &\n"
           'echo "@@ odd_pid=$!"\nsleep 1\n')
    boot = stub.machine.boot(append=hatch, script=odd + REPORT)
    print(f"--- {stub.machine.suite} {hatch}: boot script output\n{boot.output}")
    assert boot.reached_multi_user, where(boot)
    assert boot.values["aa_enabled"] == "Y", where(boot)
    assert boot.values["pid1"] == "unconfined", where(boot)
    assert boot.values.get("record.outcome") == "skipped", where(boot)
    assert "aa_fullsystem=off" in boot.values.get("record.reason", ""), where(boot)
    assert boot.values.get("record.loaded_stage") == "none", where(boot)
    assert boot.values["status_exit"] == "0", where(boot)
    assert "PID 1 is NOT confined" in boot.output, where(boot)
    # With no policy loaded, everything is unconfined: none of it is "left
    # over from the initramfs", PID 1 least of all.
    unconfined = [p for p in processes(boot) if p.label == "unconfined"]
    assert len(unconfined) > 5 and "  1 systemd" in boot.output.splitlines(), where(boot)
    assert "(from the initramfs)" not in boot.output, where(boot)
    status = boot.output.split("--- aa-fullsystem status\n", 1)[1].split("@@ status_exit=", 1)[0]
    assert f"  {boot.values['odd_pid']} aafs?x?[2J" in status.splitlines(), where(boot)
    assert "\x1b" not in status, where(boot)


# ---------------------------------------------------------------------------
# A policy that does not compile.

@pytest.mark.parametrize("suite", vm.SUITES)
def test_broken_policy_is_refused_and_the_initramfs_keeps_what_compiled(suite, built_deb, tmp_path):
    """4. A broken profile never reaches the initramfs: the commands refuse it, a rebuild ships the
    last good one, and a new kernel's initramfs boots the stub and says why."""
    machine = new_machine(suite, tmp_path / "machine", built_deb)
    staged = machine.chroot_run(["aa-fullsystem", "stage", "full"])
    state = machine.read_file(STATE)
    assert re.search(rb"^STAGE=full$", state, re.M) and re.search(rb"^MODE=complain$", state, re.M), state
    assert f"{INITRAMFS_DIR}/init-full" in lsinitramfs(machine), staged.stdout
    initrd = machine.kernel_paths()[1]
    initrd_sha = sha256(machine, initrd)
    shipped_full = initramfs_file(machine, "init-full")
    assert f"profile {PROFILE} ".encode() in shipped_full

    # Break the full profile: a line that is no rule, inside the profile.
    profile = machine.root / FULL_PROFILE.lstrip("/")
    text = profile.read_text()
    end = text.rstrip().rindex("}")
    profile.write_text(text[:end] + "  this is not a rule,\n" + text[end:])
    bad_line = profile.read_text().splitlines().index("  this is not a rule,") + 1
    where_bad = re.compile(rf"{re.escape(FULL_PROFILE)}\b.* at line {bad_line}\b")

    # `aa-fullsystem stage` validates first: exit 1, nothing changed.
    refused = machine.chroot_run(["aa-fullsystem", "stage", "full"], check=False)
    print(f"--- {suite}: aa-fullsystem stage full with a broken profile\n{refused.stdout}")
    assert refused.returncode == 1, chroot_text(refused)
    assert where_bad.search(refused.stdout), chroot_text(refused)
    assert machine.read_file(STATE) == state
    assert sha256(machine, initrd) == initrd_sha
    # ... as do the other commands that apply or check a state (README:
    # `aa-fullsystem stage|mode|check` refuse it with the parser's message).
    for command in (["mode", "enforce"], ["level", "hardened"], ["check"]):
        refused = machine.chroot_run(["aa-fullsystem", *command], check=False)
        print(f"--- {suite}: aa-fullsystem {' '.join(command)} with a broken profile\n{refused.stdout}")
        assert refused.returncode == 1, chroot_text(refused)
        assert where_bad.search(refused.stdout), chroot_text(refused)
    assert machine.read_file(STATE) == state
    assert sha256(machine, initrd) == initrd_sha

    # update-initramfs: the hook names file and line, and ships the last
    # full profile that compiled instead (the one `stage full` shipped).
    update = machine.chroot_run(["update-initramfs", "-u"], check=False)
    print(f"--- {suite}: update-initramfs -u with a broken profile\n{update.stdout}")
    assert update.returncode == 0, chroot_text(update)
    assert where_bad.search(update.stdout), chroot_text(update)
    assert "keeps the last policy that compiled" in update.stdout, chroot_text(update)
    assert initramfs_file(machine, "init-full") == shipped_full
    assert machine.read_file(f"{LAST_GOOD}/init-full") == shipped_full
    initrd_sha = sha256(machine, initrd)

    # Without a last good copy the hook fails and the initrd is kept as it was.
    machine.chroot_run(["mv", LAST_GOOD, f"{LAST_GOOD}.saved"])
    update = machine.chroot_run(["update-initramfs", "-u"], check=False)
    print(f"--- {suite}: update-initramfs -u, broken profile, no last good copy\n{update.stdout}")
    assert update.returncode != 0, chroot_text(update)
    assert where_bad.search(update.stdout), chroot_text(update)
    assert sha256(machine, initrd) == initrd_sha, "the initrd changed although the hook failed"
    leftovers = [p.name for p in (machine.root / "boot").iterdir()
                 if p.name.startswith("initrd.img") and p.name != initrd.rsplit("/", 1)[1]]
    assert not leftovers, leftovers
    # ... but a kernel without one yet (a new kernel) gets one without init's
    # full profile, booted below.
    version = initrd.rsplit("initrd.img-", 1)[1]
    machine.chroot_run(["mv", initrd, "/root/initrd.saved"])
    create = machine.chroot_run(["update-initramfs", "-c", "-k", version], check=False)
    print(f"--- {suite}: update-initramfs -c for a kernel without an initramfs, no last good copy\n{create.stdout}")
    assert create.returncode == 0, chroot_text(create)
    assert f"{version} has no initramfs yet: it gets one without init-full" in create.stdout, chroot_text(create)
    new_kernel_listing = lsinitramfs(machine)
    assert f"{INITRAMFS_DIR}/init-stub" in new_kernel_listing, new_kernel_listing
    assert f"{INITRAMFS_DIR}/init-full" not in new_kernel_listing, new_kernel_listing
    new_kernel_initrd = machine.read_file(initrd)
    machine.chroot_run(["mv", "/root/initrd.saved", initrd])
    assert sha256(machine, initrd) == initrd_sha
    machine.chroot_run(["mv", f"{LAST_GOOD}.saved", LAST_GOOD])

    # The new kernel's initramfs, without init's full profile: the stub
    # (apparmor.service masked, so the kernel holds what the initramfs
    # loaded), and the record and status say what was left out and why.
    # Booted on one suite, as the boot script's other fallbacks are.
    if ONE_SUITE_EACH["not in this initramfs"] != suite:
        shutil.rmtree(machine.root)     # never booted: its space, freed as a boot's drop_stale_root does
        return
    boot = machine.boot(script=REPORT + LOADED_PROFILES, append="systemd.mask=apparmor.service",
                        initrd=new_kernel_initrd)
    drop_stale_root(machine)
    v = boot.values
    print(f"--- {suite}: a new kernel's initramfs without init's full profile\n{boot.output}")
    assert boot.reached_multi_user and v["apparmor_service"] == "inactive", where(boot)
    # An initramfs that ships only the stub while its state says full: the
    # check that reads the stage from the kernel says stub.
    assert v["pid1"] == f"{PROFILE} (complain)" and kernel_holds(boot) == ("stub", "complain"), where(boot)
    assert v["record.outcome"] == "fallback", where(boot)
    assert v["record.configured_stage"] == "full" and v["record.loaded_stage"] == "stub", where(boot)
    assert v["record.reason"] == "the full profile is not in this initramfs; loaded the stub instead", where(boot)
    assert v["record.left_out"] == "init-full", where(boot)
    assert "goes without init-full" in boot.output, where(boot)


# ---------------------------------------------------------------------------
# The full profile, enforced.

def _kernel_before_6_2(release: str) -> bool:
    m = re.match(r"(\d+)\.(\d+)", release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) < (6, 2)


# What the boot script's fallbacks are shown with: a file the parser
# refuses, and two site profiles in policy.d, one of which loads.
UNLOADABLE = b"# tests/test_boot.py: no profile\nthis is not a profile,\n"
SITE_GOOD = "aafs-test-site-good"
SITE_BAD = "aafs-test-site-bad"
SITE_GOOD_PROFILE = f"""abi <abi/apparmor-fullsystem>,
# tests/test_boot.py: a site profile that loads (it attaches to no program).
# Its ABI is the one init's profiles name, which every initramfs of ours
# holds (a site profile's is copied in by the hook, copy_abis).
profile {SITE_GOOD} /usr/local/bin/{SITE_GOOD} {{
}}
""".encode()

# The profiles in the kernel, "NAME (MODE)" joined by commas.
LOADED_PROFILES = r"""
echo "@@ loaded_profiles=$(paste -s -d , /sys/kernel/security/apparmor/profiles)"
"""


# Where each escape hatch and fallback of the boot script is shown. The
# script is one file, run by busybox sh in initramfs-tools' /init on both
# suites, and each of these boots costs half a minute or more under TCG:
# each is booted on one suite, the suites taking turns, so that each kernel
# and busybox runs some of them. (The enforced boot and what the initramfs
# alone loads are shown on both; test_dracut follows a hatch through
# dracut's adapter.)
ONE_SUITE_EACH = {
    "aa_fullsystem=stub": "bookworm",
    "aa_fullsystem=complain": "trixie",
    "full profile refused": "bookworm",
    "stub refused too": "trixie",
    "no securityfs": "bookworm",
    "not in this initramfs": "trixie",      # a new kernel's (test_broken_policy_...)
    # Not a boot: `stage` and `mode` rebuild every installed kernel's
    # initramfs, shown in the chroot with a second kernel (OLDER_KERNEL).
    "every installed kernel": "trixie",
}
assert set(ONE_SUITE_EACH.values()) == set(vm.SUITES)


def kernel_holds(boot: vm.Boot, profile: str = PROFILE) -> tuple[str, str]:
    """The stage and mode of init's policy in the kernel (LOADED_PROFILES),
    not in any record: ("full", MODE) when the roles only the full
    profile's file defines are loaded beside init's profile, ("stub", MODE)
    when init's profile is alone, ("none", "") without it. With
    apparmor.service masked this is what the initramfs loaded."""
    loaded = boot.values["loaded_profiles"].split(",")
    modes = [name[len(profile) + 2:-1] for name in loaded if name.startswith(f"{profile} (")]
    if not modes:
        return "none", ""
    return ("full" if f"{profile}-system ({modes[0]})" in loaded else "stub"), modes[0]


@pytest.mark.parametrize("suite", vm.SUITES)
def test_full_profile_enforced_denies_nothing(suite, built_deb, tmp_path):
    """5. stage full + mode enforce: PID 1 enforced from the initramfs, zero DENIED lines; then
    what the initramfs loads by itself, normally and with this suite's escape hatch that loads
    policy; then the boot script's fallbacks shown on this suite (ONE_SUITE_EACH)."""
    machine = new_machine(suite, tmp_path / "machine", built_deb)
    count_every_denial(machine.root)
    every_kernel = ONE_SUITE_EACH["every installed kernel"] == suite
    if every_kernel:
        add_older_kernel(machine)
    machine.chroot_run(["aa-fullsystem", "stage", "full"])
    machine.chroot_run(["aa-fullsystem", "mode", "enforce"])
    state = machine.read_file(STATE)
    assert re.search(rb"^STAGE=full$", state, re.M) and re.search(rb"^MODE=enforce$", state, re.M), state
    if every_kernel:
        assert_every_kernel_rebuilt(machine)
    assert not (machine.root / "etc/apparmor.d/force-complain" / PROFILE).exists()
    order = initramfs_file(machine, "ORDER", under="scripts/init-bottom").decode()

    boot = machine.boot(script=REPORT + DENIALS)
    drop_stale_root(machine)
    v = boot.values
    print(f"--- {suite}: enforce boot\n{boot.output}")
    print(f"DENIED suite={suite} dmesg={v.get('denied_dmesg')} "
          f"journal_k={v.get('denied_journal_k')} journal={v.get('denied_journal')} "
          f"suppressed={v.get('suppressed_dmesg')} kernel={v.get('record.kernel')}")
    assert boot.reached_multi_user, where(boot)
    assert v["pid1"] == f"{PROFILE} (enforce)", where(boot)
    assert v.get("record.outcome") == "loaded", where(boot)
    assert v.get("record.loaded_stage") == "full", where(boot)
    assert v.get("record.mode") == "enforce", where(boot)
    assert not unconfined_since_init(boot), where(boot)
    runs_cleanly(boot)

    # Zero denials, and a count that missed nothing.
    assert v["suppressed_dmesg"] == "0", "the kernel dropped log lines: the count is incomplete\n" + where(boot)
    hint = ""
    if _kernel_before_6_2(v.get("record.kernel", "")) and 'operation="file_lock"' in boot.output:
        hint = ("\nNOTE: file_lock denials on unix sockets are the kernel < 6.2 AppArmor bug "
                "fixed upstream by 'apparmor: fix apparmor mediating locking non-fs unix "
                "sockets' (v6.2): no policy rule can grant that lock (the parser has no "
                "syntax for it), so systemd's PrivateNetwork= setup is refused and systemd "
                "runs the service without its network namespace.")
    assert v["denied_dmesg"] == "0", f"apparmor=\"DENIED\" in dmesg{hint}\n{where(boot)}"
    assert v["denied_journal_k"] in ("0", "unavailable"), f"DENIED in journalctl -k{hint}\n{where(boot)}"

    # What the initramfs itself loaded, read from the kernel: apparmor.service
    # masked, so that nothing after the initramfs loads policy. The full
    # stage loads init's profile with the roles its file defines, the stub
    # alone; the escape hatches choose the stub, or complain mode.
    for hatch, stage, label in (("", "full", "enforce"),
                                ("aa_fullsystem=stub", "stub", "complain"),
                                ("aa_fullsystem=complain", "full", "complain")):
        if hatch and ONE_SUITE_EACH[hatch] != suite:
            continue
        boot = machine.boot(script=REPORT + LOADED_PROFILES, append=f"systemd.mask=apparmor.service {hatch}".strip())
        v = boot.values
        print(f"--- {suite}: apparmor.service masked, {hatch or 'no escape hatch'}\n{boot.output}")
        assert boot.reached_multi_user and v["apparmor_service"] == "inactive", where(boot)
        runs_cleanly(boot)      # a masked unit is no failed one
        assert v["pid1"] == f"{PROFILE} ({label})", where(boot)
        assert v["record.loaded_stage"] == stage, where(boot)
        assert kernel_holds(boot) == (stage, label), where(boot)

    # The boot script's fallbacks, each caused in the initrd of one boot
    # (guest.initrd_with puts files on top of the guest's own initrd).
    initrd = machine.read_file(machine.kernel_paths()[1])

    shown_here = [name for name, where_shown in ONE_SUITE_EACH.items() if where_shown == suite]

    # A full profile the parser refuses at boot: the stub instead, and of two
    # site profiles, the one that loads is loaded and the other is skipped.
    # apparmor.service masked: what the kernel holds is what the initramfs loaded.
    if "full profile refused" in shown_here:
        full_profile_refused(machine, initrd)
    # The stub fails too: init runs unconfined, the boot goes on, and the
    # record and status say so.
    if "stub refused too" in shown_here:
        stub_refused_too(machine, initrd)
    # No securityfs: init runs unconfined, the record says why.
    if "no securityfs" in shown_here:
        no_securityfs(machine, initrd, order)


# A second kernel, older than the installed one so that boots still take the
# installed one: its files under another version, the modules tree hard-linked.
OLDER_KERNEL = "5.10.0-aafs-older-amd64"


def add_older_kernel(machine: vm.Machine) -> None:
    """OLDER_KERNEL installed beside the guest's kernel, with an initramfs of its own (the stub's)."""
    version = machine.kernel_paths()[0].removeprefix("/boot/vmlinuz-")
    machine.chroot_run(["sh", "-c", 'set -e; cp -al "/usr/lib/modules/$1" "/usr/lib/modules/$2"; '
                        'for f in config vmlinuz; do cp "/boot/$f-$1" "/boot/$f-$2"; done; '
                        'update-initramfs -c -k "$2"', "sh", version, OLDER_KERNEL])
    assert b"AAFS_STAGE=stub" in initramfs_file(machine, "boot.conf", initrd=f"/boot/initrd.img-{OLDER_KERNEL}")


def assert_every_kernel_rebuilt(machine: vm.Machine) -> None:
    """After `stage full` and `mode enforce`: each kernel's initramfs carries the
    full stage enforced, status reads each as full and none as stale; then
    the older kernel is removed again, so that it never weighs on a boot."""
    version = machine.kernel_paths()[0].removeprefix("/boot/vmlinuz-")
    for kernel in (version, OLDER_KERNEL):
        conf = initramfs_file(machine, "boot.conf", initrd=f"/boot/initrd.img-{kernel}")
        assert b"AAFS_STAGE=full\n" in conf and b"AAFS_MODE=enforce\n" in conf, (kernel, conf)
    status = machine.chroot_run(["aa-fullsystem", "status"], check=False).stdout
    assert "Kernels (initramfs policy):\n" in status, status
    kernels = status.split("Kernels (initramfs policy):\n", 1)[1].split("Unconfined", 1)[0]
    assert kernels.splitlines() == sorted([f"  {OLDER_KERNEL}: full", f"  {version}: full"]), status
    machine.chroot_run(["sh", "-c", 'set -e; update-initramfs -d -k "$1"; rm -r "/usr/lib/modules/$1" '
                        '"/boot/config-$1" "/boot/vmlinuz-$1"', "sh", OLDER_KERNEL])


def full_profile_refused(machine: vm.Machine, initrd: bytes) -> None:
    """The state says full; the kernel's answer is the stub, and the site
    profile that loads."""
    suite = machine.suite
    fell_back = 'echo "@@ fell_back_logged=$(dmesg | grep -c "the full init profile failed to load, falling back")"\n'
    boot = machine.boot(script=REPORT + LOADED_PROFILES + fell_back, append="systemd.mask=apparmor.service",
                        initrd=initrd_with(initrd, {f"{INITRAMFS_DIR}/init-full": UNLOADABLE,
                                                    f"{INITRAMFS_DIR}/policy.d/{SITE_GOOD}": SITE_GOOD_PROFILE,
                                                    f"{INITRAMFS_DIR}/policy.d/{SITE_BAD}": UNLOADABLE}))
    v = boot.values
    print(f"--- {suite}: the full profile and one site profile fail to load\n{boot.output}")
    assert boot.reached_multi_user, where(boot)
    assert v["pid1"] == f"{PROFILE} (complain)" and kernel_holds(boot) == ("stub", "complain"), where(boot)
    assert f"{SITE_GOOD} (enforce)" in v["loaded_profiles"].split(","), where(boot)
    assert v["record.outcome"] == "fallback", where(boot)
    assert v["record.configured_stage"] == "full" and v["record.loaded_stage"] == "stub", where(boot)
    assert v["record.reason"] == ("the full profile failed to load; loaded the stub instead; "
                                  f"site profile {SITE_BAD} failed to load"), where(boot)
    assert v["record.failed_profiles"] == SITE_BAD, where(boot)
    assert SITE_GOOD in v["record.profiles"].split(), where(boot)
    assert v["fell_back_logged"] == "1", where(boot)


def stub_refused_too(machine: vm.Machine, initrd: bytes) -> None:
    """(apparmor.service loads the policy later, which changes no running
    task's label: the kernel labels at exec.)"""
    suite = machine.suite
    boot = machine.boot(script=REPORT, initrd=initrd_with(initrd, {f"{INITRAMFS_DIR}/init-full": UNLOADABLE,
                                                                   f"{INITRAMFS_DIR}/init-stub": UNLOADABLE}))
    v = boot.values
    print(f"--- {suite}: neither init profile loads\n{boot.output}")
    assert boot.reached_multi_user and v["apparmor_service"] == "active", where(boot)
    assert v["pid1"] == "unconfined", where(boot)
    assert v["record.outcome"] == "failed" and v["record.loaded_stage"] == "none", where(boot)
    assert v["record.reason"].startswith("the stub failed to load too, init runs unconfined: "), where(boot)
    assert "PID 1 is NOT confined" in boot.output, where(boot)


def no_securityfs(machine: vm.Machine, initrd: bytes, order: str) -> None:
    """/sys/kernel covered by an empty read-only tmpfs around our script
    (init-bottom's ORDER is what /init sources to run it), so the script
    cannot mount securityfs on /sys/kernel/security."""
    suite = machine.suite
    ours = '/scripts/init-bottom/apparmor-fullsystem "$@"\n'
    assert ours in order, order
    covered = order.replace(ours, "mount -t tmpfs -o ro,size=4k aafs-test /sys/kernel\n" + ours
                            + "umount /sys/kernel\n")
    boot = machine.boot(script=REPORT, initrd=initrd_with(initrd, {"scripts/init-bottom/ORDER": covered.encode()}))
    v = boot.values
    print(f"--- {suite}: no securityfs in the initramfs\n{boot.output}")
    assert boot.reached_multi_user and v["apparmor_service"] == "active", where(boot)
    assert v["pid1"] == "unconfined", where(boot)
    assert v["record.outcome"] == "failed" and v["record.loaded_stage"] == "none", where(boot)
    assert v["record.reason"] == ("cannot mount securityfs on /sys/kernel/security: "
                                  "booting without full-system policy"), where(boot)
    assert "PID 1 is NOT confined" in boot.output, where(boot)


# ---------------------------------------------------------------------------
# A site variant: another package name and profile name, starting enforced.

VARIANT = "apparmor-fullsystem-acme"
VARIANT_PROFILE = "acme-init"
VARIANT_CONFIG = f"""
[package]
name = "{VARIANT}"
version = "0.1+acme1"
changelog = "ACME build: full stage, enforced, from the first boot."
[policy]
stage = "full"
mode = "enforce"
profile_name = "{VARIANT_PROFILE}"
"""
VARIANT_SUITE = "trixie"    # what a variant changes is the same on every suite


def test_site_variant_starts_in_the_state_it_declares(tmp_path):
    """6. A site variant installed by apt boots in the stage and mode it declares, under its own names."""
    from aa_pkg.build import build
    from aa_pkg.config import load_config

    vm.require_tools("dpkg-buildpackage", "dh", "dh_apparmor", "apparmor_parser")
    config = tmp_path / "site.toml"
    config.write_text(VARIANT_CONFIG)
    deb = build(load_config(config), tmp_path / "out")
    machine = new_machine(VARIANT_SUITE, tmp_path / "machine", deb)
    count_every_denial(machine.root)
    state = machine.read_file(f"/etc/{VARIANT}/state")
    assert re.search(rb"^STAGE=full$", state, re.M) and re.search(rb"^MODE=enforce$", state, re.M), state
    assert f"usr/lib/{VARIANT}/init-full" in lsinitramfs(machine)

    # apparmor.service masked: the kernel holds what the initramfs loaded.
    boot = machine.boot(script=report(f"/run/{VARIANT}/boot") + DENIALS + LOADED_PROFILES,
                        append="systemd.mask=apparmor.service")
    drop_stale_root(machine)
    v = boot.values
    print(f"--- {VARIANT} on {VARIANT_SUITE}\n{boot.output}")
    assert boot.reached_multi_user, where(boot)
    assert v["pid1"] == f"{VARIANT_PROFILE} (enforce)", where(boot)
    assert kernel_holds(boot, VARIANT_PROFILE) == ("full", "enforce"), where(boot)
    assert kernel_holds(boot) == ("none", ""), where(boot)    # no default name anywhere
    assert v["record.outcome"] == "loaded", where(boot)
    assert v["record.loaded_stage"] == "full" and v["record.mode"] == "enforce", where(boot)
    assert v["record.init_attach"] == "yes", where(boot)
    assert "PID 1 is confined" in boot.output and v["status_exit"] == "0", where(boot)
    assert not unconfined_since_init(boot), where(boot)
    runs_cleanly(boot)
    assert v["suppressed_dmesg"] == "0" and v["denied_dmesg"] == "0", where(boot)
