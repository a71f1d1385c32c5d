"""The target's state, defined once: its settings, their values and defaults,
and the rule between them; and the keys of the boot record.

/etc/<package>/state holds four settings (aa-fullsystem(8)). What each may
be, what it is when its line is missing, and which values need the full
stage are decided here and only here; the templates render this table into
the shell that reads the state (shared/functions.sh.j2, aafs_read_state and
aafs_state_conflict), the command that changes it (cli/aa-fullsystem.sh.j2,
cmd_set and its usage) and the boot script's defaults (boot/load-policy.sh.j2),
as NOT_POLICY_FILES is rendered. tests/test_settings.py checks the table
and runs the rendered shell against it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NeedsFull:
    """VALUE of a setting exists only in the full stage: the stub stage loads the stub alone."""

    value: str
    why: str            # the state file's reason, after "KEY=VALUE needs STAGE=full"
    refused: str        # aa-fullsystem KEY VALUE in the stub stage: the error ...
    first: str          # ... and its hint
    stub_refused: str   # aa-fullsystem stage stub while the setting has VALUE: the error ...
    back: str           # ... and the setting's other value, which the hint asks for first


@dataclass(frozen=True)
class Setting:
    key: str                    # the state file's KEY=
    command: str                # aa-fullsystem COMMAND VALUE
    noun: str                   # in "unknown NOUN 'x'"
    values: tuple[str, ...]
    default: str | None         # when its line is missing; None: the line is required
    needs_full: NeedsFull | None = None

    @property
    def var(self) -> str:
        """The shell variable aafs_read_state sets."""
        return f"AAFS_{self.key}"


STAGE = Setting("STAGE", "stage", "stage", ("stub", "full"), None)
MODE = Setting("MODE", "mode", "mode", ("complain", "enforce"), None, NeedsFull(
    "enforce", "the stub is always in complain mode",
    "enforce mode needs the full stage",
    "run 'aa-fullsystem stage full', reboot, check the log, then 'aa-fullsystem mode enforce'",
    "the stub is always in complain mode", "complain"))
EARLY = Setting("EARLY", "early", "early policy", ("init", "all"), "init", NeedsFull(
    "all", "the stub stage loads the stub only",
    "loading all policy early needs the full stage",
    "run 'aa-fullsystem stage full' first",
    "the stub stage loads the stub only", "init"))
LEVEL = Setting("LEVEL", "level", "level", ("standard", "hardened"), "standard", NeedsFull(
    "hardened", "the stub stage loads the stub only",
    "the hardened level needs the full stage",
    "run 'aa-fullsystem stage full', reboot, then 'aa-fullsystem level hardened'",
    "the stub stage has no hardened level", "standard"))

# In the state file's order.
SETTINGS: tuple[Setting, ...] = (STAGE, MODE, EARLY, LEVEL)
# The stage every NeedsFull value needs.
FULL = "full"

assert all(s.needs_full is None or s.needs_full.value in s.values and s.needs_full.back in s.values
           for s in SETTINGS)
assert all(s.default is None or s.default in s.values for s in SETTINGS)


# The boot record (/run/<package>/boot): the keys the boot script's finish()
# writes, in its order (boot/load-policy.sh.j2), which `aa-fullsystem status`
# reads, each into a variable, and puts whole into its JSON ("boot").
# tests/test_settings.py checks the boot script writes exactly these.
BOOT_RECORD_KEYS: tuple[str, ...] = (
    "outcome", "reason", "configured_stage", "loaded_stage", "mode", "level", "profiles", "failed_profiles",
    "kernel", "initramfs_kernel", "kept_last_good", "left_out", "loader", "early", "early_reason", "elapsed_ms",
    "ignored_parameters", "init_attach", "init_path", "init_label", "init_attach_reason", "finished_at_cs",
)
