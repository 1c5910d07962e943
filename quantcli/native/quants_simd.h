/*
 * Lane-parallel versions of ggml's k-quant searches: QC_LANES independent sub-blocks run side by side, one per
 * SIMD lane (GCC vector extensions; SSE2 on any x86-64, AVX2 in the target_clones variant). Each lane performs
 * exactly the scalar function's sequence of binary32 operations: sums stay sequential over the element index,
 * candidate acceptance is a per-lane mask with the same strict comparisons, state (min, scale, best error) is
 * carried per lane. Only the control flow is replaced by selects, which cannot change a kept value.
 * Included by quants.c (needs nearest_int's constant, MIN/MAX, make_qp_quants etc. from there).
 */
#define QC_LANES 8

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(QC_NO_CLONES)
#define QC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QC_CLONES
#endif

/* Shuffles: GCC's __builtin_shuffle vs Clang's __builtin_shufflevector (constant indices). Both take lane
   indices into the concatenation of their two operands. */
#if defined(__clang__)
#define QC_SHUF8(v, ...) __builtin_shufflevector((v), (v), __VA_ARGS__)
#define QC_SHUF2(a, b, T, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define QC_SHUF8(v, ...) __builtin_shuffle((v), (v8i){__VA_ARGS__})
#define QC_SHUF2(a, b, T, ...) __builtin_shuffle((a), (b), (T){__VA_ARGS__})
#endif

/* unaligned, aliasing-safe vector load */
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4), may_alias));
static inline __attribute__((always_inline)) v8f vloadu(const float *p) { return *(const v8f_unaligned *)p; }

static inline __attribute__((always_inline)) v8f vsplat(float f) { return (v8f){f, f, f, f, f, f, f, f}; }
static inline __attribute__((always_inline)) v8i isplat(int i) { return (v8i){i, i, i, i, i, i, i, i}; }
static inline __attribute__((always_inline)) v8f vsel(v8i mask, v8f a, v8f b) { return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask)); }
static inline __attribute__((always_inline)) v8i isel(v8i mask, v8i a, v8i b) { return (a & mask) | (b & ~mask); }
static inline __attribute__((always_inline)) v8f vabs(v8f a) { return (v8f)((v8i)a & isplat(0x7fffffff)); }
static inline __attribute__((always_inline)) v8f vtof(v8i a) { return __builtin_convertvector(a, v8f); }

/* nearest_int lane-wise: the same 1.5*2^23 bit trick */
static inline __attribute__((always_inline)) v8i vnearest(v8f f) {
    v8f val = f + vsplat(12582912.f);
    return ((v8i)val & isplat(0x007fffff)) - isplat(0x00400000);
}
/* lo/hi are splats built once by the caller: GCC does not hoist a splat of a runtime int out of a loop */
static inline __attribute__((always_inline)) v8i iclamp(v8i l, v8i lo, v8i hi) {
    l = isel(l < lo, lo, l);
    return isel(l > hi, hi, l);
}
static inline __attribute__((always_inline)) int any_lane(v8i m) {
    int r = 0;
    for (int k = 0; k < QC_LANES; ++k) r |= m[k];
    return r != 0;
}

/*
 * make_qkx2_quants (le_degenerate = 0) / make_qkx3_quants with weights (le_degenerate = 1, use_mad = 0).
 * xt/wt: n vectors, lane k = element i of sub-block k. Outputs L (lane-major: L[k*n + i]), scale, the_min.
 */
