"""Maintainer scripts and aa-fullsystem(8) in a Debian chroot, where no boot is needed.

- A dpkg run killed in the middle of configure is finished by
  `dpkg --configure -a`, with the same end state as an uninterrupted install.
- aa-fullsystem refuses bad input (unknown stage, mode or command, a profile
  that does not compile, a broken state file) with a clear message and an
  exit status, and changes nothing: state file and initramfs stay as they were.

Chroots of bookworm only: what is tested here is dpkg's and our scripts'
logic, the same on both suites; the VM tests (test_boot, test_lifecycle)
run the package on both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aa_pkg.settings import BOOT_RECORD_KEYS

try:                    # tests/ imported as a package
    from . import vm
    from .guest import INITRAMFS_DIR, LAST_GOOD, STATE, chroot_text, initramfs_file, lsinitramfs, sha256
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import INITRAMFS_DIR, LAST_GOOD, STATE, chroot_text, initramfs_file, lsinitramfs, sha256

pytestmark = [pytest.mark.tools, pytest.mark.slow]

SUITE = "bookworm"
PACKAGE = "apparmor-fullsystem"


def base_machine(workdir: Path) -> vm.Machine:
    """A chroot of the VM base system, which has the package's dependencies (vm.PACKAGES)."""
    vm.require_tools("mmdebstrap", "unshare")
    vm.require_root()
    return vm.Machine.create(SUITE, workdir)


def put_deb(machine: vm.Machine, deb: Path) -> str:
    target = machine.root / "root" / deb.name
    target.write_bytes(deb.read_bytes())
    return f"/root/{deb.name}"


def end_state(machine: vm.Machine) -> dict[str, str]:
    """What an install leaves behind that an interrupted one must reach too."""
    def out(*args: str) -> str:
        return machine.chroot_run(list(args), check=False).stdout
    listing = "\n".join(sorted(line for line in lsinitramfs(machine).splitlines() if INITRAMFS_DIR in line))
    return {
        "status": out("dpkg-query", "-W", "-f", "${Status} ${Version}\n", PACKAGE),
        "audit": out("dpkg", "--audit"),
        "state": machine.read_file(STATE).decode(),
        "force-complain": out("readlink", "/etc/apparmor.d/force-complain/fullsystem-init"),
        "last-good": out("find", LAST_GOOD, "-type", "f"),
        "initramfs": listing,
        "conffiles": out("dpkg-query", "-W", "-f", "${Conffiles}\n", PACKAGE),
    }


def test_configure_killed_midway_is_completed_by_configure_a(built_deb, tmp_path):
    reference = base_machine(tmp_path / "reference")
    reference.chroot_run(["dpkg", "-i", put_deb(reference, built_deb)])
    expected = end_state(reference)
    assert expected["status"] == "install ok installed 0.1\n", expected
    assert f"{INITRAMFS_DIR}/boot.conf" in expected["initramfs"], expected

    machine = base_machine(tmp_path / "machine")
    deb = put_deb(machine, built_deb)
    # A wrapper around apparmor_parser that blocks when our postinst calls it
    # (dpkg exports DPKG_MAINTSCRIPT_* to maintainer scripts, deb-postinst(5)):
    # the point where the test kills dpkg, maintainer script and all.
    machine.chroot_run(["dpkg-divert", "--local", "--rename", "--add", "/usr/sbin/apparmor_parser"])
    wrapper = machine.root / "usr/sbin/apparmor_parser"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "${DPKG_MAINTSCRIPT_PACKAGE:-}" = apparmor-fullsystem ] && '
        '[ "${DPKG_MAINTSCRIPT_NAME:-}" = postinst ] && [ -e /run/aafs-block ]; then\n'
        "    : >/run/aafs-blocked\n    exec sleep 600\nfi\n"
        'exec /usr/sbin/apparmor_parser.distrib "$@"\n')
    wrapper.chmod(0o755)
    killed = machine.chroot_run(["sh", "-c", """
        : >/run/aafs-block
        setsid dpkg -i "$1" >/root/dpkg.log 2>&1 &
        dpkg=$!
        n=0
        until [ -e /run/aafs-blocked ]; do
            n=$((n + 1)); [ $n -lt 600 ] || { echo "postinst never reached the parser"; cat /root/dpkg.log; exit 3; }
            sleep 0.2
        done
        /bin/kill -KILL -- "-$dpkg"     # procps kill: the whole process group
        wait "$dpkg" || echo "dpkg exit status $?"
        cat /root/dpkg.log
        rm -f /run/aafs-block /run/aafs-blocked
        """, "sh", deb])
    print(f"--- dpkg -i, killed in the postinst\n{killed.stdout}")
    assert "dpkg exit status 137" in killed.stdout, chroot_text(killed)
    status = machine.chroot_run(["dpkg-query", "-W", "-f", "${Status}", PACKAGE]).stdout
    assert status == "install ok half-configured", status

    machine.chroot_run(["rm", "/usr/sbin/apparmor_parser"])
    machine.chroot_run(["dpkg-divert", "--local", "--rename", "--remove", "/usr/sbin/apparmor_parser"])
    finished = machine.chroot_run(["dpkg", "--configure", "-a"])
    print(f"--- dpkg --configure -a\n{finished.stdout}")
    assert end_state(machine) == expected


