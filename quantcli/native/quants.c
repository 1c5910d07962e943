/*
 * quantcli native quantizers: byte-identical to ggml_quantize_chunk (llama.cpp, ggml/src/ggml-quants.c).
 *
 * Written from docs spec llamacpp-quants.md with ggml-quants.c (MIT, the ggml authors) as the authority for
 * every float operation. Exactness rules followed throughout:
 *   - every float op is binary32, in the same order and association as ggml (build with -ffp-contract=off,
 *     never -ffast-math, so no FMA and no reassociation);
 *   - sums are sequential in index order;
 *   - comparisons are strict exactly where ggml's are, first index wins ties;
 *   - fp16 conversion is the portable round-to-nearest-even routine ggml uses.
 * Dispatch follows llama-quantize (spec 3.2): without an imatrix the k-quants and Q4_0..Q5_1 use the `_ref`
 * functions, with one the per-row `_impl`; IQ4_NL/IQ4_XS always use ntry=7; Q8_0, TQ*, MXFP4 ignore it.
 *
 * Speed: the k-quant reference searches (make_qkx2_quants, make_qx_quants) are latency bound in ggml (one
 * long chain of dependent float adds per candidate). quants_simd.h runs QC_LANES sub-blocks side by side,
 * one sub-block per SIMD lane, so each lane performs exactly the scalar sequence of operations.
 *
 * Entry point: qc_quantize(type, src, src_type, dst, nrows, n_per_row, imatrix, nthreads). Rows are split
 * between pthreads; every quantizer is row-local, so the bytes never depend on the thread count. The source
 * rows may be F32, F16 or BF16: each row is widened to float32 (exactly, as ggml's to_float does) in a
 * per-thread buffer just before it is quantized, so an F16 GGUF never needs a float32 copy of a tensor.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QC_ABI_VERSION 4

#define QK_K 256
#define GROUP_MAX_EPS 1e-15f
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* ggml type ids (ggml.h) */
enum {
    T_F16 = 1, T_BF16 = 30,
    T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15,
    T_IQ4_NL = 20, T_IQ4_XS = 23, T_TQ1_0 = 34, T_TQ2_0 = 35, T_MXFP4 = 39,
};

typedef uint16_t half;

typedef struct { half d; uint8_t qs[16]; } block_q4_0;
typedef struct { half d; half m; uint8_t qs[16]; } block_q4_1;
typedef struct { half d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;
typedef struct { half d; half m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1;
typedef struct { half d; int8_t qs[32]; } block_q8_0;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; half d; half dmin; } block_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; half d; } block_q3_K;
typedef struct { half d; half dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;
typedef struct { half d; half dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } block_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; half d; } block_q6_K;
typedef struct { half d; uint8_t qs[16]; } block_iq4_nl;
typedef struct { half d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } block_iq4_xs;
typedef struct { uint8_t qs[48]; uint8_t qh[4]; half d; } block_tq1_0;
typedef struct { uint8_t qs[64]; half d; } block_tq2_0;
typedef struct { uint8_t e; uint8_t qs[16]; } block_mxfp4;

_Static_assert(sizeof(block_q2_K) == 84, "q2_K");
_Static_assert(sizeof(block_q3_K) == 110, "q3_K");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(block_iq4_xs) == 136, "iq4_xs");
_Static_assert(sizeof(block_tq1_0) == 54, "tq1_0");
_Static_assert(sizeof(block_tq2_0) == 66, "tq2_0");
_Static_assert(sizeof(block_mxfp4) == 17, "mxfp4");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0");

static const int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const int8_t kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ---------------------------------------------------------------- fp16 (ggml-impl.h, Maratyszcza/FP16) */

static inline float f32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t f32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

static inline float fp16_to_fp32(half h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = UINT32_C(0xE0) << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized_value = f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = UINT32_C(126) << 23;
    const float magic_bias = 0.5f;
    const float denormalized_value = f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
    const uint32_t result =
        sign | (two_w < denormalized_cutoff ? f32_to_bits(denormalized_value) : f32_to_bits(normalized_value));
    return f32_from_bits(result);
}

static inline half fp32_to_fp16(float f) {
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = f32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & UINT32_C(0x80000000);
    uint32_t bias = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);
    base = f32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits = f32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (half)((sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT16_C(0x7E00) : nonsign));
}

static inline float e8m0_to_fp32_half(uint8_t x) {
    uint32_t bits = x < 2 ? (UINT32_C(0x00200000) << x) : ((uint32_t)(x - 1) << 23);
    return f32_from_bits(bits);
}

/* ---------------------------------------------------------------- rounding helpers */

/* round-half-even via the 1.5*2^23 trick; exact copy of ggml's nearest_int (no range assert in release) */
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static inline int best_index_int8(int n, const int8_t *val, float x) {
    if (x <= val[0]) return 0;
    if (x >= val[n - 1]) return n - 1;
    int ml = 0, mu = n - 1;
    while (mu - ml > 1) {
        int mav = (ml + mu) / 2;
        if (x < val[mav]) mu = mav; else ml = mav;
    }
    return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
}

/* ---------------------------------------------------------------- search helpers (scalar, ggml order) */

static float make_qx_quants(int n, int nmax, const float *restrict x, int8_t *restrict L, int rmse_type,
                            const float *restrict qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            L[i] = nmax + MAX(-nmax, MIN(nmax - 1, l));
        }
        return 1 / iscale;
    }
    /* only rmse_type 1 is reachable from llama-quantize (with or without qw) */
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax - 1, l));
        L[i] = l + nmax;
        float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax - 1, l));
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = nmax + MAX(-nmax, MIN(nmax - 1, l));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

