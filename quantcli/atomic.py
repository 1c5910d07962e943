"""Atomic output: write to a temporary file next to the target, rename at the end, never leave a part.

A run killed with SIGKILL (or a power loss) cannot remove its temporary; the next run for the same output
does (`remove_stale_temps`, called by every output check). The temporary's name says who owns it:
`.quantcli-tmp-<host>-<pid>-<random>-<output name>`, host being a hash of the host name because an output
directory can be on a filesystem shared between machines, where a pid only means something on the machine
that wrote the file. A temporary is removed only when its host is ours and its owner process is gone.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import platform
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from quantcli.errors import OutputExists, OutputFailed, UsageError

TEMP_MARK = ".quantcli-tmp-"
_TEMP_NAME = re.compile(rf"{re.escape(TEMP_MARK)}(?P<host>[0-9a-f]{{8}})-(?P<pid>[0-9]+)-[0-9a-f]{{8}}-(?P<name>.+)")
# psutil's process start time and the filesystem's mtime come from different clocks: a process that started
# this close after the temporary's last write is still counted as its possible owner.
_CLOCK_SLACK_S = 2.0


@functools.cache
def _host_tag() -> str:
    # platform.node() is the host name socket.gethostname() gives, without importing socket (start-up time)
    return hashlib.sha256(platform.node().encode()).hexdigest()[:8]


def temp_path_for(path: Path, pid: int | None = None) -> Path:
    """A fresh temporary name beside `path`, owned by process `pid` (this one by default)."""
    path = Path(path)
    owner = os.getpid() if pid is None else pid
    return path.with_name(f"{TEMP_MARK}{_host_tag()}-{owner}-{secrets.token_hex(4)}-{path.name}")


def _owner_alive(pid: int, temp: Path) -> bool:
    import psutil  # only when a stale-looking temporary is found: most runs never need it

    try:
        process = psutil.Process(pid)
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped: it writes nothing any more
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's live process
        return True
    # a pid reused by a process that started after the temporary was last written is not its owner
    return started <= temp.lstat().st_mtime + _CLOCK_SLACK_S


def _disk_usage(entry: Path) -> int:
    if entry.is_dir() and not entry.is_symlink():
        return sum(p.lstat().st_size for p in entry.rglob("*"))
    return entry.lstat().st_size


def _size_text(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporaries of `path` (file or directory) whose owner, on this host, is no longer alive,
    saying so on stderr; returns what was removed. A live owner's temporary (a concurrent run) and another
    host's are left alone."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    for entry in sorted(parent.glob(f"{glob.escape(TEMP_MARK)}*-{glob.escape(path.name)}")):
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or match["name"] != path.name or match["host"] != _host_tag():
            continue
        pid = int(match["pid"])
        try:
            if _owner_alive(pid, entry):
                continue
            size = _disk_usage(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another run for the same output removed it first
            continue
        except OSError as exc:
            raise OutputFailed(f"cannot remove stale partial output {entry}: {exc.strerror or exc}") from None
        print(f"quantcli: removed stale partial output {entry} ({_size_text(size)}) left by a killed run "
              f"(pid {pid})", file=sys.stderr)
        removed.append(entry)
    return removed


def refuse_overwriting_inputs(path: Path, inputs: Iterable[Path]) -> None:
    """An output may never be one of the inputs, nor a directory holding one (--force included)."""
    out = Path(path).resolve()
    for item in inputs:
        item = Path(item)
        for candidate in {item.absolute(), item.resolve()}:
            if out == candidate or out in candidate.parents:
                raise UsageError(f"output {path} would overwrite the input {item}")


def check_output(path: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Fail before any work if `path` exists (without --force) or its directory cannot be written; remove
    the temporaries killed runs left for it."""
    path = Path(path)
    _refuse_existing(path, force, inputs)
    if path.is_dir():
        raise OutputExists(f"{path} is a directory")
    _require_writable_parent(path)


def _refuse_existing(path: Path, force: bool, inputs: Iterable[Path]) -> None:
    refuse_overwriting_inputs(path, inputs)
    remove_stale_temps(path)
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
    tmp = temp_path_for(path)
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
    path = Path(path)
    check_output_dir(path, force, inputs)
    tmp = temp_path_for(path)
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            old = temp_path_for(path)
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
