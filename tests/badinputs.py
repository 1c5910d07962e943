"""A corpus of bad inputs, generated from small valid files (docs/hardening.md lists the categories).

`build_bases(root)` writes the valid originals once: a tiny random BF16 llama HF checkpoint with a
SentencePiece tokenizer (tests/test_batch_models.py `tiny_llama`, converts in ~0.1 s), its F16 GGUF
written by `quantcli convert`, a GGUF imatrix and a legacy `.dat` imatrix for it, and a batch manifest.

`CASES` is the corpus: each `Case` builds its damaged input(s) in a fresh `inp` directory (copying or
crafting from the bases, never modifying them), returns the `quantcli` argv (outputs go to `out`), and
names the documented exit code (README.md / quantcli/errors.py) the CLI must end with. Random damage
is seeded, so every run builds the same bytes.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from quantcli.errors import ExitCode

X = ExitCode


# --------------------------------------------------------------------------------------------------------
# Valid originals


@dataclass(frozen=True)
class Bases:
    root: Path
    model: Path  # HF checkpoint directory (config.json, model.safetensors, tokenizer.model)
    gguf: Path  # F16 GGUF of `model`, written by `quantcli convert`
    imatrix_gguf: Path
    imatrix_dat: Path
    manifest: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())


def run_cli_in_process(argv: list[str]) -> tuple[int, str, str]:
    """`quantcli ARGV` in this process: (exit code, stdout, stderr). Restores what main() changes."""
    import contextlib
    import signal
    import sys

    from quantcli.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["quantcli", *argv]  # cli._emit_error looks for --json in sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        signal.signal(signal.SIGTERM, saved_term)
    return code, out.getvalue(), err.getvalue()


def write_gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A llama-imatrix style GGUF: `<name>.in_sum2` / `<name>.counts` tensors plus imatrix.* keys."""
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["calibration.txt"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_uint32("imatrix.chunk_size", 64)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", np.asarray(sums, dtype=np.float32))
        w.add_tensor(name + ".counts", np.asarray(counts, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def dat_entry(name: bytes, ncall: int, values: np.ndarray | list[float]) -> bytes:
    values = np.asarray(values, dtype="<f4")
    return struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, values.size) + values.tobytes()


def imatrix_entries(model_gguf: Path) -> dict[str, np.ndarray]:
    """Positive per-column weights for every 2-D weight of `model_gguf` (seeded)."""
    from quantcli.loaders.gguf import GGUFFile

    rng = np.random.default_rng(7)
    with GGUFFile(model_gguf) as f:
        return {
            t.name: rng.uniform(0.5, 2.0, t.ne[0]).astype(np.float32)
            for t in f.tensors.values()
            if len(t.ne) == 2 and t.name.startswith("blk.")
        }


def build_bases(root: Path) -> Bases:
    from test_batch_models import tiny_llama

    root.mkdir(parents=True, exist_ok=True)
    model = tiny_llama(root / "tiny-llama", seed=0)
    gguf_path = root / "tiny-llama-f16.gguf"
    code, _, err = run_cli_in_process(["convert", str(model), "-o", str(gguf_path), "--type", "f16"])
    assert code == 0, err
    entries = imatrix_entries(gguf_path)
    imatrix_gguf = write_gguf_imatrix(
        root / "imatrix.gguf", {n: (v * 4, np.array([4.0], np.float32)) for n, v in entries.items()}
    )
    blob = struct.pack("<i", len(entries)) + b"".join(dat_entry(n.encode(), 4, v * 4) for n, v in entries.items())
    blob += struct.pack("<ii", 4, len(b"calibration.txt")) + b"calibration.txt"
    imatrix_dat = root / "imatrix.dat"
    imatrix_dat.write_bytes(blob)
    manifest = root / "jobs.yaml"
    manifest.write_text(f"jobs:\n  - source: {model}\n    types: [q8_0, f16]\n")
    return Bases(root, model, gguf_path, imatrix_gguf, imatrix_dat, manifest)


# --------------------------------------------------------------------------------------------------------
# Safetensors editing


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def write_safetensors(path: Path, header: dict | bytes, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def copy_model(bases: Bases, inp: Path) -> Path:
    model = inp / "model"
    shutil.copytree(bases.model, model)
    return model


def convert_argv(source: Path, out: Path, qtype: str = "q8_0", *extra: str) -> list[str]:
    return ["convert", str(source), "-o", str(out / "model.gguf"), "--type", qtype, *extra]


def st_case(edit: Callable[[dict, bytes], tuple[dict | bytes, bytes]], qtype: str = "q8_0") -> Callable:
    """A case that rewrites model.safetensors of a copy of the model through `edit(header, data)`."""

    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        model = copy_model(bases, inp)
        header, data = read_safetensors(model / "model.safetensors")
        new_header, new_data = edit(header, data)
        write_safetensors(model / "model.safetensors", new_header, new_data)
        return convert_argv(model, out, qtype)

    return build


UP0 = "model.layers.0.mlp.up_proj.weight"
GATE0 = "model.layers.0.mlp.gate_proj.weight"
NORM = "model.norm.weight"
EMBED = "model.embed_tokens.weight"


def _set(name: str, key: str, value: object) -> Callable:
    def edit(h: dict, d: bytes) -> tuple[dict, bytes]:
        h[name][key] = value
        return h, d

    return edit


def _update(header: dict, name: str, **fields: object) -> dict:
    header[name] = {**header[name], **fields}
    return header


def _poke(name: str, raw: bytes) -> Callable:
    """Overwrite the first element of tensor `name` (BF16) with `raw`."""

    def edit(h: dict, d: bytes) -> tuple[dict, bytes]:
        begin = h[name]["data_offsets"][0]
        return h, d[:begin] + raw + d[begin + len(raw) :]

    return edit


def truncate_file(rel: str, keep: Callable[[int, Path], int]) -> Callable:
    """Copy the model and cut its file `rel` to `keep(size, path)` bytes."""

    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        model = copy_model(bases, inp)
        path = model / rel
        blob = path.read_bytes()
        path.write_bytes(blob[: keep(len(blob), path)])
        return convert_argv(model, out)

    return build


def _st_header_end(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def flip_bytes(blob: bytes, seed: int, start: int, end: int, n: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    arr = bytearray(blob)
    for pos in rng.integers(start, end, n):
        arr[int(pos)] ^= 1 << int(rng.integers(0, 8))
    return bytes(arr)


# --------------------------------------------------------------------------------------------------------
# GGUF crafting


def gguf_str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_string(key: str, value: str) -> bytes:
    return gguf_str(key) + struct.pack("<i", int(gguf.GGUFValueType.STRING)) + gguf_str(value)


def kv_u32(key: str, value: int) -> bytes:
    return gguf_str(key) + struct.pack("<iI", int(gguf.GGUFValueType.UINT32), value)


def gguf_header(n_tensors: int, n_kv: int, body: bytes, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<Iqq", version, n_tensors, n_kv) + body


def tensor_info(name: str, ne: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return gguf_str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne) + struct.pack("<iQ", ggml_type, offset)


ARCH = kv_string("general.architecture", "llama")
F32 = int(gguf.GGMLQuantizationType.F32)


def crafted(blob: bytes, pad_to: int = 4096) -> bytes:
    return blob.ljust(pad_to, b"\0")


def quantize_argv(src: Path, out: Path, *extra: str, qtype: str = "Q8_0") -> list[str]:
    return ["quantize", str(src), str(out / "out.gguf"), qtype, *extra]


def gguf_bytes_case(make: Callable[[Bases], bytes], command: str = "quantize") -> Callable:
    """A case that writes `make(bases)` as bad.gguf and runs `command` (quantize, inspect, plan, eval) on it."""

    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        path = inp / "bad.gguf"
        path.write_bytes(make(bases))
        if command == "quantize":
            return quantize_argv(path, out)
        if command == "inspect":
            return ["inspect", str(path), "--json"]
        if command == "plan":
            return ["plan", str(path), "--type", "Q4_K_M", "--json"]
        if command == "eval":
            return ["eval", str(path), "--chunks", "1", "--ctx", "16"]
        raise ValueError(command)

    return build


def _gguf_layout(path: Path) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(end of tensor infos, data offset, {tensor: (absolute start, nbytes)}) of a valid GGUF."""
    from quantcli.loaders.gguf import GGUFFile

    with GGUFFile(path) as f:
        spans = {t.name: (f.data_offset + t.offset, t.nbytes) for t in f.tensors.values()}
        return f.meta_end, f.data_offset, spans


def _kv_end(path: Path) -> int:
    """Byte offset where the tensor-info section begins (= end of the KV section)."""
    from quantcli.loaders.gguf import GGUFFile

    with GGUFFile(path) as f:
        return 24 + sum(len(kv.raw) for kv in f.kv.values())


def gguf_truncated(keep: Callable[[Path], int]) -> Callable:
    return gguf_bytes_case(lambda b: b.gguf.read_bytes()[: keep(b.gguf)])


def gguf_edited(edit: Callable[[bytearray, Path], None], command: str = "quantize") -> Callable:
    def make(bases: Bases) -> bytes:
        blob = bytearray(bases.gguf.read_bytes())
        edit(blob, bases.gguf)
        return bytes(blob)

    return gguf_bytes_case(make, command)


def _tensor_info_pos(path: Path, name: str) -> int:
    """Offset of tensor `name`'s info record (its name length field)."""
    blob = path.read_bytes()
    return blob.index(gguf_str(name), _kv_end(path))


def _patch_tensor_info(name: str, *, ne: tuple[int, ...] | None = None, ggml_type: int | None = None,
                       offset: int | None = None, name_to: str | None = None) -> Callable:
    """Rewrite fields of one tensor-info record in place (same n_dims, so the layout does not move)."""

    def edit(blob: bytearray, path: Path) -> None:
        pos = _tensor_info_pos(path, name)
        name_len = struct.unpack_from("<Q", blob, pos)[0]
        if name_to is not None:
            assert len(name_to) == name_len
            blob[pos + 8 : pos + 8 + name_len] = name_to.encode()
        p = pos + 8 + name_len
        n_dims = struct.unpack_from("<I", blob, p)[0]
        p += 4
        if ne is not None:
            assert len(ne) == n_dims
            struct.pack_into(f"<{n_dims}q", blob, p, *ne)
        p += 8 * n_dims
        if ggml_type is not None:
            struct.pack_into("<i", blob, p, ggml_type)
        p += 4
        if offset is not None:
            struct.pack_into("<Q", blob, p, offset)

    return edit


def _gguf_poke_nan(blob: bytearray, path: Path) -> None:
    _, _, spans = _gguf_layout(path)
    start, _ = spans["blk.0.ffn_up.weight"]
    blob[start : start + 2] = np.array([np.nan], dtype="<f2").tobytes()


def _gguf_poke_inf(blob: bytearray, path: Path) -> None:
    _, _, spans = _gguf_layout(path)
    start, _ = spans["blk.1.attn_q.weight"]
    blob[start + 6 : start + 8] = np.array([-np.inf], dtype="<f2").tobytes()


def _gguf_count(which: str, value: int) -> Callable:
    def edit(blob: bytearray, path: Path) -> None:
        struct.pack_into("<q", blob, 8 if which == "tensors" else 16, value)

    return edit


def _gguf_duplicate_kv(bases: Bases) -> bytes:
    blob = bases.gguf.read_bytes()
    n_tensors, n_kv = struct.unpack_from("<qq", blob, 8)
    extra = kv_string("general.architecture", "llama")
    return blob[:8] + struct.pack("<qq", n_tensors, n_kv + 1) + extra + blob[24:]


def _gguf_flip(seed: int, section: str) -> Callable:
    def make(bases: Bases) -> bytes:
        blob = bases.gguf.read_bytes()
        kv_end = _kv_end(bases.gguf)
        meta_end, _, _ = _gguf_layout(bases.gguf)
        start, end = {"fixed": (4, 24), "infos": (kv_end, meta_end)}[section]
        return flip_bytes(blob, seed, start, end, n=2)

    return gguf_bytes_case(make)


# --------------------------------------------------------------------------------------------------------
# imatrix crafting


def imatrix_case(make: Callable[[Bases, Path], Path]) -> Callable:
    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        path = make(bases, inp)
        return quantize_argv(bases.gguf, out, "--imatrix", str(path), qtype="Q4_0")

    return build


def dat_bytes(blob_of: Callable[[Bases], bytes], name: str = "bad.dat") -> Callable:
    def make(bases: Bases, inp: Path) -> Path:
        path = inp / name
        path.write_bytes(blob_of(bases))
        return path

    return make


NAME = b"blk.0.attn_q.weight"
ONE_DAT = struct.pack("<i", 1) + dat_entry(NAME, 1, [1.0] * 64)


def _imatrix_gguf_with(entries: Callable[[Bases], dict[str, tuple[np.ndarray, np.ndarray]]]) -> Callable:
    def make(bases: Bases, inp: Path) -> Path:
        return write_gguf_imatrix(inp / "bad-imatrix.gguf", entries(bases))

    return make


def _imatrix_gguf_raw(edit: Callable[[bytes], bytes]) -> Callable:
    def make(bases: Bases, inp: Path) -> Path:
        path = inp / "bad-imatrix.gguf"
        path.write_bytes(edit(bases.imatrix_gguf.read_bytes()))
        return path

    return make


def _imatrix_without_meta(bases: Bases, inp: Path) -> Path:
    path = inp / "plain.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.ones(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _imatrix_kv_types(chunk_count: object, chunk_size: int) -> Callable[[Bases, Path], Path]:
    """An imatrix whose chunk_count / chunk_size have the wrong GGUF type or range."""

    def make(bases: Bases, inp: Path) -> Path:
        path = inp / "kv-types.gguf"
        w = gguf.GGUFWriter(str(path), "imatrix")
        w.add_array("imatrix.datasets", ["x"])
        if isinstance(chunk_count, str):
            w.add_string("imatrix.chunk_count", chunk_count)
        elif isinstance(chunk_count, float):
            w.add_float32("imatrix.chunk_count", chunk_count)
        else:
            w.add_uint32("imatrix.chunk_count", chunk_count)
        w.add_int32("imatrix.chunk_size", chunk_size)
        w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(64, dtype=np.float32))
        w.add_tensor("blk.0.attn_q.weight.counts", np.ones(1, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    return make


def _imatrix_counts_f16(bases: Bases, inp: Path) -> Path:
    path = inp / "f16-counts.gguf"
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_array("imatrix.datasets", ["x"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 64)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.ones(2, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------------------------------------
# config.json / tokenizer / manifest


def model_file_case(rel: str, content: bytes | str | Callable[[Path], None], qtype: str = "q8_0") -> Callable:
    """Copy the model and replace file `rel` (bytes/str content, or a callable editing the model dir)."""

    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        model = copy_model(bases, inp)
        if callable(content):
            content(model)
        elif isinstance(content, bytes):
            (model / rel).write_bytes(content)
        else:
            (model / rel).write_text(content)
        return convert_argv(model, out, qtype)

    return build


def config_edit(**changes: object) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        cfg = json.loads((model / "config.json").read_text())
        for key, value in changes.items():
            if value is _DELETE:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (model / "config.json").write_text(json.dumps(cfg))

    return edit


_DELETE = object()


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda model: (model / rel).unlink()


def manifest_case(text: str | bytes | Callable[[Bases], str], suffix: str = ".yaml", dry_run: bool = False) -> Callable:
    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        path = inp / f"jobs{suffix}"
        body = text(bases) if callable(text) else text
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body)
        return ["batch", str(path), "--output-dir", str(out), *(["--dry-run"] if dry_run else [])]

    return build


def _laughs(depth: int) -> str:
    """A YAML 'billion laughs': `depth` levels of 9 aliases each (9**depth strings once expanded)."""
    lines = ["jobs:", '  - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, depth):
        lines.append(f"  - &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    build: Callable[[Path, Path, Bases], list[str]]
    expect: int | frozenset[int]
    needle: str = ""  # text the error line must contain (the file or field it names)
    flips: bool = False  # random damage: exit 0 with a readable output is also acceptable

    @property
    def codes(self) -> frozenset[int]:
        return self.expect if isinstance(self.expect, frozenset) else frozenset({int(self.expect)})


FLIP_CODES = frozenset({0, int(X.INPUT_MISSING), int(X.INPUT_INVALID), int(X.UNSUPPORTED)})

CASES: list[Case] = []


def case(id: str, category: str, build: Callable, expect: int | frozenset[int], needle: str = "", **kw: object) -> None:
    CASES.append(Case(id, category, build, expect, needle, **kw))  # type: ignore[arg-type]


# --- safetensors: truncations --------------------------------------------------------------------------
for label, keep in {
    "empty": lambda n, p: 0,
    "4_bytes": lambda n, p: 4,
    "length_field_only": lambda n, p: 8,
    "inside_header": lambda n, p: 8 + (_st_header_end(p) - 8) // 2,
    "header_minus_1": lambda n, p: _st_header_end(p) - 1,
    "at_data_start": lambda n, p: _st_header_end(p),
    "data_plus_1": lambda n, p: _st_header_end(p) + 1,
    "middle_of_data": lambda n, p: (_st_header_end(p) + n) // 2,
    "last_byte_missing": lambda n, p: n - 1,
}.items():
    case(f"st_truncated_{label}", "safetensors truncation", truncate_file("model.safetensors", keep), X.INPUT_INVALID,
         "model.safetensors")

# --- safetensors: garbled headers ------------------------------------------------------------------------
case("st_header_len_2_64", "safetensors header", model_file_case("model.safetensors", lambda m: (m / "model.safetensors").write_bytes(
         (2**64 - 1).to_bytes(8, "little") + (m / "model.safetensors").read_bytes()[8:])),
     X.INPUT_INVALID, "header length")
case("st_header_not_json", "safetensors header", st_case(lambda h, d: (b"{\"a\": [1, 2" + b" " * 30, d)), X.INPUT_INVALID,
     "not valid JSON")
case("st_header_not_utf8", "safetensors header", st_case(lambda h, d: (b"\xff\xfe" + json.dumps(h).encode()[2:], d)),
     X.INPUT_INVALID, "model.safetensors")
case("st_header_is_list", "safetensors header", st_case(lambda h, d: (b"[1, 2, 3]", d)), X.INPUT_INVALID, "JSON object")
case("st_entry_not_object", "safetensors header", st_case(lambda h, d: ({**h, NORM: [1, 2]}, d)), X.INPUT_INVALID, NORM)
case("st_unknown_dtype", "safetensors header", st_case(_set(UP0, "dtype", "F7")), X.INPUT_INVALID, "F7")
case("st_negative_shape", "safetensors header", st_case(_set(UP0, "shape", [-128, -64])), X.INPUT_INVALID, UP0)
case("st_float_shape", "safetensors header", st_case(_set(NORM, "shape", [64.0])), X.INPUT_INVALID, NORM)
case("st_offsets_reversed", "safetensors header",
     st_case(lambda h, d: (_update(h, UP0, data_offsets=h[UP0]["data_offsets"][::-1]), d)),
     X.INPUT_INVALID, UP0)
case("st_offsets_not_pair", "safetensors header", st_case(_set(UP0, "data_offsets", [0])), X.INPUT_INVALID, UP0)
case("st_offsets_past_eof", "safetensors header", st_case(_set(NORM, "data_offsets", [10**12, 10**12 + 128])),
     X.INPUT_INVALID, "past the end")
case("st_metadata_not_object", "safetensors header", st_case(lambda h, d: ({**h, "__metadata__": [1]}, d)),
     X.INPUT_INVALID, "__metadata__")
case("st_flip_header_seed1", "safetensors random flips",
     model_file_case("model.safetensors", lambda m: (m / "model.safetensors").write_bytes(
         flip_bytes((m / "model.safetensors").read_bytes(), 1, 8, _st_header_end(m / "model.safetensors"), 4))),
     FLIP_CODES, flips=True)
case("st_flip_header_seed2", "safetensors random flips",
     model_file_case("model.safetensors", lambda m: (m / "model.safetensors").write_bytes(
         flip_bytes((m / "model.safetensors").read_bytes(), 2, 8, _st_header_end(m / "model.safetensors"), 4))),
     FLIP_CODES, flips=True)
case("st_flip_length_field", "safetensors random flips",
     model_file_case("model.safetensors", lambda m: (m / "model.safetensors").write_bytes(
         flip_bytes((m / "model.safetensors").read_bytes(), 3, 0, 8, 2))),
     X.INPUT_INVALID, "model.safetensors")

# --- safetensors: sizes, spans, names -----------------------------------------------------------------
case("st_shape_size_mismatch", "safetensors shape/size", st_case(_set(UP0, "shape", [128, 65])), X.INPUT_INVALID, UP0)
case("st_shape_overflows_int64", "safetensors shape/size", st_case(_set(UP0, "shape", [2**62, 2**2])),
     X.INPUT_INVALID, UP0)
case("st_zero_span_overflowing_shape", "safetensors shape/size",
     st_case(lambda h, d: ({**h, NORM: {"dtype": "BF16", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 0]}}, d)),
     X.INPUT_INVALID, NORM)
case("st_overlapping_spans", "safetensors shape/size",
     st_case(lambda h, d: (_update(h, UP0, data_offsets=list(h[GATE0]["data_offsets"])), d)),
     X.INPUT_INVALID, "overlap")
case("st_duplicate_name_in_header", "safetensors names",
     st_case(lambda h, d: (json.dumps(h).encode()[:-1] + b", " + json.dumps({NORM: h[NORM]}).encode()[1:], d)),
     X.INPUT_INVALID, "twice")
case("st_duplicate_name_across_shards", "safetensors names",
     model_file_case("model-2.safetensors", lambda m: shutil.copy(m / "model.safetensors", m / "model-2.safetensors")),
     X.INPUT_INVALID, "names must be unique")
case("st_index_shard_missing", "safetensors names",
     model_file_case("model.safetensors.index.json", json.dumps({"weight_map": {NORM: "model-00009.safetensors"}})),
     X.INPUT_MISSING, "model-00009.safetensors")
case("st_index_path_escape", "safetensors names",
     model_file_case("model.safetensors.index.json", json.dumps({"weight_map": {NORM: "../x.safetensors"}})),
     X.INPUT_INVALID, "weight_map")
case("st_index_not_listing_tensors", "safetensors names",
     model_file_case("model.safetensors.index.json", json.dumps({"weight_map": {NORM: "model.safetensors"}})),
     X.INPUT_INVALID, "index")
case("st_unknown_tensor_name", "safetensors names",
     st_case(lambda h, d: ({**h, "model.layers.0.mystery.weight": {"dtype": "BF16", "shape": [1],
                                                                    "data_offsets": [len(d), len(d) + 2]}}, d + b"\0\0")), X.UNSUPPORTED, "mystery")
case("st_missing_tensor_arch_needs", "safetensors names",
     st_case(lambda h, d: ({k: v for k, v in h.items() if k != "model.layers.1.mlp.up_proj.weight"}, d)),
     X.INPUT_INVALID, "up_proj")
case("st_transposed_weight", "safetensors shape/size", st_case(_set(UP0, "shape", [64, 128])), X.INPUT_INVALID,
     "up_proj")
case("st_norm_empty", "safetensors shape/size", st_case(lambda h, d: (_update(h, NORM, shape=[0], data_offsets=[h[NORM]["data_offsets"][0]] * 2), d)),
     X.INPUT_INVALID, NORM)

# --- safetensors: dtypes and values ----------------------------------------------------------------------
case("st_dtype_i16", "safetensors dtype", st_case(_set(UP0, "dtype", "I16")), X.UNSUPPORTED, "I16")
case("st_dtype_bool", "safetensors dtype",
     st_case(lambda h, d: (_update(h, EMBED, dtype="BOOL", shape=[640, 64]), d)), X.UNSUPPORTED, "BOOL")
case("st_dtype_f8", "safetensors dtype", st_case(lambda h, d: (_update(h, EMBED, dtype="F8_E4M3", shape=[640, 64]), d)), X.UNSUPPORTED, "F8_E4M3")
case("st_nan_weight_q8_0", "NaN/Inf weights", st_case(_poke(UP0, b"\xc0\x7f")), X.INPUT_INVALID, "non-finite")
case("st_inf_weight_q8_0", "NaN/Inf weights", st_case(_poke(GATE0, b"\x80\xff")), X.INPUT_INVALID, "non-finite")

# --- config.json --------------------------------------------------------------------------------------------
case("cfg_missing", "config.json", model_file_case("config.json", _remove("config.json")), X.INPUT_MISSING, "config.json")
case("cfg_not_utf8", "config.json", model_file_case("config.json", b"\xff\xfe{{{"), X.INPUT_INVALID, "config.json")
case("cfg_truncated", "config.json", model_file_case("config.json", lambda m: (m / "config.json").write_bytes(
    (m / "config.json").read_bytes()[:50])), X.INPUT_INVALID, "config.json")
case("cfg_is_list", "config.json", model_file_case("config.json", "[1, 2]"), X.INPUT_INVALID, "config.json")
case("cfg_unknown_architecture", "config.json", model_file_case("config.json", config_edit(architectures=["FooForCausalLM"])),
     X.UNSUPPORTED, "FooForCausalLM")
case("cfg_architectures_not_list", "config.json", model_file_case("config.json", config_edit(architectures=5)),
     X.UNSUPPORTED, "architectures")
case("cfg_deep_nesting", "config.json", model_file_case("config.json", "[" * 100_000 + "]" * 100_000), X.INPUT_INVALID,
     "config.json")
case("cfg_hidden_size_string", "config.json", model_file_case("config.json", config_edit(hidden_size="64")),
     X.INPUT_INVALID, "hidden_size")
case("cfg_heads_zero", "config.json", model_file_case("config.json", config_edit(num_attention_heads=0)),
     X.INPUT_INVALID, "num_attention_heads")
case("cfg_heads_null", "config.json", model_file_case("config.json", config_edit(num_attention_heads=None)),
     X.INPUT_INVALID, "num_attention_heads")
case("cfg_layers_huge", "config.json", model_file_case("config.json", config_edit(num_hidden_layers=10**12)),
     X.INPUT_INVALID, "num_hidden_layers")
case("cfg_heads_do_not_split_q", "config.json", model_file_case("config.json", config_edit(num_attention_heads=3)),
     X.INPUT_INVALID, "num_attention_heads")
case("cfg_kv_heads_do_not_split_k", "config.json", model_file_case("config.json", config_edit(num_key_value_heads=3),
                                                                   qtype="Q4_K_M"), X.INPUT_INVALID, "num_key_value_heads")
case("cfg_vocab_size_huge", "config.json", model_file_case("config.json", config_edit(vocab_size=10**9)),
     X.INPUT_INVALID, "vocab_size")
case("cfg_rope_theta_string", "config.json", model_file_case("config.json", config_edit(rope_theta="x")),
     X.INPUT_INVALID, "llama.rope.freq_base")
case("cfg_context_negative", "config.json", model_file_case("config.json", config_edit(max_position_embeddings=-1),
                                                            qtype="Q4_K_M"), X.INPUT_INVALID, "llama.context_length")
case("cfg_rope_scaling_factor_string", "config.json", model_file_case("config.json", config_edit(
    rope_scaling={"type": "linear", "factor": "x"})), X.INPUT_INVALID, "llama.rope.scaling.factor")
case("cfg_hidden_size_disagrees", "config.json", model_file_case("config.json", config_edit(hidden_size=128)),
     X.INPUT_INVALID, "hidden_size")
case("cfg_more_layers_than_tensors", "config.json", model_file_case("config.json", config_edit(num_hidden_layers=3)),
     X.INPUT_INVALID, "model.layers.2")

# --- tokenizer files ----------------------------------------------------------------------------------------
case("tok_model_missing", "tokenizer", model_file_case("tokenizer.model", _remove("tokenizer.model")), X.INPUT_MISSING,
     "tokenizer")
case("tok_model_garbage", "tokenizer", model_file_case("tokenizer.model", b"garbage" * 10), X.INPUT_INVALID,
     "tokenizer.model")
case("tok_model_truncated", "tokenizer", model_file_case("tokenizer.model", lambda m: (m / "tokenizer.model").write_bytes(
    (m / "tokenizer.model").read_bytes()[:1000])), X.INPUT_INVALID, "tokenizer.model")
case("tok_config_not_json", "tokenizer", model_file_case("tokenizer_config.json", "{not json"), X.INPUT_INVALID,
     "tokenizer_config.json")
case("tok_json_not_json", "tokenizer", model_file_case("tokenizer.json", lambda m: (
    (m / "tokenizer.model").unlink(), (m / "tokenizer.json").write_text("{not json"))), X.INPUT_INVALID,
     "tokenizer.json")
case("tok_json_model_not_object", "tokenizer", model_file_case("tokenizer.json", lambda m: (
    (m / "tokenizer.model").unlink(), (m / "tokenizer.json").write_text('{"model": 5}'))), X.INPUT_INVALID,
     "tokenizer.json")
case("tok_json_decoder_not_object", "tokenizer", model_file_case("tokenizer.json", lambda m: (
    (m / "tokenizer.model").unlink(),
    (m / "tokenizer.json").write_text('{"model": {"type": "BPE", "byte_fallback": true}, "decoder": 7}'))),
     X.INPUT_INVALID, "tokenizer.json")
case("tok_config_is_list", "tokenizer", model_file_case("tokenizer_config.json", "[]"), X.INPUT_INVALID,
     "tokenizer_config.json")
case("tok_added_tokens_is_list", "tokenizer", model_file_case("added_tokens.json", "[1]"), X.INPUT_INVALID,
     "added_tokens.json")

# --- GGUF: truncations ----------------------------------------------------------------------------------------
for label, keep in {
    "10_bytes": lambda p: 10,
    "fixed_header": lambda p: 24,
    "inside_first_key": lambda p: 30,
    "inside_kv_section": lambda p: _kv_end(p) // 2,
    "inside_tensor_infos": lambda p: (_kv_end(p) + _gguf_layout(p)[0]) // 2,
    "at_data_start": lambda p: _gguf_layout(p)[1],
    "inside_data": lambda p: (_gguf_layout(p)[1] + p.stat().st_size) // 2,
    "last_byte_missing": lambda p: p.stat().st_size - 1,
}.items():
    case(f"gguf_truncated_{label}", "GGUF truncation", gguf_truncated(keep), X.INPUT_INVALID, "bad.gguf")

# --- GGUF: hostile headers (every count/length bounded by the file size) ----------------------------------
case("gguf_bad_magic", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(0, 1, ARCH, magic=b"GGML"))),
     X.INPUT_INVALID, "not a GGUF")
case("gguf_version_99", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(0, 1, ARCH, version=99))),
     X.UNSUPPORTED, "version")
case("gguf_n_tensors_2_60", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(2**60, 1, ARCH))),
     X.INPUT_INVALID, "bad.gguf")
case("gguf_n_kv_2_60", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(0, 2**60, ARCH))),
     X.INPUT_INVALID, "bad.gguf")
case("gguf_string_len_2_40", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 1, gguf_str("general.architecture") + struct.pack("<iQ", 8, 2**40)))), X.INPUT_INVALID, "general.architecture")
case("gguf_array_count_2_50", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 2, ARCH + gguf_str("x.arr") + struct.pack("<iiQ", 9, 0, 2**50)))), X.INPUT_INVALID, "x.arr")
case("gguf_string_array_count_2_50", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 2, ARCH + gguf_str("x.arr") + struct.pack("<iiQ", 9, 8, 2**50)))), X.INPUT_INVALID, "x.arr")
case("gguf_tensor_offset_past_eof", "GGUF header", gguf_edited(_patch_tensor_info("output_norm.weight", offset=2**40)),
     X.INPUT_INVALID, "output_norm.weight")
