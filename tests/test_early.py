"""EARLY=all: the whole installed policy, precompiled, loaded before PID 1.

One guest per suite, in the full stage with `aa-fullsystem early all`, and a
test profile for systemd-udevd (Debian ships none), which PID 1 starts long
before apparmor.service. (systemd-journald would be the other candidate; its
unit runs it with no_new_privs, which the stacked transition of init's
profile, `Pix -> &fullsystem-init`, also serves.)

  boot 1  the initramfs was built in a chroot, where no kernel features can
          be read: no precompiled policy, the init policy only, and both the
          record and `aa-fullsystem status` say so and what fixes it.
          A process an initramfs script leaves running is unconfined, and
          status names it as left over from the initramfs.
          Then `update-initramfs -u` on the running kernel.
  boot 2  the precompiled policy is loaded: udevd runs under its own
          profile from its first instruction. Built on this very kernel
          build, the image carries binaries only and no parser.
          Then an initramfs whose policy is precompiled for other features:
          a copy of this kernel's features, one feature removed, bind-mounted
          over /sys/kernel/security/apparmor/features while it is built.
  boot 3  a kernel whose features differ from the cache: the cache is not
          loaded, PID 1 is still confined by the text init profile, and the
          fallback is recorded and reported: this image kept the parser.
          Its boot script, run in it with those features back and its dd
          gone, finds its set fitting yet unwritable, and the parser loads
          the init policy instead (early=fallback, the dd named).
          Then, rebuilt for this kernel (binaries only): that initramfs's boot script, run
          in it with its precompiled policy cut short (after a whole
          profile, which the kernel then does not load either: all or
          none), is refused by the kernel and falls back (early=refused); run again with
          aa_fullsystem=complain, it loads the init policy only and records
          that choice (early=skipped), the kernel holding init's profile
          in complain mode where the initramfs says enforce; started by
          another build of the kernel, or without the initramfs's dd, it
          loads nothing and says why. And a profile in a policy
          namespace of its own: the hook makes no set of it, as the
          namespace would apply to every profile of the one write.
  boot 4  so the init policy only, and the record and status say why
          and that the policy needs the fix (early=refused).
"""

from __future__ import annotations

import pytest

try:                    # tests/ imported as a package
    from . import vm
    from .guest import (
        COUNT,
        ENTER_INITRAMFS,
        FROM_INITRAMFS,
        INITRAMFS_DIR,
        INITRAMFS_PROOF,
        LEAVE_INITRAMFS,
        PROFILE,
        RECORD,
        REPORT,
        count_every_denial,
        drop_stale_root,
        from_initramfs,
        new_machine,
        processes,
        unconfined_since_init,
        where,
    )
except ImportError:     # tests/ on sys.path (pytest's default rootdir mode)
    import vm
    from guest import (
        COUNT,
        ENTER_INITRAMFS,
        FROM_INITRAMFS,
        INITRAMFS_DIR,
        INITRAMFS_PROOF,
        LEAVE_INITRAMFS,
        PROFILE,
        RECORD,
        REPORT,
        count_every_denial,
        drop_stale_root,
        from_initramfs,
        new_machine,
        processes,
        unconfined_since_init,
        where,
    )

pytestmark = [pytest.mark.vm, pytest.mark.slow]

# Complain mode and broad rules: what matters is the label, not the rules.
# systemd-udevd is udevadm under another name (a symlink on Debian), and
# AppArmor attaches by the resolved path.
EARLY_SERVICES = {
    # profile name: (attachment, process name)
    "aafs-test-udevd": ("/{,usr/}{bin/udevadm,lib/systemd/systemd-udevd}", "systemd-udevd"),
}


def service_profile(name: str, attachment: str) -> str:
    return f"""\
abi <abi/3.0>,
include <tunables/global>

# Test profile of tests/test_early.py.
profile {name} {attachment} flags=(complain, attach_disconnected, mediate_deleted) {{
  capability,
  network,
  mount,
  umount,
  pivot_root,
  signal,
  ptrace,
  unix,
  dbus,
  file,
  change_profile,
}}
"""


