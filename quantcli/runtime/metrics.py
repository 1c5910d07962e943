"""Perplexity and KL-divergence exactly as llama-perplexity computes them (tools/perplexity/perplexity.cpp).

Per scored position: softmax sums in double of float expf values; KLD against the uint16-quantized base
log-probabilities (what `--kl-divergence-base` stores), so numbers are comparable to llama-perplexity's.
All functions are vectorised over the scored rows of a chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _max_and_log_sum_exp(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row max (float32) and log(Σ expf(l − max)) summed in double (float64)."""
    mx = logits.max(axis=1).astype(np.float32)
    e = np.exp(logits - mx[:, None])  # float32 expf
    return mx, np.log(e.sum(axis=1, dtype=np.float64))


def nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """−log p(target) per row, as perplexity.cpp's log_softmax(n_vocab, logits, tok) (double)."""
    mx, lse = _max_and_log_sum_exp(logits)
    tok_logit = logits[np.arange(len(targets)), targets].astype(np.float32)
    return -((tok_logit - mx).astype(np.float64) - lse)


@dataclass
class QuantizedLogProbs:
    """The base run's log-probs per scored position, uint16-coded like a --kl-divergence-base file."""

    scale: np.ndarray  # float32 (rows,)
    min_log_prob: np.ndarray  # float32 (rows,)
    codes: np.ndarray  # uint16 (rows, n_vocab)

    def log_probs(self) -> np.ndarray:
        return self.scale[:, None] * self.codes.astype(np.float32) + self.min_log_prob[:, None]


def quantize_log_probs(logits: np.ndarray) -> QuantizedLogProbs:
    mx = logits.max(axis=1).astype(np.float32)
    mn = np.maximum(logits.min(axis=1).astype(np.float32), mx - np.float32(16))
    e = np.exp(logits - mx[:, None])
    log_sum_exp = np.log(e.sum(axis=1, dtype=np.float64)).astype(np.float32)
    min_log_prob = (mn - mx) - log_sum_exp
    scale = (mx - mn) / np.float32(65535)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    scaled = inv_scale[:, None] * (logits - mn[:, None])
    # nearest_int: round half to even in float32; codes are 0 where logit <= min
    codes = np.where(logits > mn[:, None], np.rint(scaled), 0).astype(np.uint16)
    codes[scale == 0] = 0
    return QuantizedLogProbs(scale.astype(np.float32), min_log_prob.astype(np.float32), codes)


