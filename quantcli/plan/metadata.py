"""The output KV section llama-quantize writes, and the imatrix as it applies one (formats/gguf.md):
the input's KV pairs in input order, minus `general.quantization_version`,
`general.file_type` and the split keys, then `general.quantization_version` (u32 2) and `general.file_type`
(u32 ftype) appended, then the --override-kv keys, then the `quantize.imatrix.*` keys when an imatrix is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quantcli.errors import UsageError
from quantcli.imatrix_file import Imatrix, load_imatrix
from quantcli.plan.ftypes import Ftype
from quantcli.writers.gguf import encode_kv_str, encode_kv_u32

GGML_QNT_VERSION = 2
_REMOVED_KEYS = ("split.no", "split.count", "split.tensors.count")


def _c_string_127(s: str) -> bytes:
    """strncpy(dst, s, 127); dst[127] = 0: at most 127 bytes, cut at the first NUL."""
    return s.encode("utf-8")[:127].split(b"\0", 1)[0]


@dataclass
class ImatrixUse:
    """An imatrix as llama-quantize applies it: entries after --include/--exclude-weights, and the path
    string exactly as given on the command line (it is written to quantize.imatrix.file)."""

    imatrix: Imatrix
    path_text: str

    def kv_pairs(self) -> list[tuple[str, bytes]]:
        im = self.imatrix
        pairs = [("quantize.imatrix.file", encode_kv_str("quantize.imatrix.file", _c_string_127(self.path_text)))]
        if im.datasets:
            key = "quantize.imatrix.dataset"
            pairs.append((key, encode_kv_str(key, _c_string_127(im.datasets[0]))))
        key = "quantize.imatrix.entries_count"
        pairs.append((key, encode_kv_u32(key, len(im.entries))))
        if im.chunk_count > 0:
            key = "quantize.imatrix.chunks_count"
            pairs.append((key, encode_kv_u32(key, im.chunk_count)))
        return pairs


def load_imatrix_use(
    path_text: str | None, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> ImatrixUse | None:
    """--imatrix/--include-weights/--exclude-weights -> the entries llama-quantize uses, or None. An imatrix
    with no (remaining) entries is not used at all, as llama-quantize does."""
    if path_text is None:
        if include or exclude:
            raise UsageError("--include-weights/--exclude-weights need --imatrix")
        return None
    if include and exclude:
        raise UsageError("--include-weights and --exclude-weights cannot be combined")
    use = ImatrixUse(load_imatrix(path_text).filtered(include, exclude), path_text)
    return use if use.imatrix.entries else None


def output_kv(
    src_kv: Iterable[tuple[str, bytes]], ftype: Ftype, imatrix: ImatrixUse | None, kv_overrides: Sequence = ()
) -> list[tuple[str, bytes]]:
    """The output KV section as (key, encoded bytes), in llama-quantize's order (gguf_set_* = remove+append),
    from the source's KV pairs (key, encoded bytes) in file order."""
    kv: dict[str, bytes] = dict(src_kv)

    def set_kv(key: str, raw: bytes) -> None:
        kv.pop(key, None)
        kv[key] = raw

    set_kv("general.quantization_version", encode_kv_u32("general.quantization_version", GGML_QNT_VERSION))
    set_kv("general.file_type", encode_kv_u32("general.file_type", ftype.value))
    for key in _REMOVED_KEYS:
        kv.pop(key, None)
    for override in kv_overrides:  # --override-kv, then the imatrix keys (quantize.cpp's kv_overrides order)
        set_kv(override.key, override.encode())
    if imatrix is not None:
        for key, raw in imatrix.kv_pairs():
            set_kv(key, raw)
    return list(kv.items())