QC_CLONES
static void qkx_search_lanes(int n, int nmax, const v8f *restrict xt, const v8f *restrict wt, uint8_t *restrict L,
                             float *restrict scale_out, float *restrict the_min_out, float rmin, float rdelta,
                             int nstep, int use_mad, int le_degenerate) {
    v8i Lb[32], La[32];
    v8f min = xt[0], max = xt[0];
    v8f sum_w = wt[0];
    v8f sum_x = sum_w * xt[0];
    for (int i = 1; i < n; ++i) {
        min = vsel(xt[i] < min, xt[i], min);
        max = vsel(xt[i] > max, xt[i], max);
        v8f w = wt[i];
        sum_w += w;
        sum_x += w * xt[i];
    }
    min = vsel(min > vsplat(0.f), vsplat(0.f), min);
    const v8i degenerate = le_degenerate ? (max <= min) : (max == min);
    const v8f fnmax = vsplat((float)nmax);
    const v8i lo = isplat(0), hi = isplat(nmax);
    v8f iscale = fnmax / (max - min);
    v8f scale = vsplat(1.f) / iscale;
    v8f best_error = vsplat(0.f);
    for (int i = 0; i < n; ++i) {
        v8i l = iclamp(vnearest(iscale * (xt[i] - min)), lo, hi);
        Lb[i] = l;
        v8f diff = scale * vtof(l) + min - xt[i];
        diff = use_mad ? vabs(diff) : diff * diff;
        best_error += wt[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (vsplat(rmin + rdelta * is + nmax)) / (max - min);
        v8f sum_l = vsplat(0.f), sum_l2 = vsplat(0.f), sum_xl = vsplat(0.f);
        for (int i = 0; i < n; ++i) {
            v8i l = iclamp(vnearest(iscale * (xt[i] - min)), lo, hi);
            La[i] = l;
            v8f fl = vtof(l);
            v8f w = wt[i];
            sum_l += w * fl;
            sum_l2 += w * fl * fl;
            sum_xl += w * fl * xt[i];
        }
        v8f D = sum_w * sum_l2 - sum_l * sum_l;
        v8i ok = (D > vsplat(0.f)) & ~degenerate;
        if (!any_lane(ok)) continue;
        v8f this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        v8f this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        v8i pos = this_min > vsplat(0.f);
        this_min = vsel(pos, vsplat(0.f), this_min);
        this_scale = vsel(pos, sum_xl / sum_l2, this_scale);
        v8f cur_error = vsplat(0.f);
        for (int i = 0; i < n; ++i) {
            v8f diff = this_scale * vtof(La[i]) + this_min - xt[i];
            diff = use_mad ? vabs(diff) : diff * diff;
            cur_error += wt[i] * diff;
        }
        v8i take = ok & (cur_error < best_error);
        if (!any_lane(take)) continue;
        for (int i = 0; i < n; ++i) Lb[i] = isel(take, La[i], Lb[i]);
        best_error = vsel(take, cur_error, best_error);
        scale = vsel(take, this_scale, scale);
        min = vsel(take, this_min, min);
    }
    for (int k = 0; k < QC_LANES; ++k) {
        if (degenerate[k]) {
            memset(L + k * n, 0, n);
            scale_out[k] = 0.f;
        } else {
            for (int i = 0; i < n; ++i) L[k * n + i] = (uint8_t)Lb[i][k];
            scale_out[k] = scale[k];
        }
        the_min_out[k] = -min[k];
    }
}

/* make_qx_quants(n, nmax, x, L, rmse_type = 1, qw) lane-wise; qw NULL means w = x*x. L is lane-major. */
QC_CLONES
static void qx_search_lanes(int n, int nmax, const v8f *restrict xt, const v8f *restrict qwt, int8_t *restrict L,
                            float *restrict scale_out) {
    v8i Lb[32];
    v8f wt[32];
    v8f max = vsplat(0.f), amax = vsplat(0.f);
    for (int i = 0; i < n; ++i) {
        v8f ax = vabs(xt[i]);
        v8i gt = ax > amax;
        amax = vsel(gt, ax, amax);
        max = vsel(gt, xt[i], max);
        wt[i] = qwt ? qwt[i] : xt[i] * xt[i];
    }
    const v8i zero_block = amax < vsplat(GROUP_MAX_EPS);
    const v8i lo = isplat(-nmax), hi = isplat(nmax - 1);
    const v8f iscale = vsplat((float)-nmax) / max;
    v8f sumlx = vsplat(0.f), suml2 = vsplat(0.f);
    for (int i = 0; i < n; ++i) {
        v8i l = iclamp(vnearest(iscale * xt[i]), lo, hi);
        Lb[i] = l;
        v8f fl = vtof(l);
        sumlx += wt[i] * xt[i] * fl;
        suml2 += wt[i] * fl * fl;
    }
    v8i nz = suml2 != vsplat(0.f);
    v8f scale = vsel(nz, sumlx / suml2, vsplat(0.f));
    v8f best = scale * sumlx;
    /* The 18 candidate scales do not depend on each other's outcome (only on max), so their sums are computed two
       at a time (two independent chains); acceptance is then applied in ggml's order, is = -9 .. 9. */
    static const int cands[18] = {-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    for (int c = 0; c < 18; c += 2) {
        v8i La[2][32];
        v8f slx[2], sl2[2], isc[2];
        for (int p = 0; p < 2; ++p) {
            isc[p] = -vsplat(nmax + 0.1f * cands[c + p]) / max;
            slx[p] = sl2[p] = vsplat(0.f);
        }
        for (int i = 0; i < n; ++i) {
            for (int p = 0; p < 2; ++p) {
                v8i l = iclamp(vnearest(isc[p] * xt[i]), lo, hi);
                La[p][i] = l;
                v8f fl = vtof(l);
                slx[p] += wt[i] * xt[i] * fl;
                sl2[p] += wt[i] * fl * fl;
            }
        }
        for (int p = 0; p < 2; ++p) {
            v8i take = (sl2[p] > vsplat(0.f)) & (slx[p] * slx[p] > best * sl2[p]);
            if (!any_lane(take)) continue;
            for (int i = 0; i < n; ++i) Lb[i] = isel(take, La[p][i], Lb[i]);
            v8f new_scale = slx[p] / sl2[p];
            scale = vsel(take, new_scale, scale);
            best = vsel(take, new_scale * slx[p], best);
        }
    }
    for (int k = 0; k < QC_LANES; ++k) {
        if (zero_block[k]) {
            memset(L + k * n, 0, n);
            scale_out[k] = 0.f;
        } else {
            for (int i = 0; i < n; ++i) L[k * n + i] = (int8_t)(Lb[i][k] + nmax);
            scale_out[k] = scale[k];
        }
    }
}

/* lane k, element i  <-  src[k*n + i] */
static inline __attribute__((always_inline)) void transpose_in(const float *restrict src, int n, v8f *restrict dst) {
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < QC_LANES; ++k) dst[i][k] = src[k * n + i];
}

/* lanes >= nlanes are filled with zeros (an all-zero block: its results are ignored by the caller) */
static inline __attribute__((always_inline)) void transpose_in_n(const float *restrict src, int n, int nlanes,
                                                                 v8f *restrict dst) {
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < QC_LANES; ++k) dst[i][k] = k < nlanes ? src[k * n + i] : 0.f;
}

