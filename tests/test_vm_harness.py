"""The VM harness itself: a plain Debian boots, and changes persist.

No package of ours is installed here; this proves that tests/vm.py works on
each suite before any test relies on it.
"""

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

    # From now on the image is the truth: the host reads the guest's write...
    assert machine.read_file("/root/marker") == b"hello from boot 1\n"
    with pytest.raises(RuntimeError, match="has booted"):
        machine.chroot_run(["true"])

    # ...and so does the next boot of the same machine.
    second = machine.boot(script="echo @@ marker=$(cat /root/marker)\n")
    assert second.reached_multi_user, second.log_path
    assert second.values["marker"] == "hello from boot 1"
