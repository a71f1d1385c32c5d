"""The one reader of AppArmor's audit records (cli/audit-records.awk.j2), on kernel logs.

`aa-fullsystem status` counts and lists refusals through it, so what it
misreads, status misreports. It runs here, rendered as the package ships it,
under every awk it may meet (mawk is Debian's default; gawk and busybox's
when installed; tools/setup installs them), on the AppArmor records of two
real boots (tests/data: bookworm at the hardened level with a service's
refused operations, trixie loading the whole policy, one profile name in
hex) and on lines in the kernel's format that the boots did not produce:
hex-encoded comm= and name= with a space, a quote, a tab, a newline,
non-ASCII bytes; dbus-daemon's records; the journal's form without a
timestamp; a line forged through /dev/kmsg.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aa_pkg.config import Config
from aa_pkg.render import Paths, context, environment

try:                    # tests/ imported as a package
    from . import vm
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm

DATA = Path(__file__).parent / "data"
RECORDED = sorted(DATA.glob("kernel-log-*.txt"))


def awks() -> list[list[str]]:
    """The awks to run the reader with: mawk always; gawk and busybox's if
    present, required where tools are (CI)."""
    found = [["mawk"]]
    if shutil.which("gawk") or os.environ.get("AA_PKG_REQUIRE_TOOLS") == "1":
        found.append(["gawk"])
    if shutil.which("busybox") or os.environ.get("AA_PKG_REQUIRE_TOOLS") == "1":
        found.append(["busybox", "awk"])
    return found


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = Config()
    assert Paths(config.package, config.profile_name).audit_reader.name == "audit-records"
    path = tmp_path_factory.mktemp("reader") / "audit-records"
    path.write_text(environment().get_template("cli/audit-records.awk.j2").render(context(config)))
    return path


def read(awk: list[str], reader: Path, log: bytes) -> list[list[str]]:
    vm.require_tools(awk[0])
    out = subprocess.run([*awk, "-f", str(reader)], input=log, capture_output=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return [line.split("\t") for line in out.decode("ascii").splitlines()]


def escaped(raw: bytes) -> str:
    """The reader's escaping of raw bytes: 0x20-0x7e but the backslash as they are, the rest \\ooo."""
    return "".join(chr(b) if 32 <= b <= 126 and b != 92 else f"\\{b:03o}" for b in raw)


# An independent reading of the kernel's format, for the recorded logs.
FIELD = re.compile(rb'([a-z_]+)=("[^"]*"|[^ "\']*)')
UNTRUSTED = {b"profile", b"name", b"comm", b"peer", b"target", b"label", b"peer_label"}


def model(line: bytes) -> list[str]:
    values: dict[bytes, str] = {}
    for key, raw in FIELD.findall(line[line.index(b"apparmor="):]):
        if key in values:
            continue
        if raw.startswith(b'"'):
            values[key] = escaped(raw[1:-1])
        elif key in UNTRUSTED and re.fullmatch(rb"(?:[0-9A-F]{2})+", raw):
            values[key] = escaped(bytes.fromhex(raw.decode()))
        else:
            values[key] = escaped(raw)
    profile = values.get(b"profile", values.get(b"label", ""))
    target = values.get(b"name") or values.get(b"capname") or values.get(b"peer") or ""
    return [values[b"apparmor"], profile, values.get(b"comm", ""), values.get(b"operation", ""), target,
            values.get(b"info", "")]


@pytest.mark.parametrize("awk", awks(), ids=lambda awk: awk[0])
@pytest.mark.parametrize("log", RECORDED, ids=lambda path: path.stem)
def test_recorded_boots(reader: Path, awk: list[str], log: Path) -> None:
    data = log.read_bytes()
    records = [line for line in data.splitlines() if b'apparmor="' in line]
    assert len(records) > 20, log
    assert read(awk, reader, data) == [model(line) for line in records]


