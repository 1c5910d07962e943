"""quantcli: Hugging Face checkpoints to llama.cpp-exact quantized files."""

__version__ = "0.1.0"
