#!/usr/bin/env python3
"""llm-compressor's own GPTQ on one weight matrix, for tests/test_gptq.py (run with the interpreter of the
venv `make install-ref` builds, where llmcompressor is installed: ~/.cache/quantcli/venv-llmc).

Input .npz: `weight` float32 (out, in), `inputs` float32 (batches, tokens, in). The pieces are
llm-compressor's, called as GPTQModifier calls them: `accumulate_hessian` once per batch on an
nn.Linear, the Hessian divided by its sample count (`prepare_batch`), the default weight observer
(`memoryless_minmax`) for the group scales, then `quantize_weight`. Output .npz: `quantized` (the
fake-quantized weight it returns), `scales` (out, in / group), `codes` int8 = rint(quantized / scale),
`fallback` (True when its Cholesky failed and it used round-to-nearest).

Usage: reference_gptq.py IN.npz OUT.npz --bits 4 --group-size 64 --damp 0.01 --block-size 128
       [--actorder none|static]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--actorder", choices=("none", "static"), default="none")
    args = parser.parse_args(argv)

    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian
    from llmcompressor.observers import Observer

    torch.manual_seed(0)
    data = np.load(args.inp)
    weight = torch.from_numpy(np.ascontiguousarray(data["weight"], dtype=np.float32))
    inputs = torch.from_numpy(np.ascontiguousarray(data["inputs"], dtype=np.float32))
    out_features, in_features = weight.shape
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)

    qargs = QuantizationArgs(
        num_bits=args.bits,
        type="int",
        symmetric=True,
        strategy="group",
        group_size=args.group_size,
        actorder=None if args.actorder == "none" else "static",
    )
    with torch.no_grad():
        hessian = make_empty_hessian(linear)
        samples = torch.zeros(())
        for batch in inputs:  # (tokens, in): one sample of one sequence per call, as a forward hook sees it
            hessian, samples = accumulate_hessian(batch.unsqueeze(0), linear, hessian, samples)
        hessian = hessian / samples

        observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
        observer(linear.weight)
        qparams = observer.get_qparams()
        quantized, _losses, fallback = quantize_weight(
            weights=linear.weight.detach().clone().unsqueeze(0),
            hessians=hessian.unsqueeze(0),
            scale=qparams["scale"].unsqueeze(0),
            zero_point=qparams["zero_point"].unsqueeze(0),
            global_scale=None,
            quant_args=qargs,
            blocksize=args.block_size,
            percdamp=args.damp,
        )
    quantized = quantized[0].numpy().astype(np.float32)
    scales = qparams["scale"].numpy().astype(np.float32)
    per_column = np.repeat(scales, args.group_size, axis=1)
    codes = np.rint(quantized / per_column).astype(np.int8)
    np.savez(args.out, quantized=quantized, scales=scales, codes=codes, fallback=bool(fallback[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
