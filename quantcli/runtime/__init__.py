"""NumPy reference runtime: forward pass, tokenizer, perplexity/KLD, imatrix, verification."""

from __future__ import annotations

from pathlib import Path

from quantcli.errors import InputInvalid, InputMissing, Unsupported
from quantcli.runtime.hf import HFSource
from quantcli.runtime.model import KVCache, Model
from quantcli.runtime.tokenizer import Tokenizer, from_gguf_metadata, from_hf_dir, rebuildable_from_metadata
from quantcli.runtime.weights import GGUFSource, TensorSource


def open_source(path: Path | str) -> TensorSource:
    """A GGUF file, or an HF checkpoint directory mapped to GGUF names in memory."""
    path = Path(path)
    if path.is_dir():
        return HFSource(path)
    if not path.exists():
        raise InputMissing(f"{path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise InputInvalid(f"{path} is neither a GGUF file nor an HF checkpoint directory")
    return GGUFSource(path)


def load_tokenizer(path: Path | str, source: TensorSource | None = None) -> Tokenizer:
    """The model's tokenizer as llama.cpp runs it: from a GGUF's metadata, or for an HF directory from the
    metadata convert would write for it. An HF tokenizer convert cannot describe (a pre-tokenizer llama.cpp
    does not know, no tokenizer.model for a SentencePiece model) is run through its own library instead:
    there is no llama.cpp behaviour to match for a model llama.cpp cannot load."""
    path = Path(path)
    if source is None:
        source = open_source(path)
    if not isinstance(source, HFSource):
        return from_gguf_metadata(source.metadata)
    try:
        md = source.vocab_metadata()
    except (Unsupported, InputMissing):
        return from_hf_dir(path)
    if not rebuildable_from_metadata(md):
        tokenizer = from_hf_dir(path)
        # The GGUF converter's decisions (quantcli.vocab) win where it could read them.
        if isinstance(md.get("tokenizer.ggml.bos_token_id"), int):
            tokenizer.bos_id = md["tokenizer.ggml.bos_token_id"]
        if isinstance(md.get("tokenizer.ggml.add_bos_token"), bool):
            tokenizer.add_bos = md["tokenizer.ggml.add_bos_token"] and tokenizer.bos_id is not None
        return tokenizer
    return from_gguf_metadata(md)


def open_model(path: Path | str, emulate_ggml: bool = True) -> tuple[Model, Tokenizer]:
    source = open_source(path)
    return Model(source, emulate_ggml=emulate_ggml), load_tokenizer(path, source)


__all__ = ["KVCache", "Model", "Tokenizer", "open_model", "open_source", "load_tokenizer"]