/* best_index_int8(16, values, x) lane-wise, also returning values[result] as float. The binary search keeps
   values[ml] <= x < values[mu]; with sorted values that is mu = 1 + #{k in 1..14 : values[k] <= x}, followed
   by the same float tie test `x - values[mu-1] < values[mu] - x`. */
static inline __attribute__((always_inline)) v8i vbest_index16(const v8f *restrict vals, v8f tab_lo, v8f tab_hi,
                                                               v8f x, v8f *restrict q) {
    v8i mu = isplat(1);
    for (int k = 1; k < 15; ++k) mu -= (x >= vals[k]);
#if defined(__clang__) /* no variable two-vector shuffle: per-lane table look-ups */
    v8f lo, hi;
    for (int k = 0; k < QC_LANES; ++k) {
        lo[k] = vals[mu[k] - 1][0];
        hi[k] = vals[mu[k]][0];
    }
    (void)tab_lo;
    (void)tab_hi;
#else
    v8f lo = __builtin_shuffle(tab_lo, tab_hi, mu - isplat(1));
    v8f hi = __builtin_shuffle(tab_lo, tab_hi, mu);
#endif
    v8i down = x - lo < hi - x;
    v8i r = isel(down, mu - isplat(1), mu);
    v8f qv = vsel(down, lo, hi);
    v8i top = x >= vals[15], bottom = x <= vals[0];
    r = isel(top, isplat(15), r);
    qv = vsel(top, vals[15], qv);
    *q = vsel(bottom, vals[0], qv);
    return isel(bottom, isplat(0), r);
}