DISABLED = "aafs-test-disabled"

LEFTOVER = "aafs-test-leftover"
LEFTOVER_SCRIPT = """\
#!/bin/sh
# tests/test_early.py: leaves a process running past the initramfs.
case $1 in prereqs) exit 0 ;; esac
sleep 86400 </dev/null >/dev/null 2>&1 &
"""

# Each test service's label, and how apparmor.service's parser put its
# profile into the kernel, from the kernel's STATUS record: "profile_replace"
# when the initramfs had loaded it, "profile_load" when it had not. (The
# label alone cannot say: a service whose exec comes after apparmor.service
# loaded its profile enters it either way.)
SERVICES = f"""
echo "@@ disabled_loaded=$(grep -c '^{DISABLED} ' /sys/kernel/security/apparmor/profiles)"
""" + "".join(rf"""
pid=$(pidof {program} | cut -d' ' -f1)
echo "@@ {program}.label=$(cat /proc/$pid/attr/current 2>&1)"
echo "@@ {name}.by_apparmor_service=$(dmesg | grep 'apparmor="STATUS"' | grep 'comm="apparmor_parser"' |
    grep -m 1 ' name="{name}" ' | sed -n 's/.* operation="\([a-z_]*\)".*/\1/p')"
""" for name, (_, program) in EARLY_SERVICES.items())


def not_loaded_early(b: vm.Boot) -> None:
    """The test services' profiles came from apparmor.service, not the
    initramfs (the kernel's record), and each service is confined: under
    init's profile, or its own if its exec came after that load."""
    for name, (_, program) in EARLY_SERVICES.items():
        assert b.values[f"{name}.by_apparmor_service"] == "profile_load", where(b)
        assert b.values[f"{program}.label"] in (f"{PROFILE} (complain)", f"{name}//&{PROFILE} (complain)"), where(b)

# Whether the running kernel's initramfs carries the parser; INITRAMFS_PROOF
# shows the listing was read.
PARSER_IN_IMAGE = COUNT + rf"""
lsinitramfs /boot/initrd.img-$(uname -r) >/run/aafs-listing
echo "@@ lsinitramfs_exit=$?"
count parser_in_image /run/aafs-listing '{INITRAMFS_PROOF}' -x 'usr/sbin/apparmor_parser'
count binaries_in_image /run/aafs-listing '{INITRAMFS_PROOF}' -x '{INITRAMFS_DIR}/binary/index'
"""

SIMULATE_OTHER_KERNEL = r"""
features=/sys/kernel/security/apparmor/features
rm -rf /run/aafs-features && cp -r "$features" /run/aafs-features
rm -rf /run/aafs-features/mount     # a kernel without mount mediation
mount --bind /run/aafs-features "$features"
# ... and another build of it, as /proc/version tells builds apart
sed 's/#/#0 other build /' /proc/version >/run/aafs-version
mount --bind /run/aafs-version /proc/version
update-initramfs -u
echo "@@ other_kernel_update_exit=$?"
umount /proc/version "$features"
"""


# The initramfs rebuilt for the running kernel, timed (the compile of the
# whole policy).
REBUILD = r"""
start=$(date +%s%N)
update-initramfs -u
echo "@@ rebuild_exit=$?"
echo "@@ rebuild_ms=$((($(date +%s%N) - start) / 1000000))"
"""

