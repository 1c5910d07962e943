"""A job's result: one object, the same keys for the same facts in every command's `--json` (docs/json.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from quantcli.console import peak_rss_bytes
from quantcli.plan.core import Plan

# `job` is an engine.job.Job and `planned` an engine.job.GGUFPlan (not imported: job.py imports this module).
Job = Any
GGUFPlan = Any

SCHEMA = "quantcli/1"


def header(command: str, ok: bool = True) -> dict[str, Any]:
    return {"schema": SCHEMA, "command": command, "ok": ok}


def _fallbacks(plan: Plan) -> list[dict[str, Any]]:
    return [
        {"name": d.name, "wanted": d.fallback_from.name if d.fallback_from else None, "written": d.type.name,
         "why": d.fallback_why}
        for d in plan.fallbacks
    ]  # fmt: skip


def _plan_facts(job: Job, planned: GGUFPlan, output: Path | None) -> dict[str, Any]:
    plan = planned.plan
    return {
        **header(job.command),
        "source": job.source,
        "output": None if output is None else str(output),
        "format": "gguf",
        "architecture": planned.architecture,
        "file_type": planned.file_type,
        "pipeline": planned.pipeline,
        "n_tensors": len(planned.tensors),
        "tensor_types": plan.type_histogram(),
        "n_quantized": sum(d.changes for d in plan.decisions) if job.target.kind == "recipe" else None,
        "n_fallbacks": plan.n_fallback,
        "fallbacks": _fallbacks(plan),
        "bits_per_weight": round(plan.bits_per_weight, 4),
        "parameters": plan.n_elements,
        "imatrix": None if planned.imatrix is None else str(planned.imatrix.imatrix.path),
        "imatrix_missing": planned.imatrix_missing,
    }


def plan_result(job: Job, planned: GGUFPlan, output: Path) -> dict[str, Any]:
    """A dry run (`convert --dry-run`, `plan`): every tensor's decision and the exact output size."""
    plan = planned.plan
    doc = _plan_facts(job, planned, None if job.command == "plan" else output)
    doc.update({
        "dry_run": True,
        "sha256": None,  # nothing written
        "peak_rss_bytes": peak_rss_bytes(),
        "bytes": planned.file_size,
        "bytes_exact": True,
        "tensor_bytes": plan.tensor_bytes,
        "src_tensor_bytes": plan.src_tensor_bytes,
        "tensors": [d.to_json() for d in plan.decisions],
    })  # fmt: skip
    _planned_calibration(job, doc)
    return doc


def _planned_calibration(job: Job, doc: dict[str, Any]) -> None:
    """A dry run of a calibrating job says what the stage would use (nothing is run)."""
    opts = job.calibration
    if opts is None:
        return
    from quantcli.runtime.calibrate import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN

    doc["calibration"] = {
        "method": opts.method, "text": list(opts.files) or ["quantcli/data/calib.txt"],
        "samples": opts.samples or DEFAULT_SAMPLES, "seq_len": opts.seq_len or DEFAULT_SEQ_LEN,
        "act_order": opts.act_order is not False if job.target.kind == "packed" else False, "damp": opts.damp,
    }  # fmt: skip


def gguf_result(
    job: Job, planned: GGUFPlan, output: Path, size: int, sha256: str, peak_rss: int, tensor_cache: Any
) -> dict[str, Any]:
    doc = _plan_facts(job, planned, output)
    doc.update({
        "bytes": size,
        "sha256": sha256,
        "peak_rss_bytes": peak_rss,
        "tensor_cache": tensor_cache.stats() if tensor_cache is not None else None,
        "stages": {stage: round(seconds, 3) for stage, seconds in planned.stages.items()},
    })  # fmt: skip
    return doc


def _packed_type(fmt: Any, scheme: Any) -> str:
    return f"{fmt.name}-w{scheme.bits}g{scheme.group_size}"


def packed_plan_result(job: Job, ckpt: Any, fmt: Any, scheme: Any, output: Path) -> dict[str, Any]:
    from quantcli.quants.packed import MODEL_DTYPES
    from quantcli.writers.packed import is_linear_weight, packed_names

    tensors = []
    for n in ckpt.tensor_names():
        info = ckpt.tensor_info(n)
        entry = {"name": n, "shape": list(reversed(info.shape)), "src_type": info.dtype, "fell_back": False}
        if is_linear_weight(n, info.shape):
            parts = packed_names(fmt, n.removesuffix(".weight"), info.shape, scheme)
            entry.update({"type": _packed_type(fmt, scheme), "reason": "Linear weight of a decoder block",
                          "bytes": sum(t.nbytes for t in parts), "packed": [t.name for t in parts]})  # fmt: skip
        else:
            floating = info.dtype in ("F32", "F16", "BF16", "F64")
            import numpy as np

            itemsize = np.dtype(MODEL_DTYPES[scheme.dtype]).itemsize if floating else _INT_SIZES.get(info.dtype, 4)
            entry.update({"type": scheme.dtype, "reason": "kept (not a decoder Linear weight)",
                          "bytes": math.prod(info.shape) * itemsize})  # fmt: skip
        tensors.append(entry)
    histogram: dict[str, int] = {}
    for t in tensors:
        histogram[t["type"]] = histogram.get(t["type"], 0) + 1
    doc = {
        **_packed_facts(job, ckpt, fmt, scheme, None if job.command == "plan" else output),
        "dry_run": True,
        "sha256": None,  # nothing written
        "n_tensors": len(tensors),
        "tensor_types": dict(sorted(histogram.items())),
        "bytes": sum(t["bytes"] for t in tensors),
        "bytes_exact": False,  # tensor data only: safetensors headers and copied tokenizer files come on top
        "tensor_bytes": sum(t["bytes"] for t in tensors),
        "tensors": tensors,
    }
    _planned_calibration(job, doc)
    return doc


_INT_SIZES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _packed_facts(job: Job, ckpt: Any, fmt: Any, scheme: Any, output: Path | None) -> dict[str, Any]:
    return {
        **header(job.command),
        "source": job.source,
        "output": None if output is None else str(output),
        "format": fmt.name,
        "architecture": str(ckpt.config.get("model_type", "")),
        "file_type": None,
        "bits": scheme.bits,
        "group_size": scheme.group_size,
        "dtype": scheme.dtype,
        "n_fallbacks": 0,
        "fallbacks": [],
        "parameters": sum(math.prod(ckpt.tensor_info(n).shape) for n in ckpt.tensor_names()),
    }


def packed_result(job: Job, written: dict[str, Any], scheme: Any, ckpt: Any) -> dict[str, Any]:
    fmt = job.target.packed_format
    counts = written["tensors"]
    doc = _packed_facts(job, ckpt, fmt, scheme, Path(written["output"]))
    doc.update({
        "n_tensors": counts["quantized"] + counts["kept"],
        "n_quantized": counts["quantized"],
        "tensor_types": {_packed_type(fmt, scheme): counts["quantized"], scheme.dtype: counts["kept"]},
        "bytes": written["bytes"],
        "bits_per_weight": round(written["bytes"] * 8 / max(1, doc["parameters"]), 4),  # whole directory
        "sha256": written["sha256"],  # of the directory's files concatenated in name order
        "files": written["files"],
        "peak_rss_bytes": written["peak_rss_bytes"],
        "tensor_cache": None,  # packed outputs are rewritten whole (atomic directory)
    })  # fmt: skip
    return doc
