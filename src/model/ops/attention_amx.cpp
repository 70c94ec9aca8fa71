#include "model/ops/attention_amx.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "model/ops/amx_tiles.h"
#include "model/ops/gemm_bf16.h"
#include "model/ops/kernel_path.h"
#include "model/scratch.h"
#include "model/vec_math.h"

// GCC 12 warns inside its own AVX-512 intrinsics (the "undefined" register that
// casts start from) wherever they are inlined; nothing here reads an
// uninitialised value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moefy::ops {

namespace {

constexpr int kStep = 32;  // rows and columns of one block of four C tiles; BF16 per A tile row
constexpr int kMaxRows = 128;  // query rows per call

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The operand terms of one product, hi·hi' + lo·hi' + hi·lo': A term, B term.
constexpr int kTermA[3] = {0, 1, 0}, kTermB[3] = {0, 0, 1};

// v -> BF16 hi = bf16(v) and lo = bf16(v - hi), 16 lanes each.
MOEFY_AMX inline void split16(__m512 v, uint16_t* hi, uint16_t* lo) {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), h);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf)));
}

// rows [0, tb) of x (f32, row stride ldx, d columns) times `scale`, split into
// hi and lo BF16 rows: out [2][rows][d], rows tb .. rows zero.
MOEFY_AMX void split_rows(const float* x, int64_t ldx, int tb, int rows, int d, float scale, uint16_t* out) {
    const __m512 sv = _mm512_set1_ps(scale);
    for (int i = 0; i < rows; ++i) {
        uint16_t* hi = out + size_t(i) * size_t(d);
        uint16_t* lo = out + (size_t(rows) + size_t(i)) * size_t(d);
        if (i >= tb) {
            std::memset(hi, 0, size_t(d) * 2);
            std::memset(lo, 0, size_t(d) * 2);
            continue;
        }
        for (int j = 0; j < d; j += 16)
            split16(_mm512_mul_ps(_mm512_loadu_ps(x + size_t(i) * size_t(ldx) + size_t(j)), sv), hi + j, lo + j);
    }
}

// Lanes j0 .. j0+15 that fall in [a, b).
inline __mmask16 lanes_in(int j0, int a, int b) {
    const int from = std::clamp(a - j0, 0, 16), to = std::clamp(b - j0, 0, 16);
    return __mmask16(((1u << to) - 1) & ~((1u << from) - 1));
}

// Row s[0, n) (n a multiple of 16) -> e = exp(s - max) on [a, b), 0 elsewhere,
// split into BF16 rows hi, lo; returns 1 / Σ e (0 when a >= b).
MOEFY_AMX float exp_split_row(const float* s, int n, int a, int b, uint16_t* hi, uint16_t* lo) {
    if (a >= b) {
        std::memset(hi, 0, size_t(n) * 2);
        std::memset(lo, 0, size_t(n) * 2);
        return 0.0f;
    }
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int j = a & ~15; j < b; j += 16) mx = _mm512_mask_max_ps(mx, lanes_in(j, a, b), mx, _mm512_loadu_ps(s + j));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        const __mmask16 in = lanes_in(j, a, b);
        if (!in) {
            std::memset(hi + j, 0, 32);
            std::memset(lo + j, 0, 32);
            continue;
        }
        const __m512 e = _mm512_maskz_mov_ps(in, vmath::exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), m)));
        sum = _mm512_add_ps(sum, e);
        split16(e, hi + j, lo + j);
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

