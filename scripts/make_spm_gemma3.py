#!/usr/bin/env python3
"""Write a small random Gemma 3 (Gemma3ForCausalLM) HF checkpoint with a trained SentencePiece vocabulary.

The model is the one tests/test_runtime_llamacpp_arch.py checks against llama.cpp (6 layers, rows of 256,
seed 0), built by tests/tiny_models.py; the vocabulary is tests/spm_fixture.py's: byte fallback, control
pieces and Gemma 3's user-defined whitespace runs. Needs torch and transformers (`make install-ref`).

Usage: make_spm_gemma3.py OUT_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_models import make_arch_checkpoint  # noqa: E402  (tests/ is put on sys.path just above)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (created; must not exist)")
    args = parser.parse_args()
    if args.out_dir.exists():
        parser.error(f"{args.out_dir} exists")
    print(make_arch_checkpoint("gemma3", args.out_dir, bpe_tokenizer_dir=None))


if __name__ == "__main__":
    main()
