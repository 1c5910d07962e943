"""Logs, progress and tables go to stderr (rich); stdout is reserved for --json and requested data."""

from __future__ import annotations

import resource
import sys

from rich.console import Console

err = Console(stderr=True, highlight=False)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own address space.
    getrusage's ru_maxrss is not used there: it survives fork + exec, so a process started by a large
    parent (a test runner, a batch driver) would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if sys.platform == "darwin" else 1024)


def show_progress(json_mode: bool) -> bool:
    return err.is_terminal and not json_mode


def print_wide(renderable: object, width: int) -> None:
    """Not a terminal (piped, CI): print at `width` columns instead of squeezing into 80."""
    if err.is_terminal:
        err.print(renderable)
        return
    saved = err.width
    err.width = width
    try:
        err.print(renderable)
    finally:
        err.width = saved
