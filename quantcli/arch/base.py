"""Architecture tables: what convert (and the runtime) need to know about one HF model family.

One `ArchSpec` per family, registered by its HF architecture names (`config.json` "architectures"[0]).
Everything is data: tensor-name templates, config defaults, the ordered list of GGUF hyper-parameters
(each a `gguf.GGUFWriter` method + how to compute its value from the effective config), tensor transforms
and runtime traits. The ordered hparam list reproduces the key order and values that llama.cpp's
`convert_hf_to_gguf.py` (conversion/*.py, run with transformers 5.x, whose AutoConfig fills defaults)
writes; `effective_config` stands in for AutoConfig.to_dict().
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, Unsupported

Config = dict[str, Any]
# (gguf.GGUFWriter method name, value). Value None = key not written.
HParamValue = Callable[[Config], Any]


@dataclass(frozen=True)
class HParam:
    """One GGUF key: `writer.<method>(value(cfg))`, skipped when the value is None."""

    method: str
    value: HParamValue


@dataclass(frozen=True)
class TensorTransform:
    """Applied (in table order) to a float32/float16 array whose HF name matches `pattern` (re.search)."""

    pattern: str
    apply: Callable[[np.ndarray, TransformContext], np.ndarray]
    # Shape after `apply`, computed without reading data (None: unchanged).
    out_shape: Callable[[tuple[int, ...], TransformContext], tuple[int, ...]] | None = None
    # True when `apply` only moves values (a permutation of rows): it then also runs on the stored bits, so a
    # tensor kept at its stored type is reordered as stored instead of widened, moved and encoded again.
    reorders_only: bool = False


@dataclass
class TransformContext:
    config: Config
    hf_name: str
    directory: Any  # pathlib.Path of the checkpoint (some transforms read tokenizer files)


@dataclass(frozen=True)
class ExpertStack:
    """Per-expert HF matrices the converter stacks into one 3-D GGUF tensor of shape (n_expert, rows, cols)
    (torch.stack over the expert index), e.g. Mixtral's experts.{xid}.w1 -> blk.{bid}.ffn_gate_exps."""

    hf_template: str  # {bid} = layer, {xid} = expert; without the .weight suffix
    gguf_template: str  # {bid} = layer; without the .weight suffix


@dataclass(frozen=True)
class TensorPart:
    """One GGUF tensor cut from an HF tensor: `select` maps the stored array (float32/float16) to it, and
    `out_shape` gives its shape from the stored shape without reading data."""

    gguf_template: str  # {bid} = layer; with the .weight/.bias suffix
    select: Callable[[np.ndarray], np.ndarray]
    out_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


@dataclass(frozen=True)
class SplitTensor:
    """An HF tensor the converter's modify_tensors renames, slices or transposes into one or more GGUF
    tensors, written in `parts` order where the HF tensor comes (GPT-OSS's stacked experts: gate_up_proj
    -> ffn_gate_exps and ffn_up_exps)."""

    hf_template: str  # {bid} = layer; the full stored name
    parts: tuple[TensorPart, ...]


@dataclass(frozen=True)
class Mxfp4Experts:
    """A stacked expert tensor an MXFP4 checkpoint (config quantization_config.quant_method "mxfp4") stores
    as `{hf_template}_blocks` + `{hf_template}_scales` uint8, passed through as GGML MXFP4. Rows are dealt
    round-robin to `gguf_templates` (GPT-OSS gate_up: gate the even rows, up the odd ones)."""

    hf_template: str  # {bid} = layer
    gguf_templates: tuple[str, ...]  # {bid} = layer; with the .weight suffix


