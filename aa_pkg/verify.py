"""aa-pkg verify: boot-test built packages in the Debian release a fleet runs.

A site variant or a site-policy package that refuses something the boot
needs reaches every machine of a fleet at its next upgrade. verify shows it
first, on the real thing: a minimal image of the target release (cached),
the .debs installed with apt as a user installs them, the requested state
set with aa-fullsystem, one boot under qemu, and the kernel's own answers
read in the guest. Each problem is a finding with a stable code: the
findings of `aa-fullsystem status` that mean a problem (aa_pkg/findings.py),
and verify's own (VERIFY_FINDINGS). No finding, exit 0; any, exit 1.

The boot goes through the one VM layer (aa_pkg.vm), the one the test suite
boots every guest through.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aa_pkg import vm
from aa_pkg.errors import AaPkgError, ToolMissingError
from aa_pkg.findings import FINDINGS
from aa_pkg.publish import sha256
from aa_pkg.settings import FULL, SETTINGS

# What verify reports beyond status's findings.
VERIFY_FINDINGS: dict[str, str] = {
    "no-report": "The guest did not get to multi-user and the report: a hang, a panic, or a failed boot.",
    "multi-user-not-reached": "multi-user.target was not active when the boot finished.",
    "failed-units": "Units failed during the boot, or systemctl could not list them.",
    "status-unreadable": "aa-fullsystem status gave no JSON (is the package installed?).",
    "profile-not-attached": "A process runs under another label than the profile loaded for its program.",
}

# status's findings that are no problem of the package: processes the
# initramfs started, still exiting when status runs.
NOT_A_PROBLEM = frozenset({"initramfs-leftovers"})

TOOLS = {                       # program: the Debian package that has it
    "mmdebstrap": "mmdebstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "unshare": "util-linux",
}

BACKPORTS_SUITES = ("trixie",)

T = TypeVar("T")

# What the guest reports, as "@@ key=value" lines (aa_pkg.vm): status's
# JSON on one line, the failed units, the kernel's profiles, and each
# process's program and label.
REPORT = r"""
echo "@@ pid1=$(cat /proc/1/attr/current 2>&1)"
# A systemctl that fails lists no unit: say so, never "none failed".
if failed=$(systemctl --failed --plain --no-legend --no-pager 2>&1); then
    echo "@@ failed_units=$(printf '%s\n' "$failed" | cut -d' ' -f1 | paste -s -d' ' -)"
else
    echo "@@ failed_units_unread=$(printf '%s\n' "$failed" | head -n 1)"
