"""Packed checkpoints read back: SmolLM2 packed by us converts to a GGUF F32 that holds exactly the
dequantized weights (the same file as converting those weights written out plainly)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from quantcli.engine import convert_model
from quantcli.loaders import open_checkpoint
from quantcli.loaders.packed import PackedCheckpoint
from quantcli.quants.packed import Scheme, get_format
from quantcli.writers.packed import write_packed
from quantcli.writers.safetensors import write_file

pytestmark = pytest.mark.slow


def _tensors(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize(("fmt", "bits", "dtype"), [("ct", 4, "bfloat16"), ("mlx", 3, "bfloat16"), ("gptq", 4, "float16"),
                                                ("awq", 4, "float16")])
def test_packed_smollm2_converts_to_its_dequantized_weights(
    smollm2_dir: Path, tmp_path: Path, fmt: str, bits: int, dtype: str
) -> None:
    packed = tmp_path / "SmolLM2-135M"
    scheme = Scheme(bits, 64, dtype)
    write_packed(open_checkpoint(smollm2_dir), packed, get_format(fmt), scheme)
    ckpt = open_checkpoint(packed)
    assert isinstance(ckpt, PackedCheckpoint) and ckpt.scheme == scheme

    # The same weights written as a plain checkpoint (what a client would hold after dequantizing).
    plain = tmp_path / "plain" / "SmolLM2-135M"
    plain.mkdir(parents=True)
    write_file(plain / "model.safetensors", {n: np.asarray(ckpt.read(n)) for n in ckpt.tensor_names()})
    for f in packed.iterdir():
        if f.suffix == ".json" and f.name != "config.json":
            shutil.copyfile(f, plain / f.name)
    (plain / "config.json").write_text(json.dumps(ckpt.config))

    ours = convert_model(packed, tmp_path / "packed.gguf", out_type="f32")
    ref = convert_model(plain, tmp_path / "plain.gguf", out_type="f32")
    assert ours["n_tensors"] == ref["n_tensors"] == 272
    a, b = _tensors(tmp_path / "packed.gguf"), _tensors(tmp_path / "plain.gguf")
    assert list(a) == list(b) and all(a[n] == b[n] for n in a)

    # And those weights really are the format's dequantization of what is stored (spot-check a layer).
    module = "model.layers.3.mlp.down_proj"
    parts = {n.removeprefix(module + "."): ckpt.inner.read(n) for n in ckpt.inner.tensor_names() if n.startswith(module + ".")}
    deq = get_format(fmt).dequantize(parts, scheme)
    assert np.array_equal(np.asarray(ckpt.read(f"{module}.weight"), dtype=np.float32), deq)
    src = np.asarray(open_checkpoint(smollm2_dir).read(f"{module}.weight"), dtype=np.float32)
    rel = np.abs(deq - src).mean() / np.abs(src).mean()
    assert 0 < rel < (0.25 if bits == 3 else 0.15)
