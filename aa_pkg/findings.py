"""What `aa-fullsystem status` can find, by stable code.

status (cli/aa-fullsystem.sh.j2, status_findings) reports each problem it
finds as a code and a message: the message is for people and may change,
the code is for scripts and stays. This table is the list of codes, with
what each means; aa-fullsystem(8) renders it, and tests/test_findings.py
checks that the script reports exactly these.
"""

from __future__ import annotations

FINDINGS: dict[str, str] = {
    "pid1-unconfined": "PID 1 does not run under the init profile.",
    "no-boot-record": "This boot left no record: the initramfs lacks the hook, or another initramfs booted.",
    "boot-skipped": "The initramfs loaded no policy, as asked (an escape hatch) or as it had to (AppArmor off).",
    "boot-failed": "The initramfs could load no init profile: its boot.conf, securityfs or the parser was "
                   "missing, or the kernel refused even the stub.",
    "boot-fallback": "The initramfs loaded less than configured: the stub instead of the full profile, "
                     "or without a site profile the kernel refused.",
    "init-not-attached": "The initramfs loaded init's profile, yet PID 1 does not run under it.",
    "early-fallback": "Only the init policy was loaded early: the precompiled policy did not fit this kernel.",
    "early-refused": "Only the init policy was loaded early: the kernel or the build refused the precompiled set.",
    "initramfs-stale": "An installed kernel's initramfs was built from other policy or state than is configured.",
    "unknown-parameter": "The kernel command line had a value of the package's parameter it does not know.",
    "policy-left-out": "This boot's initramfs lacks a profile that did not compile when it was built.",
    "last-good-kept": "This boot's initramfs carries the last policy that compiled, not the configured one.",
    "state-invalid": "The state file cannot be read, or has a line no setting accepts.",
    "policy-does-not-compile": "The configured policy does not compile: the next initramfs keeps the last good one.",
    "kernel-log-incomplete": "The journal holds fewer of this boot's AppArmor records than the kernel's buffer.",
    "logins-all-admin": "Hardened level without pam_apparmor: every login gets the administrator's role.",
    "no-new-privs": "Programs started with no_new_privs could not enter their own profiles.",
    "refused": "The kernel refused operations this boot (apparmor=\"DENIED\").",
    "would-refuse": "In complain mode, the service role logged what enforce mode would refuse (apparmor=\"AUDIT\" or \"ALLOWED\").",
    "unconfined-after-init": "A process started after init runs unconfined.",
    "initramfs-leftovers": "Processes started in the initramfs still run, unconfined until they exit.",
    "reboot-pending": "The configured stage differs from what this boot loaded.",
}
