"""The VM harness itself: a plain Debian boots, and changes persist.

No package of ours is installed here; this proves that tests/vm.py works on
each suite before any test relies on it.
"""

import subprocess

import pytest

try:                    # tests/ imported as a package
    from . import vm
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture
def machine(request, tmp_path):
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    return vm.Machine.create(request.param, tmp_path / "machine")


@pytest.mark.parametrize("machine", vm.SUITES, indirect=True)
def test_plain_boot_and_persistence(machine, record_property):
    size = machine.initrd_size()
    first = machine.boot(script=(
        "echo @@ pid1=$(cat /proc/1/attr/current)\n"
        "echo @@ kernel=$(uname -r)\n"
        "echo @@ aa_enabled=$(cat /sys/module/apparmor/parameters/enabled)\n"
        "echo @@ randomize_va_space=$(cat /proc/sys/kernel/randomize_va_space)\n"
        "echo hello from boot 1 > /root/marker\n"))
    record_property("initrd_bytes", size)
    record_property("seconds_to_probe", first.seconds_to_probe)
    record_property("wall_seconds", first.wall_seconds)
    print(f"{machine.suite}: kernel {first.values.get('kernel')}, "
          f"initrd {size} bytes, probe at {first.seconds_to_probe:.1f}s "
          f"guest uptime / {first.wall_seconds:.1f}s host wall time")

    assert first.reached_multi_user, first.log_path
    assert first.script_exit == 0, first.output
    # AppArmor is on, but nothing confines PID 1 in a plain system.
    assert first.values["aa_enabled"] == "Y"
    assert first.values["pid1"] == "unconfined"
    assert first.values["kernel"] in machine.kernel_paths()[0]
    # Test guests run without address space randomisation (what makes
    # TCG several times faster, vm.NO_ADDRESS_RANDOMIZATION)...
    assert first.values["randomize_va_space"] == "0", first.log_path

    # From now on the image is the truth: the host reads the guest's write...
    assert machine.read_file("/root/marker") == b"hello from boot 1\n"
    with pytest.raises(RuntimeError, match="has booted"):
        machine.chroot_run(["true"])

    # ...and so does the next boot of the same machine, this one with the
    # kernel's default randomisation, as tools/bench-boot boots.
    machine.randomize_addresses = True
    second = machine.boot(script=(
        "echo @@ marker=$(cat /root/marker)\n"
        "echo @@ randomize_va_space=$(cat /proc/sys/kernel/randomize_va_space)\n"))
    assert second.reached_multi_user, second.log_path
    assert second.values["marker"] == "hello from boot 1"
    assert second.values["randomize_va_space"] == "2", second.log_path


FAKE_QEMU = """#!/bin/sh
# Writes a serial log like a guest whose kernel {when}, then exits as qemu
# does on a panic with -no-reboot.
while [ $# -gt 0 ]; do
    case $1 in -serial) log=${{2#file:}}; shift ;; esac
    shift
done
{{
    echo "[    0.000000] Linux version 6.12.0 (fake)"
    {run_init}
    echo "[    1.400000] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
    echo "[    1.500000] Kernel panic - not syncing: Fatal exception in interrupt"
}} >"$log"
"""


@pytest.mark.tools
@pytest.mark.parametrize("run_init, blamed", [(False, True), (True, False)])
def test_boot_error_says_when_the_kernel_died_before_init(tmp_path, monkeypatch, run_init, blamed):
    """A panic before /init ran is named as such: nothing of ours had run yet."""
    vm.require_tools("mke2fs", "debugfs")
    qemu = tmp_path / "fake-qemu"
    qemu.write_text(FAKE_QEMU.format(
        when="panicked " + ("after" if run_init else "before") + " /init ran",
        run_init='echo "[    1.000000] Run /init as init process"' if run_init else ":"))
    qemu.chmod(0o755)
    monkeypatch.setattr(vm.impl, "QEMU", str(qemu))
    machine = vm.Machine("trixie", tmp_path / "machine")
    (machine.root / "boot").mkdir(parents=True)
    (machine.root / "boot/vmlinuz-6.12.0").write_bytes(b"kernel")
    (machine.root / "boot/initrd.img-6.12.0").write_bytes(b"initrd")

    with pytest.raises(vm.BootError) as error:
        machine.boot(timeout=30)
    assert error.value.reason.startswith("the probe did not finish"), error.value.reason
    assert ("panicked before it ran the initramfs's /init" in error.value.reason) == blamed, error.value.reason


def test_probe_report_is_found_after_a_status_line_without_newline(tmp_path):
    """A status line systemd left unfinished does not hide the probe's report."""
    # What the serial port holds when the probe starts while a start job
    # is still shown: the status ends in a bare carriage return, and the
    # probe's first line follows on the same line of the log.
    log = ("[  OK  ] Reached target multi-user.target\r\n"
           "[  ***] A start job is running for x.service (3s / 1min 30s)\r"
           f"{vm.BEGIN}\r\n"
           "vm-probe: uptime=12.5\r\nvm-probe: multi-user.target=active\r\n"
           f"{vm.SCRIPT}\r\n@@ pid1=unconfined\r\nvm-probe: script-exit=0\r\n{vm.END}\r\n")
    boot = vm._parse_boot(log.replace("\r", ""), tmp_path / "serial.log", 1.0, 2.0)
    assert boot is not None
    assert boot.values == {"pid1": "unconfined"}
    assert boot.script_exit == 0 and boot.seconds_to_probe == 12.5
    # A status line drawn between two of the probe's lines leaves the
    # erase-line sequence in front of the next one (seen on dracut's first
    # boot, console-setup.service still starting); its value still counts.
    drawn = log.replace(
        "vm-probe: multi-user.target",
        "\x1bM\r\r\x1b[K[  OK  ] Finished console-setup.service\r\r\n"
        "\x1b[Kvm-probe: multi-user.target")
    boot = vm._parse_boot(drawn.replace("\r", ""), tmp_path / "serial.log", 1.0, 2.0)
    assert boot is not None and boot.reached_multi_user
    # And a log whose probe never printed its end is still "did not finish".
    assert vm._parse_boot(log[:log.index(vm.END)], tmp_path / "serial.log", 1.0, 2.0) is None


@pytest.mark.parametrize(("table", "expected"), [
    # The user's first range of at least 65536 ids, by name or by uid.
    ("other:100000:65536\nuser:165536:65536\n", (165536, 65536)),
    ("1234:200000:100000\n", (200000, 100000)),
    # Too short for the guest's ids, malformed, someone else's: none.
    ("user:100000:1000\nuser:x:65536\nother:300000:65536\n", None),
    ("", None),
])
def test_subordinate_ids_of_the_user_are_read_by_name_or_uid(tmp_path, table, expected):
    path = tmp_path / "subuid"
    path.write_text(table)
    assert vm.subordinate_ids(str(path), "user", 1234) == expected
    assert vm.subordinate_ids(str(tmp_path / "absent"), "user", 1234) is None


def test_as_root_runs_with_stdin_from_dev_null_and_says_how_it_ended():
    vm.require_root()
    done = vm.as_root(["sh", "-c", "cat; id -u; exit 3"], check=False, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (3, "0\n")
    with pytest.raises(subprocess.CalledProcessError):
        vm.as_root(["false"])
    with pytest.raises(ValueError, match="stdin"):
        vm.as_root(["true"], stdin=subprocess.PIPE)
