"""Runtime forward pass and metrics: tiny random models against transformers, metrics against scalar ports."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from reference import require_module, require_native
from tiny_models import TINY, transformers_config

from quantcli.runtime import Model, open_source
from quantcli.runtime.memory import madvise_hugepage, reused_heap
from quantcli.runtime.metrics import KLDAccumulator, _percentile, nll_rows, quantize_log_probs
from quantcli.runtime.numerics import vec_dot_round_trip, vec_dot_round_trip_

# ---- metrics against a line-by-line port of perplexity.cpp ----------------------------------------------


def _c_nearest_int(f: np.float32) -> int:
    val = np.float32(f) + np.float32(12582912.0)
    i = int(np.array([val], dtype=np.float32).view(np.int32)[0])
    return (i & 0x007FFFFF) - 0x00400000


def _c_log_softmax_base(logits: np.ndarray) -> tuple[float, float, list[int]]:
    """log_softmax(n_vocab, logits, log_prob, tok) of perplexity.cpp, scalar."""
    f32 = np.float32
    mx = mn = f32(logits[0])
    for v in logits[1:]:
        mx = max(mx, f32(v))
        mn = min(mn, f32(v))
    mn = max(mn, f32(mx - f32(16)))
    s = 0.0
    for v in logits:
        s += float(np.exp(f32(f32(v) - mx)))
    lse = f32(math.log(s))
    min_log_prob = f32(f32(mn - mx) - lse)
    scale = f32(f32(mx - mn) / f32(65535))
    inv = f32(f32(1) / scale)
    codes = [_c_nearest_int(f32(inv * f32(f32(v) - mn))) if f32(v) > mn else 0 for v in logits]
    return float(scale), float(min_log_prob), codes


def test_quantized_log_probs_match_perplexity_cpp() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((6, 300)) * 4).astype(np.float32)
    logits[1, :200] = -40.0  # many values below max-16: clipped to code 0
    logits[2, 7] = 30.0
    q = quantize_log_probs(logits)
    for r in range(logits.shape[0]):
        scale, mlp, codes = _c_log_softmax_base(logits[r])
        assert q.scale[r] == np.float32(scale)
        assert q.min_log_prob[r] == np.float32(mlp)
        assert q.codes[r].tolist() == codes


def test_kld_and_top1_match_scalar_port() -> None:
    rng = np.random.default_rng(1)
    base_logits = (rng.standard_normal((20, 200)) * 3).astype(np.float32)
    logits = base_logits + (rng.standard_normal((20, 200)) * 0.3).astype(np.float32)
    targets = rng.integers(0, 200, 20)
    base = quantize_log_probs(base_logits)
    acc = KLDAccumulator()
    acc.add(logits, base, targets)
    f32 = np.float32
    total_kld = 0.0
    same = 0
    for r in range(20):
        row = logits[r]
        mx = f32(row.max())
        lse = f32(math.log(sum(float(np.exp(f32(v - mx))) for v in row)))
        shifted = f32(mx + lse)
        kld = 0.0
        best, ibest = None, -1
        for i in range(200):
            p_log_base = f32(f32(base.scale[r] * f32(base.codes[r, i])) + base.min_log_prob[r])
            if best is None or p_log_base > best:
                best, ibest = p_log_base, i
            if p_log_base > f32(-16):
                kld += float(f32(np.exp(p_log_base)) * f32(f32(p_log_base - row[i]) + shifted))
        total_kld += kld
        same += int(np.argmax(row) == ibest)
    assert acc.count == 20
    assert acc.n_same_top == same
    assert acc.sum_kld == pytest.approx(total_kld, rel=1e-6)
    assert 0 < acc.summary()["kld_mean"] < 1


def test_nll_rows_is_minus_log_softmax() -> None:
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((5, 1000)) * 5).astype(np.float32)
    targets = rng.integers(0, 1000, 5)
    expected = [
        -(
            float(logits[r, t])
            - float(logits[r].max())
            - math.log(np.exp(logits[r].astype(np.float64) - logits[r].max()).sum())
        )
        for r, t in enumerate(targets)
    ]
    assert np.allclose(nll_rows(logits, targets), expected, rtol=1e-5)


def test_percentile_interpolates_like_perplexity_cpp() -> None:
    values = np.sort(np.array([0.0, 1.0, 2.0, 10.0], dtype=np.float32))
    assert _percentile(values, 0.99) == pytest.approx(0.03 * 2.0 + 0.97 * 10.0, rel=1e-5)
    assert _percentile(values, 0.5) == pytest.approx(1.5)


# ---- tiny random models against transformers ----------------------------------------------------------


def _tiny_checkpoint(arch: str, directory: Path) -> object:
    torch = require_module("torch", "make install-ref")
    transformers = require_module("transformers", "make install-ref")
    from tokenizers import Tokenizer, models

    torch.manual_seed(0)
    cfg_dict = transformers_config(arch)
    config = transformers.AutoConfig.for_model(**cfg_dict)
    config._attn_implementation = "eager"
    cls = getattr(transformers, cfg_dict["architectures"][0])
    model = cls(config).float().eval()
    with torch.no_grad():  # HF inits norms to 1 (or 0 for gemma): randomise them so the +1 / norms matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(cfg_dict["vocab_size"])}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({}))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TINY))
def test_tiny_model_matches_transformers(arch: str, tmp_path: Path) -> None:
    torch = require_module("torch", "make install-ref")
    ref = _tiny_checkpoint(arch, tmp_path)
    tokens = np.array([5, 17, 99, 3, 3, 64, 120, 8, 41, 77, 2, 90], dtype=np.int64)
    with torch.no_grad():
        expected = ref(torch.tensor(tokens)[None]).logits[0].numpy()
    model = Model(open_source(tmp_path), emulate_ggml=False)
    cache = model.new_cache(32)
    got = model.forward(tokens, cache, output_rows=np.arange(tokens.size))
    scale = float(np.abs(expected).max())
    assert np.abs(got - expected).max() <= 2e-4 * max(1.0, scale), arch
    # KV cache: the same sequence fed as 5 + 1 + 6 tokens gives the same last logits
    cache2 = model.new_cache(32)
    model.forward(tokens[:5], cache2)
    model.forward(tokens[5:6], cache2)
    tail = model.forward(tokens[6:], cache2, output_rows=np.arange(6))
    assert np.abs(tail - got[6:]).max() <= 1e-4 * max(1.0, scale)
    # eval's layer-major path over independent sequences gives `forward`'s numbers on each sequence, as
    # closely as the KV-cache split above: BLAS may sum a 12-row and a 24-row product of these tiny
    # matrices differently, and with the F16 emulation a last-bit difference can flip a rounding)
    seqs = np.stack([tokens, tokens[::-1]])
    rows = np.arange(3, tokens.size)
    for emulate in (False, True):
        m = Model(open_source(tmp_path), emulate_ggml=emulate)
        for seq, batched in zip(seqs, m.forward_sequences(seqs, rows), strict=True):
            single = m.forward(seq, m.new_cache(32), output_rows=rows)
            assert np.abs(batched - single).max() <= 1e-4 * max(1.0, scale), (arch, emulate)


def _vec_dot_reference(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The activation round trips written plainly (numerics.py's docstring), one pass per operation."""
    if qtype == GGMLQuantizationType.F16:
        return x.astype(np.float16).astype(np.float32)
    if qtype == GGMLQuantizationType.BF16:
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16).astype(np.float32)
    size = 32 if qtype == GGMLQuantizationType.Q8_0 else 256
    blocks = x.reshape(-1, size)
    with np.errstate(divide="ignore"):
        if size == 32:
            amax = np.abs(blocks).max(axis=1)
            d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
            inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
            q = np.rint(blocks * inv[:, None])
        else:
            signed = blocks[np.arange(blocks.shape[0]), np.abs(blocks).argmax(axis=1)]
            iscale = np.where(signed != 0, np.float32(-127) / signed, np.float32(0)).astype(np.float32)
            d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
            q = np.minimum(np.float32(127), np.rint(iscale[:, None] * blocks))
    return (q * d[:, None]).astype(np.float32).reshape(x.shape)


