"""An ordered list of GGUF key/values with GGUFWriter's overwrite-in-place semantics."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantcli.errors import InputInvalid
from quantcli.gguf_constants import GGUFValueType

# The largest tokenizer.json files are tens of MB; json.load reads the whole file (and builds objects several
# times its size), so a larger one is refused before it is read.
MAX_JSON_BYTES = 256 << 20


def read_json_object(path: Path) -> dict[str, Any]:
    """A tokenizer-side JSON file that must hold an object; anything else is InputInvalid naming the file."""
    if Path(path).stat().st_size > MAX_JSON_BYTES:
        raise InputInvalid(f"{path}: {Path(path).stat().st_size:,} bytes, more than {MAX_JSON_BYTES >> 20} MiB of JSON")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    # ValueError: UnicodeDecodeError, JSONDecodeError, and an integer of more than 4300 digits.
    except (ValueError, RecursionError) as exc:
        raise InputInvalid(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputInvalid(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class MetadataEntry:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None  # element type when vtype is ARRAY


@dataclass
class VocabMetadata:
    """`tokenizer.*` keys in the converter's order. Adding a key twice keeps its first position, last value."""

    _entries: dict[str, MetadataEntry] = field(default_factory=dict)

    @property
    def entries(self) -> list[MetadataEntry]:
        return list(self._entries.values())

    def __iter__(self) -> Iterator[MetadataEntry]:
        return iter(self._entries.values())

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __getitem__(self, key: str) -> Any:
        return self._entries[key].value

    def as_dict(self) -> dict[str, Any]:
        return {key: entry.value for key, entry in self._entries.items()}

    def keys(self) -> list[str]:
        return list(self._entries)

    # GGUFWriter-like adders (value types as GGUFWriter.add_* would choose them)
    def add(self, key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        self._entries[key] = MetadataEntry(key, value, vtype, sub_type)

    def remove(self, key: str) -> None:
        self._entries.pop(key, None)

    def add_string(self, key: str, value: str) -> None:
        self.add(key, value, GGUFValueType.STRING)

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, bool(value), GGUFValueType.BOOL)

    def add_uint32(self, key: str, value: int) -> None:
        self.add(key, int(value), GGUFValueType.UINT32)

    def add_array(self, key: str, values: Sequence[Any]) -> None:
        """GGUFWriter.add_array: nothing for an empty list; element type from the first element."""
        if len(values) == 0:
            return
        first = values[0]
        if isinstance(first, str):
            sub = GGUFValueType.STRING
        elif isinstance(first, bool):
            sub = GGUFValueType.BOOL
        elif isinstance(first, int):
            sub = GGUFValueType.INT32
        elif isinstance(first, float):
            sub = GGUFValueType.FLOAT32
        else:
            raise TypeError(f"{key}: unsupported array element {type(first).__name__}")
        self.add(key, list(values), GGUFValueType.ARRAY, sub)

    def apply(self, writer: Any) -> None:
        """Add every entry to a gguf.GGUFWriter (used by tests and reference tooling)."""
        for entry in self:
            writer.add_key_value(entry.key, entry.value, entry.vtype, entry.sub_type)
