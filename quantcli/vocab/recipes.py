"""Which tokenizer keys each converter model class writes, in which order (its `set_vocab()`).

| HF architectures | converter class | set_vocab |
|---|---|---|
| LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, GraniteForCausalLM, SmolLM3ForCausalLM | LlamaModel (GraniteModel, SmolLM3Model) | add_space_prefix from tokenizer_config; SentencePiece, else GPT-2 BPE; vocab 32016 (CodeLlama) adds eot 32010; vocab 49152 forces add_bos_token false |
| Qwen2ForCausalLM, Qwen3ForCausalLM | Qwen2Model / Qwen3Model | SentencePiece, else GPT-2 BPE |
| Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM | Qwen2MoeModel / Qwen3MoeModel / OlmoeModel | TextModel's default: GPT-2 BPE |
| GemmaForCausalLM | GemmaModel | SentencePiece; eot 107; add_space_prefix false |
| Gemma2ForCausalLM | Gemma2Model | SentencePiece; add_space_prefix false |
| Gemma3ForCausalLM | Gemma3Model | SentencePiece + add_space_prefix false, else GPT-2 BPE |
| Olmo2ForCausalLM | Olmo2Model | GPT-2 BPE (TextModel's) |
| GptOssForCausalLM | GptOssModel | GPT-2 BPE |
| Phi3ForCausalLM | Phi3MiniModel | GPT-2 BPE if tokenizer_class is GPT2Tokenizer, else its own SentencePiece variant |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantcli.errors import InputMissing, Unsupported
from quantcli.vocab.bpe import vocab_base
from quantcli.vocab.metadata import VocabMetadata, read_json_object
from quantcli.vocab.special import SpecialVocab
from quantcli.vocab.spm import vocab_sentencepiece

Recipe = Callable[[Path, dict[str, Any], VocabMetadata], None]


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The converter moves text_config to the root level (TextModel.__init__)."""
    if isinstance(config.get("text_config"), dict):
        return {**config, **config["text_config"]}
    return config


