"""Command-line options shared by `plan`, `quantize` (and `convert`): llama-quantize's type overrides."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantcli.errors import InputInvalid, InputMissing, UsageError
from quantcli.gguf_constants import GGMLQuantizationType, GGUFValueType
from quantcli.plan.core import Overrides
from quantcli.plan.ftypes import parse_ggml_type
from quantcli.writers.gguf import encode_kv

_ATOL = re.compile(r"\s*([+-]?\d+)")
_ATOF = re.compile(r"\s*([+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))", re.IGNORECASE)


@dataclass(frozen=True)
class KvOverride:
    """`--override-kv KEY=TYPE:VALUE` as common's string_parse_kv_override reads it and llama-quantize
    writes it: int -> u32 of |value|, float -> f32, bool, str (<= 127 bytes)."""

    key: str
    tag: str  # "int" | "float" | "bool" | "str"
    value: int | float | bool | str

    def encode(self) -> bytes:
        if self.tag == "int":
            return encode_kv(self.key, abs(int(self.value)) & 0xFFFFFFFF, GGUFValueType.UINT32)  # gguf_set_val_u32
        if self.tag == "float":
            return encode_kv(self.key, float(np.float32(self.value)), GGUFValueType.FLOAT32)  # gguf_set_val_f32
        if self.tag == "bool":
            return encode_kv(self.key, bool(self.value), GGUFValueType.BOOL)
        return encode_kv(self.key, str(self.value), GGUFValueType.STRING)

    @property
    def loader_value(self) -> int | float | bool | str:
        """The value the model loader sees when it reads this key for the hyper-parameters."""
        return self.value


def parse_kv_override(text: str) -> KvOverride:
    key, sep, rest = text.partition("=")
    if not sep or len(key.encode("utf-8")) >= 128:
        raise UsageError(f"--override-kv {text!r}: expected KEY=TYPE:VALUE (int, float, bool, str)")
    tag, colon, value = rest.partition(":")
    if not colon or tag not in ("int", "float", "bool", "str"):
        raise UsageError(f"--override-kv {text!r}: TYPE must be int, float, bool or str")
    if tag == "int":
        m = _ATOL.match(value)  # std::atol: leading integer, else 0
        return KvOverride(key, tag, int(m.group(1)) if m else 0)
    if tag == "float":
        m = _ATOF.match(value)  # std::atof
        return KvOverride(key, tag, float(m.group(1)) if m else 0.0)
    if tag == "bool":
        if value not in ("true", "false"):
            raise UsageError(f"--override-kv {text!r}: bool must be true or false")
        return KvOverride(key, tag, value == "true")
    if len(value.encode("utf-8")) > 127:
        raise UsageError(f"--override-kv {text!r}: a string value cannot exceed 127 bytes")
    return KvOverride(key, tag, value.split("\0", 1)[0])


def parse_tensor_type(text: str) -> tuple[str, GGMLQuantizationType]:
    """`REGEX=TYPE` as llama-quantize's parse_tensor_type: split at the first '=', pattern lower-cased."""
    if "=" not in text:
        raise UsageError(f"--tensor-type {text!r}: expected REGEX=TYPE")
    pattern, _, type_name = text.partition("=")
    if not pattern:
        raise UsageError(f"--tensor-type {text!r}: missing tensor name pattern")
    if not type_name:
        raise UsageError(f"--tensor-type {text!r}: missing quantization type")
    return pattern.lower(), parse_ggml_type(type_name)


def build_overrides(
    *,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_types: Sequence[str] = (),
    tensor_type_file: Path | None = None,
    leave_output_tensor: bool = False,
    has_imatrix: bool = False,
    override_kv: Sequence[str] = (),
) -> Overrides:
    specs = list(tensor_types)
    if tensor_type_file is not None:
        try:
            specs += Path(tensor_type_file).read_text(encoding="utf-8").split()
        except FileNotFoundError:
            raise InputMissing(f"--tensor-type-file {tensor_type_file}: no such file") from None
        except UnicodeDecodeError:
            raise InputInvalid(f"--tensor-type-file {tensor_type_file}: not UTF-8 text") from None
        except OSError as exc:
            raise UsageError(f"--tensor-type-file {tensor_type_file}: {exc.strerror}") from None
    return Overrides(
        pure=pure,
        output_tensor_type=parse_ggml_type(output_tensor_type) if output_tensor_type else None,
        token_embedding_type=parse_ggml_type(token_embedding_type) if token_embedding_type else None,
        tensor_types=[parse_tensor_type(s) for s in specs],
        leave_output_tensor=leave_output_tensor,
        has_imatrix=has_imatrix,
        kv_overrides=[parse_kv_override(s) for s in override_kv],
    )
