"""`aa-pkg verify` on real guests, run as users run it (the command line), and
`aa-pkg publish --require-verified` on its records.

Each test is one verify: a fresh guest of the suite from the cached base
image, the .debs installed by apt, the state set by aa-fullsystem, one
boot under qemu (TCG: this host is a guest itself). What it must find is
read from its JSON, and what it says from its text. One runs it as a
normal user, the others as root.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vm
from aa_pkg.build import build_packages
from aa_pkg.config import load_config
from aa_pkg.verify import all_codes
from conftest import REPO

pytestmark = pytest.mark.tools

PROFILE = "fullsystem-init"


@dataclass
class User:
    """A normal user, and a workspace of its own: aa_pkg's code, the .debs, verify's work and records."""

    name: str
    home: Path
    workspace: Path

    def aa_pkg(self) -> list[str]:
        """aa-pkg, run as this user from the workspace's copy of aa_pkg by Debian's python3 (with
        python3-debian, -jinja2, -sh: tools/setup), in a login's environment: the checkout and its
        .venv may be out of the user's reach (under /root)."""
        return ["runuser", "-u", self.name, "--", "env", "-i", f"HOME={self.home}", "LC_ALL=C.UTF-8",
                "PATH=/usr/local/bin:/usr/bin:/bin", f"PYTHONPATH={self.workspace / 'src'}",
                "/usr/bin/python3", "-m", "aa_pkg"]

    def give(self, path: Path) -> Path:
        """A copy of the file in the workspace, the user's."""
        copy = self.workspace / path.name
        shutil.copy(path, copy)
        shutil.chown(copy, self.name, self.name)
        return copy


VERIFY_USER = "aa-pkg-verify-test"


