"""The mixture-of-experts FFN of the runtime: llama.cpp's llm_graph_context::build_moe_ffn (src/llama-graph.cpp)
for softmax gating and SwiGLU experts without biases (Mixtral, Qwen3-MoE, OLMoE), in its operation order:

1. router logits = ffn_gate_inp · x (an ordinary matmul, F32 weight);
2. probs = softmax over the experts (ggml_soft_max: exp(l - max), sum in double, times 1/sum);
3. the top n_expert_used experts by probability (ggml_argsort_top_k: descending order), their probs
   as weights; renormalised to sum 1 when the architecture does (`expert_weights_norm`, llama.cpp's norm_w;
   the sum clamped below at 6.1e-5);
4. per expert, on the tokens routed to it: silu(gate_e · x) * (up_e · x), then down_e · that; each matmul
   sees x as ggml's MUL_MAT_ID does (rounded to the expert tensor's vec_dot type, numerics.py);
5. each slot's output times its weight, and the slots summed in top-k order;
6. Qwen2-MoE's shared expert (src/models/qwen2moe.cpp): a dense SwiGLU FFN on every token, times
   sigmoid(ffn_gate_inp_shexp · x) computed as ggml does it, silu(g) / g, added to the routed sum.

GPT-OSS (src/models/openai-moe.cpp) differs in three places: the router has a bias (added by `matmul`),
the gating is LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT (top-k of the raw logits, then a softmax over
the k selected ones), each expert matmul adds its expert's bias row (ggml_add_id), and the activation is
ggml_swiglu_oai: min(gate, 7) * sigmoid(1.702 * min(gate, 7)) * (clamp(up, -7, 7) + 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.runtime.numerics import vec_dot_round_trip

# ggml_clamp(weights_sum, 6.103515625e-5, INFINITY) in build_moe_ffn: the smallest normal float16
MIN_WEIGHT_SUM = np.float32(6.103515625e-5)

EXPERT_TENSORS = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
SHARED_EXPERT_TENSORS = ("ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """ggml_soft_max of each row (float32): exp(x - max), summed in double, scaled by float(1/sum)."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    total = e.sum(axis=-1, keepdims=True, dtype=np.float64)
    return e * (1.0 / total).astype(np.float32)


def route(probs: np.ndarray, n_used: int, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """(selected experts (n_tok, n_used) in descending probability, their weights (n_tok, n_used))."""
    selected = np.argsort(-probs, axis=-1, kind="stable")[:, :n_used]
    weights = np.take_along_axis(probs, selected, axis=-1)
    if normalise:
        total = np.maximum(weights.sum(axis=-1, keepdims=True, dtype=np.float32), MIN_WEIGHT_SUM)
        weights = weights / total
    return selected, weights


SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT = np.float32(1.702), np.float32(7.0)  # LLM_FFN_SWIGLU_OAI_MOE's constants


def swiglu_oai(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_compute_forward_swiglu_oai_f32: x / (1 + expf(alpha * -x)) * (y + 1), x = min(gate, limit),
    y = clamp(up, -limit, limit)."""
    x = np.minimum(gate, SWIGLU_OAI_LIMIT)
    y = np.clip(up, -SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT)
    return x / (np.float32(1.0) + np.exp(SWIGLU_OAI_ALPHA * -x)) * (y + np.float32(1.0))


def moe_ffn(
    h: np.ndarray,
    layer: str,
    weights: dict[str, np.ndarray],
    expert: Callable[[str, int], np.ndarray],
    types: dict[str, GGMLQuantizationType],
    n_used: int,
    normalise: bool,
    matmul: Callable[[np.ndarray, str], np.ndarray],
    activation: Callable[[np.ndarray], np.ndarray],
    emulate_ggml: bool,
    observer: Callable[..., None] | None,
    gating: str = "softmax",
    glu: str = "swiglu",
) -> np.ndarray:
    """The MoE branch on the normed rows `h` (n_tok, n_embd) of layer prefix `layer` ("blk.N.").

    `weights` holds the layer's float32 unstacked FFN tensors (router, shared expert) by GGUF name;
    `expert(name, e)` gives expert e's float32 matrix of a stacked tensor (dequantized on demand: one
    expert at a time in memory, only the experts some token uses); `matmul(rows, name)` is the model's
    ordinary matmul (observers see the router and the shared expert as any matmul); `activation` the
    gate's SiLU. `observer(name, rows, experts)` sees each stacked tensor's input as llama-imatrix's MUL_MAT_ID callback
    does: rows (n_tok, 1 or n_used, ne0) — the token's row for gate/up, each slot's own row for down — and
    the expert of every (token, slot). `gating` "softmax_weight" and `glu` "swiglu_oai" select GPT-OSS's
    router and activation; expert biases (`ffn_*_exps.bias` in `weights`, (n_expert, rows)) are added
    per expert when present."""
    gate_name, up_name, down_name = (layer + t + ".weight" for t in EXPERT_TENSORS[1:])
    router_logits = matmul(h, layer + EXPERT_TENSORS[0] + ".weight")
    if gating == "softmax_weight":
        selected, top_logits = route(router_logits, n_used, False)
        slot_weights = softmax_rows(top_logits)
    else:
        selected, slot_weights = route(softmax_rows(router_logits), n_used, normalise)
    gate_bias, up_bias, down_bias = (weights.get(name.removesuffix(".weight") + ".bias")
                                     for name in (gate_name, up_name, down_name))
    n_tok, n_embd = h.shape

    def seen(x: np.ndarray, name: str) -> np.ndarray:
        return vec_dot_round_trip(x, types[name]) if emulate_ggml else x

    if observer is not None:
        observer(gate_name, h[:, None, :], selected)
        observer(up_name, h[:, None, :], selected)
    h_gate = seen(h, gate_name)
    h_up = h_gate if types[up_name] == types[gate_name] else seen(h, up_name)
    acts: np.ndarray | None = None  # every slot's activation, for the observer only
    slots = np.empty((n_tok, n_used, n_embd), np.float32)
    for e in np.unique(selected):
        tok, slot = np.nonzero(selected == e)
        gate = h_gate[tok] @ expert(gate_name, int(e)).T
        up = h_up[tok] @ expert(up_name, int(e)).T
        if gate_bias is not None:
            gate += gate_bias[e]
        if up_bias is not None:
            up += up_bias[e]
        if glu == "swiglu_oai":
            act = swiglu_oai(gate, up)
        else:
            act = activation(gate)
            act *= up
        if observer is not None:
            if acts is None:
                acts = np.empty((n_tok, n_used, act.shape[1]), np.float32)
            acts[tok, slot] = act
        slots[tok, slot] = seen(act, down_name) @ expert(down_name, int(e)).T
        if down_bias is not None:
            slots[tok, slot] += down_bias[e]
    if observer is not None:
        observer(down_name, acts, selected)
    slots *= slot_weights[:, :, None]
    out = slots[:, 0].copy()
    for i in range(1, n_used):
        out += slots[:, i]
    shared_gate = layer + SHARED_EXPERT_TENSORS[0] + ".weight"
    if shared_gate in weights:
        # (n_tok, 1): llama-quantize writes the (n_embd, 1) gate with its trailing 1-dim dropped
        gate_in = matmul(h, shared_gate).reshape(h.shape[0], 1)
        sh_gate, sh_up, sh_down = (layer + t + ".weight" for t in SHARED_EXPERT_TENSORS[1:])
        act = activation(matmul(h, sh_gate))
        act *= matmul(h, sh_up)
        shared = matmul(act, sh_down)
        shared *= activation(gate_in) / gate_in
        out += shared
    return out
