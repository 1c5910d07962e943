"""Sources a job reads: an HF checkpoint seen as the converter's GGUF (`hf`), or a GGUF file (`gguf`)."""
