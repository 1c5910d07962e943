"""Progress bars on stderr (rich), for long jobs run from a terminal."""

from __future__ import annotations

from typing import Any


class ByteProgress:
    """Advanced by bytes written, naming the current tensor and counting tensors."""

    def __init__(self, total_tensors: int, total_bytes: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        from quantcli.console import err

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[count]}"),
            TimeRemainingColumn(), console=err, transient=True,
        )  # fmt: skip
        self.total = total_tensors
        self.done = 0
        self.progress.start()
        self.task = self.progress.add_task("converting", total=total_bytes, count=f"0/{total_tensors}")

    def advance(self, tensor: Any) -> None:
        self.done += 1
        self.progress.update(self.task, advance=tensor.nbytes, description=tensor.name, count=f"{self.done}/{self.total}")

    def close(self) -> None:
        self.progress.stop()


class CountProgress:
    """Counting tensors (packed outputs, whose sizes are known only per shard)."""

    def __init__(self, total: int, what: str = "packing") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from quantcli.console import err

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task(what, total=total)

    def advance(self, name: str) -> None:
        self.progress.update(self.task, advance=1, description=name)

    def close(self) -> None:
        self.progress.stop()