@dataclass(frozen=True)
class RuntimeTraits:
    """How the network computes; read by quantcli/runtime (GGUF keys carry the numbers)."""

    norm: str = "rms"  # "rms": x / sqrt(mean(x^2) + eps) * w
    activation: str = "silu"  # gated FFN act(gate) * up: "silu" or "gelu_tanh"
    rope_style: str = (
        "normal"  # "normal": ggml pairs (2i, 2i+1) (llama; HF rows permuted at convert); "neox": (i, i+d/2)
    )
    embedding_scale: str | None = None  # "sqrt_hidden": token embeddings multiplied by sqrt(n_embd) (gemma)
    qk_norm: bool = False  # per-head RMSNorm of q and k before rope (qwen3, gemma3)
    post_norms: bool = False  # gemma2/3, olmo2: post_attention_norm / post_ffw_norm on each branch output
    pre_norms: bool = True  # attn_norm / ffn_norm before each branch; olmo2 has none
    attention_bias: bool = False  # q/k/v biases (qwen2)
    fused_qkv: bool = False  # phi3: one attn_qkv tensor, rows [q; k; v]
    fused_gate_up: bool = False  # phi3: ffn_up holds [gate; up] rows
    sliding_window_pattern: int = 0  # gemma2/3: every Nth layer is global, others use the sliding window
    # gemma2: sliding layers rotate with the main rope base (llama.cpp's default when no freq_base_swa key);
    # gemma3 without the key: 10000
    swa_rope_base_is_main: bool = False
    # gemma2/3 27B: llama.cpp scales attention by 1/sqrt(n_embd/n_head) for this block count (0: never)
    attn_scale_n_embd_layers: int = 0
    no_rope_layer_step: int = 0  # smollm3: layer il skips rope when (il + 1) % step == 0 (llama.cpp: 4)
    tied_embeddings_default: bool = False  # output.weight absent -> reuse token_embd
    # mixture of experts: renormalise the top-k router probabilities to sum 1 (llama.cpp's norm_w argument
    # of build_moe_ffn, hard-coded per architecture: llama/Mixtral and qwen3moe yes, olmoe no)
    expert_weights_norm: bool = False
    # gpt-oss (src/models/openai-moe.cpp): YaRN rope computed (other archs refuse a YaRN factor), sliding
    # layers rotate with the full layers' scale too, the FFN input norm is post_attention_norm,
    # router softmax over the top-k raw logits ("softmax_weight"), experts' clamped SwiGLU ("swiglu_oai")
    yarn_rope: bool = False
    swa_rope_scale_is_main: bool = False
    ffn_norm: str = "ffn_norm"
    expert_gating: str = "softmax"
    expert_glu: str = "swiglu"