@pytest.mark.parametrize("native", [True, False], ids=["C", "NumPy"])
@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_K"])
def test_activation_round_trips_are_bit_exact(qtype: str, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C round trips and the NumPy in-place slab versions (bit tricks for F16) equal the plain formulation
    bit for bit: normal values, float16 subnormals and overflow, zeros, ties, largest magnitudes of both
    signs in one block, and arbitrary float32 bit patterns."""
    if native:
        require_native()
    else:
        monkeypatch.setenv("QUANTCLI_NATIVE", "0")
    t = GGMLQuantizationType[qtype]
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 1536)) * 3).astype(np.float32)
    x[0] = 0
    x[1, :300] = 0
    x[2] *= np.float32(1e-6)  # float16 subnormals
    x[3] *= np.float32(1e5)  # float16 overflow
    x[4] = np.float32(1 + 2.0**-11) * rng.integers(1, 64, 1536)  # ties at the float16 rounding bit
    x[5] = rng.integers(0, 2**32, 1536, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x[5][~np.isfinite(x[5])] = 1.0
    x[6] = np.float32(0.25)
    x[6, 3::32] = np.float32(-2.5)  # largest magnitudes of both signs in a block (Q8_K's signed maximum)
    x[6, 7::32] = np.float32(2.5)
    x[7] = np.float32(2.5)
    x[7, 7::32] = np.float32(-2.5)
    x[8] = np.float32(1 + 2.0**-8) * rng.integers(1, 64, 1536)  # ties at the bfloat16 rounding bit
    x[9] = rng.integers(-126, 126, 1536) + np.float32(0.5)  # ties at the int8 rounding: every block's scale
    x[9, ::32] = np.float32(127)  # is exactly 1 (Q8_0) or -1 (Q8_K)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = _vec_dot_reference(x, t)
        before = x.copy()
        got = vec_dot_round_trip(x, t)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(x.view(np.uint32), before.view(np.uint32)), "the input must not change"
    inplace = x.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        assert vec_dot_round_trip_(inplace, t) is inplace
    assert np.array_equal(inplace.view(np.uint32), expected.view(np.uint32))
    if t == GGMLQuantizationType.F16:
        every = np.sort(np.arange(2**15, dtype=np.uint16).view(np.float16).astype(np.float32))
        every = every[np.isfinite(every)]
        ties = ((every[:-1].astype(np.float64) + every[1:]) / 2).astype(np.float32)  # exact midpoints
        near = [np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(0))]
        for probe in (every, ties, -ties, *near, np.float32([65504, 65519.99, 65520, 1e9])):
            with np.errstate(over="ignore"):
                ref = probe.astype(np.float16).astype(np.float32)
            assert np.array_equal(vec_dot_round_trip(probe, t).view(np.uint32), ref.view(np.uint32))


def test_runtime_traits_come_from_arch_tables() -> None:
    """The traits are read from quantcli.arch; they must say what llama.cpp hard-codes per architecture
    (llama_model_rope_type: llama NORM, the others NEOX; gemma3's GeGLU, sqrt(n_embd) embedding scale and
    5-local-1-global sliding window)."""
    from quantcli.errors import Unsupported
    from quantcli.runtime.config import ArchTraits, arch_traits

    assert arch_traits("llama") == ArchTraits(rope_neox=False, expert_weights_norm=True)  # Mixtral renormalises
    for arch in ("qwen2", "qwen3", "phi3", "olmoe", "qwen2moe"):
        assert arch_traits(arch) == ArchTraits(rope_neox=True), arch
    assert arch_traits("qwen3moe") == ArchTraits(rope_neox=True, expert_weights_norm=True)
    assert arch_traits("gemma3") == ArchTraits(rope_neox=True, activation="gelu", embed_scale_sqrt_n_embd=True,
                                               swa_pattern_default=6, attn_scale_n_embd_layers=62)
    assert arch_traits("gemma2") == ArchTraits(rope_neox=True, activation="gelu", embed_scale_sqrt_n_embd=True,
                                               swa_pattern_default=2, swa_rope_base_is_main=True,
                                               attn_scale_n_embd_layers=46)
    assert arch_traits("granite") == ArchTraits(rope_neox=False)  # its multipliers are GGUF keys
    assert arch_traits("olmo2") == ArchTraits(rope_neox=True, pre_norms=False)
    assert arch_traits("smollm3") == ArchTraits(rope_neox=False, no_rope_layer_step=4)
    assert arch_traits("gpt-oss") == ArchTraits(  # src/models/openai-moe.cpp
        rope_neox=True, swa_pattern_default=2, swa_rope_base_is_main=True, swa_rope_scale_is_main=True,
        yarn_rope=True, ffn_norm="post_attention_norm", expert_gating="softmax_weight", expert_glu="swiglu_oai",
    )
    with pytest.raises(
        Unsupported,
        match=r"'mistral'.*supported: gemma2, gemma3, gpt-oss, granite, llama, olmo2, olmoe, phi3, qwen2, qwen2moe, qwen3, qwen3moe, smollm3",
    ):
        arch_traits("mistral")  # not a GGUF architecture: llama.cpp converts Mistral checkpoints to llama


def test_unsupported_gguf_tokenizer_fails_clearly() -> None:
    from quantcli.errors import Unsupported
    from quantcli.runtime.tokenizer import from_gguf_metadata

    with pytest.raises(Unsupported, match="pre-tokenizer 'deepseek-llm'"):
        from_gguf_metadata(
            {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": ["a"],
                "tokenizer.ggml.pre": "deepseek-llm",
            }
        )
    with pytest.raises(Unsupported, match="tokenizer model 'bert'"):
        from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})


def test_spm_tokenizer_rebuilt_from_gguf_metadata() -> None:
    from quantcli.runtime.tokenizer import from_gguf_metadata

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = [
        "▁",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "he",
        "ll",
        "llo",
        "▁he",
        "▁hello",
        "▁w",
        "or",
        "▁wor",
        "ld",
        "▁world",
    ]
    scores = [0.0] * len(pieces) + [-float(i) for i in range(len(words))]
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces + words,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types + [1] * len(words),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    tok = from_gguf_metadata(md)
    ids = tok.encode("hello world")
    assert ids[0] == 1  # SPM vocabularies add BOS by default
    assert [md["tokenizer.ggml.tokens"][i] for i in ids[1:]] == ["▁hello", "▁world"]
    # pieces joined as llama.cpp's token_to_piece renders them: the prefix space stays (llama-simple prints it)
    assert tok.decode(ids[1:]) == " hello world"
    # bytes not in the vocabulary fall back to <0xXX> tokens
    assert md["tokenizer.ggml.tokens"][tok.encode("€", add_special=False)[-1]].startswith("<0x")


# ---- rope scaling: llama.cpp's factor choice and ggml's float32 cos/sin tables -----------------------------


class _MemorySource:
    """A one-layer phi3 model in memory (zeros; only the metadata and rope factors matter here)."""

    description = "memory"

    def __init__(self, metadata: dict, extra: dict[str, np.ndarray]) -> None:
        self.metadata = {
            "general.architecture": "phi3", "phi3.block_count": 1, "phi3.embedding_length": 32,
            "phi3.feed_forward_length": 64, "phi3.attention.head_count": 2, "phi3.rope.dimension_count": 16,
            **metadata,
        }
        self.tensors = {
            "token_embd.weight": np.zeros((8, 32)), "output_norm.weight": np.ones(32),
            "blk.0.attn_norm.weight": np.ones(32), "blk.0.ffn_norm.weight": np.ones(32),
            "blk.0.attn_qkv.weight": np.zeros((96, 32)), "blk.0.attn_output.weight": np.zeros((32, 32)),
            "blk.0.ffn_up.weight": np.zeros((128, 32)), "blk.0.ffn_down.weight": np.zeros((32, 64)),
            **extra,
        }

    def names(self):
        return self.tensors.keys()

    def load(self, name: str) -> np.ndarray:
        return self.tensors[name].astype(np.float32)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def tensor_type(self, name: str):
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType.F32


_LONG = (1.0 + 0.37 * np.arange(8)).astype(np.float32)
_SHORT = (1.0 + 0.05 * np.arange(8)).astype(np.float32)


def _ggml_rope_cache(p: int, base: float, n_dims: int, freq_scale: float, ff: np.ndarray | None, mscale: float):
    """ggml_rope_cache_init + rope_yarn (ext_factor 0) of ggml-cpu/ops.cpp, scalar, in float32."""
    f32 = np.float32
    theta_scale = f32(np.float64(f32(base)) ** np.float64(f32(-2.0) / f32(n_dims)))
    theta = f32(p)
    cos, sin = [], []
    for i0 in range(0, n_dims, 2):
        factor = f32(ff[i0 // 2]) if ff is not None else f32(1.0)
        theta_interp = f32(f32(freq_scale) * f32(theta / factor))
        cos.append(f32(f32(math.cos(theta_interp)) * f32(mscale)))
        sin.append(f32(f32(math.sin(theta_interp)) * f32(mscale)))
        theta = f32(theta * theta_scale)
    return np.array(cos), np.array(sin)


@pytest.mark.parametrize(
    ("orig", "n_ctx", "expected"),
    [(256, 1, "short"), (256, 256, "short"), (256, 257, "long"), (8, 1, "long"), (512, 300, "short")],
)
def test_phi3_rope_factor_choice_pads_context_like_llama_cpp(orig: int, n_ctx: int, expected: str) -> None:
    """llama_model::get_rope_factors picks the long factors iff n_ctx_seq > n_ctx_orig_yarn, and
    llama_context pads n_ctx_seq up to a multiple of 256."""
    source = _MemorySource(
        {"phi3.context_length": 4 * orig, "phi3.rope.scaling.original_context_length": orig},
        {"rope_factors_long.weight": _LONG, "rope_factors_short.weight": _SHORT},
    )
    chosen = Model(source)._rope_factors(n_ctx)
    np.testing.assert_array_equal(chosen, _LONG if expected == "long" else _SHORT)


def test_rope_tables_are_ggml_float32_with_attn_factor() -> None:
    attn = 1.632993161855452
    source = _MemorySource(
        {"phi3.context_length": 256, "phi3.rope.scaling.original_context_length": 8,
         "phi3.rope.scaling.attn_factor": attn, "phi3.rope.freq_base": 10000.0},
        {"rope_factors_long.weight": _LONG, "rope_factors_short.weight": _SHORT},
    )
    model = Model(source)
    positions = np.array([0, 1, 7, 100, 4095, 131071])
    cos, sin = model._rope_tables(positions, 10000.0, 1.0, model._rope_factors(128))
    for row, p in enumerate(positions):
        ref_cos, ref_sin = _ggml_rope_cache(int(p), 10000.0, 16, 1.0, _LONG, attn)
        np.testing.assert_array_equal(cos[row, 0], ref_cos)
        np.testing.assert_array_equal(sin[row, 0], ref_sin)
    # linear scaling without factors: freq_scale = 1.0f / factor
    cos, sin = model._rope_tables(positions, 500000.0, 1.0 / 8.0, None)
    ref_cos, ref_sin = _ggml_rope_cache(4095, 500000.0, 16, 0.125, None, attn)
    np.testing.assert_array_equal(cos[4, 0], ref_cos)
    np.testing.assert_array_equal(sin[4, 0], ref_sin)


def test_rope_scaling_the_runtime_does_not_compute_is_refused() -> None:
    from quantcli.errors import InputInvalid, Unsupported

    for scaling in ({"phi3.rope.scaling.type": "yarn", "phi3.rope.scaling.factor": 4.0},
                    {"phi3.rope.scaling.type": "longrope"}):
        with pytest.raises(Unsupported, match="rope scaling .* is not implemented in the runtime"):
            Model(_MemorySource({"phi3.context_length": 256, **scaling}, {}))
    with pytest.raises(InputInvalid, match=r"rope_factors_long.weight has shape \(7,\).*implies \(8,\)"):
        Model(_MemorySource({"phi3.context_length": 256}, {"rope_factors_long.weight": _LONG[:7]}))
    with pytest.raises(InputInvalid, match="rope_factors_long needs phi3.context_length"):
        Model(_MemorySource({}, {"rope_factors_long.weight": _LONG}))
    # type "none" never scales, whatever the factor (llama_context); "linear" divides the angle by it
    none = Model(_MemorySource({"phi3.rope.scaling.type": "none", "phi3.rope.scaling.factor": 4.0}, {}))
    linear = Model(_MemorySource({"phi3.rope.scaling.factor": 4.0}, {}))
    assert (none.config.rope_freq_scale, linear.config.rope_freq_scale) == (1.0, 0.25)


@pytest.mark.parametrize(("window", "first_position"), [(0, 0), (50, 0), (0, 100), (30, 100)])
def test_plain_attention_reads_only_the_keys_a_query_block_can_see(window: int, first_position: int) -> None:
    """Without ggml emulation, attention takes 64-query blocks against the keys their causal (and sliding)
    window reaches; the result is the full-row computation's up to summation order."""
    from types import SimpleNamespace

    config = SimpleNamespace(n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=16, attn_scale=0.25,
                             attn_logit_softcap=0.0)  # fmt: skip
    rng = np.random.default_rng(3)
    n_tok, n_kv = 150, first_position + 150
    q = rng.standard_normal((n_tok, 4, 16)).astype(np.float32)
    keys = rng.standard_normal((2, n_kv, 16)).astype(np.float32)
    values = rng.standard_normal((2, n_kv, 16)).astype(np.float32)
    positions = np.arange(first_position, n_kv)
    results = []
    for emulate in (True, False):  # True: every block spans all keys, masked ones included
        model = Model.__new__(Model)
        model.config, model.emulate_ggml = config, emulate
        results.append(model._attention(q, keys, values, positions, window))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def _faults_of_second_allocation(nbytes: int) -> int:
    """Minor page faults of filling an array of `nbytes` right after one of the same size was freed."""
    import resource

    first = np.ones(nbytes, np.uint8)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = np.ones(nbytes, np.uint8)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_reused_heap_serves_a_freed_array_without_page_faults() -> None:
    """In a forward pass (calibration, eval) an activation-sized array freed by one block run is reused by the
    next without the kernel faulting and zeroing its pages again; outside, glibc's default maps it fresh."""
    nbytes = 64 << 20  # 16 384 pages of 4 KB
    previous = madvise_hugepage(False)  # 4 KB pages both times, as activation_memory() has it
    try:
        assert _faults_of_second_allocation(nbytes) > 15_000
        with reused_heap():
            assert _faults_of_second_allocation(nbytes) < 1_000
        assert _faults_of_second_allocation(nbytes) > 15_000  # glibc's defaults are back
    finally:
        madvise_hugepage(previous)
