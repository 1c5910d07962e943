"""Float32 NumPy forward pass of the decoder-only architectures we convert, on GGUF tensor names.

One graph covers llama/mistral/mixtral, qwen2, qwen2moe, qwen3, qwen3moe, olmoe, gemma2, gemma3, phi3,
granite, olmo2 and smollm3 (as llama.cpp's src/models/<arch>.cpp build them): the differences are either
visible in the tensor list (biases, per-head or full-width q/k norms, post-norms, fused QKV or gate+up, tied
output, a router and stacked experts), are GGUF keys (soft-capping, granite's multipliers, expert counts) or
are architecture traits in `ModelConfig.traits` (rope style, activation, embedding scale, pre-norms or none,
sliding-window layers, no-rope layers, expert weight normalisation). Prompts are
processed as a batch (one matmul per weight for all tokens); generation reuses a KV cache. For `forward` (generate, imatrix) weights are dequantized to
float32 per tensor and kept while they fit `cache_budget_bytes`; above that, each layer is dequantized
again when it is used. `forward_sequences` (eval, verify) runs several independent sequences layer by
layer and keeps no float32 copy beyond the layer in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from quantcli.errors import InputInvalid, UsageError
from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.runtime.config import ModelConfig
from quantcli.runtime.moe import EXPERT_TENSORS, SHARED_EXPERT_TENSORS, moe_ffn
from quantcli.runtime.numerics import round_f16_, vec_dot_round_trip
from quantcli.runtime.weights import TensorSource


class MatmulObserver(Protocol):
    """Sees the float32 input rows of every matmul whose weight is a `blk.*` tensor (imatrix). For a
    stacked expert tensor (ggml's MUL_MAT_ID) `rows` is (n_tok, 1 or n_used, ne0) and `experts`
    (n_tok, n_used) the expert each token's slot uses (runtime/moe.py)."""

    def __call__(self, name: str, rows: np.ndarray, experts: np.ndarray | None = None) -> None: ...

DEFAULT_CACHE_BUDGET = 6 << 30  # bytes of float32 weights kept dequantized
# Fewer rows than this per thread: elementwise work stays on the calling thread (a thread hand-off costs more).
MIN_ROWS_PER_THREAD = 64


@dataclass
class KVCache:
    keys: list[np.ndarray]  # per layer (n_head_kv, n_ctx, head_dim_k)
    values: list[np.ndarray]  # per layer (n_head_kv, n_ctx, head_dim_v)
    n_ctx: int
    used: int = 0

    def clear(self) -> None:
        self.used = 0


class Model:
    def __init__(
        self,
        source: TensorSource,
        cache_budget_bytes: int = DEFAULT_CACHE_BUDGET,
        emulate_ggml: bool = True,
    ) -> None:
        """`emulate_ggml`: round activations as ggml-cpu does before each matmul (numerics.py) and keep
        the KV cache in F16 (llama.cpp's default cache type); False = plain float32 everywhere."""
        self.source = source
        self.emulate_ggml = emulate_ggml
        self.names = set(source.names())
        if "token_embd.weight" not in self.names:
            raise InputInvalid(f"{source.description}: no token_embd.weight tensor")
        n_vocab = int(source.shape("token_embd.weight")[0])
        layers = {
            int(n.split(".")[1]) for n in self.names if n.startswith("blk.") and n.split(".")[1].isdigit()
        }
        self.config = ModelConfig.from_metadata(source.metadata, n_vocab, max(layers) + 1 if layers else 0)
        self.output_name = "output.weight" if "output.weight" in self.names else "token_embd.weight"
        total = sum(int(np.prod(source.shape(n))) * 4 for n in self.names)
        self._keep_all = total <= cache_budget_bytes
        self._weights: dict[str, np.ndarray] = {}
        self._types = {n: source.tensor_type(n) for n in self.names}
        # Threads for row-wise elementwise work (norms, RoPE, gated activation): the pool of the
        # sequence_layer call that runs, else none.
        self._row_pool: ThreadPoolExecutor | None = None
        self._check_supported()

    # ---- weights -------------------------------------------------------------------------------------
    def _check_supported(self) -> None:
        """Hyper-parameters against tensor shapes, before any weight is read (a bad header must be an
        input error naming the key, not a crash deep inside the forward pass)."""
        c = self.config
        where = self.source.description
        needed = ["output_norm.weight"]
        for il in range(c.n_layer):
            p = f"blk.{il}."
            if c.traits.pre_norms:  # olmo2 normalises only the branch outputs (post-norms)
                needed += [p + "attn_norm.weight", p + c.traits.ffn_norm + ".weight"]
            needed.append(p + "attn_output.weight")
            if self.has(p + "ffn_gate_inp.weight"):
                needed += [p + t + ".weight" for t in EXPERT_TENSORS]
                if self.has(p + "ffn_gate_inp_shexp.weight"):
                    needed += [p + t + ".weight" for t in SHARED_EXPERT_TENSORS]
            else:
                needed.append(p + "ffn_down.weight")
                needed += (
                    [p + "ffn_up.weight"] if not self.has(p + "ffn_gate.weight") else [p + "ffn_gate.weight"]
                )
            if not self.has(p + "attn_qkv.weight"):
                needed += [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
        for name in needed:
            if name not in self.names:
                raise InputInvalid(f"{where}: missing tensor {name}")
        a = c.arch

        def expect(name: str, shape: tuple[int, ...], key: str) -> None:
            got = tuple(self.source.shape(name))
            if got != shape:
                raise InputInvalid(f"{where}: {name} has shape {got}, but {a}.{key} implies {shape}")

        expect("token_embd.weight", (c.n_vocab, c.n_embd), "embedding_length")
        for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
            # one factor per rotated pair ({n_rot/2} in llama.cpp; trailing 1-dims allowed as in ggml)
            shape = tuple(self.source.shape(name)) if self.has(name) else (c.rope_dim // 2,)
            if shape[-1] != c.rope_dim // 2 or int(np.prod(shape)) != c.rope_dim // 2:
                raise InputInvalid(
                    f"{where}: {name} has shape {shape}, but {a}.rope.dimension_count implies ({c.rope_dim // 2},)"
                )
        if c.rope_ctx_orig <= 0 and self.has("rope_factors_long.weight"):
            raise InputInvalid(f"{where}: rope_factors_long needs {a}.context_length to choose long or short")
        q_rows, kv_rows = c.n_head * c.head_dim_k, c.n_head_kv * c.head_dim_k
        for il in range(c.n_layer):
            p = f"blk.{il}."
            if self.has(p + "attn_qkv.weight"):
                fused = q_rows + kv_rows + c.n_head_kv * c.head_dim_v
                expect(p + "attn_qkv.weight", (fused, c.n_embd), "attention.head_count")
            else:
                expect(p + "attn_q.weight", (q_rows, c.n_embd), "attention.head_count")
                expect(p + "attn_k.weight", (kv_rows, c.n_embd), "attention.head_count_kv")
                expect(p + "attn_v.weight", (c.n_head_kv * c.head_dim_v, c.n_embd), "attention.head_count_kv")
            expect(p + "attn_output.weight", (c.n_embd, c.n_head * c.head_dim_v), "attention.head_count")
            if self.has(p + "attn_sinks.weight"):  # gpt-oss: one logit per head
                expect(p + "attn_sinks.weight", (c.n_head,), "attention.head_count")
            for norm, rows in (("attn_q_norm", q_rows), ("attn_k_norm", kv_rows)):
                # per head (qwen3, gemma3) or over the whole projection (olmo2, olmoe)
                name = p + norm + ".weight"
                if self.has(name) and int(np.prod(self.source.shape(name))) not in (c.head_dim_k, rows):
                    raise InputInvalid(
                        f"{where}: {name} has shape {tuple(self.source.shape(name))}, expected ({c.head_dim_k},) "
                        f"or ({rows},) from {a}.attention.head_count"
                    )
            if self.has(p + "ffn_gate_inp.weight"):
                self._check_experts(p, expect)
            elif self.has(p + "ffn_gate.weight"):
                expect(p + "ffn_gate.weight", (c.n_ff, c.n_embd), "feed_forward_length")
                expect(p + "ffn_up.weight", (c.n_ff, c.n_embd), "feed_forward_length")
            else:
                expect(p + "ffn_up.weight", (2 * c.n_ff, c.n_embd), "feed_forward_length")
            if not self.has(p + "ffn_gate_inp.weight"):
                expect(p + "ffn_down.weight", (c.n_embd, c.n_ff), "feed_forward_length")

    def _check_experts(self, p: str, expect: Callable[[str, tuple[int, ...], str], None]) -> None:
        """A MoE layer: the router and the three stacked expert tensors (the expert FFN width is theirs)."""
        c = self.config
        if not 0 < c.n_expert_used <= c.n_expert:
            raise InputInvalid(
                f"{self.source.description}: {c.arch}.expert_used_count {c.n_expert_used} and expert_count "
                f"{c.n_expert} do not describe a mixture of experts"
            )
        expect(p + "ffn_gate_inp.weight", (c.n_expert, c.n_embd), "expert_count")
        n_ff = int(self.source.shape(p + "ffn_gate_exps.weight")[1])
        expect(p + "ffn_gate_exps.weight", (c.n_expert, n_ff, c.n_embd), "expert_count")
        expect(p + "ffn_up_exps.weight", (c.n_expert, n_ff, c.n_embd), "expert_count")
        expect(p + "ffn_down_exps.weight", (c.n_expert, c.n_embd, n_ff), "expert_count")
        if self.has(p + "ffn_gate_inp.bias"):
            expect(p + "ffn_gate_inp.bias", (c.n_expert,), "expert_count")
        for name, rows in (("ffn_gate_exps", n_ff), ("ffn_up_exps", n_ff), ("ffn_down_exps", c.n_embd)):
            if self.has(p + name + ".bias"):  # gpt-oss: one bias row per expert
                expect(p + name + ".bias", (c.n_expert, rows), "expert_count")

    def has(self, name: str) -> bool:
        return name in self.names

    def weight(self, name: str) -> np.ndarray:
        w = self._weights.get(name)
        if w is None:
            w = np.ascontiguousarray(self.source.load(name), dtype=np.float32)
            if self._keep_all or w.ndim == 1:
                self._weights[name] = w
        return w

    def preload(self) -> None:
        if self._keep_all:
            for name in sorted(self.names):
                self.weight(name)

    # ---- cache -----------------------------------------------------------------------------------------
    def new_cache(self, n_ctx: int) -> KVCache:
        c = self.config
        # --ctx sizes this allocation: refuse a size the machine cannot hold instead of a MemoryError.
        needed = 4 * n_ctx * c.n_head_kv * (c.head_dim_k + c.head_dim_v) * c.n_layer
        available = int(psutil.virtual_memory().available)
        if needed > available:
            raise UsageError(
                f"--ctx {n_ctx} needs {needed / 2**30:.1f} GiB of KV cache; {available / 2**30:.1f} GiB is available"
            )
        # float32 arrays either way; with emulate_ggml the stored values are F16-rounded (on assignment)
        keys = [np.zeros((c.n_head_kv, n_ctx, c.head_dim_k), np.float32) for _ in range(c.n_layer)]
        values = [np.zeros((c.n_head_kv, n_ctx, c.head_dim_v), np.float32) for _ in range(c.n_layer)]
        return KVCache(keys, values, n_ctx)

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: np.ndarray,
        cache: KVCache,
        output_rows: np.ndarray | None = None,
        observer: MatmulObserver | None = None,
    ) -> np.ndarray:
        """Evaluate `tokens` at positions cache.used..; return logits (len(output_rows), n_vocab).

        `output_rows` are indices into `tokens` whose logits are wanted (default: the last one only).
        """
        c = self.config
        tokens = self._check_tokens(tokens)
        n_tok = tokens.size
        if cache.used + n_tok > cache.n_ctx:
            raise InputInvalid(f"context overflow: {cache.used + n_tok} tokens > n_ctx {cache.n_ctx}")
        positions = np.arange(cache.used, cache.used + n_tok)
        x = self._embed(self.weight("token_embd.weight")[tokens])

        def attend(il: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int) -> np.ndarray:
            start = cache.used
            cache.keys[il][:, start : start + n_tok] = k.transpose(1, 0, 2)
            cache.values[il][:, start : start + n_tok] = v.transpose(1, 0, 2)
            n_kv = int(positions[-1]) + 1
            return self._attention(
                q, cache.keys[il][:, :n_kv], cache.values[il][:, :n_kv], positions, window, self._sinks(il)
            )

        for il in range(c.n_layer):
            x = self._layer(il, x, positions, self.weight, attend, observer, cache.n_ctx, self._expert_matrix)
        cache.used += n_tok
        rows = np.array([n_tok - 1]) if output_rows is None else np.asarray(output_rows)
        w_out = self.weight(self.output_name)
        return self._logits(x[rows], w_out, observer if self.output_name == "output.weight" else None)

    def forward_sequences(self, tokens: np.ndarray, output_rows: np.ndarray) -> Iterator[np.ndarray]:
        """Independent sequences (S, T), each at positions 0..T-1 with an empty KV cache (a perplexity
        chunk); yields each sequence's logits (len(output_rows), n_vocab) in order.

        Layer-major: every matmul takes the rows of all S sequences at once, so each weight is dequantized
        once per call into a float32 copy that is dropped after its layer (memory: one layer's weights
        plus the activations of S*T tokens; not the float32 model), and BLAS sees S*T-row matrices. The
        operations of `forward` on each sequence with a fresh cache (on SmolLM2 the logits are bit-identical;
        BLAS may sum tiny products in another order for another row count)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n_seq, n_tok = tokens.shape
        x = self.embed_sequences(tokens)
        with self._sequence_pool(n_seq) as pool:
            for il in range(self.config.n_layer):
                x = self.sequence_layer(il, x, n_seq, pool=pool)
        w_out = self.transient_weight(self.output_name)
        rows = np.asarray(output_rows)
        for s in range(n_seq):
            yield self._logits(x[s * n_tok + rows], w_out, None)

    def embed_sequences(self, tokens: np.ndarray) -> np.ndarray:
        """The first layer's input rows (S*T, n_embd) for independent sequences `tokens` (S, T)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self._check_tokens(tokens)
        return self._embed(self._load_rows("token_embd.weight", tokens.reshape(-1)))

    def _sequence_pool(self, n_seq: int) -> ThreadPoolExecutor | nullcontext[None]:
        # Attention is small matmuls and elementwise softmax, which BLAS threads do not speed up: the
        # sequences are spread over one thread per core instead (NumPy releases the GIL), BLAS single-
        # threaded meanwhile. Threads split work, not sums: the numbers do not depend on the count.
        workers = min(n_seq, os.cpu_count() or 1)
        return ThreadPoolExecutor(workers) if workers > 1 else nullcontext()

    def sequence_layer(
        self,
        il: int,
        x: np.ndarray,
        n_seq: int,
        weight: Callable[[str], np.ndarray] | None = None,
        observer: MatmulObserver | None = None,
        pool: ThreadPoolExecutor | None = None,
        expert: Callable[[str, int], np.ndarray] | None = None,
        inputs_only: bool = False,
    ) -> np.ndarray:
        """Decoder block `il` on the rows of `n_seq` independent sequences (S*T, n_embd), updated in place
        and returned. `weight` (default: the model's own, dequantized for this use) lets a caller run the
        block with other weights (calibration feeds the quantized block's output to the next one);
        `expert(name, e)` does the same for one expert's matrix of a stacked tensor.
        `inputs_only`: the caller wants only what `observer` sees (calibration's statistics pass), so the
        work after the last matmul's input (a dense FFN's down projection and residual) is skipped and the
        returned rows are not the block's output."""
        c = self.config
        n_tok = x.shape[0] // n_seq
        positions = np.arange(n_tok)

        def attend(il: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int) -> np.ndarray:
            out = np.empty((n_seq * n_tok, c.n_head * c.head_dim_v), np.float32)
            sinks = self._sinks(il)

            def one(s: int) -> None:
                rows = slice(s * n_tok, (s + 1) * n_tok)
                keys = np.ascontiguousarray(k[rows].transpose(1, 0, 2))
                values = np.ascontiguousarray(v[rows].transpose(1, 0, 2))
                out[rows] = self._attention(q[rows], keys, values, positions, window, sinks)

            if pool is None:
                for s in range(n_seq):
                    one(s)
            else:
                with threadpool_limits(limits=1, user_api="blas"):
                    list(pool.map(one, range(n_seq)))
            return out

        row_positions = np.tile(positions, n_seq)  # of each row of x, for RoPE
        self._row_pool = pool
        try:
            return self._layer(il, x, row_positions, weight or self.transient_weight, attend, observer, n_tok,
                               expert or self._expert_matrix, inputs_only)  # fmt: skip
        finally:
            self._row_pool = None

    def _rows_parallel(self, n_rows: int, fn: Callable[[int, int], None]) -> None:
        """fn(r0, r1) over rows 0..n_rows-1, split among the row pool's threads (NumPy releases the GIL in
        its loops), or in one call without a pool or with few rows. Only for work on whole rows whose
        results do not depend on the split: elementwise operations and reductions along a row."""
        pool = self._row_pool
        workers = 0 if pool is None else os.cpu_count() or 1  # the pool's size (_sequence_pool); more parts only queue
        if workers < 2 or n_rows < 2 * MIN_ROWS_PER_THREAD:
            fn(0, n_rows)
            return
        parts = min(workers, n_rows // MIN_ROWS_PER_THREAD)
        bounds = [n_rows * i // parts for i in range(parts + 1)]
        list(pool.map(lambda i: fn(bounds[i], bounds[i + 1]), range(parts)))

    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.min(initial=0) < 0 or tokens.max(initial=0) >= self.config.n_vocab:
            raise InputInvalid("token id out of range")
        return tokens.reshape(-1)

    def transient_weight(self, name: str) -> np.ndarray:
        """A weight for one use: the cached copy if there is one, else dequantized and not kept."""
        w = self._weights.get(name)
        if w is not None:
            return w
        w = np.ascontiguousarray(self.source.load(name), dtype=np.float32)
        if w.ndim == 1:
            self._weights[name] = w
        return w

    def _sinks(self, il: int) -> np.ndarray | None:
        name = f"blk.{il}.attn_sinks.weight"
        return self.weight(name).reshape(-1) if self.has(name) else None

    def _expert_matrix(self, name: str, expert: int) -> np.ndarray:
        """One expert's float32 matrix of a stacked tensor: from the cached stack when the whole model is
        kept, else dequantized alone (a layer's stacks are never all float32 at once)."""
        if self._keep_all:
            return self.weight(name)[expert]
        return self.source.load_rows(name, np.array([expert]))[0]

    def _load_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        w = self._weights.get(name)
        return w[rows] if w is not None else self.source.load_rows(name, rows)

    def _embed(self, rows: np.ndarray) -> np.ndarray:
        x = np.array(rows, dtype=np.float32, order="C")
        if self.config.traits.embed_scale_sqrt_n_embd:
            x *= np.float32(np.sqrt(np.float32(self.config.n_embd)))
        if self.config.embedding_scale:
            x *= np.float32(self.config.embedding_scale)
        return x

    def _logits(self, x: np.ndarray, w_out: np.ndarray, observer: MatmulObserver | None) -> np.ndarray:
        c = self.config
        h = self._rms_norm(x, self.weight("output_norm.weight"))
        logits = self._matmul(h, self.output_name, observer, w_out)
        if c.logit_scale:
            logits *= np.float32(1.0) / np.float32(c.logit_scale)
        if c.final_logit_softcap:
            cap = np.float32(c.final_logit_softcap)
            logits = np.tanh(logits / cap) * cap
        return logits

    def _matmul(
        self,
        x: np.ndarray,
        name: str,
        observer: MatmulObserver | None,
        w: np.ndarray,
        rounded: dict[GGMLQuantizationType, np.ndarray] | None = None,
    ) -> np.ndarray:
        """x @ w.T (+ bias). `rounded` memoizes x as each weight type sees it, for matmuls sharing x."""
        if observer is not None:
            observer(name, x)  # llama-imatrix sees the F32 rows before ggml converts them
        if self.emulate_ggml:
            qtype = self._types[name]
            xr = None if rounded is None else rounded.get(qtype)
            if xr is None:
                xr = vec_dot_round_trip(x, qtype)
                if rounded is not None:
                    rounded[qtype] = xr
            x = xr
        y = x @ w.T
        bias = name.removesuffix(".weight") + ".bias"
        if bias in self.names:
            y += self.weight(bias)
        return y

    def _rms_norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        eps = np.float32(self.config.norm_eps)
        out = np.empty(x.shape, np.result_type(x, np.float32))

        def rows(r0: int, r1: int) -> None:
            xs, outs = x[r0:r1], out[r0:r1]
            mean_sq = np.mean(np.square(xs, dtype=np.float32), axis=-1, keepdims=True, dtype=np.float32)
            np.multiply(xs, np.float32(1.0) / np.sqrt(mean_sq + eps), out=outs)
            outs *= w  # in place: one full-size temporary fewer, the same two roundings

        if x.ndim < 2:
            rows(0, x.shape[0])  # one row: the whole vector
        else:
            self._rows_parallel(x.shape[0], rows)
        return out

    def _layer(
        self,
        il: int,
        x: np.ndarray,
        positions: np.ndarray,
        weight: Callable[[str], np.ndarray],
        attend: Callable[[int, np.ndarray, np.ndarray, np.ndarray, int], np.ndarray],
        obs: MatmulObserver | None,
        n_ctx: int,
        expert: Callable[[str, int], np.ndarray],
        inputs_only: bool = False,
    ) -> np.ndarray:
        """One decoder block on the rows of `x` (updated in place and returned) at `positions` (one per
        row); `weight` fetches a tensor and `expert(name, e)` one expert's matrix of a stacked tensor,
        `attend(il, q, k, v, window)` stores K/V where the caller keeps them and attends; `n_ctx` is the
        context llama.cpp would run with (it picks Phi-3's rope factors). `inputs_only`: see
        `sequence_layer`."""
        c = self.config
        p = f"blk.{il}."
        h = self._rms_norm(x, weight(p + "attn_norm.weight")) if c.traits.pre_norms else x
        n_q, n_k = c.n_head * c.head_dim_k, c.n_head_kv * c.head_dim_k
        shared: dict[GGMLQuantizationType, np.ndarray] = {}
        if self.has(p + "attn_qkv.weight"):
            qkv = self._matmul(h, p + "attn_qkv.weight", obs, weight(p + "attn_qkv.weight"))
            q, k, v = qkv[:, :n_q], qkv[:, n_q : n_q + n_k], qkv[:, n_q + n_k :]
        else:
            q = self._matmul(h, p + "attn_q.weight", obs, weight(p + "attn_q.weight"), shared)
            k = self._matmul(h, p + "attn_k.weight", obs, weight(p + "attn_k.weight"), shared)
            v = self._matmul(h, p + "attn_v.weight", obs, weight(p + "attn_v.weight"), shared)
        del h, shared
        n_tok = x.shape[0]
        q = self._normed_heads(q, p + "attn_q_norm.weight", c.n_head, weight)
        k = self._normed_heads(k, p + "attn_k_norm.weight", c.n_head_kv, weight)
        v = v.reshape(n_tok, c.n_head_kv, c.head_dim_v)
        swa = bool(c.swa_layers[il]) if c.sliding_window else False
        step = c.traits.no_rope_layer_step
        if not (step and (il + 1) % step == 0):  # smollm3: every 4th layer has no rope
            base = c.rope_base_swa if swa else c.rope_base
            scale = c.rope_freq_scale if not swa or c.traits.swa_rope_scale_is_main else 1.0
            cos, sin = self._rope_tables(positions, base, scale, self._rope_factors(n_ctx))
            q = self._rope(q, cos, sin)
            k = self._rope(k, cos, sin)
        if self.emulate_ggml:  # F16 KV cache; Q meets K as F16 (vec_dot_type of an F16 tensor)
            q = round_f16_(q)
            k = round_f16_(k)
            v = round_f16_(np.ascontiguousarray(v))
        attn = attend(il, q, k, v, c.sliding_window if swa else 0)
        del q, k, v
        out = self._matmul(attn, p + "attn_output.weight", obs, weight(p + "attn_output.weight"))
        del attn
        if self.has(p + "post_attention_norm.weight") and c.traits.ffn_norm != "post_attention_norm":
            out = self._rms_norm(out, weight(p + "post_attention_norm.weight"))
        if c.residual_scale:  # granite
            out *= np.float32(c.residual_scale)
        x += out
        del out
        ffn_names = [p + "ffn_gate.weight", p + "ffn_up.weight", p + "ffn_down.weight"]
        ffn_names += [p + "ffn_gate_inp.weight"] + [p + t + ".weight" for t in SHARED_EXPERT_TENSORS]
        ffn_names += [p + t + ".bias" for t in EXPERT_TENSORS[1:]]  # gpt-oss: one bias row per expert
        ffn_w = {n: weight(n) for n in ffn_names if self.has(n)}
        # Row slabs bound the (rows, n_ff) temporaries when many tokens go through at once; an observer
        # (imatrix) sees each matmul's rows in one call, as llama-imatrix does. A MoE layer takes all rows
        # at once: it dequantizes each used expert once and multiplies only that expert's tokens.
        moe = self.has(p + "ffn_gate_inp.weight")
        step = n_tok if obs is not None or moe else max(64, (1 << 21) // max(1, c.n_ff))
        for r0 in range(0, n_tok, step):
            xs = x[r0 : r0 + step]
            out = self._ffn(il, xs, ffn_w, obs, weight, expert, inputs_only)
            if out is not None:
                xs += out
        return x

    def _normed_heads(
        self, x: np.ndarray, norm_name: str, n_heads: int, weight: Callable[[str], np.ndarray]
    ) -> np.ndarray:
        """(T, n_heads*d) projection rows -> (T, n_heads, d), RMS-normalised by `norm_name` if the layer has
        it: per head (qwen3, gemma3: d weights) or over the whole row before the split (olmo2)."""
        w = weight(norm_name) if self.has(norm_name) else None
        whole_row = w is not None and w.size == x.shape[-1]
        if whole_row:
            x = self._rms_norm(x, w)
        x = x.reshape(x.shape[0], n_heads, -1)
        return self._rms_norm(x, w) if w is not None and not whole_row else x

    def _ffn(
        self,
        il: int,
        x: np.ndarray,
        ffn_w: dict[str, np.ndarray],
        obs: MatmulObserver | None,
        weight: Callable[[str], np.ndarray],
        expert: Callable[[str, int], np.ndarray],
        inputs_only: bool = False,
    ) -> np.ndarray | None:
        """The FFN branch's output rows; None with `inputs_only` on a dense FFN, whose down projection
        only the observer's view of its input is wanted from."""
        c = self.config
        p = f"blk.{il}."
        h = self._rms_norm(x, weight(p + c.traits.ffn_norm + ".weight")) if c.traits.pre_norms else x
        if p + "ffn_gate_inp.weight" in ffn_w:
            return moe_ffn(
                h, p, ffn_w, expert, self._types, c.n_expert_used, c.traits.expert_weights_norm,
                lambda rows, name: self._matmul(rows, name, obs, ffn_w[name]),
                self._activation, self.emulate_ggml, obs, c.traits.expert_gating, c.traits.expert_glu,
            )
        shared: dict[GGMLQuantizationType, np.ndarray] = {}
        if p + "ffn_gate.weight" in ffn_w:
            gate = self._matmul(h, p + "ffn_gate.weight", obs, ffn_w[p + "ffn_gate.weight"], shared)
            up = self._matmul(h, p + "ffn_up.weight", obs, ffn_w[p + "ffn_up.weight"], shared)
        else:  # phi3: ffn_up holds [gate; up] (2*n_ff rows), split like ggml_swiglu
            fused = self._matmul(h, p + "ffn_up.weight", obs, ffn_w[p + "ffn_up.weight"])
            gate, up = fused[:, : c.n_ff], fused[:, c.n_ff :]
        del h, shared
        act = self._gated(gate, up)
        del gate, up
        if inputs_only and obs is not None:
            obs(p + "ffn_down.weight", act)
            return None
        out = self._matmul(act, p + "ffn_down.weight", obs, ffn_w[p + "ffn_down.weight"])
        if self.has(p + "post_ffw_norm.weight"):
            out = self._rms_norm(out, weight(p + "post_ffw_norm.weight"))
        if c.residual_scale:  # granite
            out *= np.float32(c.residual_scale)
        return out

    def _gated(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """activation(gate) · up, written over `gate` when it is contiguous (else a new array). Row slabs
        of ~256 KB keep each slab's five elementwise passes in cache instead of streaming (rows, n_ff)
        temporaries through memory five times; elementwise results do not depend on the slab."""
        out = gate if gate.flags.c_contiguous else np.empty(gate.shape, np.float32)
        slab = max(1, (1 << 16) // max(1, gate.shape[-1]))

        def rows(r0: int, r1: int) -> None:
            for s0 in range(r0, r1, slab):
                s1 = min(r1, s0 + slab)
                act = self._activation(gate[s0:s1])
                act *= up[s0:s1]
                out[s0:s1] = act

        self._rows_parallel(gate.shape[0], rows)
        return out

    def _activation(self, g: np.ndarray) -> np.ndarray:
        """A new array: gelu(g) or silu(g), in ggml's operation order."""
        if self.config.traits.activation == "gelu":
            # ggml_gelu: tanh approximation
            inner = np.float32(0.7978845608028654) * (g + np.float32(0.044715) * g * g * g)
            return np.float32(0.5) * g * (np.float32(1.0) + np.tanh(inner))
        t = np.negative(g)
        np.exp(t, out=t)
        t += np.float32(1.0)
        return np.divide(g, t, out=t)

    def _rope_factors(self, n_ctx: int) -> np.ndarray | None:
        """llama_model::get_rope_factors: llama-3's rope_freqs if present; else Phi-3's long factors when
        llama.cpp's per-sequence context for `n_ctx` exceeds the original training context, else the
        short ones. llama_context pads n_ctx_seq up to a multiple of 256, so `-c 128` already counts as
        256; `n_ctx` here is the KV cache size, which eval/imatrix/generate size as llama.cpp's -c."""
        if self.has("rope_freqs.weight"):
            return self.weight("rope_freqs.weight").reshape(-1)
        n_ctx_seq = -(-n_ctx // 256) * 256
        name = "rope_factors_long.weight" if n_ctx_seq > self.config.rope_ctx_orig else "rope_factors_short.weight"
        return self.weight(name).reshape(-1) if self.has(name) else None

    def _rope_tables(
        self, positions: np.ndarray, base: float, freq_scale: float, factors: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin per (position, pair) exactly as ggml-cpu's ggml_rope_cache_init + rope_yarn (ext_factor
        0), in float32 and in its order: theta = p·theta_scale^i by a running float product, divided by
        the pair's freq factor, times freq_scale; cos/sin of that times attn_factor."""
        c = self.config
        half = c.rope_dim // 2
        f32 = np.float32
        theta_scale = f32(np.float64(f32(base)) ** np.float64(f32(-2.0) / f32(c.rope_dim)))  # powf
        theta = np.empty((positions.size, half), np.float32)
        running = positions.astype(np.float32)
        for i in range(half):
            theta[:, i] = running
            running = running * theta_scale
        if factors is not None:
            theta /= factors[:half].astype(np.float32)
        mscale = f32(c.rope_attn_factor)
        if c.rope_ext_factor:
            # rope_yarn: theta_interp (scaled) and theta_extrap (not) mixed by the ramp over the pairs
            # between ggml_rope_yarn_corr_dims' floor/ceil correction dims (beta_fast 32, beta_slow 1)
            low, high = _yarn_corr_dims(c.rope_dim, c.rope_ctx_orig, base)
            pair = np.arange(half, dtype=np.float32)
            y = (pair - low) / max(f32(0.001), high - low)
            ramp_mix = (f32(1.0) - np.minimum(f32(1.0), np.maximum(f32(0.0), y))) * f32(c.rope_ext_factor)
            interp = f32(freq_scale) * theta
            theta = interp * (f32(1.0) - ramp_mix) + theta * ramp_mix
            mscale *= f32(1.0) + f32(0.1) * np.log(f32(1.0) / f32(freq_scale))
        else:
            theta *= f32(freq_scale)
        # cosf/sinf of a float32 angle: correctly rounded via double (glibc's are within an ulp of it)
        cos = np.cos(theta.astype(np.float64)).astype(np.float32) * mscale
        sin = np.sin(theta.astype(np.float64)).astype(np.float32) * mscale
        return cos[:, None, :], sin[:, None, :]

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x (T, heads, d) rotated by the (T, 1, d/2) tables of its rows' positions."""
        rd = self.config.rope_dim
        neox = self.config.traits.rope_neox
        out = np.empty_like(x)

        def rows(r0: int, r1: int) -> None:
            xs, outs, c, s = x[r0:r1], out[r0:r1], cos[r0:r1], sin[r0:r1]
            if rd < xs.shape[-1]:
                outs[..., rd:] = xs[..., rd:]
            if neox:
                a, b, out_a, out_b = xs[..., : rd // 2], xs[..., rd // 2 : rd], outs[..., : rd // 2], outs[..., rd // 2 : rd]
            else:
                a, b, out_a, out_b = xs[..., 0:rd:2], xs[..., 1:rd:2], outs[..., 0:rd:2], outs[..., 1:rd:2]
            # a·cos − b·sin and a·sin + b·cos, each product rounded, written in place (no full-size temporaries)
            product = np.multiply(b, s)
            np.multiply(a, c, out=out_a)
            out_a -= product
            np.multiply(b, c, out=product)
            np.multiply(a, s, out=out_b)
            out_b += product

        self._rows_parallel(x.shape[0], rows)
        return out

    def _attention(
        self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, positions: np.ndarray, window: int,
        sinks: np.ndarray | None = None,
    ) -> np.ndarray:
        """q (T, n_head, d) at increasing `positions` against keys/values (n_head_kv, S, d) of positions
        0..S-1 (causal, optional sliding window; `sinks`: one extra logit per head in each softmax, gpt-oss's
        attn_sinks) -> (T, n_head*d_v)."""
        c = self.config
        n_tok = q.shape[0]
        group = c.n_head // c.n_head_kv
        # (n_kv, group, T, d): query heads sharing a KV head are stacked so one 3-D matmul serves them
        qg = np.ascontiguousarray(q.transpose(1, 0, 2)).reshape(c.n_head_kv, group, n_tok, c.head_dim_k)
        out = np.empty((c.n_head_kv, group, n_tok, c.head_dim_v), np.float32)
        # Query blocks bound the scores to ~64 MB. With ggml emulation every block spans all keys: a
        # shorter softmax row or PV product would sum in another order, and the F16 rounding downstream
        # turns such last-bit differences into visible PPL changes (eval matches llama-perplexity to 4
        # decimals). Plain float32 (calibration, --exact) takes blocks of 64 queries and only the keys
        # their causal window can see, which halves the work on a full-context prompt.
        n_kv_all = keys.shape[1]
        causal = not self.emulate_ggml
        step = 64 if causal else max(1, (1 << 24) // max(1, c.n_head * n_kv_all))
        for t0 in range(0, n_tok, step):
            t1 = min(n_tok, t0 + step)
            n = t1 - t0
            k0, k1 = 0, n_kv_all
            if causal:  # positions increase: the block's last query sees the most keys, its first the oldest
                k1 = min(n_kv_all, int(positions[t1 - 1]) + 1)
                if window:
                    k0 = max(0, int(positions[t0]) - window + 1)
            n_kv = k1 - k0
            # Keys before the block's first query are never masked by causality: only the columns from
            # there on get the mask added (plain float32 only; with ggml emulation, and with a window, all).
            m0 = max(0, int(positions[t0]) - k0) if causal and not window else 0
            key_pos = np.arange(k0 + m0, k1)
            pos = positions[t0:t1, None]
            masked = key_pos[None, :] > pos
            if window:
                masked |= (pos - key_pos[None, :]) >= window
            bias = np.where(masked, np.float32(-np.inf), np.float32(0.0)).astype(np.float32)
            qs = qg[:, :, t0:t1].reshape(c.n_head_kv, group * n, c.head_dim_k)
            scores = (qs @ keys[:, k0:k1].transpose(0, 2, 1)).reshape(c.n_head_kv, group, n, n_kv)
            scores *= np.float32(c.attn_scale)
            if c.attn_logit_softcap:
                cap = np.float32(c.attn_logit_softcap)
                scores = np.tanh(scores / cap) * cap
            scores[..., m0:] += bias
            if causal and sinks is None:
                # Normalised after the PV product: n·d_v divisions instead of n·n_kv, one pass less.
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                total = scores.sum(axis=-1, keepdims=True)
                pv = (scores.reshape(c.n_head_kv, group * n, n_kv) @ values[:, k0:k1]).reshape(
                    c.n_head_kv, group, n, c.head_dim_v
                )
                np.divide(pv, total, out=out[:, :, t0:t1])
                continue
            if sinks is None:
                # Every row spans all keys (above), but the keys after the last position of a run of 64
                # query rows are masked for all of them: their exp(-inf) = 0 is written directly and the
                # max, exp and division run on the rest. The sums still add whole rows, zeros included:
                # the same values in the same order as the plain formulation.
                runs = [(r0, min(n, r0 + 64)) for r0 in range(0, n, 64)]
                visible = [min(n_kv, int(positions[t0 + r1 - 1]) + 1 - k0) for _, r1 in runs]
                for (r0, r1), c1 in zip(runs, visible, strict=True):
                    part = scores[:, :, r0:r1, :c1]
                    part -= part.max(axis=-1, keepdims=True)
                    np.exp(part, out=part)
                    scores[:, :, r0:r1, c1:] = 0
                total = scores.sum(axis=-1, keepdims=True)
                for (r0, r1), c1 in zip(runs, visible, strict=True):
                    scores[:, :, r0:r1, :c1] /= total[:, :, r0:r1]
            else:  # ggml_soft_max_add_sinks: the head's sink logit joins the max and the sum, not the output
                sink = sinks.reshape(c.n_head_kv, group, 1, 1)
                top = np.maximum(scores.max(axis=-1, keepdims=True), sink)
                scores -= top
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True) + np.exp(sink - top)
            out[:, :, t0:t1] = (scores.reshape(c.n_head_kv, group * n, n_kv) @ values[:, k0:k1]).reshape(
                c.n_head_kv, group, n, c.head_dim_v
            )
        return out.reshape(c.n_head, n_tok, c.head_dim_v).transpose(1, 0, 2).reshape(n_tok, -1)


def _yarn_corr_dims(n_dims: int, n_ctx_orig: int, base: float) -> tuple[np.float32, np.float32]:
    """ggml_rope_yarn_corr_dims with beta_fast 32 and beta_slow 1 (llama.cpp's defaults), in float32:
    floor/ceil of n_dims * logf(n_ctx_orig / (beta * 2 pi)) / (2 logf(base)), clamped to [0, n_dims - 1]."""
    f32 = np.float32

    def corr_dim(beta: float) -> np.float32:
        return f32(n_dims) * np.log(f32(n_ctx_orig) / (f32(beta) * f32(2) * f32(np.pi))) / (f32(2) * np.log(f32(base)))

    return f32(max(0.0, np.floor(corr_dim(32.0)))), f32(min(n_dims - 1.0, np.ceil(corr_dim(1.0))))