# The compiled policy kept between builds (aa-pkg's compiled_policy):
# rebuilt with nothing changed, it is reused, not compiled; damaged, it is
# compiled again; in enforce mode, after a profile is added, only it is
# compiled (and an object found damaged), the other files' objects reused,
# and so are init's profile and the fallbacks compiled from what the
# initramfs ships (but one found damaged), the set holding init's profile
# once, and the new image carries the change; after an abstraction changes,
# everything is; back to complain mode, the set is whole again.
KEPT = "/var/cache/apparmor-fullsystem/compiled"
OBJECTS = "/var/cache/apparmor-fullsystem/objects"    # each installed policy file compiled alone
ADDED = "aafs-test-added"
KEPT_COMPILED = rf"""
# set_refused STEP: the hook said the rebuild of STEP made no set.
set_refused() {{
    grep -q 'carries no precompiled policy' "/run/aafs-$1.log" && echo "@@ $1_set_refused=yes"
}}
start=$(date +%s%N)
update-initramfs -u >/run/aafs-reuse.log 2>&1
echo "@@ reuse_exit=$?"
echo "@@ reuse_ms=$((($(date +%s%N) - start) / 1000000))"
cat /run/aafs-reuse.log
grep -q 'reused the policy compiled for the same input' /run/aafs-reuse.log && echo "@@ reused=yes"
entry=$(cat {KEPT}/kernel-$(uname -r))
echo "@@ entries=$(find {KEPT} -mindepth 1 -maxdepth 1 -type d | wc -l)"
# The kept set, where the initramfs has it (the entry is the image's tree).
printf 'damage' >>"$(find "{KEPT}/$entry/tree" -path '*/cache/*/policy')"
update-initramfs -u >/run/aafs-damaged.log 2>&1
echo "@@ damaged_exit=$?"
cat /run/aafs-damaged.log
grep -q "kept in {KEPT}/$entry is damaged: compiling it again" /run/aafs-damaged.log && echo "@@ damage_found=yes"
grep -q 'reused the policy' /run/aafs-damaged.log && echo "@@ damaged_reused=yes"
(cd "{KEPT}/$entry" && sha256sum --check --quiet SHA256SUMS) && echo "@@ entry_whole_again=yes"
# In enforce mode from here: init's file then has an object of its own
# like any other, and the set must still hold its profiles once, from
# init's own compile (the build after next reuses the objects).
aa-fullsystem mode enforce >/run/aafs-enforce.log 2>&1
echo "@@ enforce_exit=$?"
cat /run/aafs-enforce.log
set_refused enforce
# What the build compiles from the files it ships (init's profile, the
# fallbacks) is kept too: the next build reuses it, but a damaged one.
derived=$(dirname "$(ls {OBJECTS}/*/index | head -n 1)")/derived
echo "@@ derived_count=$(find "$derived" -type f ! -name '*.sha256' | wc -l)"
derived_victim=$(find "$derived" -type f ! -name '*.sha256' | head -n 1)
printf 'damage' >>"$derived_victim"
derived_before=$(find "$derived" -type f ! -name '*.sha256' ! -path "$derived_victim" -printf '%P %s %T@\n' | sort)
cat >/etc/apparmor.d/{ADDED} <<'END'
abi <abi/3.0>,
# tests/test_early.py: a profile added after the policy was compiled.
profile {ADDED} /usr/local/bin/{ADDED} flags=(complain) {{
}}
END
# ... with one object of the installed files damaged: compiled again too.
store=$(dirname "$(ls {OBJECTS}/*/index | head -n 1)")
victim=$(sed -n 1p "$store/index" | cut -d' ' -f3-)
printf 'damage' >>"$store/$victim"
start=$(date +%s%N)
update-initramfs -u >/run/aafs-changed.log 2>&1
echo "@@ changed_exit=$?"
echo "@@ changed_ms=$((($(date +%s%N) - start) / 1000000))"
cat /run/aafs-changed.log
grep -q 'reused the policy' /run/aafs-changed.log && echo "@@ changed_reused=yes"
echo "@@ policy_files=$(find /etc/apparmor.d -maxdepth 1 -type f | wc -l)"
sed -n 's|.*compiling \([0-9]*\) of the files of /etc/apparmor.d, \([0-9]*\) unchanged.*|@@ changed_compiled=\1\n@@ changed_unchanged=\2|p' /run/aafs-changed.log
grep -q " $victim\$" "$store/index" && echo "@@ victim_kept=yes"
(cd "$store" && awk '{{ print $2 "  " substr($0, length($1) + length($2) + 3) }}' index | sha256sum --check --quiet --strict) &&
    echo "@@ objects_whole=yes"
unpacked=$(mktemp -d)
unmkinitramfs /boot/initrd.img-$(uname -r) "$unpacked"
files=$(find "$unpacked" -path '*/{INITRAMFS_DIR}/cache/files' | head -n 1)
grep -qx {ADDED} "$files" && echo "@@ change_in_image=yes"
set_refused changed
derived_after=$(find "$derived" -type f ! -name '*.sha256' ! -path "$derived_victim" -printf '%P %s %T@\n' | sort)
[ -n "$derived_before" ] && [ "$derived_after" = "$derived_before" ] && echo "@@ derived_reused=yes"
for sum in "$derived"/*.sha256; do
    [ "$(sha256sum <"${{sum%.sha256}}")" = "$(cat "$sum")" ] || echo "@@ derived_damaged_left=${{sum##*/}}"
done
echo "@@ init_files_in_set=$(grep -c -e '^{PROFILE}$' -e '^initramfs-{PROFILE}$' "$files")"
rm -rf "$unpacked"
# A changed abstraction: every file compiled again, under another base,
# and the old store gone.
echo '# tests/test_early.py: an abstraction changed' >>/etc/apparmor.d/abstractions/base
update-initramfs -u >/run/aafs-abstraction.log 2>&1
echo "@@ abstraction_exit=$?"
cat /run/aafs-abstraction.log
grep -q 'compiling .* unchanged' /run/aafs-abstraction.log && echo "@@ abstraction_reused=yes"
echo "@@ stores=$(find {OBJECTS} -mindepth 1 -maxdepth 1 -type d | wc -l)"
[ -d "$store" ] || echo "@@ old_store_gone=yes"
# Back to complain mode, which the rest of this boot and the next expect.
aa-fullsystem mode complain >/run/aafs-complain.log 2>&1
echo "@@ complain_exit=$?"
cat /run/aafs-complain.log
set_refused complain
"""
KEPT_SUITE = "trixie"   # the hook is the same on every suite; the time is not

