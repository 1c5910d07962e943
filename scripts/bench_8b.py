#!/usr/bin/env python3
"""Benchmark at 8B scale: a Llama-3-8B-shaped checkpoint through `quantcli convert --type bf16` and
`--bits 4` (Q4_K_M, one pass) vs llama.cpp's convert_hf_to_gguf.py (--outtype bf16) and its two steps
(the converter, then llama-quantize Q4_K_M on its BF16 file).

The checkpoint is generated here and deleted after: Llama-3-8B's shapes (32 layers, hidden 4096, 32 heads,
8 KV heads, FFN 14336, untied output) with SmolLM2's tokenizer (vocabulary 49152), so 7.38 B parameters and
14.8 GB of random BF16 weights, sharded as transformers' save_pretrained writes it (5 GB shards,
model-0000X-of-0000N.safetensors and model.safetensors.index.json). The weights are random bit patterns with
a fixed seed: random sign and mantissa, exponent in [2^-15, 2^-8) (never NaN, Inf or subnormal), so every
block quantizes differently.

Every conversion runs in its own process under GNU time (wall time, peak RSS), with the checkpoint's pages
dropped from the page cache first (posix_fadvise), so each tool reads its input from the disk; the disk's
sequential-read speed is measured the same way with dd on the largest shard. quantcli's --json `stages` give
where its time goes. Disk: the run needs about 2.7 x the checkpoint (40 GB) in the temporary directory
($TMPDIR); with less free space the section prints why it is skipped. QUANTCLI_BENCH_8B_LAYERS=N makes a
smaller model of the same width (a quick check of the script itself).
Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from _benchlib import python_env, sha256, smollm2_fixture, timed  # noqa: E402
from reference import llamacpp_src, tool, tool_env  # noqa: E402

LAYERS = int(os.environ.get("QUANTCLI_BENCH_8B_LAYERS", "32"))
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 4096, 14336, 32, 8, 49152
HEAD_DIM = HIDDEN // HEADS
SHARD_BYTES = 5 * 10**9  # save_pretrained's default max_shard_size ("5GB")
DISK_FACTOR = 2.7  # input + the reference's BF16 file + a BF16 output (+ slack): what the run keeps at once
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
CHUNK = 16 << 20  # elements generated and written at a time


def log(message: str) -> None:
    print(f"[bench_8b] {message}", file=sys.stderr, flush=True)


def state_dict_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """LlamaForCausalLM's state dict, in its order (the order save_pretrained shards in)."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "mlp.gate_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, FFN)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return shapes