/* The per-block scale search of quantize_row_iq4_nl_impl (ntry = 7) for 8 blocks of 32 in lanes.
   Returns d per lane; lanes whose block has amax < GROUP_MAX_EPS get 0 (ggml: scales[ib] = 0). */
QC_CLONES
static void iq4_search_lanes(const v8f *restrict xt, const v8f *restrict wt, const int8_t *values,
                             float *restrict d_out) {
    v8f vals[16], tab_lo, tab_hi;
    for (int k = 0; k < 16; ++k) vals[k] = vsplat((float)values[k]);
    for (int k = 0; k < 8; ++k) tab_lo[k] = values[k], tab_hi[k] = values[k + 8];
    v8f amax = vsplat(0.f), max = vsplat(0.f);
    for (int j = 0; j < 32; ++j) {
        v8f ax = vabs(xt[j]);
        v8i gt = ax > amax;
        amax = vsel(gt, ax, amax);
        max = vsel(gt, xt[j], max);
    }
    const v8i zero_block = amax < vsplat(GROUP_MAX_EPS);
    v8f d = -max / vals[0];
    v8f id = vsplat(1.f) / d;
    v8f sumqx = vsplat(0.f), sumq2 = vsplat(0.f);
    for (int j = 0; j < 32; ++j) {
        v8f al = id * xt[j];
        v8f q;
        (void)vbest_index16(vals, tab_lo, tab_hi, al, &q);
        v8f w = wt[j];
        sumqx += w * q * xt[j];
        sumq2 += w * q * q;
    }
    d = vsel(sumq2 > vsplat(0.f), sumqx / sumq2, vsplat(0.f));
    v8f best = d * sumqx;
    for (int itry = -7; itry <= 7; ++itry) {
        id = vsplat((float)(itry + values[0])) / max;
        sumqx = sumq2 = vsplat(0.f);
        for (int j = 0; j < 32; ++j) {
            v8f al = id * xt[j];
            v8f q;
            (void)vbest_index16(vals, tab_lo, tab_hi, al, &q);
            v8f w = wt[j];
            sumqx += w * q * xt[j];
            sumq2 += w * q * q;
        }
        v8i take = (sumq2 > vsplat(0.f)) & (sumqx * sumqx > best * sumq2);
        v8f nd = sumqx / sumq2;
        d = vsel(take, nd, d);
        best = vsel(take, nd * sumqx, best);
    }
    for (int k = 0; k < QC_LANES; ++k) d_out[k] = zero_block[k] ? 0.f : d[k];
}

/* L[k*32 + j] = best_index_int8(16, values, id[k] * x[k*32 + j]) for 8 blocks of 32 */
QC_CLONES
static void iq4_assign_lanes(const v8f *restrict xt, const float *restrict id, const int8_t *values,
                             uint8_t *restrict L, int nlanes) {
    v8f vals[16], vid, tab_lo, tab_hi, q;
    for (int k = 0; k < 16; ++k) vals[k] = vsplat((float)values[k]);
    for (int k = 0; k < 8; ++k) tab_lo[k] = values[k], tab_hi[k] = values[k + 8];
    for (int k = 0; k < QC_LANES; ++k) vid[k] = id[k];
    for (int j = 0; j < 32; ++j) {
        v8i l = vbest_index16(vals, tab_lo, tab_hi, vid * xt[j], &q);
        for (int k = 0; k < nlanes; ++k) L[k * 32 + j] = (uint8_t)l[k];
    }
}

/* make_q3_quants(16, nmax, x, L, do_rmse = true) lane-wise (Q3_K reference). A lane whose pass changed nothing
   would change nothing in later passes either (same state, same decisions), so the lanes run until no lane
   changes, as each scalar call breaks on its own. L is lane-major, values biased by nmax. */