# The image boot 3 came from keeps the parser (built for other features and
# another build of the kernel). With those features back, its set fits;
# with its dd gone, the set cannot be written, and the parser loads the
# init policy instead, and says why.
PARSER_WITHOUT_DD = rf"""
{ENTER_INITRAMFS}
features=/sys/kernel/security/apparmor/features
rm -rf /run/aafs-features && cp -r "$features" /run/aafs-features
rm -rf /run/aafs-features/mount
mount --bind /run/aafs-features "$initramfs$features"
[ -x "$initramfs/{INITRAMFS_DIR}/dd" ] && echo "@@ parser_no_dd.had_dd=yes"
rm "$initramfs/{INITRAMFS_DIR}/dd"
chroot "$initramfs" /scripts/init-bottom/apparmor-fullsystem
sed 's/^/@@ parser_no_dd./' "$initramfs{RECORD}"
{LEAVE_INITRAMFS}
"""

WHOLE_FIRST = "aafs-whole-first"   # a profile that compiles, first in a set the kernel refuses

REFUSED_AND_NAMESPACED = COUNT + rf"""
{ENTER_INITRAMFS}
policy=$(find "$initramfs/{INITRAMFS_DIR}/cache" -name policy)
[ -s "$policy" ] && echo "@@ cut.policy_found=yes"
# All or none: a whole profile the kernel does not hold yet, then the set
# cut short. The kernel refuses the write, the whole profile included.
printf 'profile {WHOLE_FIRST} {{\n}}\n' >/run/{WHOLE_FIRST}
apparmor_parser -S /run/{WHOLE_FIRST} >/run/{WHOLE_FIRST}.bin 2>/dev/null && echo "@@ cut.whole_compiled=yes"
{{ cat /run/{WHOLE_FIRST}.bin; head -c 1000 "$policy"; }} >"$policy.cut" && mv "$policy.cut" "$policy"
# The kernel's answer to this write: its lines after the ones already there.
logged=$(dmesg | wc -l)
chroot "$initramfs" /scripts/init-bottom/apparmor-fullsystem
sed 's/^/@@ cut./' "$initramfs{RECORD}"
# (The kernel's audit thread prints a record a moment after the write.)
for try in 1 2 3 4 5 6 7 8 9 10; do
    refusal=$(dmesg | tail -n +$((logged + 1)) | grep 'apparmor="STATUS"' | grep 'error=' | tail -n 1)
    [ -z "$refusal" ] || break
    sleep 0.5
done
echo "@@ cut.kernel_log=$refusal"
cat /sys/kernel/security/apparmor/profiles >/run/aafs-profiles.txt
count cut.whole_loaded /run/aafs-profiles.txt '^{PROFILE} (' -e '^{WHOLE_FIRST} '
mount --bind "$initramfs{RECORD}" {RECORD}
aa-fullsystem status
aa-fullsystem status | grep -q "fix or remove the profile named above or in the kernel log" && echo "@@ cut.status_says_fix=yes"
umount {RECORD}
# The same script with aa_fullsystem=complain on its command line: the
# admin's choice, recorded as such, with no advice to rebuild. Its
# initramfs made to say enforce: without the parameter the kernel then
# holds init's profile enforced, with it in complain mode.
sed -i 's/^AAFS_MODE=.*/AAFS_MODE=enforce/' "$initramfs/{INITRAMFS_DIR}/boot.conf"
chroot "$initramfs" /scripts/init-bottom/apparmor-fullsystem
echo "@@ no_hatch.kernel_holds=$(grep '^{PROFILE} ' /sys/kernel/security/apparmor/profiles)"
echo "$(cat /proc/cmdline) aa_fullsystem=complain" >/run/aafs-cmdline
mount --bind /run/aafs-cmdline "$initramfs/proc/cmdline"
chroot "$initramfs" /scripts/init-bottom/apparmor-fullsystem
umount "$initramfs/proc/cmdline"
echo "@@ hatch.kernel_holds=$(grep '^{PROFILE} ' /sys/kernel/security/apparmor/profiles)"
sed 's/^/@@ complain./' "$initramfs{RECORD}"
sed -i 's/^AAFS_MODE=.*/AAFS_MODE=complain/' "$initramfs/{INITRAMFS_DIR}/boot.conf"
mount --bind "$initramfs{RECORD}" {RECORD}
aa-fullsystem status >/run/aafs-status-complain
umount {RECORD}
cat /run/aafs-status-complain
grep -q "precompiles the policy" /run/aafs-status-complain || echo "@@ complain.status_no_rebuild=yes"
# Another build of the kernel boots this image, which holds binaries
# only: none of them is loaded (the kernel would hold init's profile in
# enforce mode after the run above without the hatch otherwise).
sed 's/#/#0 other build /' /proc/version >/run/aafs-version
mount --bind /run/aafs-version "$initramfs/proc/version"
sed -i 's/^AAFS_MODE=.*/AAFS_MODE=enforce/' "$initramfs/{INITRAMFS_DIR}/boot.conf"
chroot "$initramfs" /scripts/init-bottom/apparmor-fullsystem
umount "$initramfs/proc/version"
sed -i 's/^AAFS_MODE=.*/AAFS_MODE=complain/' "$initramfs/{INITRAMFS_DIR}/boot.conf"
echo "@@ other_build.kernel_holds=$(grep '^{PROFILE} ' /sys/kernel/security/apparmor/profiles)"
sed 's/^/@@ other_build./' "$initramfs{RECORD}"
# Without its dd nothing can be written: the parser-less image boots
# unconfined, and says why.
rm "$initramfs/{INITRAMFS_DIR}/dd"
chroot "$initramfs" /scripts/init-bottom/apparmor-fullsystem
sed 's/^/@@ no_dd./' "$initramfs{RECORD}"
{LEAVE_INITRAMFS}
cat >/etc/apparmor.d/aafs-test-namespaced <<'END'
abi <abi/3.0>,
# tests/test_early.py: a profile in a policy namespace of its own.
profile :aafs-test-ns:aafs-test-namespaced flags=(complain) {{
}}
END
update-initramfs -u >/run/aafs-update.log 2>&1
echo "@@ namespaced_update_exit=$?"
cat /run/aafs-update.log
"""


