"""aa-pkg command line: argparse -> Config -> one pipeline. The only place that exits."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aa_pkg import __version__
from aa_pkg.config import Config, load_config
from aa_pkg.errors import AaPkgError
from aa_pkg.settings import SETTINGS

if TYPE_CHECKING:
    from aa_pkg.publish import Target


def read_config(path: Path | None) -> Config:
    return load_config(path) if path else Config()


def cmd_build(args: argparse.Namespace) -> None:
    from aa_pkg.build import build_packages  # needs sh and python-debian; render does not

    for deb in build_packages(read_config(args.config), args.out):
        print(deb)


def cmd_render(args: argparse.Namespace) -> None:
    from aa_pkg.render import render_package

    config = read_config(args.config)
    if args.package and args.package != config.package:
        raise AaPkgError(f"debian/control builds {args.package!r} but the settings say {config.package!r}",
                         hint="build site variants with 'aa-pkg build --config', which rewrites debian/control")
    render_package(config, args.tree, args.debian_dir)


def cmd_check(args: argparse.Namespace) -> None:
    from aa_pkg.check import check_tree

    check_tree(read_config(args.config), args.tree)


def publish_target(args: argparse.Namespace) -> Target:
    from aa_pkg.publish import Target

    return Target(root=args.repo, suite=args.suite, component=args.component,
                  architectures=tuple(args.arch or ["amd64"]), key=args.key, gnupghome=args.gnupghome)


def cmd_publish(args: argparse.Namespace) -> None:
    from aa_pkg.publish import publish

    new = publish(args.debs, publish_target(args), require_verified=args.require_verified,
                  record_dir=args.record_dir)
    for deb in new:
        print(f"published {deb.package} {deb.version}")
    if not new:
        print("nothing new: every .deb is already published with the same contents")


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from aa_pkg.verify import State, default_record_dir, progress_to_stderr, render_text, save_record, verify

    state = State(stage=args.stage, mode=args.mode, early=args.early, level=args.level)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aa-pkg-verify-"))
    result = verify(args.debs, args.suite, state, workdir, backports=args.backports, accel=args.accel,
                    progress=progress_to_stderr, timeout=args.timeout)
    record = save_record(result, args.record_dir or default_record_dir())
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(render_text(result), end="")
        print(f"Record:       {record}")
    return 0 if result.passed else 1


def cmd_client(args: argparse.Namespace) -> None:
    from aa_pkg.publish import export_key, sources_stanza

    target = publish_target(args)
    export_key(target, args.keyring_out)
    print(sources_stanza(target, args.url, args.keyring_path), end="")


def cmd_query(args: argparse.Namespace) -> None:
    print(getattr(read_config(args.config), args.key))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="aa-pkg", description="Build the apparmor-fullsystem Debian package.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = top.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", type=Path, help="site settings (TOML); see README.md, 'Site variants'")
        return p

    p = add("build", "build the .deb (the standard package, or a site variant and/or site policy with --config)")
    p.add_argument("--out", type=Path, default=Path("dist"), help="output directory (default: dist/)")
    p.set_defaults(func=cmd_build)

    p = add("render", "render the package tree and maintainer scripts (used by debian/rules)")
    p.add_argument("--package", help="the binary package debian/control builds")
    p.add_argument("--tree", type=Path, required=True, help="where to render the installed files")
    p.add_argument("--debian-dir", type=Path, required=True, help="where to write maintainer scripts")
    p.set_defaults(func=cmd_render)

    p = add("check", "check a rendered tree: sh -n on scripts, apparmor_parser -Q on profiles")
    p.add_argument("--tree", type=Path, required=True)
    p.set_defaults(func=cmd_check)

    def add_repository(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", type=Path, required=True, help="repository directory (served as static files)")
        p.add_argument("--suite", default="stable", help="dists/<suite> (default: stable)")
        p.add_argument("--component", default="main", help="component (default: main)")
        p.add_argument("--arch", action="append", help="architecture indexed (repeatable; default: amd64)")
        p.add_argument("--key", help="gpg key id to sign with (default: gpg's default key)")
        p.add_argument("--gnupghome", type=Path, help="gpg home of the signing key (default: gpg's)")

    p = sub.add_parser("publish", help="add .debs to a signed apt repository")
    p.add_argument("debs", nargs="+", type=Path, metavar="DEB")
    add_repository(p)
    p.add_argument("--require-verified", action="store_true",
                   help="refuse a .deb without a passing 'aa-pkg verify' of the same bytes")
    p.add_argument("--record-dir", type=Path,
                   help="where aa-pkg verify kept its records (default: $XDG_STATE_HOME/aa-pkg/verified)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("verify", help="boot-test .debs in a fresh guest of a Debian release under qemu")
    p.add_argument("debs", nargs="+", type=Path, metavar="DEB", help="the package and any site-policy packages")
    p.add_argument("--suite", default="bookworm", help="the Debian release to boot (default: bookworm)")
    p.add_argument("--backports", action="store_true", help="boot the suite's backports kernel (trixie)")
    for setting in SETTINGS:
        p.add_argument(f"--{setting.command}", choices=setting.values,
                       help=f"aa-fullsystem {setting.command} before the boot (default: as installed)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="qemu's accelerator (default: KVM when /dev/kvm works on a host that is no guest)")
    p.add_argument("--timeout", type=int, default=900, help="seconds a boot may take (default: 900)")
    p.add_argument("--workdir", type=Path, help="where the guest is made (default: a new temporary directory)")
    p.add_argument("--record-dir", type=Path,
                   help="where the result is kept for publish --require-verified "
                        "(default: $XDG_STATE_HOME/aa-pkg/verified)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("client-config", help="export the signing key and print the .sources stanza for clients")
    add_repository(p)
    p.add_argument("--url", required=True, help="where clients reach the repository")
    p.add_argument("--keyring-out", type=Path, required=True, help="write the binary public keyring here")
    p.add_argument("--keyring-path", default="/usr/share/keyrings/apparmor-fullsystem-archive-keyring.gpg",
                   help="where clients install that keyring (Signed-By)")
    p.set_defaults(func=cmd_client)

    p = add("query", "print one setting (used by debian/rules)")
    p.add_argument("key", choices=["package", "profile_name", "stage", "mode"])
    p.set_defaults(func=cmd_query)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    try:
        status = args.func(args)
    except AaPkgError as e:
        print(f"aa-pkg: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"aa-pkg: hint: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