fi
echo "@@ status_json=$(aa-fullsystem --json status 2>/dev/null | tr -d '\n')"
echo "@@ profiles=$(cat /sys/kernel/security/apparmor/profiles 2>/dev/null | paste -s -d'|' -)"
for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    echo "@@ process.${p#/proc/}=$(cat "$p/attr/current" 2>/dev/null)|$exe"
done
"""

# Ask the running kernel to precompile for itself: a chroot has no
# AppArmor features to compile for (aa-fullsystem(8), "early").
SETTLE_EARLY = "update-initramfs -u >/dev/null 2>&1; echo \"@@ rebuilt=$?\"\n"


@dataclass(frozen=True)
class State:
    """The state to verify, as `aa-fullsystem stage|mode|early|level` sets it; None: as installed
    (a site variant's own defaults)."""

    stage: str | None = None
    mode: str | None = None
    early: str | None = None
    level: str | None = None

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            value = getattr(self, setting.command)
            if value is not None and value not in setting.values:
                raise AaPkgError(f"--{setting.command} {value}: unknown {setting.noun}",
                                 f"use one of {', '.join(setting.values)}")
            rule = setting.needs_full
            if self.stage == "stub" and rule is not None and value == rule.value:
                raise AaPkgError(f"--{setting.command} {value} with --stage stub: {rule.refused}",
                                 f"add --stage {FULL}")

    def commands(self) -> list[list[str]]:
        """aa-fullsystem's commands to this state, in an order each allows: the full stage
        before what needs it, the stub stage after what it cannot have."""
        others = [[s.command, getattr(self, s.command)] for s in SETTINGS
                  if s.command != "stage" and getattr(self, s.command) is not None]
        if self.stage is None:
            return others
        return [["stage", self.stage], *others] if self.stage == FULL else [*others, ["stage", self.stage]]

    def label(self) -> str:
        return ", ".join(f"{s.command} {getattr(self, s.command) or 'as installed'}" for s in SETTINGS)


@dataclass
class Finding:
    code: str
    message: str


@dataclass
class Result:
    suite: str
    backports: bool
    state: State
    debs: dict[str, str]                        # file name: SHA-256
    accel: str
    findings: list[Finding] = field(default_factory=list)
    pid1: str = ""
    reached_multi_user: bool = False
    seconds_to_multi_user: float | None = None
    boot_record: dict[str, str] = field(default_factory=dict)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    would_refuse: list[dict[str, Any]] = field(default_factory=list)
    unconfined: int | None = None
    failed_units: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    serial_log: str = ""

    @property
    def passed(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def check_can_run() -> None:
    """A one-line error for a missing tool, or for a user who cannot be root of a user
    namespace, before anything is built."""
    tools = {**TOOLS, **(vm.USERNS_TOOLS if vm.unprivileged() else {})}
    missing = vm.missing_tools(*tools)
    if missing:
        packages = sorted({tools[name] for name in missing})
        raise ToolMissingError(f"aa-pkg verify needs {', '.join(missing)}",
                               f"install them: apt-get install {' '.join(packages)} (tools/setup does)")
    if vm.unprivileged():
        # What every step as the guest's root will do, tried once: the user's
        # subordinate ids, newuidmap's checks of them, the kernel's consent.
        try:
            vm.as_root(["true"])
        except vm.UserNamespaceError as e:
            raise AaPkgError(f"aa-pkg verify as {getpass.getuser()}: {e.args[0]}", e.args[1]) from None


def verify(debs: list[Path], suite: str, state: State, workdir: Path, backports: bool = False,
           accel: str = "auto", progress: Callable[[str], None] = lambda _: None,
           timeout: int = 900) -> Result:
    """Install debs into a fresh guest of suite, set state, boot it, and say what the kernel says."""
    for deb in debs:
        if not deb.is_file():
            raise AaPkgError(f"{deb}: no such file", "give the path of a .deb that aa-pkg build wrote")
    if suite not in vm.KNOWN_SUITES:
        raise AaPkgError(f"--suite {suite}: unknown", f"use one of {', '.join(vm.KNOWN_SUITES)}")
    if backports and suite not in BACKPORTS_SUITES:
        raise AaPkgError(f"--backports: no backports kernel is known for {suite}",
                         f"use it with --suite {' or '.join(BACKPORTS_SUITES)}")
    check_can_run()
    if workdir.exists() and any(workdir.iterdir()):
        raise AaPkgError(f"{workdir}: not empty", "give a new or empty directory with --workdir")
    accel = vm.usable_accel() if accel == "auto" else accel
    result = Result(suite=suite, backports=backports, state=state,
                    debs={deb.name: sha256(deb) for deb in debs}, accel=accel)

    def phase(name: str, what: str, step: Callable[[], T]) -> T:
        progress(f"{what} ...")
        start = time.monotonic()
        value = step()
        result.phases[name] = round(time.monotonic() - start, 1)
        progress(f"{what}: {result.phases[name]} s")
        return value

    try:
        machine = phase("image", f"image of {suite} (built once, cached in {vm.cache_dir()})",
                        lambda: vm.Machine.create(suite, workdir / "machine"))
    except subprocess.CalledProcessError as e:
        raise AaPkgError(f"the image of {suite} was not made: {Path(str(e.cmd[0])).name} exited with "
                         f"status {e.returncode}", "its own messages are above") from None
    machine.accel = accel
    try:
        prepare(machine, debs, state, workdir, backports, phase)
        try:
            if state.early == "all":
                phase("settle", f"first boot under qemu ({accel}): precompile for the kernel",
                      lambda: machine.boot(script=SETTLE_EARLY, timeout=timeout))
            boot = phase("boot", f"boot under qemu ({accel})",
                         lambda: machine.boot(script=REPORT, timeout=timeout))
        except vm.BootError as e:
            result.serial_log = str(e.log_path)
            result.findings.append(Finding("no-report", f"{e.reason}; the serial log: {e.log_path}"))
            return result
    finally:
        # The directory is stale once booted, and holds files only root (of
        # a user namespace, when not root) may remove: the image, the serial
        # logs and failed-command.log stay in workdir.
        machine.drop_root()
    read_boot(result, boot)
    return result


def prepare(machine: vm.Machine, debs: list[Path], state: State, workdir: Path, backports: bool,
            phase: Callable[[str, str, Callable[[], Any]], Any]) -> None:
    """Install debs into the guest's directory, as apt does, and set state, as aa-fullsystem does."""
    try:
        if backports:
            phase("backports", f"the {machine.suite}-backports kernel", lambda: install_backports_kernel(machine))
        phase("install", f"apt-get install {' '.join(deb.name for deb in debs)}",
              lambda: machine.install_debs([deb.resolve() for deb in debs]))
        probe_is_admin(machine)
        commands = state.commands()
        for command in commands:
            argv = ["aa-fullsystem", *command]
            phase(" ".join(command), " ".join(argv), functools.partial(machine.chroot_run, argv))
        if not commands:
            # Each aa-fullsystem command rebuilds the initramfs; without one, the
            # initramfs would predate probe_is_admin's line, which the policy it
            # carries includes, and status would rightly call it stale. The VM
            # layer's images build theirs with initramfs-tools.
            argv = ["update-initramfs", "-u", "-k", "all"]
            phase("rebuild", " ".join(argv), functools.partial(machine.chroot_run, argv))
    except vm.ChrootError as e:
        log = workdir / "failed-command.log"
        log.write_text(e.output or "")
        raise AaPkgError(f"'{' '.join(e.cmd)}' failed in the {machine.suite} guest (status {e.returncode}): "
                         f"{last_line(e.output)}", f"its whole output is in {log}") from None


def probe_is_admin(machine: vm.Machine) -> None:
    """Put the VM layer's probe, itself a service, into the administrator's role, as the console is
    (README, "Levels"): at the hardened level a service may neither read its script from the raw disk
    nor turn the console's log level down. The init profile's name is the installed package's."""
    try:
        cli = machine.read_file("/usr/sbin/aa-fullsystem").decode(errors="replace")
        functions = re.search(r"^\. '?([^'\s]+)'?$", cli, re.MULTILINE)
        profile = functions and re.search(r"^AAFS_PROFILE=([\w.-]+)$",
                                          machine.read_file(functions.group(1)).decode(errors="replace"),
                                          re.MULTILINE)
    except OSError:
        profile = None
    if not profile:
        raise AaPkgError("the .debs installed no aa-fullsystem that names its init profile",
                         "give the apparmor-fullsystem package (or a site variant of it) among the .debs")
    local = machine.root / "etc/apparmor.d/local" / profile.group(1)
    local.parent.mkdir(parents=True, exist_ok=True)
    with local.open("a") as rules:
        rules.write(f"# aa-pkg verify: its probe is the console's administrator.\n"
                    f"{vm.PROBE_PATH} Px -> {profile.group(1)}-admin,\n")


def install_backports_kernel(machine: vm.Machine) -> None:
    backports = f"{machine.suite}-backports"
    (machine.root / "etc/apt/sources.list.d/backports.list").write_text(
        f"deb http://deb.debian.org/debian {backports} main\n")
    machine.apt_update()
    machine.chroot_run(["apt-get", "install", "-y", "--no-install-recommends", "-t", backports,
                        "linux-image-amd64"])


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def read_boot(result: Result, boot: vm.Boot) -> None:
    """What the guest reported, and the findings in it."""
    values = boot.values
    result.serial_log = str(boot.log_path)
    result.pid1 = values.get("pid1", "")
    result.reached_multi_user = boot.reached_multi_user
    result.seconds_to_multi_user = boot.seconds_to_probe
    result.failed_units = values.get("failed_units", "").split()
    add = result.findings.append
    if not boot.reached_multi_user:
        add(Finding("multi-user-not-reached", f"multi-user.target was not active (system state: "
                                              f"{boot.system_state or 'unknown'})"))
    if result.failed_units:
        add(Finding("failed-units", f"failed units: {' '.join(result.failed_units)}"))
    elif "failed_units_unread" in values:
        add(Finding("failed-units", "the failed units could not be listed: systemctl --failed said: "
                                    f"{values['failed_units_unread'] or '(nothing)'}"))
    try:
        status = json.loads(values.get("status_json", ""))
    except ValueError:
        add(Finding("status-unreadable", "aa-fullsystem --json status printed no JSON in the guest"))
        status = None
    if status is not None:
        result.boot_record = status.get("boot", {})
        result.refusals = status.get("denied", [])
        result.would_refuse = status.get("would_deny", [])
        result.unconfined = status.get("unconfined_processes")
        for found in status.get("findings", []):
            if found["code"] in NOT_A_PROBLEM:
                continue
            message = found["message"]
            if found["code"] == "refused":
                message += " " + refusal_summary(result.refusals)
            elif found["code"] == "would-refuse":
                message += " " + refusal_summary(result.would_refuse)
            add(Finding(found["code"], message))
    for process, label, program in not_attached(values):
        add(Finding("profile-not-attached",
                    f"{program} (PID {process}) runs as {label}, though a profile named for it is loaded"))


def refusal_summary(refusals: list[dict[str, Any]]) -> str:
    """The refusals, most frequent first, as "COUNTx PROFILE PROGRAM OPERATION TARGET"."""
    return "; ".join(f"{r['count']}x {r['profile']} {r['program']} {r['operation']} {r['target']}"
                     for r in refusals[:10])


def not_attached(values: dict[str, str]) -> list[tuple[str, str, str]]:
    """Processes whose program has a profile named for it (its path, or its file name) loaded
    in the kernel, yet whose label does not hold that profile.

    The kernel does not tell which profile would attach to a path; a profile
    named for its program, as most shipped profiles are, is what can be
    checked from the guest. A program that enters its profile stacked on
    init's (standard level: "Pix -> &init") holds it as one part of its label.
    """
    loaded = {re.sub(r" \([a-z]+\)$", "", name) for name in values.get("profiles", "").split("|") if name}
    out = []
    for key, value in values.items():
        if not key.startswith("process."):
            continue
        label, _, program = value.rpartition("|")
        parts = {re.sub(r" \([a-z]+\)$", "", part) for part in label.split("//&")}
        for name in (program, program.rsplit("/", 1)[-1]):
            if name in loaded and name not in parts:
                out.append((key.removeprefix("process."), label, program))
                break
    return sorted(out, key=lambda found: int(found[0]))


def render_text(result: Result) -> str:
    lines = [
        (f"Suite:        {result.suite}{' with the backports kernel' if result.backports else ''} "
         f"(qemu, {result.accel})"),
        f"Packages:     {', '.join(result.debs)}",
        f"State:        {result.state.label()}",
        f"PID 1:        {result.pid1 or 'unknown'}",
        (f"Boot record:  {result.boot_record.get('outcome', '') or 'none'}"
         f"{': ' + result.boot_record['reason'] if result.boot_record.get('reason') else ''}"),
        (f"Multi-user:   {'reached' if result.reached_multi_user else 'NOT reached'}"
         + (f" after {result.seconds_to_multi_user:.1f} s" if result.reached_multi_user else "")),
        f"Unconfined processes: {'unknown' if result.unconfined is None else result.unconfined}",
        f"Refused (DENIED): {sum(r['count'] for r in result.refusals)}",
        *(f"  {r['count']:>6}  {r['profile']}  {r['program']}  {r['operation']}  {r['target']}"
          for r in result.refusals[:20]),
    ]
    if result.would_refuse:
        lines.append(f"Refused in enforce mode (AUDIT): {sum(r['count'] for r in result.would_refuse)}")
        lines += [f"  {r['count']:>6}  {r['profile']}  {r['program']}  {r['operation']}  {r['target']}"
                  for r in result.would_refuse[:20]]
    lines.append("Phases:       " + ", ".join(f"{name} {seconds} s" for name, seconds in result.phases.items()))
    lines.append(f"Serial log:   {result.serial_log}")
    if result.passed:
        lines.append("Verdict:      PASSED: no finding")
    else:
        lines.append(f"Verdict:      FAILED: {len(result.findings)} finding(s)")
        lines += [f"  {f.code}: {f.message}" for f in result.findings]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The records publish --require-verified reads.

def default_record_dir() -> Path:
    """$XDG_STATE_HOME/aa-pkg/verified, or ~/.local/state/aa-pkg/verified."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "aa-pkg/verified"


def save_record(result: Result, directory: Path) -> Path:
    """Keep the result, named for its packages' bytes, suite and state."""
    key = hashlib.sha256(json.dumps([sorted(result.debs.values()), result.suite, result.backports,
                                     asdict(result.state)]).encode()).hexdigest()[:16]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{result.suite}-{key}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.as_json(), indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise AaPkgError(f"cannot keep the verification record in {directory}: {e.strerror}",
                         "give a writable directory with --record-dir") from None
    return path


def passing_records(sha: str, directory: Path) -> dict[Path, dict[str, Any]]:
    """The kept records of a passing verify of the .deb with that SHA-256 (any suite and state)."""
    out = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("passed") is True and sha in record.get("debs", {}).values():
            out[path] = record
    return out


def progress_to_stderr(message: str) -> None:
    print(f"aa-pkg verify: {message}", file=sys.stderr, flush=True)


def all_codes() -> dict[str, str]:
    """Every code verify can report: status's and its own."""
    return {**{code: meaning for code, meaning in FINDINGS.items() if code not in NOT_A_PROBLEM},
            **VERIFY_FINDINGS}


__all__ = [
    "Finding",
    "Result",
    "State",
    "all_codes",
    "check_can_run",
    "default_record_dir",
    "passing_records",
    "progress_to_stderr",
    "render_text",
    "save_record",
    "verify",
]
