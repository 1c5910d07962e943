"""The streaming stage's threads: the read-ahead of an HF source's tensors (engine/stream.ConverterTensors) and
the GGUF writer's background writes (writers/gguf._BackgroundWriter) change when bytes are read and written,
never which: the same file with and without them, errors raised on the streaming thread, nothing written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from test_batch_models import tiny_llama

from quantcli.atomic import TEMP_MARK
from quantcli.engine import job as job_module
from quantcli.engine.job import convert_model
from quantcli.engine.stream import ConverterTensors
from quantcli.errors import InputInvalid, OutputFailed
from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.loaders import open_checkpoint
from quantcli.sources.hf import SourceTensor
from quantcli.writers import gguf as gguf_writer
from quantcli.writers.gguf import OutputTensor, encode_kv_u32, write_gguf

F32 = GGMLQuantizationType.F32


def _tensors(sizes: list[int]) -> tuple[list[OutputTensor], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    data = {f"t{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    return [OutputTensor(name, (a.size,), F32) for name, a in data.items()], data


def _no_temps(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(TEMP_MARK)]


def test_background_writes_give_the_same_file(tmp_path: Path) -> None:
    """Chunks from a few bytes (never waiting) to several MiB (each waiting for the large one before)."""
    tensors, data = _tensors([7, 300_000, 1_000_000, 33, 2_500_000])
    kv = [("general.alignment_test", encode_kv_u32("general.alignment_test", 1))]

    def chunks(t: OutputTensor) -> list[np.ndarray]:
        return list(np.array_split(data[t.name], 3))

    stages: dict[str, float] = {}
    size_fg, sha_fg = write_gguf(tmp_path / "fg.gguf", kv, tensors, chunks)
    size_bg, sha_bg = write_gguf(tmp_path / "bg.gguf", kv, tensors, chunks, times=stages, background=True)
    assert (tmp_path / "fg.gguf").read_bytes() == (tmp_path / "bg.gguf").read_bytes()
    assert (size_bg, sha_bg) == (size_fg, sha_fg) == (
        (tmp_path / "bg.gguf").stat().st_size, hashlib.sha256((tmp_path / "bg.gguf").read_bytes()).hexdigest()
    )
    assert set(stages) == {"write", "hash", "sync"} and all(v >= 0 for v in stages.values())


def test_a_failed_background_write_is_raised_and_leaves_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    tensors, data = _tensors([400_000] * 6)
    calls = {"n": 0}
    real_write = gguf_writer._HashingFile.write

    def failing_write(self: gguf_writer._HashingFile, chunk: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real_write(self, chunk)

    monkeypatch.setattr(gguf_writer._HashingFile, "write", failing_write)
    out = tmp_path / "out.gguf"
    with pytest.raises(OutputFailed, match="No space left"):  # as a failed foreground write: exit code 7
        write_gguf(out, [], tensors, lambda t: [data[t.name]], background=True)
    assert not out.exists() and _no_temps(tmp_path)


def test_a_failing_chunk_stops_the_background_writer(tmp_path: Path) -> None:
    tensors, data = _tensors([400_000] * 4)

    def chunks(t: OutputTensor) -> list[np.ndarray]:
        if t.name == "t2":
            raise InputInvalid("t2: bad tensor")
        return [data[t.name]]

    out = tmp_path / "out.gguf"
    with pytest.raises(InputInvalid, match="t2: bad tensor"):
        write_gguf(out, [], tensors, chunks, background=True)
    assert not out.exists() and _no_temps(tmp_path)


def _source(n: int, failing: str | None = None) -> list[SourceTensor]:
    def reader(i: int):  # noqa: ANN202
        def read() -> np.ndarray:
            if f"t{i}" == failing:
                raise InputInvalid(f"t{i}: unreadable")
            return np.full((4, 8), i, dtype=np.float32)

        return read

    return [SourceTensor(f"t{i}", (4, 8), F32, reader(i)) for i in range(n)]


def test_read_ahead_serves_any_order_and_raises_where_the_tensor_is_asked_for() -> None:
    source = ConverterTensors(_source(5, failing="t3"))
    source.read_ahead(["t0", "t1", "t2", "t3", "t4"])
    try:
        for name in ("t0", "t1", "t4", "t2"):  # t4 out of order: the read of t2 ahead is dropped, t4 read now
            assert source.tensor_bytes(name).view(np.float32).tolist() == [float(name[1])] * 32
            source.release(name)
        with pytest.raises(InputInvalid, match="t3: unreadable"):  # read on the helper thread, raised here
            source.tensor_bytes("t3")
    finally:
        source.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("overlap") / "tiny", seed=5)


def test_load_reads_what_the_map_holds(tiny: Path) -> None:
    with open_checkpoint(tiny) as ckpt:
        for name in ckpt.tensor_names():
            mapped = ckpt.read(name)
            assert np.array_equal(ckpt.load(name).view(np.uint8), mapped.view(np.uint8))
            widened = ckpt.load(name, bf16_as_float32=True)
            assert widened.dtype == np.float32 and np.array_equal(widened, mapped.astype(np.float32))


@pytest.mark.parametrize("request_args", [{"out_type": "bf16"}, {"out_type": "q8_0"}, {"bits": 4}])
def test_overlapped_conversion_is_byte_identical(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 request_args: dict) -> None:  # fmt: skip
    """The same request on one thread and on three (the size gate lowered to 0 bytes): same file, and the
    stages stay a partition of the run."""
    one_thread = convert_model(tiny, tmp_path / "one.gguf", **request_args)
    monkeypatch.setattr(job_module, "OVERLAP_MIN_BYTES", 0)
    overlapped = convert_model(tiny, tmp_path / "three.gguf", **request_args)
    assert (tmp_path / "one.gguf").read_bytes() == (tmp_path / "three.gguf").read_bytes()
    assert overlapped["sha256"] == one_thread["sha256"]
    stages = overlapped["stages"]
    assert set(stages) == {"read", "transform", "quantize", "hash", "write", "sync"}
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= overlapped["seconds"]


def test_stored_tensors_stream_in_pieces_through_two_buffers(tiny: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """BF16 -> BF16 with read-ahead: tensors whose stored bits are the output's are read piece by piece into
    two buffers used in turn. A slow writer (each write sleeps) would expose a buffer refilled before its
    piece was written: the file must still equal the one-thread conversion's."""
    import time

    from quantcli.engine import stream as stream_module

    one_thread = convert_model(tiny, tmp_path / "one.gguf", out_type="bf16")
    monkeypatch.setattr(job_module, "OVERLAP_MIN_BYTES", 0)
    monkeypatch.setattr(stream_module, "_PIECE_BYTES", 4096)
    monkeypatch.setattr(gguf_writer, "LARGE_CHUNK_BYTES", 4096)
    real_write = gguf_writer._HashingFile.write

    def slow_write(self: gguf_writer._HashingFile, chunk: memoryview) -> int:
        time.sleep(0.002)
        return real_write(self, chunk)

    monkeypatch.setattr(gguf_writer._HashingFile, "write", slow_write)
    pieces: list[int] = []
    real_take = ConverterTensors.tensor_chunks

    def counting(self: ConverterTensors, name: str):  # noqa: ANN202
        for chunk in real_take(self, name):
            pieces.append(chunk.nbytes)
            yield chunk

    monkeypatch.setattr(ConverterTensors, "tensor_chunks", counting)
    overlapped = convert_model(tiny, tmp_path / "pieces.gguf", out_type="bf16")
    assert (tmp_path / "one.gguf").read_bytes() == (tmp_path / "pieces.gguf").read_bytes()
    assert overlapped["sha256"] == one_thread["sha256"]
    assert sum(4096 <= n < 8192 for n in pieces) > 10  # many tensors went in pieces of one to two buffers' size


def test_pieces_quiet_bf16_nans_as_the_whole_tensor_does() -> None:
    """A stored BF16 tensor with signalling NaNs in several pieces: the pieces are encode_stored's bytes."""
    from quantcli.engine import stream as stream_module
    from quantcli.writers.gguf import encode_stored

    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 16, size=3 * (stream_module._PIECE_BYTES // 2) + 123, dtype=np.uint16)
    bits[::1000] = 0x7F81  # signalling NaNs: the converter's float32 round trip sets their quiet bit
    raw = bits.view(np.uint8)
    tensor = SourceTensor(
        "t", (bits.size,), GGMLQuantizationType.BF16, lambda: bits, read_stored=lambda: bits,
        read_stored_range=lambda start, out: out.cast("B").__setitem__(slice(None), raw[start : start + out.nbytes]),
        prefetch=lambda: None,
    )  # fmt: skip
    source = ConverterTensors([tensor])
    source.read_ahead(["t"])
    try:
        chunks = [bytes(c) for c in source.tensor_chunks("t")]
    finally:
        source.close()
    assert len(chunks) == 3
    assert b"".join(chunks) == encode_stored(bits.copy(), GGMLQuantizationType.BF16).tobytes()
    assert b"".join(chunks) != raw.tobytes()