@dataclass
class KLDAccumulator:
    """kl_divergence_result of perplexity.cpp plus the per-token values used for percentiles."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add(self, logits: np.ndarray, base: QuantizedLogProbs, targets: np.ndarray) -> None:
        # Row blocks bound the float32 temporaries (rows x n_vocab each) for 256k-token vocabularies.
        step = max(1, (1 << 24) // max(1, logits.shape[1]))
        for r0 in range(0, len(targets), step):
            r1 = min(len(targets), r0 + step)
            part = QuantizedLogProbs(base.scale[r0:r1], base.min_log_prob[r0:r1], base.codes[r0:r1])
            self._add_rows(logits[r0:r1], part, targets[r0:r1])

    def _add_rows(self, logits: np.ndarray, base: QuantizedLogProbs, targets: np.ndarray) -> None:
        rows = np.arange(len(targets))
        mx = logits.max(axis=1).astype(np.float32)
        imax = logits.argmax(axis=1)
        e = np.exp(logits - mx[:, None])
        log_sum_exp = np.log(e.sum(axis=1, dtype=np.float64)).astype(np.float32)
        nll = (mx + log_sum_exp) - logits[rows, targets]  # float
        base_lp = base.log_probs()  # float32 (rows, n_vocab)
        nll_base = -(base_lp[rows, targets])
        shifted = mx + log_sum_exp
        keep = base_lp > np.float32(-16)
        terms = np.exp(base_lp) * (base_lp - logits + shifted[:, None])
        kld = np.where(keep, terms, np.float32(0)).astype(np.float64).sum(axis=1)
        imax_base = base_lp.argmax(axis=1)
        p_diff = np.exp(-nll) - np.exp(-nll_base)  # float32
        nll64, nllb64, pd64 = nll.astype(np.float64), nll_base.astype(np.float64), p_diff.astype(np.float64)
        self.sum_nll += float(nll64.sum())
        self.sum_nll2 += float((nll * nll).astype(np.float64).sum())
        self.sum_nll_base += float(nllb64.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).astype(np.float64).sum())
        self.sum_nll_nll_base += float((nll * nll_base).astype(np.float64).sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_p_diff += float(pd64.sum())
        self.sum_p_diff2 += float((pd64 * pd64).sum())
        self.sum_p_diff4 += float((pd64**4).sum())
        self.n_same_top += int((imax == imax_base).sum())
        self.count += len(targets)
        self.kld_values.append(kld.astype(np.float32))
        self.p_diff_values.append(p_diff.astype(np.float32))

    def summary(self) -> dict[str, float]:
        n = self.count
        kld = np.sort(np.concatenate(self.kld_values)) if self.kld_values else np.zeros(0, np.float32)
        log_ppl, log_ppl_unc = _mean_and_uncertainty(self.sum_nll, self.sum_nll2, n)
        log_base, log_base_unc = _mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n)
        cov = _covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n)
        kld_mean, kld_unc = _mean_and_uncertainty(self.sum_kld, self.sum_kld2, n)
        dp_mse, _ = _mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n)
        top = self.n_same_top / n if n else 0.0
        ratio_unc2 = log_ppl_unc**2 + log_base_unc**2 - 2.0 * cov
        return {
            "ppl": math.exp(log_ppl),
            "ppl_base": math.exp(log_base),
            "ln_ppl_ratio": log_ppl - log_base,
            "ln_ppl_ratio_uncertainty": math.sqrt(ratio_unc2) if ratio_unc2 > 0 else 0.0,
            "ppl_ratio": math.exp(log_ppl - log_base),
            "kld_mean": kld_mean,
            "kld_uncertainty": kld_unc,
            "kld_median": _median(kld),
            "kld_p99": _percentile(kld, 0.99),
            "kld_p999": _percentile(kld, 0.999),
            "kld_max": float(kld[-1]) if kld.size else 0.0,
            "same_top": top,
            "same_top_uncertainty": math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
            "rms_dp": math.sqrt(dp_mse),
            "tokens": n,
        }


def _mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    return mean, math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0


def _covariance(a: float, b: float, ab: float, count: int) -> float:
    if count < 10:
        return 0.0
    return (ab / count - (a / count) * (b / count)) / (count - 1)


def _median(values: np.ndarray) -> float:
    n = values.size
    if n == 0:
        return 0.0
    if n % 2 == 0:
        return float(np.float32(0.5) * (values[n // 2] + values[n // 2 - 1]))
    return float(values[n // 2])


def _percentile(values: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile lambda: linear interpolation in float on the sorted values."""
    if values.size == 0:
        return 0.0
    p = np.float32(fraction) * np.float32(values.size - 1)
    ip = int(p)
    p = np.float32(p - np.float32(ip))
    hi = values[min(ip + 1, values.size - 1)]
    return float((np.float32(1) - p) * values[ip] + p * hi)


class NllTotals:
    """Running sums of per-token NLL and NLL² over chunks (what llama-perplexity and llama-imatrix keep)."""

    def __init__(self) -> None:
        self.nll_sum = 0.0
        self.nll2_sum = 0.0
        self.count = 0

    def add(self, nll: np.ndarray) -> None:
        self.nll_sum += float(nll.sum())
        self.nll2_sum += float((nll * nll).sum())
        self.count += nll.size

    def running_ppl(self) -> float:
        return float(np.exp(self.nll_sum / self.count))

    def summary(self) -> tuple[float, float]:
        """PPL and its ± (see ppl_summary)."""
        return ppl_summary(self.nll_sum, self.nll2_sum, self.count)


def ppl_summary(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    """Final estimate of perplexity(): PPL and its ± (0 when the variance is not positive)."""
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    return ppl, (math.sqrt(var / (count - 1)) * ppl if var > 0 else 0.0)