@pytest.fixture(scope="module")
def installed(built_deb, tmp_path_factory) -> vm.Machine:
    machine = base_machine(tmp_path_factory.mktemp("aa-fullsystem") / "machine")
    machine.chroot_run(["dpkg", "-i", put_deb(machine, built_deb)])
    return machine


def unchanged(machine: vm.Machine):
    """A snapshot of what a refused command must not touch; call it to compare."""
    initrd = machine.kernel_paths()[1]
    before = (machine.read_file(STATE), sha256(machine, initrd))

    def check() -> None:
        assert (machine.read_file(STATE), sha256(machine, initrd)) == before, "state or initramfs changed"
    return check


@pytest.mark.parametrize("args, status, message", [
    (["stage", "bogus"], 2, "aa-fullsystem: error: unknown stage 'bogus'"),
    (["stage"], 2, "aa-fullsystem: error: unknown stage ''"),
    (["mode", "strict"], 2, "aa-fullsystem: error: unknown mode 'strict'"),
    (["mode", "enforce"], 1, "aa-fullsystem: error: enforce mode needs the full stage"),
    (["frobnicate"], 2, "aa-fullsystem: error: unknown command 'frobnicate'"),
    (["--bogus"], 2, "aa-fullsystem: error: unknown option '--bogus'"),
    (["status", "--bogus"], 2, "aa-fullsystem: error: unknown argument '--bogus' for status"),
    (["early", "all"], 1, "aa-fullsystem: error: loading all policy early needs the full stage"),
    (["level", "paranoid"], 2, "aa-fullsystem: error: unknown level 'paranoid'"),
    (["level", "hardened"], 1, "aa-fullsystem: error: the hardened level needs the full stage"),
])
def test_bad_input_is_refused_and_changes_nothing(installed, args, status, message):
    check = unchanged(installed)
    result = installed.chroot_run(["aa-fullsystem", *args], check=False)
    assert result.returncode == status, chroot_text(result)
    lines = result.stdout.splitlines()
    assert lines[0] == message or lines[0].startswith(message), chroot_text(result)
    assert len(lines) == 2 and lines[1].startswith("aa-fullsystem: hint: "), chroot_text(result)
    check()


@pytest.mark.parametrize("args", [["--json", "status"], ["status", "--json"]])
def test_status_json_is_json(installed, args):
    result = installed.chroot_run(["aa-fullsystem", *args], check=False)
    assert result.returncode == 0, chroot_text(result)
    status = json.loads(result.stdout)
    assert (status["configured_stage"], status["configured_mode"], status["configured_early"],
            status["configured_level"]) == ("stub", "complain", "init", "standard"), status
    assert status["boot"]["outcome"] == "", status       # a chroot has no boot record
    assert isinstance(status["unconfined_processes"], int), status
    # No record, no boot to compare start times with: none is marked.
    assert status["unconfined_from_initramfs"] == 0, status


