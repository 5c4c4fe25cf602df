"""User-facing failures.

Every error a user can cause or fix (a missing dataset, a bad config, an unknown model, a damaged
checkpoint) is an :class:`AskExpertError`. Its text is one line that says what went wrong and names
the fix; the CLI prints exactly that line and exits with status 2, without a traceback.
"""

from __future__ import annotations


class AskExpertError(Exception):
    """A failure the user can act on. ``str(err)`` is a single line ending with the fix."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = " ".join(message.split())
        self.fix = " ".join(fix.split()) if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message} -- fix: {self.fix}" if self.fix else self.message


class ConfigError(AskExpertError):
    """A run configuration (YAML file or command-line override) is invalid."""


class DatasetError(AskExpertError):
    """A dataset is missing, unknown or malformed."""


class ModelError(AskExpertError):
    """A model name is unknown or its weights cannot be obtained."""


class CheckpointError(AskExpertError):
    """A checkpoint is missing, damaged or not an askexpert checkpoint."""
