"""Plan for a source on disk: a GGUF file, or an HF directory seen as the GGUF llama.cpp's converter
writes at the checkpoint's own precision (bf16 for BF16 weights, f16 for F16, f32 otherwise)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantcli.errors import InputMissing
from quantcli.plan.core import Overrides, Plan
from quantcli.plan.ftypes import Ftype


@dataclass
class PlannedSource:
    source: Path
    plan: Plan
    file_size: int
    file_size_exact: bool


def is_gguf_source(source: Path | str) -> bool:
    """A file named *.gguf or starting with the GGUF magic (anything else is an HF checkpoint)."""
    source = Path(source)
    return source.is_file() and (source.suffix.lower() == ".gguf" or _is_gguf(source))


def plan_source(source: Path | str, ftype: Ftype, overrides: Overrides, imatrix: Any = None) -> PlannedSource:
    source = Path(source)
    if not source.exists():
        raise InputMissing(f"{source} does not exist")
    if is_gguf_source(source):
        return plan_gguf(source, ftype, overrides, imatrix)
    return plan_hf(source, ftype, overrides, imatrix)


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"GGUF"


def plan_gguf(source: Path, ftype: Ftype, overrides: Overrides, imatrix: Any) -> PlannedSource:
    from quantcli.loaders.gguf import GGUFFile
    from quantcli.requantize import gguf_kv, output_kv, plan_for_gguf

    with GGUFFile(source) as src:
        plan = plan_for_gguf(src, ftype, overrides)
        _check_imatrix(plan, imatrix)
        kv = output_kv(gguf_kv(src), ftype, imatrix, overrides.kv_overrides)
        return PlannedSource(source, plan, plan.file_size(sum(len(raw) for _, raw in kv)), True)


def _check_imatrix(plan: Plan, imatrix: Any) -> None:
    if imatrix is not None and imatrix.imatrix.entries:
        imatrix.imatrix.check_against(
            [(d.name, d.ne) for d in plan.decisions], [d.name for d in plan.decisions if d.changes]
        )


def plan_hf(source: Path, ftype: Ftype, overrides: Overrides, imatrix: Any) -> PlannedSource:
    """HF checkpoint: planned as the GGUF convert_hf_to_gguf.py writes at the checkpoint's own precision
    (bf16/f16/f32: lossless), then llama-quantize's rules; the file size is exact (same KV section)."""
    import dataclasses

    from quantcli.requantize import plan_checkpoint

    if imatrix is not None and not imatrix.imatrix.entries:
        imatrix = None
    overrides = dataclasses.replace(overrides, has_imatrix=imatrix is not None)
    with plan_checkpoint(source, ftype, overrides, imatrix) as cp:
        _check_imatrix(cp.plan, imatrix)
        return PlannedSource(source, cp.plan, cp.file_size, True)
