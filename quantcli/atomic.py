"""Atomic output: write to a temporary file next to the target, rename at the end, never leave a part."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from quantcli.errors import OutputExists, OutputFailed, UsageError

TEMP_MARK = ".quantcli-tmp-"


def refuse_overwriting_inputs(path: Path, inputs: Iterable[Path]) -> None:
    """An output may never be one of the inputs, nor a directory holding one (--force included)."""
    out = Path(path).resolve()
    for item in inputs:
        item = Path(item)
        for candidate in {item.absolute(), item.resolve()}:
            if out == candidate or out in candidate.parents:
                raise UsageError(f"output {path} would overwrite the input {item}")


def check_output(path: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Fail before any work if `path` exists (without --force) or its directory cannot be written."""
    path = Path(path)
    _refuse_existing(path, force, inputs)
    if path.is_dir():
        raise OutputExists(f"{path} is a directory")
    _require_writable_parent(path)


def _refuse_existing(path: Path, force: bool, inputs: Iterable[Path]) -> None:
    refuse_overwriting_inputs(path, inputs)
    if path.exists() and not force:
        raise OutputExists(f"{path} already exists (use --force to overwrite)")


def _require_writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputFailed(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFailed(f"output directory {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it to `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    check_output(path, force)
    tmp = path.with_name(f"{TEMP_MARK}{secrets.token_hex(4)}-{path.name}")
    try:
        yield tmp
        if not tmp.exists():
            raise OutputFailed(f"nothing was written for {path}")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if path.exists() and not force:  # appeared while we worked
            raise OutputExists(f"{path} already exists (use --force to overwrite)")
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    # OSError, not just FileNotFoundError: on a filesystem remounted read-only, unlinking the temp file
    # that was never created fails with EROFS, and the original error must still be the one reported.
    with contextlib.suppress(OSError):
        tmp.unlink()


def check_output_dir(path: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """`check_output` for an output directory (which --force replaces as a whole)."""
    path = Path(path)
    _refuse_existing(path, force, inputs)
    _require_writable_parent(path)


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Like `atomic_path` for an output directory: build it under a temporary name, then rename."""
    import shutil

    path = Path(path)
    check_output_dir(path, force, inputs)
    tmp = path.with_name(f"{TEMP_MARK}{secrets.token_hex(4)}-{path.name}")
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            old = path.with_name(f"{TEMP_MARK}old-{secrets.token_hex(4)}-{path.name}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