QC_CLONES
static void q3_search_lanes(int nmax, const v8f *restrict xt, int8_t *restrict L, float *restrict scale_out) {
    enum { n = 16 };
    v8i Li[n];
    v8f w[n], wx[n];
    v8f max = vsplat(0.f), amax = vsplat(0.f);
    for (int i = 0; i < n; ++i) {
        v8f ax = vabs(xt[i]);
        v8i gt = ax > amax;
        amax = vsel(gt, ax, amax);
        max = vsel(gt, xt[i], max);
    }
    const v8i zero_block = amax < vsplat(GROUP_MAX_EPS);
    const v8i lo = isplat(-nmax), hi = isplat(nmax - 1);
    v8f iscale = vsplat((float)-nmax) / max;
    v8f sumlx = vsplat(0.f), suml2 = vsplat(0.f);
    for (int i = 0; i < n; ++i) {
        v8i l = iclamp(vnearest(iscale * xt[i]), lo, hi);
        Li[i] = l;
        w[i] = xt[i] * xt[i];
        wx[i] = w[i] * xt[i];
        v8f fl = vtof(l);
        sumlx += wx[i] * fl;
        suml2 += w[i] * fl * fl;
    }
    for (int itry = 0; itry < 5; ++itry) {
        v8i changed = isplat(0);
        for (int i = 0; i < n; ++i) {
            v8f fL = vtof(Li[i]);
            v8f slx = sumlx - wx[i] * fL;
            v8f sl2 = suml2 - w[i] * fL * fL;
            v8i new_l = iclamp(vnearest(xt[i] * sl2 / slx), lo, hi);
            v8f fn = vtof(new_l);
            v8f slx2 = slx + wx[i] * fn;
            v8f sl22 = sl2 + w[i] * fn * fn;
            v8i take = (slx > vsplat(0.f)) & (new_l != Li[i]) & (sl22 > vsplat(0.f)) &
                       (slx2 * slx2 * suml2 > sumlx * sumlx * sl22);
            Li[i] = isel(take, new_l, Li[i]);
            sumlx = vsel(take, slx2, sumlx);
            suml2 = vsel(take, sl22, suml2);
            changed |= take;
        }
        if (!any_lane(changed & ~zero_block)) break;
    }
    v8f scale = vsel(suml2 > vsplat(0.f), sumlx / suml2, vsplat(0.f));
    for (int k = 0; k < QC_LANES; ++k) {
        if (zero_block[k]) {
            memset(L + k * n, 0, n);
            scale_out[k] = 0.f;
        } else {
            for (int i = 0; i < n; ++i) L[k * n + i] = (int8_t)(Li[i][k] + nmax);
            scale_out[k] = scale[k];
        }
    }
}

/*
 * qkx_search_lanes for two groups of 8 sub-blocks at once (16 sub-blocks). Each group's state and sums are
 * separate; interleaving the two groups gives the CPU two independent chains of sequential additions
 * (the single-group search is latency bound). xt/wt: group g's element i at [g*n + i]; outputs: group g's
 * lanes at L + 8*n*g, scale_out + 8*g, the_min_out + 8*g.
 */