@pytest.fixture
def normal_user() -> Iterator[User]:
    """A user made for the test as an administrator makes one (useradd: Debian's gives it its
    subordinate ids in /etc/subuid and /etc/subgid), removed after it with all it made."""
    vm.require_tools("useradd", "userdel", "runuser", "newuidmap", "newgidmap")
    vm.require_root()
    if subprocess.run(["id", VERIFY_USER], capture_output=True).returncode == 0:
        subprocess.run(["userdel", "--remove", VERIFY_USER], check=True)    # left by a run that was killed
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", VERIFY_USER], check=True)
    workspace = Path(tempfile.mkdtemp(prefix="aa-pkg-verify-", dir="/tmp"))
    try:
        uid = pwd.getpwnam(VERIFY_USER).pw_uid
        for table, option in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
            if vm.subordinate_ids(table, VERIFY_USER, uid) is None:     # no table for useradd to fill
                first = max([100000] + [int(f[1]) + int(f[2]) for f in ids_in(table)])
                subprocess.run(["usermod", option, f"{first}-{first + 65535}", VERIFY_USER], check=True)
        shutil.copytree(REPO / "aa_pkg", workspace / "src/aa_pkg", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chown", "-R", f"{VERIFY_USER}:", workspace], check=True)
        yield User(VERIFY_USER, Path(pwd.getpwnam(VERIFY_USER).pw_dir), workspace)
    finally:
        shutil.rmtree(workspace)
        subprocess.run(["userdel", "--remove", VERIFY_USER], check=True, capture_output=True)


def ids_in(table: str) -> list[list[str]]:
    """The NAME:FIRST:COUNT lines of /etc/subuid or /etc/subgid, split."""
    try:
        lines = Path(table).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [fields for fields in (line.split(":") for line in lines) if len(fields) == 3]


def verify(tmp_path: Path, *args: str | Path, as_json: bool = True,
           user: User | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """aa-pkg verify ARGS (as root, or as user in its workspace), its records in records/ there; its
    output, and the result it kept (with as_json, the same as it printed)."""
    vm.require_tools("qemu-system-x86_64", "mmdebstrap", "mke2fs", "debugfs")
    vm.require_root()
    aa_pkg, where = ([sys.executable, "-m", "aa_pkg"], tmp_path) if user is None else (user.aa_pkg(), user.workspace)
    records = where / "records"
    done = subprocess.run([*aa_pkg, "verify", "--accel", "tcg", "--workdir", where / "work",
                           "--record-dir", records, *(["--json"] if as_json else []), *map(str, args)],
                          capture_output=True, text=True)
    print(f"--- aa-pkg verify {' '.join(map(str, args))}: exit {done.returncode}\n{done.stderr}\n{done.stdout}")
    [record] = records.glob("*.json")
    result = json.loads(record.read_text())
    if as_json:
        assert json.loads(done.stdout) == result
    return done, result


def publish(tmp_path: Path, signing: tuple[Path, str], deb: Path, records: Path | None = None
            ) -> subprocess.CompletedProcess:
    """aa-pkg publish --require-verified, with the records verify kept (in tmp_path/records)."""
    return subprocess.run([sys.executable, "-m", "aa_pkg", "publish", "--repo", tmp_path / "repo",
                           "--gnupghome", signing[0], "--key", signing[1],
                           "--record-dir", records or tmp_path / "records",
                           "--require-verified", deb], capture_output=True, text=True)


def codes(result: dict) -> list[str]:
    return [f["code"] for f in result["findings"]]


def test_the_default_package_passes_and_may_be_published(built_deb: Path, tmp_path: Path,
                                                          signing: tuple[Path, str]) -> None:
    """trixie, as root, the whole policy loaded early at the hardened level (bookworm: as a normal
    user, below, as installed but for stage and mode)."""
    refused = publish(tmp_path, signing, built_deb)
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith(f"aa-pkg: error: {built_deb}: no passing 'aa-pkg verify' of these bytes"), \
        refused
    assert not (tmp_path / "repo/dists").exists()

    done, result = verify(tmp_path, "--suite", "trixie", "--stage", "full", "--mode", "enforce",
                          "--early", "all", "--level", "hardened", built_deb)
    passes_and_publishes(done, result, tmp_path, signing, built_deb,
                         phases=frozenset({"early all", "level hardened", "settle"}))
    # What the boot script did with that state: the set precompiled for this
    # kernel, loaded before PID 1, with the hardened level's roles.
    record = result["boot_record"]
    assert (record["early"], record["level"]) == ("cache", "hardened"), record


def test_a_normal_user_verifies_and_root_publishes_its_record(normal_user: User, built_deb: Path, tmp_path: Path,
                                                              signing: tuple[Path, str]) -> None:
    """bookworm, as a user: its own base image (mmdebstrap in unshare mode), the guest's root made
    as root of a user namespace (aa_pkg.vm.as_root), a passing record root's publish accepts."""
    user, uid = normal_user, pwd.getpwnam(normal_user.name).pw_uid
    deb = user.give(built_deb)
    ranges = {table: vm.subordinate_ids(table, user.name, uid) for table in ("/etc/subuid", "/etc/subgid")}
    assert None not in ranges.values(), ranges          # useradd's, or the fixture's
    (first_uid, uids), (first_gid, gids) = ranges.values()

    # Without subordinate ids: one line that says how to add them, before anything is built.
    subprocess.run(["usermod", "--del-subuids", f"{first_uid}-{first_uid + uids - 1}",
                    "--del-subgids", f"{first_gid}-{first_gid + gids - 1}", user.name], check=True)
    try:
        refused = subprocess.run([*user.aa_pkg(), "verify", "--accel", "tcg", "--workdir", user.workspace / "work",
                                  "--suite", "bookworm", deb], capture_output=True, text=True)
    finally:
        subprocess.run(["usermod", "--add-subuids", f"{first_uid}-{first_uid + uids - 1}",
                        "--add-subgids", f"{first_gid}-{first_gid + gids - 1}", user.name], check=True)
    assert (refused.returncode, refused.stdout) == (1, ""), refused
    assert refused.stderr.splitlines() == [
        f"aa-pkg: error: aa-pkg verify as {user.name}: /etc/subuid gives {user.name} no range of 65536 ids, "
        f"which the guest's system users need",
        f"aa-pkg: hint: as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user.name} "
        f"(any free range), or run as root"], refused
    assert not (user.workspace / "work").exists()

    done, result = verify(tmp_path, "--suite", "bookworm", "--stage", "full", "--mode", "enforce", deb, user=user)
    passes_and_publishes(done, result, tmp_path, signing, built_deb, records=user.workspace / "records")
    # The base image is the user's own, built by mmdebstrap as the user.
    [base] = (user.home / ".cache/apparmor-fullsystem/vm").glob("base-bookworm-*.tar")
    assert base.stat().st_uid == uid
    # Nothing is left that the user cannot remove: the guest's directory, whose files the
    # subordinate ids own on the host, went with the namespace's rm.
    assert not (user.workspace / "work/machine/root").exists()
    assert [path for path in user.workspace.rglob("*") if path.lstat().st_uid != uid] == []
    assert (user.workspace / "work/machine/disk.img").is_file()


def passes_and_publishes(done: subprocess.CompletedProcess, result: dict, tmp_path: Path,
                         signing: tuple[Path, str], built_deb: Path, records: Path | None = None,
                         phases: frozenset[str] = frozenset()) -> None:
    """A verify that passed, its record as kept, and publish accepting the .deb; phases: those
    of the state's other settings (and a first boot to settle), beside stage and mode."""
    assert (done.returncode, result["findings"]) == (0, []), result
    assert result["passed"] is True
    assert result["pid1"] == f"{PROFILE} (enforce)", result
    assert result["reached_multi_user"] and result["seconds_to_multi_user"] > 0, result
    record = result["boot_record"]
    assert (record["outcome"], record["loaded_stage"], record["mode"]) == ("loaded", "full", "enforce"), record
    assert result["unconfined"] == 0 and result["refusals"] == [], result
    assert set(result["phases"]) == {"image", "install", "stage full", "mode enforce", "boot", *phases}, result

    published = publish(tmp_path, signing, built_deb, records)
    assert published.returncode == 0, published
    assert published.stdout == "published apparmor-fullsystem 0.1\n", published
    [kept] = (tmp_path / "repo/.aa-pkg/verified/apparmor-fullsystem_0.1_all").iterdir()
    assert json.loads(kept.read_text()) == result


# A realistic mistake: a site confines systemd-tmpfiles to where it
# thought it works, /run, /tmp and /dev, and forgets the rest of what the
# boot's systemd-tmpfiles-setup*.service runs ask of it (/var, the mount
# tree, its peers in /proc). Site profiles load in enforce mode.
TMPFILES_PROFILE = """abi <abi/3.0>,
include <tunables/global>

profile site-tmpfiles /usr/bin/systemd-tmpfiles {
  include <abstractions/base>
  include <abstractions/nameservice>
  capability chown,
  capability dac_override,
  capability dac_read_search,
  capability fowner,
  capability fsetid,
  capability mknod,
  /usr/bin/systemd-tmpfiles mr,
  /etc/machine-id r,
  /etc/tmpfiles.d/{,**} r,
  /usr/lib/tmpfiles.d/{,**} r,
  /run/tmpfiles.d/{,**} r,
  / r,
  /run/{,**} rwk,
  /tmp/{,**} rw,
  /dev/{,**} rw,
  @{PROC}/** r,
  @{sys}/** r,
}
"""


def test_a_site_policy_that_refuses_the_boot_fails(built_deb: Path, tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/usr.bin.systemd-tmpfiles").write_text(TMPFILES_PROFILE)
    config = tmp_path / "policy.toml"
    config.write_text('[site_policy]\npackage = "site-policy-tmpfiles"\nversion = "1.0"\nprofiles = "profiles"\n')
    (site,) = build_packages(load_config(config), tmp_path / "out")
    done, result = verify(tmp_path, "--suite", "trixie", "--stage", "full", "--mode", "enforce", built_deb, site)
    assert done.returncode == 1, result
    assert result["pid1"] == f"{PROFILE} (enforce)", result       # init is fine: the site profile is not
    # systemd-tmpfiles exits 73 (CANTCREAT), which its unit counts as a
    # success: no unit failed, and only the kernel's refusals tell.
    assert "refused" in codes(result), result
    [refused] = [f["message"] for f in result["findings"] if f["code"] == "refused"]
    assert "site-tmpfiles systemd-tmpfile " in refused, refused
    assert result["refusals"] and all(r["profile"] == "site-tmpfiles" for r in result["refusals"]), result


def without_hook(deb: Path, out: Path) -> Path:
    """The package, repacked with both initramfs adapters doing nothing: PID 1 is never confined."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", deb, tree], check=True)
    hook = tree / "usr/share/initramfs-tools/hooks/apparmor-fullsystem"
    hook.write_text("#!/bin/sh\nexit 0\n")
    repacked = out / deb.name
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, repacked], check=True, capture_output=True)
    return repacked


def test_a_package_that_does_not_confine_pid1_fails_and_is_not_published(built_deb: Path, tmp_path: Path,
                                                                        signing: tuple[Path, str]) -> None:
    deb = without_hook(built_deb, tmp_path)
    done, result = verify(tmp_path, "--suite", "bookworm", deb, as_json=False)
    assert done.returncode == 1, result
    assert result["pid1"] == "unconfined", result
    # The boot script still runs (initramfs-tools takes it without the
    # hook), finds nothing the hook would have written, and says so.
    assert codes(result)[:2] == ["pid1-unconfined", "boot-failed"], result
    assert "boot.conf is missing" in result["findings"][1]["message"], result
    assert set(codes(result)) <= set(all_codes()), result
    # The text says it, finding by finding.
    assert f"Verdict:      FAILED: {len(result['findings'])} finding(s)" in done.stdout.splitlines(), done.stdout
    for finding in result["findings"]:
        assert f"  {finding['code']}: {finding['message']}" in done.stdout.splitlines(), done.stdout
    # A failing record is no pass.
    refused = publish(tmp_path, signing, deb)
    assert refused.returncode == 1 and "no passing 'aa-pkg verify' of these bytes" in refused.stderr, refused


def test_a_boot_that_does_not_report_in_time_fails(built_deb: Path, tmp_path: Path) -> None:
    """--timeout: a guest that has not finished its report by then is stopped, and verify fails
    with no-report, naming the serial log; a hang or a boot that never gets to multi-user looks
    the same. Eight seconds end the boot while systemd is still starting (the report comes
    after 15 s or more under TCG)."""
    done, result = verify(tmp_path, "--suite", "trixie", "--timeout", "8", built_deb, as_json=False)
    assert done.returncode == 1, result
    assert codes(result) == ["no-report"], result
    message = result["findings"][0]["message"]
    assert "the probe did not finish (timed out after 8s" in message, message
    assert Path(result["serial_log"]).is_file() and f"the serial log: {result['serial_log']}" in message, result
    # What the kernel printed before the end is there to read.
    assert "Linux version " in Path(result["serial_log"]).read_text(errors="replace"), result
    assert result["pid1"] == "" and not result["reached_multi_user"], result
    assert f"  no-report: {message}" in done.stdout.splitlines(), done.stdout
