"""`aa-pkg publish`: put .debs into a signed, pool-style apt repository.

    repo/pool/<component>/<initial>/<source>/<package>_<version>_<arch>.deb   every version ever published
    repo/dists/<suite> -> .<suite>.<generation>            symlink, switched atomically
        Release  InRelease  Release.gpg  <component>/binary-<arch>/Packages{,.gz,.xz}

The indices and the Release file are written by apt-ftparchive (Debian's own
tool: apt's hashes and field order, no hand formatting), with a checksum
cache so a publish into a large repository only hashes the new files. A new
generation of dists/<suite> is built beside the served one and swapped in
with one rename(2), so a client, or an interrupted publish, never sees a
half-written index. One lock per repository serialises publishers.

Suites in one repository share the pool of a component: keep one repository
directory per distribution when their package sets must differ.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from debian.arfile import ArError
from debian.debfile import DebError, DebFile

from aa_pkg.errors import AaPkgError, CommandError
from aa_pkg.run import Result, require_tools, run

log = logging.getLogger(__name__)

STATE_DIR = ".aa-pkg"  # lock and checksum cache; not part of the apt repository
GENERATIONS_KEPT = 2  # the served one and the one before, for clients mid-download
NAME_RE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
# Debian Policy §5.6.1 (Package, Source), §5.6.12 (Version), §5.6.8
# (Architecture). They become pool paths: none of them can hold a '/'.
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]+")
VERSION_RE = re.compile(r"(?:[0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~-]*")
ARCHITECTURE_RE = re.compile(r"[a-z0-9][a-z0-9-]*")

Key = tuple[str, str, str]  # (Package, Version, Architecture): what apt tells apart


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


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with (state / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def plan(debs: Sequence[Deb], target: Target) -> list[Deb]:
    """The debs that are new. Refuses, before anything changes, a version
    already published with other bytes: a published version is immutable."""
    new = []
    for deb in debs:
        published = target.root / deb.pool_path(target.component)
        if not published.exists():
            new.append(deb)
        elif sha256(published) != deb.sha256:
            raise PublishError(
                f"{deb.path}: {deb.describe()} is already published in {target.root} with different contents "
                f"({published.relative_to(target.root)})",
                hint="a version is published once: bump the version (debian/changelog, or version = in the "
                     "site config) and build again")
    return new


def copy_into_pool(debs: Sequence[Deb], target: Target) -> None:
    for deb in debs:
        published = target.root / deb.pool_path(target.component)
        published.parent.mkdir(parents=True, exist_ok=True)
        partial = published.with_name(f".{published.name}.partial")
        shutil.copyfile(deb.path, partial)
        os.replace(partial, published)


def write_indices(target: Target, suite_dir: Path) -> None:
    cache = target.root / STATE_DIR / "checksums.db"
    for arch in target.architectures:
        binary = suite_dir / target.component / f"binary-{arch}"
        binary.mkdir(parents=True)
        # Relative to the repository root, so Filename: is pool/...
        packages = run(["apt-ftparchive", "--db", cache, "--arch", arch, "packages",
                        Path("pool") / target.component], cwd=target.root).stdout
        (binary / "Packages").write_text(packages)
        with gzip.GzipFile(binary / "Packages.gz", "wb", mtime=0) as gz:
            gz.write(packages.encode())
        # Preset 1: xz's default (6) spends most of a publish setting up a
        # large dictionary that an index of a few hundred kB does not use.
        (binary / "Packages.xz").write_bytes(lzma.compress(packages.encode(), preset=1))


def write_release(target: Target, suite_dir: Path) -> None:
    options = {
        "Origin": target.origin, "Label": target.origin, "Suite": target.suite, "Codename": target.suite,
        "Architectures": " ".join(target.architectures), "Components": target.component,
        "Description": f"{target.origin} packages",
    }
    argv: list[str | os.PathLike[str]] = ["apt-ftparchive"]
    for name, value in options.items():
        argv += ["-o", f"APT::FTPArchive::Release::{name}={value}"]
    # Written outside suite_dir: apt-ftparchive would list a Release it finds there.
    release = run([*argv, "release", suite_dir]).stdout
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


def switch_suite(target: Target, suite_dir: Path) -> None:
    """Point dists/<suite> at the new generation with one rename(2)."""
    dists = target.root / "dists"
    link = dists / target.suite
    if link.exists() and not link.is_symlink():
        raise PublishError(f"{link} is a directory, not a generation link",
                           hint="this repository was not written by aa-pkg publish; publish into a new directory")
    new_link = dists / f".{target.suite}.link"
    with contextlib.suppress(FileNotFoundError):
        new_link.unlink()
    new_link.symlink_to(suite_dir.name)
    os.replace(new_link, link)
    generations = sorted(dists.glob(f".{target.suite}.[0-9]*"), key=lambda p: p.name)
    for old in generations[:-GENERATIONS_KEPT]:
        shutil.rmtree(old)


def publish(paths: Sequence[Path], target: Target) -> list[Deb]:
    """Add the debs and re-sign the suite; returns the debs that were new."""
    require_tools(["apt-ftparchive", "dpkg-deb", "gpg"])
    debs = check_debs(paths, target)
    with locked(target.root):
        new = plan(debs, target)
        if not new and (target.root / "dists" / target.suite).exists():
            return []
        copy_into_pool(new, target)
        dists = target.root / "dists"
        dists.mkdir(exist_ok=True)
        suite_dir = dists / f".{target.suite}.{time.time_ns()}"
        suite_dir.mkdir()
        try:
            write_indices(target, suite_dir)
            write_release(target, suite_dir)
            sign_release(target, suite_dir)
        except BaseException:
            shutil.rmtree(suite_dir)  # the served generation stays as it was
            raise
        switch_suite(target, suite_dir)
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
