"""Logs, progress and tables go to stderr (rich); stdout is reserved for --json and requested data."""

from __future__ import annotations

import resource
import sys

from rich.console import Console

err = Console(stderr=True, highlight=False)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
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