case("gguf_tensor_misaligned", "GGUF header", gguf_edited(_patch_tensor_info("output_norm.weight", offset=3)),
     X.INPUT_INVALID, "output_norm.weight")
case("gguf_tensor_ne_overflows_int64", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    1, 1, ARCH + tensor_info("token_embd.weight", (32, 2**32, 2**32), F32, 0)))), X.INPUT_INVALID, "token_embd.weight")
case("gguf_tensor_negative_dim", "GGUF header", gguf_edited(_patch_tensor_info("token_embd.weight", ne=(64, -320))),
     X.INPUT_INVALID, "token_embd.weight")
case("gguf_tensor_shape_too_big_for_data", "GGUF header",
     gguf_edited(_patch_tensor_info("token_embd.weight", ne=(64, 320 * 1000))), X.INPUT_INVALID, "token_embd.weight")
case("gguf_tensor_unknown_type", "GGUF header", gguf_edited(_patch_tensor_info("token_embd.weight", ggml_type=999)),
     X.UNSUPPORTED, "999")
case("gguf_tensor_five_dims", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    1, 1, ARCH + tensor_info("token_embd.weight", (32, 1, 1, 1, 1), F32, 0)))), X.INPUT_INVALID, "dimensions")
case("gguf_duplicate_tensor_name", "GGUF header",
     gguf_edited(_patch_tensor_info("blk.1.ffn_up.weight", name_to="blk.0.ffn_up.weight")),
     X.INPUT_INVALID, "duplicate")
