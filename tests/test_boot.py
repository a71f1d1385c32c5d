"""The real package in a real boot: what PID 1 and its children run under.

Every test installs the .deb built by `aa-pkg build` (the `built_deb`
fixture) with apt-get into a fresh Debian guest (tests/vm.py), so the
package's own dpkg trigger builds the initramfs, and then boots it under
qemu.  Boots are the expensive part, so each machine serves several checks:

machine "stub" (module fixture, one per suite; default stage stub/complain)
    boot 1  PID 1, the boot record, no unconfined process, `aa-fullsystem
            status`, the initramfs contents and the FIGURES (with a plain
            machine booted once for the "without the package" figures), a
            service with a profile of its own and one without
    boot 2  apparmor=0 on the kernel command line
    boot 3  aa_fullsystem=off
machine "broken" (stage full, complain)
    a profile that does not compile is refused by `aa-fullsystem stage` and
    by update-initramfs, which keeps the previous initramfs; the boot that
    follows still confines PID 1 with the full profile it had
machine "enforce" (stage full, mode enforce)
    boot 1  PID 1 in enforce mode and not one apparmor="DENIED" line
    boots 2-4  apparmor.service masked, so the kernel shows what the
            initramfs alone loaded: the full profile and its roles,
            enforced; with aa_fullsystem=stub the stub alone; with
            aa_fullsystem=complain the full profile in complain mode

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
    from .guest import (DENIALS, FULL_PROFILE, INITRAMFS_DIR, LAST_GOOD, NO_PRINTK_RATELIMIT, PROFILE,
                        REPORT, STATE, chroot_text, drop_stale_root, initramfs_file, lsinitramfs,
                        new_machine, processes, runs_cleanly, sha256, unconfined_since_init, where)
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (DENIALS, FULL_PROFILE, INITRAMFS_DIR, LAST_GOOD, NO_PRINTK_RATELIMIT, PROFILE,
                       REPORT, STATE, chroot_text, drop_stale_root, initramfs_file, lsinitramfs,
                       new_machine, processes, runs_cleanly, sha256, unconfined_since_init, where)

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
                                        (PROBE_NNP, PROBE_NNP_BIN, PROBE_NNP_PROFILE, PROBE_NNP_UNIT)):
        shutil.copy2(root / "usr/bin/sleep", root / binary.lstrip("/"))
        (root / "etc/apparmor.d" / name).write_text(profile)
        (units / f"{name}.service").write_text(unit)
        # The profile compiles (apparmor.service would skip it otherwise).
        machine.chroot_run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "-Q",
                            f"/etc/apparmor.d/{name}"])
    (units / f"{PROBE_PLAIN}.service").write_text(PROBE_PLAIN_UNIT)
    machine.chroot_run(["systemctl", "enable", f"{PROBE_SVC}.service", f"{PROBE_NNP}.service",
                        f"{PROBE_PLAIN}.service"])

    services = "".join(rf"""