// c [32 x 32] (row stride ldc) = Σ over the three terms and `steps` steps of
// 32 along the product's inner dimension: A [2 terms][32 rows, row stride
// lda], advancing 32 elements a step; B [2 terms] of 16-pair rows (row stride
// ldb pairs), advancing 16 rows a step; its two column groups 16 pairs apart.
MOEFY_AMX void tile_block(const uint16_t* const* A, int64_t lda, const uint32_t* const* B, int64_t ldb, int steps,
                          float* c, int64_t ldc) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int t = 0; t < 3; ++t) {
        const uint16_t* a = A[kTermA[t]];
        const uint32_t* b = B[kTermB[t]];
        for (int s = 0; s < steps; ++s) {
            _tile_loadd(4, a + size_t(s) * kStep, lda * 2);
            _tile_loadd(6, b + size_t(s) * 16 * size_t(ldb), ldb * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(7, b + size_t(s) * 16 * size_t(ldb) + 16, ldb * 4);
            _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(5, a + 16 * size_t(lda) + size_t(s) * kStep, lda * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c, ldc * 4);
    _tile_stored(1, c + 16, ldc * 4);
    _tile_stored(2, c + 16 * size_t(ldc), ldc * 4);
    _tile_stored(3, c + 16 * size_t(ldc) + 16, ldc * 4);
}

}  // namespace

bool attention_amx_serves(int d) {
    return kernel_path() == KernelPath::Amx && !exact_activations() && d > 0 && d % kStep == 0;
}

// Every key range the callers ask for, [lo, lo + nk) with lo + nk <= S, read
// as whole steps of 32 (from lo rounded down to even for the values) stays below S + 32.
int64_t amx_kv_stride(int S) { return round_up(S, kStep) + kStep; }

size_t amx_kv_size(int S, int d) { return size_t(2) * size_t(d / 2) * size_t(amx_kv_stride(S)); }

void amx_prepare_kv(const float* k, const float* v, int64_t ld_in, int S, int d, uint32_t* kb, uint32_t* vb) {
    const int64_t ld = amx_kv_stride(S);
    const int dp = d / 2;
    const size_t term = size_t(dp) * size_t(ld);
    // one row (key) of k or v as [2 terms][d/2] pairs; zero past S
    std::vector<uint32_t> buf(size_t(4) * size_t(dp));
    auto split = [&](const float* x, int j, uint32_t* out) {
        uint32_t* t[2] = {out, out + dp};
        if (j < S)
            to_bf16_terms(x + size_t(j) * size_t(ld_in), d, dp, 2, t);
        else
            std::fill(out, out + 2 * dp, 0u);
    };
    uint32_t* a = buf.data();
    uint32_t* b = buf.data() + 2 * dp;
    for (int j = 0; j < ld; ++j) {
        split(k, j, a);
        for (int t = 0; t < 2; ++t)
            for (int c = 0; c < dp; ++c) kb[size_t(t) * term + size_t(c) * size_t(ld) + size_t(j)] = a[t * dp + c];
    }
    for (int j = 0; j < ld / 2; ++j) {
        split(v, 2 * j, a);
        split(v, 2 * j + 1, b);
        for (int t = 0; t < 2; ++t) {
            const uint16_t* even = reinterpret_cast<const uint16_t*>(a + t * dp);  // key 2j: d BF16
            const uint16_t* odd = reinterpret_cast<const uint16_t*>(b + t * dp);   // key 2j + 1
            uint32_t* dst = vb + size_t(t) * term + size_t(j) * size_t(d);
            for (int c = 0; c < d; ++c) dst[c] = uint32_t(even[c]) | uint32_t(odd[c]) << 16;
        }
    }
}

MOEFY_AMX void amx_attention_block(const float* q, int64_t ldq, int tb, const uint32_t* kb, const uint32_t* vb,
                                   int64_t ld, int lo, int nk, int d, float scale, const int* key_lo, const int* key_hi,
                                   float* o, int64_t ldo) {
    if (tb > kMaxRows) fail("amx_attention_block: {} query rows, at most {}", tb, kMaxRows);
    thread_local std::vector<uint16_t> qs_buf, ps_buf;
    thread_local std::vector<float> s_buf;
    // keys [k0, k0 + np): from an even key (value pairs), whole steps
    const int k0 = lo & ~1;
    const int np = int(round_up(lo + nk - k0, kStep));
    const int rows = int(round_up(tb, kStep));
    uint16_t* qs = grow_aligned(qs_buf, size_t(2) * size_t(rows) * size_t(d));  // [2][rows][d]
    uint16_t* ps = grow_aligned(ps_buf, size_t(2) * size_t(rows) * size_t(np));  // [2][rows][np]
    float* s = grow_aligned(s_buf, size_t(rows) * size_t(np));                   // [rows][np] scores
    split_rows(q, ldq, tb, rows, d, scale, qs);
    const size_t kterm = size_t(d / 2) * size_t(ld), vterm = size_t(ld / 2) * size_t(d);
    amx_configure();
    // keys outer: a block of keys (8 KB) stays in L1 for all the query rows
    for (int n0 = 0; n0 < np; n0 += kStep)
        for (int m0 = 0; m0 < rows; m0 += kStep) {
            const uint16_t* A[2] = {qs + size_t(m0) * size_t(d), qs + (size_t(rows) + size_t(m0)) * size_t(d)};
            const uint32_t* B[2] = {kb + size_t(k0 + n0), kb + kterm + size_t(k0 + n0)};
            tile_block(A, d, B, ld, d / kStep, s + size_t(m0) * size_t(np) + size_t(n0), np);
        }
    float inv_sum[kMaxRows];
    for (int i = 0; i < rows; ++i) {
        uint16_t* hi = ps + size_t(i) * size_t(np);
        uint16_t* lw = ps + (size_t(rows) + size_t(i)) * size_t(np);
        const float r = exp_split_row(s + size_t(i) * size_t(np), np, i < tb ? key_lo[i] - k0 : 0, i < tb ? key_hi[i] - k0 : 0, hi, lw);
        if (i < tb) inv_sum[i] = r;
    }
    alignas(64) float c[kStep * kStep];
    for (int m0 = 0; m0 < rows; m0 += kStep) {
        const int mr = std::min(kStep, tb - m0);
        for (int c0 = 0; c0 < d; c0 += kStep) {
            const uint16_t* A[2] = {ps + size_t(m0) * size_t(np), ps + (size_t(rows) + size_t(m0)) * size_t(np)};
            const uint32_t* B[2] = {vb + size_t(k0 / 2) * size_t(d) + size_t(c0), vb + vterm + size_t(k0 / 2) * size_t(d) + size_t(c0)};
            tile_block(A, np, B, d, np / kStep, c, kStep);
            for (int i = 0; i < mr; ++i) {
                const __m512 iv = _mm512_set1_ps(inv_sum[m0 + i]);
                float* out = o + size_t(m0 + i) * size_t(ldo) + size_t(c0);
                _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_load_ps(c + i * kStep), iv));
                _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_load_ps(c + i * kStep + 16), iv));
            }
        }
    }
    amx_release();
}

}  // namespace moefy::ops