@dataclass(frozen=True)
class ArchSpec:
    hf_architectures: tuple[str, ...]
    gguf_arch: str  # general.architecture
    # (HF template, GGUF template) without the .weight/.bias suffix; {bid} = layer index.
    tensor_names: tuple[tuple[str, str], ...]
    hparams: tuple[HParam, ...]
    # transformers' config-class defaults for keys absent from config.json (what AutoConfig adds).
    config_defaults: Config = field(default_factory=dict)
    derive_config: Callable[[Config], None] | None = None  # fills AutoConfig-derived keys in place
    skip_tensors: tuple[str, ...] = ()  # HF names (re.fullmatch) the converter drops
    transforms: tuple[TensorTransform, ...] = ()
    runtime: RuntimeTraits = field(default_factory=RuntimeTraits)
    # Tensors the converter generates from the config (generate_extra_tensors), written before all others.
    extra_tensors: Callable[[Config], list[tuple[str, np.ndarray]]] | None = None
    # Keys the converter adds while generating those tensors: they land right after general.architecture.
    early_hparams: tuple[HParam, ...] = ()
    # Every layer has the same tensors with the same shapes (checked by `check_tensors` before converting);
    # False for families whose layers differ (mixed dense/MoE layers, per-layer head counts).
    uniform_layers: bool = True
    # Mixture of experts: the stacked tensors, in the order the converter writes them once a layer's last
    # expert matrix has been read (its modify_tensors collects them per layer).
    expert_stacks: tuple[ExpertStack, ...] = ()
    # HF tensors cut into GGUF tensors by name (see SplitTensor); not in `tensor_names`.
    split_tensors: tuple[SplitTensor, ...] = ()
    # MXFP4 checkpoints: the packed expert tensors, written first (the converter's generate_extra_tensors).
    mxfp4_experts: tuple[Mxfp4Experts, ...] = ()
    # Packed safetensors (--format ct/mlx/gptq/awq) quantize every 2-D block weight as a Linear layer;
    # False where some are not (GPT-OSS's router) and the experts are no Linear layers at all.
    packed_formats: bool = True

    def block_count(self, cfg: Config) -> int:
        value = cfg.get("num_hidden_layers")
        if not isinstance(value, int) or value < 0:
            raise InputInvalid(
                f"config.json: num_hidden_layers is {value!r}, expected a non-negative integer"
            )
        return value

    def name_map(self, cfg: Config) -> dict[str, str]:
        """Every HF tensor name this architecture knows (with .weight/.bias) -> its GGUF name."""
        out: dict[str, str] = {}
        for bid in [None, *range(self.block_count(cfg))]:
            for hf_t, gguf_t in self.tensor_names:
                if ("{bid}" in hf_t) != (bid is not None):
                    continue
                hf = hf_t.format(bid=bid)
                gg = gguf_t.format(bid=bid)
                for suffix in (".weight", ".bias"):
                    out[hf + suffix] = gg + suffix
        return out

    def split_map(self, cfg: Config) -> dict[str, SplitTensor]:
        """Every stored HF name of a `split_tensors` entry -> its entry, with {bid} filled in."""
        return {
            split.hf_template.format(bid=bid): SplitTensor(
                split.hf_template.format(bid=bid),
                tuple(replace(part, gguf_template=part.gguf_template.format(bid=bid)) for part in split.parts),
            )
            for split in self.split_tensors
            for bid in range(self.block_count(cfg))
        }

    def is_skipped(self, hf_name: str) -> bool:
        return any(re.fullmatch(p, hf_name) for p in (*COMMON_SKIPS, *self.skip_tensors))

    def transforms_for(self, hf_name: str) -> Iterator[TensorTransform]:
        return (t for t in self.transforms if re.search(t.pattern, hf_name))


# (HF, GGUF) name templates of the transformers decoder layout, in the pieces the families here combine.
MODEL_TENSORS: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
    ("model.layers.{bid}.input_layernorm", "blk.{bid}.attn_norm"),
)
ATTENTION_TENSORS: tuple[tuple[str, str], ...] = (
    ("model.layers.{bid}.self_attn.q_proj", "blk.{bid}.attn_q"),
    ("model.layers.{bid}.self_attn.k_proj", "blk.{bid}.attn_k"),
    ("model.layers.{bid}.self_attn.v_proj", "blk.{bid}.attn_v"),
    ("model.layers.{bid}.self_attn.o_proj", "blk.{bid}.attn_output"),
)
QK_NORM_TENSORS: tuple[tuple[str, str], ...] = (
    ("model.layers.{bid}.self_attn.q_norm", "blk.{bid}.attn_q_norm"),
    ("model.layers.{bid}.self_attn.k_norm", "blk.{bid}.attn_k_norm"),
)
MLP_TENSORS: tuple[tuple[str, str], ...] = (
    ("model.layers.{bid}.mlp.gate_proj", "blk.{bid}.ffn_gate"),
    ("model.layers.{bid}.mlp.up_proj", "blk.{bid}.ffn_up"),
    ("model.layers.{bid}.mlp.down_proj", "blk.{bid}.ffn_down"),
)

