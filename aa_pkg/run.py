"""The one place that runs external commands (through `sh`).

Every command gets a fixed environment (C.UTF-8, UTC, SOURCE_DATE_EPOCH when
known), is logged as `+ cmd` at debug level, and a failure raises CommandError
carrying the last lines of its output. Commands are argument lists: no shell
string is ever built from data.

Works with Debian 12's python3-sh 1.14 and PyPI's sh 2.x. 2.x returns a
string unless asked for the RunningCommand with `_return_cmd=True`; 1.14
always returns the RunningCommand and would pass an unknown `_return_cmd` on
as an argument ("---return-cmd"), so it only goes to 2.x. `_tty_out=False`
keeps 1.x from running commands on a pseudo-terminal.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sh

from aa_pkg.errors import CommandError, ToolMissingError

log = logging.getLogger(__name__)

# Tool -> the Debian package that provides it, so a missing tool is reported
# with the fix (diffoscope's EXTERNAL_TOOLS idea).
TOOL_PACKAGES: dict[str, str] = {
    "apparmor_parser": "apparmor",
    "apt-ftparchive": "apt-utils",
    "checkbashisms": "devscripts",
    "dh": "debhelper",
    "dh_apparmor": "dh-apparmor",
    "dpkg-buildpackage": "dpkg-dev",
    "dpkg-deb": "dpkg",
    "dpkg-parsechangelog": "dpkg-dev",
    "gpg": "gpg",
    "lintian": "lintian",
    "shellcheck": "shellcheck",
}

# apparmor_parser lives in /sbin or /usr/sbin, which a user's PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
STDERR_TAIL_LINES = 20
SH_RETURN_CMD: dict[str, bool] = {"_return_cmd": True} if int(sh.__version__.split(".")[0]) >= 2 else {}


def which(tool: str) -> str | None:
    return shutil.which(tool, path=SEARCH_PATH)


def require_tools(tools: Iterable[str]) -> None:
    """Fail before any work starts when a tool is missing, naming the package to install."""
    missing = sorted({t for t in tools if which(t) is None})
    if missing:
        packages = " ".join(sorted({TOOL_PACKAGES.get(t, t) for t in missing}))
        raise ToolMissingError(
            f"{', '.join(missing)} not found",
            hint=f"install it: apt-get install {packages}",
        )


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str


def base_environment(source_date_epoch: int | None = None) -> dict[str, str]:
    env = {
        "PATH": SEARCH_PATH,
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": os.environ.get("HOME", "/root"),
    }
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    source_date_epoch: int | None = None,
    input: str | None = None,
) -> Result:
    args = [str(a) for a in argv]
    executable = which(args[0])
    if executable is None:
        require_tools([args[0]])
        raise AssertionError("unreachable")  # pragma: no cover
    full_env = base_environment(source_date_epoch)
    full_env.update(env or {})
    log.debug("+ %s", shlex.join(args))
    options: dict[str, Any] = {"_cwd": str(cwd) if cwd else None, "_env": full_env, "_in": input,
                               "_tty_out": False, **SH_RETURN_CMD}
    try:
        cmd = sh.Command(executable)(*args[1:], **options)
    except sh.ErrorReturnCode as e:
        output = (e.stderr or b"").decode(errors="replace").strip() or (e.stdout or b"").decode(errors="replace").strip()
        tail = "\n".join(output.splitlines()[-STDERR_TAIL_LINES:])
        raise CommandError(f"{shlex.join(args)} failed with exit status {e.exit_code}:\n{tail}",
                           output=tail) from None
    return Result(stdout=cmd.stdout.decode(errors="replace"), stderr=cmd.stderr.decode(errors="replace"))