def test_profile_that_does_not_compile_is_refused(installed):
    admin_profile = installed.root / "etc/apparmor-fullsystem/policy.d/aafs-broken"
    admin_profile.write_text("abi <abi/3.0>,\nprofile aafs-broken /usr/bin/true {\n  this is not a rule,\n}\n")
    try:
        check = unchanged(installed)
        where = re.compile(r"/etc/apparmor-fullsystem/policy\.d/aafs-broken\b.* at line 3\b")
        for args in (["check"], ["stage", "full"]):
            result = installed.chroot_run(["aa-fullsystem", *args], check=False)
            print(f"--- aa-fullsystem {' '.join(args)}\n{result.stdout}")
            assert result.returncode == 1, chroot_text(result)
            assert where.search(result.stdout), chroot_text(result)
            assert "aa-fullsystem: error: " in result.stdout, chroot_text(result)
            check()
    finally:
        admin_profile.unlink()


def test_broken_state_file_is_named_with_its_line(installed):
    state = installed.root / STATE.lstrip("/")
    good = state.read_text()
    state.write_text(good.replace("STAGE=stub", "STAGE=fulll"))
    try:
        line = state.read_text().splitlines().index("STAGE=fulll") + 1
        result = installed.chroot_run(["aa-fullsystem", "stage", "full"], check=False)
        assert result.returncode == 1, chroot_text(result)
        assert f"{STATE} line {line}: 'STAGE=fulll': STAGE must be 'stub' or 'full'" in result.stdout, \
            chroot_text(result)
        assert f"hint: fix {STATE}" in result.stdout, chroot_text(result)
        assert state.read_text() == good.replace("STAGE=stub", "STAGE=fulll")
        status = installed.chroot_run(["aa-fullsystem", "status"], check=False)
        assert "invalid state file" in status.stdout, chroot_text(status)
        report = json.loads(installed.chroot_run(["aa-fullsystem", "--json", "status"], check=False).stdout)
        [invalid] = [f["message"] for f in report["findings"] if f["code"] == "state-invalid"]
        assert f"line {line}: 'STAGE=fulll'" in invalid, report["findings"]
        assert invalid in report["verdict"], report
    finally:
        state.write_text(good)


def test_level_hardened_and_back(built_deb, tmp_path):
    """`aa-fullsystem level`: the level's rules follow the state and the mode into the initramfs, and back."""
    machine = base_machine(tmp_path / "machine")
    machine.chroot_run(["dpkg", "-i", put_deb(machine, built_deb)])
    levels = f"/usr/share/{PACKAGE}/levels"
    copies = f"/etc/apparmor.d/{PACKAGE}.d"

    def copied(name: str) -> bytes:
        return machine.read_file(f"{copies}/{name}")

    # A fresh install: the standard level's rules, in the configured mode's variant.
    assert copied("init-exec") == machine.read_file(f"{levels}/standard.init")
    assert copied("roles") == machine.read_file(f"{levels}/roles-complain")

    refused = machine.chroot_run(["aa-fullsystem", "level", "hardened"], check=False)
    assert refused.returncode == 1 and "needs the full stage" in refused.stdout, chroot_text(refused)
    machine.chroot_run(["aa-fullsystem", "stage", "full"])
    done = machine.chroot_run(["aa-fullsystem", "level", "hardened"])
    assert "level hardened. Reboot to apply." in done.stdout, chroot_text(done)
    assert re.search(rb"^LEVEL=hardened$", machine.read_file(STATE), re.M)
    assert copied("init-exec") == machine.read_file(f"{levels}/hardened.init")
    # Complain mode: audit rules, which log and allow; no deny rule, which
    # AppArmor would enforce even in complain mode.
    shipped = initramfs_file(machine, "init-full")
    assert b"-> &fullsystem-init//&fullsystem-init-service," in shipped
    assert b"audit /boot/{,**} wl," in shipped and b"audit deny" not in shipped

    # The stub stage has no hardened level: refused, with the way out.
    refused = machine.chroot_run(["aa-fullsystem", "stage", "stub"], check=False)
    assert refused.returncode == 1, chroot_text(refused)
    assert refused.stdout.splitlines() == [
        "aa-fullsystem: error: the stub stage has no hardened level",
        "aa-fullsystem: hint: run 'aa-fullsystem level standard' first"], chroot_text(refused)

    machine.chroot_run(["aa-fullsystem", "mode", "enforce"])
    assert copied("roles") == machine.read_file(f"{levels}/roles-enforce")
    assert b"audit deny /boot/{,**} wl," in initramfs_file(machine, "init-full")

    machine.chroot_run(["aa-fullsystem", "level", "standard"])
    assert copied("init-exec") == machine.read_file(f"{levels}/standard.init")
    shipped = initramfs_file(machine, "init-full")
    assert b"/** Pix -> &fullsystem-init," in shipped and b"//&fullsystem-init-service," not in shipped

    # Purge leaves none of the copies.
    machine.chroot_run(["dpkg", "--purge", PACKAGE])
    assert not (machine.root / copies.lstrip("/")).exists()