case("gguf_duplicate_kv_key", "GGUF header", gguf_bytes_case(_gguf_duplicate_kv), X.INPUT_INVALID, "duplicate")
case("gguf_unknown_value_type", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 1, gguf_str("general.architecture") + struct.pack("<i", 77)))), X.INPUT_INVALID, "value type")
case("gguf_alignment_zero", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 2, ARCH + kv_u32("general.alignment", 0)))), X.INPUT_INVALID, "alignment")
case("gguf_key_not_utf8", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 1, gguf_str(b"\xff\xfe") + struct.pack("<iI", 4, 0)))), X.INPUT_INVALID, "UTF-8")
case("gguf_tensor_count_says_more", "GGUF header", gguf_edited(_gguf_count("tensors", 21)), X.INPUT_INVALID, "bad.gguf")
case("gguf_kv_count_says_more", "GGUF header", gguf_edited(_gguf_count("kv", 10_000)), X.INPUT_INVALID, "bad.gguf")
case("gguf_no_tensors", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(0, 1, ARCH))), X.INPUT_INVALID,
     "no tensors")
case("gguf_no_architecture", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    1, 0, tensor_info("token_embd.weight", (32, 4), F32, 0)))), X.INPUT_INVALID, "architecture")
case("gguf_weight_dtype_i16", "GGUF header", gguf_edited(_patch_tensor_info(
    "blk.0.ffn_up.weight", ggml_type=int(gguf.GGMLQuantizationType.I16))), X.UNSUPPORTED, "I16")
