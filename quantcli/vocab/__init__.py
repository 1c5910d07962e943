"""Tokenizer -> GGUF metadata, exactly as llama.cpp's convert_hf_to_gguf.py writes it.

API (agreed with convert-core, who write the GGUF):

    from quantcli.vocab import read_vocab, MetadataEntry, VocabMetadata

    vocab: VocabMetadata = read_vocab(model_dir, config)   # config = the parsed config.json
    for entry in vocab.entries:                             # already in the converter's key order
        writer.add(entry.key, entry.value, entry.vtype, entry.sub_type)

* `entries` are the `tokenizer.*` keys the converter's `set_vocab()` writes for that architecture, in the
  order they appear in its output file (a key the converter writes twice keeps its first position and its
  last value, as GGUFWriter's dict does). The converter calls set_vocab() after
  `general.quantization_version`, so apply them after every other key you write.
* `MetadataEntry.vtype` is the GGUF value type; for arrays `vtype` is ARRAY and `sub_type` the element type.
  Values: str, bool, int, float, or lists of str / int / float.
* The recipe (which of SentencePiece / GPT-2 BPE, and the architecture's extra keys) follows the converter
  class chosen by `config["architectures"][0]` (see `RECIPES` in quantcli/vocab/recipes.py).
* Errors: a missing tokenizer -> `InputMissing`; an unrecognised BPE pre-tokenizer, an architecture
  without a recipe, or a tokenizer format we do not port (e.g. Llama-HF byte-fallback BPE without
  tokenizer.model) -> `Unsupported`, one line. Never a silent default.

What we write and why: formats/tokenizer-metadata.md.
"""

from __future__ import annotations

from quantcli.vocab.metadata import MetadataEntry, VocabMetadata
from quantcli.vocab.recipes import RECIPES, read_vocab

__all__ = ["RECIPES", "MetadataEntry", "VocabMetadata", "read_vocab"]