def shard(tensors: list[tuple[str, tuple[int, ...]]], limit: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy, in order: a tensor that would take the current shard past `limit` starts the next one
    (huggingface_hub's split_torch_state_dict_into_shards, which save_pretrained uses)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def random_bf16(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` random BF16 bit patterns: sign, mantissa and the low 3 exponent bits random, exponent 112..119."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bits &= 0x83FF
    bits |= 0x3800
    return bits


def write_safetensors(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator
) -> int:
    """One BF16 shard, streamed: the header, then each tensor's data in CHUNK-element pieces. Returns the
    tensor bytes written."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    ordered = sorted(tensors)  # safetensors stores tensors sorted by name
    for name, shape in ordered:
        nbytes = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _, shape in ordered:
            total = math.prod(shape)
            for start in range(0, total, CHUNK):
                fh.write(memoryview(random_bf16(rng, min(CHUNK, total - start))))
    return offset


def write_checkpoint(directory: Path, layers: int, shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """The Llama-3-8B-shaped checkpoint in `directory` (created); returns its shard files."""
    smol = json.loads((smollm2_fixture() / "config.json").read_text())
    config = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": smol["bos_token_id"], "eos_token_id": smol["eos_token_id"], "hidden_act": "silu",
        "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": FFN,
        "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": HEADS, "num_hidden_layers": layers, "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0",
        "use_cache": True, "vocab_size": VOCAB,
    }  # fmt: skip
    return write_sharded(directory, config, state_dict_shapes(layers), seed=8, shard_bytes=shard_bytes)


def write_sharded(
    directory: Path, config: dict, shapes: list[tuple[str, tuple[int, ...]]], seed: int, shard_bytes: int
) -> list[Path]:
    """A checkpoint as save_pretrained writes it, in `directory` (created): SmolLM2's tokenizer files,
    `config`, random BF16 tensors of `shapes` in shards of at most `shard_bytes`, and the shard index.
    Returns the shard files."""
    fixture = smollm2_fixture()
    directory.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copy(fixture / name, directory / name)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    groups = shard(shapes, shard_bytes)
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    files = []
    total = 0
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        log(f"writing {name} ({len(group)} tensors)")
        total += write_safetensors(directory / name, group, rng)
        weight_map.update({tensor: name for tensor, _ in group})
        files.append(directory / name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files


def drop_page_cache(paths: list[Path]) -> None:
    """Write back and evict these files' pages, so the next reader reads them from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read(path: Path) -> float:
    """Bytes per second of `dd` reading `path` to /dev/null from the disk (its pages dropped first)."""
    drop_page_cache([path])
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)
    return path.stat().st_size / (time.perf_counter() - started)


def main() -> int:
    tmp_root = Path(tempfile.gettempdir())
    n_params = sum(math.prod(shape) for _, shape in state_dict_shapes(LAYERS))
    need = DISK_FACTOR * 2 * n_params
    free = shutil.disk_usage(tmp_root).free
    title = f"## 8B scale: a Llama-3-8B-shaped checkpoint ({n_params / 1e9:.2f} B parameters, BF16)\n"
    if free < need:
        print(title)
        print(
            f"Skipped: {free / 1e9:.0f} GB free in {tmp_root} ($TMPDIR); the run needs {need / 1e9:.0f} GB "
            f"(the {2 * n_params / 1e9:.1f} GB checkpoint, llama.cpp's BF16 file and a BF16 output)."
        )
        return 0
    largest_f32 = 4 * VOCAB * HIDDEN  # token_embd / output
    bound = 3 * largest_f32 + 150 * 10**6
    src = llamacpp_src()
    ref_env = python_env()
    our_env = python_env(PYTHONPATH=str(REPO))

    with tempfile.TemporaryDirectory(prefix="bench-8b-", dir=tmp_root) as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "Llama-3-8B-random"
        started = time.perf_counter()
        shards = write_checkpoint(model, LAYERS)
        input_bytes = sum(p.stat().st_size for p in shards)
        log(
            f"checkpoint: {input_bytes / 1e9:.1f} GB in {len(shards)} shards, {time.perf_counter() - started:.0f} s"
        )
        largest_shard = max(shards, key=lambda p: p.stat().st_size)
        disk_read = sequential_read(largest_shard)
        log(f"dd: {disk_read / 1e6:.0f} MB/s")

        def ours(flag: str, value: str, out: Path) -> tuple[float, int, dict]:
            drop_page_cache(shards)
            log(f"quantcli convert {flag} {value}")
            wall, rss, stdout = timed(
                [sys.executable, "-m", "quantcli", "convert", str(model), flag, value, "-o", str(out), "--json"],
                REPO, our_env,
            )  # fmt: skip
            return wall, rss, json.loads(stdout.strip().splitlines()[-1])

        ref_bf16, ref_q4 = tmp / "ref-bf16.gguf", tmp / "ref-q4_k_m.gguf"
        drop_page_cache(shards)
        log("convert_hf_to_gguf.py --outtype bf16")
        t_conv, rss_conv, _ = timed(
            [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", "bf16",
             "--outfile", str(ref_bf16)],
            src, ref_env,
        )  # fmt: skip
        log("llama-quantize Q4_K_M")
        t_quant, rss_quant, _ = timed([str(tool("llama-quantize")), str(ref_bf16), str(ref_q4), "Q4_K_M"],
                                      tmp, tool_env())  # fmt: skip
        ref_bf16_sha, ref_bf16_size = sha256(ref_bf16), ref_bf16.stat().st_size
        ref_q4_sha = sha256(ref_q4)
        ref_bf16.unlink()
        ref_q4.unlink()

        rows = []
        for flag, value, label, t_ref, rss_ref, ref_sha, target in (
            ("--type", "bf16", "BF16", t_conv, rss_conv, ref_bf16_sha, 0.5),
            ("--bits", "4", "Q4_K_M", t_conv + t_quant, max(rss_conv, rss_quant), ref_q4_sha, 0.3),
        ):
            out = tmp / f"ours-{label}.gguf"
            wall, rss, doc = ours(flag, value, out)
            rows.append({
                "request": f"{flag} {value}", "label": label, "wall": wall, "rss": rss, "t_ref": t_ref,
                "rss_ref": rss_ref, "target": target, "same": sha256(out) == ref_sha == doc["sha256"],
                "size": out.stat().st_size, "doc": doc,
            })  # fmt: skip
            out.unlink()
        shard_size = largest_shard.stat().st_size

    print(title)
    print(
        f"Llama-3-8B's shapes ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads / {KV_HEADS} KV heads, FFN {FFN}, "
        f"untied output) with SmolLM2's tokenizer ({VOCAB} tokens); random BF16 weights, "
        f"{input_bytes / 1e9:.1f} GB in {len(shards)} safetensors shards as save_pretrained writes them, "
        f"generated for the run and deleted after.\n"
    )
    print("| output | quantcli s | quantcli peak RSS MiB | llama.cpp s | llama.cpp peak RSS MiB | "
          "quantcli / llama.cpp | target | identical bytes | size |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|---|--:|")
    for r in rows:
        ref_how = (
            f"{r['t_ref']:.0f}"
            if r["label"] == "BF16"
            else f"{r['t_ref']:.0f} ({t_conv:.0f} + {t_quant:.0f})"
        )
        ratio = r["wall"] / r["t_ref"]
        print(
            f"| {r['label']} (`{r['request']}`) | {r['wall']:.0f} | {r['rss'] / 2**20:.0f} | {ref_how} | "
            f"{r['rss_ref'] / 2**20:.0f} | {ratio:.2f} | <= {r['target']} ({'met' if ratio <= r['target'] else 'NOT met'}) | "
            f"{'yes' if r['same'] else 'NO'} | {r['size']:,} |"
        )
    stage_names = list(rows[0]["doc"]["stages"])
    print("\nWhere quantcli's time goes (seconds, its --json `stages`: the streaming thread's time, `read` and "
          "`write` its waits for the reader and writer threads; `other` is start-up, planning and the "
          "tokenizer):\n")  # fmt: skip
    print("| output | " + " | ".join(stage_names) + " | other | total |")
    print("|---|" + "--:|" * (len(stage_names) + 2))
    for r in rows:
        stages, seconds = r["doc"]["stages"], r["doc"]["seconds"]
        cells = " | ".join(f"{stages[name]:.1f}" for name in stage_names)
        print(f"| {r['label']} | {cells} | {seconds - sum(stages.values()):.1f} | {seconds:.1f} |")
    reads = "; ".join(f"{r['label']}: {input_bytes / r['wall'] / 1e6:.0f} MB/s over the whole run" for r in rows)
    print(
        f"\nInput read by quantcli ({input_bytes / 1e9:.1f} GB, its pages dropped from the page cache before "
        f"each run): {reads}. This disk's sequential read (dd of a {shard_size / 1e9:.1f} GB shard to "
        f"/dev/null, its pages dropped first): {disk_read / 1e6:.0f} MB/s."
    )
    worst = max(r["rss"] for r in rows)
    print(
        f"\nThe reference for Q4_K_M is two processes (the converter writing a {ref_bf16_size / 1e9:.1f} GB BF16 "
        f"file, then llama-quantize on it): its time is their sum, its peak RSS the larger. Memory bound for "
        f"quantcli: 3 x the largest tensor as F32 (token_embd / output, {largest_f32 / 1e6:.0f} MB) + 150 MB = "
        f"{bound / 1e6:.0f} MB; its worst peak {worst / 1e6:.0f} MB is {'within' if worst <= bound else 'OVER'} "
        f"the bound. One run each, same machine, same run."
    )
    # The verdicts are in the text; exit 0 so scripts/bench.py keeps the table.
    return 0


if __name__ == "__main__":
    sys.exit(main())