# Tensors convert_hf_to_gguf.py never writes, whatever the architecture.
COMMON_SKIPS = (r".*\.attention\.masked_bias", r".*\.attention\.bias", r".*\.rotary_emb\.inv_freq")


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    for name in spec.hf_architectures:
        assert name not in _REGISTRY, f"{name} registered twice"
        _REGISTRY[name] = spec
    return spec


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(config: Config, where: str = "config.json") -> ArchSpec:
    """The spec for config["architectures"][0]; Unsupported (listing what is) otherwise."""
    archs = config.get("architectures")
    name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if name is None:
        raise Unsupported(
            f"{where}: no 'architectures' entry; supported: {', '.join(supported_architectures())}"
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        raise Unsupported(
            f"{where}: architecture {name} is not supported (supported: {', '.join(supported_architectures())})"
        ) from None


# config.json values that size tensors. When present they must be positive integers: a string, 0, a float
# or null would otherwise crash deep in a transform (ZeroDivisionError, TypeError) as an internal error.
# null is accepted only where transformers derives a default from the other keys.
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "num_hidden_layers", "vocab_size", "head_dim")
NULLABLE_SIZE_KEYS = ("num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")
# GGUF tensors whose length / row length is hidden_size in every family we support.
HIDDEN_SIZED = ("token_embd.weight", "output.weight", "output_norm.weight")
HIDDEN_SIZED_PER_LAYER = re.compile(r"blk\.\d+\.(attn_norm|ffn_norm)\.weight")


def check_size_keys(cfg: Config) -> None:
    for key in SIZE_KEYS:
        if key not in cfg or (cfg[key] is None and key in NULLABLE_SIZE_KEYS):
            continue
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputInvalid(f"config.json: {key} is {value!r}, expected a positive integer")


def check_layer_count(spec: ArchSpec, cfg: Config, n_tensors: int) -> None:
    """Bound num_hidden_layers by the checkpoint before building per-layer tables from it."""
    n_layers = spec.block_count(cfg)
    if n_layers > n_tensors:
        raise InputInvalid(
            f"config.json: num_hidden_layers is {n_layers} but the checkpoint has only {n_tensors} tensors"
        )


def check_tensors(
    spec: ArchSpec, cfg: Config, shapes: dict[str, tuple[int, ...]], names: dict[str, str], where: str
) -> None:
    """Refuse a checkpoint that cannot be the model config.json describes, before any weight is read.

    No empty tensors; with `uniform_layers`, a tensor that one layer has must exist in every layer
    0..num_hidden_layers-1 with the same shape; embeddings, output and the hidden-size norms must be
    hidden_size wide.
    """
    for name, shape in shapes.items():
        if math.prod(shape) == 0:
            raise InputInvalid(f"{where}: tensor {name!r} has shape {list(shape)} (no elements)")
    if spec.uniform_layers:
        n_layers = spec.block_count(cfg)
        patterns = [
            (hf_t, re.compile(re.escape(hf_t).replace(r"\{bid\}", r"(\d+)") + r"\.(weight|bias)"))
            for hf_t, _ in spec.tensor_names
            if "{bid}" in hf_t
        ]
        by_template: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
        for name, shape in shapes.items():
            for hf_t, pattern in patterns:
                match = pattern.fullmatch(name)
                if match:
                    by_template.setdefault((hf_t, match.group(2)), {})[int(match.group(1))] = shape
                    break
        for (hf_t, suffix), by_layer in by_template.items():
            missing = [bid for bid in range(n_layers) if bid not in by_layer]
            if missing:
                raise InputInvalid(
                    f"{where}: tensor {hf_t.format(bid=missing[0])}.{suffix} is missing (other layers have it; "
                    f"config.json says num_hidden_layers {n_layers})"
                )
            common = Counter(by_layer.values()).most_common(1)[0][0]
            for bid, shape in sorted(by_layer.items()):
                if shape != common:
                    raise InputInvalid(
                        f"{where}: tensor {hf_t.format(bid=bid)}.{suffix} has shape {list(shape)} but the same "
                        f"tensor of other layers has {list(common)}"
                    )
    vocab = cfg.get("vocab_size")
    embedding = next((shapes[n] for n, g in names.items() if g == "token_embd.weight" and n in shapes), None)
    if isinstance(vocab, int) and embedding is not None and vocab > embedding[0]:
        # The converter pads the token list up to vocab_size: a lying value would allocate that many.
        raise InputInvalid(
            f"config.json: vocab_size is {vocab} but the embedding has {embedding[0]} rows"
        )
    hidden = cfg.get("hidden_size")
    if isinstance(hidden, int):
        for name, shape in shapes.items():
            gguf_name = names.get(name, "")
            if (gguf_name in HIDDEN_SIZED or HIDDEN_SIZED_PER_LAYER.fullmatch(gguf_name)) and shape[-1] != hidden:
                raise InputInvalid(
                    f"{where}: tensor {name!r} has shape {list(shape)} but config.json says hidden_size {hidden}"
                )


