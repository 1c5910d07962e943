"""make_plan: one decision per tensor, exactly as llama-quantize would decide (llama_tensor_get_type)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from quantcli.errors import FallbackRefused, Unsupported, UsageError
from quantcli.gguf_constants import GGMLQuantizationType as T
from quantcli.plan.ftypes import Ftype, parse_ftype
from quantcli.plan.rules import (
    ATTN_V_LIKE,
    Category,
    MixtureState,
    ModelInfo,
    NoFallback,
    block_size,
    category_of,
    fallback_type,
    is_quantized_type,
    mixture_type,
    n_dims,
    quantization_block_reason,
)
from quantcli.writers.gguf import pad, tensor_nbytes

# sscanf("blk.%d.") semantics: the number counts even if the dot after it is missing.
_LAYER_PREFIX = re.compile(r"^blk\.\s*([+-]?\d+)")

# Types whose quantizer refuses to run without an imatrix (tensor_requires_imatrix).
_IMATRIX_REQUIRED = frozenset({T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S})

# The reason of a tensor --pure gives the recipe's type (no type option names it); plan/target.py reads it
# to tell the tensors a size target may choose from the fixed ones.
PURE_REASON = "--pure: recipe default"


@dataclass(frozen=True)
class TensorSpec:
    """A source tensor: name, GGUF-order shape (ne[0] = row length) and its current type."""

    name: str
    ne: tuple[int, ...]
    type: T

    @classmethod
    def from_numpy_shape(cls, name: str, shape: Sequence[int], qtype: T) -> TensorSpec:
        return cls(name, tuple(int(s) for s in reversed(shape)), qtype)

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


@dataclass
class Overrides:
    """llama-quantize's options that change tensor types (names as on its command line)."""

    pure: bool = False
    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    tensor_types: list[tuple[str, T]] = field(default_factory=list)  # (--tensor-type REGEX, TYPE), CLI order
    leave_output_tensor: bool = False
    has_imatrix: bool = False  # an imatrix is given (after --include/--exclude-weights filtering)
    kv_overrides: list = field(default_factory=list)  # --override-kv (plan.options.KvOverride), CLI order


@dataclass(frozen=True)
class TensorDecision:
    name: str
    ne: tuple[int, ...]
    src_type: T
    type: T
    reason: str
    fell_back: bool = False
    fallback_from: T | None = None
    requires_imatrix: bool = False

    @property
    def fallback_why(self) -> str | None:
        if not self.fell_back or self.fallback_from is None:
            return None
        return f"row {self.ne[0]} not a multiple of {block_size(self.fallback_from)}: {self.fallback_from.name} -> {self.type.name}"

    @property
    def changes(self) -> bool:
        """llama-quantize re-encodes the data only when the type changes (else it copies the bytes)."""
        return self.type != self.src_type

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)

    @property
    def src_nbytes(self) -> int:
        return tensor_nbytes(self.src_type, self.ne)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.ne)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "shape": list(self.ne),
            "src_type": self.src_type.name,
            "type": self.type.name,
            "reason": self.reason,
            "fell_back": self.fell_back,
            "fallback_from": None if self.fallback_from is None else self.fallback_from.name,
            "fallback_why": self.fallback_why,
            "bytes": self.nbytes,
        }


