"""`quantcli inspect FILE`: metadata, tensor table, type histogram, size and bits per weight of a GGUF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from quantcli.console import json_doc, out, print_json, print_wide

HELP = """Describe a GGUF file: metadata (long arrays summarised), every tensor (name, shape in GGUF
order, type, bytes), a histogram of tensor types, file size and bits per weight. The tables go to
stdout (pipe them to grep); --json prints one object (docs/json.md).

Examples:

* `quantcli inspect smol-q4_k_m.gguf`
* `quantcli inspect smol-q4_k_m.gguf | grep attn_v`
* `quantcli inspect smol-q4_k_m.gguf --json | jq .tensor_types`
"""

_ARRAY_PREVIEW = 8


def _summarise(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        if len(value) > _ARRAY_PREVIEW:
            return {"array_length": len(value), "first": value[:_ARRAY_PREVIEW]}
        return value
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def describe(path: Path) -> dict[str, Any]:
    from quantcli.loaders.gguf import GGUFFile
    from quantcli.plan import n_dims

    with GGUFFile(path) as f:
        tensors = list(f.tensors.values())
        n_elements = sum(t.n_elements for t in tensors)
        tensor_bytes = sum(t.nbytes for t in tensors)
        types: dict[str, dict[str, int]] = {}
        for t in tensors:
            entry = types.setdefault(t.type.name, {"tensors": 0, "elements": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["elements"] += t.n_elements
            entry["bytes"] += t.nbytes
        file_type = f.get("general.file_type")
        doc = {
            "source": str(path),
            "format": "gguf",
            "gguf_version": f.version,
            "architecture": f.get("general.architecture"),
            "name": f.get("general.name"),
            "file_type": _ftype_name(file_type),
            "file_type_id": None if file_type is None else int(file_type),
            "alignment": f.alignment,
            "n_kv": len(f.kv),
            "n_tensors": len(tensors),
            "parameters": n_elements,
            "tensor_bytes": tensor_bytes,
            "bytes": path.stat().st_size,
            "bits_per_weight": tensor_bytes * 8.0 / max(1, n_elements),
            "tensor_types": {name: entry["tensors"] for name, entry in sorted(types.items())},
            "type_totals": dict(sorted(types.items())),
            "metadata": {k: _summarise(v.value) for k, v in f.kv.items()},
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.ne[: n_dims(t.ne)]),
                    "type": t.type.name,
                    "offset": t.offset,
                    "bytes": t.nbytes,
                }
                for t in tensors
            ],
        }
        return doc


def _ftype_name(value: Any) -> str | None:
    from quantcli.plan import FTYPES

    if value is None:
        return None
    for ft in FTYPES.values():
        if ft.value == int(value):
            return ft.name
    return None


def register(app: typer.Typer) -> None:
    @app.command("inspect", help=HELP)
    def inspect(
        file: Path = typer.Argument(..., metavar="FILE", help="GGUF file."),
        json_out: bool = typer.Option(False, "--json", help="Print everything as one JSON object on stdout."),
        all_metadata: bool = typer.Option(
            False, "--all", help="Also list tokenizer.* keys in the table view."
        ),
    ) -> None:
        doc = describe(file)
        if json_out:
            print_json(json_doc("inspect", True, **doc))
            return
        _show(doc, all_metadata)


def _show(doc: dict[str, Any], all_metadata: bool) -> None:
    from rich.table import Table

    meta = Table(title=f"{doc['source']} (GGUF v{doc['gguf_version']})", title_justify="left")
    meta.add_column("key", no_wrap=True)
    meta.add_column("value", overflow="fold")
    for key, value in doc["metadata"].items():
        if key.startswith("tokenizer.") and not all_metadata and isinstance(value, dict):
            value = f"[{value['array_length']} items]"
        text = json.dumps(value, default=str) if not isinstance(value, str) else value
        meta.add_row(key, text if len(text) < 200 else text[:197] + "...")
    print_wide(meta, 160)

    tensors = Table(title="tensors (shape in GGUF order, fastest dimension first)", title_justify="left")
    for col in ("name", "shape", "type"):
        tensors.add_column(col, no_wrap=True)
    tensors.add_column("bytes", justify="right", no_wrap=True)
    for t in doc["tensors"]:
        tensors.add_row(t["name"], "x".join(map(str, t["shape"])), t["type"], f"{t['bytes']:,}")
    print_wide(tensors, 160)

    hist = Table(title="types", title_justify="left")
    for col in ("type", "tensors", "elements", "bytes", "bpw"):
        hist.add_column(col, justify="right" if col != "type" else "left")
    for name, entry in doc["type_totals"].items():
        hist.add_row(
            name,
            str(entry["tensors"]),
            f"{entry['elements']:,}",
            f"{entry['bytes']:,}",
            f"{entry['bytes'] * 8 / max(1, entry['elements']):.2f}",
        )
    print_wide(hist, 160)
    out.print(
        f"{doc['architecture']} {doc['file_type'] or doc['file_type_id']}: {doc['n_tensors']} tensors, "
        f"{doc['parameters']:,} weights, {doc['bytes']:,} bytes, {doc['bits_per_weight']:.2f} bpw",
        markup=False,
    )
