"""Plan for a source on disk: a GGUF file, or an HF directory seen as the F16 GGUF llama.cpp would convert."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantcli.errors import InputMissing
from quantcli.plan.core import Overrides, Plan, TensorSpec, make_plan
from quantcli.plan.ftypes import Ftype
from quantcli.plan.rules import ModelInfo


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
    from quantcli.requantize import output_kv, plan_for_gguf

    with GGUFFile(source) as src:
        plan = plan_for_gguf(src, ftype, overrides)
        _check_imatrix(plan, imatrix)
        kv = output_kv(src, ftype, imatrix, overrides.kv_overrides)
        return PlannedSource(source, plan, plan.file_size(sum(len(raw) for _, raw in kv)), True)


def _check_imatrix(plan: Plan, imatrix: Any) -> None:
    if imatrix is not None and imatrix.imatrix.entries:
        imatrix.imatrix.check_against(
            [(d.name, d.ne) for d in plan.decisions], [d.name for d in plan.decisions if d.changes]
        )


# GGUFWriter helper -> ModelInfo field, for the hyper-parameters llama-quantize's rules read.
_HPARAM_FIELDS = {
    "add_block_count": "n_layer",
    "add_head_count": "n_head",
    "add_head_count_kv": "n_head_kv",
    "add_expert_count": "n_expert",
}


def _first(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else 0
    return int(value)


def plan_hf(source: Path, ftype: Ftype, overrides: Overrides, imatrix: Any) -> PlannedSource:
    """HF checkpoint: the tensors/types convert's F16 output would have, then llama-quantize's rules."""
    from gguf import LlamaFileType

    from quantcli.arch import effective_config, get_arch, hparam_values
    from quantcli.convert import plan_tensors
    from quantcli.loaders import open_checkpoint

    ckpt = open_checkpoint(source)
    try:
        spec = get_arch(ckpt.config, where=str(ckpt.directory / "config.json"))
        cfg = effective_config(spec, ckpt.config)
        cfg["__ftype__"] = LlamaFileType.MOSTLY_F16
        planned = plan_tensors(ckpt, spec, cfg, LlamaFileType.MOSTLY_F16)
        fields: dict[str, Any] = {"arch": spec.gguf_arch}
        for method, value in hparam_values(spec, cfg):
            if method in _HPARAM_FIELDS:
                fields[_HPARAM_FIELDS[method]] = _first(value)
        fields.setdefault("n_layer", spec.block_count(cfg))
        fields.setdefault("n_head_kv", fields.get("n_head", 0))
        model = ModelInfo(**fields)
        specs = [TensorSpec.from_numpy_shape(t.name, t.shape, t.qtype) for t in planned]
        plan = make_plan(model, specs, ftype, overrides)
        _check_imatrix(plan, imatrix)
        kv_bytes, exact = _hf_kv_bytes(ckpt, spec, cfg, planned, imatrix)
    finally:
        ckpt.close()
    return PlannedSource(source, plan, plan.file_size(kv_bytes), exact)


def _hf_kv_bytes(
    ckpt: Any, spec: Any, cfg: dict[str, Any], planned: list[Any], imatrix: Any
) -> tuple[int, bool]:
    """Encoded size of the KV section convert would write (same size after llama-quantize's rewrite:
    general.file_type and general.quantization_version stay u32), plus the imatrix keys."""
    import gguf

    extra = 0
    if imatrix is not None:
        extra = sum(len(raw) for _, raw in imatrix.kv_pairs())
    try:
        from quantcli import convert as conv
        from quantcli.arch import hparam_values
        from quantcli.writers.gguf import GGUFOutput

        out = GGUFOutput(spec.gguf_arch)
        for tensor in planned:
            out.add_tensor(tensor)
        conv._general_metadata(out, ckpt.directory)
        for method, value in hparam_values(spec, cfg):
            out.call(method, value)
        out.writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for entry in conv._vocab_entries(ckpt.directory, ckpt.config):
            out.add_kv(entry.key, entry.value, entry.vtype, entry.sub_type)
        writer = out.writer
        total = 0
        for key, val in writer.kv_data[0].items():
            total += len(writer._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False))
            total += len(writer._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type))
        if "general.file_type" not in writer.kv_data[0]:
            total += len(_u32_kv("general.file_type"))
        return total + extra, True
    except Exception:  # convert's metadata API is still moving: fall back to an estimate, say so
        return extra, False


def _u32_kv(key: str) -> bytes:
    from quantcli.requantize import encode_kv_u32

    return encode_kv_u32(key, 0)