# The initramfs's own boot script, run as its /init runs it: in the unpacked
# initramfs, under its shell (klibc's), with a kernel command line of the
# test's choosing over /proc/cmdline and an empty /run. This host has no
# AppArmor, so the script ends at "not enabled" after the command line,
# which is what these tests are about; the VM tests boot it for real.
RUN_BOOT_SCRIPT = r"""set -e
unpacked=$(mktemp -d)
unmkinitramfs "$1" "$unpacked"
root=$(find "$unpacked" -type d -path "*/$2" | head -n 1)
root=${root%/$2}
mkdir -p "$root/proc" "$root/run"
mount -t proc proc "$root/proc"
printf '%s\n' "$3" >/tmp/aafs-cmdline
mount --bind /tmp/aafs-cmdline "$root/proc/cmdline"
mount -t tmpfs tmpfs "$root/run"
chroot "$root" /bin/sh /scripts/init-bottom/apparmor-fullsystem
echo "--- record"
cat "$root/run/apparmor-fullsystem/boot"
"""


def boot_script(machine: vm.Machine, cmdline: str) -> tuple[str, dict[str, str]]:
    result = machine.chroot_run(["sh", "-c", RUN_BOOT_SCRIPT, "sh", machine.kernel_paths()[1], INITRAMFS_DIR, cmdline])
    said, record = result.stdout.split("--- record\n", 1)
    return said, dict(line.split("=", 1) for line in record.splitlines() if "=" in line)


def test_boot_script_names_an_unknown_escape_hatch_value(installed):
    said, record = boot_script(installed, "root=/dev/vda aa_fullsystem=of quiet")
    assert "ignoring aa_fullsystem=of on the kernel command line" in said, said
    assert record["ignored_parameters"] == "aa_fullsystem=of", record
    assert "AppArmor is not enabled" in record["reason"], record      # it went on, as it should

    said, record = boot_script(installed, "aa_fullsystem=off")
    assert record["outcome"] == "skipped" and "aa_fullsystem=off" in record["reason"], record
    assert record["ignored_parameters"] == "", record


def test_a_site_profile_that_never_compiled_stays_out_and_the_initramfs_is_built(installed):
    """One bad file in policy.d, with no earlier copy that compiled: left out, said so, not a failed hook."""
    admin_profile = installed.root / "etc/apparmor-fullsystem/policy.d/aafs-never-compiled"
    admin_profile.write_text("abi <abi/3.0>,\nprofile aafs-never-compiled /usr/bin/true {\n  not a rule,\n}\n")
    initrd = installed.kernel_paths()[1]
    before = sha256(installed, initrd)
    try:
        update = installed.chroot_run(["update-initramfs", "-u"], check=False)
        print(f"--- update-initramfs -u, a site profile that never compiled\n{update.stdout}")
        assert update.returncode == 0, chroot_text(update)
        assert re.search(r"aafs-never-compiled\b.* at line 3\b", update.stdout), chroot_text(update)
        assert "goes without it" in update.stdout, chroot_text(update)
        assert sha256(installed, initrd) != before
        assert "policy.d/aafs-never-compiled" not in lsinitramfs(installed)
        assert "AAFS_LEFT_OUT='aafs-never-compiled'" in initramfs_file(installed, "boot.conf").decode()
    finally:
        admin_profile.unlink()
        installed.chroot_run(["update-initramfs", "-u"])


