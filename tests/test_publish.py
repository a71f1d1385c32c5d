"""aa-pkg publish: a signed repository that real apt accepts, over real HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import lzma
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from debian.deb822 import Deb822, Packages, Release

import vm
from conftest import make_key
from aa_pkg import publish as publish_module
from aa_pkg.build import build
from aa_pkg.config import load_config
from aa_pkg.publish import PublishError, Target, export_key, publish, sources_stanza

pytestmark = pytest.mark.tools


def target(root: Path, signing: tuple[Path, str], suite: str = "stable") -> Target:
    return Target(root=root, suite=suite, gnupghome=signing[0], key=signing[1])


def snapshot(root: Path) -> dict[str, str]:
    """Every file and its hash, every directory, every link and its target: all a client could fetch."""
    def state(p: Path) -> str:
        if p.is_symlink():
            return f"-> {os.readlink(p)}"
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "directory"
    return {str(p.relative_to(root)): state(p) for p in sorted(root.rglob("*")) if ".aa-pkg" not in p.parts}


def apt_view(repo: Path, signing: tuple[Path, str], suite: str = "stable", arch: str = "amd64"
             ) -> dict[tuple[str, str], str]:
    """(package, version) -> SHA256 of what apt would install: checked as apt checks it, from the signature
    of InRelease through the hashes it lists for Packages.xz to the pool file each entry names."""
    dists = repo / "dists" / suite
    signed = subprocess.run(["gpgv", "--keyring", signing[0] / "pubring.kbx", "--output", "-", dists / "InRelease"],
                            check=True, capture_output=True).stdout
    hashes = {entry["name"]: entry["sha256"] for entry in Release(signed)["SHA256"]}
    index = f"main/binary-{arch}/Packages.xz"
    compressed = (dists / index).read_bytes()
    assert hashes[index] == hashlib.sha256(compressed).hexdigest(), f"Release does not vouch for {index}"
    seen = {}
    for entry in Packages.iter_paragraphs(lzma.decompress(compressed).decode(), use_apt_pkg=False):
        pool_file = repo / entry["Filename"]
        assert hashlib.sha256(pool_file.read_bytes()).hexdigest() == entry["SHA256"], f"{pool_file} does not match"
        seen[entry["Package"], entry["Version"]] = entry["SHA256"]
    return seen


def digest(deb: Path) -> str:
    return hashlib.sha256(deb.read_bytes()).hexdigest()


def repack(deb: Path, out: Path, **fields: str) -> Path:
    """deb with its control fields changed, packed with dpkg-deb --nocheck: as a crafted .deb would be."""
    tree = out.parent / f"{out.name}.tree"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-R", deb, tree], check=True)
    control = Deb822((tree / "DEBIAN/control").read_text())
    for name, value in fields.items():
        control[name] = value
    (tree / "DEBIAN/control").write_text(control.dump())
    subprocess.run(["dpkg-deb", "--nocheck", "--root-owner-group", "-b", tree, out], check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


def packages(root: Path, suite: str = "stable") -> list[tuple[str, str]]:
    text = (root / "dists" / suite / "main/binary-amd64/Packages").read_text()
    return sorted((p["Package"], p["Version"]) for p in Packages.iter_paragraphs(text, use_apt_pkg=False))


def test_publish_keeps_versions_and_is_idempotent(tmp_path: Path, built_deb: Path, newer_deb: Path,
                                                  signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    assert [d.version for d in publish([built_deb], target(repo, signing))] == ["0.1"]
    before = snapshot(repo)
    assert publish([built_deb], target(repo, signing)) == []  # same bytes: a no-op
    assert snapshot(repo) == before
    publish([newer_deb], target(repo, signing))
    assert packages(repo) == [("apparmor-fullsystem", "0.1"), ("apparmor-fullsystem", "0.2")]
    for name in ("Release", "InRelease", "Release.gpg", "main/binary-amd64/Packages.gz",
                 "main/binary-amd64/Packages.xz"):
        assert (repo / "dists/stable" / name).is_file()
    subprocess.run(["gpgv", "--keyring", signing[0] / "pubring.kbx", repo / "dists/stable/InRelease"],
                   check=True, capture_output=True)


def test_same_version_other_bytes_is_refused(tmp_path: Path, built_deb: Path, signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    before = snapshot(repo)
    # The same package and version, other contents (another default stage).
    config = tmp_path / "site.toml"
    config.write_text('[policy]\nstage = "full"\n')
    impostor = build(load_config(config), tmp_path / "impostor")
    assert impostor.name == built_deb.name and impostor.read_bytes() != built_deb.read_bytes()
    with pytest.raises(PublishError, match="already published .* with different contents") as caught:
        publish([impostor], target(repo, signing))
    assert caught.value.hint is not None and "bump the version" in caught.value.hint
    assert snapshot(repo) == before
    # A version is immutable, not a file name.
    renamed = tmp_path / "renamed" / "apparmor-fullsystem_0.1+rebuilt_all.deb"
    renamed.parent.mkdir()
    shutil.copyfile(impostor, renamed)
    with pytest.raises(PublishError, match="already published .* with different contents"):
        publish([renamed], target(repo, signing))
    assert snapshot(repo) == before
    # Nor can one publish bring both.
    with pytest.raises(PublishError, match=re.escape(f"{impostor} is apparmor-fullsystem 0.1 (all) too, with other contents")):
        publish([impostor, renamed, built_deb], target(tmp_path / "fresh", signing))
    assert snapshot(tmp_path / "fresh") == {}


def test_failed_signing_leaves_the_repository_and_a_retry_publishes(tmp_path: Path, built_deb: Path,
                                                                    newer_deb: Path,
                                                                    signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    served = snapshot(repo)
    with pytest.raises(PublishError, match="signing failed") as caught:
        publish([newer_deb], Target(root=repo, gnupghome=signing[0], key="0000000000000000DEADBEEF"))
    assert snapshot(repo) == served  # the pool too: no newer_deb in it that no index lists
    assert "\n" not in caught.value.message and "0000000000000000DEADBEEF" in caught.value.message
    assert [d.version for d in publish([newer_deb], target(repo, signing))] == ["0.2"]
    assert apt_view(repo, signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb),
                                       ("apparmor-fullsystem", "0.2"): digest(newer_deb)}


INJECTED = "No space left on device (injected)"


def fail_after(step: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """step, run for real, then error: a step that failed after writing what it writes."""
    def failing(*args: Any, **kwargs: Any) -> Any:
        step(*args, **kwargs)
        raise error
    return failing


def inject(step: str, repo: Path, monkeypatch: pytest.MonkeyPatch) -> type[BaseException]:
    """Make `step` of the next publish into repo fail; returns the exception it raises."""
    if step == "pool":  # copying the second .deb
        copies: list[object] = []
        real_copyfile = shutil.copyfile

        def copyfile(source: Any, destination: Any, **kwargs: Any) -> Any:
            copies.append(source)
            if len(copies) == 2:
                raise OSError(28, INJECTED)
            return real_copyfile(source, destination, **kwargs)
        monkeypatch.setattr(shutil, "copyfile", copyfile)
        return PublishError   # the OSError, as the one error every failure of publish gets
    if step == "indexing":
        monkeypatch.setattr(publish_module, "write_indices",
                            fail_after(publish_module.write_indices, OSError(28, INJECTED)))
        return PublishError
    if step == "signing":  # ^C while gpg signs
        monkeypatch.setattr(publish_module, "sign_release",
                            fail_after(publish_module.sign_release, KeyboardInterrupt()))
        return KeyboardInterrupt
    assert step == "switch"  # the rename(2) of dists/<suite> itself
    real_replace = os.replace

    def replace(source: Any, destination: Any, **kwargs: Any) -> None:
        if Path(destination) == repo / "dists" / "stable":
            raise OSError(5, "Input/output error (injected)")
        real_replace(source, destination, **kwargs)
    monkeypatch.setattr(os, "replace", replace)
    return PublishError


@pytest.mark.parametrize("served", [True, False], ids=["into-a-served-suite", "into-an-empty-repository"])
@pytest.mark.parametrize("step", ["pool", "indexing", "signing", "switch"])
def test_a_failure_at_any_step_leaves_the_repository_and_a_retry_publishes(
        step: str, served: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_deb: Path, newer_deb: Path,
        broken_full_deb: Path, signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    if served:
        publish([built_deb], target(repo, signing))
    before = snapshot(repo)
    with pytest.raises(inject(step, repo, monkeypatch)):
        publish([newer_deb, broken_full_deb], target(repo, signing))
    monkeypatch.undo()
    assert snapshot(repo) == before
    assert sorted(d.version for d in publish([newer_deb, broken_full_deb], target(repo, signing))) == ["0.2", "0.3"]
    expected = {("apparmor-fullsystem", "0.2"): digest(newer_deb), ("apparmor-fullsystem", "0.3"): digest(broken_full_deb)}
    if served:
        expected["apparmor-fullsystem", "0.1"] = digest(built_deb)
    assert apt_view(repo, signing) == expected


def test_an_interrupt_once_the_suite_is_switched_undoes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                built_deb: Path, newer_deb: Path,
                                                                signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    real_replace = os.replace

    def replace(source: Any, destination: Any, **kwargs: Any) -> None:
        real_replace(source, destination, **kwargs)
        if Path(destination) == repo / "dists" / "stable":
            raise KeyboardInterrupt  # ^C as the rename returns: the commit is done
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        publish([newer_deb], target(repo, signing))
    monkeypatch.undo()
    assert apt_view(repo, signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb),
                                       ("apparmor-fullsystem", "0.2"): digest(newer_deb)}
    assert publish([newer_deb], target(repo, signing)) == []


def test_a_publish_killed_before_its_switch_costs_no_served_generation(tmp_path: Path, built_deb: Path,
                                                                       newer_deb: Path,
                                                                       signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    served = os.readlink(repo / "dists/stable")
    # What a publish killed (SIGKILL, power loss) after it signed leaves: a newer generation no link names.
    unswitched = repo / "dists" / f".stable.{int(served.rsplit('.', 1)[1]) + 1}"
    shutil.copytree(repo / "dists" / served, unswitched)
    publish([newer_deb], target(repo, signing))
    assert (repo / "dists" / served / "InRelease").is_file()  # the one just replaced, for clients mid-download
    assert not unswitched.exists()


def cut_short(deb: Path, out: Path) -> Path:
    """deb as an interrupted copy leaves it: its first half, control member whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data = deb.read_bytes()
    out.write_bytes(data[:len(data) // 2])
    return out


def test_a_truncated_deb_is_refused_and_does_not_block_the_good_one(tmp_path: Path, built_deb: Path,
                                                                     newer_deb: Path,
                                                                     signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    before = snapshot(repo)
    truncated = cut_short(newer_deb, tmp_path / "download" / newer_deb.name)
    with pytest.raises(PublishError) as caught:
        publish([truncated], target(repo, signing))
    assert caught.value.message.startswith(f"{truncated}: not a whole .deb (")
    assert "\n" not in caught.value.message and caught.value.hint and "build it again" in caught.value.hint
    assert snapshot(repo) == before
    assert [d.version for d in publish([newer_deb], target(repo, signing))] == ["0.2"]
    assert apt_view(repo, signing)["apparmor-fullsystem", "0.2"] == digest(newer_deb)


@pytest.mark.parametrize("left", ["same bytes", "cut short"])
def test_a_pool_file_no_index_lists_is_not_published(left: str, tmp_path: Path, built_deb: Path, newer_deb: Path,
                                                     signing: tuple[Path, str]) -> None:
    """What a publish killed before its switch leaves, or an earlier aa-pkg left after a failure."""
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    left_over = repo / "pool/main/a/apparmor-fullsystem/apparmor-fullsystem_0.2_all.deb"
    if left == "same bytes":
        shutil.copyfile(newer_deb, left_over)
    else:
        cut_short(newer_deb, left_over)
    assert [d.version for d in publish([newer_deb], target(repo, signing))] == ["0.2"]
    assert apt_view(repo, signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb),
                                       ("apparmor-fullsystem", "0.2"): digest(newer_deb)}


def test_a_pool_file_apt_ftparchive_cannot_read_stops_the_publish(tmp_path: Path, built_deb: Path,
                                                                  newer_deb: Path, broken_full_deb: Path,
                                                                  signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    damaged = cut_short(broken_full_deb, repo / "pool/main/a/apparmor-fullsystem/apparmor-fullsystem_0.3_all.deb")
    before = snapshot(repo)
    with pytest.raises(PublishError) as caught:
        publish([newer_deb], target(repo, signing))
    assert caught.value.message.startswith(f"{damaged}: apt-ftparchive cannot read it (")
    assert "\n" not in caught.value.message
    assert snapshot(repo) == before
    damaged.unlink()
    assert [d.version for d in publish([newer_deb], target(repo, signing))] == ["0.2"]


@pytest.mark.parametrize(("field", "value"), [
    ("Source", "../../../escaped"),
    ("Source", "{tmp_path}/escaped"),
    ("Package", "../../../escaped"),
    ("Version", "0.2/../../../../../escaped"),
    ("Architecture", "../../../escaped"),
])
def test_crafted_control_fields_never_reach_a_path(field: str, value: str, tmp_path: Path, built_deb: Path,
                                                   newer_deb: Path, signing: tuple[Path, str]) -> None:
    crafted = repack(newer_deb, tmp_path / "input" / "crafted.deb", **{field: value.format(tmp_path=tmp_path)})
    repo = tmp_path / "a/b/repo"  # ../../../ from its pool's directories is still inside tmp_path
    publish([built_deb], target(repo, signing))
    before = snapshot(tmp_path)
    with pytest.raises(PublishError) as caught:
        publish([crafted], target(repo, signing))
    assert caught.value.message.startswith(f"{crafted}: {field} ")
    assert snapshot(tmp_path) == before


def test_the_pool_name_is_canonical(tmp_path: Path, built_deb: Path, newer_deb: Path, broken_full_deb: Path,
                                    signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    # 0.2 under the name the published 0.1 has, 0.3 under a download's name.
    misnamed = tmp_path / "in" / built_deb.name
    misnamed.parent.mkdir()
    shutil.copyfile(newer_deb, misnamed)
    download = tmp_path / "in" / "apparmor-fullsystem.deb"
    shutil.copyfile(broken_full_deb, download)
    assert sorted(d.version for d in publish([misnamed, download], target(repo, signing))) == ["0.2", "0.3"]
    assert apt_view(repo, signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb),
                                       ("apparmor-fullsystem", "0.2"): digest(newer_deb),
                                       ("apparmor-fullsystem", "0.3"): digest(broken_full_deb)}
    pool = repo / "pool/main/a/apparmor-fullsystem"
    assert sorted(p.name for p in pool.iterdir()) == [f"apparmor-fullsystem_{v}_all.deb" for v in ("0.1", "0.2", "0.3")]
    # The epoch is not in the file name (dak's rule): 1:0.1 would overwrite 0.1's file.
    before = snapshot(repo)
    epoch = repack(built_deb, tmp_path / "in" / "apparmor-fullsystem_1:0.1_all.deb", Version="1:0.1")
    with pytest.raises(PublishError, match="differ only in their epoch"):
        publish([epoch], target(repo, signing))
    assert snapshot(repo) == before


def test_an_architecture_the_suite_does_not_index_is_refused(tmp_path: Path, newer_deb: Path,
                                                             signing: tuple[Path, str]) -> None:
    arm64 = repack(newer_deb, tmp_path / "apparmor-fullsystem_0.2_arm64.deb", Architecture="arm64")
    repo = tmp_path / "repo"
    with pytest.raises(PublishError) as caught:
        publish([arm64], target(repo, signing))
    assert caught.value.message.startswith(f"{arm64}: Architecture arm64 is not indexed")
    assert caught.value.hint and "--arch arm64" in caught.value.hint
    assert snapshot(repo) == {}
    both = Target(root=repo, gnupghome=signing[0], key=signing[1], architectures=("amd64", "arm64"))
    assert [d.version for d in publish([arm64], both)] == ["0.2"]
    assert apt_view(repo, signing, arch="arm64") == {("apparmor-fullsystem", "0.2"): digest(arm64)}
    assert apt_view(repo, signing, arch="amd64") == {}


@pytest.mark.parametrize("damage", ["left out", "other contents"])
def test_an_index_that_does_not_list_what_is_reported_is_never_served(
        damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_deb: Path, newer_deb: Path,
        signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    before = snapshot(repo)
    real_write_indices = publish_module.write_indices

    def damaged_write_indices(target: Target, suite_dir: Path) -> None:
        real_write_indices(target, suite_dir)
        binary = suite_dir / "main/binary-amd64"
        stanzas = (binary / "Packages").read_text().split("\n\n")
        if damage == "left out":
            stanzas = [s for s in stanzas if "\nVersion: 0.2\n" not in s]
        else:
            stanzas = [s.replace(digest(newer_deb), digest(built_deb)) for s in stanzas]
        text = "\n\n".join(stanzas).encode()
        (binary / "Packages").write_bytes(text)
        (binary / "Packages.xz").write_bytes(lzma.compress(text))
        (binary / "Packages.gz").unlink()
    monkeypatch.setattr(publish_module, "write_indices", damaged_write_indices)
    with pytest.raises(PublishError) as caught:
        publish([newer_deb], target(repo, signing))
    assert caught.value.message.startswith(f"{newer_deb}: the new index of stable ")
    assert "nothing was published" in caught.value.message and "\n" not in caught.value.message
    assert snapshot(repo) == before


def test_gnupghome_from_the_environment_is_gpgs_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        built_deb: Path, signing: tuple[Path, str]) -> None:
    home = tmp_path / "home"  # ~/.gnupg there has no key
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GNUPGHOME", str(signing[0]))
    repo = tmp_path / "repo"
    without_home = Target(root=repo, key=signing[1])
    assert [d.version for d in publish([built_deb], without_home)] == ["0.1"]
    assert apt_view(repo, signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb)}
    export_key(without_home, tmp_path / "keyring.gpg")
    subprocess.run(["gpgv", "--keyring", tmp_path / "keyring.gpg", repo / "dists/stable/InRelease"],
                   check=True, capture_output=True)


def test_concurrent_publishes_do_not_corrupt(tmp_path: Path, built_deb: Path, newer_deb: Path,
                                             signing: tuple[Path, str]) -> None:
    repo = tmp_path / "repo"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda deb: publish([deb], target(repo, signing)), [built_deb, newer_deb] * 4))
    assert packages(repo) == [("apparmor-fullsystem", "0.1"), ("apparmor-fullsystem", "0.2")]
    subprocess.run(["gpgv", "--keyring", signing[0] / "pubring.kbx", repo / "dists/stable/InRelease"],
                   check=True, capture_output=True)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def apt(machine: vm.Machine, *args: str) -> subprocess.CompletedProcess[str]:
    # Only our repository: apt's verdict on it, not on a Debian mirror.
    only_ours = ["-o", "Dir::Etc::SourceList=/etc/apt/sources.list.d/internal.sources",
                 "-o", "Dir::Etc::SourceParts=/nonexistent"]
    return machine.chroot_run(["apt-get", *only_ours, *args], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("suite", vm.SUITES)
def test_apt_installs_and_upgrades_over_http(suite: str, tmp_path: Path, http_root: tuple[Path, str],
                                             built_deb: Path, newer_deb: Path, signing: tuple[Path, str]) -> None:
    vm.require_tools("mmdebstrap")
    vm.require_root()
    www, url = http_root
    repo = www / "good"
    good = target(repo, signing, suite)
    publish([built_deb], good)

    machine = vm.Machine.create(suite, tmp_path / "machine")
    export_key(good, machine.root / "usr/share/keyrings/internal-archive-keyring.gpg")
    sources = machine.root / "etc/apt/sources.list.d/internal.sources"
    sources.write_text(sources_stanza(good, f"{url}/good", "/usr/share/keyrings/internal-archive-keyring.gpg"))

    update = apt(machine, "update")
    assert update.returncode == 0, update.stdout
    install = apt(machine, "install", "-y", "apparmor-fullsystem")
    assert install.returncode == 0, install.stdout
    assert "Processing triggers for initramfs-tools" in install.stdout

    publish([newer_deb], good)
    assert apt(machine, "update").returncode == 0
    upgrade = apt(machine, "upgrade", "-y")
    assert upgrade.returncode == 0, upgrade.stdout
    version = machine.chroot_run(["dpkg-query", "-W", "-f", "${Version}", "apparmor-fullsystem"]).stdout
    assert version == "0.2"

    # A tampered Packages file: the signed Release no longer matches it.
    packages_file = repo / "dists" / suite / "main/binary-amd64/Packages"
    for compressed in ("Packages.gz", "Packages.xz"):
        (packages_file.parent / compressed).unlink()
    packages_file.write_text(packages_file.read_text().replace("Version: 0.2", "Version: 0.3"))
    machine.chroot_run(["rm", "-rf", "/var/lib/apt/lists"])
    tampered = apt(machine, "update")
    assert tampered.returncode != 0, tampered.stdout
    assert "Hash Sum mismatch" in tampered.stdout or "File has unexpected size" in tampered.stdout, tampered.stdout

    # A repository signed with a key the client does not trust.
    other = www / "other"
    other_key = make_key(tmp_path / "other-gpg", "intruder")
    publish([built_deb], Target(root=other, suite=suite, gnupghome=tmp_path / "other-gpg", key=other_key))
    sources.write_text(sources_stanza(good, f"{url}/other", "/usr/share/keyrings/internal-archive-keyring.gpg"))
    intruder = apt(machine, "update")
    assert intruder.returncode != 0, intruder.stdout
    assert "NO_PUBKEY" in intruder.stdout or "not signed" in intruder.stdout, intruder.stdout


def test_cli_publish_and_client_config(tmp_path: Path, built_deb: Path, signing: tuple[Path, str]) -> None:
    from test_main import aa_pkg

    repo, keyring = tmp_path / "repo", tmp_path / "keyring.gpg"
    common = ["--repo", str(repo), "--suite", "bookworm", "--gnupghome", str(signing[0]), "--key", signing[1]]
    published = aa_pkg("publish", str(built_deb), *common, cwd=tmp_path)
    assert published.stdout == "published apparmor-fullsystem 0.1\n", published.stderr
    again = aa_pkg("publish", str(built_deb), *common, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing new")
    client = aa_pkg("client-config", *common, "--url", "http://apt.example.org/", "--keyring-out", str(keyring),
                    cwd=tmp_path)
    assert client.stdout == ("Types: deb\nURIs: http://apt.example.org/\nSuites: bookworm\nComponents: main\n"
                             "Signed-By: /usr/share/keyrings/apparmor-fullsystem-archive-keyring.gpg\n")
    # The exported keyring verifies the published Release, as apt's gpgv would.
    subprocess.run(["gpgv", "--keyring", keyring, repo / "dists/bookworm/InRelease"], check=True, capture_output=True)
    bad = aa_pkg("publish", str(built_deb), "--repo", str(repo), "--suite", "Bad Suite", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("aa-pkg: error: suite 'Bad Suite' is not allowed")
    truncated = cut_short(built_deb, tmp_path / "cut" / built_deb.name)
    refused = aa_pkg("publish", str(truncated), *common, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"aa-pkg: error: {truncated}: not a whole .deb (")
    assert len(refused.stderr.splitlines()) == 2 and refused.stderr.splitlines()[1].startswith("aa-pkg: hint: ")


def test_cli_takes_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_deb: Path,
                                  signing: tuple[Path, str]) -> None:
    """--repo, --gnupghome, the .deb and --keyring-out as typed, relative to the current directory (issue 18:
    apt-ftparchive runs in the repository, where a relative --repo named repo/repo/.aa-pkg/checksums.db)."""
    from aa_pkg.__main__ import main

    shutil.copyfile(built_deb, tmp_path / built_deb.name)
    monkeypatch.chdir(tmp_path)
    common = ["--repo", "repo", "--gnupghome", os.path.relpath(signing[0]), "--key", signing[1]]
    assert main(["publish", built_deb.name, *common]) == 0
    assert main(["publish", built_deb.name, *common]) == 0  # with the checksum cache the first one wrote
    assert main(["client-config", *common, "--url", "http://apt.example.org/", "--keyring-out", "keyring.gpg"]) == 0
    assert apt_view(tmp_path / "repo", signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb)}
    subprocess.run(["gpgv", "--keyring", tmp_path / "keyring.gpg", tmp_path / "repo/dists/stable/InRelease"],
                   check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [built_deb.name, "keyring.gpg", "repo"]
    assert not (tmp_path / "repo/repo").exists()


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`aa-pkg ARGS` run by main() in this process, where monkeypatch reaches it."""
    from aa_pkg.__main__ import main

    status = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["aa-pkg", *args], status, out, err)


def fails_in_one_line(result: subprocess.CompletedProcess[str], path: Path, hint: str) -> None:
    """Exit 1, one error naming PATH and its hint saying HINT; no traceback."""
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error, given = result.stderr.splitlines()
    assert error.startswith("aa-pkg: error: cannot publish into ") and f"{path}" in error, error
    assert given.startswith("aa-pkg: hint: ") and hint in given, given


@contextlib.contextmanager
def mounted(what: list[str], where: Path) -> Iterator[None]:
    """mount WHAT on WHERE for the body, as root; skips (fails under AA_PKG_REQUIRE_TOOLS=1) otherwise."""
    vm.require_root()
    subprocess.run(["mount", *what, str(where)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_publish_into_a_read_only_repository_fails_in_one_line(tmp_path: Path, built_deb: Path, newer_deb: Path,
                                                               signing: tuple[Path, str]) -> None:
    from test_main import aa_pkg

    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    before = snapshot(repo)
    with mounted(["--bind", str(repo)], repo):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(repo)], check=True)
        result = aa_pkg("publish", str(newer_deb), "--repo", str(repo), "--gnupghome", str(signing[0]),
                        "--key", signing[1], cwd=tmp_path)
        fails_in_one_line(result, repo / ".aa-pkg/lock", "read-only")
        assert snapshot(repo) == before
    assert [d.version for d in publish([newer_deb], target(repo, signing))] == ["0.2"]


def test_publish_onto_a_full_disk_fails_in_one_line_and_leaves_the_repository(
        tmp_path: Path, built_deb: Path, newer_deb: Path, signing: tuple[Path, str]) -> None:
    from test_main import aa_pkg

    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], disk):
        repo = disk / "repo"
        publish([built_deb], target(repo, signing))
        before = snapshot(repo)
        filler = disk / "filler"
        with filler.open("wb") as f, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                f.write(bytes(1 << 16))
                f.flush()
        result = aa_pkg("publish", str(newer_deb), "--repo", str(repo), "--gnupghome", str(signing[0]),
                        "--key", signing[1], cwd=tmp_path)
        fails_in_one_line(result, repo, "full")
        assert "No space left on device" in result.stderr, result.stderr
        assert snapshot(repo) == before
        filler.unlink()
        assert [d.version for d in publish([newer_deb], target(repo, signing))] == ["0.2"]
        assert apt_view(repo, signing) == {("apparmor-fullsystem", "0.1"): digest(built_deb),
                                           ("apparmor-fullsystem", "0.2"): digest(newer_deb)}


def test_publish_without_permission_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, built_deb: Path,
                                                      newer_deb: Path, signing: tuple[Path, str]) -> None:
    """What a user who may not write the repository gets: root passes any permission check, so the lock's
    open(2) is refused here as the kernel would refuse it."""
    repo = tmp_path / "repo"
    publish([built_deb], target(repo, signing))
    before = snapshot(repo)
    real_open = Path.open

    def open_refused(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == repo / ".aa-pkg/lock":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)
    monkeypatch.setattr(Path, "open", open_refused)
    result = in_process(capsys, "publish", str(newer_deb), "--repo", str(repo), "--gnupghome", str(signing[0]),
                        "--key", signing[1])
    fails_in_one_line(result, repo / ".aa-pkg/lock", "as a user who may write the repository")
    assert result.stderr.startswith(f"aa-pkg: error: cannot publish into {repo}: {repo}/.aa-pkg/lock: "
                                    "Permission denied\n")
    assert snapshot(repo) == before
