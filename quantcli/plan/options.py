"""Command-line options shared by `plan`, `quantize` (and `convert`): llama-quantize's type overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gguf import GGMLQuantizationType

from quantcli.errors import UsageError
from quantcli.plan.core import Overrides
from quantcli.plan.ftypes import parse_ggml_type


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
) -> Overrides:
    specs = list(tensor_types)
    if tensor_type_file is not None:
        try:
            specs += Path(tensor_type_file).read_text().split()
        except OSError as exc:
            raise UsageError(f"--tensor-type-file {tensor_type_file}: {exc.strerror}") from None
    return Overrides(
        pure=pure,
        output_tensor_type=parse_ggml_type(output_tensor_type) if output_tensor_type else None,
        token_embedding_type=parse_ggml_type(token_embedding_type) if token_embedding_type else None,
        tensor_types=[parse_tensor_type(s) for s in specs],
        leave_output_tensor=leave_output_tensor,
        has_imatrix=has_imatrix,
    )
