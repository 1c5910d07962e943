"""`verify(source, output)`: the quality gate behind `convert --verify`.

Runs the source model (HF directory or GGUF) over the evaluation text, keeps its uint16-coded
log-probs per scored position (as llama-perplexity's --kl-divergence-base), frees it, runs the output
model and compares: PPL of both, their ratio, mean/p99 KLD and top-1 agreement (docs/verification.md).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from quantcli.errors import VerifyFailed
from quantcli.runtime import load_tokenizer, open_source
from quantcli.runtime.evaluate import Progress, base_log_probs, kl_divergence, plan_chunks
from quantcli.runtime.model import Model
from quantcli.runtime.textdata import read_text

DEFAULT_MAX_KLD = 0.1  # mean KLD above this fails the gate (Q4_K_M on SmolLM2 is ~0.07 in llama.cpp)


def verify(
    source: Path | str,
    output: Path | str,
    text: Path | str | None = None,
    max_kld: float | None = DEFAULT_MAX_KLD,
    chunks: int | None = 4,
    n_ctx: int = 512,
    progress: Progress | None = None,
    raise_on_fail: bool = False,
    emulate_ggml: bool = True,
) -> dict:
    """Compare `output` against `source`; returns a dict (see keys below); `passed` is False when the
    mean KLD exceeds `max_kld` (None disables the gate). The tokenizer is the source's. `emulate_ggml`
    rounds activations as ggml-cpu does (runtime/numerics.py) so figures track llama-perplexity's."""
    t0 = time.perf_counter()
    body, text_name = read_text(text)
    src = open_source(source)
    tokenizer = load_tokenizer(source, src)
    plan = plan_chunks(tokenizer, body, n_ctx, chunks)
    base_model = Model(src, emulate_ggml=emulate_ggml)
    # PPL(source) is computed, as llama-perplexity's "Mean PPL(base)", from the uint16-coded log-probs.
    base = list(base_log_probs(base_model, plan, progress))
    del base_model, src
    gc.collect()
    out_model = Model(open_source(output), emulate_ggml=emulate_ggml)
    result = kl_divergence(out_model, plan, base, progress)
    passed = max_kld is None or result["kld_mean"] <= max_kld
    report = {
        "source": str(source),
        "output": str(output),
        "text": text_name,
        "n_ctx": plan.n_ctx,
        "chunks": plan.n_chunks,
        "tokens_scored": result["tokens"],
        "ppl_source": result["ppl_base"],
        "ppl_output": result["ppl"],
        "ppl_ratio": result["ppl_ratio"],
        "kld_mean": result["kld_mean"],
        "kld_p99": result["kld_p99"],
        "kld_max": result["kld_max"],
        "top1_agreement": result["same_top"],
        "rms_dp": result["rms_dp"],
        "max_kld": max_kld,
        "passed": passed,
        "ggml_numerics": emulate_ggml,
        "seconds": time.perf_counter() - t0,
    }
    if raise_on_fail and not passed:
        raise VerifyFailed(f"verification failed: mean KLD {result['kld_mean']:.4f} > {max_kld}")
    return report


__all__ = ["verify", "DEFAULT_MAX_KLD"]
