from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.errors import InputInvalid, InputMissing, Unsupported
from quantcli.loaders import SafetensorsFile, open_checkpoint


def _raw_file(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_reads_f32_f16_bf16_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((4,)).astype(np.float16)
    c = rng.standard_normal((6, 2)).astype(ml_dtypes.bfloat16)
    save_file({"a": a, "b": b, "c": c}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    before = (tmp_path / "model.safetensors").read_bytes()
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.tensor_names() == ["a", "b", "c"]
    assert ckpt.tensor_info("c").dtype == "BF16" and ckpt.tensor_info("c").shape == (6, 2)
    np.testing.assert_array_equal(ckpt.read("a"), a)
    np.testing.assert_array_equal(ckpt.read("b"), b)
    got_c = ckpt.read("c")
    assert got_c.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got_c.view(np.uint16), c.view(np.uint16))
    assert not ckpt.read("a").flags.writeable
    ckpt.close()
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert ckpt.architecture == "LlamaForCausalLM"


def test_single_file_source_uses_sibling_config(tmp_path: Path) -> None:
    save_file({"x": np.ones((2, 2), np.float32)}, str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    ckpt = open_checkpoint(tmp_path / "weights.safetensors")
    assert ckpt.tensor_names() == ["x"] and ckpt.directory == tmp_path


def test_sharded_with_index(tmp_path: Path) -> None:
    save_file(
        {"b": np.zeros(3, np.float32), "a": np.ones(2, np.float32)},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )
    save_file({"z": np.full(4, 2, np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    index = {
        "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "z": "model-00001-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.tensor_names() == ["z", "a", "b"]
    np.testing.assert_array_equal(ckpt.read("z"), np.full(4, 2, np.float32))
    # index that lists a tensor no shard has
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputInvalid, match="ghost"):
        open_checkpoint(tmp_path)
    # index naming a shard that is not there
    index["weight_map"] = {"a": "model-00003-of-00003.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputMissing, match="model-00003-of-00003"):
        open_checkpoint(tmp_path)


def test_missing_config(tmp_path: Path) -> None:
    save_file({"x": np.ones(2, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(InputMissing, match="config.json"):
        open_checkpoint(tmp_path)


def test_bin_only_checkpoint_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(Unsupported, match="safetensors"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "past the end"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 12, "needs 12"),
        ({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "unknown dtype"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "increasing"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),
        ([1, 2], b"", "not a JSON object"),
    ],
)
def test_bad_headers(tmp_path: Path, header: object, data: bytes, message: str) -> None:
    path = _raw_file(tmp_path / "m.safetensors", header, data)  # type: ignore[arg-type]
    with pytest.raises(InputInvalid, match=message) as info:
        SafetensorsFile(path)
    assert str(path) in str(info.value)


def test_duplicate_names_and_bad_length(tmp_path: Path) -> None:
    blob = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 8)
    with pytest.raises(InputInvalid, match="twice"):
        SafetensorsFile(path)
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(InputInvalid, match="header length"):
        SafetensorsFile(path)
    path.write_bytes(b"abc")
    with pytest.raises(InputInvalid, match="too short"):
        SafetensorsFile(path)


def test_truncated_real_file(tmp_path: Path) -> None:
    save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    full = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(full[: len(full) - 100])
    with pytest.raises(InputInvalid, match="truncated"):
        open_checkpoint(tmp_path)
