"""Error types whose messages are written for the user: what is wrong, where, and what to do."""

from __future__ import annotations


class LatheError(Exception):
    """Base of every error the engine raises on purpose. `hint` says what the user can do."""

    kind = "error"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} {self.hint}".strip() if self.hint and self.hint not in base else base


class ModelError(LatheError):
    kind = "model"


class Cancelled(LatheError):
    """The work was cancelled by whoever asked for it: nothing is wrong. Every cancellation in
    Lathe (evaluation, export, download, chat generation, a GUI task) is one of these, so a caller
    tells a cancel from a failure by type, never by name."""

    kind = "cancelled"

    def __init__(self, message: str = "Cancelled.", hint: str = ""):
        super().__init__(message, hint)


class TrainingError(LatheError):
    kind = "training"


class DiskFullError(LatheError):
    """The disk (or the user's quota) ran out while Lathe was writing."""

    kind = "disk_full"


def is_disk_full(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(doing: str) -> DiskFullError:
    """The error for a full disk while Lathe was `doing` something ("import the dataset")."""
    return DiskFullError(
        f"The disk is full, so Lathe could not {doing}.",
        "Free some disk space (old runs, exports or datasets you no longer need), then try again.",
    )
