#!/usr/bin/env python3
"""Run llama.cpp's own convert_hf_to_gguf.py (the reference) and compare GGUF files.

    reference_convert.py MODEL_DIR --outtype q8_0 [-o OUT.gguf]       # run the reference converter
    reference_convert.py --compare OURS.gguf REFERENCE.gguf            # tensor- and key-wise diff

The converter comes from the llama.cpp tree built by scripts/build_llamacpp.sh
(~/.cache/quantcli/llama.cpp-0.3.36/src) and runs with its vendored gguf-py (NO_LOCAL_GGUF unset);
it needs torch and transformers (tested: torch 2.13.0, transformers 5.23.0).

`compare_gguf` is what tests/test_reference_converter.py asserts on: same tensor names, order, shapes,
types and bytes; the same KV keys in the same order with equal values, except COSMETIC_KEYS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LLAMACPP_VERSION = "0.3.36"

# Keys allowed to differ: none today. general.name etc. come from the same gguf.Metadata code path on
# both sides; add a key here only with the reason next to it.
COSMETIC_KEYS: frozenset[str] = frozenset()


def llamacpp_src() -> Path:
    cache = Path(os.environ.get("QUANTCLI_CACHE") or Path.home() / ".cache" / "quantcli")
    return cache / f"llama.cpp-{LLAMACPP_VERSION}" / "src"


def run_reference(model_dir: Path, outtype: str, out: Path, timeout: float = 600) -> Path:
    """convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUT; returns OUT."""
    src = llamacpp_src()
    script = src / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: run scripts/build_llamacpp.sh")
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # use the vendored gguf-py that matches this converter
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    proc = subprocess.run(
        [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(tmp)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def _field_value(field: Any) -> tuple[list[str], Any]:
    types = [t.name for t in field.types]
    if types and types[0] == "ARRAY":
        if len(types) > 1 and types[1] == "STRING":
            value: Any = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        else:
            value = [np.asarray(field.parts[i]).tolist() for i in field.data]
    elif types and types[0] == "STRING":
        value = bytes(field.parts[field.data[0]]).decode("utf-8", "surrogateescape")
    else:
        value = np.asarray(field.parts[field.data[0]]).tolist()
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
    return types, value


def compare_gguf(ours: Path, reference: Path, cosmetic: frozenset[str] = COSMETIC_KEYS) -> list[str]:
    """Every difference between two GGUF files, as readable lines (empty list = equal)."""
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(reference))
    diffs: list[str] = []
    a_keys = [k for k in a.fields if k not in cosmetic]
    b_keys = [k for k in b.fields if k not in cosmetic]
    if a_keys != b_keys:
        missing = [k for k in b_keys if k not in a_keys]
        extra = [k for k in a_keys if k not in b_keys]
        diffs.append(
            f"KV keys differ: missing {missing}, extra {extra}"
            if missing or extra
            else "KV key order differs"
        )
    for key in a_keys:
        if key not in b.fields:
            continue
        ta, va = _field_value(a.fields[key])
        tb, vb = _field_value(b.fields[key])
        if ta != tb:
            diffs.append(f"{key}: type {ta} != {tb}")
        elif va != vb:
            show_a = va if not isinstance(va, list) else f"list[{len(va)}]"
            show_b = vb if not isinstance(vb, list) else f"list[{len(vb)}]"
            diffs.append(f"{key}: {show_a!r} != {show_b!r}")
    names_a = [t.name for t in a.tensors]
    names_b = [t.name for t in b.tensors]
    if names_a != names_b:
        diffs.append(
            f"tensor names/order differ: ours {len(names_a)}, reference {len(names_b)}; "
            f"missing {sorted(set(names_b) - set(names_a))[:5]}, extra {sorted(set(names_a) - set(names_b))[:5]}"
        )
    tb_by_name = {t.name: t for t in b.tensors}
    for ta in a.tensors:
        tb = tb_by_name.get(ta.name)
        if tb is None:
            continue
        if ta.tensor_type != tb.tensor_type:
            diffs.append(f"{ta.name}: type {ta.tensor_type.name} != {tb.tensor_type.name}")
        if list(ta.shape) != list(tb.shape):
            diffs.append(f"{ta.name}: shape {list(ta.shape)} != {list(tb.shape)}")
        elif ta.data.tobytes() != tb.data.tobytes():
            diffs.append(f"{ta.name}: data bytes differ")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--outtype", default="bf16", choices=["f32", "f16", "bf16", "q8_0", "auto"])
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--compare", action="store_true", help="compare two GGUF files: OURS REFERENCE")
    args = parser.parse_args(argv)
    if args.compare:
        if len(args.paths) != 2:
            parser.error("--compare takes two files")
        diffs = compare_gguf(args.paths[0], args.paths[1])
        for line in diffs:
            print(line)
        print("identical" if not diffs else f"{len(diffs)} difference(s)")
        return 0 if not diffs else 1
    model = args.paths[0]
    out = args.output or Path.cwd() / f"{model.name}-reference-{args.outtype}.gguf"
    print(run_reference(model, args.outtype, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
