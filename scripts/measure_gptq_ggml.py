"""GPTQ on GGML grids against plain imatrix quantization, on real layers of a model (docs/calibration.md).

Runs the NumPy runtime over the default evaluation text in 512-token chunks: the inputs of each chosen
linear give its Hessian over all chunks but the last two, and those two are held out to score
‖(W − Ŵ)Xᵀ‖ with X the held-out inputs (the original model's, not a quantized model's). Prints, per tensor
and damping, GPTQ's error over plain quantization's with imatrix = diag(H)/2 (< 1: GPTQ is better).

    python scripts/measure_gptq_ggml.py ~/.cache/quantcli/fixtures/SmolLM2-135M-offgrid --layers 3,15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from quantcli.quants import dequantize, quantize  # noqa: E402
from quantcli.quants.gptq import Hessian  # noqa: E402
from quantcli.quants.gptq_ggml import gptq_ggml  # noqa: E402
from quantcli.runtime import open_model  # noqa: E402
from quantcli.runtime.evaluate import plan_chunks  # noqa: E402

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
TYPES_32 = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.IQ4_NL]
TYPES_256 = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]


def output_error(weight: np.ndarray, values: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(x @ (weight.astype(np.float64) - values.astype(np.float64)).T))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--layers", default="3,15", help="comma-separated block indices")
    parser.add_argument("--damp", default="0.01,0.1", help="comma-separated damping fractions")
    parser.add_argument("--chunks", type=int, default=40, help="at most this many 512-token chunks")
    parser.add_argument("--types", default="", help="comma-separated GGML types (default: all above that fit)")
    args = parser.parse_args()

    model, tokenizer = open_model(args.model)
    names = [f"blk.{layer}.{linear}.weight" for layer in args.layers.split(",") for linear in LINEARS]
    plan = plan_chunks(tokenizer, (REPO / "quantcli" / "data" / "eval.txt").read_text(), 512, args.chunks)
    calibration = {name: Hessian(model.source.shape(name)[1]) for name in names}
    held_out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    chunk = 0

    def observe(name: str, rows: np.ndarray) -> None:
        if name not in calibration:
            return
        if chunk < plan.n_chunks - 2:
            calibration[name].add(rows)
        else:
            held_out[name].append(np.asarray(rows, dtype=np.float64))

    for chunk in range(plan.n_chunks):
        rows = np.arange(plan.first, plan.n_ctx - 1)
        model.forward(plan.chunk_input(chunk), model.new_cache(plan.n_ctx), output_rows=rows, observer=observe)
    print(f"{plan.n_chunks - 2} calibration chunks, 2 held out, 512 tokens each")

    for name in names:
        weight = model.weight(name).astype(np.float32)
        hessian = calibration[name].matrix
        x = np.concatenate(held_out[name])
        types = TYPES_32 + (TYPES_256 if weight.shape[1] % 256 == 0 else [])
        if args.types:
            types = [t for t in types if t.name in args.types.split(",")]
        for damp in (float(d) for d in args.damp.split(",")):
            ratios = []
            for qtype in types:
                plain = dequantize(quantize(weight, qtype, np.diag(hessian) / 2), qtype, weight.shape)
                ours = gptq_ggml(weight, hessian, qtype, damp=damp).values
                ratio = output_error(weight, ours, x) / output_error(weight, plain, x)
                ratios.append(f"{qtype.name} {ratio:.3f}")
            print(f"{name} {weight.shape} damp {damp}: " + "  ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
