"""`aa-pkg publish`: put .debs into a signed, pool-style apt repository, as one transaction.

    repo/pool/<component>/<initial>/<source>/<package>_<version>_<arch>.deb   every version ever published
    repo/dists/<suite> -> .<suite>.<generation>            symlink, switched atomically
        Release  InRelease  Release.gpg  <component>/binary-<arch>/Packages{,.gz,.xz}

A publish runs from the checks of its input to the signed index as one
transaction:

    check_debs      each input is a whole .deb, its fields are safe in a path,
                    its architecture is indexed
    plan            against what the served indices list: a (package, version,
                    architecture) is published once, with one content
    add_to_pool     the new files, under their canonical names
    write_indices   apt-ftparchive (apt's own formats and hashes); its errors stop the publish
    verify_indices  the new index lists every package reported, with its SHA256
    write_release, sign_release
    switch_suite    one rename(2) of dists/<suite>: the commit

What clients see is what the served indices list. Until the switch, the new
pool files are listed by none of them, and any failure (or ^C) removes them
and the new generation: the repository is left as it was, and a retry
publishes. The indices, not the pool, say what is published: a file in the
pool that no served index lists (left by a publish killed before its
switch) is not published, and the next publish of that version replaces it.

The indices are written with a checksum cache, so a publish into a large
repository only hashes the new files. One lock per repository serialises
publishers.

Suites in one repository share the pool of a component: keep one repository
directory per distribution when their package sets must differ.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.arfile import ArError
from debian.deb822 import Packages
from debian.debfile import DebError, DebFile

from aa_pkg.errors import AaPkgError, CommandError
from aa_pkg.run import Result, require_tools, run

log = logging.getLogger(__name__)

STATE_DIR = ".aa-pkg"  # lock, checksum cache, a running publish's scratch; not part of the apt repository
NAME_RE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
# Debian Policy §5.6.1 (Package, Source), §5.6.12 (Version), §5.6.8
# (Architecture). They become pool paths: none of them can hold a '/'.
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]+")
VERSION_RE = re.compile(r"(?:[0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~-]*")
ARCHITECTURE_RE = re.compile(r"[a-z0-9][a-z0-9-]*")

Key = tuple[str, str, str]  # (Package, Version, Architecture): what apt tells apart
Index = dict[str, dict[Key, set[tuple[str, str]]]]  # architecture -> key -> {(Filename, SHA256)}


class PublishError(AaPkgError):
    """A publish that would change what a version means, a bad input or argument, or a failed step."""


@dataclass(frozen=True)
class Target:
    """Where a repository is published: settings of one `aa-pkg publish` call."""

    root: Path
    suite: str = "stable"
    component: str = "main"
    architectures: tuple[str, ...] = ("amd64",)
    key: str | None = None  # gpg key id; None: gpg's default key
    gnupghome: Path | None = None  # None: gpg's default, $GNUPGHOME or ~/.gnupg
    origin: str = "apparmor-fullsystem"

    def __post_init__(self) -> None:
        # Absolute once, here: apt-ftparchive runs in the repository (cwd),
        # where a relative path would name another place.
        object.__setattr__(self, "root", self.root.absolute())
        if self.gnupghome is not None:
            object.__setattr__(self, "gnupghome", self.gnupghome.absolute())
        for what, value in (("suite", self.suite), ("component", self.component),
                            *(("architecture", a) for a in self.architectures)):
            if not NAME_RE.fullmatch(value):
                raise PublishError(f"{what} {value!r} is not allowed",
                                   hint="use lower-case letters, digits, '.', '+' and '-'")


@dataclass(frozen=True)
class Deb:
    path: Path
    package: str
    version: str
    architecture: str
    source: str
    sha256: str

    @classmethod
    def read(cls, path: Path) -> Deb:
        if not path.is_file():
            raise PublishError(f"{path}: no such file", hint="pass the path of a .deb")
        try:
            # dpkg-deb --contents reads the archive to its end: a .deb cut
            # short keeps a readable control member, and apt-ftparchive only
            # reports it on stderr.
            run(["dpkg-deb", "--contents", path])
            control = DebFile(str(path)).debcontrol()
        except CommandError as e:
            # The first line says what went wrong, after the member or file it names.
            reason = e.output.splitlines()[0].rsplit(": ", 1)[-1] if e.output else e.message
            raise PublishError(f"{path}: not a whole .deb ({reason})",
                               hint="build it again, or copy it again from where it was built") from None
        except (OSError, ArError, DebError, EOFError) as e:
            raise PublishError(f"{path}: not a readable .deb ({e})",
                               hint="build it again, or copy it again from where it was built") from None
        fields = {name: control.get(name, "") for name in ("Package", "Version", "Architecture")}
        fields["Source"] = (control.get("Source") or fields["Package"]).partition(" ")[0]  # Source: name (version)
        for name, pattern in (("Package", PACKAGE_RE), ("Version", VERSION_RE), ("Architecture", ARCHITECTURE_RE),
                              ("Source", PACKAGE_RE)):
            if not pattern.fullmatch(fields[name]):
                raise PublishError(f"{path}: {name} {fields[name]!r} is not a valid Debian {name.lower()}",
                                   hint=f"its control file is damaged or was not made by dpkg-deb: build it again "
                                        f"(Debian Policy §5.6 says what a {name} may hold)")
        return cls(path, fields["Package"], fields["Version"], fields["Architecture"], fields["Source"],
                   sha256(path))

    @property
    def key(self) -> Key:
        return (self.package, self.version, self.architecture)

    @property
    def filename(self) -> str:
        """<package>_<version without epoch>_<arch>.deb: what dak names it, and what apt-ftparchive --arch indexes."""
        return f"{self.package}_{self.version.split(':', 1)[-1]}_{self.architecture}.deb"

    def pool_path(self, component: str) -> Path:
        # Debian's pool layout: lib* sources get four letters (dak, "lib" rule).
        initial = self.source[:4] if self.source.startswith("lib") else self.source[:1]
        return Path("pool") / component / initial / self.source / self.filename

    def describe(self) -> str:
        return f"{self.package} {self.version} ({self.architecture})"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file or a directory's entries, so a rename after it never survives a crash without them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def indexed_architectures(deb: Deb, target: Target) -> tuple[str, ...]:
    """The binary-<arch> indices that must list deb: all of them for Architecture: all."""
    return target.architectures if deb.architecture == "all" else (deb.architecture,)


def check_debs(paths: Sequence[Path], target: Target) -> list[Deb]:
    """Read every input, before anything changes; drops repeats, refuses two contents of one version."""
    debs: dict[Key, Deb] = {}
    files: dict[Path, Deb] = {}
    for path in paths:
        deb = Deb.read(path)
        if deb.architecture != "all" and deb.architecture not in target.architectures:
            raise PublishError(f"{path}: Architecture {deb.architecture} is not indexed in this repository "
                               f"({', '.join(target.architectures)}); apt would never see it",
                               hint=f"add --arch {deb.architecture} (and --arch for every architecture already "
                                    f"indexed)")
        pool_path = deb.pool_path(target.component)
        same_version, same_file = debs.get(deb.key), files.get(pool_path)
        if same_version and same_version.sha256 != deb.sha256:
            raise PublishError(f"{path}: {same_version.path} is {deb.describe()} too, with other contents",
                               hint="publish one of them: a version has one content")
        if same_file and same_file.key != deb.key:
            raise PublishError(f"{path}: {deb.describe()} and {same_file.path}, {same_file.describe()}, would be "
                               f"one pool file ({pool_path})",
                               hint="versions that differ only in their epoch cannot both be published: bump one")
        debs.setdefault(deb.key, deb)
        files.setdefault(pool_path, deb)
    return list(debs.values())


def read_index(suite_dir: Path, component: str) -> Index:
    index: Index = {}
    for packages in sorted(suite_dir.glob(f"{component}/binary-*/Packages")):
        listed = index.setdefault(packages.parent.name.removeprefix("binary-"), {})
        with packages.open() as f:
            for p in Packages.iter_paragraphs(f, use_apt_pkg=False,
                                              fields=["Package", "Version", "Architecture", "Filename", "SHA256"]):
                listed.setdefault((p["Package"], p["Version"], p["Architecture"]), set()).add(
                    (p["Filename"], p["SHA256"]))
    return index


def served_indices(target: Target) -> dict[str, Index]:
    """What the served suites list, by suite: the truth of what is published (pool files may be more)."""
    dists = target.root / "dists"
    if not dists.is_dir():
        return {}
    return {suite.name: read_index(suite, target.component)
            for suite in sorted(dists.iterdir()) if not suite.name.startswith(".") and suite.is_dir()}


def listed(deb: Deb, index: Index, target: Target) -> bool:
    """Every index apt reads for deb's architecture lists it, and only with deb's SHA256."""
    for arch in indexed_architectures(deb, target):
        entries = index.get(arch, {}).get(deb.key, set())
        if not entries or any(sha != deb.sha256 for _, sha in entries):
            return False
    return True


def plan(debs: Sequence[Deb], target: Target, served: dict[str, Index]) -> list[Deb]:
    """The debs the suite does not list yet. Refuses, before anything changes, a version any served index
    lists with other contents, and a pool file a served index lists as another version: a published
    version is immutable."""
    contents: dict[Key, dict[str, str]] = {}  # key -> {SHA256: Filename}, in any served suite
    holders: dict[str, Key] = {}  # Filename -> the key a served index lists it as
    for index in served.values():
        for per_arch in index.values():
            for key, entries in per_arch.items():
                for filename, sha in entries:
                    contents.setdefault(key, {})[sha] = filename
                    holders[filename] = key
    hint = ("a version is published once: bump the version (debian/changelog, or version = in the site config) "
            "and build again")
    new = []
    for deb in debs:
        others = {sha: name for sha, name in contents.get(deb.key, {}).items() if sha != deb.sha256}
        if others:
            raise PublishError(f"{deb.path}: {deb.describe()} is already published in {target.root} with different "
                               f"contents ({next(iter(others.values()))})", hint=hint)
        pool_path = str(deb.pool_path(target.component))
        holder = holders.get(pool_path, deb.key)
        if holder != deb.key:
            raise PublishError(f"{deb.path}: its pool file {pool_path} already holds {holder[0]} {holder[1]} "
                               f"({holder[2]}); versions that differ only in their epoch share a file name",
                               hint=hint)
        if not listed(deb, served.get(target.suite, {}), target):
            new.append(deb)
    return new


def make_dirs(path: Path, undo: contextlib.ExitStack) -> None:
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        undo.callback(directory.rmdir)
        fsync(directory.parent)


def add_to_pool(debs: Sequence[Deb], target: Target, work: Path, undo: contextlib.ExitStack) -> None:
    """Copy the debs to their pool paths, each file whole or not at all; `undo` takes them out again.

    A file already there with the same bytes stays (another suite serves it,
    or an interrupted publish left it). One with other bytes is listed by no
    served index (plan() refused that), and is set aside until the commit.
    """
    for deb in debs:
        published = target.root / deb.pool_path(target.component)
        if published.is_file() and sha256(published) == deb.sha256:
            continue
        make_dirs(published.parent, undo)
        staged = work / deb.filename
        shutil.copyfile(deb.path, staged)
        fsync(staged)
        if published.exists():
            log.warning("replacing %s: no served index lists it", published)
            aside = work / f"{deb.filename}.unlisted"
            os.replace(published, aside)
            undo.callback(os.replace, aside, published)
        os.replace(staged, published)
        undo.callback(published.unlink)
        fsync(published.parent)


def new_generation(target: Target, undo: contextlib.ExitStack) -> Path:
    dists = target.root / "dists"
    make_dirs(dists, undo)
    suite_dir = dists / f".{target.suite}.{time.time_ns()}"
    suite_dir.mkdir()
    undo.callback(shutil.rmtree, suite_dir)
    return suite_dir


def apt_ftparchive(argv: Sequence[str | os.PathLike[str]], cwd: Path | None = None) -> Result:
    """apt-ftparchive, whose errors (E:) stop the publish: it exits 0 after an error about a file."""
    try:
        result = run(["apt-ftparchive", *argv], cwd=cwd)
    except CommandError as e:
        raise PublishError(f"apt-ftparchive failed: {e.output.splitlines()[-1] if e.output else e.message}",
                           hint="run aa-pkg -v publish to see the command") from None
    for line in result.stderr.splitlines():
        if line.startswith("W:"):
            log.warning("apt-ftparchive: %s", line)
    errors = [line.removeprefix("E: ") for line in result.stderr.splitlines() if line.startswith("E:")]
    if errors:
        file = re.search(r"Errors apply to file '([^']*)'", result.stderr)
        if not file:
            raise PublishError(f"apt-ftparchive failed: {errors[0]}", hint="run aa-pkg -v publish to see the command")
        raise PublishError(f"{(cwd or Path.cwd()) / file.group(1)}: apt-ftparchive cannot read it ({errors[0]})",
                           hint="if no served index lists it, an interrupted publish left it: remove it; if one "
                                "does, restore it from a backup. Then publish again")
    return result


def write_indices(target: Target, suite_dir: Path) -> None:
    cache = target.root / STATE_DIR / "checksums.db"
    for arch in target.architectures:
        binary = suite_dir / target.component / f"binary-{arch}"
        binary.mkdir(parents=True)
        # Relative to the repository root, so Filename: is pool/... --arch
        # indexes only *_<arch>.deb and *_all.deb, hence the canonical names.
        packages = apt_ftparchive(["--db", cache, "--arch", arch, "packages", Path("pool") / target.component],
                                  cwd=target.root).stdout
        (binary / "Packages").write_text(packages)
        with gzip.GzipFile(binary / "Packages.gz", "wb", mtime=0) as gz:
            gz.write(packages.encode())
        # Preset 1: xz's default (6) spends most of a publish setting up a
        # large dictionary that an index of a few hundred kB does not use.
        (binary / "Packages.xz").write_bytes(lzma.compress(packages.encode(), preset=1))


def verify_indices(debs: Sequence[Deb], target: Target, suite_dir: Path) -> None:
    """Before the switch: the new index lists every deb this publish reports, with its SHA256."""
    index = read_index(suite_dir, target.component)
    for deb in debs:
        if listed(deb, index, target):
            continue
        lists = {entry for arch in indexed_architectures(deb, target)
                 for entry in index.get(arch, {}).get(deb.key, set()) if entry[1] != deb.sha256}
        if lists:
            filename = min(lists)[0]
            raise PublishError(f"{deb.path}: the new index of {target.suite} lists {deb.describe()} from {filename} "
                               f"with other contents; nothing was published",
                               hint=f"no served index lists {target.root / filename}: remove it and publish again")
        raise PublishError(f"{deb.path}: the new index of {target.suite} does not list {deb.describe()}; "
                           f"nothing was published", hint="publish again with aa-pkg -v to see apt-ftparchive's run")


def write_release(target: Target, suite_dir: Path) -> None:
    options = {
        "Origin": target.origin, "Label": target.origin, "Suite": target.suite, "Codename": target.suite,
        "Architectures": " ".join(target.architectures), "Components": target.component,
        "Description": f"{target.origin} packages",
    }
    argv: list[str | os.PathLike[str]] = []
    for name, value in options.items():
        argv += ["-o", f"APT::FTPArchive::Release::{name}={value}"]
    # Written outside suite_dir: apt-ftparchive would list a Release it finds there.
    release = apt_ftparchive([*argv, "release", suite_dir]).stdout
    (suite_dir / "Release").write_text(release)


def gpg(target: Target, argv: Sequence[str | os.PathLike[str]], input: str | None = None) -> Result:
    """gpg in the target's home: --gnupghome, else gpg's own default. run() gives every command a fixed
    environment, so GNUPGHOME, which names that default, is passed on here."""
    command: list[str | os.PathLike[str]] = ["gpg", "--batch"]
    env = {}
    if target.gnupghome:
        command += ["--homedir", target.gnupghome]
    elif os.environ.get("GNUPGHOME"):
        env["GNUPGHOME"] = os.environ["GNUPGHOME"]
    return run([*command, *argv], env=env, input=input)


def sign_release(target: Target, suite_dir: Path) -> None:
    options: list[str | os.PathLike[str]] = ["--yes", "--pinentry-mode", "loopback"]
    if target.key:
        options += ["--local-user", target.key]
    release = suite_dir / "Release"
    try:
        gpg(target, [*options, "--clearsign", "--output", suite_dir / "InRelease", release])
        gpg(target, [*options, "--armor", "--detach-sign", "--output", suite_dir / "Release.gpg", release])
    except CommandError as e:
        reason = e.output.splitlines()[0].removeprefix("gpg: ") if e.output else e.message
        raise PublishError(f"signing failed: gpg could not sign the Release of {target.suite} ({reason})",
                           hint="check --key and --gnupghome (default: $GNUPGHOME, else ~/.gnupg); the key must "
                                "have no passphrase or a running agent") from None


def check_suite_link(target: Target) -> None:
    link = target.root / "dists" / target.suite
    if link.exists() and not link.is_symlink():
        raise PublishError(f"{link} is a directory, not a generation link",
                           hint="this repository was not written by aa-pkg publish; publish into a new directory")


def switch_suite(target: Target, suite_dir: Path) -> None:
    """Point dists/<suite> at the new generation with one rename(2): the commit."""
    for path in sorted(suite_dir.rglob("*"), reverse=True):
        fsync(path)  # files, then their directories: no crash leaves a link to an emptied generation
    fsync(suite_dir)
    dists = target.root / "dists"
    new_link = dists / f".{target.suite}.link"
    with contextlib.suppress(FileNotFoundError):
        new_link.unlink()
    new_link.symlink_to(suite_dir.name)
    try:
        os.replace(new_link, dists / target.suite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # gone if the rename happened
            new_link.unlink()
        raise
    fsync(dists)


def served_generation(target: Target) -> str | None:
    link = target.root / "dists" / target.suite
    return os.readlink(link) if link.is_symlink() else None


@contextlib.contextmanager
def transaction(target: Target) -> Iterator[contextlib.ExitStack]:
    """Runs what the body registered on the stack, in reverse, if the body fails before its switch_suite().

    The commit is the switch of dists/<suite> (under the lock, only this
    publish moves it): a failure after it, even a ^C before this frame
    sees the switch return, undoes nothing.
    """
    served = served_generation(target)
    with contextlib.ExitStack() as undo:
        try:
            yield undo
        except BaseException:
            if served_generation(target) != served:
                undo.pop_all()
            raise
        undo.pop_all()


def prune_generations(target: Target, keep: set[str | None]) -> None:
    """After the commit: the new generation and the one it replaced (for clients mid-download) stay; others go,
    including one a killed publish left unswitched. Published all the same if this fails."""
    dists = target.root / "dists"
    generation = re.compile(rf"\.{re.escape(target.suite)}\.[0-9]+")
    for old in dists.iterdir():
        if generation.fullmatch(old.name) and old.name not in keep:
            try:
                shutil.rmtree(old)
            except OSError as e:  # the next publish tries again
                log.warning("could not remove the old generation %s: %s", old, e)


# What to do about a repository that cannot be written, by errno.
IO_HINTS = {
    errno.EROFS: "its file system is mounted read-only: remount it read-write, or pass another --repo",
    errno.ENOSPC: "its file system is full: free some space, then publish again",
    errno.EDQUOT: "the disk quota is used up: free some space, then publish again",
    errno.EACCES: "run aa-pkg publish as a user who may write the repository, or pass another --repo",
    errno.EPERM: "run aa-pkg publish as a user who may write the repository, or pass another --repo",
}


@contextlib.contextmanager
def repository_io(target: Target) -> Iterator[None]:
    """An I/O failure of the publish as one PublishError naming the path; the transaction has undone its part."""
    try:
        yield
    except OSError as e:
        # A copy or a rename names its target second (shutil.copyfile
        # names the source first even when the target's disk is full).
        where = e.filename2 or e.filename or target.root
        raise PublishError(f"cannot publish into {target.root}: {where}: {e.strerror or e}",
                           hint=IO_HINTS.get(e.errno or 0, "fix the file system, then publish again: "
                                                           "the repository is as it was")) from None


@contextlib.contextmanager
def locked(root: Path) -> Iterator[Path]:
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with (state / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for scratch in state.glob("publish-*"):  # of a publish that was killed: nothing in it is served
            shutil.rmtree(scratch)
        yield state


def verification_records(debs: Sequence[Deb], record_dir: Path,
                         required: bool) -> dict[Deb, dict[Path, dict[str, Any]]]:
    """The passing `aa-pkg verify` records of each deb's bytes; with required, a deb without one is refused."""
    from aa_pkg.verify import passing_records

    records = {deb: passing_records(deb.sha256, record_dir) for deb in debs}
    for deb, found in records.items():
        if required and not found:
            raise PublishError(f"{deb.path}: no passing 'aa-pkg verify' of these bytes in {record_dir}",
                               hint=f"run 'aa-pkg verify --record-dir {record_dir} {deb.path}' (with the site "
                                    f"policy packages it goes with), then publish again")
    return records