QC_CLONES
static void qkx_search_lanes2(int n, int nmax, const v8f *restrict xt, const v8f *restrict wt, uint8_t *restrict L,
                              float *restrict scale_out, float *restrict the_min_out, float rmin, float rdelta,
                              int nstep, int use_mad, int le_degenerate) {
    enum { G = 2 };
    v8i Lb[G][32], La[G][32];
    v8f min[G], max[G], sum_w[G], sum_x[G], scale[G], best_error[G], span[G];
    v8i degenerate[G];
    const v8i lo = isplat(0), hi = isplat(nmax);
    const v8f fnmax = vsplat((float)nmax);
    for (int g = 0; g < G; ++g) {
        const v8f *x = xt + g * n, *w = wt + g * n;
        min[g] = x[0];
        max[g] = x[0];
        sum_w[g] = w[0];
        sum_x[g] = sum_w[g] * x[0];
    }
    for (int i = 1; i < n; ++i) {
        for (int g = 0; g < G; ++g) {
            const v8f xi = xt[g * n + i], wi = wt[g * n + i];
            min[g] = vsel(xi < min[g], xi, min[g]);
            max[g] = vsel(xi > max[g], xi, max[g]);
            sum_w[g] += wi;
            sum_x[g] += wi * xi;
        }
    }
    v8f iscale[G];
    for (int g = 0; g < G; ++g) {
        min[g] = vsel(min[g] > vsplat(0.f), vsplat(0.f), min[g]);
        degenerate[g] = le_degenerate ? (max[g] <= min[g]) : (max[g] == min[g]);
        iscale[g] = fnmax / (max[g] - min[g]);
        scale[g] = vsplat(1.f) / iscale[g];
        best_error[g] = vsplat(0.f);
    }
    for (int i = 0; i < n; ++i) {
        for (int g = 0; g < G; ++g) {
            const v8f xi = xt[g * n + i];
            v8i l = iclamp(vnearest(iscale[g] * (xi - min[g])), lo, hi);
            Lb[g][i] = l;
            v8f diff = scale[g] * vtof(l) + min[g] - xi;
            diff = use_mad ? vabs(diff) : diff * diff;
            best_error[g] += wt[g * n + i] * diff;
        }
    }
    for (int is = 0; is <= nstep; ++is) {
        const v8f numer = vsplat(rmin + rdelta * is + nmax);
        v8f sum_l[G], sum_l2[G], sum_xl[G];
        for (int g = 0; g < G; ++g) {
            span[g] = max[g] - min[g];
            iscale[g] = numer / span[g];
            sum_l[g] = sum_l2[g] = sum_xl[g] = vsplat(0.f);
        }
        for (int i = 0; i < n; ++i) {
            for (int g = 0; g < G; ++g) {
                const v8f xi = xt[g * n + i], w = wt[g * n + i];
                v8i l = iclamp(vnearest(iscale[g] * (xi - min[g])), lo, hi);
                La[g][i] = l;
                v8f fl = vtof(l);
                sum_l[g] += w * fl;
                sum_l2[g] += w * fl * fl;
                sum_xl[g] += w * fl * xi;
            }
        }
        v8i ok[G], any_ok = isplat(0);
        v8f this_scale[G], this_min[G], cur_error[G];
        for (int g = 0; g < G; ++g) {
            v8f D = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g];
            ok[g] = (D > vsplat(0.f)) & ~degenerate[g];
            any_ok |= ok[g];
            this_scale[g] = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / D;
            this_min[g] = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / D;
            v8i pos = this_min[g] > vsplat(0.f);
            this_min[g] = vsel(pos, vsplat(0.f), this_min[g]);
            this_scale[g] = vsel(pos, sum_xl[g] / sum_l2[g], this_scale[g]);
            cur_error[g] = vsplat(0.f);
        }
        if (!any_lane(any_ok)) continue;
        for (int i = 0; i < n; ++i) {
            for (int g = 0; g < G; ++g) {
                v8f diff = this_scale[g] * vtof(La[g][i]) + this_min[g] - xt[g * n + i];
                diff = use_mad ? vabs(diff) : diff * diff;
                cur_error[g] += wt[g * n + i] * diff;
            }
        }
        v8i take[G], any_take = isplat(0);
        for (int g = 0; g < G; ++g) {
            take[g] = ok[g] & (cur_error[g] < best_error[g]);
            any_take |= take[g];
        }
        if (!any_lane(any_take)) continue;
        for (int g = 0; g < G; ++g) {
            for (int i = 0; i < n; ++i) Lb[g][i] = isel(take[g], La[g][i], Lb[g][i]);
            best_error[g] = vsel(take[g], cur_error[g], best_error[g]);
            scale[g] = vsel(take[g], this_scale[g], scale[g]);
            min[g] = vsel(take[g], this_min[g], min[g]);
        }
    }
    for (int g = 0; g < G; ++g) {
        uint8_t *Lg = L + QC_LANES * n * g;
        for (int k = 0; k < QC_LANES; ++k) {
            if (degenerate[g][k]) {
                memset(Lg + k * n, 0, n);
                scale_out[QC_LANES * g + k] = 0.f;
            } else {
                for (int i = 0; i < n; ++i) Lg[k * n + i] = (uint8_t)Lb[g][i][k];
                scale_out[QC_LANES * g + k] = scale[g][k];
            }
            the_min_out[QC_LANES * g + k] = -min[g][k];
        }
    }
}