case("eval_norm_dtype_i32", "GGUF header", gguf_edited(_patch_tensor_info(
    "output_norm.weight", ggml_type=int(gguf.GGMLQuantizationType.I32)), "eval"), X.UNSUPPORTED, "I32")
case("gguf_n_kv_100k_in_file", "GGUF header", gguf_bytes_case(lambda b: gguf_header(
    0, 100_000, ARCH + b"".join(gguf_str(f"k{i}") + struct.pack("<iB", 0, 1) for i in range(99_999)))),
     X.INPUT_INVALID, "implausible counts")
case("gguf_nan_weight", "NaN/Inf weights", gguf_edited(_gguf_poke_nan), X.INPUT_INVALID, "non-finite")
case("gguf_inf_weight", "NaN/Inf weights", gguf_edited(_gguf_poke_inf), X.INPUT_INVALID, "non-finite")
case("gguf_flip_fixed_header", "GGUF random flips", _gguf_flip(11, "fixed"), FLIP_CODES, flips=True)
case("gguf_flip_tensor_infos_seed12", "GGUF random flips", _gguf_flip(12, "infos"), FLIP_CODES, flips=True)
case("gguf_flip_tensor_infos_seed13", "GGUF random flips", _gguf_flip(13, "infos"), FLIP_CODES, flips=True)
# the same hostile headers through inspect, plan and eval (eval reads GGUF with gguf.GGUFReader)
case("inspect_n_tensors_2_60", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(2**60, 1, ARCH)), "inspect"),
     X.INPUT_INVALID, "bad.gguf")