static float make_qp_quants(int n, int nmax, const float *restrict x, uint8_t *restrict L,
                            const float *restrict quant_weights) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = MAX(max, x[i]);
    if (max < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = nearest_int(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        float w = quant_weights[i];
        best_mse += w * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale_is * x[i]);
            l = MIN(nmax, l);
            float diff = x[i] - scale_is * l;
            float w = quant_weights[i];
            mse += w * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MIN(nmax, l);
        L[i] = l;
        float w = quant_weights[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = quant_weights[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = nearest_int(x[i] * sl2 / slx);
                new_l = MIN(nmax, new_l);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

#include "quants_simd.h"

/* ---------------------------------------------------------------- 32-element block types */

/* The 32-element reference quantizers work inside one block with 8-wide vectors: max/min are exact in any
   order, the index ggml's strict scan would keep is found afterwards, and the per-element arithmetic is the
   same binary32 sequence (x*id, then + 8.5f, then truncation). */

/* max |x| of a 32-block (exact: max does not round) */
static inline __attribute__((always_inline)) v8f vmax(v8f a, v8f b) { return vsel(a > b, a, b); }
static inline __attribute__((always_inline)) v8f vmin(v8f a, v8f b) { return vsel(a < b, a, b); }

/* lane 0 of the result: max (min) over the 8 lanes, by shuffles */
static inline __attribute__((always_inline)) float hmax(v8f m) {
    m = vmax(m, QC_SHUF8(m, 4, 5, 6, 7, 0, 1, 2, 3));
    m = vmax(m, QC_SHUF8(m, 2, 3, 0, 1, 6, 7, 4, 5));
    m = vmax(m, QC_SHUF8(m, 1, 0, 3, 2, 5, 4, 7, 6));
    return m[0];
}
static inline __attribute__((always_inline)) float hmin(v8f m) {
    m = vmin(m, QC_SHUF8(m, 4, 5, 6, 7, 0, 1, 2, 3));
    m = vmin(m, QC_SHUF8(m, 2, 3, 0, 1, 6, 7, 4, 5));
    m = vmin(m, QC_SHUF8(m, 1, 0, 3, 2, 5, 4, 7, 6));
    return m[0];
}

static inline __attribute__((always_inline)) float block32_amax(const v8f *v) {
    return hmax(vmax(vmax(vabs(v[0]), vabs(v[1])), vmax(vabs(v[2]), vabs(v[3]))));
}

/* the signed value ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` scan ends with */
static inline __attribute__((always_inline)) int any_set(v8i m) {
    uint64_t u[4];
    memcpy(u, &m, sizeof u);
    return (u[0] | u[1] | u[2] | u[3]) != 0;
}

/* Only +amax and -amax can be kept; when just one of them occurs no scan is needed. */
static inline __attribute__((always_inline)) float block32_signed_max(const float *xb, const v8f *v, float amax) {
    if (amax == 0.0f) return 0.0f; /* never updated: the initial +0.0f */
    const v8f pos = vsplat(amax), neg = vsplat(-amax);
    v8i has_pos = (v[0] == pos) | (v[1] == pos) | (v[2] == pos) | (v[3] == pos);
    v8i has_neg = (v[0] == neg) | (v[1] == neg) | (v[2] == neg) | (v[3] == neg);
    if (!any_set(has_neg)) return amax;
    if (!any_set(has_pos)) return -amax;
    int j = 0;
    while (fabsf(xb[j]) != amax) ++j;
    return xb[j];
}

/* min and max as ggml's `if (v < min) min = v; if (v > max) max = v;` scan finds them, signed zeros included */
static inline __attribute__((always_inline)) void block32_min_max(const float *xb, const v8f *v, float *min_out,
                                                                   float *max_out) {
    float min = hmin(vmin(vmin(v[0], v[1]), vmin(v[2], v[3])));
    float max = hmax(vmax(vmax(v[0], v[1]), vmax(v[2], v[3])));
    if (min == 0.0f || max == 0.0f) { /* +0.0 and -0.0 compare equal: the first one in index order wins */
        min = FLT_MAX;
        max = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
    }
    *min_out = min;
    *max_out = max;
}

static inline __attribute__((always_inline)) void load32(const float *xb, v8f *v) {
    for (int k = 0; k < 4; ++k) v[k] = vloadu(xb + 8 * k);
}

typedef uint8_t v32u8 __attribute__((vector_size(32)));

/* low bytes of the 16 int lanes of b0, b1 -> dst[0..15] (the int -> uint8_t stores of the C code) */
static inline __attribute__((always_inline)) void pack16(uint8_t *dst, v8i b0, v8i b1) {
    v32u8 r = QC_SHUF2((v32u8)b0, (v32u8)b1, v32u8, 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 0,
                       0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    memcpy(dst, &r, 16);
}

/* C's (int8_t) conversion of a float already truncated to int: keep the low byte, sign-extended */
static inline __attribute__((always_inline)) v8i as_int8(v8i t) { return (t << 24) >> 24; }

/* MIN(hi, (int8_t)(v)) for v = float lanes: truncation, int8 wrap, then the min, as ggml's scalar code */
static inline __attribute__((always_inline)) v8i q_trunc_min(v8f v, int hi) {
    v8i t = as_int8(__builtin_convertvector(v, v8i));
    return isel(t > isplat(hi), isplat(hi), t);
}

/* C roundf (half away from zero) then the float -> int conversion, lane-wise. For |v| < 2^23 v - trunc(v)
   is exact; from 2^23 on v is already an integer and the truncating conversion alone gives (int)roundf(v),
   including the x86 "integer indefinite" INT_MIN for |v| >= 2^31 and inf/NaN, which ggml's build also gets. */
static inline __attribute__((always_inline)) v8i vroundf_int(v8f v) {
    v8i t = __builtin_convertvector(v, v8i);
    v8f f = v - vtof(t);
    v8i small = vabs(v) < vsplat(8388608.f);
    return t - ((f >= vsplat(0.5f)) & small) + ((f <= vsplat(-0.5f)) & small);
}

/* The k-quants' final pass for 16 elements: L = clamp(nearest_int((x + dm) / d), lo, hi) + bias, 8 lanes at a
   time (a true division, as ggml). With_dm = 0 computes x / d (no + 0.0f, which could flip a zero's sign). */
static inline __attribute__((always_inline)) void requant16(const float *restrict x, float d, float dm, int with_dm,
                                                            int lo, int hi, int bias, uint8_t *restrict L) {
    const v8f vd = vsplat(d), vdm = vsplat(dm);
    const v8i vlo = isplat(lo), vhi = isplat(hi), vb = isplat(bias);
    v8i r[2];
    for (int h = 0; h < 2; ++h) {
        v8f v = vloadu(x + 8 * h);
        if (with_dm) v = v + vdm;
        r[h] = iclamp(vnearest(v / vd), vlo, vhi) + vb;
    }
    pack16(L, r[0], r[1]);
}

QC_CLONES
static void q8_0_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    (void)qw;
    block_q8_0 *y = vy;
    v8f v[4];
    for (int64_t i = 0; i < n / 32; i++) {
        load32(x + 32 * i, v);
        const float amax = block32_amax(v);
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        const v8f vid = vsplat(id);
        pack16((uint8_t *)y[i].qs, vroundf_int(v[0] * vid), vroundf_int(v[1] * vid));
        pack16((uint8_t *)y[i].qs + 16, vroundf_int(v[2] * vid), vroundf_int(v[3] * vid));
    }
}

QC_CLONES
static void q4_0_ref(const float *restrict x, block_q4_0 *restrict y, int64_t n) {
    v8f v[4];
    for (int64_t i = 0; i < n / 32; i++) {
        const float *xb = x + 32 * i;
        load32(xb, v);
        const float max = block32_signed_max(xb, v, block32_amax(v));
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        const v8f vid = vsplat(id), c = vsplat(8.5f);
        v8i t[4];
        for (int k = 0; k < 4; ++k) t[k] = q_trunc_min(v[k] * vid + c, 15) & isplat(0xFF);
        pack16(y[i].qs, t[0] | (t[2] << 4), t[1] | (t[3] << 4));
    }
}

QC_CLONES
static void q4_1_ref(const float *restrict x, block_q4_1 *restrict y, int64_t n) {
    v8f v[4];
    for (int64_t i = 0; i < n / 32; i++) {
        const float *xb = x + 32 * i;
        load32(xb, v);
        float min, max;
        block32_min_max(xb, v, &min, &max);
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        const v8f vid = vsplat(id), vmin = vsplat(min), c = vsplat(0.5f);
        v8i t[4];
        for (int k = 0; k < 4; ++k) t[k] = q_trunc_min((v[k] - vmin) * vid + c, 15) & isplat(0xFF);
        pack16(y[i].qs, t[0] | (t[2] << 4), t[1] | (t[3] << 4));
    }
}

QC_CLONES
static void q5_0_ref(const float *restrict x, block_q5_0 *restrict y, int64_t n) {
    v8f v[4];
    for (int64_t i = 0; i < n / 32; i++) {
        const float *xb = x + 32 * i;
        load32(xb, v);
        const float max = block32_signed_max(xb, v, block32_amax(v));
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            const float x0 = xb[j] * id;
            const float x1 = xb[16 + j] * id;
            const uint8_t xi0 = MIN(31, (int8_t)(x0 + 16.5f));
            const uint8_t xi1 = MIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

QC_CLONES
static void q5_1_ref(const float *restrict x, block_q5_1 *restrict y, int64_t n) {
    v8f v[4];
    for (int64_t i = 0; i < n / 32; i++) {
        const float *xb = x + 32 * i;
        load32(xb, v);
        float min, max;
        block32_min_max(xb, v, &min, &max);
        const float d = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            const float x0 = (xb[j] - min) * id;
            const float x1 = (xb[16 + j] - min) * id;
            const uint8_t xi0 = (uint8_t)(x0 + 0.5f);
            const uint8_t xi1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

/* sigma2 over the whole row, sequential (Q4_0/Q4_1/Q5_0/Q5_1 with imatrix) */
static float row_sigma2(const float *x, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

/* Q4_0/Q4_1/Q5_0/Q5_1 with imatrix: per-32-block searches with weights qw*sqrt(sigma2 + x^2), run 8 blocks
   at a time in SIMD lanes (a short last group is padded with all-zero blocks whose results are dropped). */
static void blocks32_search(const float *restrict xb, const float *restrict qw, float sigma2, int nblk, int nmax,
                            int asym, uint8_t *restrict L, float *restrict d, float *restrict the_min) {
    float weight[QC_LANES * 32];
    for (int k = 0; k < nblk * 32; ++k) weight[k] = qw[k] * sqrtf(sigma2 + xb[k] * xb[k]);
    v8f xt[32], wt[32];
    transpose_in_n(xb, 32, nblk, xt);
    transpose_in_n(weight, 32, nblk, wt);
    if (asym) qkx_search_lanes(32, nmax, xt, wt, L, d, the_min, -0.9f, 0.05f, 36, 0, 1);
    else qx_search_lanes(32, nmax, xt, wt, (int8_t *)L, d);
}

static void q4_0_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q4_0 *y = vy;
    if (!qw) { q4_0_ref(x, y, n); return; }
    uint8_t L[QC_LANES * 32];
    float d[QC_LANES], mn[QC_LANES];
    const float sigma2 = row_sigma2(x, n);
    const int64_t nb = n / 32;
    for (int64_t ib = 0; ib < nb; ib += QC_LANES) {
        const int nblk = (int)MIN(QC_LANES, nb - ib);
        blocks32_search(x + 32 * ib, qw + 32 * ib, sigma2, nblk, 8, 0, L, d, mn);
        for (int k = 0; k < nblk; ++k) {
            const uint8_t *Lb = L + 32 * k;
            y[ib + k].d = fp32_to_fp16(d[k]);
            for (int j = 0; j < 16; ++j) y[ib + k].qs[j] = (uint8_t)(Lb[j] | (Lb[j + 16] << 4));
        }
    }
}

static void q4_1_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q4_1 *y = vy;
    if (!qw) { q4_1_ref(x, y, n); return; }
    uint8_t L[QC_LANES * 32];
    float d[QC_LANES], mn[QC_LANES];
    const float sigma2 = row_sigma2(x, n);
    const int64_t nb = n / 32;
    for (int64_t ib = 0; ib < nb; ib += QC_LANES) {
        const int nblk = (int)MIN(QC_LANES, nb - ib);
        blocks32_search(x + 32 * ib, qw + 32 * ib, sigma2, nblk, 15, 1, L, d, mn);
        for (int k = 0; k < nblk; ++k) {
            const uint8_t *Lb = L + 32 * k;
            y[ib + k].d = fp32_to_fp16(d[k]);
            y[ib + k].m = fp32_to_fp16(-mn[k]);
            for (int j = 0; j < 16; ++j) y[ib + k].qs[j] = (uint8_t)(Lb[j] | (Lb[j + 16] << 4));
        }
    }
}

static void pack_q5(const uint8_t *L, uint8_t *qs, uint8_t *qh_out) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = L[j], xi1 = L[j + 16];
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    memcpy(qh_out, &qh, 4);
}

static void q5_0_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q5_0 *y = vy;
    if (!qw) { q5_0_ref(x, y, n); return; }
    uint8_t L[QC_LANES * 32];
    float d[QC_LANES], mn[QC_LANES];
    const float sigma2 = row_sigma2(x, n);
    const int64_t nb = n / 32;
    for (int64_t ib = 0; ib < nb; ib += QC_LANES) {
        const int nblk = (int)MIN(QC_LANES, nb - ib);
        blocks32_search(x + 32 * ib, qw + 32 * ib, sigma2, nblk, 16, 0, L, d, mn);
        for (int k = 0; k < nblk; ++k) {
            y[ib + k].d = fp32_to_fp16(d[k]);
            pack_q5(L + 32 * k, y[ib + k].qs, y[ib + k].qh);
        }
    }
}

static void q5_1_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q5_1 *y = vy;
    if (!qw) { q5_1_ref(x, y, n); return; }
    uint8_t L[QC_LANES * 32];
    float d[QC_LANES], mn[QC_LANES];
    const float sigma2 = row_sigma2(x, n);
    const int64_t nb = n / 32;
    for (int64_t ib = 0; ib < nb; ib += QC_LANES) {
        const int nblk = (int)MIN(QC_LANES, nb - ib);
        blocks32_search(x + 32 * ib, qw + 32 * ib, sigma2, nblk, 31, 1, L, d, mn);
        for (int k = 0; k < nblk; ++k) {
            y[ib + k].d = fp32_to_fp16(d[k]);
            y[ib + k].m = fp32_to_fp16(-mn[k]);
            pack_q5(L + 32 * k, y[ib + k].qs, y[ib + k].qh);
        }
    }
}

/* MXFP4: the E8M0 exponent from max|x| (scalar, C log2f as ggml), then best_index_mxfp4 for 8 elements at a
   time: the 16 candidate errors |kv[i]*d - x| in index order, strict < keeps the first best. */
QC_CLONES
static void mxfp4_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    (void)qw;
    block_mxfp4 *y = vy;
    v8f v[4];
    v8i cidx[16];
    for (int c = 0; c < 16; ++c) cidx[c] = isplat(c);
    for (int64_t i = 0; i < n / 32; i++) {
        load32(x + 32 * i, v);
        const float amax = block32_amax(v);
        /* ggml: (uint8_t)(floorf(log2f(amax)) - 2 + 127); x86-64 gcc converts through a 32-bit int, so
           exponents below the E8M0 range wrap the same way here */
        const uint8_t e = amax > 0.0f ? (uint8_t)(int)(floorf(log2f(amax)) - 2 + 127) : 0;
        const float d = e8m0_to_fp32_half(e);
        y[i].e = e;
        v8f cand[16]; /* kvalues_mxfp4[c] * d, the products ggml compares against */
        for (int c = 0; c < 16; ++c) cand[c] = vsplat(kvalues_mxfp4[c] * d);
        v8i idx[4];
        for (int k = 0; k < 4; ++k) {
            v8f best = vabs(cand[0] - v[k]);
            v8i bi = isplat(0);
            for (int c = 1; c < 16; ++c) {
                v8f err = vabs(cand[c] - v[k]);
                v8i take = err < best;
                best = vsel(take, err, best);
                bi = isel(take, cidx[c], bi);
            }
            idx[k] = bi;
        }
        pack16(y[i].qs, idx[0] | (idx[2] << 4), idx[1] | (idx[3] << 4));
    }
}

/* IQ4_NL / IQ4_XS: quantize_row_iq4_nl_impl with ntry = 7 (the only value llama-quantize uses). The
   per-32-block scale search runs 8 blocks in SIMD lanes (iq4_search_lanes), the final index assignment too. */
static void iq4_weights(const float *restrict x, const float *restrict qw, float sigma2, int count,
                        float *restrict weight) {
    if (qw) {
        for (int j = 0; j < count; ++j) weight[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
    } else {
        for (int j = 0; j < count; ++j) weight[j] = x[j] * x[j];
    }
}

static void iq4_nl_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_iq4_nl *y = vy;
    const int64_t nb = n / 32;
    float weight[QC_LANES * 32], d[QC_LANES], id[QC_LANES];
    uint8_t L[QC_LANES * 32];
    v8f xt[32], wt[32];
    for (int64_t ib = 0; ib < nb; ib += QC_LANES) {
        const int nblk = (int)MIN(QC_LANES, nb - ib);
        const float *xb = x + 32 * ib;
        for (int k = 0; k < nblk; ++k) {
            const float *xk = xb + 32 * k;
            float sigma2 = 0;
            for (int j = 0; j < 32; ++j) sigma2 += xk[j] * xk[j];
            sigma2 *= 2.f / 32;
            iq4_weights(xk, qw ? qw + 32 * (ib + k) : NULL, sigma2, 32, weight + 32 * k);
        }
        transpose_in_n(xb, 32, nblk, xt);
        transpose_in_n(weight, 32, nblk, wt);
        iq4_search_lanes(xt, wt, kvalues_iq4nl, d);
        for (int k = 0; k < QC_LANES; ++k) id[k] = d[k] ? 1 / d[k] : 0;
        iq4_assign_lanes(xt, id, kvalues_iq4nl, L, nblk);
        for (int k = 0; k < nblk; ++k) {
            y[ib + k].d = fp32_to_fp16(d[k]);
            for (int j = 0; j < 16; ++j) y[ib + k].qs[j] = L[32 * k + j] | (L[32 * k + 16 + j] << 4);
        }
    }
}

static void iq4_xs_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    uint8_t *yb = vy;
    float weight[QK_K], scales[8], idl[8];
    uint8_t L[QK_K];
    v8f xt[32], wt[32];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl, yb += sizeof(block_iq4_xs)) {
        block_iq4_xs *y = (block_iq4_xs *)yb;
        const float *xs = x + QK_K * ibl;
        float sigma2 = 0;
        for (int j = 0; j < QK_K; ++j) sigma2 += xs[j] * xs[j];
        sigma2 *= 2.f / QK_K;
        iq4_weights(xs, qw ? qw + QK_K * ibl : NULL, sigma2, QK_K, weight);
        transpose_in(xs, 32, xt);
        transpose_in(weight, 32, wt);
        iq4_search_lanes(xt, wt, kvalues_iq4nl, scales);
        float max_scale = 0, amax_scale = 0;
        for (int ib = 0; ib < 8; ++ib) {
            float abs_d = fabsf(scales[ib]);
            if (abs_d > amax_scale) { amax_scale = abs_d; max_scale = scales[ib]; }
        }
        uint16_t scales_h = 0;
        float d = -max_scale / 32;
        y->d = fp32_to_fp16(d);
        float id = d ? 1 / d : 0.f;
        for (int ib = 0; ib < 8; ++ib) {
            int l = nearest_int(id * scales[ib]);
            l = MAX(-32, MIN(31, l));
            float dl = d * l;
            idl[ib] = dl ? 1 / dl : 0.f;
            l += 32;
            uint8_t l_l = l & 0xf;
            uint8_t l_h = l >> 4;
            if (ib % 2 == 0) y->scales_l[ib / 2] = l_l;
            else y->scales_l[ib / 2] |= (l_l << 4);
            scales_h |= (l_h << 2 * (ib % 8));
        }
        memcpy(yb + 2, &scales_h, 2);
        iq4_assign_lanes(xt, idl, kvalues_iq4nl, L, 8);
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 16; ++j) y->qs[16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4);
    }
}

