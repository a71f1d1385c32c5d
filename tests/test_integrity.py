"""The derivation of what a service may write (aa_pkg/integrity.py), checked against its own definitions."""

from __future__ import annotations

import re

import pytest

from aa_pkg import integrity


def glob_regex(glob: str) -> re.Pattern:
    """AppArmor's glob syntax for one path component, as apparmor.d(5) defines it, in Python's."""
    out, i = "", 0
    while i < len(glob):
        c = glob[i]
        if c == "[":
            end = glob.index("]", i)
            body = glob[i + 1:end]
            out += "[^" + re.escape(body[1:]) + "]" if body.startswith("^") else "[" + re.escape(body) + "]"
            i = end + 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out)


NAMES = ["boot", "dev", "etc", "home", "lib", "lib64", "media", "mnt", "opt", "proc", "root", "run", "sbin",
         "srv", "sys", "tmp", "usr", "var", "vmlinuz", "v", "va", "vars", "d", "data", "x", "runs", "ru"]


@pytest.mark.parametrize("names", [integrity.DATA_ROOTS, ("a",), ("ab", "a", "abc", "b")])
def test_not_one_of_matches_exactly_the_other_names(names) -> None:
    globs = [glob_regex(g) for g in integrity.not_one_of(names)]
    for candidate in [*NAMES, *names, *(n + "x" for n in names), *(n[:-1] for n in names if len(n) > 1)]:
        matched = any(g.fullmatch(candidate) for g in globs)
        assert matched == (candidate not in names), (candidate, names)


def test_not_one_of_refuses_what_is_not_a_name() -> None:
    for bad in ([], [""], ["a/b"]):
        with pytest.raises(ValueError):
            integrity.not_one_of(bad)


def test_ancestors_are_the_literal_directories_above() -> None:
    assert integrity.ancestors(["/run/systemd/system*/", "/var/lib/dpkg/", "/run/*.d/", "/a/b/file"]) == [
        "/run/", "/run/systemd/", "/var/", "/var/lib/", "/a/", "/a/b/"]


def test_every_instruction_source_lies_in_a_data_root_and_names_its_reader() -> None:
    for source in integrity.INSTRUCTIONS:
        assert source.path.split("/")[1] in integrity.DATA_ROOTS, source
        assert re.search(r"\(\d\)|\.c\b", source.reader), f"{source.path}: cite the man page or source"


def path_regex(pattern: str) -> re.Pattern:
    """AppArmor's glob syntax for a whole path (apparmor.d(5), Globbing), alternations nested."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1:end]
            out += "[^" + re.escape(body[1:]) + "]" if body.startswith("^") else "[" + re.escape(body) + "]"
            i = end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]", "{": "(?:", "}": ")", ",": "|"}.get(c, re.escape(c))
            i += 1
    return re.compile(out)


def test_all_but_keeps_one_path_out() -> None:
    pattern = path_regex(integrity.all_but("/sys/kernel/", "security/apparmor/.access"))
    for path in ("/sys/kernel/", "/sys/kernel/uevent_helper", "/sys/kernel/security/apparmor/.replace",
                 "/sys/kernel/security/apparmor/.load", "/sys/kernel/security/apparmor/policy/profiles/x",
                 "/sys/kernel/security/lsm", "/sys/kernel/securityfs", "/sys/kernel/debug/tracing/trace",
                 "/sys/kernel/security/apparmor/.accessx", "/sys/kernel/security/apparmorx/y"):
        assert pattern.fullmatch(path), path
    for path in ("/sys/kernel/security/apparmor/.access", "/sys/kernelx/y", "/sys/module/x"):
        assert not pattern.fullmatch(path), path


def test_outside_data_roots_is_every_top_level_entry_but_the_data_roots() -> None:
    pattern = path_regex(integrity.outside_data_roots())
    for path in ("/etc/", "/etc/passwd", "/usr/bin/x", "/vmlinuz", "/opt/", "/data/x", "/d", "/runx/y", "/root/.ssh/"):
        assert pattern.fullmatch(path), path
    for path in ("/run/x", "/var/lib/x", "/tmp/x", "/home/u/.profile", "/dev/null", "/"):
        assert not pattern.fullmatch(path), path