def test_a_new_kernel_is_never_left_without_an_initramfs(installed):
    """Init's policy does not compile and no copy ever did: a kernel without an initramfs still gets one."""
    version = installed.kernel_paths()[1].removeprefix("/boot/initrd.img-")
    stub = installed.root / f"usr/share/{PACKAGE}/init-stub"
    good_stub = stub.read_text()
    stub.write_text(good_stub.replace("  change_profile,\n", "  change_profile,\n  not a rule,\n"))
    installed.chroot_run(["mv", LAST_GOOD, f"{LAST_GOOD}.saved"])
    installed.chroot_run(["mv", f"/boot/initrd.img-{version}", f"/root/initrd.img-{version}.saved"])
    # What that initrd was built from (aa-fullsystem status), restored with it.
    built_from = f"/var/lib/{PACKAGE}/initramfs/{version}"
    installed.chroot_run(["cp", built_from, "/root/built-from.saved"])
    try:
        # With an initramfs for that kernel, the hook fails and it is kept ...
        installed.chroot_run(["cp", f"/root/initrd.img-{version}.saved", f"/boot/initrd.img-{version}"])
        update = installed.chroot_run(["update-initramfs", "-u", "-k", version], check=False)
        assert update.returncode != 0, chroot_text(update)
        assert f"the previous initramfs for {version} is kept" in update.stdout, chroot_text(update)
        # ... without one (a new kernel), it gets one, without the profile.
        installed.chroot_run(["rm", f"/boot/initrd.img-{version}"])
        create = installed.chroot_run(["update-initramfs", "-c", "-k", version], check=False)
        print(f"--- update-initramfs -c, init's policy never compiled\n{create.stdout}")
        assert create.returncode == 0, chroot_text(create)
        assert f"{version} has no initramfs yet: it gets one without init-stub" in create.stdout, chroot_text(create)
        listing = lsinitramfs(installed)
        assert f"{INITRAMFS_DIR}/boot.conf" in listing and f"{INITRAMFS_DIR}/init-stub" not in listing, listing
    finally:
        stub.write_text(good_stub)
        installed.chroot_run(["rm", "-rf", LAST_GOOD])
        installed.chroot_run(["mv", f"{LAST_GOOD}.saved", LAST_GOOD])
        installed.chroot_run(["mv", f"/root/initrd.img-{version}.saved", f"/boot/initrd.img-{version}"])
        installed.chroot_run(["mv", "/root/built-from.saved", built_from])


def names(machine: vm.Machine) -> list[str]:
    """The profiles apparmor_parser loads from /etc/apparmor.d, as apparmor.service has it load them."""
    return machine.chroot_run(["sh", "-c", "apparmor_parser --names -- /etc/apparmor.d 2>/dev/null"]).stdout.split()


def test_remove_leaves_nothing_active_and_reinstall_restores(built_deb, tmp_path):
    """apt remove keeps the conffiles, disabled; a reinstall enables them; purge leaves no link."""
    machine = base_machine(tmp_path / "machine")
    deb = put_deb(machine, built_deb)
    link = "/etc/apparmor.d/disable/fullsystem-init"
    machine.chroot_run(["dpkg", "-i", deb])
    assert not (machine.root / link.lstrip("/")).is_symlink()

    machine.chroot_run(["dpkg", "-r", PACKAGE])
    assert (machine.root / "etc/apparmor.d/fullsystem-init").exists()            # a conffile, kept
    assert (machine.root / link.lstrip("/")).is_symlink()
    assert machine.chroot_run(["readlink", link]).stdout.strip() == "/etc/apparmor.d/fullsystem-init"
    # What apparmor.service loads (the parser, given /etc/apparmor.d, skips
    # a profile linked in disable/): none of ours.
    loaded = names(machine)
    assert "lsb_release" in loaded and not [name for name in loaded if name.startswith("fullsystem-init")], loaded

    machine.chroot_run(["dpkg", "-i", deb])
    assert not (machine.root / link.lstrip("/")).is_symlink()
    assert "fullsystem-init" in names(machine)

    machine.chroot_run(["dpkg", "-r", PACKAGE])
    machine.chroot_run(["dpkg", "--purge", PACKAGE])
    assert not (machine.root / link.lstrip("/")).is_symlink()
    assert not (machine.root / "etc/apparmor.d/fullsystem-init").exists()


# update-initramfs, for the concurrency test: runs our hook as mkinitramfs
# runs it (a DESTDIR of its own, $version), for every kernel, and nothing
# else of mkinitramfs, so that many rounds take seconds.
HOOK_ONLY_UPDATE_INITRAMFS = r"""#!/bin/sh
set -e
for version in $(ls /usr/lib/modules); do
    DESTDIR=$(mktemp -d)
    export DESTDIR version verbose=n
    /usr/share/initramfs-tools/hooks/apparmor-fullsystem
    rm -rf "$DESTDIR"
done
"""

