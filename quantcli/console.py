"""Where output goes: a command's result (tables, --json) on stdout; logs and progress on stderr.

`err` and `out` are rich Consoles created on first use, so that importing a command module (which every
`quantcli --help` does) does not import rich.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

# The --json schema version (docs/json.md). Bump it when a key is renamed, removed or changes type.
JSON_SCHEMA = "quantcli/1"


class _LazyConsole:
    """A rich Console on stdout or stderr, built on first attribute access."""

    def __init__(self, stderr: bool) -> None:
        object.__setattr__(self, "_stderr", stderr)
        object.__setattr__(self, "_console", None)

    def _get(self) -> Any:
        console = object.__getattribute__(self, "_console")
        if console is None:
            from rich.console import Console

            console = Console(stderr=object.__getattribute__(self, "_stderr"), highlight=False)
            object.__setattr__(self, "_console", console)
        return console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get(), name, value)


err: Any = _LazyConsole(stderr=True)
out: Any = _LazyConsole(stderr=False)


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


def json_doc(command: str, ok: bool, **facts: Any) -> dict[str, Any]:
    """The --json envelope (docs/json.md): schema, command and ok first, then the command's facts."""
    return {"schema": JSON_SCHEMA, "command": command, "ok": ok, **facts}


def print_json(doc: dict[str, Any]) -> None:
    """One JSON object, one line, on stdout."""
    print(json.dumps(doc, default=str), flush=True)


def print_wide(renderable: object, width: int, console: Any = out) -> None:
    """Print a table (on stdout by default). Not a terminal (piped, CI): print at `width` columns instead
    of squeezing into 80, so that `| grep` sees whole rows."""
    if console.is_terminal:
        console.print(renderable)
        return
    saved = console.width
    console.width = width
    try:
        console.print(renderable)
    finally:
        console.width = saved
