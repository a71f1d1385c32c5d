"""One error hierarchy; only aa_pkg.__main__.main() turns these into an exit status."""

from __future__ import annotations


class AaPkgError(Exception):
    """An error the user can fix: printed as one line plus a hint, never a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(AaPkgError):
    """The site configuration file is unreadable or has a bad key or value."""


class ToolMissingError(AaPkgError):
    """An external command is not installed."""


class CommandError(AaPkgError):
    """An external command ran and failed; `output` is the end of what it printed."""

    def __init__(self, message: str, hint: str | None = None, output: str = "") -> None:
        super().__init__(message, hint)
        self.output = output


class PolicyError(AaPkgError):
    """An AppArmor profile does not compile."""