CONCURRENT_ROUND = r"""
aa-fullsystem mode "$1" >/tmp/a.log 2>&1 & a=$!
aa-fullsystem early "$2" >/tmp/b.log 2>&1 & b=$!
update-initramfs >/tmp/c.log 2>&1 & c=$!
update-initramfs >/tmp/d.log 2>&1 & d=$!
status=0
for pid in $a $b $c $d; do wait $pid || status=$?; done
cat /tmp/a.log /tmp/b.log /tmp/c.log /tmp/d.log
echo "@@ status=$status"
echo "@@ state=$(grep -v '^#' /etc/apparmor-fullsystem/state | tr '\n' ' ')"
echo "@@ last_good=$(ls /var/lib/apparmor-fullsystem/last-good/ | tr '\n' ' ')"
echo "@@ copies=$(find /var/lib/apparmor-fullsystem -maxdepth 1 -type d -name 'last-good*' | wc -l)"
"""


def test_concurrent_changes_and_hook_runs_lose_nothing(built_deb, tmp_path):
    """aa-fullsystem runs and hook runs at once, round after round: no change lost, the last good copy whole."""
    machine = base_machine(tmp_path / "machine")
    machine.chroot_run(["dpkg", "-i", put_deb(machine, built_deb)])
    machine.chroot_run(["aa-fullsystem", "stage", "full"])
    machine.chroot_run(["dpkg-divert", "--local", "--rename", "--add", "/usr/sbin/update-initramfs"])
    fake = machine.root / "usr/sbin/update-initramfs"
    fake.write_text(HOOK_ONLY_UPDATE_INITRAMFS)
    fake.chmod(0o755)
    for round_, (mode, early) in enumerate([("enforce", "all"), ("complain", "init")] * 4):
        result = machine.chroot_run(["sh", "-c", CONCURRENT_ROUND, "sh", mode, early])
        values = dict(line[3:].split("=", 1) for line in result.stdout.splitlines() if line.startswith("@@ "))
        context = f"round {round_}: mode {mode}, early {early}\n{result.stdout}"
        assert values["status"] == "0", context
        # Both changes, whichever came second.
        assert values["state"] == f"STAGE=full MODE={mode} EARLY={early} LEVEL=standard ", context
        assert values["last_good"] == "init-full init-stub policy.d ", context
        assert values["copies"] == "1", context           # the link's copy only


def test_status_json_is_valid_for_any_bytes(installed):
    """A boot record with any bytes: status's JSON is valid, and says every key of it."""
    record = installed.root / "run/apparmor-fullsystem/boot"
    record.parent.mkdir(parents=True, exist_ok=True)
    reason = b'odd \x1b[2J "quoted" back\\slash \xff caf\xc3\xa9 \xed\xa0\x80 \xf0\x9f\x98\x80 \x01'
    others = {key: f"{key}-value" for key in BOOT_RECORD_KEYS if key not in ("reason", "loaded_stage")}
    record.write_bytes(b"loaded_stage=stub\nreason=" + reason + b"\n"
                       + "".join(f"{key}={value}\n" for key, value in others.items()).encode())
    try:
        installed.chroot_run(["sh", "-c", "aa-fullsystem --json status >/root/status.json"], check=False)
        status = json.loads((installed.root / "root/status.json").read_bytes())     # strict UTF-8, strict JSON
    finally:
        record.unlink()
    # Control characters escaped and kept, valid UTF-8 kept, each byte of
    # an invalid sequence (0xff; a UTF-16 surrogate) replaced.
    assert status["boot"]["reason"] == ('odd \x1b[2J "quoted" back\\slash \ufffd café \ufffd\ufffd\ufffd '
                                        '\U0001f600 \x01'), status["boot"]
    assert list(status["boot"]) == list(BOOT_RECORD_KEYS), status["boot"]
    assert {key: status["boot"][key] for key in others} == others, status["boot"]