case("inspect_ne_overflows_int64", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    1, 1, ARCH + tensor_info("token_embd.weight", (32, 2**32, 2**32), F32, 0))), "inspect"), X.INPUT_INVALID,
     "token_embd.weight")
case("plan_array_count_2_50", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 2, ARCH + gguf_str("x.arr") + struct.pack("<iiQ", 9, 0, 2**50))), "plan"), X.INPUT_INVALID, "x.arr")
case("eval_array_count_2_50", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 2, ARCH + gguf_str("x.arr") + struct.pack("<iiQ", 9, 0, 2**50))), "eval"), X.INPUT_INVALID, "bad.gguf")
case("eval_string_len_2_40", "GGUF header", gguf_bytes_case(lambda b: crafted(gguf_header(
    0, 1, gguf_str("general.architecture") + struct.pack("<iQ", 8, 2**40))), "eval"), X.INPUT_INVALID, "bad.gguf")
case("eval_tensor_offset_past_eof", "GGUF header",
     gguf_edited(_patch_tensor_info("output_norm.weight", offset=2**40), "eval"), X.INPUT_INVALID, "bad.gguf")

# --- the same bad checkpoints through `plan` and `eval` (HF directory sources) ----------------------------
def _on_model(command: str, mutate: Callable[[Path], None]) -> Callable:
    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        model = copy_model(bases, inp)
        mutate(model)
        if command == "plan":
            return ["plan", str(model), "--type", "Q4_K_M", "--json"]
        return ["eval", str(model), "--chunks", "1", "--ctx", "16"]

    return build


