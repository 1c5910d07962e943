"""The evaluation text shipped with quantcli (quantcli/data/eval.txt; provenance in docs/verification.md)."""

from __future__ import annotations

from pathlib import Path

from quantcli.errors import InputInvalid, InputMissing

DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "data" / "eval.txt"


def read_text(path: Path | str | None) -> tuple[str, str]:
    """(text, name as recorded in outputs) for --text PATH, or the shipped text when None."""
    p = DEFAULT_TEXT if path is None else Path(path)
    if not p.is_file():
        raise InputMissing(f"text file {p} does not exist")
    try:
        # bytes as they are, as llama-perplexity reads them: text mode would turn \r\n into \n
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputInvalid(f"{p} is not UTF-8 text") from None
    return text, str(path) if path is not None else "quantcli/data/eval.txt"