pid=$(systemctl show -p MainPID --value {unit}.service)
echo "@@ {unit}.active=$(systemctl is-active {unit}.service)"
echo "@@ {unit}.pid=$pid"
echo "@@ {unit}.exe=$(readlink /proc/$pid/exe)"
echo "@@ {unit}.label=$(cat /proc/$pid/attr/current 2>&1)"
""" for unit in (PROBE_SVC, PROBE_NNP, PROBE_PLAIN))
    result = StubMachine(machine, initrd_base, initrd_pkg, listing, bottom_order)
    try:
        # The no_new_privs probe's exec at boot may come before
        # apparmor.service loads its profile (no transition is tried, it
        # stays under init's). One more exec, with its profile loaded, shows
        # the transition NNP allows.
        restart_nnp = f"systemctl restart {PROBE_NNP}.service\n"
        result.first = machine.boot(script=restart_nnp + REPORT + services + DENIALS)
    except vm.BootError as e:
        # Reported by every test that needs this boot, with the serial log.
        result.first_error = str(e)
    drop_stale_root(machine)
    return result


def first_boot(stub: StubMachine) -> vm.Boot:
    if stub.first is None:
        pytest.fail(f"the first boot of the stub machine failed: {stub.first_error}")
    return stub.first


def test_stub_boot_confines_init_and_everything_it_starts(stub, tmp_path):
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
    # The same boot without the package: a plain machine from the same base.
    plain = vm.Machine.create(suite, tmp_path / "plain")
    base = plain.boot(script="echo @@ pid1=$(cat /proc/1/attr/current)\n")
    drop_stale_root(plain)
    assert base.reached_multi_user and base.values["pid1"] == "unconfined", base.log_path
    print(f"\nFIGURES suite={suite} initrd_base={stub.initrd_base} "
          f"initrd_pkg={stub.initrd_pkg} "
          f"boot_base_s={base.seconds_to_probe:.1f} boot_pkg_s={boot.seconds_to_probe:.1f} "
          f"boot_base_wall_s={base.wall_seconds:.1f} boot_pkg_wall_s={boot.wall_seconds:.1f} "
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
    # No exec refused for no_new_privs, so status names none.
    assert "No own profile (no_new_privs)" not in boot.output, where(boot)
    assert 'info="no new privs"' not in boot.output, where(boot)


def test_apparmor_0_boots_without_policy(stub):
    """3a. apparmor=0: multi-user, nothing loaded, and the record says why."""
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


def test_aa_fullsystem_off_boots_unconfined(stub):
    """3b. aa_fullsystem=off: multi-user, PID 1 unconfined, record says skipped."""
    boot = stub.machine.boot(append="aa_fullsystem=off", script=REPORT)
    print(f"--- {stub.machine.suite} aa_fullsystem=off: boot script output\n{boot.output}")
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


# ---------------------------------------------------------------------------
# A policy that does not compile.

@pytest.mark.parametrize("suite", vm.SUITES)
def test_broken_policy_is_refused_and_boot_keeps_what_it_had(suite, built_deb, tmp_path):
    """4. A broken profile never reaches the initramfs; the machine boots with the last good one."""
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
    machine.chroot_run(["mv", f"{LAST_GOOD}.saved", LAST_GOOD])

    # Boot with the broken profile still in /etc: apparmor.service cannot load
    # it, and PID 1 keeps the full profile the initramfs loaded.
    boot = machine.boot(script=REPORT + "aa-fullsystem check\necho @@ check_exit=$?\n" + DENIALS)
    drop_stale_root(machine)
    print(f"--- {suite}: boot with a broken profile\n{boot.output}")
    assert boot.reached_multi_user, where(boot)
    assert boot.values["pid1"] == f"{PROFILE} (complain)", where(boot)
    assert boot.values.get("record.outcome") == "loaded", where(boot)
    assert boot.values.get("record.loaded_stage") == "full", where(boot)
    assert boot.values["check_exit"] != "0", where(boot)    # really booted the broken policy
    # The boot and `aa-fullsystem status` both say the initramfs fell back.
    assert boot.values.get("record.kept_last_good") == "init-full", where(boot)
    assert "carries the last policy that compiled for init-full" in boot.output, where(boot)
    assert "policy does NOT compile" in boot.output, where(boot)
    assert not unconfined_since_init(boot), where(boot)


# ---------------------------------------------------------------------------
# The full profile, enforced.

def _kernel_before_6_2(release: str) -> bool:
    m = re.match(r"(\d+)\.(\d+)", release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) < (6, 2)


# The profiles in the kernel, "NAME (MODE)" joined by commas.
LOADED_PROFILES = r"""
echo "@@ loaded_profiles=$(paste -s -d , /sys/kernel/security/apparmor/profiles)"
"""


@pytest.mark.parametrize("suite", vm.SUITES)
def test_full_profile_enforced_denies_nothing(suite, built_deb, tmp_path):
    """5. stage full + mode enforce: PID 1 enforced from the initramfs, zero DENIED lines; then
    what the initramfs loads by itself, normally and with each escape hatch that loads policy."""
    machine = new_machine(suite, tmp_path / "machine", built_deb)
    (machine.root / "etc/sysctl.d/10-aafs-test-no-printk-ratelimit.conf").write_text(NO_PRINTK_RATELIMIT)
    machine.chroot_run(["aa-fullsystem", "stage", "full"])
    machine.chroot_run(["aa-fullsystem", "mode", "enforce"])
    state = machine.read_file(STATE)
    assert re.search(rb"^STAGE=full$", state, re.M) and re.search(rb"^MODE=enforce$", state, re.M), state
    assert not (machine.root / "etc/apparmor.d/force-complain" / PROFILE).exists()

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
    for hatch, stage, label, roles in (("", "full", "enforce", True),
                                       ("aa_fullsystem=stub", "stub", "complain", False),
                                       ("aa_fullsystem=complain", "full", "complain", True)):
        boot = machine.boot(script=REPORT + LOADED_PROFILES, append=f"systemd.mask=apparmor.service {hatch}".strip())
        v = boot.values
        print(f"--- {suite}: apparmor.service masked, {hatch or 'no escape hatch'}\n{boot.output}")
        assert boot.reached_multi_user and v["apparmor_service"] == "inactive", where(boot)
        assert v["pid1"] == f"{PROFILE} ({label})", where(boot)
        assert v["record.loaded_stage"] == stage, where(boot)
        assert (f"{PROFILE}-system ({label})" in v["loaded_profiles"].split(",")) == roles, where(boot)
        assert f"{PROFILE} ({label})" in v["loaded_profiles"].split(","), where(boot)