def _truncate_weights(model: Path) -> None:
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])


case("plan_hf_truncated_safetensors", "HF dir via plan/eval", _on_model("plan", _truncate_weights), X.INPUT_INVALID,
     "model.safetensors")
case("plan_hf_config_is_list", "HF dir via plan/eval", _on_model("plan", lambda m: (m / "config.json").write_text("[]")),
     X.INPUT_INVALID, "config.json")
case("plan_hf_dtype_i16", "HF dir via plan/eval", _on_model("plan", lambda m: write_safetensors(
    m / "model.safetensors", *((lambda h, d: (_update(h, UP0, dtype="I16"), d))(*read_safetensors(m / "model.safetensors"))))),
     X.UNSUPPORTED, "I16")
case("eval_hf_truncated_safetensors", "HF dir via plan/eval", _on_model("eval", _truncate_weights), X.INPUT_INVALID,
     "model.safetensors")
case("eval_hf_overlapping_spans", "HF dir via plan/eval", _on_model("eval", lambda m: write_safetensors(
    m / "model.safetensors", *((lambda h, d: (_update(h, UP0, data_offsets=list(h[GATE0]["data_offsets"])), d))(
        *read_safetensors(m / "model.safetensors"))))), X.INPUT_INVALID, "overlap")

case("eval_hf_rope_theta_string", "HF dir via plan/eval", _on_model("eval", config_edit(rope_theta="x")),
     X.INPUT_INVALID, "rope_theta")

# --- packed safetensors outputs (quantized: must refuse non-finite weights like the GGUF types) --------
def _packed_nan(fmt: str, bits: int, group: int) -> Callable:
    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        model = copy_model(bases, inp)
        header, data = read_safetensors(model / "model.safetensors")
        header, data = _poke(UP0, b"\xc0\x7f")(header, data)
        write_safetensors(model / "model.safetensors", header, data)
        return ["convert", str(model), "-o", str(out / "packed"), "--format", fmt, "--bits", str(bits),
                "--group-size", str(group)]

    return build


case("packed_truncated_safetensors", "packed outputs", lambda inp, out, b: (
    _truncate_weights(copy_model(b, inp)),
    ["convert", str(inp / "model"), "-o", str(out / "packed"), "--format", "ct", "--bits", "4"])[1],
     X.INPUT_INVALID, "model.safetensors")
case("packed_nan_weight_mlx", "packed outputs", _packed_nan("mlx", 4, 64), X.INPUT_INVALID, "non-finite")
case("packed_nan_weight_ct", "packed outputs", _packed_nan("ct", 4, 32), X.INPUT_INVALID, "non-finite")
case("packed_nan_weight_gptq", "packed outputs", _packed_nan("gptq", 8, 32), X.INPUT_INVALID, "non-finite")
case("packed_nan_weight_awq", "packed outputs", _packed_nan("awq", 4, 32), X.INPUT_INVALID, "non-finite")