def _tokenizer_config(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    return read_json_object(path)


def _set_vocab_gpt2(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    tokens, types, pre = vocab_base(model_dir, hp.get("vocab_size"))
    meta.add_string("tokenizer.ggml.model", "gpt2")
    meta.add_string("tokenizer.ggml.pre", pre)
    meta.add_array("tokenizer.ggml.tokens", tokens)
    meta.add_array("tokenizer.ggml.token_type", types)
    SpecialVocab(model_dir, load_merges=True).add_to(meta)


def _write_sentencepiece(
    model_dir: Path, meta: VocabMetadata, tokens: list[str], scores: list[float], types: list[int]
) -> None:
    meta.add_string("tokenizer.ggml.model", "llama")
    meta.add_string("tokenizer.ggml.pre", "default")
    meta.add_array("tokenizer.ggml.tokens", tokens)
    meta.add_array("tokenizer.ggml.scores", scores)
    meta.add_array("tokenizer.ggml.token_type", types)
    SpecialVocab(model_dir, n_vocab=len(tokens)).add_to(meta)


def _sentencepiece_vocab_size(hp: dict[str, Any]) -> int | None:
    # find_hparam(["vocab_size_per_layer_input", "vocab_size"]) or the model's own size
    for key in ("vocab_size_per_layer_input", "vocab_size"):
        if key in hp:
            return hp[key] or None
    return None


def _set_vocab_sentencepiece(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    tokens, scores, types = vocab_sentencepiece(model_dir, _sentencepiece_vocab_size(hp))
    _write_sentencepiece(model_dir, meta, tokens, scores, types)


def _has_spm(model_dir: Path) -> bool:
    return (model_dir / "tokenizer.model").is_file()


def _require_tokenizer(model_dir: Path) -> None:
    if not (model_dir / "tokenizer.json").is_file() and not _has_spm(model_dir):
        raise InputMissing(
            f"{model_dir}: no tokenizer.json or tokenizer.model (needed for the GGUF vocabulary)"
        )


def _spm_else_gpt2(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    _require_tokenizer(model_dir)
    if _has_spm(model_dir):
        _set_vocab_sentencepiece(model_dir, hp, meta)
    else:
        _set_vocab_gpt2(model_dir, hp, meta)


def _is_llama_hf_bpe(model_dir: Path) -> bool:
    """LlamaHfVocab's test: a byte-fallback BPE tokenizer.json with a Sequence decoder (not Llama 3)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    tokenizer = read_json_object(path)
    model = tokenizer.get("model")
    if not isinstance(model, dict):  # malformed: the tokenizers library reports it when the vocab is read
        return False
    is_llama3 = (
        model.get("type") == "BPE"
        and model.get("ignore_merges", False)
        and not model.get("byte_fallback", True)
    )
    if is_llama3:
        return False
    decoder = tokenizer.get("decoder") or {}
    return (
        model.get("type") == "BPE"
        and bool(model.get("byte_fallback", False))
        and isinstance(decoder, dict)
        and decoder.get("type") == "Sequence"
    )


def recipe_llama(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    _require_tokenizer(model_dir)
    tokenizer_config = _tokenizer_config(model_dir)
    if tokenizer_config and (add_prefix_space := tokenizer_config.get("add_prefix_space")) is not None:
        meta.add_bool("tokenizer.ggml.add_space_prefix", add_prefix_space)
    if _has_spm(model_dir):
        _set_vocab_sentencepiece(model_dir, hp, meta)
    elif _is_llama_hf_bpe(model_dir):
        raise Unsupported(
            f"{model_dir}: byte-fallback BPE tokenizer.json without tokenizer.model (llama.cpp's LlamaHfVocab path) "
            "is not supported"
        )
    else:
        _set_vocab_gpt2(model_dir, hp, meta)
    vocab_size = hp.get("vocab_size", 32000)
    if vocab_size == 32016:  # CodeLlama: prefix/suffix/middle have no GGUF key; eot does
        extra = SpecialVocab(
            model_dir, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"]
        )
        for typ, token_id in (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)):
            extra._set_special_token(typ, token_id)
        extra.add_to(meta)
    if vocab_size == 49152:  # the converter's "granite small models" rule (hits SmolLM2 as well)
        meta.add_bool("tokenizer.ggml.add_bos_token", False)


def recipe_gpt2(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    if not (model_dir / "tokenizer.json").is_file():
        raise InputMissing(f"{model_dir}: no tokenizer.json (needed for the GGUF vocabulary)")
    _set_vocab_gpt2(model_dir, hp, meta)


def recipe_qwen2(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    _spm_else_gpt2(model_dir, hp, meta)


def recipe_text_model(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    """TextModel.set_vocab, for converter classes that do not override it."""
    _require_tokenizer(model_dir)
    _set_vocab_gpt2(model_dir, hp, meta)


def recipe_gemma(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    if not _has_spm(model_dir):
        raise InputMissing(f"{model_dir}: tokenizer.model not found (Gemma uses SentencePiece)")
    _set_vocab_sentencepiece(model_dir, hp, meta)
    extra = SpecialVocab(
        model_dir, load_merges=False, special_token_types=["prefix", "suffix", "middle", "fsep", "eot"]
    )
    for typ, token_id in (("prefix", 67), ("suffix", 69), ("middle", 68), ("fsep", 70), ("eot", 107)):
        extra._set_special_token(typ, token_id)
    extra.chat_template = None  # the converter does not add it twice
    extra.add_to(meta)
    meta.add_bool("tokenizer.ggml.add_space_prefix", False)


def recipe_gemma2(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    if not _has_spm(model_dir):
        raise InputMissing(f"{model_dir}: tokenizer.model not found (Gemma 2 uses SentencePiece)")
    _set_vocab_sentencepiece(model_dir, hp, meta)
    meta.add_bool("tokenizer.ggml.add_space_prefix", False)


def recipe_gemma3(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    _require_tokenizer(model_dir)
    if _has_spm(model_dir):
        _set_vocab_sentencepiece(model_dir, hp, meta)
        meta.add_bool("tokenizer.ggml.add_space_prefix", False)
    else:
        _set_vocab_gpt2(model_dir, hp, meta)


def recipe_phi3(model_dir: Path, hp: dict[str, Any], meta: VocabMetadata) -> None:
    tokenizer_config = _tokenizer_config(model_dir)
    if tokenizer_config is not None and tokenizer_config.get("tokenizer_class") == "GPT2Tokenizer":
        _set_vocab_gpt2(model_dir, hp, meta)
        return
    if not _has_spm(model_dir):
        raise InputMissing(f"{model_dir}: tokenizer.model not found (Phi-3 uses SentencePiece)")
    tokens, scores, types = vocab_sentencepiece(model_dir, hp.get("vocab_size"), phi3_rules=True)
    _write_sentencepiece(model_dir, meta, tokens, scores, types)


RECIPES: dict[str, Recipe] = {
    "LlamaForCausalLM": recipe_llama,
    "LLaMAForCausalLM": recipe_llama,
    "MistralForCausalLM": recipe_llama,
    "MixtralForCausalLM": recipe_llama,
    "GraniteForCausalLM": recipe_llama,
    "SmolLM3ForCausalLM": recipe_llama,
    "Olmo2ForCausalLM": recipe_gpt2,
    "Qwen2ForCausalLM": recipe_qwen2,
    "Qwen3ForCausalLM": recipe_qwen2,
    "Qwen2MoeForCausalLM": recipe_text_model,
    "Qwen3MoeForCausalLM": recipe_text_model,
    "OlmoeForCausalLM": recipe_text_model,
    "GptOssForCausalLM": recipe_gpt2,
    "GemmaForCausalLM": recipe_gemma,
    "Gemma2ForCausalLM": recipe_gemma2,
    "Gemma3ForCausalLM": recipe_gemma3,
    "Phi3ForCausalLM": recipe_phi3,
}


def read_vocab(model_dir: Path, config: dict[str, Any]) -> VocabMetadata:
    """The `tokenizer.*` GGUF metadata convert_hf_to_gguf.py would write for this checkpoint."""
    model_dir = Path(model_dir)
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    recipe = RECIPES.get(arch) if arch else None
    if recipe is None:
        raise Unsupported(
            f"{model_dir}: no tokenizer recipe for architecture {arch!r} (supported: {', '.join(sorted(RECIPES))})"
        )
    meta = VocabMetadata()
    recipe(model_dir, _hparams(config), meta)
    return meta
