"""make_plan against llama-quant.cpp's rules (spec §5), on tensor lists only: no llama.cpp, no data."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as T

from quantcli.errors import FallbackRefused, Unsupported, UsageError
from quantcli.plan import (
    BITS_RECIPES,
    ModelInfo,
    Overrides,
    TensorSpec,
    make_plan,
    parse_ftype,
    resolve_recipe,
    use_more_bits,
)
from quantcli.plan.options import build_overrides

N_LAYER = 16
# use_more_bits(i, 16): i < 2, i >= 14, or (i - 2) % 3 == 2  ->  worked out by hand from the C expression.
MORE_BITS_16 = {0, 1, 4, 7, 10, 13, 14, 15}


def llama_specs(
    n_layer: int = N_LAYER,
    n_embd: int = 256,
    n_ff: int = 512,
    kv: int = 128,
    tied: bool = False,
    vocab: int = 512,
) -> list[TensorSpec]:
    specs = [
        TensorSpec("token_embd.weight", (n_embd, vocab), T.F16),
        TensorSpec("output_norm.weight", (n_embd,), T.F32),
    ]
    if not tied:
        specs.append(TensorSpec("output.weight", (n_embd, vocab), T.F16))
    # Deliberately not in llama-quantize's order: make_plan must sort (blk.10 after blk.9).
    for i in reversed(range(n_layer)):
        p = f"blk.{i}."
        specs += [
            TensorSpec(p + "ffn_up.weight", (n_embd, n_ff), T.F16),
            TensorSpec(p + "attn_q.weight", (n_embd, n_embd), T.F16),
            TensorSpec(p + "attn_k.weight", (n_embd, kv), T.F16),
            TensorSpec(p + "attn_v.weight", (n_embd, kv), T.F16),
            TensorSpec(p + "attn_output.weight", (n_embd, n_embd), T.F16),
            TensorSpec(p + "ffn_gate.weight", (n_embd, n_ff), T.F16),
            TensorSpec(p + "ffn_down.weight", (n_ff, n_embd), T.F16),
            TensorSpec(p + "attn_norm.weight", (n_embd,), T.F32),
            TensorSpec(p + "ffn_norm.weight", (n_embd,), T.F32),
        ]
    return specs


MODEL = ModelInfo("llama", n_layer=N_LAYER, n_head=4, n_head_kv=2)


def types(plan, suffix: str) -> list[T]:  # noqa: ANN001
    """Types of blk.0..n-1.<suffix> in layer order."""
    by = plan.by_name()
    return [by[f"blk.{i}.{suffix}"].type for i in range(N_LAYER)]


def test_use_more_bits_matches_c_expression() -> None:
    assert {i for i in range(16) if use_more_bits(i, 16)} == MORE_BITS_16
    # n = 30 (SmolLM2): n/8 = 3, 7n/8 = 26 -> 0..2, 26..29 and (i-3)%3 == 2 -> 5, 8, ..., 23
    assert {i for i in range(30) if use_more_bits(i, 30)} == {
        0,
        1,
        2,
        5,
        8,
        11,
        14,
        17,
        20,
        23,
        26,
        27,
        28,
        29,
    }


def test_order_is_layer_then_name() -> None:
    plan = make_plan(MODEL, llama_specs(), "Q8_0")
    names = [d.name for d in plan.decisions]
    assert names[:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]
    assert names[3:12] == [
        f"blk.0.{n}.weight"
        for n in (
            "attn_k",
            "attn_norm",
            "attn_output",
            "attn_q",
            "attn_v",
            "ffn_down",
            "ffn_gate",
            "ffn_norm",
            "ffn_up",
        )
    ]
    assert names.index("blk.10.attn_k.weight") > names.index("blk.9.ffn_up.weight")


def test_q4_k_m_mixture() -> None:
    plan = make_plan(MODEL, llama_specs(), "Q4_K_M")
    by = plan.by_name()
    more = [T.Q6_K if i in MORE_BITS_16 else T.Q4_K for i in range(N_LAYER)]
    assert types(plan, "attn_v.weight") == more
    assert types(plan, "ffn_down.weight") == more
    for suffix in (
        "attn_q.weight",
        "attn_k.weight",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
    ):
        assert types(plan, suffix) == [T.Q4_K] * N_LAYER
    assert by["output.weight"].type == T.Q6_K
    assert by["token_embd.weight"].type == T.Q4_K
    assert by["blk.3.attn_norm.weight"].type == T.F32 and not by["blk.3.attn_norm.weight"].changes
    assert plan.n_fallback == 0
    assert "use_more_bits" in by["blk.4.attn_v.weight"].reason


@pytest.mark.parametrize(
    ("recipe", "attn_v", "ffn_down", "attn_output"),
    [
        ("Q2_K", [T.Q3_K] * 16, [T.Q3_K] * 16, [T.Q3_K] * 16),
        ("Q3_K_S", [T.Q3_K] * 16, [T.Q3_K] * 16, [T.Q3_K] * 16),
        ("Q3_K_M", [T.Q5_K] * 2 + [T.Q4_K] * 14, [T.Q5_K] + [T.Q4_K] * 15, [T.Q4_K] * 16),
        ("Q3_K_L", [T.Q5_K] * 16, [T.Q5_K] * 16, [T.Q5_K] * 16),
        ("Q4_K_S", [T.Q5_K] * 4 + [T.Q4_K] * 12, [T.Q5_K] * 2 + [T.Q4_K] * 14, [T.Q4_K] * 16),
        ("Q5_K_S", [T.Q5_K] * 16, [T.Q5_K] * 16, [T.Q5_K] * 16),
        (
            "Q5_K_M",
            [T.Q6_K if i in MORE_BITS_16 else T.Q5_K for i in range(16)],
            [T.Q6_K if i in MORE_BITS_16 else T.Q5_K for i in range(16)],
            [T.Q5_K] * 16,
        ),
        ("Q6_K", [T.Q6_K] * 16, [T.Q6_K] * 16, [T.Q6_K] * 16),
        ("Q8_0", [T.Q8_0] * 16, [T.Q8_0] * 16, [T.Q8_0] * 16),
        ("Q4_0", [T.Q4_0] * 16, [T.Q4_0] * 16, [T.Q4_0] * 16),
        ("IQ4_NL", [T.IQ4_NL] * 16, [T.Q5_K] * 2 + [T.IQ4_NL] * 14, [T.IQ4_NL] * 16),
        ("TQ1_0", [T.TQ1_0] * 16, [T.TQ1_0] * 16, [T.TQ1_0] * 16),
    ],
)
def test_layer_rules(recipe: str, attn_v: list[T], ffn_down: list[T], attn_output: list[T]) -> None:
    plan = make_plan(MODEL, llama_specs(), recipe)
    assert types(plan, "attn_v.weight") == attn_v
    assert types(plan, "ffn_down.weight") == ffn_down
    assert types(plan, "attn_output.weight") == attn_output
    expected_output = T.Q8_0 if recipe == "Q8_0" else T.Q6_K
    assert plan.by_name()["output.weight"].type == expected_output
    embd = {"TQ1_0": T.Q4_K}.get(recipe, parse_ftype(recipe).default_type)
    assert plan.by_name()["token_embd.weight"].type == embd


def test_gqa_4_changes_q2_k_attn_v() -> None:
    plan = make_plan(ModelInfo("llama", N_LAYER, n_head=8, n_head_kv=2), llama_specs(), "Q2_K")
    assert types(plan, "attn_v.weight") == [T.Q4_K] * N_LAYER
    plan = make_plan(ModelInfo("llama", N_LAYER, n_head=8, n_head_kv=2), llama_specs(), "IQ4_XS")
    assert types(plan, "attn_v.weight") == [T.Q5_K] * N_LAYER


def test_imatrix_presence_changes_rules() -> None:
    with_im = make_plan(MODEL, llama_specs(), "Q4_0", Overrides(has_imatrix=True))
    assert types(with_im, "ffn_down.weight") == [T.Q4_1] * 2 + [T.Q4_0] * 14
    without = make_plan(MODEL, llama_specs(), "IQ4_XS", Overrides(has_imatrix=True))
    assert types(without, "ffn_down.weight") == [T.IQ4_XS] * 16


def test_tied_embeddings_follow_output_rule() -> None:
    assert make_plan(MODEL, llama_specs(tied=True), "Q4_K_M").by_name()["token_embd.weight"].type == T.Q6_K
    assert make_plan(MODEL, llama_specs(tied=True), "Q8_0").by_name()["token_embd.weight"].type == T.Q8_0
    assert make_plan(MODEL, llama_specs(tied=True), "Q4_0").by_name()["token_embd.weight"].type == T.Q6_K


def test_fallbacks_for_row_576() -> None:
    """SmolLM2-like rows (576 = 2.25 * 256): K types fall back, output rule goes to Q8_0 uncounted."""
    specs = llama_specs(n_embd=576, n_ff=1536, kv=192, tied=True)
    plan = make_plan(MODEL, specs, "Q4_K_M")
    by = plan.by_name()
    assert by["token_embd.weight"].type == T.Q8_0 and not by["token_embd.weight"].fell_back
    q = by["blk.5.attn_q.weight"]
    assert (q.type, q.fell_back, q.fallback_from) == (T.Q5_0, True, T.Q4_K)
    v = by["blk.0.attn_v.weight"]
    assert (v.type, v.fallback_from) == (T.Q8_0, T.Q6_K)
    assert by["blk.0.ffn_down.weight"].type == T.Q6_K and not by["blk.0.ffn_down.weight"].fell_back
    # every 2-D tensor with ne0 = 576 except token_embd falls back: 6 per layer
    assert plan.n_fallback == 6 * N_LAYER
    q2 = make_plan(MODEL, specs, "Q2_K").by_name()
    assert (q2["blk.3.attn_q.weight"].type, q2["blk.3.attn_q.weight"].fallback_from) == (T.Q4_0, T.Q2_K)
    q5 = make_plan(MODEL, specs, "Q5_K_S").by_name()
    assert q5["blk.3.attn_q.weight"].type == T.Q5_1
    with pytest.raises(FallbackRefused):
        plan.refuse_fallbacks()


def test_row_not_multiple_of_32_falls_back_to_f16() -> None:
    specs = llama_specs() + [TensorSpec("blk.0.odd.weight", (100, 8), T.F32)]
    d = make_plan(MODEL, specs, "Q4_0").by_name()["blk.0.odd.weight"]
    assert (d.type, d.fell_back, d.fallback_from) == (T.F16, True, T.Q4_0)


def test_float_recipes_skip_mixture() -> None:
    plan = make_plan(MODEL, llama_specs(), "BF16")
    assert {d.type for d in plan.decisions} == {T.BF16, T.F32}
    assert plan.by_name()["output_norm.weight"].type == T.F32


def test_overrides() -> None:
    ov = build_overrides(
        tensor_types=["attn_v=q8_0", "BLK\\.1\\.=q5_0", "attn=q6_k"],
        output_tensor_type="q4_0",
        token_embedding_type="f16",
    )
    plan = make_plan(MODEL, llama_specs(), "Q4_K_M", ov)
    by = plan.by_name()
    assert by["blk.1.attn_v.weight"].type == T.Q8_0  # first matching pattern wins
    assert by["blk.1.ffn_up.weight"].type == T.Q5_0  # pattern lower-cased, as llama-quantize does
    assert by["blk.2.attn_q.weight"].type == T.Q6_K
    assert by["blk.0.ffn_down.weight"].type == T.Q6_K  # unmatched tensors keep the mixture ...
    # ... driven by counters that skip manually typed tensors: blk.1.ffn_down matched "blk\.1\.", so
    # blk.2.ffn_down is the mixture's ffn_down #1 (use_more_bits) and blk.3 is #2 (not).
    assert by["blk.2.ffn_down.weight"].type == T.Q6_K
    assert by["blk.3.ffn_down.weight"].type == T.Q4_K
    assert by["output.weight"].type == T.Q4_0
    assert by["token_embd.weight"].type == T.F16
    pure = make_plan(MODEL, llama_specs(), "Q4_K_M", Overrides(pure=True)).by_name()
    assert pure["blk.0.attn_v.weight"].type == T.Q4_K and pure["output.weight"].type == T.Q4_K
    leave = make_plan(MODEL, llama_specs(), "Q4_K_M", Overrides(leave_output_tensor=True)).by_name()
    assert leave["output.weight"].type == T.F16


def test_manual_overrides_do_not_advance_counters() -> None:
    # attn_v of layer 0 overridden: llama-quantize's i_attention_wv then starts at layer 1.
    plan = make_plan(MODEL, llama_specs(), "Q3_K_M", build_overrides(tensor_types=["blk\\.0\\.attn_v=q8_0"]))
    assert types(plan, "attn_v.weight")[:4] == [T.Q8_0, T.Q5_K, T.Q5_K, T.Q4_K]


def test_which_tensors_are_never_quantized() -> None:
    specs = llama_specs(n_layer=1) + [
        TensorSpec("blk.0.attn_q.bias", (256, 2), T.F32),  # 2-D but not a weight
        TensorSpec("abcde", (256, 2), T.F32),  # C quirk: 5-character names pass the "ends with weight" test
        TensorSpec("blk.0.ssm_conv1d.weight", (256, 4), T.F32),
        TensorSpec("position_embd.weight", (256, 64), T.F16),
        TensorSpec("blk.0.attn_q_norm.weight", (256, 4), T.F32),
        TensorSpec("rope_freqs.weight", (32, 1, 1), T.F32),  # trailing 1s: 1-D for ggml_n_dims
    ]
    by = make_plan(ModelInfo("llama", 1, 4, 2), specs, "Q8_0").by_name()
    kept = {n for n, d in by.items() if not d.changes}
    assert {
        "blk.0.attn_q.bias",
        "blk.0.ssm_conv1d.weight",
        "position_embd.weight",
        "blk.0.attn_q_norm.weight",
        "rope_freqs.weight",
    } <= kept
    assert by["abcde"].type == T.Q8_0


def test_mxfp4_moe() -> None:
    specs = [
        TensorSpec("token_embd.weight", (256, 64), T.F16),
        TensorSpec("blk.0.ffn_down_exps.weight", (256, 512, 4), T.F16),
        TensorSpec("blk.0.ffn_gate_inp.weight", (256, 4), T.F32),
        TensorSpec("blk.0.attn_q.weight", (256, 256), T.F16),
    ]
    by = make_plan(ModelInfo("llama", 1, 4, 4, n_expert=4), specs, "MXFP4_MOE").by_name()
    assert by["blk.0.ffn_down_exps.weight"].type == T.MXFP4
    assert by["blk.0.attn_q.weight"].type == T.Q8_0
    assert by["blk.0.ffn_gate_inp.weight"].type == T.F32
    assert by["token_embd.weight"].type == T.Q8_0


def test_errors() -> None:
    with pytest.raises(Unsupported):
        parse_ftype("Q9_K")
    with pytest.raises(Unsupported):
        build_overrides(tensor_types=["attn=q9"])
    with pytest.raises(UsageError):
        build_overrides(tensor_types=["no-equals-sign"])
    with pytest.raises(UsageError, match="matches no tensor"):
        make_plan(MODEL, llama_specs(), "Q4_K_M", build_overrides(tensor_types=["lm_head=q8_0"]))
    with pytest.raises(UsageError):
        resolve_recipe("Q4_K_M", 4)
    with pytest.raises(UsageError):
        resolve_recipe(None, 7)


def test_kv_override_parsing() -> None:
    from quantcli.plan.options import parse_kv_override

    assert parse_kv_override("a.b=int:-12abc").value == -12  # std::atol
    assert parse_kv_override("a.b=int:x").value == 0
    assert parse_kv_override("a.b=float:2.5e1q").value == 25.0  # std::atof
    assert parse_kv_override("a.b=bool:false").value is False
    assert parse_kv_override("a.b=str:x=y").value == "x=y"
    # int overrides are written as u32 of the absolute value (gguf_set_val_u32(abs(v)))
    assert parse_kv_override("k=int:-5").encode() == b"\x01" + b"\0" * 7 + b"k" + bytes(
        [4, 0, 0, 0, 5, 0, 0, 0]
    )
    for bad in ("no-equals", "k=long:1", "k=bool:yes", "k=str:" + "x" * 128, "k" * 128 + "=int:1"):
        with pytest.raises(UsageError):
            parse_kv_override(bad)


def test_bits_recipes_and_aliases() -> None:
    assert {b: resolve_recipe(None, b).name for b in BITS_RECIPES} == {
        8: "Q8_0",
        6: "Q6_K",
        5: "Q5_K_M",
        4: "Q4_K_M",
        3: "Q3_K_M",
        2: "Q2_K",
    }
    assert parse_ftype("q4_k").name == "Q4_K_M" and parse_ftype("15").name == "Q4_K_M"
    assert parse_ftype("mxfp4_moe").value == 38


def test_totals() -> None:
    plan = make_plan(MODEL, llama_specs(), "Q8_0")
    n = sum(s.n_elements for s in llama_specs())
    assert plan.n_elements == n
    # Q8_0 = 34 bytes per 32 weights; norms stay F32 (4 bytes per weight)
    norms = (2 * N_LAYER + 1) * 256
    assert plan.tensor_bytes == (n - norms) // 32 * 34 + norms * 4
    assert plan.bits_per_weight == pytest.approx(plan.tensor_bytes * 8 / n)