# --- filesystem oddities in a model directory -------------------------------------------------------------
def _sparse(path: Path, size: int) -> None:
    """`path` as a file of `size` bytes that occupies no disk (a hole after a "{")."""
    with open(path, "wb") as fh:
        fh.write(b"{")
        fh.truncate(size)


def _replace_with(rel: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        (model / rel).unlink()
        make(model / rel)

    return edit


case("fs_safetensors_is_directory", "filesystem oddities", model_file_case(
    "model.safetensors", _replace_with("model.safetensors", lambda p: p.mkdir())), X.INPUT_INVALID, "directory")
case("fs_safetensors_symlink_loop", "filesystem oddities", model_file_case(
    "model.safetensors", _replace_with("model.safetensors", lambda p: p.symlink_to(p.name))), X.INPUT_MISSING,
     "model.safetensors")
case("fs_safetensors_is_dev_zero", "filesystem oddities", model_file_case(
    "model.safetensors", _replace_with("model.safetensors", lambda p: p.symlink_to("/dev/zero"))), X.INPUT_INVALID,
     "model.safetensors")
case("fs_config_sparse_257_mib", "filesystem oddities", model_file_case(
    "config.json", lambda m: _sparse(m / "config.json", 257 << 20)), X.INPUT_INVALID, "MiB of JSON")
case("fs_tokenizer_config_sparse_257_mib", "filesystem oddities", model_file_case(
    "tokenizer_config.json", lambda m: _sparse(m / "tokenizer_config.json", 257 << 20)), X.INPUT_INVALID,
     "MiB of JSON")
case("fs_config_is_directory", "filesystem oddities", model_file_case(
    "config.json", _replace_with("config.json", lambda p: p.mkdir())), X.INPUT_MISSING, "config.json")
case("fs_config_is_dev_zero", "filesystem oddities", model_file_case(
    "config.json", _replace_with("config.json", lambda p: p.symlink_to("/dev/zero"))), X.INPUT_MISSING, "config.json")

# --- option values that size an allocation ------------------------------------------------------------
case("generate_ctx_1e9", "option values", lambda inp, out, b: ["generate", str(b.gguf), "-p", "hello", "-n", "2",
                                                                "--ctx", "1000000000"], X.USAGE, "--ctx")
case("eval_ctx_1e9", "option values", lambda inp, out, b: ["eval", str(b.gguf), "--ctx", "1000000000", "--chunks", "1"],
     X.INPUT_INVALID, "tokens")

# --- option files ---------------------------------------------------------------------------------------
case("tensor_type_file_not_utf8", "option files", lambda inp, out, b: (
    (inp / "types.txt").write_bytes(b"\xff\xfe\x00attn_v=q8_0"),
    quantize_argv(b.gguf, out, "--tensor-type-file", str(inp / "types.txt")))[1], X.INPUT_INVALID, "types.txt")
case("tensor_type_file_missing", "option files", lambda inp, out, b: quantize_argv(
    b.gguf, out, "--tensor-type-file", str(inp / "types.txt")), X.INPUT_MISSING, "types.txt")
case("tensor_type_file_bad_regex", "option files", lambda inp, out, b: (
    (inp / "types.txt").write_text("(unclosed=q8_0\n"),
    quantize_argv(b.gguf, out, "--tensor-type-file", str(inp / "types.txt")))[1], X.USAGE, "regular expression")

# --- an output path that is one of the inputs (--force must not destroy the source) -----------------------
def _output_over_input(target: str, *extra: str) -> Callable:
    def build(inp: Path, out: Path, bases: Bases) -> list[str]:
        model = copy_model(bases, inp)
        return ["convert", str(model), "-o", str(model / target) if target else str(model), *extra, "--force"]

    return build


def _quantize_in_place(inp: Path, out: Path, bases: Bases) -> list[str]:
    src = inp / "model.gguf"
    shutil.copy(bases.gguf, src)
    return ["quantize", str(src), str(src), "Q8_0", "--force"]


case("output_is_input_quantize", "output over input", _quantize_in_place, X.USAGE, "same")
case("output_is_input_safetensors", "output over input", _output_over_input("model.safetensors", "--type", "q8_0"),
     X.USAGE, "model.safetensors")
case("output_is_input_config", "output over input", _output_over_input("config.json", "--type", "Q4_K_M"),
     X.USAGE, "config.json")
case("output_is_input_dir_packed", "output over input", _output_over_input("", "--format", "ct", "--bits", "4", "--group-size", "32"),
     X.USAGE, "model")

# --- GGUF hyper-parameters that disagree with the tensors (the NumPy runtime builds the model from them) ---
def _patch_u32_kv(key: str, value: int) -> Callable[[bytearray, Path], None]:
    def edit(blob: bytearray, path: Path) -> None:
        encoded = gguf_str(key)
        pos = bytes(blob).index(encoded) + len(encoded)
        assert struct.unpack_from("<i", blob, pos)[0] == int(gguf.GGUFValueType.UINT32)
        struct.pack_into("<I", blob, pos + 4, value)

    return edit


for key, value in (("llama.block_count", 2**31), ("llama.attention.head_count", 0),
                   ("llama.attention.head_count", 3), ("llama.attention.head_count_kv", 0)):
    case(f"eval_{key.split('.', 1)[1].replace('.', '_')}_{value}", "GGUF hyper-parameters via eval",
         gguf_edited(_patch_u32_kv(key, value), "eval"), X.INPUT_INVALID, key.split(".")[-1])

# --- imatrix: legacy .dat ----------------------------------------------------------------------------------
case("dat_empty", "imatrix .dat", imatrix_case(dat_bytes(lambda b: b"")), X.INPUT_INVALID, "bad.dat")
case("dat_zero_entries", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<i", 0))), X.INPUT_INVALID, "bad.dat")
case("dat_entry_count_2_31", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<i", 2**31 - 1) + ONE_DAT[4:])),
     X.INPUT_INVALID, "bad.dat")
case("dat_name_length_2_31", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<ii", 1, 2**31 - 1) + NAME)),
     X.INPUT_INVALID, "bad.dat")
case("dat_name_length_negative", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<ii", 1, -5) + NAME)),
     X.INPUT_INVALID, "bad.dat")
case("dat_value_count_2_31", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<ii", 1, len(NAME)) + NAME
                                                                    + struct.pack("<ii", 1, 2**31 - 1))),
     X.INPUT_INVALID, "bad.dat")
for cut in (3, 10, 30, 60, 200):
    case(f"dat_truncated_at_{cut}", "imatrix .dat", imatrix_case(dat_bytes(lambda b, cut=cut: b.imatrix_dat.read_bytes()[:cut])),
         X.INPUT_INVALID, "bad.dat")
case("dat_nan_values", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<i", 1) + dat_entry(NAME, 1, [np.nan] * 64))),
     X.INPUT_INVALID, "non-finite")