@pytest.mark.parametrize("suite", vm.SUITES)
def test_precompiled_policy_loaded_before_init(suite, built_deb, tmp_path):
    machine = new_machine(suite, tmp_path / "machine", built_deb)
    # Every STATUS record printed (SERVICES reads apparmor.service's).
    count_every_denial(machine.root)
    for name, (attachment, _) in EARLY_SERVICES.items():
        (machine.root / "etc/apparmor.d" / name).write_text(service_profile(name, attachment))
    # A profile the admin disabled (aa-disable(8): a link in disable/), which
    # apparmor.service skips: the precompiled policy must skip it too.
    (machine.root / "etc/apparmor.d" / DISABLED).write_text(service_profile(DISABLED, f"/usr/local/bin/{DISABLED}"))
    (machine.root / "etc/apparmor.d/disable" / DISABLED).symlink_to(f"/etc/apparmor.d/{DISABLED}")
    # A process the initramfs leaves running, as plymouthd does (and a udevd
    # slow to exit): unconfined, and status must say where it comes from.
    leftover = machine.root / "etc/initramfs-tools/scripts/init-premount" / LEFTOVER
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text(LEFTOVER_SCRIPT)
    leftover.chmod(0o755)
    machine.chroot_run(["aa-fullsystem", "stage", "full"])
    early = machine.chroot_run(["aa-fullsystem", "early", "all"])
    print(f"--- {suite}: aa-fullsystem early all, in a chroot\n{early.stdout}")
    assert "carries no precompiled policy" in early.stdout, early.stdout

    def boot(script: str) -> vm.Boot:
        result = machine.boot(script=REPORT + SERVICES + script, timeout=900)
        drop_stale_root(machine)
        print(f"--- {suite} boot {len(machine.boots)}\n{result.output}")
        assert result.reached_multi_user, where(result)
        assert result.values["pid1"] == f"{PROFILE} (complain)", where(result)
        assert not unconfined_since_init(result), where(result)
        return result

    # Boot 1: built in a chroot, so nothing precompiled: the init policy only.
    b = boot("update-initramfs -u\necho \"@@ update_exit=$?\"\n")
    # The initramfs's sleep: unconfined, and status says whence (which
    # unconfined_since_init, in boot(), checks for every such process).
    [sleep] = [p for p in processes(b) if p.comm == "sleep" and from_initramfs(b, p)]
    assert sleep.label == "unconfined", where(b)
    assert f"  {sleep.pid} sleep{FROM_INITRAMFS}" in b.output.splitlines(), where(b)
    # The verdict names every leftover: the sleep among them (a udevd of the
    # initramfs may still be exiting too, which the verdict rightly lists).
    leftovers_said = "Left over from the initramfs, unconfined until they exit: "
    assert leftovers_said in b.output, where(b)
    verdict_leftovers = b.output.split(leftovers_said, 1)[1].split(" (they started before init", 1)[0].split(", ")
    assert f"{sleep.pid} sleep" in verdict_leftovers, where(b)
    assert b.values["record.early"] == "fallback", where(b)
    assert "carries no precompiled policy" in b.values["record.early_reason"], where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert "Only the init policy was loaded early" in b.output, where(b)
    assert "'update-initramfs -u' precompiles the policy" in b.output, where(b)
    # udevd's profile is not in the initramfs's policy.
    not_loaded_early(b)
    assert b.values["update_exit"] == "0", where(b)

    # Boot 2: the whole policy, precompiled for this kernel, before PID 1.
    b = boot(PARSER_IN_IMAGE + SIMULATE_OTHER_KERNEL)
    assert b.values["record.early"] == "cache", where(b)
    assert b.values["record.outcome"] == "loaded", where(b)
    # Built on this very kernel build: binaries only, no parser in the image.
    assert b.values["record.loader"] == "binary", where(b)
    assert b.values["lsinitramfs_exit"] == "0", where(b)
    assert (b.values["parser_in_image"], b.values["binaries_in_image"]) == ("0", "1"), where(b)
    assert "(binaries only: the initramfs carries no parser)" in b.output, where(b)
    files = b.values["record.profiles"].split()
    # init's profile is precompiled from the initramfs's copy, under its own name
    assert f"initramfs-{PROFILE}" in files and set(EARLY_SERVICES) <= set(files), where(b)
    assert DISABLED not in files, where(b)
    assert b.values["disabled_loaded"] == "0", where(b)
    assert PROFILE not in files, where(b)
    for name, (_, program) in EARLY_SERVICES.items():
        # Its own profile, stacked on init's (the standard level's exec rule),
        # loaded by the initramfs: apparmor.service only replaced it.
        assert b.values[f"{program}.label"] == f"{name}//&{PROFILE} (complain)", where(b)
        assert b.values[f"{name}.by_apparmor_service"] == "profile_replace", where(b)
    print(f"FIGURES suite={suite} early=cache files={len(files)} initramfs_load_ms={b.values['record.elapsed_ms']}")
    assert b.values["other_kernel_update_exit"] == "0", where(b)

    # Boot 3: the cache does not fit this kernel: not loaded, and said so.
    b = boot(PARSER_IN_IMAGE + PARSER_WITHOUT_DD + REBUILD + (KEPT_COMPILED if suite == KEPT_SUITE else "")
             + REFUSED_AND_NAMESPACED)
    assert b.values["record.early"] == "fallback", where(b)
    assert "differ from those the policy was precompiled for" in b.values["record.early_reason"], where(b)
    assert b.values["record.outcome"] == "fallback", where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    assert "Only the init policy was loaded early" in b.output, where(b)
    not_loaded_early(b)
    # ... which the parser in this image compiled: built for other features,
    # it keeps the parser and no binaries.
    assert b.values["record.loader"] == "parser", where(b)
    assert (b.values["parser_in_image"], b.values["binaries_in_image"]) == ("1", "0"), where(b)
    # ... whose set, with its features back but its dd gone, fits and is
    # not written: the parser loads the init policy instead, and says why.
    assert b.values.get("parser_no_dd.had_dd") == "yes", where(b)
    assert b.values["parser_no_dd.loader"] == "parser", where(b)
    assert b.values["parser_no_dd.early"] == "fallback", where(b)
    assert b.values["parser_no_dd.early_reason"].startswith(f"/{INITRAMFS_DIR}/dd is missing"), where(b)
    assert b.values["parser_no_dd.outcome"] == "fallback", where(b)
    assert b.values["parser_no_dd.loaded_stage"] == "full", where(b)
    assert b.values["rebuild_exit"] == "0", where(b)
    if suite == KEPT_SUITE:
        # Rebuilt with nothing changed: the kept compiled policy, not a compile.
        print(f"FIGURES suite={suite} rebuild_compile_ms={b.values['rebuild_ms']} "
              f"rebuild_reuse_ms={b.values['reuse_ms']} rebuild_one_added_ms={b.values['changed_ms']}")
        assert b.values["reuse_exit"] == "0" and b.values.get("reused") == "yes", where(b)
        assert b.values["entries"] == "1", where(b)       # one kernel, one entry kept
        # A damaged entry is found and compiled again, never loaded.
        assert b.values["damaged_exit"] == "0" and b.values.get("damage_found") == "yes", where(b)
        assert "damaged_reused" not in b.values and b.values.get("entry_whole_again") == "yes", where(b)
        # Enforce mode: the set whole; init's profile, the stub and both
        # fallbacks of init's kept compiled.
        assert b.values["enforce_exit"] == "0" and "enforce_set_refused" not in b.values, where(b)
        assert b.values["derived_count"] == "4", where(b)
        # A changed policy makes another key: compiled, and in the image,
        # with init's profile once (its own compile in enforce mode).
        assert b.values["changed_exit"] == "0" and "changed_reused" not in b.values, where(b)
        assert b.values.get("change_in_image") == "yes", where(b)
        assert "changed_set_refused" not in b.values and b.values["init_files_in_set"] == "1", where(b)
        # ... and those kept binaries reused, the damaged one compiled again.
        assert b.values.get("derived_reused") == "yes", where(b)
        assert not [k for k in b.values if k.startswith("derived_damaged_left")], where(b)
        # ... compiling the added file and the damaged object's, and those the
        # parser writes no binary for (disabled), not the rest.
        compiled, unchanged = int(b.values["changed_compiled"]), int(b.values["changed_unchanged"])
        assert 2 <= compiled < unchanged and compiled + unchanged <= int(b.values["policy_files"]), where(b)
        assert b.values.get("victim_kept") == "yes" and b.values.get("objects_whole") == "yes", where(b)
        # A changed abstraction reuses no object: another base, the old one removed.
        assert b.values["abstraction_exit"] == "0" and "abstraction_reused" not in b.values, where(b)
        assert b.values["stores"] == "1" and b.values.get("old_store_gone") == "yes", where(b)
        assert b.values["complain_exit"] == "0" and "complain_set_refused" not in b.values, where(b)
    # The kernel refuses a set cut short: none of it is loaded, the text init
    # profile is, and the record and status say so.
    assert b.values["cut.policy_found"] == "yes", where(b)
    assert b.values["cut.early"] == "refused", where(b)
    assert "the kernel refused the precompiled policy" in b.values["cut.early_reason"], where(b)
    assert b.values["cut.outcome"] == "fallback", where(b)
    assert b.values["cut.loaded_stage"] == "full", where(b)
    assert "error=" in b.values["cut.kernel_log"], where(b)
    # ... all or none: the whole profile that came first was not loaded.
    assert b.values["cut.whole_compiled"] == "yes", where(b)
    assert b.values["cut.whole_loaded"] == "0", where(b)
    assert b.values.get("cut.status_says_fix") == "yes", where(b)
    # aa_fullsystem=complain: the init policy only, by the admin's choice,
    # which is no fallback and needs no rebuild.
    assert b.values["complain.early"] == "skipped", where(b)
    assert "aa_fullsystem=complain on the kernel command line" in b.values["complain.early_reason"], where(b)
    assert b.values["complain.outcome"] == "loaded", where(b)
    assert b.values["complain.loaded_stage"] == "full", where(b)
    assert b.values["complain.mode"] == "complain", where(b)
    assert b.values["no_hatch.kernel_holds"] == f"{PROFILE} (enforce)", where(b)
    assert b.values["hatch.kernel_holds"] == f"{PROFILE} (complain)", where(b)
    assert "Early policy: skipped: aa_fullsystem=complain" in b.output, where(b)
    assert b.values.get("complain.status_no_rebuild") == "yes", where(b)
    # The image rebuilt on this kernel loads binaries only: its fallbacks
    # above (the refused set, the hatch) loaded init's binary profile.
    assert b.values["cut.loader"] == b.values["complain.loader"] == "binary", where(b)
    # Booted by another build of the kernel, it loads none of its binaries,
    # and says so; without its dd, the same.
    assert b.values["other_build.outcome"] == "failed", where(b)
    assert "compiled for another build of the kernel" in b.values["other_build.reason"], where(b)
    assert b.values["other_build.loaded_stage"] == "none", where(b)
    assert b.values["other_build.kernel_holds"] == f"{PROFILE} (complain)", where(b)
    assert b.values["no_dd.outcome"] == "failed", where(b)
    assert b.values["no_dd.reason"].startswith(f"/{INITRAMFS_DIR}/dd is missing from this initramfs"), where(b)
    assert b.values["no_dd.loaded_stage"] == "none", where(b)
    # A namespace in the policy: no set is made, and the hook says why.
    assert b.values["namespaced_update_exit"] == "0", where(b)
    assert "aafs-test-namespaced holds a profile in a policy namespace" in b.output, where(b)
    assert "Fix or remove that profile, then run 'update-initramfs -u'" in b.output, where(b)

    # Boot 4: so the init policy only, and the record says why.
    b = boot("")
    assert b.values["record.early"] == "refused", where(b)
    assert "fix or remove the profile named above" in b.output, where(b)
    assert "cannot be loaded as one set" in b.values["record.early_reason"], where(b)
    assert "aafs-test-namespaced holds a profile in a policy namespace" in b.values["record.early_reason"], where(b)
    assert b.values["record.loaded_stage"] == "full", where(b)
    not_loaded_early(b)
