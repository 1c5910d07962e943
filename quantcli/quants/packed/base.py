"""What every packed-safetensors format shares: the scheme, dtype rounding, and the format registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantcli.errors import InputInvalid, Unsupported


class _ModelDtypes(Mapping[str, type]):
    """Model dtype name -> NumPy scalar type. `ml_dtypes` (0.6 s to import) is loaded on the first lookup of
    bfloat16, so that a job which never touches a packed or BF16 tensor (GGUF -> GGUF) does not pay for it."""

    _NAMES = ("bfloat16", "float16", "float32")

    def __getitem__(self, name: str) -> type:
        if name == "bfloat16":
            import ml_dtypes

            return ml_dtypes.bfloat16
        if name in ("float16", "float32"):
            return getattr(np, name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


MODEL_DTYPES: Mapping[str, type] = _ModelDtypes()


@dataclass(frozen=True)
class Scheme:
    bits: int
    group_size: int
    dtype: str = "bfloat16"  # the model dtype: scales (and dequantized weights) live in it
    block: tuple[int, int] | None = None  # FP8 block scales (rows, cols) per scale, read-only formats
    # Columns grouped by GPTQ's act-order (a `g_idx` permutation stored with the weight; formats that carry it)
    act_order: bool = False

    @property
    def np_dtype(self) -> type:
        return MODEL_DTYPES[self.dtype]


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values to the model dtype (round-to-nearest-even) and return them as float32."""
    return np.asarray(x, dtype=np.float32).astype(MODEL_DTYPES[dtype]).astype(np.float32)


class PackedFormat:
    """One packed layout: quantize a Linear weight into its tensors, dequantize them, describe the config."""

    name: ClassVar[str]
    bits_allowed: ClassVar[tuple[int, ...]] = ()
    groups_allowed: ClassVar[tuple[int, ...]] = (32, 64, 128)
    # The tensor suffixes of a quantized module that make up its weight; any other tensor of the module
    # (`bias`) stays as it is.
    parts: ClassVar[tuple[str, ...]]
    # False for the pre-quantized layouts we only read (FP8, bitsandbytes): not an output --format.
    writable: ClassVar[bool] = True
    # Small stored tensors whose values, not only shapes, give the weight's (out, in) (bitsandbytes' JSON
    # quant state): the loader reads them when it opens the checkpoint and passes them to logical_shape_of.
    layout_parts: ClassVar[tuple[str, ...]] = ()
    # The dtype the format's models run in whatever the source's (kept tensors, `torch_dtype`); None: the
    # source checkpoint's own.
    model_dtype: ClassVar[str | None] = None
    _registry: ClassVar[dict[str, type[PackedFormat]]] = {}

    def __init_subclass__(cls, name: str | None = None, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if name:
            cls.name = name
            PackedFormat._registry[name] = cls

    @classmethod
    def check(cls, scheme: Scheme, in_features: int | None = None) -> None:
        if scheme.bits not in cls.bits_allowed:
            raise Unsupported(
                f"--format {cls.name} supports --bits {', '.join(map(str, cls.bits_allowed))}, not {scheme.bits}"
            )
        if scheme.group_size not in cls.groups_allowed:
            raise Unsupported(
                f"--format {cls.name} supports --group-size {', '.join(map(str, cls.groups_allowed))}, "
                f"not {scheme.group_size}"
            )
        if in_features is not None and in_features % scheme.group_size:
            raise Unsupported(
                f"--group-size {scheme.group_size} does not divide a row of {in_features} ({cls.name})"
            )

    @classmethod
    def layout(cls, out: int, n: int, scheme: Scheme) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """dtype and shape of each tensor replacing the (out, n) weight, known before any compute."""
        raise NotImplementedError

    @classmethod
    def quantize(cls, weight: np.ndarray, scheme: Scheme) -> dict[str, np.ndarray]:
        """float32 (out, in) -> {suffix: array} replacing `<module>.weight`."""
        raise NotImplementedError

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        """The client's dequantized weight, in the model dtype's values, returned as float32 (out, in)."""
        raise NotImplementedError

    # GPTQ's grid (symmetric integer codes in [-2^(bits-1), 2^(bits-1) - 1], one scale per group) as this
    # format stores it: the dtype its scales are held in, or None when the format cannot hold that grid.
    @classmethod
    def gptq_scale_dtype(cls, scheme: Scheme) -> str | None:
        return None

    # Whether the format stores a column -> group map (`g_idx`), so act-order groups need not be contiguous.
    carries_g_idx: ClassVar[bool] = False

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None, scheme: Scheme
    ) -> dict[str, np.ndarray]:
        """Tensors holding signed codes (out, in) with group scales (out, in / group) — values of
        `gptq_scale_dtype` — and, where the format carries one, each column's group `g_idx` (in,)."""
        raise Unsupported(f"--format {cls.name} cannot store GPTQ's symmetric grid")

    @classmethod
    def logical_shape(cls, parts: dict[str, tuple[int, ...]], scheme: Scheme) -> tuple[int, int]:
        """(out, in) of the dequantized weight, from the stored tensors' shapes alone (no data read)."""
        raise NotImplementedError

    @classmethod
    def logical_shape_of(
        cls, parts: dict[str, tuple[int, ...]], values: dict[str, np.ndarray], scheme: Scheme
    ) -> tuple[int, int]:
        """(out, in) of the dequantized weight from the stored shapes and the `layout_parts` values."""
        return cls.logical_shape(parts, scheme)

    @classmethod
    def config(cls, scheme: Scheme, ignore: list[str]) -> dict[str, object]:
        """The `config.json` entries this format's client reads."""
        raise NotImplementedError

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        """The scheme of a checkpoint written in this format, or None when `config` is not this format."""
        raise NotImplementedError

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        raise NotImplementedError


