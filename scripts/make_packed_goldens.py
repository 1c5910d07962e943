"""Regenerate formats/packed-golden.json: packed words computed (or decoded) by each format's real client.

Needs the client environment (`make install-clients`): compressed-tensors (torch), mlx[cpu], gptqmodel.
The fast tests check our NumPy packer against the committed file; tests/test_packed_clients.py re-runs this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "formats" / "packed-golden.json"


def levels(bits: int, n: int = 64) -> np.ndarray:
    """A deterministic row of unsigned codes covering 0 and 2**bits - 1 in each 32-group."""
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 1 << bits, size=(2, n))
    q[:, 0], q[:, 1], q[:, 32], q[:, 33] = 0, (1 << bits) - 1, 0, (1 << bits) - 1
    return q


def ct_words(bits: int, q: np.ndarray) -> list[list[int]]:
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    signed = torch.tensor(q - (1 << (bits - 1)), dtype=torch.int8)
    return (pack_to_int32(signed, bits).numpy().view(np.uint32)).tolist()


def mlx_words(bits: int, q: np.ndarray) -> list[list[int]]:
    """MLX's quantizer may flip the grid (negative scale), so the client DECODES our words instead:
    mx.dequantize with scale 1 and bias 0 must give back exactly the codes."""
    import mlx.core as mx

    from quantcli.quants.packed.bits import pack_rows

    words = pack_rows(q, bits)
    ones = mx.ones((q.shape[0], q.shape[1] // 32), dtype=mx.float32)
    back = np.array(mx.dequantize(mx.array(words), ones, mx.zeros_like(ones), group_size=32, bits=bits))
    assert np.array_equal(back, q.astype(np.float32)), f"MLX decodes {bits}-bit words differently"
    return words.tolist()


def gptq_words(bits: int, q: np.ndarray) -> list[list[int]]:
    """GPTQ packs the input dim of (in, out) codes: words = the client's own pack of q.T columns."""
    import torch
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    n_in, n_out = q.shape[1], q.shape[0]
    layer = TorchLinear(bits=bits, group_size=n_in, sym=True, desc_act=False, in_features=n_in,
                        out_features=n_out, bias=False, register_buffers=True)
    linear = torch.nn.Linear(n_in, n_out, bias=False)
    zero = 1 << (bits - 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(q - zero, dtype=torch.float32))
    scales = torch.ones((1, n_out), dtype=torch.float16)
    zeros = torch.full((1, n_out), zero, dtype=torch.int32)
    layer.pack_original(linear, scales.T, zeros.T, g_idx=torch.zeros(n_in, dtype=torch.int32))
    return layer.qweight.numpy().view(np.uint32).tolist()


def main() -> int:
    golden: dict[str, dict[str, object]] = {}
    for bits in (2, 4, 8):
        golden[f"ct/{bits}"] = {"codes": levels(bits).tolist(), "words": ct_words(bits, levels(bits))}
    for bits in (2, 3, 4, 5, 6, 8):
        golden[f"mlx/{bits}"] = {"codes": levels(bits).tolist(), "words": mlx_words(bits, levels(bits))}
    for bits in (4, 8):
        golden[f"gptq/{bits}"] = {"codes": levels(bits).tolist(), "words": gptq_words(bits, levels(bits))}
    text = json.dumps(golden, separators=(",", ":"))
    if "--check" in sys.argv:
        same = json.loads(GOLDEN.read_text()) == json.loads(text)
        print("golden vectors match the clients" if same else "golden vectors DIFFER from the clients")
        return 0 if same else 1
    GOLDEN.write_text(text + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