case("dat_inf_values", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<i", 1) + dat_entry(NAME, 1, [np.inf] * 64))),
     X.INPUT_INVALID, "non-finite")
case("dat_wrong_length", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<i", 1) + dat_entry(NAME, 1, [1.0] * 48))),
     X.IMATRIX_MISMATCH, "blk.0.attn_q.weight")
case("dat_other_model", "imatrix .dat", imatrix_case(dat_bytes(lambda b: struct.pack("<i", 1)
                                                                + dat_entry(b"blk.9.attn_q.weight", 1, [1.0] * 64))),
     X.IMATRIX_MISMATCH, "different model")
case("imatrix_missing_file", "imatrix .dat", imatrix_case(lambda b, inp: inp / "nope.dat"), X.INPUT_MISSING, "nope.dat")

# --- imatrix: GGUF -------------------------------------------------------------------------------------------
case("imatrix_gguf_truncated", "imatrix GGUF", imatrix_case(_imatrix_gguf_raw(lambda blob: blob[: len(blob) // 2])),
     X.INPUT_INVALID, "bad-imatrix.gguf")
case("imatrix_gguf_n_tensors_2_60", "imatrix GGUF", imatrix_case(_imatrix_gguf_raw(
    lambda blob: blob[:8] + struct.pack("<q", 2**60) + blob[16:])), X.INPUT_INVALID, "bad-imatrix.gguf")
case("imatrix_gguf_no_metadata", "imatrix GGUF", imatrix_case(_imatrix_without_meta), X.INPUT_INVALID, "imatrix metadata")
case("imatrix_gguf_sums_without_counts", "imatrix GGUF", imatrix_case(_imatrix_gguf_raw(
    lambda blob: blob.replace(b"blk.0.attn_q.weight.counts", b"blk.0.attn_q.weight.cOunts", 1))),
     X.INPUT_INVALID, "blk.0.attn_q.weight")
case("imatrix_gguf_sums_counts_mismatch", "imatrix GGUF", imatrix_case(_imatrix_gguf_with(
    lambda b: {"blk.0.attn_q.weight": (np.ones(63), np.ones(2))})), X.INPUT_INVALID, "blk.0.attn_q.weight")
case("imatrix_gguf_counts_f16", "imatrix GGUF", imatrix_case(_imatrix_counts_f16), X.INPUT_INVALID, "F32")
case("imatrix_gguf_chunk_count_string", "imatrix GGUF", imatrix_case(_imatrix_kv_types("abc", 64)), X.INPUT_INVALID,
     "imatrix.chunk_count")
case("imatrix_gguf_chunk_size_negative", "imatrix GGUF", imatrix_case(_imatrix_kv_types(3, -5)), X.INPUT_INVALID,
     "imatrix.chunk_size")
case("imatrix_gguf_chunk_count_float", "imatrix GGUF", imatrix_case(_imatrix_kv_types(1.5e30, 64)), X.INPUT_INVALID,
     "imatrix.chunk_count")
case("imatrix_gguf_nan_sums", "imatrix GGUF", imatrix_case(_imatrix_gguf_with(
    lambda b: {"blk.0.attn_q.weight": (np.full(64, np.nan), np.ones(1))})), X.INPUT_INVALID, "non-finite")
case("imatrix_gguf_wrong_length", "imatrix GGUF", imatrix_case(_imatrix_gguf_with(
    lambda b: {"blk.0.attn_q.weight": (np.ones(128), np.ones(1))})), X.IMATRIX_MISMATCH, "blk.0.attn_q.weight")

# --- batch manifests --------------------------------------------------------------------------------------
case("manifest_missing", "manifest", lambda inp, out, b: ["batch", str(inp / "nope.yaml")], X.INPUT_MISSING, "nope.yaml")
case("manifest_bad_yaml", "manifest", manifest_case("jobs: [\n"), X.INPUT_INVALID, "YAML")
case("manifest_binary", "manifest", manifest_case(b"\xff\xfe\x00garbage"), X.INPUT_INVALID, "jobs.yaml")
case("manifest_empty", "manifest", manifest_case(""), X.INPUT_INVALID, "empty")
case("manifest_unknown_type", "manifest", manifest_case(lambda b: f"jobs:\n  - source: {b.model}\n    type: q9_9\n"),
     X.INPUT_INVALID, "invalid entr")
case("manifest_source_missing", "manifest", manifest_case("jobs:\n  - type: q8_0\n"), X.INPUT_INVALID, "invalid entr")
case("manifest_source_not_found", "manifest", manifest_case("/nonexistent/model q8_0\n", suffix=".txt"),
     X.INPUT_INVALID, "invalid entr")
case("manifest_too_many_fields", "manifest", manifest_case(lambda b: f"{b.model} q8_0 out.gguf extra\n", suffix=".txt"),
     X.INPUT_INVALID, "invalid entr")
case("manifest_bad_placeholder", "manifest", manifest_case(lambda b: f"jobs:\n  - source: {b.model}\n    output: '{{0}}{{name'\n"),
     X.INPUT_INVALID, "invalid entr")
case("manifest_options_list", "manifest", manifest_case(lambda b: f"jobs:\n  - source: {b.model}\n    options: [1]\n"),
     X.INPUT_INVALID, "invalid entr")
case("manifest_models_not_list", "manifest", manifest_case("models: abc\ntypes: [q8_0]\n"), X.INPUT_INVALID, "models")
case("manifest_output_dir_list", "manifest", manifest_case(lambda b: f"output_dir: [1]\njobs:\n  - source: {b.model}\n"),
     X.INPUT_INVALID, "output_dir")
case("manifest_defaults_list", "manifest", manifest_case(lambda b: f"defaults: [1, 2]\njobs:\n  - source: {b.model}\n"),
     X.INPUT_INVALID, "defaults")
case("manifest_jobs_int", "manifest", manifest_case("jobs: 5\n"), X.INPUT_INVALID, "jobs")
case("manifest_deep_nesting", "manifest", manifest_case("[" * 1000 + "]" * 1000), X.INPUT_INVALID, "nested too deeply")
case("manifest_billion_laughs", "manifest", manifest_case(_laughs(11), dry_run=True), X.INPUT_INVALID, "YAML aliases")
case("batch_job_fails_on_bad_model", "batch run", lambda inp, out, b: manifest_case(
    f"jobs:\n  - source: {_broken_model(inp, b)}\n    type: q8_0\n")(inp, out, b), X.BATCH_FAILED, "batch jobs failed")


def _broken_model(inp: Path, bases: Bases) -> Path:
    """A copy of the model whose safetensors file is truncated (the batch job must fail, not crash)."""
    model = copy_model(bases, inp)
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    return model


CATEGORY_COUNTS: dict[str, int] = {}
for _c in CASES:
    CATEGORY_COUNTS[_c.category] = CATEGORY_COUNTS.get(_c.category, 0) + 1

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"

__all__ = ["Bases", "CASES", "Case", "build_bases", "run_cli_in_process"]