/* ---------------------------------------------------------------- ternary */

/* lroundf(x*id) + 1 for a 256-block, as int (the C code's int xi = lroundf(...) + 1), 8 lanes at a time */
QC_CLONES
static void ternary_trits(const float *restrict x, float *restrict d_out, int *restrict xi) {
    v8f m = vabs(vloadu(x));
    for (int k = 1; k < 32; ++k) m = vmax(m, vabs(vloadu(x + 8 * k)));
    const float amax = hmax(m); /* MAX(amax, fabsf(v)) in any order: the exact maximum */
    const float d = amax;
    const float id = d ? 1.0f / d : 0.0f;
    *d_out = d;
    for (int k = 0; k < 32; ++k) {
        /* lroundf gives LONG_MIN for |v| >= 2^63/inf/NaN, whose int truncation is 0; the 32-bit conversion here
           gives INT_MIN. Only the low bits of xi are used (uint8 arithmetic, & 3), where both agree. */
        v8i r = vroundf_int(vloadu(x + 8 * k) * vsplat(id)) + isplat(1);
        memcpy(xi + 8 * k, &r, sizeof r);
    }
}

static void tq1_0_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    (void)qw;
    block_tq1_0 *y = vy;
    int xi[QK_K];
    float d;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        ternary_trits(x, &d, xi);
        y[i].d = fp32_to_fp16(d);
        /* 5 elements per byte along 32 bytes, then along 16 bytes (sizeof qs = 48), then 4 per byte in qh */
        for (int m = 0; m < 32; ++m) {
            uint8_t q = 0;
            for (int k = 0; k < 5; ++k) q = (uint8_t)(q * 3 + xi[m + k * 32]);
            y[i].qs[m] = ((uint16_t)q * 256 + (243 - 1)) / 243;
        }
        for (int m = 0; m < 16; ++m) {
            uint8_t q = 0;
            for (int k = 0; k < 5; ++k) q = (uint8_t)(q * 3 + xi[160 + m + k * 16]);
            y[i].qs[32 + m] = ((uint16_t)q * 256 + (243 - 1)) / 243;
        }
        for (int j = 0; j < 4; ++j) {
            uint8_t q = 0;
            for (int m = 0; m < 4; ++m) q = (uint8_t)(q * 3 + xi[240 + j + m * 4]);
            q *= 3;
            y[i].qh[j] = ((uint16_t)q * 256 + (243 - 1)) / 243;
        }
    }
}

