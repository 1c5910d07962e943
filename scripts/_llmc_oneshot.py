#!/usr/bin/env python3
"""llm-compressor's `oneshot` GPTQ on a Hugging Face checkpoint, for scripts/measure_calibration.py (run with
the interpreter of the llm-compressor venv, ~/.cache/quantcli/venv-llmc). (Named with a leading underscore so
bench.py does not run it as a section.)

The calibration set is given as token windows (an .npy of int64 `(samples, seq_len)`, quantcli's own
`calibration_samples`), so both tools see the same tokens. The recipe is GPTQModifier on every Linear but
`lm_head`, 4-bit symmetric integer weights, group `--group-size`, its default block size and damping;
`--actorder static` is its default, `none` turns act-order off. The compressed checkpoint
(`pack-quantized` compressed-tensors) is written to OUT with the source's tokenizer files.

Usage: _llmc_oneshot.py MODEL SAMPLES.npy OUT --group-size 64 [--actorder static|none] [--damp 0.01]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("samples", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--actorder", choices=("static", "none"), default="static")
    parser.add_argument("--damp", type=float, default=0.01)
    args = parser.parse_args(argv)

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from transformers import AutoModelForCausalLM

    windows = np.load(args.samples)
    dataset = Dataset.from_dict(
        {"input_ids": windows.tolist(), "attention_mask": np.ones_like(windows).tolist()}
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    weights = {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": args.group_size,
    }
    recipe = GPTQModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
        ignore=["lm_head"],
        actorder="static" if args.actorder == "static" else None,
        dampening_frac=args.damp,
    )
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        max_seq_length=int(windows.shape[1]),
        num_calibration_samples=int(windows.shape[0]),
        shuffle_calibration_samples=False,
    )
    model.save_pretrained(args.out, save_compressed=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                 "merges.txt", "generation_config.json"):
        if (args.model / name).exists():
            shutil.copy2(args.model / name, args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
