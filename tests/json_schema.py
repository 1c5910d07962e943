"""The --json schema `quantcli/1` as data: what docs/json.md documents, key by key.

test_json_schema.py holds every command's output against this table, and holds the tables in
docs/json.md against it, so the documentation and the outputs cannot drift apart silently.

A type is a `|`-separated list of: str, int, float, bool, null, list, object.
`int` is never a bool; `float` accepts an int (JSON has one number type; 1.0 may print as 1).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = "quantcli/1"

# Every object: the envelope.
ENVELOPE = {"schema": "str", "command": "str", "ok": "bool"}
# Added when ok is false because the command failed (usage error, bad input, ...).
ERROR = {"error": "str", "error_type": "str", "exit_code": "int"}

# Facts that several commands report: always this key, always this type.
SHARED = {
    "source": "str",
    "output": "str|null",
    "format": "str",
    "architecture": "str|null",
    "file_type": "str|null",
    "bits": "int",
    "group_size": "int",
    "bytes": "int",
    "sha256": "str|null",
    "files": "list",
    "n_tensors": "int",
    "tensor_types": "object",
    "tensors": "list",
    "n_fallbacks": "int",
    "fallbacks": "list",
    "bits_per_weight": "float",
    "parameters": "int",
    "seconds": "float",
    "peak_rss_bytes": "int",
}

# Items of `tensors`, `fallbacks` and `files` (required keys; tensors may carry more).
TENSOR_ITEM = {"name": "str", "shape": "list", "type": "str", "bytes": "int"}
FALLBACK_ITEM = {"name": "str", "wanted": "str", "written": "str", "why": "str"}
FILE_ITEM = {"name": "str", "bytes": "int", "sha256": "str"}

_GGUF_RESULT = [
    "source", "output", "format", "architecture", "file_type", "bytes", "sha256", "n_tensors", "tensor_types",
    "n_fallbacks", "fallbacks", "bits_per_weight", "parameters", "seconds", "peak_rss_bytes",
]

_ENGINE_EXTRA = {"pipeline": "str", "n_quantized": "int|null", "imatrix": "str|null", "imatrix_missing": "list",
                 "tensor_cache": "object|null"}

# Per command: required keys (shared ones by name, command-specific ones with their type) and optional
# keys (present in some modes: --base, --dry-run, --verify, packed formats).
COMMANDS: dict[str, dict[str, Any]] = {
    "inspect": {
        "required": {
            **{k: SHARED[k] for k in ("source", "format", "architecture", "file_type", "bytes", "n_tensors",
                                      "tensor_types", "tensors", "bits_per_weight", "parameters")},
            "file_type_id": "int|null", "gguf_version": "int", "name": "str|null", "alignment": "int",
            "n_kv": "int", "tensor_bytes": "int", "type_totals": "object", "metadata": "object",
        },
        "optional": {},
    },
    "eval": {
        "required": {
            **{k: SHARED[k] for k in ("source", "seconds", "peak_rss_bytes")},
            "text": "str", "chunks": "int", "n_ctx": "int", "ppl": "float", "tokens_scored": "int",
            "tokens_total": "int", "ggml_numerics": "bool",
        },
        "optional": {
            "ppl_uncertainty": "float", "base": "str", "ppl_base": "float", "ppl_ratio": "float",
            "ln_ppl_ratio": "float", "ln_ppl_ratio_uncertainty": "float", "kld_mean": "float",
            "kld_uncertainty": "float", "kld_median": "float", "kld_p99": "float", "kld_p999": "float",
            "kld_max": "float", "same_top": "float", "same_top_uncertainty": "float", "rms_dp": "float",
        },
    },
    "generate": {
        "required": {
            **{k: SHARED[k] for k in ("source", "seconds", "peak_rss_bytes")},
            "prompt_tokens": "list", "tokens": "list", "n_tokens": "int", "text": "str", "stop": "str|null",
            "stop_token": "int|null", "prompt_seconds": "float", "decode_seconds": "float",
            "tokens_per_second": "float",
        },
        "optional": {},
    },
    "imatrix": {
        "required": {
            **{k: SHARED[k] for k in ("source", "output", "bytes", "seconds", "peak_rss_bytes")},
            "entries": "int", "ppl": "float", "ppl_uncertainty": "float", "chunks": "int", "n_ctx": "int",
        },
        "optional": {},
    },
    "plan": {
        "required": {
            **{k: SHARED[k] for k in _GGUF_RESULT if k not in ("sha256", "seconds", "peak_rss_bytes")},
            "tensors": SHARED["tensors"], "bytes_exact": "bool", "tensor_bytes": "int", "src_tensor_bytes": "int",
        },
        "optional": {**_ENGINE_EXTRA, "dry_run": "bool", "sha256": "str|null", "seconds": "float",
                     "peak_rss_bytes": "int", "calibration": "object"},
    },
    "convert": {
        "required": {k: SHARED[k] for k in _GGUF_RESULT},
        "optional": {
            **{k: SHARED[k] for k in ("bits", "group_size", "files", "tensors")},
            "dry_run": "bool", "bytes_exact": "bool", "verify": "object", **_ENGINE_EXTRA, "dtype": "str",
            "tensor_bytes": "int", "src_tensor_bytes": "int", "stages": "object", "calibration": "object",
        },
    },
    "quantize": {
        "required": {**{k: SHARED[k] for k in _GGUF_RESULT}, "imatrix": "str|null", "imatrix_missing": "list"},
        "optional": {**{k: v for k, v in _ENGINE_EXTRA.items() if k not in ("imatrix", "imatrix_missing")},
                     "stages": "object"},
    },
    "sweep": {
        "required": {
            **{k: SHARED[k] for k in ("source", "output", "seconds")},
            "base": "str", "text": "str", "chunks": "int", "n_ctx": "int", "imatrix": "str|null", "results": "list",
            "table": "str", "plot": "str|null", "plot_missing": "str|null",
        },
        "optional": {},
    },
    "batch": {
        "required": {
            **{k: SHARED[k] for k in ("seconds",)},
            "event": "str", "jobs": "list", "n_jobs": "int", "n_converted": "int", "n_skipped": "int", "n_failed": "int",
        },
        "optional": {},
    },
}

# Items of batch's `jobs`: a convert result (the keys above, or an error) plus these.
BATCH_JOB_ITEM = {"status": "str", "entry": "int", "source": "str", "output": "str|null", "ok": "bool"}

_PY = {"str": str, "int": int, "float": (int, float), "bool": bool, "null": type(None), "list": list, "object": dict}


def type_ok(value: Any, spec: str) -> bool:
    for kind in spec.split("|"):
        if kind in ("int", "float") and isinstance(value, bool):
            continue
        if isinstance(value, _PY[kind]):
            return True
    return False


def problems(doc: dict[str, Any], command: str) -> list[str]:
    """Everything in `doc` that breaks the schema for `command` (empty: it conforms)."""
    found: list[str] = []

    def check(obj: dict[str, Any], required: dict[str, str], where: str) -> None:
        for key, spec in required.items():
            if key not in obj:
                found.append(f"{where}: missing {key!r}")
            elif not type_ok(obj[key], spec):
                found.append(f"{where}: {key!r} is {obj[key]!r}, not {spec}")

    check(doc, ENVELOPE, command)
    if doc.get("schema") != SCHEMA_VERSION or doc.get("command") != command:
        found.append(f"{command}: envelope {doc.get('schema')!r} {doc.get('command')!r}")
    if doc.get("ok") is False and "error" in doc:
        check(doc, ERROR, command)
        return found
    spec = COMMANDS[command]
    check(doc, spec["required"], command)
    known = set(ENVELOPE) | set(ERROR) | set(spec["required"]) | set(spec["optional"])
    for key, value in doc.items():
        if key not in known:
            found.append(f"{command}: undocumented key {key!r}")
        elif key in spec["optional"] and not type_ok(value, spec["optional"][key]):
            found.append(f"{command}: {key!r} is {value!r}, not {spec['optional'][key]}")
    for i, t in enumerate(doc.get("tensors") or []):
        check(t, TENSOR_ITEM, f"{command}.tensors[{i}]")
        if isinstance(t.get("shape"), list) and not all(type_ok(n, "int") for n in t["shape"]):
            found.append(f"{command}.tensors[{i}]: shape {t['shape']!r} is not a list of ints")
    for i, f in enumerate(doc.get("fallbacks") or []):
        check(f, FALLBACK_ITEM, f"{command}.fallbacks[{i}]")
    for i, f in enumerate(doc.get("files") or []):
        check(f, FILE_ITEM, f"{command}.files[{i}]")
    for i, job in enumerate(doc.get("jobs") or []):
        check(job, BATCH_JOB_ITEM, f"batch.jobs[{i}]")
    return found


def documented_rows() -> dict[str, str]:
    """Every `| key | type |` row this table implies, as `section/key -> type`, for the docs check."""
    rows = {f"envelope/{k}": v for k, v in ENVELOPE.items()}
    rows |= {f"error/{k}": v for k, v in ERROR.items()}
    rows |= {f"shared/{k}": v for k, v in SHARED.items()}
    for command, spec in COMMANDS.items():
        for key, kind in {**spec["required"], **spec["optional"]}.items():
            if key not in SHARED:
                rows[f"{command}/{key}"] = kind
    rows |= {f"tensors[]/{k}": v for k, v in TENSOR_ITEM.items()}
    rows |= {f"fallbacks[]/{k}": v for k, v in FALLBACK_ITEM.items()}
    rows |= {f"files[]/{k}": v for k, v in FILE_ITEM.items()}
    rows |= {f"jobs[]/{k}": v for k, v in BATCH_JOB_ITEM.items()}
    return rows


def keys_per_command() -> dict[str, tuple[list[str], list[str]]]:
    """command -> (required keys, optional keys), for the docs check."""
    return {c: (sorted(s["required"]), sorted(s["optional"])) for c, s in COMMANDS.items()}