static void tq2_0_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    (void)qw;
    block_tq2_0 *y = vy;
    int xi[QK_K];
    float d;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        ternary_trits(x, &d, xi);
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < 64; j += 32) {
            const int *xc = xi + 4 * j;
            for (int m = 0; m < 32; ++m) {
                uint8_t q = 0;
                for (int k = 0; k < 4; ++k) q += (xc[m + k * 32] & 3) << (2 * k);
                y[i].qs[j + m] = q;
            }
        }
    }
}

/* ---------------------------------------------------------------- k-quants */

static inline void get_scale_min_k4(int j, const uint8_t *restrict q, uint8_t *restrict d, uint8_t *restrict m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
}

/* Q2_K: scales/mins from the search (16 sub-blocks of 16), then re-derive quants from the fp16 scales */
QC_CLONES
static void q2_K_finish(const float *restrict x, block_q2_K *restrict y, uint8_t *L, const float *scales,
                        const float *mins) {
    const float q4scale = 15.f;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
        float iscale = q4scale / max_scale;
        for (int j = 0; j < 16; ++j) y->scales[j] = nearest_int(iscale * scales[j]);
        y->d = fp32_to_fp16(max_scale / q4scale);
    } else {
        for (int j = 0; j < 16; ++j) y->scales[j] = 0;
        y->d = fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
        float iscale = q4scale / max_min;
        for (int j = 0; j < 16; ++j) y->scales[j] |= (nearest_int(iscale * mins[j]) << 4);
        y->dmin = fp32_to_fp16(max_min / q4scale);
    } else {
        y->dmin = fp32_to_fp16(0.f);
    }
    for (int j = 0; j < 16; ++j) {
        const float d = fp16_to_fp32(y->d) * (y->scales[j] & 0xF);
        if (!d) continue;
        const float dm = fp16_to_fp32(y->dmin) * (y->scales[j] >> 4);
        requant16(x + 16 * j, d, dm, 1, 0, 3, 0, L + 16 * j);
    }
    pack_2bit(L, y->qs);
}

static void q2_K_ref_block(const float *restrict x, block_q2_K *restrict y) {
    uint8_t L[QK_K];
    float scales[16], mins[16];
    v8f xt[32], wt[32]; /* two groups of 8 sub-blocks, searched together */
    for (int g = 0; g < 2; ++g) transpose_in(x + 128 * g, 16, xt + 16 * g);
    for (int i = 0; i < 32; ++i) wt[i] = vabs(xt[i]);
    qkx_search_lanes2(16, 3, xt, wt, L, scales, mins, -0.5f, 0.1f, 15, 1, 0);
    q2_K_finish(x, y, L, scales, mins);
}

QC_CLONES
static void q2_K_impl_block(const float *restrict x, block_q2_K *restrict y, const float *restrict qwb) {
    uint8_t L[QK_K], Ls[16], Lm[16];
    float mins[16], scales[16], sw[16], weight[QK_K];
    v8f xt[32], wt[32];
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
    float sigma2 = sumx2 / QK_K;
    for (int j = 0; j < 16; ++j) {
        float *w = weight + 16 * j;
        for (int l = 0; l < 16; ++l) w[l] = qwb[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
        sw[j] = 0;
        for (int l = 0; l < 16; ++l) sw[j] += w[l];
    }
    for (int g = 0; g < 2; ++g) {
        transpose_in(x + 128 * g, 16, xt + 16 * g);
        transpose_in(weight + 128 * g, 16, wt + 16 * g);
    }
    qkx_search_lanes2(16, 3, xt, wt, L, scales, mins, -0.9f, 0.05f, 36, 0, 1);
    float dm = make_qp_quants(16, 15, scales, Ls, sw);
    float mm = make_qp_quants(16, 15, mins, Lm, sw);
    y->d = fp32_to_fp16(dm);
    y->dmin = fp32_to_fp16(mm);
    dm = fp16_to_fp32(y->d);
    mm = fp16_to_fp32(y->dmin);
    for (int j = 0; j < 16; ++j) y->scales[j] = Ls[j] | (Lm[j] << 4);
    for (int j = 0; j < 16; ++j) {
        const float d = dm * (y->scales[j] & 0xF);
        if (!d) continue;
        const float m = mm * (y->scales[j] >> 4);
        requant16(x + 16 * j, d, m, 1, 0, 3, 0, L + 16 * j);
    }
    pack_2bit(L, y->qs);
}

static void q2_K_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q2_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        if (qw) q2_K_impl_block(x + QK_K * i, y + i, qw + QK_K * i);
        else q2_K_ref_block(x + QK_K * i, y + i);
    }
}

/* Q3_K: pack 6-bit scale codes (biased by 32) into 12 bytes */
static void q3_K_pack_scales(uint8_t *S, int j, int l) {
    if (j < 8) S[j] = l & 0xF;
    else S[j - 8] |= ((l & 0xF) << 4);
    l >>= 4;
    S[j % 4 + 8] |= (l << (2 * (j / 4)));
}

