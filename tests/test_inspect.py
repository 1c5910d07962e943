"""`quantcli inspect`: metadata, tensor table, type histogram, size and bpw of a GGUF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from test_plan_synthetic import SYNTH, build_synthetic_gguf

REPO = Path(__file__).resolve().parent.parent


def test_inspect_json_describes_file(tmp_path: Path) -> None:
    src = build_synthetic_gguf(tmp_path / "m.gguf", n_layer=3, n_ff=256, n_vocab=320)
    q8 = tmp_path / "q8.gguf"
    assert (
        subprocess.run(
            [sys.executable, "-m", "quantcli", "quantize", str(src), str(q8), "Q8_0"],
            cwd=REPO,
            capture_output=True,
        ).returncode
        == 0
    )
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", "inspect", str(q8), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    n_embd, n_ff, n_vocab = SYNTH["n_embd"], 256, 320
    kv_dim = n_embd // SYNTH["n_head"] * SYNTH["n_head_kv"]
    per_layer_2d = 2 * n_embd * n_embd + 2 * kv_dim * n_embd + 3 * n_ff * n_embd
    weights_2d = 2 * n_vocab * n_embd + 3 * per_layer_2d
    norms = (1 + 2 * 3) * n_embd
    assert doc["schema"] == "quantcli/1" and doc["command"] == "inspect" and doc["ok"] is True
    assert doc["architecture"] == "llama" and doc["file_type"] == "Q8_0" and doc["file_type_id"] == 7
    assert doc["n_tensors"] == 3 + 9 * 3
    assert doc["parameters"] == weights_2d + norms
    assert doc["tensor_types"] == {"F32": 1 + 2 * 3, "Q8_0": 2 + 7 * 3}
    assert doc["type_totals"]["Q8_0"] == {
        "tensors": 2 + 7 * 3,
        "elements": weights_2d,
        "bytes": weights_2d // 32 * 34,
    }
    assert doc["type_totals"]["F32"] == {"tensors": 1 + 2 * 3, "elements": norms, "bytes": norms * 4}
    assert doc["bytes"] == q8.stat().st_size
    assert doc["bits_per_weight"] == (weights_2d // 32 * 34 + norms * 4) * 8 / (weights_2d + norms)
    # Long arrays are summarised, scalars kept, the last keys are the ones llama-quantize appends.
    assert doc["metadata"]["tokenizer.ggml.tokens"]["array_length"] == n_vocab
    assert doc["metadata"]["llama.block_count"] == 3
    assert list(doc["metadata"])[-2:] == ["general.quantization_version", "general.file_type"]
    first = doc["tensors"][0]
    assert first == {
        "name": "output.weight",
        "shape": [n_embd, n_vocab],
        "type": "Q8_0",
        "offset": 0,
        "bytes": n_embd * n_vocab // 32 * 34,
    }


def test_inspect_table_and_reader_agree_with_gguf_py(tmp_path: Path) -> None:
    src = build_synthetic_gguf(tmp_path / "m.gguf", n_layer=1, n_ff=256, n_vocab=320)
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", "inspect", str(src)], cwd=REPO, capture_output=True, text=True
    )
    # The tables are the result: on stdout, one tensor per line, so `| grep` finds whole rows.
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "blk.0.ffn_down.weight" in line]
    assert len(rows) == 1 and "256x256" in rows[0].replace(" ", "") and "F16" in rows[0], rows
    from quantcli.loaders.gguf import GGUFFile

    reader = gguf.GGUFReader(src)
    with GGUFFile(src) as f:
        # GGUFReader adds three pseudo-fields for the header (GGUF.version, ...).
        assert list(f.kv) == [name for name in reader.fields if not name.startswith("GGUF.")]
        for name, kv in f.kv.items():  # our raw KV bytes are exactly the on-disk field
            field = reader.fields[name]
            assert kv.raw == bytes(
                reader.data[field.offset : field.offset + sum(p.nbytes for p in field.parts)]
            )
        for t in reader.tensors:
            info = f.tensors[t.name]
            assert info.ne == tuple(int(n) for n in t.shape) and info.type == t.tensor_type
            assert info.nbytes == t.n_bytes
            np.testing.assert_array_equal(
                f.tensor_bytes(t.name), np.asarray(t.data).reshape(-1).view(np.uint8)
            )
