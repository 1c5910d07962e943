"""quantcli.jobstate: the content-addressed tensor cache and the output sidecars."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from quantcli.jobstate import (
    TensorCache,
    file_fingerprint,
    inputs_fingerprint,
    is_current,
    model_input_files,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

REPO = Path(__file__).resolve().parent.parent


def test_key_depends_on_everything_that_changes_the_bytes() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    base = TensorCache.key(x, "Q4_0")
    assert base == TensorCache.key(x.copy(), "Q4_0")  # same content, other buffer
    y = x.copy()
    y[3, 63] = np.nextafter(y[3, 63], np.float32(np.inf))  # one ulp in the last element
    others = {
        TensorCache.key(y, "Q4_0"),
        TensorCache.key(x, "Q4_1"),
        TensorCache.key(x.reshape(8, 32), "Q4_0"),  # same bytes, other shape
        TensorCache.key(x.astype(np.float16), "Q4_0"),
        TensorCache.key(x, "Q4_0", np.ones(64, np.float32)),
        TensorCache.key(x, "Q4_0", np.full(64, 2, np.float32)),
        TensorCache.key(x, "Q4_0", permute_heads=4),
    }
    assert base not in others and len(others) == 7


def test_put_get_roundtrip_and_counters(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path / "c")
    key = TensorCache.key(np.arange(32, dtype=np.float32), "Q8_0")
    assert cache.get(key) is None
    payload = np.arange(34, dtype=np.uint8)
    cache.put(key, payload)
    assert cache.get(key) == payload.tobytes()
    assert cache.stats() == {"hits": 1, "misses": 1, "puts": 1}
    assert len(cache) == 1
    # no temp file left behind by the atomic write
    assert [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()] == [key]


def test_damaged_entry_is_dropped_not_trusted(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path)
    key = TensorCache.key(np.zeros(32, np.float32), "Q8_0")
    cache.put(key, b"x" * 100)
    entry = next(p for p in tmp_path.rglob(key))
    blob = bytearray(entry.read_bytes())
    blob[-1] ^= 1
    entry.write_bytes(bytes(blob))
    assert cache.get(key) is None
    assert not entry.exists()
    entry.parent.joinpath(key).write_bytes(b"")  # truncated to nothing
    assert cache.get(key) is None


def test_for_output_clears_unless_resume(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    cache = TensorCache.for_output(out, resume=True)
    assert cache.directory == tmp_path / "m.gguf.quantcli-cache"
    key = TensorCache.key(np.zeros(32, np.float32), "Q8_0")
    cache.put(key, b"abc")
    assert TensorCache.for_output(out, resume=True).get(key) == b"abc"
    assert TensorCache.for_output(out, resume=False).get(key) is None
    cache.discard()
    assert not cache.directory.exists()


def test_put_killed_midway_leaves_no_partial_entry(tmp_path: Path) -> None:
    """SIGKILL a process that writes large entries in a loop: every entry present must read back whole."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from quantcli.jobstate import TensorCache
        cache = TensorCache({str(tmp_path)!r})
        i = 0
        while True:
            data = np.full(8 << 20, i % 251, np.uint8)
            cache.put(TensorCache.key(np.array([i], np.int64), "Q8_0"), data)
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(3):  # let a few complete, then kill during the next write
        proc.stdout.readline()
    time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cache = TensorCache(tmp_path)
    complete = 0
    for i in range(1000):
        data = cache.get(TensorCache.key(np.array([i], np.int64), "Q8_0"))
        if data is None:
            break
        assert data == bytes([i % 251]) * (8 << 20)
        complete += 1
    assert complete >= 3
    assert cache.stats()["misses"] == 1  # only the first missing key was looked at


def _checkpoint(directory: Path) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (directory / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{}      " + os.urandom(3 << 20))
    (directory / "tokenizer.json").write_text("{}")
    (directory / "README.md").write_text("not an input")
    return directory


def test_fingerprint_sees_content_size_and_mtime_changes(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "model")
    files = model_input_files(model)
    assert [f.name for f in files] == ["config.json", "model.safetensors", "tokenizer.json"]
    before = inputs_fingerprint(files)
    assert inputs_fingerprint(files) == before
    weights = model / "model.safetensors"
    stat = weights.stat()
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF  # change the tail but keep size and mtime: the edge hash sees it
    weights.write_bytes(bytes(blob))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inputs_fingerprint(files) != before
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inputs_fingerprint(files) == before
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched
    assert inputs_fingerprint(files) != before
    # content mode ignores mtime but reads everything
    assert file_fingerprint(weights, "content")["sha256"] == __import__("hashlib").sha256(blob).hexdigest()


def test_hub_blob_name_is_the_fingerprint(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    digest = "a" * 64
    (blobs / digest).write_bytes(b"weights")
    snap = tmp_path / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(Path("../..") / "blobs" / digest)
    assert file_fingerprint(snap / "model.safetensors") == {"name": "model.safetensors", "size": 7, "blob": digest}


def test_sidecar_current_only_for_same_inputs_options_and_untouched_output(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"GGUF" + bytes(100))
    options = {"type": "q8_0", "format": "gguf"}
    assert not is_current(out, inputs="i1", options=options)  # no sidecar yet
    write_sidecar(out, inputs="i1", options=options, result={"sha256": "ab"})
    record = json.loads(sidecar_path(out).read_text())
    assert record["output"]["bytes"] == 104 and record["output"]["sha256"] == "ab"
    assert read_sidecar(out) == record
    assert is_current(out, inputs="i1", options=dict(reversed(options.items())))
    assert not is_current(out, inputs="i2", options=options)
    assert not is_current(out, inputs="i1", options={"type": "q4_0", "format": "gguf"})
    out.write_bytes(b"GGUF" + bytes(99))  # replaced by someone else
    assert not is_current(out, inputs="i1", options=options)
    out.unlink()
    assert not is_current(out, inputs="i1", options=options)


def test_sidecar_from_another_version_is_stale(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"x")
    write_sidecar(out, inputs="i", options={}, result={})
    record = json.loads(sidecar_path(out).read_text())
    assert is_current(out, inputs="i", options={})
    record["quantcli_version"] = "0.0.0-other"
    sidecar_path(out).write_text(json.dumps(record))
    assert not is_current(out, inputs="i", options={})