QC_CLONES
static void q3_K_finish(const float *restrict x, block_q3_K *restrict y, int8_t *L) {
    for (int j = 0; j < 16; ++j) {
        int8_t sc = j < 8 ? y->scales[j] & 0xF : y->scales[j - 8] >> 4;
        sc = (sc | (((y->scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        float d = fp16_to_fp32(y->d) * sc;
        if (!d) continue;
        requant16(x + 16 * j, d, 0.f, 0, -4, 3, 4, (uint8_t *)L + 16 * j);
    }
    memset(y->hmask, 0, QK_K / 8);
    int m = 0;
    uint8_t hm = 1;
    for (int j = 0; j < QK_K; ++j) {
        if (L[j] > 3) {
            y->hmask[m] |= hm;
            L[j] -= 4;
        }
        if (++m == QK_K / 8) { m = 0; hm <<= 1; }
    }
    pack_2bit((const uint8_t *)L, y->qs);
}

static void q3_K_ref_block(const float *restrict x, block_q3_K *restrict y) {
    int8_t L[QK_K];
    float scales[16];
    float max_scale = 0, amax = 0;
    v8f xt[16];
    for (int g = 0; g < 2; ++g) {
        transpose_in(x + 128 * g, 16, xt);
        q3_search_lanes(4, xt, L + 128 * g, scales + 8 * g);
    }
    for (int j = 0; j < 16; ++j) {
        float scale = fabsf(scales[j]);
        if (scale > amax) { amax = scale; max_scale = scales[j]; }
    }
    memset(y->scales, 0, 12);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; ++j) {
            int8_t l = nearest_int(iscale * scales[j]);
            l = MAX(-32, MIN(31, l)) + 32;
            q3_K_pack_scales(y->scales, j, l);
        }
        y->d = fp32_to_fp16(1 / iscale);
    } else {
        y->d = fp32_to_fp16(0.f);
    }
    q3_K_finish(x, y, L);
}

static void q3_K_impl_block(const float *restrict x, block_q3_K *restrict y, const float *restrict qwb) {
    int8_t L[QK_K], Ls[16];
    float scales[16], weight[QK_K], sw[16];
    v8f xt[16], wt[16];
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
    float sigma2 = 2 * sumx2 / QK_K;
    for (int j = 0; j < 16; ++j) {
        float *w = weight + 16 * j;
        for (int l = 0; l < 16; ++l) w[l] = qwb[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
        float sumw = 0;
        for (int l = 0; l < 16; ++l) sumw += w[l];
        sw[j] = sumw;
    }
    for (int g = 0; g < 2; ++g) {
        transpose_in(x + 128 * g, 16, xt);
        transpose_in(weight + 128 * g, 16, wt);
        qx_search_lanes(16, 4, xt, wt, L + 128 * g, scales + 8 * g);
    }
    memset(y->scales, 0, 12);
    float d_block = make_qx_quants(16, 32, scales, Ls, 1, sw);
    for (int j = 0; j < 16; ++j) q3_K_pack_scales(y->scales, j, Ls[j]);
    y->d = fp32_to_fp16(d_block);
    q3_K_finish(x, y, L);
}

static void q3_K_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q3_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        if (qw) q3_K_impl_block(x + QK_K * i, y + i, qw + QK_K * i);
        else q3_K_ref_block(x + QK_K * i, y + i);
    }
}

static void k4_pack_scales(uint8_t *S, int j, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        S[j] = ls;
        S[j + 4] = lm;
    } else {
        S[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        S[j - 4] |= ((ls >> 4) << 6);
        S[j - 0] |= ((lm >> 4) << 6);
    }
}

/* Q4_K/Q5_K ref: 6-bit scale/min codes from the per-sub-block search results, then re-derive quants */
static void k45_ref_scales(uint8_t *S, half *d, half *dmin, const float *scales, const float *mins) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = nearest_int(inv_scale * scales[j]);
        uint8_t lm = nearest_int(inv_min * mins[j]);
        ls = MIN(63, ls);
        lm = MIN(63, lm);
        k4_pack_scales(S, j, ls, lm);
    }
    *d = fp32_to_fp16(max_scale / 63.f);
    *dmin = fp32_to_fp16(max_min / 63.f);
}

QC_CLONES
static void k45_requantize(const float *restrict x, const uint8_t *S, half hd, half hdmin, int nmax, uint8_t *L) {
    uint8_t sc, m;
    for (int j = 0; j < 8; ++j) {
        get_scale_min_k4(j, S, &sc, &m);
        const float d = fp16_to_fp32(hd) * sc;
        if (!d) continue;
        const float dm = fp16_to_fp32(hdmin) * m;
        requant16(x + 32 * j, d, dm, 1, 0, nmax, 0, L + 32 * j);
        requant16(x + 32 * j + 16, d, dm, 1, 0, nmax, 0, L + 32 * j + 16);
    }
}

static void q4_K_pack(block_q4_K *y, const uint8_t *L) {
    uint8_t *q = y->qs;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
        q += 32;
    }
}

static void q5_K_pack(block_q5_K *y, const uint8_t *L) {
    uint8_t *qh = y->qh, *ql = y->qs;
    memset(qh, 0, QK_K / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            int l2 = L[n + j + 32];
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
        ql += 32;
    }
}

/* Q4_K/Q5_K searches for nsb (1 or 2) adjacent super-blocks (8 sub-blocks of 32 each, one group of 8 lanes
   per super-block; two groups run interleaved). With imatrix (quantize_row_q{4,5}_K_impl): make_qkx3_quants
   with w = qw*sqrt(sigma2 + x^2), sigma2 per super-block; without (quantize_row_q{4,5}_K_ref):
   make_qkx2_quants with w = sqrt(mean32 x^2) + |x|. */
static void k45_search(const float *restrict x, const float *restrict qw, int nsb, int nmax, float rmin, int nstep,
                       uint8_t *restrict L, float *restrict scales, float *restrict mins, float *restrict sw) {
    v8f xt[64], wt[64];
    for (int s = 0; s < nsb; ++s) transpose_in(x + QK_K * s, 32, xt + 32 * s);
    if (qw) {
        float weights[2 * QK_K];
        for (int s = 0; s < nsb; ++s) {
            const float *xs = x + QK_K * s;
            float sum_x2 = 0;
            for (int l = 0; l < QK_K; ++l) sum_x2 += xs[l] * xs[l];
            float sigma2 = 2 * sum_x2 / QK_K;
            for (int j = 0; j < 8; ++j) {
                float *w = weights + QK_K * s + 32 * j;
                const float *q = qw + QK_K * s + 32 * j;
                for (int l = 0; l < 32; ++l) w[l] = q[l] * sqrtf(sigma2 + xs[32 * j + l] * xs[32 * j + l]);
                float sumw = 0;
                for (int l = 0; l < 32; ++l) sumw += w[l];
                sw[8 * s + j] = sumw;
            }
            transpose_in(weights + QK_K * s, 32, wt + 32 * s);
        }
        if (nsb == 2) qkx_search_lanes2(32, nmax, xt, wt, L, scales, mins, -0.9f, 0.05f, 36, 0, 1);
        else qkx_search_lanes(32, nmax, xt, wt, L, scales, mins, -0.9f, 0.05f, 36, 0, 1);
    } else {
        for (int s = 0; s < nsb; ++s) {
            v8f sum_x2 = vsplat(0.f);
            for (int i = 0; i < 32; ++i) sum_x2 += xt[32 * s + i] * xt[32 * s + i];
            v8f av_x;
            for (int k = 0; k < QC_LANES; ++k) av_x[k] = sqrtf(sum_x2[k] / 32);
            for (int i = 0; i < 32; ++i) wt[32 * s + i] = av_x + vabs(xt[32 * s + i]);
        }
        if (nsb == 2) qkx_search_lanes2(32, nmax, xt, wt, L, scales, mins, rmin, 0.1f, nstep, 0, 0);
        else qkx_search_lanes(32, nmax, xt, wt, L, scales, mins, rmin, 0.1f, nstep, 0, 0);
    }
}

/* scale/min codes for one super-block from its search results, then the final quants L */
static void k45_finish(const float *restrict x, int with_imatrix, int nmax, const float *scales, const float *mins,
                       const float *sw, uint8_t *S, half *hd, half *hdmin, uint8_t *L) {
    if (with_imatrix) {
        uint8_t Ls[8], Lm[8];
        float d_block = make_qp_quants(8, 63, scales, Ls, sw);
        float m_block = make_qp_quants(8, 63, mins, Lm, sw);
        /* ggml clamps the codes to 63 in quantize_row_q5_K_impl only; Q4_K stores them unclamped */
        for (int j = 0; j < 8; ++j)
            k4_pack_scales(S, j, nmax == 31 ? MIN(63, Ls[j]) : Ls[j], nmax == 31 ? MIN(63, Lm[j]) : Lm[j]);
        *hd = fp32_to_fp16(d_block);
        *hdmin = fp32_to_fp16(m_block);
    } else {
        k45_ref_scales(S, hd, hdmin, scales, mins);
    }
    k45_requantize(x, S, *hd, *hdmin, nmax, L);
}

static void q4_K_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q4_K *y = vy;
    uint8_t L[2 * QK_K];
    float scales[16], mins[16], sw[16];
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i += 2) {
        const int nsb = (int)MIN(2, nb - i);
        k45_search(x + QK_K * i, qw ? qw + QK_K * i : NULL, nsb, 15, -1.f, 20, L, scales, mins, sw);
        for (int s = 0; s < nsb; ++s) {
            block_q4_K *b = y + i + s;
            k45_finish(x + QK_K * (i + s), qw != NULL, 15, scales + 8 * s, mins + 8 * s, sw + 8 * s, b->scales,
                       &b->d, &b->dmin, L + QK_K * s);
            q4_K_pack(b, L + QK_K * s);
        }
    }
}

static void q5_K_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q5_K *y = vy;
    uint8_t L[2 * QK_K];
    float scales[16], mins[16], sw[16];
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i += 2) {
        const int nsb = (int)MIN(2, nb - i);
        k45_search(x + QK_K * i, qw ? qw + QK_K * i : NULL, nsb, 31, -0.5f, 15, L, scales, mins, sw);
        for (int s = 0; s < nsb; ++s) {
            block_q5_K *b = y + i + s;
            k45_finish(x + QK_K * (i + s), qw != NULL, 31, scales + 8 * s, mins + 8 * s, sw + 8 * s, b->scales,
                       &b->d, &b->dmin, L + QK_K * s);
            q5_K_pack(b, L + QK_K * s);
        }
    }
}