def test_status_findings_are_the_verdict_in_text_and_json(installed):
    """Each problem of a boot record is a finding with a stable code; text and JSON say the same verdict."""
    record = installed.root / "run/apparmor-fullsystem/boot"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("outcome=fallback\nreason=the full profile\twas refused\nloaded_stage=full\n"
                      "init_attach=no\nearly=refused\nignored_parameters=aa_fullsystem=bogus\n"
                      "left_out=site-a\nkept_last_good=init-full\n")
    try:
        text = installed.chroot_run(["aa-fullsystem", "status"], check=False).stdout
        report = json.loads(installed.chroot_run(["aa-fullsystem", "--json", "status"], check=False).stdout)
    finally:
        record.unlink()
    # A chroot on a host without AppArmor: PID 1 has no label of ours.
    assert [f["code"] for f in report["findings"]] == [
        "pid1-unconfined", "boot-fallback", "early-refused", "unknown-parameter", "policy-left-out",
        "last-good-kept"], report["findings"]
    messages = {f["code"]: f["message"] for f in report["findings"]}
    # A tab in a recorded value stays inside its finding.
    assert messages["boot-fallback"] == "Boot-time problem: the full profile was refused.", messages
    assert "aa_fullsystem=bogus" in messages["unknown-parameter"], messages
    assert "goes without site-a" in messages["policy-left-out"], messages
    assert report["verdict"] == " ".join(f["message"] for f in report["findings"]), report
    assert f"Verdict:      {report['verdict']}" in text.splitlines(), text


def test_status_names_a_stale_initramfs(installed):
    """A site profile added, changed or removed since the initramfs was built: status says which one is stale and what to run."""
    version = installed.kernel_paths()[1].removeprefix("/boot/initrd.img-")

    def stale() -> str:
        result = installed.chroot_run(["aa-fullsystem", "--json", "status"], check=False)
        return json.loads(result.stdout)["stale_initramfs"]

    def digest() -> str:
        script = f". /usr/share/{PACKAGE}/functions && aafs_load_state && aafs_policy_digest"
        return installed.chroot_run(["sh", "-c", script]).stdout.strip()

    assert stale() == ""
    profile = installed.root / "etc/apparmor-fullsystem/policy.d/aafs-stale-probe"
    profile.write_text("abi <abi/3.0>,\nprofile aafs-stale-probe /usr/bin/true flags=(complain) {\n}\n")
    try:
        assert stale() == version
        text = installed.chroot_run(["aa-fullsystem", "status"], check=False).stdout
        assert f"  {version}: stub (stale: run 'update-initramfs -u -k all')" in text, text
        assert f"The initramfs of {version} is stale" in text, text
        installed.chroot_run(["update-initramfs", "-u"])
        assert stale() == ""
        # Its rules changed, same name and size: the digest reads contents.
        profile.write_text(profile.read_text().replace("/usr/bin/true", "/usr/bin/echo"))
        assert stale() == version
        installed.chroot_run(["update-initramfs", "-u"])
        assert stale() == ""
        # A link's target is part of the digest too (aa-disable(8) makes
        # links); one in local/, which no profile includes, changes nothing else.
        link = installed.root / "etc/apparmor.d/local/aafs-stale-link"
        link.symlink_to("/dev/null")
        try:
            before = digest()
            link.unlink()
            link.symlink_to("/dev/zero")
            assert digest() != before
        finally:
            link.unlink()
    finally:
        profile.unlink()
    # Removed from policy.d: the initramfs still loads it until rebuilt.
    assert stale() == version
    installed.chroot_run(["update-initramfs", "-u"])
    assert stale() == ""


def test_a_state_that_cannot_be_written_is_reported_and_nothing_changes(installed):
    """A failed state write is an error, and the level's rules are put back: no success reported for nothing."""
    check = unchanged(installed)
    rules = installed.read_file(f"/etc/apparmor.d/{PACKAGE}.d/roles")
    # /etc/apparmor-fullsystem read-only, in the command's own mount namespace.
    result = installed.chroot_run(["sh", "-c", "mount --bind /etc/apparmor-fullsystem /etc/apparmor-fullsystem"
                                   " && mount -o remount,ro,bind /etc/apparmor-fullsystem"
                                   " && aa-fullsystem stage full"], check=False)
    print(f"--- aa-fullsystem stage full, state read-only\n{result.stdout}")
    assert result.returncode == 1, chroot_text(result)
    assert f"aa-fullsystem: error: cannot write {STATE}; nothing was changed" in result.stdout, chroot_text(result)
    assert "Reboot to apply" not in result.stdout, chroot_text(result)
    assert installed.read_file(f"/etc/apparmor.d/{PACKAGE}.d/roles") == rules
    check()