@dataclass
class Plan:
    recipe: Ftype
    model: ModelInfo
    decisions: list[TensorDecision]  # in llama-quantize's output order
    overrides: Overrides
    alignment: int = 32

    @property
    def n_fallback(self) -> int:
        return sum(d.fell_back for d in self.decisions)

    @property
    def fallbacks(self) -> list[TensorDecision]:
        return [d for d in self.decisions if d.fell_back]

    @property
    def n_elements(self) -> int:
        return sum(d.n_elements for d in self.decisions)

    @property
    def tensor_bytes(self) -> int:
        """Sum of tensor sizes (what llama-quantize reports as 'quant size')."""
        return sum(d.nbytes for d in self.decisions)

    @property
    def src_tensor_bytes(self) -> int:
        return sum(d.src_nbytes for d in self.decisions)

    @property
    def data_bytes(self) -> int:
        """The data section: every tensor padded to the alignment."""
        return sum(pad(d.nbytes, self.alignment) for d in self.decisions)

    @property
    def bits_per_weight(self) -> float:
        return self.tensor_bytes * 8.0 / max(1, self.n_elements)

    def by_name(self) -> dict[str, TensorDecision]:
        return {d.name: d for d in self.decisions}

    def type_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for d in self.decisions:
            hist[d.type.name] = hist.get(d.type.name, 0) + 1
        return dict(sorted(hist.items()))

    def refuse_fallbacks(self) -> None:
        """--strict: refuse before any compute if any tensor needs a fallback type."""
        if self.fallbacks:
            first = self.fallbacks[0]
            raise FallbackRefused(
                f"--strict: {self.n_fallback} tensor(s) need a fallback type, e.g. {first.name} "
                f"(row {first.ne[0]}): {first.fallback_from.name if first.fallback_from else '?'} -> {first.type.name}"
            )

    def file_size(self, kv_bytes: int) -> int:
        """Size of the GGUF file this plan produces, given the encoded size of its KV section."""
        return gguf_file_size(kv_bytes, self.decisions, self.alignment)

    def to_json(self) -> dict[str, object]:
        return {
            "recipe": self.recipe.name,
            "file_type": self.recipe.value,
            "arch": self.model.arch,
            "n_tensors": len(self.decisions),
            "n_fallback": self.n_fallback,
            "n_elements": self.n_elements,
            "tensor_bytes": self.tensor_bytes,
            "bits_per_weight": self.bits_per_weight,
            "types": self.type_histogram(),
            "tensors": [d.to_json() for d in self.decisions],
        }


def tensor_info_bytes(name: str, ne: tuple[int, ...]) -> int:
    """Encoded size of one GGUF tensor info: name, n_dims, ne[n_dims], type, offset."""
    return 8 + len(name.encode("utf-8")) + 4 + 8 * n_dims(ne) + 4 + 8


def gguf_file_size(kv_bytes: int, decisions: Sequence[TensorDecision], alignment: int = 32) -> int:
    """Header (magic, version, counts) + KVs + tensor infos, padded, + every tensor padded."""
    meta = 24 + kv_bytes + sum(tensor_info_bytes(d.name, d.ne) for d in decisions)
    return pad(meta, alignment) + sum(pad(d.nbytes, alignment) for d in decisions)


def layer_sort_key(name: str) -> tuple[int, bytes]:
    """weight_name_comparer in llama-model-loader.h: (blk number or -1, name byte-wise)."""
    m = _LAYER_PREFIX.match(name)
    return (int(m.group(1)) if m else -1, name.encode("utf-8"))


def llama_order(tensors: Iterable[TensorSpec]) -> list[TensorSpec]:
    return sorted(tensors, key=lambda t: layer_sort_key(t.name))


def compile_tensor_type_patterns(patterns: Sequence[tuple[str, T]]) -> list[tuple[re.Pattern[str], T]]:
    compiled = []
    for pattern, qtype in patterns:
        try:
            # llama-quantize lower-cases the pattern (std::regex, ECMAScript: close to Python's re for the
            # patterns people use: dots, anchors, alternation, classes, quantifiers).
            compiled.append((re.compile(pattern.lower()), qtype))
        except re.error as exc:
            raise UsageError(f"--tensor-type {pattern!r}: invalid regular expression ({exc})") from None
    return compiled


