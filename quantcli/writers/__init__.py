"""Writers: GGUF (through the gguf package), packed safetensors, streaming safetensors."""