def _check_rope_objects(cfg: Config) -> None:
    """rope_parameters / rope_scaling (and their per-attention-type sets) are read with dict methods: a list
    or a number there would be an AttributeError mid-plan, so it is refused here, naming the key."""
    for key in ("rope_parameters", "rope_scaling"):
        value = cfg.get(key)
        if value is None or value == {}:
            continue
        if not isinstance(value, dict):
            raise InputInvalid(f"config.json: {key} is {value!r}, expected an object")
        for sub in ("full_attention", "sliding_attention"):
            if sub in value and not isinstance(value[sub], dict):
                raise InputInvalid(f"config.json: {key}.{sub} is {value[sub]!r}, expected an object")


def effective_config(spec: ArchSpec, config: Config) -> Config:
    """config.json as transformers' AutoConfig(...).to_dict() would present it to the converter.

    Class defaults fill absent keys, `text_config` is merged up, and `rope_parameters` is built the way
    transformers 5 and the converter's TextModel.__init__ do (rope_theta / rope_scaling folded in).
    """
    cfg: Config = {**spec.config_defaults}
    cfg.update({k: v for k, v in config.items() if v is not None or k not in cfg})
    if isinstance(config.get("text_config"), dict):
        cfg.update(config["text_config"])
    check_size_keys(cfg)
    _check_rope_objects(cfg)
    if spec.derive_config is not None:
        spec.derive_config(cfg)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope = {k: (dict(v) if isinstance(v, dict) else v) for k, v in rope.items()}
    if "full_attention" not in rope and "sliding_attention" not in rope:
        if "rope_theta" not in rope and cfg.get("rope_theta") is not None:
            rope["rope_theta"] = cfg["rope_theta"]
        if "rope_type" not in rope and rope.get("type") is not None:
            rope["rope_type"] = rope["type"]
        rope.setdefault("rope_type", "default")
        for key in ("partial_rotary_factor", "original_max_position_embeddings"):
            if key not in rope and cfg.get(key) is not None:
                rope[key] = cfg[key]
    cfg["rope_parameters"] = rope
    return cfg


def full_rope(cfg: Config) -> Config:
    rope = cfg.get("rope_parameters") or {}
    return rope.get("full_attention", rope)


def first(*keys: str) -> HParamValue:
    """The value of the first key present in the config (convert_hf_to_gguf's find_hparam), else None."""

    def get(cfg: Config) -> Any:
        for key in keys:
            if key in cfg and cfg[key] is not None:
                return cfg[key]
        return None

    return get