/* Q6_K: shared tail of ref and impl once the 16 sub-block scales and search quants are known */
QC_CLONES
static void q6_K_finish(const float *restrict x, block_q6_K *restrict y, const float *scales, int8_t *L) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const float abs_scale = fabsf(scales[ib]);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scales[ib]; }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, sizeof(block_q6_K));
        y->d = fp32_to_fp16(0.f);
        return;
    }
    float iscale = -128.f / max_scale;
    y->d = fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < 16; ++ib) y->scales[ib] = MIN(127, nearest_int(iscale * scales[ib]));
    for (int j = 0; j < 16; ++j) {
        float d = fp16_to_fp32(y->d) * y->scales[j];
        if (!d) continue;
        requant16(x + 16 * j, d, 0.f, 0, -32, 31, 32, (uint8_t *)L + 16 * j);
    }
    uint8_t *ql = y->ql, *qh = y->qh;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l + 0] & 0xF;
            const uint8_t q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF;
            const uint8_t q4 = L[j + l + 96] & 0xF;
            ql[l + 0] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                    ((L[j + l + 96] >> 4) << 6);
        }
        ql += 64;
        qh += 32;
    }
}

static void q6_K_row(const float *restrict x, void *restrict vy, int64_t n, const float *qw) {
    block_q6_K *y = vy;
    int8_t L[QK_K];
    float scales[16];
    v8f xt[16], wt[16];
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float *xb = x + QK_K * i;
        for (int g = 0; g < 2; ++g) {
            transpose_in(xb + 128 * g, 16, xt);
            if (qw) transpose_in(qw + QK_K * i + 128 * g, 16, wt);
            qx_search_lanes(16, 32, xt, qw ? wt : NULL, L + 128 * g, scales + 8 * g);
        }
        q6_K_finish(xb, y + i, scales, L);
    }
}

/* ---------------------------------------------------------------- dequantization (ggml's to_float) */
/* Each is ggml's dequantize_row_<type> with the same float expressions (so the same products, rounded once).
   Some build a small table of the possible products per block instead of multiplying per element. */

/* (float)v hidden from the optimiser: with a known constant level GCC may rewrite scale * -4.f as
   -(scale * 4.f), which flips the sign bit of a NaN scale; ggml multiplies by a runtime value. */
static inline float opaque_level(int v) {
    float f = (float)v;
    __asm__("" : "+m"(f));
    return f;
}

QC_CLONES
static void dq_q4_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < 16; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[i * 32 + j] = x0 * d;
            y[i * 32 + j + 16] = x1 * d;
        }
    }
}

QC_CLONES
static void dq_q4_1(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
        for (int j = 0; j < 16; ++j) {
            const int x0 = x[i].qs[j] & 0x0F;
            const int x1 = x[i].qs[j] >> 4;
            y[i * 32 + j] = x0 * d + m;
            y[i * 32 + j + 16] = x1 * d + m;
        }
    }
}

QC_CLONES
static void dq_q5_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_0 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fp16_to_fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < 16; ++j) {
            const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
            const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
            const int32_t x0 = ((x[i].qs[j] & 0x0F) | xh_0) - 16;
            const int32_t x1 = ((x[i].qs[j] >> 4) | xh_1) - 16;
            y[i * 32 + j] = x0 * d;
            y[i * 32 + j + 16] = x1 * d;
        }
    }
}

QC_CLONES
static void dq_q5_1(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_1 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < 16; ++j) {
            const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
            const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
            const int x0 = (x[i].qs[j] & 0x0F) | xh_0;
            const int x1 = (x[i].qs[j] >> 4) | xh_1;
            y[i * 32 + j] = x0 * d + m;
            y[i * 32 + j + 16] = x1 * d + m;
        }
    }
}

QC_CLONES
static void dq_q8_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < 32; ++j) y[i * 32 + j] = x[i].qs[j] * d;
    }
}

QC_CLONES
static void dq_mxfp4(const void *restrict vx, float *restrict y, int64_t n) {
    const block_mxfp4 *x = vx;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = e8m0_to_fp32_half(x[i].e);
        float t[16]; /* the 16 possible products kvalues_mxfp4[c] * d, looked up per element */
        for (int c = 0; c < 16; ++c) t[c] = opaque_level(kvalues_mxfp4[c]) * d;
        for (int j = 0; j < 16; ++j) {
            y[i * 32 + j] = t[x[i].qs[j] & 0x0F];
            y[i * 32 + j + 16] = t[x[i].qs[j] >> 4];
        }
    }
}

QC_CLONES
static void dq_iq4_nl(const void *restrict vx, float *restrict y, int64_t n) {
    const block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / 32; i++, y += 32) {
        const float d = fp16_to_fp32(x[i].d);
        float t[16]; /* d * kvalues_iq4nl[c] for every code */
        for (int c = 0; c < 16; ++c) t[c] = d * opaque_level(kvalues_iq4nl[c]);
        for (int j = 0; j < 16; ++j) {
            y[j] = t[x[i].qs[j] & 0xf];
            y[j + 16] = t[x[i].qs[j] >> 4];
        }
    }
}

QC_CLONES
static void dq_iq4_xs(const void *restrict vx, float *restrict y, int64_t n) {
    const uint8_t *xb = vx;
    for (int64_t i = 0; i < n / QK_K; i++, xb += sizeof(block_iq4_xs)) {
        const block_iq4_xs *x = (const block_iq4_xs *)xb;
        uint16_t scales_h;
        memcpy(&scales_h, xb + 2, 2);
        const uint8_t *qs = x->qs;
        const float d = fp16_to_fp32(x->d);
        for (int ib = 0; ib < 8; ++ib, y += 32, qs += 16) {
            const int ls = ((x->scales_l[ib / 2] >> 4 * (ib % 2)) & 0xf) | (((scales_h >> 2 * ib) & 3) << 4);
            const float dl = d * (ls - 32);
            float t[16];
            for (int c = 0; c < 16; ++c) t[c] = dl * opaque_level(kvalues_iq4nl[c]);
            for (int j = 0; j < 16; ++j) {
                y[j] = t[qs[j] & 0xf];
                y[j + 16] = t[qs[j] >> 4];
            }
        }
    }
}

QC_CLONES
static void dq_q2_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q2_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_fp32(x[i].d), min = fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int n128 = 0; n128 < QK_K; n128 += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                uint8_t sc = x[i].scales[is++];
                float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l] >> shift) & 3)) - ml;
                sc = x[i].scales[is++];
                dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3)) - ml;
                shift += 2;
            }
            q += 32;
        }
    }
}

QC_CLONES
static void dq_q3_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q3_K *x = vx;
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    int8_t scales[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d_all = fp16_to_fp32(x[i].d);
        const uint8_t *q = x[i].qs, *hm = x[i].hmask;
        uint8_t m = 1;
        memcpy(aux, x[i].scales, 12);
        uint32_t tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        memcpy(scales, aux, 16);
        int is = 0;
        for (int n128 = 0; n128 < QK_K; n128 += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                /* dl * v for the 8 possible v = low2 - (hbit ? 0 : 4), indexed by low2 + (hbit ? 4 : 0) */
                float t[8];
                float dl = d_all * (scales[is++] - 32);
                for (int c = 0; c < 8; ++c) t[c] = dl * opaque_level(c - 4);
                for (int l = 0; l < 16; ++l) *y++ = t[((q[l + 0] >> shift) & 3) | ((hm[l + 0] & m) ? 4 : 0)];
                dl = d_all * (scales[is++] - 32);
                for (int c = 0; c < 8; ++c) t[c] = dl * opaque_level(c - 4);
                for (int l = 0; l < 16; ++l) *y++ = t[((q[l + 16] >> shift) & 3) | ((hm[l + 16] & m) ? 4 : 0)];
                shift += 2;
                m <<= 1;
            }
            q += 32;
        }
    }
}

QC_CLONES
static void dq_q4_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q = x[i].qs;
        const float d = fp16_to_fp32(x[i].d), min = fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

QC_CLONES
static void dq_q5_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = fp16_to_fp32(x[i].d), min = fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m, u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

QC_CLONES
static void dq_q6_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n128 = 0; n128 < QK_K; n128 += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l / 16;
                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

QC_CLONES
static void dq_tq1_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_tq1_0 *x = vx;
    static const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int k = 0; k < 5; ++k)
            for (int m = 0; m < 32; ++m) {
                uint8_t q = x[i].qs[m] * pow3[k];
                int16_t xi = ((uint16_t)q * 3) >> 8;
                *y++ = (float)(xi - 1) * d;
            }
        for (int k = 0; k < 5; ++k)
            for (int m = 0; m < 16; ++m) {
                uint8_t q = x[i].qs[32 + m] * pow3[k];
                int16_t xi = ((uint16_t)q * 3) >> 8;
                *y++ = (float)(xi - 1) * d;
            }
        for (int k = 0; k < 4; ++k)
            for (int j = 0; j < 4; ++j) {
                uint8_t q = x[i].qh[j] * pow3[k];
                int16_t xi = ((uint16_t)q * 3) >> 8;
                *y++ = (float)(xi - 1) * d;
            }
    }
}

