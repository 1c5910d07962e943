#!/usr/bin/env python3
"""Benchmark of a mixture-of-experts conversion's memory: a Qwen3-30B-A3B-shaped checkpoint (hidden 2048,
32 heads / 4 KV heads of 128, 128 experts of FFN 768, 8 used; SmolLM2's tokenizer) cut to a few layers,
through `quantcli convert --type bf16` and `--bits 4` (Q4_K_M, one pass) vs llama.cpp's
convert_hf_to_gguf.py (--outtype bf16) and its two steps (the converter, then llama-quantize Q4_K_M).

The checkpoint stores every expert as its own tensors (`mlp.experts.{e}.{gate,up,down}_proj.weight`, as the
released Qwen3-MoE checkpoints do), so a converter stacks 128 of them into each 3-D `ffn_*_exps` tensor.
The claim measured: quantcli's peak RSS is bounded by the largest stacked tensor (3 x its F32 size + 150 MB),
not by a layer's experts (3 stacks) or the model's. Random BF16 bit patterns, generated for the run and
deleted after (scripts/bench_8b.py's generator, page cache dropped before each run). QUANTCLI_BENCH_MOE_LAYERS
sets the depth (default 4). Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from _benchlib import python_env, sha256, smollm2_fixture, timed  # noqa: E402
from bench_8b import drop_page_cache, write_sharded  # noqa: E402
from reference import llamacpp_src, tool, tool_env  # noqa: E402

LAYERS = int(os.environ.get("QUANTCLI_BENCH_MOE_LAYERS", "4"))
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, USED, EXPERT_FFN, VOCAB = 2048, 32, 4, 128, 128, 8, 768, 49152
SHARD_BYTES = 5 * 10**9
DISK_FACTOR = 3.0  # input + the reference's BF16 file + a BF16 output (+ slack)


def log(message: str) -> None:
    print(f"[bench_moe] {message}", file=sys.stderr, flush=True)


def state_dict_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Qwen3MoeForCausalLM's state dict with per-expert tensors, in module order (save_pretrained's)."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "self_attn.q_norm.weight", (HEAD_DIM,)),
            (p + "self_attn.k_norm.weight", (HEAD_DIM,)),
            (p + "mlp.gate.weight", (EXPERTS, HIDDEN)),
        ]
        for e in range(EXPERTS):
            shapes += [
                (p + f"mlp.experts.{e}.gate_proj.weight", (EXPERT_FFN, HIDDEN)),
                (p + f"mlp.experts.{e}.up_proj.weight", (EXPERT_FFN, HIDDEN)),
                (p + f"mlp.experts.{e}.down_proj.weight", (HIDDEN, EXPERT_FFN)),
            ]
        shapes += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return shapes


def write_checkpoint(directory: Path, layers: int) -> list[Path]:
    """The Qwen3-MoE-shaped checkpoint in `directory` (created); returns its shard files."""
    smol = json.loads((smollm2_fixture() / "config.json").read_text())
    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": smol["bos_token_id"], "eos_token_id": smol["eos_token_id"], "decoder_sparse_step": 1,
        "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": layers,
        "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": EXPERT_FFN,
        "norm_topk_prob": True, "num_attention_heads": HEADS, "num_experts": EXPERTS,
        "num_experts_per_tok": USED, "num_hidden_layers": layers, "num_key_value_heads": KV_HEADS,
        "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": VOCAB,
    }  # fmt: skip
    return write_sharded(directory, config, state_dict_shapes(layers), seed=30, shard_bytes=SHARD_BYTES)


def main() -> int:
    tmp_root = Path(tempfile.gettempdir())
    n_params = sum(math.prod(shape) for _, shape in state_dict_shapes(LAYERS))
    need = DISK_FACTOR * 2 * n_params
    free = shutil.disk_usage(tmp_root).free
    title = (
        f"## Mixture of experts: a Qwen3-30B-A3B-shaped checkpoint, {LAYERS} layers "
        f"({n_params / 1e9:.2f} B parameters, BF16)\n"
    )
    if free < need:
        print(title)
        print(f"Skipped: {free / 1e9:.0f} GB free in {tmp_root} ($TMPDIR); the run needs {need / 1e9:.0f} GB.")
        return 0
    stack_f32 = 4 * EXPERTS * EXPERT_FFN * HIDDEN  # one ffn_{gate,up,down}_exps tensor as float32
    layer_experts_f32 = 3 * stack_f32
    bound = 3 * stack_f32 + 150 * 10**6
    src = llamacpp_src()
    ref_env = python_env()
    our_env = python_env(PYTHONPATH=str(REPO))

    with tempfile.TemporaryDirectory(prefix="bench-moe-", dir=tmp_root) as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "Qwen3-MoE-random"
        started = time.perf_counter()
        shards = write_checkpoint(model, LAYERS)
        input_bytes = sum(p.stat().st_size for p in shards)
        log(f"checkpoint: {input_bytes / 1e9:.1f} GB in {len(shards)} shards, {time.perf_counter() - started:.0f} s")

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
        ref_bf16_sha, ref_q4_sha = sha256(ref_bf16), sha256(ref_q4)
        ref_bf16.unlink()
        ref_q4.unlink()

        rows = []
        for flag, value, label, t_ref, rss_ref, ref_sha in (
            ("--type", "bf16", "BF16", t_conv, rss_conv, ref_bf16_sha),
            ("--bits", "4", "Q4_K_M", t_conv + t_quant, max(rss_conv, rss_quant), ref_q4_sha),
        ):
            out = tmp / f"ours-{label}.gguf"
            drop_page_cache(shards)
            log(f"quantcli convert {flag} {value}")
            wall, rss, stdout = timed(
                [sys.executable, "-m", "quantcli", "convert", str(model), flag, value, "-o", str(out), "--json"],
                REPO, our_env,
            )  # fmt: skip
            doc = json.loads(stdout.strip().splitlines()[-1])
            rows.append({
                "request": f"{flag} {value}", "label": label, "wall": wall, "rss": rss, "t_ref": t_ref,
                "rss_ref": rss_ref, "same": sha256(out) == ref_sha == doc["sha256"], "size": out.stat().st_size,
            })  # fmt: skip
            out.unlink()

    print(title)
    print(
        f"Qwen3-30B-A3B's widths ({LAYERS} of its 48 layers: hidden {HIDDEN}, {HEADS} heads / {KV_HEADS} KV "
        f"heads of {HEAD_DIM}, {EXPERTS} experts of FFN {EXPERT_FFN}, {USED} used) with SmolLM2's tokenizer "
        f"({VOCAB} tokens); every expert stored as its own tensors, as the released checkpoints store them; "
        f"random BF16 weights, {input_bytes / 1e9:.1f} GB in {len(shards)} shards, generated for the run and "
        "deleted after, page cache dropped before each run.\n"
    )
    print("| output | quantcli s | quantcli peak RSS MiB | llama.cpp s | llama.cpp peak RSS MiB | "
          "quantcli / llama.cpp (time) | identical bytes | size |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|---|--:|")
    for r in rows:
        ref_how = f"{r['t_ref']:.0f}" if r["label"] == "BF16" else f"{r['t_ref']:.0f} ({t_conv:.0f} + {t_quant:.0f})"
        print(
            f"| {r['label']} (`{r['request']}`) | {r['wall']:.0f} | {r['rss'] / 2**20:.0f} | {ref_how} | "
            f"{r['rss_ref'] / 2**20:.0f} | {r['wall'] / r['t_ref']:.2f} | {'yes' if r['same'] else 'NO'} | "
            f"{r['size']:,} |"
        )
    worst = max(r["rss"] for r in rows)
    print(
        f"\nMemory bound for quantcli: 3 x the largest stacked expert tensor as F32 ({EXPERTS} x {EXPERT_FFN} x "
        f"{HIDDEN}: {stack_f32 / 1e6:.0f} MB) + 150 MB = {bound / 1e6:.0f} MB; its worst peak "
        f"{worst / 1e6:.0f} MB is {'within' if worst <= bound else 'OVER'} the bound. One layer's experts are "
        f"{layer_experts_f32 / 1e6:.0f} MB as F32 and the model's {LAYERS * layer_experts_f32 / 1e6:.0f} MB: "
        "the experts are stacked one tensor at a time, straight into the stack's array, and streamed out "
        "before the next is read. The reference for Q4_K_M is two processes (the converter, then "
        "llama-quantize on its BF16 file): its time is their sum, its peak RSS the larger. One run each, same "
        "machine, same run."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
