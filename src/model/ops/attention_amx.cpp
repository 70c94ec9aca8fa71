#include "model/ops/attention_amx.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "model/ops/amx_tiles.h"
#include "model/ops/gemm_bf16.h"
#include "model/ops/kernel_path.h"
#include "model/scratch.h"

// GCC 12 warns inside its own AVX-512 intrinsics (the "undefined" register that
// casts start from) wherever they are inlined; nothing here reads an
// uninitialised value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moefy::ops {

namespace {

constexpr int kStep = 32;  // rows and columns of one block of four C tiles; BF16 per A tile row

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The operand terms of one product, hi·hi' + lo·hi' + hi·lo': A term, B term.
constexpr int kTermA[3] = {0, 1, 0}, kTermB[3] = {0, 0, 1};

// rows [0, tb) of x (f32, row stride ldx, n columns) times `scale`, split into
// hi and lo BF16 rows of ldo elements: out [2][rows][ldo], columns from `col0`
// (those before it, past n, and rows tb .. rows zero).
MOEFY_AMX void split_rows(const float* x, int64_t ldx, int tb, int rows, int n, int col0, float scale, int64_t ldo,
                          uint16_t* out) {
    const __m512 sv = _mm512_set1_ps(scale);
    for (int i = 0; i < rows; ++i) {
        uint16_t* hi = out + size_t(i) * size_t(ldo);
        uint16_t* lo = out + (size_t(rows) + size_t(i)) * size_t(ldo);
        if (i >= tb) {
            std::memset(hi, 0, size_t(ldo) * 2);
            std::memset(lo, 0, size_t(ldo) * 2);
            continue;
        }
        const float* xi = x + size_t(i) * size_t(ldx);
        for (int j = 0; j < col0; ++j) hi[j] = lo[j] = 0;
        for (int j = 0; j < n; j += 16) {
            const int left = n - j;
            const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
            const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xi + j), sv);
            const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
            const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            const __m256i l = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf));
            _mm256_mask_storeu_epi16(hi + col0 + j, m, h);
            _mm256_mask_storeu_epi16(lo + col0 + j, m, l);
        }
        std::memset(hi + col0 + n, 0, size_t(ldo - col0 - n) * 2);
        std::memset(lo + col0 + n, 0, size_t(ldo - col0 - n) * 2);
    }
}

// c[4][16 x 16] (row group r, column group g at [2r + g]) -> out rows [0, rows)
// x columns [0, cols) (row stride ldo).
MOEFY_AMX void store_block(const float (*c)[256], int rows, int cols, float* out, int64_t ldo) {
    for (int g = 0; g < 2; ++g) {
        const int nc = std::min(16, cols - 16 * g);
        if (nc <= 0) break;
        const __mmask16 mask = nc == 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1);
        for (int i = 0; i < rows; ++i)
            _mm512_mask_storeu_ps(out + size_t(i) * size_t(ldo) + 16 * g, mask,
                                  _mm512_loadu_ps(c[2 * (i / 16) + g] + 16 * (i % 16)));
    }
}

// C tiles 0-3 = Σ over the three terms and `steps` steps of 32 along the
// product's inner dimension: A [2 terms][32 rows, row stride lda], advancing
// 32 elements a step; B [2 terms] of 16-pair rows (row stride ldb pairs),
// advancing 16 rows a step; its two column groups 16 pairs apart.
MOEFY_AMX void tile_block(const uint16_t* const* A, int64_t lda, const uint32_t* const* B, int64_t ldb, int steps,
                          float (*c)[256]) {
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
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
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

MOEFY_AMX void amx_attention_scores(const float* q, int64_t ldq, int tb, const uint32_t* kb, int64_t ld, int lo, int nk,
                                    int d, float scale, float* s, int64_t lds) {
    thread_local std::vector<uint16_t> qs_buf;
    const int rows = int(round_up(tb, kStep));
    uint16_t* qs = grow_aligned(qs_buf, size_t(2) * size_t(rows) * size_t(d));  // [2][rows][d]
    split_rows(q, ldq, tb, rows, d, 0, scale, d, qs);
    const size_t term = size_t(d / 2) * size_t(ld);
    amx_configure();
    alignas(64) float c[4][256];
    // keys outer: a block of keys (8 KB) stays in L1 for all the query rows
    for (int n0 = 0; n0 < nk; n0 += kStep)
        for (int m0 = 0; m0 < tb; m0 += kStep) {
            const uint16_t* A[2] = {qs + size_t(m0) * size_t(d), qs + (size_t(rows) + size_t(m0)) * size_t(d)};
            const uint32_t* B[2] = {kb + size_t(lo + n0), kb + term + size_t(lo + n0)};
            tile_block(A, d, B, ld, d / kStep, c);
            store_block(c, std::min(kStep, tb - m0), std::min(kStep, nk - n0), s + size_t(m0) * size_t(lds) + size_t(n0), lds);
        }
    amx_release();
}

MOEFY_AMX void amx_attention_apply(const float* p, int64_t ldp, int tb, const uint32_t* vb, int64_t ld, int lo, int nk,
                                   int d, float* o, int64_t ldo) {
    thread_local std::vector<uint16_t> ps_buf;
    const int shift = lo & 1, lo0 = lo - shift;  // value pairs start at an even key
    const int rows = int(round_up(tb, kStep));
    const int64_t np = round_up(nk + shift, kStep);
    uint16_t* ps = grow_aligned(ps_buf, size_t(2) * size_t(rows) * size_t(np));  // [2][rows][np]
    split_rows(p, ldp, tb, rows, nk, shift, 1.0f, np, ps);
    const size_t term = size_t(ld / 2) * size_t(d);
    amx_configure();
    alignas(64) float c[4][256];
    for (int m0 = 0; m0 < tb; m0 += kStep)
        for (int c0 = 0; c0 < d; c0 += kStep) {
            const uint16_t* A[2] = {ps + size_t(m0) * size_t(np), ps + (size_t(rows) + size_t(m0)) * size_t(np)};
            const uint32_t* B[2] = {vb + size_t(lo0 / 2) * size_t(d) + size_t(c0),
                                    vb + term + size_t(lo0 / 2) * size_t(d) + size_t(c0)};
            tile_block(A, np, B, d, int(np / kStep), c);
            store_block(c, std::min(kStep, tb - m0), kStep, o + size_t(m0) * size_t(ldo) + size_t(c0), ldo);
        }
    amx_release();
}

}  // namespace moefy::ops