QC_CLONES
static void dq_tq2_0(const void *restrict vx, float *restrict y, int64_t n) {
    const block_tq2_0 *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < 64; j += 32)
            for (int l = 0; l < 4; ++l)
                for (int m = 0; m < 32; ++m) {
                    int8_t q = (x[i].qs[j + m] >> (l * 2)) & 3;
                    *y++ = (float)(q - 1) * d;
                }
    }
}

/* ---------------------------------------------------------------- dispatch and threads */

typedef void (*row_fn)(const float *restrict x, void *restrict y, int64_t n, const float *qw);

typedef void (*dequant_fn)(const void *restrict x, float *restrict y, int64_t n);

/* F16 has a to_float (the runtime widens F16 weights) but no quantizer here: fn is NULL */
static void dq_f16(const void *restrict x, float *restrict y, int64_t n);

typedef struct {
    int type;
    int block;
    int type_size;
    row_fn fn;
    dequant_fn deq;
} qtype_info;

static const qtype_info QTYPES[] = {
    {T_Q4_0, 32, 18, q4_0_row, dq_q4_0},         {T_Q4_1, 32, 20, q4_1_row, dq_q4_1},
    {T_Q5_0, 32, 22, q5_0_row, dq_q5_0},         {T_Q5_1, 32, 24, q5_1_row, dq_q5_1},
    {T_Q8_0, 32, 34, q8_0_row, dq_q8_0},         {T_Q2_K, 256, 84, q2_K_row, dq_q2_K},
    {T_Q3_K, 256, 110, q3_K_row, dq_q3_K},       {T_Q4_K, 256, 144, q4_K_row, dq_q4_K},
    {T_Q5_K, 256, 176, q5_K_row, dq_q5_K},       {T_Q6_K, 256, 210, q6_K_row, dq_q6_K},
    {T_IQ4_NL, 32, 18, iq4_nl_row, dq_iq4_nl},   {T_IQ4_XS, 256, 136, iq4_xs_row, dq_iq4_xs},
    {T_TQ1_0, 256, 54, tq1_0_row, dq_tq1_0},     {T_TQ2_0, 256, 66, tq2_0_row, dq_tq2_0},
    {T_MXFP4, 32, 17, mxfp4_row, dq_mxfp4},     {T_F16, 1, 2, NULL, dq_f16},
};

static const qtype_info *find_type(int type) {
    for (size_t i = 0; i < sizeof(QTYPES) / sizeof(QTYPES[0]); ++i)
        if (QTYPES[i].type == type) return &QTYPES[i];
    return NULL;
}

/* source element types of qc_quantize (ggml type ids) */
enum { SRC_F32 = 0, SRC_F16 = 1, SRC_BF16 = 30 };

typedef struct {
    const qtype_info *info;
    const void *src; /* quantize: rows in (src_type); dequantize: unused */
    int src_type;
    uint8_t *dst;
    const uint8_t *qsrc;
    float *fdst;
    int64_t row0, row1, n_per_row;
    size_t row_size;
    const float *qw;
    int status; /* quantize: 0, -3 when a row holds a NaN/Inf (nothing is written for it), -4 out of memory */
    void (*round_trip)(const float *restrict x, float *restrict y, int64_t n); /* qc_round_trip: per row */
    const float *fsrc;                                                          /* its rows in */
} job;

/* F16 -> float32 is exact whichever way it is done: the F16C instruction where the CPU has it (8 values per
   instruction), else ggml's portable routine. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QC_HAVE_F16C_PATH 1
__attribute__((target("avx,f16c"))) static void f16_row_f16c(const half *restrict s, float *restrict d, int64_t n) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) _mm256_storeu_ps(d + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + k))));
    for (; k < n; ++k) d[k] = fp16_to_fp32(s[k]);
}

static int have_f16c(void) { return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx"); }
#endif

static void f16_row(const half *restrict s, float *restrict d, int64_t n) {
#ifdef QC_HAVE_F16C_PATH
    if (have_f16c()) { f16_row_f16c(s, d, n); return; }
#endif
    for (int64_t k = 0; k < n; ++k) d[k] = fp16_to_fp32(s[k]);
}

static void dq_f16(const void *restrict x, float *restrict y, int64_t n) { f16_row((const half *)x, y, n); }

/* One source row as float32 in `buf` (F32 rows are used in place). Returns 0 when every value is finite. */
QC_CLONES
static int widen_row(const job *j, int64_t r, float *buf, const float **row) {
    const int64_t n = j->n_per_row;
    int bad = 0;
    if (j->src_type == SRC_F16) {
        const half *s = (const half *)j->src + r * n;
        for (int64_t k = 0; k < n; ++k) bad |= (s[k] & 0x7C00) == 0x7C00;
        f16_row(s, buf, n);
        *row = buf;
    } else if (j->src_type == SRC_BF16) {
        const uint16_t *s = (const uint16_t *)j->src + r * n;
        for (int64_t k = 0; k < n; ++k) {
            buf[k] = f32_from_bits((uint32_t)s[k] << 16);
            bad |= (s[k] & 0x7F80) == 0x7F80;
        }
        *row = buf;
    } else {
        const float *s = (const float *)j->src + r * n;
        for (int64_t k = 0; k < n; ++k) bad |= (f32_to_bits(s[k]) & 0x7F800000) == 0x7F800000;
        *row = s;
    }
    return bad;
}

static void run_rows(job *j) {
    if (j->round_trip) {
        for (int64_t r = j->row0; r < j->row1; ++r)
            j->round_trip(j->fsrc + r * j->n_per_row, j->fdst + r * j->n_per_row, j->n_per_row);
        return;
    }
    if (j->fdst) {
        for (int64_t r = j->row0; r < j->row1; ++r)
            j->info->deq(j->qsrc + r * j->row_size, j->fdst + r * j->n_per_row, j->n_per_row);
        return;
    }
    float *buf = NULL;
    if (j->src_type != SRC_F32 && j->row1 > j->row0) {
        buf = malloc((size_t)j->n_per_row * sizeof(float));
        if (!buf) {
            j->status = -4;
            return;
        }
    }
    for (int64_t r = j->row0; r < j->row1; ++r) {
        const float *row;
        if (widen_row(j, r, buf, &row)) {
            j->status = -3;
            break;
        }
        j->info->fn(row, j->dst + r * j->row_size, j->n_per_row, j->qw);
    }
    free(buf);
}

static void *run_rows_thread(void *arg) {
    run_rows((job *)arg);
    return NULL;
}

#ifndef QC_SOURCE_HASH
#define QC_SOURCE_HASH "unknown"
#endif
#define QC_API __attribute__((visibility("default")))

QC_API int qc_abi_version(void) { return QC_ABI_VERSION; }

/* hash of the C sources this library was built from (quantcli_build.source_hash) */
QC_API const char *qc_source_hash(void) { return QC_SOURCE_HASH; }

QC_API int qc_supports(int type) { const qtype_info *info = find_type(type); return info && info->fn; }

/* Splits rows [0, nrows) over nthreads pthreads (the calling thread takes the first share). Returns the first
   non-zero job status, else 0. */
static int run_threads(job proto, int64_t nrows, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    if (nthreads > nrows) nthreads = (int)(nrows > 0 ? nrows : 1);
    job jobs[256];
    for (int t = 0; t < nthreads; ++t) {
        jobs[t] = proto;
        jobs[t].row0 = nrows * t / nthreads;
        jobs[t].row1 = nrows * (t + 1) / nthreads;
    }
    if (nthreads == 1) {
        run_rows(&jobs[0]);
        return jobs[0].status;
    }
    pthread_t tids[256];
    int started[256] = {0};
    for (int t = 1; t < nthreads; ++t) started[t] = pthread_create(&tids[t], NULL, run_rows_thread, &jobs[t]) == 0;
    run_rows(&jobs[0]);
    for (int t = 1; t < nthreads; ++t) {
        if (started[t]) pthread_join(tids[t], NULL);
        else run_rows(&jobs[t]); /* no thread could be started: do its share here */
    }
    for (int t = 0; t < nthreads; ++t)
        if (jobs[t].status) return jobs[t].status;
    return 0;
}

/* Quantize nrows rows of n_per_row values of src_type (SRC_F32/F16/BF16). Returns 0 on success, -1 for an
   unsupported type, -2 for a row length that is not a multiple of the block size, -3 when a value is NaN or
   infinite (the output is then incomplete), -4 when a row buffer cannot be allocated, -5 for an unknown
   src_type. */
QC_API int qc_quantize(int type, const void *src, int src_type, void *dst, int64_t nrows, int64_t n_per_row,
                       const float *imatrix, int nthreads) {
    const qtype_info *info = find_type(type);
    if (!info || !info->fn) return -1;
    if (n_per_row <= 0 || n_per_row % info->block) return -2;
    if (src_type != SRC_F32 && src_type != SRC_F16 && src_type != SRC_BF16) return -5;
    /* types whose ggml quantizer ignores the imatrix */
    if (type == T_Q8_0 || type == T_TQ1_0 || type == T_TQ2_0 || type == T_MXFP4) imatrix = NULL;
    job proto = {info, src, src_type, dst, NULL, NULL, 0, 0, n_per_row,
                 (size_t)(n_per_row / info->block) * info->type_size, imatrix, 0};
    return run_threads(proto, nrows, nthreads);
}

