"""Special tokens, add_bos/add_eos, merges and the chat template: a port of gguf-py's `SpecialVocab`.

Source: gguf-py/gguf/vocab.py in llama.cpp (vendored in llama-cpp-python 0.3.36). PyPI's gguf 0.19 is an
older copy (no ByteLevel post-processor rule, no normalizer flags): do not use its SpecialVocab instead. The rules are the converter's, including its crude parsing of TemplateProcessing; they are kept
as they are (not "fixed") because our output must equal the converter's key by key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quantcli.errors import InputInvalid
from quantcli.vocab.metadata import VocabMetadata, read_json_object

logger = logging.getLogger(__name__)

DEFAULT_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")

# GGUFWriter has add_<type>_token_id only for these; SpecialVocab skips the others ("No handler").
TOKEN_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's key name
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
}
ADD_TOKEN_KEYS = {
    "bos": "tokenizer.ggml.add_bos_token",
    "eos": "tokenizer.ggml.add_eos_token",
    "sep": "tokenizer.ggml.add_sep_token",
}


def _read_json(path: Path) -> Any:
    return read_json_object(path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(ok: bool, file: Path, what: str, value: Any, expected: str) -> None:
    if not ok:
        raise InputInvalid(f"{file}: {what} is {_short(value)}, expected {expected}")


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def check_tokenizer_json(tokenizer: dict[str, Any], file: Path) -> None:
    """The shape of every tokenizer.json field SpecialVocab walks (the converter's code assumes it and would
    raise AttributeError / TypeError on anything else): refused here, naming the field."""
    model = tokenizer.get("model", {})
    _expect(isinstance(model, dict), file, "model", model, "an object")
    merges = model.get("merges")
    if isinstance(merges, list) and merges:
        _expect(
            all(isinstance(m, str) for m in merges)
            or all(isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m) for m in merges),
            file, "model.merges", merges, 'strings "a b" or pairs of strings',
        )
    normalizers = [tokenizer.get("normalizer")]
    while normalizers:
        norm = normalizers.pop()
        if not norm:
            continue
        _expect(isinstance(norm, dict), file, "a normalizer", norm, "an object")
        if norm.get("type") == "Sequence":
            inner = norm.get("normalizers", [])
            _expect(isinstance(inner, list), file, "normalizer.normalizers", inner, "a list")
            normalizers.extend(inner)
    added = tokenizer.get("added_tokens", [])
    _expect(_objects(added), file, "added_tokens", added, "a list of objects")
    post = tokenizer.get("post_processor")
    if post:
        _expect(isinstance(post, dict), file, "post_processor", post, "an object")
        processors = post.get("processors", [post])
        _expect(_objects(processors), file, "post_processor.processors", processors, "a list of objects")
        for proc in processors:
            for key in ("single", "pair"):
                steps = proc.get(key, [])
                _expect(_objects(steps), file, f"post_processor {key}", steps, "a list of objects")
                for step in steps:
                    for kind in ("SpecialToken", "Sequence"):
                        _expect(isinstance(step.get(kind, {}), dict), file, f"post_processor {key} {kind}",
                                step.get(kind), "an object")
            for key in ("cls", "sep"):
                if key in proc:
                    _expect(isinstance(proc[key], list) and proc[key], file, f"post_processor {key}", proc[key],
                            "a non-empty list")


def check_chat_template(value: Any, file: Path) -> None:
    """chat_template: a string or a list of {"name": str, "template": str} (GGUFWriter.add_chat_template)."""
    if value is None or isinstance(value, str):
        return
    _expect(
        isinstance(value, list)
        and all(isinstance(c, dict) and isinstance(c.get("name", ""), str)
                and isinstance(c.get("template", ""), (str, type(None))) for c in value),
        file, "chat_template", value, 'a string or a list of {"name", "template"} strings',
    )


class SpecialVocab:
    def __init__(
        self,
        path: Path,
        load_merges: bool = False,
        special_token_types: tuple[str, ...] | list[str] | None = None,
        n_vocab: int | None = None,
    ) -> None:
        self.special_token_ids: dict[str, int] = {}
        self.add_special_token: dict[str, bool] = {}
        self.n_vocab = n_vocab
        self.load_merges = load_merges
        self.merges: list[str] = []
        self.chat_template: str | list[dict[str, str]] | None = None
        self.normalizer_lowercase: bool | None = None
        self.normalizer_strip_accents: bool | None = None
        self.special_token_types = tuple(special_token_types or DEFAULT_SPECIAL_TYPES)
        self._load(Path(path))

    # ------------------------------------------------------------------------------------------ output
    def add_to(self, meta: VocabMetadata) -> None:
        """SpecialVocab.add_to_gguf, onto our ordered metadata."""
        if self.merges:
            meta.add_array("tokenizer.ggml.merges", self.merges)
        for typ, tokid in self.special_token_ids.items():
            if typ in TOKEN_ID_KEYS:
                meta.add_uint32(TOKEN_ID_KEYS[typ], tokid)
        for typ, value in self.add_special_token.items():
            if typ in ADD_TOKEN_KEYS:
                meta.add_bool(ADD_TOKEN_KEYS[typ], value)
        if self.chat_template is not None:
            add_chat_template(meta, self.chat_template)
        if self.normalizer_lowercase is not None:
            meta.add_bool("tokenizer.ggml.normalizer.lowercase", self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            meta.add_bool("tokenizer.ggml.normalizer.strip_accents", self.normalizer_strip_accents)

    # ----------------------------------------------------------------------------------------- loading
    def _load(self, path: Path) -> None:
        self._try_load_from_tokenizer_json(path)
        self._try_load_from_config_json(path)
        if self.load_merges and not self.merges:
            self._try_load_merges_txt(path)

    def _try_load_merges_txt(self, path: Path) -> None:
        merges_file = path / "merges.txt"
        if not merges_file.is_file():
            return
        merges: list[str] = []
        with open(merges_file, encoding="utf-8") as fh:
            first_line = next(fh, "").strip()
            if not first_line.startswith("#"):
                fh.seek(0)
            for line in fh:
                parts = line.strip().split(None, 3)
                if len(parts) == 2:
                    merges.append(f"{parts[0]} {parts[1]}")
        self.merges = merges

    def _set_special_token(self, typ: str, tid: Any, source: Path | None = None) -> None:
        if not isinstance(tid, int):
            return
        if tid < 0:  # the converter raises ValueError (a traceback); ours names the file
            raise InputInvalid(f"{source or 'tokenizer'}: invalid value for special token type {typ}: {tid}")
        if self.n_vocab is None or tid < self.n_vocab:
            if typ not in self.special_token_ids:
                self.special_token_ids[typ] = tid
            return
        logger.warning(
            "special token type %s, id %d out of range, must be under %d - skipping", typ, tid, self.n_vocab
        )

    def _parse_normalizer(self, normalizer: dict) -> None:
        kind = normalizer.get("type")
        if kind == "Lowercase":
            self.normalizer_lowercase = True
        elif kind == "StripAccents":
            self.normalizer_strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in normalizer:
                self.normalizer_lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.normalizer_strip_accents = normalizer["strip_accents"]
        elif kind == "Sequence":
            for norm in normalizer.get("normalizers", []):
                self._parse_normalizer(norm)

    def _load_merges_from_tokenizer_json(self, tokenizer: dict) -> None:
        merges = tokenizer.get("model", {}).get("merges")
        if not (isinstance(merges, list) and merges):
            return
        if isinstance(merges[0], str):
            self.merges = merges
        elif isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
            # transformers >= 4.45 writes [a, b] pairs; the GGUF keeps "a b" with spaces inside parts as U+0120.
            self.merges = [
                " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges
            ]
        else:
            raise ValueError("Unknown tokenizer merges format")

    def _try_load_from_tokenizer_json(self, path: Path) -> None:  # noqa: C901 - mirrors the converter
        tokenizer = None
        tokenizer_file = path / "tokenizer.json"
        if tokenizer_file.is_file():
            tokenizer = _read_json(tokenizer_file)
            check_tokenizer_json(tokenizer, tokenizer_file)
            if self.load_merges:
                self._load_merges_from_tokenizer_json(tokenizer)
            if normalizer := tokenizer.get("normalizer"):
                self._parse_normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", {})
        else:
            added_tokens = {}
        tokenizer_config = None
        tokenizer_config_file = path / "tokenizer_config.json"
        if tokenizer_config_file.is_file():
            tokenizer_config = _read_json(tokenizer_config_file)
            check_chat_template(tokenizer_config.get("chat_template"), tokenizer_config_file)
        if tokenizer:
            special_bos = (tokenizer_config or {}).get("bos_token")
            special_cls = (tokenizer_config or {}).get("cls_token")
            special_eos = (tokenizer_config or {}).get("eos_token")
            special_sep = (tokenizer_config or {}).get("sep_token")
            if not special_bos and special_cls and tokenizer_config:
                tokenizer_config["bos_token"] = special_bos = special_cls
            if not special_eos and special_sep and tokenizer_config:
                tokenizer_config["eos_token"] = special_eos = special_sep
            if post_processor := tokenizer.get("post_processor"):
                for processor in post_processor.get("processors", [post_processor]):
                    processor_type = processor.get("type")
                    if processor_type == "ByteLevel":
                        self.add_special_token.setdefault("bos", False)
                        self.add_special_token.setdefault("eos", False)
                    elif processor_type == "RobertaProcessing":
                        self.add_special_token["bos"] = True
                        self.add_special_token["eos"] = True
                        self.add_special_token["sep"] = True
                        if not special_cls and tokenizer_config:
                            special_cls = processor.get("cls", [special_bos])[0]
                            tokenizer_config["cls_token"] = special_cls
                        if not special_sep and tokenizer_config:
                            special_sep = processor.get("sep", [special_eos])[0]
                            tokenizer_config["sep_token"] = special_sep
                        continue
                    elif processor_type == "TemplateProcessing":
                        tmpl_single = processor.get("single", [])
                        tmpl_pair = processor.get("pair", [])
                        special_first = None
                        special_last = None
                        if len(tmpl_single) > 1:
                            if special_first := tmpl_single[0].get("SpecialToken", {}).get("id"):
                                if not tokenizer_config:
                                    special_bos = special_first
                                elif special_first not in (special_bos, special_cls):
                                    if not special_bos:
                                        tokenizer_config["bos_token"] = special_bos = special_first
                                    if not special_cls:
                                        tokenizer_config["cls_token"] = special_cls = special_first
                                self.add_special_token["bos"] = special_first in (special_bos, special_cls)
                            if special_last := tmpl_single[-1].get("SpecialToken", {}).get("id"):
                                if not tokenizer_config:
                                    special_eos = special_last
                                elif special_last != special_eos:
                                    if "eot" not in self.special_token_types:
                                        self.special_token_types = (*self.special_token_types, "eot")
                                        tokenizer_config["eot_token"] = special_eos
                                    elif "eom" not in self.special_token_types:
                                        self.special_token_types = (*self.special_token_types, "eom")
                                        tokenizer_config["eom_token"] = special_eos
                                    tokenizer_config["eos_token"] = special_eos = special_last
                                self.add_special_token["eos"] = special_last == special_eos
                        if tmpl_pair:
                            first_id = tmpl_pair[0].get("SpecialToken", {}).get("id")
                            last_id = tmpl_pair[-1].get("SpecialToken", {}).get("id")
                            seq_start = 1 if special_first and first_id == special_first else 0
                            seq_stop = -1 if special_last and last_id == special_last else None
                            if tmpl_pair := tmpl_pair[slice(seq_start, seq_stop)]:
                                tmpl_a = tmpl_pair[0].get("Sequence", {}).get("id")
                                tmpl_b = tmpl_pair[-1].get("Sequence", {}).get("id")
                                # A [sep] [eos] B
                                if tmpl_a == "A" and tmpl_b == "B" and (tmpl_pair := tmpl_pair[1:-1]):
                                    add_sep = False
                                    if special_entry := tmpl_pair[0].get("SpecialToken", {}).get("id"):
                                        if special_entry in (special_sep, special_eos) and not special_last:
                                            add_sep = True
                                    if len(tmpl_pair) == 2:
                                        if special_entry := tmpl_pair[1].get("SpecialToken", {}).get("id"):
                                            if special_entry in (special_sep, special_eos):
                                                add_sep = True
                                    self.add_special_token["sep"] = add_sep
                                    if add_sep and not special_sep and tokenizer_config:
                                        tokenizer_config["sep_token"] = special_eos
                        continue
        if not tokenizer_config:
            return
        chat_template_alt: str | list[dict[str, str]] | None = None
        chat_template_json = path / "chat_template.json"
        chat_template_jinja = path / "chat_template.jinja"
        if chat_template_jinja.is_file():
            chat_template_alt = chat_template_jinja.read_text(encoding="utf-8")
            if additional := list((path / "additional_chat_templates").glob("*.jinja")):
                chat_template_alt = [{"name": "default", "template": chat_template_alt}]
                for template_path in additional:
                    chat_template_alt.append(
                        {"name": template_path.stem, "template": template_path.read_text(encoding="utf-8")}
                    )
        elif chat_template_json.is_file():
            chat_template_alt = _read_json(chat_template_json).get("chat_template")
            check_chat_template(chat_template_alt, chat_template_json)
        chat_template = tokenizer_config.get("chat_template", chat_template_alt)
        if chat_template is None or isinstance(chat_template, (str, list)):
            self.chat_template = chat_template
        for typ in self.special_token_types:
            add_entry = tokenizer_config.get(f"add_{typ}_token")
            if isinstance(add_entry, bool) and typ not in self.add_special_token:
                self.add_special_token[typ] = add_entry
            entry = tokenizer_config.get(f"{typ}_token")
            if isinstance(entry, str):
                content = entry
            elif isinstance(entry, dict) and isinstance(entry.get("content"), str):
                content = entry["content"]
            else:
                continue
            token_id = next((tok.get("id") for tok in added_tokens if tok.get("content") == content), None)
            self._set_special_token(typ, token_id, path / "tokenizer.json")

    def _try_load_from_config_json(self, path: Path) -> None:
        config_file = path / "config.json"
        if not config_file.is_file():
            return
        config = _read_json(config_file)
        for typ in self.special_token_types:
            token_id = config.get(f"{typ}_token_id")
            if token_id is None and isinstance(config.get("text_config"), dict):
                token_id = config["text_config"].get(f"{typ}_token_id")
            self._set_special_token(typ, token_id, config_file)


def add_chat_template(meta: VocabMetadata, value: str | list[dict[str, str]] | None) -> None:
    """GGUFWriter.add_chat_template: a string, or named templates (`tokenizer.chat_template.<name>`)."""
    if value is None:
        meta.remove("tokenizer.chat_template")
        return
    if not isinstance(value, str):
        default = None
        names: list[str] = []
        for choice in value:
            name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
            template = choice.get("template")
            if name and template is not None:
                if name == "default":
                    default = template
                else:
                    if name not in names:
                        names.append(name)
                    meta.add_string(f"tokenizer.chat_template.{name}", template)
        if names:
            # The converter collects names in a set (order varies with PYTHONHASHSEED); we sort them.
            meta.add_array("tokenizer.chat_templates", sorted(names))
        if default is None:
            return
        value = default
    meta.add_string("tokenizer.chat_template", value)
