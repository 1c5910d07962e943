"""User-facing errors and their exit codes (the table is in README.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in quantcli: short message + path of the full traceback
    USAGE = 2  # bad command line (also Typer/Click's own code for bad options)
    INPUT_MISSING = 3  # a path or file that is not there (config.json, shard, imatrix, ...)
    INPUT_INVALID = 4  # a file that is there but malformed (truncated, bad header, NaN weights, ...)
    UNSUPPORTED = 5  # well-formed input we do not support (architecture, tokenizer, dtype, format combo)
    OUTPUT_EXISTS = 6  # output already exists and --force was not given
    OUTPUT_FAILED = 7  # output could not be written (unwritable dir, disk full)
    FALLBACK_REFUSED = 8  # --strict and the plan has fallbacks
    VERIFY_FAILED = 9  # --verify quality gate failed
    BATCH_FAILED = 10  # one or more batch jobs failed
    IMATRIX_MISMATCH = 11  # imatrix does not fit the model
    INTERRUPTED = 130  # SIGINT / SIGTERM


def printable(name: str) -> str:
    """A name read from a file, as an error message shows it: as is when printable, else its repr, so that a
    newline or control character in a hostile tensor name cannot split the one-line error."""
    return name if name.isprintable() else repr(name)


class QuantcliError(Exception):
    """An error caused by the user's input or environment: printed as one line, never a traceback."""

    exit_code: ExitCode = ExitCode.INPUT_INVALID

    def __init_subclass__(cls, exit_code: ExitCode | None = None, **kwargs: object) -> None:
        # Each subclass names its code in its header (`class X(QuantcliError, exit_code=...)`).
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(QuantcliError, exit_code=ExitCode.USAGE):
    """A bad command line."""


class InputMissing(QuantcliError, exit_code=ExitCode.INPUT_MISSING):
    """A path or file that is not there."""


class InputInvalid(QuantcliError, exit_code=ExitCode.INPUT_INVALID):
    """A file that is there but malformed."""


class Unsupported(QuantcliError, exit_code=ExitCode.UNSUPPORTED):
    """Well-formed input that quantcli does not support."""


class OutputExists(QuantcliError, exit_code=ExitCode.OUTPUT_EXISTS):
    """The output exists and --force was not given."""


class OutputFailed(QuantcliError, exit_code=ExitCode.OUTPUT_FAILED):
    """The output could not be written."""


class FallbackRefused(QuantcliError, exit_code=ExitCode.FALLBACK_REFUSED):
    """--strict, and the plan has fallback types."""


class VerifyFailed(QuantcliError, exit_code=ExitCode.VERIFY_FAILED):
    """The --verify quality gate failed."""


class BatchFailed(QuantcliError, exit_code=ExitCode.BATCH_FAILED):
    """One or more batch jobs failed."""


class ImatrixMismatch(QuantcliError, exit_code=ExitCode.IMATRIX_MISMATCH):
    """The imatrix does not fit the model."""