@pytest.mark.parametrize("awk", awks(), ids=lambda awk: awk[0])
def test_recorded_values(reader: Path, awk: list[str]) -> None:
    """What status shows of the recorded boots: the refusals by program and target, a hex name decoded."""
    bookworm = read(awk, reader, (DATA / "kernel-log-bookworm-hardened.txt").read_bytes())
    assert ["DENIED", "fullsystem-init-service", "touch", "mknod", "/boot/aafs-probe", ""] in bookworm
    assert ["DENIED", "fullsystem-init-service", "modprobe", "capable", "sys_module", ""] in bookworm
    assert ["STATUS", "fullsystem-init-system", "apparmor_parser", "profile_replace", "fullsystem-init",
            "same as current profile, skipping"] in bookworm
    trixie = read(awk, reader, (DATA / "kernel-log-trixie-dracut.txt").read_bytes())
    assert ["STATUS", "fullsystem-init", "apparmor_parser", "profile_load", "MongoDB Compass", ""] in trixie


def kernel_hex(text: bytes) -> str:
    """How audit_log_n_hex writes an untrusted value: uppercase hex, unquoted."""
    return text.hex().upper()


ODD_NAME = b'/boot/a "b"\tc\nd\xc3\xa9\\e'
ODD_COMM = b"aafs touch"
SYNTHETIC = [
    # A refusal whose program and file are named to hide from a reader.
    (b"[  100.000001] audit: type=1400 audit(1.0:7): apparmor=\"DENIED\" operation=\"mknod\" "
     b"profile=\"fullsystem-init-service\" name=" + kernel_hex(ODD_NAME).encode()
     + b" pid=99 comm=" + kernel_hex(ODD_COMM).encode() + b" requested_mask=\"c\" denied_mask=\"c\" fsuid=0 ouid=0",
     ["DENIED", "fullsystem-init-service", "aafs touch", "mknod", escaped(ODD_NAME), ""]),
    # The journal's form (journalctl -k -o cat): no timestamp.
    (b"audit: type=1400 audit(1.0:8): apparmor=\"DENIED\" operation=\"capable\" class=\"cap\" "
     b"profile=\"fullsystem-init-service\" pid=5 comm=\"modprobe\" capability=16  capname=\"sys_module\"",
     ["DENIED", "fullsystem-init-service", "modprobe", "capable", "sys_module", ""]),
    # dbus-daemon's record, sent through the audit subsystem (USER_AVC):
    # the label, not a profile, and the bus name as the target.
    (b"audit: type=1107 audit(1.0:9): pid=1 uid=101 auid=4294967295 ses=4294967295 subj=unconfined "
     b"msg='apparmor=\"DENIED\" operation=\"dbus_method_call\"  bus=\"system\" path=\"/org/freedesktop/systemd1\" "
     b"interface=\"org.freedesktop.systemd1.Manager\" member=\"StartTransientUnit\" mask=\"send\" "
     b"name=\"org.freedesktop.systemd1\" pid=1234 label=\"fullsystem-init-service\" peer_pid=1 "
     b"peer_label=\"fullsystem-init\"  exe=\"/usr/bin/dbus-daemon\" sauid=101 hostname=? addr=? terminal=?'",
     ["DENIED", "fullsystem-init-service", "", "dbus_method_call", "org.freedesktop.systemd1", ""]),
    # A ptrace refusal names its peer; info with spaces stays whole.
    (b"[    9.5] audit: type=1400 audit(1.0:10): apparmor=\"DENIED\" operation=\"ptrace\" class=\"ptrace\" "
     b"profile=\"fullsystem-init-service\" pid=7 comm=\"perl\" requested_mask=\"read\" denied_mask=\"read\" "
     b"peer=\"fullsystem-init\" info=\"a b c\"",
     ["DENIED", "fullsystem-init-service", "perl", "ptrace", "fullsystem-init", "a b c"]),
    # Written to /dev/kmsg by whoever may: control bytes in a quoted value
    # are escaped, never passed through.
    (b"[   10.0] aafs: apparmor=\"DENIED\" profile=\"x\x1b[2J\" operation=\"open\" name=\"/a\\b\"",
     ["DENIED", "x\\033[2J", "", "open", "/a\\134b", ""]),
]


@pytest.mark.parametrize("awk", awks(), ids=lambda awk: awk[0])
def test_hex_and_odd_values(reader: Path, awk: list[str]) -> None:
    log = b"[    0.000000] Linux version 6.1.0\n[    1.0] not a record\n" + b"\n".join(
        line for line, _ in SYNTHETIC) + b"\n"
    assert read(awk, reader, log) == [expected for _, expected in SYNTHETIC]
    # Every line is one record: no tab or newline survives from a name.
    assert all(len(fields) == 6 for fields in read(awk, reader, log))