def make_plan(
    model: ModelInfo | str,
    tensors: Sequence[TensorSpec],
    recipe: Ftype | str,
    overrides: Overrides | None = None,
    *,
    check_patterns: bool = True,
) -> Plan:
    """Decide every tensor's type as llama-quantize would for `recipe`.

    `tensors` may come in any order; decisions come back in llama-quantize's processing/output order
    (layer number, then name), which is also the order its layer counters see. `model` supplies the
    hyper-parameters the rules read (block_count, heads, experts); a bare architecture name is accepted
    only for recipes whose rules do not depend on them.
    """
    overrides = overrides or Overrides()
    ftype = parse_ftype(recipe) if isinstance(recipe, str) else recipe
    if isinstance(model, str):
        model = ModelInfo(arch=model, n_layer=0)
    ordered = llama_order(tensors)
    names = [t.name for t in ordered]
    if len(set(names)) != len(names):
        raise UsageError("duplicate tensor names in the tensor list")
    patterns = compile_tensor_type_patterns(overrides.tensor_types)
    if check_patterns:
        for (pattern, _), (raw, _) in zip(patterns, overrides.tensor_types, strict=True):
            if not any(pattern.search(n) for n in names):
                raise UsageError(f"--tensor-type {raw!r} matches no tensor of this model")

    cats = [category_of(n) for n in names]
    state = MixtureState(
        model=model,
        has_imatrix=overrides.has_imatrix,
        has_tied_embeddings=Category.OUTPUT not in cats,
        output_tensor_type=overrides.output_tensor_type,
        token_embedding_type=overrides.token_embedding_type,
        n_attention_wv=sum(c in ATTN_V_LIKE for c in cats),
        n_ffn_down=model.n_layer,
        n_ffn_gate=model.n_layer,
        n_ffn_up=model.n_layer,
    )
    default = ftype.default_type
    decisions = []
    for spec, cat in zip(ordered, cats, strict=True):
        decisions.append(_decide(state, spec, cat, ftype, default, overrides, patterns))
    return Plan(recipe=ftype, model=model, decisions=decisions, overrides=overrides)


def _decide(
    st: MixtureState,
    spec: TensorSpec,
    cat: Category,
    ftype: Ftype,
    default: T,
    ov: Overrides,
    patterns: list[tuple[re.Pattern[str], T]],
) -> TensorDecision:
    """llama_tensor_get_type + tensor_requires_imatrix for one tensor."""
    name, ne = spec.name, spec.ne
    blocked = quantization_block_reason(name, ne, st.model.arch, ov.leave_output_tensor)
    if blocked is not None:
        return TensorDecision(name, ne, spec.type, spec.type, f"kept: {blocked}")

    def finish(new_type: T, reason: str, fell_back: bool = False, src: T | None = None) -> TensorDecision:
        required = (
            new_type in _IMATRIX_REQUIRED or (new_type == T.Q2_K and ftype.name == "Q2_K_S")
        ) and name not in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")
        return TensorDecision(name, ne, spec.type, new_type, reason, fell_back, src, required)

    if ov.token_embedding_type is not None and cat == Category.TOKEN_EMBD:
        named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns)
        if not named:
            return finish(ov.token_embedding_type, "--token-embedding-type")
    if ov.output_tensor_type is not None and cat == Category.OUTPUT:
        return finish(ov.output_tensor_type, "--output-tensor-type")

    if not ftype.is_quantized:
        return finish(default, f"{ftype.name} recipe")

    new_type, reason = default, "recipe default"
    manual = False
    for pattern, qtype in patterns:
        if pattern.search(name):
            new_type, reason, manual = qtype, f"--tensor-type {pattern.pattern}={qtype.name}", True
            break
    if not manual and not ov.pure:
        try:
            new_type, reason = mixture_type(st, new_type, name, ne, ftype.name, cat)
        except ValueError as exc:
            raise Unsupported(str(exc)) from None
    elif ov.pure and not manual:
        reason = PURE_REASON

    if ne[0] % block_size(new_type):
        try:
            fb = fallback_type(new_type, ne[0])
        except NoFallback as exc:
            raise Unsupported(f"{name}: {exc}") from None
        st.n_fallback += 1
        return finish(fb, reason, True, new_type)
    return finish(new_type, reason)


def quantizable(spec: TensorSpec, arch: str = "", leave_output_tensor: bool = False) -> bool:
    return quantization_block_reason(spec.name, spec.ne, arch, leave_output_tensor) is None


__all__ = [
    "PURE_REASON",
    "Overrides",
    "Plan",
    "TensorDecision",
    "TensorSpec",
    "gguf_file_size",
    "tensor_info_bytes",
    "is_quantized_type",
    "layer_sort_key",
    "llama_order",
    "make_plan",
    "n_dims",
    "pad",
    "quantizable",
    "tensor_nbytes",
]