def rope_scaling_hparams() -> tuple[HParam, ...]:
    """TextModel.set_gguf_parameters' rope-scaling keys (linear, yarn, longrope)."""

    def kind(cfg: Config) -> str | None:
        rope = full_rope(cfg)
        rtype = rope.get("rope_type")
        if rtype in ("linear", "yarn") and rope.get("factor") is not None:
            return rtype
        if rtype in ("su", "longrope"):
            return "longrope"
        return None

    def when(kinds: tuple[str, ...], value: HParamValue) -> HParamValue:
        return lambda cfg: value(cfg) if kind(cfg) in kinds else None

    import gguf

    types = {
        "linear": gguf.RopeScalingType.LINEAR,
        "yarn": gguf.RopeScalingType.YARN,
        "longrope": gguf.RopeScalingType.LONGROPE,
    }
    return (
        HParam("add_rope_scaling_type", lambda cfg: types[k] if (k := kind(cfg)) else None),
        HParam("add_rope_scaling_factor", when(("linear", "yarn"), lambda cfg: full_rope(cfg)["factor"])),
        HParam(
            "add_rope_scaling_orig_ctx_len",
            when(("yarn",), lambda cfg: full_rope(cfg)["original_max_position_embeddings"]),
        ),
        HParam(
            "add_rope_scaling_yarn_ext_factor",
            when(("yarn",), lambda cfg: full_rope(cfg).get("extrapolation_factor")),
        ),
        HParam(
            "add_rope_scaling_yarn_attn_factor",
            when(
                ("yarn",),
                lambda cfg: full_rope(cfg).get("attention_factor", full_rope(cfg).get("attn_factor")),
            ),
        ),
        HParam(
            "add_rope_scaling_yarn_beta_fast", when(("yarn",), lambda cfg: full_rope(cfg).get("beta_fast"))
        ),
        HParam(
            "add_rope_scaling_yarn_beta_slow", when(("yarn",), lambda cfg: full_rope(cfg).get("beta_slow"))
        ),
    )


FILE_TYPE = HParam("add_file_type", lambda cfg: cfg["__ftype__"])


def text_model_hparams() -> tuple[HParam, ...]:
    """convert_hf_to_gguf.py TextModel.set_gguf_parameters, in its order (`__ftype__` set by convert)."""
    return (
        HParam("add_block_count", lambda cfg: cfg["num_hidden_layers"]),
        HParam("add_context_length", first("max_position_embeddings", "n_ctx", "n_positions", "max_length")),
        HParam("add_embedding_length", first("hidden_size", "n_embd", "dim")),
        HParam("add_feed_forward_length", first("intermediate_size", "n_inner", "hidden_dim")),
        HParam("add_head_count", first("num_attention_heads", "n_head", "n_heads")),
        HParam("add_head_count_kv", first("num_key_value_heads", "n_kv_heads")),
        HParam("add_causal_attention", lambda cfg: False if cfg.get("is_causal") is False else None),
        *rope_scaling_hparams(),
        HParam("add_rope_freq_base", lambda cfg: full_rope(cfg).get("rope_theta")),
        HParam(
            "add_rope_freq_base_swa",
            lambda cfg: (cfg["rope_parameters"].get("sliding_attention") or {}).get("rope_theta"),
        ),
        HParam("add_layer_norm_rms_eps", first("rms_norm_eps", "norm_eps")),
        HParam("add_layer_norm_eps", first("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")),
        HParam("add_expert_count", first("num_local_experts", "num_experts", "n_routed_experts")),
        HParam("add_expert_used_count", first("num_experts_per_tok", "num_experts_per_token", "top_k_experts")),
        HParam("add_key_length", first("head_dim")),
        HParam("add_value_length", first("head_dim")),
        FILE_TYPE,
    )


def expert_count(cfg: Config) -> int | None:
    """The number of experts as the converter reads it (find_hparam's first key present)."""
    value = first("num_local_experts", "num_experts", "n_routed_experts")(cfg)
    return value if isinstance(value, int) else None


def hparam_values(spec: ArchSpec, cfg: Config, early: bool = False) -> list[tuple[str, Any]]:
    """[(writer method, value)] in write order, skipping absent ones (`early`: spec.early_hparams)."""
    out = []
    for hp in spec.early_hparams if early else spec.hparams:
        try:
            value = hp.value(cfg)
        except KeyError as exc:
            raise InputInvalid(f"config.json: {spec.gguf_arch} needs {exc.args[0]!r}") from None
        if value is not None:
            out.append((hp.method, value))
    return out