def get_format(name: str) -> type[PackedFormat]:
    """An output format (--format)."""
    writable = {n: f for n, f in PackedFormat._registry.items() if f.writable}
    try:
        return writable[name]
    except KeyError:
        raise Unsupported(f"unknown --format {name!r} (supported: gguf, {', '.join(sorted(writable))})") from None


def detect_format(config: dict) -> tuple[type[PackedFormat], Scheme] | None:
    """The packed format `config` declares and its scheme, validated so that dequantizing cannot fail on a
    config value (bits the format cannot unpack, a group size of 0, an unknown model dtype)."""
    for key in ("quantization_config", "quantization"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise InputInvalid(f"config.json: {key} is {config[key]!r}, expected an object")
    for fmt in PackedFormat._registry.values():
        scheme = fmt.scheme_from_config(config)
        if scheme is not None:
            # integer group formats (the ones we also write); the read-only FP8 formats check their own config
            if fmt.writable and scheme.bits not in fmt.bits_allowed:
                raise Unsupported(
                    f"config.json: {fmt.name} checkpoint with {scheme.bits}-bit weights is not supported "
                    f"(bits {', '.join(map(str, fmt.bits_allowed))})"
                )
            if fmt.writable and scheme.group_size <= 0:
                raise InputInvalid(f"config.json: {fmt.name} group_size {scheme.group_size} is not positive")
            if scheme.dtype not in MODEL_DTYPES:
                raise Unsupported(
                    f"config.json: {fmt.name} checkpoint in dtype {scheme.dtype!r} is not supported "
                    f"({', '.join(MODEL_DTYPES)})"
                )
            return fmt, scheme
    return None


def config_int(section: dict, key: str, where: str) -> int:
    """An integer field of a quantization config; anything else (missing, a string, a float) is InputInvalid."""
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputInvalid(f"config.json: {where}.{key} is {value!r}, expected an integer")
    return value


def config_object(value: object, where: str) -> dict:
    """A nested object of a quantization config (null counts as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputInvalid(f"config.json: {where} is {value!r}, expected an object")
    return value


def grouped(weight: np.ndarray, group_size: int) -> np.ndarray:
    out, n = weight.shape
    return np.asarray(weight, dtype=np.float32).reshape(out, n // group_size, group_size)


def group_index(g_idx: np.ndarray | None, n: int, group_size: int, ngroups: int) -> np.ndarray:
    """The group of each input column: `g_idx` (GPTQ act-order) when stored, else contiguous groups.

    A stored g_idx equal to the contiguous arange (what GPTQ writes without act-order) gives the same groups.
    Bad values are malformed input (exit 4; the loader names the tensor): never index out of the scales.
    """
    if g_idx is None:
        return np.arange(n) // group_size
    idx = np.asarray(g_idx)
    if idx.shape != (n,) or idx.dtype.kind not in "iu":
        raise InputInvalid(f"g_idx must be {n} integers, got {idx.dtype} {list(idx.shape)}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= ngroups):
        raise InputInvalid(f"g_idx values must be group numbers in [0, {ngroups})")
    return idx


def round_through(x: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 product rounded as compressed-tensors computes it: in the scale's dtype, then stored in the
    model dtype (two roundings when those differ, e.g. float16 scales in a bfloat16 model)."""
    scale_dtype = np.asarray(scale).dtype.name
    if scale_dtype in ("bfloat16", "float16") and scale_dtype != dtype:
        x = round_to(x, scale_dtype)
    return round_to(x, dtype)