def keep_records(records: dict[Deb, dict[Path, dict[str, Any]]], state: Path) -> None:
    """Each published deb's verification records, in <repo>/.aa-pkg/verified/<package>_<version>_<arch>/.
    After the commit: published all the same if this fails."""
    for deb, found in records.items():
        for path in found:
            kept = state / "verified" / deb.filename.removesuffix(".deb")
            try:
                kept.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, kept / path.name)
            except OSError as e:
                log.warning("published, but could not keep the verification record %s in %s: %s",
                            path, kept, e.strerror or e)


def publish(paths: Sequence[Path], target: Target, require_verified: bool = False,
            record_dir: Path | None = None) -> list[Deb]:
    """Add the debs and re-sign the suite, all or nothing; returns the debs the suite did not list before.

    The passing verification records of each new deb (aa-pkg verify, in record_dir) are kept with the
    repository; with require_verified, a deb without one is refused before anything changes."""
    from aa_pkg.verify import default_record_dir

    require_tools(["apt-ftparchive", "dpkg-deb", "gpg"])
    debs = check_debs(paths, target)
    records = verification_records(debs, record_dir or default_record_dir(), require_verified)
    with repository_io(target), locked(target.root) as state:
        check_suite_link(target)
        new = plan(debs, target, served_indices(target))
        if not new:
            return []
        previous = served_generation(target)
        with tempfile.TemporaryDirectory(prefix="publish-", dir=state) as work, transaction(target) as undo:
            add_to_pool(new, target, Path(work), undo)
            suite_dir = new_generation(target, undo)
            write_indices(target, suite_dir)
            verify_indices(new, target, suite_dir)
            write_release(target, suite_dir)
            sign_release(target, suite_dir)
            switch_suite(target, suite_dir)
        prune_generations(target, keep={suite_dir.name, previous})
        keep_records({deb: records[deb] for deb in new}, state)
    return new


def export_key(target: Target, keyring: Path) -> None:
    """The public key, binary, for /usr/share/keyrings (apt's Signed-By reads it)."""
    key = gpg(target, ["--armor", "--export", *([target.key] if target.key else [])]).stdout
    if "BEGIN PGP PUBLIC KEY BLOCK" not in key:
        raise PublishError("gpg exported no public key", hint="check --key and --gnupghome")
    gpg(target, ["--yes", "--dearmor", "--output", keyring], input=key)


def sources_stanza(target: Target, url: str, keyring: str) -> str:
    """The deb822 .sources stanza a client needs (sources.list(5))."""
    return (f"Types: deb\nURIs: {url}\nSuites: {target.suite}\nComponents: {target.component}\n"
            f"Signed-By: {keyring}\n")