/* The type's to_float on nrows rows: same return codes as qc_quantize. */
QC_API int qc_dequantize(int type, const void *src, float *dst, int64_t nrows, int64_t n_per_row, int nthreads) {
    const qtype_info *info = find_type(type);
    if (!info) return -1;
    if (n_per_row <= 0 || n_per_row % info->block) return -2;
    job proto = {info, NULL, SRC_F32, NULL, src, dst, 0, 0, n_per_row,
                 (size_t)(n_per_row / info->block) * info->type_size, NULL, 0};
    return run_threads(proto, nrows, nthreads);
}

/* One GPTQ column (n_out rows): codes on the grid `scale` and the error (w - q*scale) / d. NumPy's
   clip(rint(x)) equals rint(clip(x)) for integer bounds; |x| <= 2^22 after the clip, where adding and
   subtracting 1.5*2^23 rounds half to even exactly as rint does. */
static void gptq_column(const float *restrict w, const float *restrict scale, float *restrict e,
                        int8_t *restrict c, int64_t n_out, float d, float lo, float hi) {
    const float magic = 12582912.0f;
    for (int64_t r = 0; r < n_out; ++r) {
        float x = w[r] / scale[r];
        x = x < lo ? lo : x;
        x = x > hi ? hi : x;
        const float q = (x + magic) - magic;
        c[r] = (int8_t)q;
        const float dq = q * scale[r];
        e[r] = (w[r] - dq) / d;
    }
}

/* wk -= h * e, the product rounded first (no FMA). */
static void gptq_rank1(float *restrict wk, const float *restrict e, float h, int64_t n_out) {
    for (int64_t r = 0; r < n_out; ++r) {
        const float p = h * e[r];
        wk[r] -= p;
    }
}

/* GPTQ's column loop on one block of columns, the C twin of quants/gptq.py `_quantize_columns` (same bytes:
   binary32 throughout, each operation in NumPy's order, no FMA). w1: block_len columns of the weight as rows
   of n_out floats, updated in place; hinv1: the block's block_len x block_len part of the inverse-Hessian
   factor. Columns start..stop-1, column i on the grid scales[scale_rows[i] * n_out ...]: codes into
   codes[i * n_out ...], error (w - q*scale) / hinv1[i][i] into err1[i * n_out ...] and, as a rank-1 update
   (the product rounded, then subtracted), into the later columns of the block. */
QC_API void qc_gptq_columns(float *w1, const float *hinv1, float *err1, int64_t block_len, int64_t n_out,
                            int64_t start, int64_t stop, const float *scales, const int64_t *scale_rows,
                            int8_t *codes, int qmin, int qmax) {
    for (int64_t i = start; i < stop; ++i) {
        float *e = err1 + i * n_out;
        gptq_column(w1 + i * n_out, scales + scale_rows[i] * n_out, e, codes + i * n_out, n_out,
                    hinv1[i * block_len + i], (float)qmin, (float)qmax);
        for (int64_t k = i + 1; k < block_len; ++k) gptq_rank1(w1 + k * n_out, e, hinv1[i * block_len + k], n_out);
    }
}

/* ---------------------------------------------------------------- activation round trips (runtime/numerics.py) */

/* What ggml-cpu's mul_mat does to the float32 activation rows before the dot product with a weight row: it
   converts them to the weight type's vec_dot_type. Each function below is the C twin of its NumPy formulation
   in runtime/numerics.py, bit for bit on every non-NaN input (tests/test_runtime.py compares them). */

#ifdef QC_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static void rt_f16_f16c(const float *restrict x, float *restrict y, int64_t n) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_ps(y + k, _mm256_cvtph_ps(h));
    }
    for (; k < n; ++k) y[k] = fp16_to_fp32(fp32_to_fp16(x[k]));
}
#endif

/* F16 weights: activations rounded to float16 (ties to even, overflow to inf) */
static void rt_f16(const float *restrict x, float *restrict y, int64_t n) {
#ifdef QC_HAVE_F16C_PATH
    if (have_f16c()) { rt_f16_f16c(x, y, n); return; }
#endif
    for (int64_t k = 0; k < n; ++k) y[k] = fp16_to_fp32(fp32_to_fp16(x[k]));
}

/* BF16 weights: ggml_compute_fp32_to_bf16 (ties to even; a NaN becomes quiet) and back */
static void rt_bf16(const float *restrict x, float *restrict y, int64_t n) {
    for (int64_t k = 0; k < n; ++k) {
        const uint32_t u = f32_to_bits(x[k]);
        const uint32_t b = (u & 0x7fffffff) > 0x7f800000 ? (u >> 16) | 64 : (u + (0x7fff + ((u >> 16) & 1))) >> 16;
        y[k] = f32_from_bits(b << 16);
    }
}

/* rint lane-wise for |v| < 2^22 in the default rounding mode (ties to even), the sign kept as rint keeps it
   (-0.3 -> -0.0): the sum and the difference stay two roundings (-ffp-contract=off), the sign is OR-ed back. */
static inline __attribute__((always_inline)) v8f vrint_small(v8f v) {
    const v8f magic = vsplat(12582912.0f);
    const v8f r = (vabs(v) + magic) - magic;
    return (v8f)((v8i)r | ((v8i)v & isplat((int32_t)0x80000000)));
}

static inline __attribute__((always_inline)) void vstoreu(float *p, v8f v) { *(v8f_unaligned *)p = v; }

/* max |x[k]| over k < n (n a multiple of 8): max does not depend on the order for non-NaN values */
static inline __attribute__((always_inline)) float abs_max(const float *restrict x, int n) {
    v8f m = vabs(vloadu(x));
    for (int k = 8; k < n; k += 8) {
        const v8f a = vabs(vloadu(x + k));
        m = vsel(a > m, a, m);
    }
    float amax = m[0];
    for (int k = 1; k < QC_LANES; ++k) amax = MAX(amax, m[k]);
    return amax;
}

/* Q8_0 users: per block of 32, d = fp16(amax / 127), q = rint(x * (127 / amax)), back as q * d */
QC_CLONES
static void rt_q8_0(const float *restrict x, float *restrict y, int64_t n) {
    for (int64_t b = 0; b < n; b += 32) {
        const float amax = abs_max(x + b, 32);
        const v8f d = vsplat(fp16_to_fp32(fp32_to_fp16(amax / 127.0f)));
        const v8f inv = vsplat(amax != 0.0f ? 127.0f / amax : 0.0f);
        for (int k = 0; k < 32; k += 8) vstoreu(y + b + k, vrint_small(vloadu(x + b + k) * inv) * d);
    }
}

/* Q8_K users: per block of 256, iscale = -127 / (the signed value of largest magnitude, first of equals),
   q = min(rint(x * iscale), 127), back as q * (1 / iscale) */
QC_CLONES
static void rt_q8_k(const float *restrict x, float *restrict y, int64_t n) {
    const v8f top = vsplat(127.0f);
    for (int64_t b = 0; b < n; b += QK_K) {
        const float amax = abs_max(x + b, QK_K);
        int at = 0;
        while (at < QK_K && fabsf(x[b + at]) != amax) ++at; /* NumPy's argmax: the first of equals */
        const float signed_max = at < QK_K ? x[b + at] : x[b];
        const float iscale = signed_max != 0.0f ? -127.0f / signed_max : 0.0f;
        const v8f vi = vsplat(iscale), d = vsplat(iscale != 0.0f ? 1.0f / iscale : 0.0f);
        for (int k = 0; k < QK_K; k += 8) {
            const v8f q = vrint_small(vloadu(x + b + k) * vi);
            vstoreu(y + b + k, vsel(q > top, top, q) * d);
        }
    }
}

/* The activation rows x (nrows x n float32, C order) converted to `vec_dot_type` (F16, BF16, Q8_0 or Q8_K, the
   ggml type id; runtime/numerics.py knows which weight type uses which) and back, into y (which may be x).
   Returns 0, -1 for another type, -2 for a row length that is not a multiple of its block. */
QC_API int qc_round_trip(int vec_dot_type, const float *x, float *y, int64_t nrows, int64_t n, int nthreads) {
    job proto;
    memset(&proto, 0, sizeof proto);
    int block = 1;
    switch (vec_dot_type) {
    case T_F16: proto.round_trip = rt_f16; break;
    case T_BF16: proto.round_trip = rt_bf16; break;
    case T_Q8_0: proto.round_trip = rt_q8_0; block = 32; break;
    case T_Q8_K: proto.round_trip = rt_q8_k; block = QK_K; break;
    default: return -1;
    }
    if (n <= 0 || n % block) return -2;
    proto.fsrc = x;
    proto.fdst = y;
    proto.n_per_row = n;
    return run_threads(proto, nrows, nthreads);
}
