#include "model/ops/gemm_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>
#include <vector>

#include "common/error.h"
#include "io/dtype.h"
#include "common/parallel.h"
#include "model/ops/amx_tiles.h"
#include "model/scratch.h"

// GCC 12 warns inside its own AVX-512 intrinsics (the "undefined" register that
// casts and reductions start from) wherever they are inlined; nothing here reads
// an uninitialised value.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moefy::ops {

namespace {

constexpr int kPanel = 16;                      // rows per panel
constexpr int kPanels = int(kBlockRows / kPanel);  // panels per block
// Products with fewer multiply-adds stay on one thread.
constexpr int64_t kParallelMinWork = int64_t(1) << 20;

// Rows [n0, n0 + rows) of W [N, K] -> panels of [KP][16] 32-bit pairs (KP >=
// (K+1)/2); rows past `rows`, the pad element of an odd K and pairs past K are
// zero. panels: how many to write (at least enough for `rows`).
void pack_block(const uint16_t* W, int64_t n0, int64_t rows, int64_t K, int64_t KP, uint32_t* dst, int panels = 0) {
    const int64_t full = K / 2;
    panels = std::max(panels, int((rows + kPanel - 1) / kPanel));
    for (int p = 0; p < panels; ++p) {
        uint32_t* P = dst + size_t(p) * size_t(KP) * kPanel;
        const int64_t r0 = n0 + int64_t(p) * kPanel;
        const int nr = int(std::clamp<int64_t>(n0 + rows - r0, 0, kPanel));
        if (nr < kPanel || KP > (K + 1) / 2) std::memset(P, 0, size_t(KP) * kPanel * 4);
        // tiles of 16 pairs so that the 16 strided writes stay in L1
        for (int64_t k0 = 0; k0 < full; k0 += 16) {
            const int64_t k1 = std::min(full, k0 + 16);
            for (int j = 0; j < nr; ++j) {
                const uint16_t* row = W + size_t(r0 + j) * size_t(K);
                for (int64_t kp = k0; kp < k1; ++kp) {
                    uint32_t v;
                    std::memcpy(&v, row + 2 * kp, 4);
                    P[size_t(kp) * kPanel + j] = v;
                }
            }
        }
        if (K % 2 != 0)
            for (int j = 0; j < nr; ++j) P[size_t(full) * kPanel + j] = W[size_t(r0 + j) * size_t(K) + size_t(K - 1)];
    }
}

std::vector<uint32_t>& pack_scratch() {
    thread_local std::vector<uint32_t> buf;
    return buf;
}

// The row blocks of all products of one call, end to end, so that the threads
// share them in one parallel region: global block b is block b - first[i] of
// product i.
struct BlockList {
    static constexpr int kMax = 4;
    int64_t first[kMax + 1] = {};
    int count = 0;
    BlockList(const Bf16Product* ps, int n, int64_t rows_per_block) : count(n) {
        if (n > kMax) fail("gemm_bf16: {} products in one call (at most {})", n, kMax);
        for (int i = 0; i < n; ++i) first[i + 1] = first[i] + (ps[i].N + rows_per_block - 1) / rows_per_block;
    }
    int64_t total() const { return first[count]; }
    // product of global block b, and b's index within it
    std::pair<int, int64_t> locate(int64_t b) const {
        int i = 0;
        while (b >= first[i + 1]) ++i;
        return {i, b - first[i]};
    }
};

int64_t total_rows(const Bf16Product* ps, int n) {
    int64_t r = 0;
    for (int i = 0; i < n; ++i) r += ps[i].N;
    return r;
}

// ---- AVX512-BF16 -------------------------------------------------------------------

#define MOEFY_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

MOEFY_AVX512BF16 inline __m512 bf16_lanes_to_f32(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

}  // namespace

MOEFY_AVX512BF16 void to_bf16_terms(const float* x, int64_t K, int64_t KPa, int terms, uint32_t* const* out) {
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 a = _mm512_loadu_ps(x + k), b = _mm512_loadu_ps(x + k + 16);
        for (int j = 0; j < terms; ++j) {
            const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);
            _mm512_storeu_si512(out[j] + k / 2, h);
            a = _mm512_sub_ps(a, bf16_lanes_to_f32(_mm512_castsi512_si256(h)));
            b = _mm512_sub_ps(b, bf16_lanes_to_f32(_mm512_extracti64x4_epi64(h, 1)));
        }
    }
    for (; k < 2 * KPa; k += 2) {
        float a = k < K ? x[k] : 0.0f, b = k + 1 < K ? x[k + 1] : 0.0f;
        for (int j = 0; j < terms; ++j) {
            const uint16_t ha = f32_to_bf16(a), hb = f32_to_bf16(b);
            out[j][k / 2] = uint32_t(ha) | uint32_t(hb) << 16;
            a -= bf16_to_f32(ha), b -= bf16_to_f32(hb);
        }
    }
}

namespace {

// y[MR, NP·16] (+)= x[MR rows of KP pairs] · panels; cols: valid columns (≤ NP·16).
template <int MR, int NP, int TERMS>
MOEFY_AVX512BF16 void kernel_avx512(const uint32_t* const* xt, int64_t ldx, const uint32_t* P, int64_t KP, float* y,
                                    int64_t ldy, int cols, bool accumulate) {
    __m512 acc[MR][NP];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_setzero_ps();
    const size_t pstride = size_t(KP) * kPanel;
    for (int64_t kp = 0; kp < KP; ++kp) {
        __m512bh w[NP];
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) w[p] = (__m512bh)_mm512_loadu_si512(P + p * pstride + size_t(kp) * kPanel);
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 3
            for (int j = 0; j < TERMS; ++j) {
                const __m512bh b = (__m512bh)_mm512_set1_epi32(int(xt[j][m * ldx + kp]));
#pragma GCC unroll 4
                for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_dpbf16_ps(acc[m][p], w[p], b);
            }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) {
            const int c = cols - p * kPanel;
            if (c <= 0) break;
            const __mmask16 mask = c >= 16 ? __mmask16(0xffff) : __mmask16((1u << c) - 1);
            float* out = y + m * ldy + p * kPanel;
            __m512 v = acc[m][p];
            if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out));
            _mm512_mask_storeu_ps(out, mask, v);
        }
}

using Avx512Kernel = void (*)(const uint32_t* const*, int64_t, const uint32_t*, int64_t, float*, int64_t, int, bool);

template <int MR, int TERMS>
Avx512Kernel pick_np(int np) {
    switch (np) {
        case 1: return kernel_avx512<MR, 1, TERMS>;
        case 2: return kernel_avx512<MR, 2, TERMS>;
        case 3: return kernel_avx512<MR, 3, TERMS>;
        default: return kernel_avx512<MR, 4, TERMS>;
    }
}
template <int TERMS>
Avx512Kernel pick_mr(int mr, int np) {
    switch (mr) {
        case 1: return pick_np<1, TERMS>(np);
        case 2: return pick_np<2, TERMS>(np);
        case 3: return pick_np<3, TERMS>(np);
        case 4: return pick_np<4, TERMS>(np);
        case 5: return pick_np<5, TERMS>(np);
        default: return pick_np<6, TERMS>(np);
    }
}
Avx512Kernel pick_avx512(int terms, int mr, int np) { return terms == 1 ? pick_mr<1>(mr, np) : pick_mr<3>(mr, np); }
constexpr int kMrAvx512 = 6;

// The activation terms of one call, [terms][Tpad, KPa]; used only by the
// calling (pool owner) thread, filled in parallel.
struct ActTerms {
    std::vector<uint32_t> buf;
    uint32_t* t[3] = {};
};
ActTerms& act_scratch() {
    static ActTerms s;
    return s;
}

// Converts x [T, K] into `terms` BF16 pair rows [Tpad, KPa] (rows past T zero).
const uint32_t* const* convert_activations(const float* x, int T, int Tpad, int64_t K, int64_t KPa, int terms, bool par) {
    ActTerms& s = act_scratch();
    const size_t per = size_t(Tpad) * size_t(KPa);
    uint32_t* base = grow(s.buf, per * size_t(terms));
    for (int j = 0; j < terms; ++j) s.t[j] = base + per * size_t(j);
    parallel_for_each(
        Tpad,
        [&](int64_t t) {
            uint32_t* rows[3];
            for (int j = 0; j < terms; ++j) rows[j] = s.t[j] + size_t(t) * size_t(KPa);
            if (t < T)
                to_bf16_terms(x + size_t(t) * size_t(K), K, KPa, terms, rows);
            else
                for (int j = 0; j < terms; ++j) std::fill(rows[j], rows[j] + KPa, 0u);
        },
        par && Tpad > 1);
    return s.t;
}

int activation_terms() { return exact_activations() ? 3 : 1; }

void gemm_avx512(const float* x, int T, int64_t K, const Bf16Product* ps, int count, bool accumulate) {
    const int64_t KP = (K + 1) / 2;
    const int terms = activation_terms();
    const bool par = int64_t(T) * total_rows(ps, count) * K >= kParallelMinWork;
    const uint32_t* const* xt = convert_activations(x, T, T, K, KP, terms, par);
    const BlockList bl(ps, count, kBlockRows);
    parallel_for_each(
        bl.total(),
        [&](int64_t gb) {
            const auto [i, b] = bl.locate(gb);
            const uint16_t* W = ps[i].W;
            const int64_t N = ps[i].N, ldy = ps[i].ldy;
            float* y = ps[i].y;
            const int64_t n0 = b * kBlockRows, rows = std::min(kBlockRows, N - n0);
            const int np = int((rows + kPanel - 1) / kPanel);
            uint32_t* P = grow(pack_scratch(), size_t(np) * size_t(KP) * kPanel);
            pack_block(W, n0, rows, K, KP, P);
            for (int m0 = 0; m0 < T; m0 += kMrAvx512) {
                const int mr = std::min(kMrAvx512, T - m0);
                const uint32_t* xm[3];
                for (int j = 0; j < terms; ++j) xm[j] = xt[j] + size_t(m0) * size_t(KP);
                pick_avx512(terms, mr, np)(xm, KP, P, KP, y + size_t(m0) * ldy + n0, ldy, int(rows), accumulate);
            }
        },
        par && bl.total() > 1);
}

// ---- AMX-BF16 ------------------------------------------------------------------------
//
// The weights are the A operand: a tile is 16 rows of W x 32 k (64 bytes a
// row), which is W as stored, loaded with W's row stride; no packing. The
// activations are the B operand, 16 pairs x 16 tokens in the pair layout of
// tdpbf16ps, prepared once per call. A C tile is then y's transpose [16 W rows]
// [16 tokens]; it is transposed in registers on the way out. Packing W cost
// about as much as the products themselves when an expert sees ~128 tokens.

constexpr int kAmxRows = 32;    // W rows per block (two A tiles)
constexpr int kAmxTokens = 32;  // tokens per step (two B tiles)

// out[i] = column i of the 16 x 16 matrix src (row stride lds, 32-bit elements).
MOEFY_AMX inline void transpose16(const float* src, int64_t lds, __m512 out[16]) {
    __m512 b[16], c[16];
    for (int i = 0; i < 16; i += 2) {
        const __m512 r0 = _mm512_loadu_ps(src + size_t(i) * size_t(lds)), r1 = _mm512_loadu_ps(src + size_t(i + 1) * size_t(lds));
        b[i] = _mm512_unpacklo_ps(r0, r1), b[i + 1] = _mm512_unpackhi_ps(r0, r1);
    }
    // c[4g + r], 128-bit lane L: column 4L + r of rows 4g .. 4g+3
    for (int g = 0; g < 4; ++g) {
        const __m512d b0 = _mm512_castps_pd(b[4 * g]), b1 = _mm512_castps_pd(b[4 * g + 1]);
        const __m512d b2 = _mm512_castps_pd(b[4 * g + 2]), b3 = _mm512_castps_pd(b[4 * g + 3]);
        c[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(b0, b2));
        c[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(b0, b2));
        c[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b1, b3));
        c[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b1, b3));
    }
    for (int r = 0; r < 4; ++r) {
        const __m512 d0 = _mm512_shuffle_f32x4(c[r], c[4 + r], 0x88), e0 = _mm512_shuffle_f32x4(c[r], c[4 + r], 0xdd);
        const __m512 d1 = _mm512_shuffle_f32x4(c[8 + r], c[12 + r], 0x88), e1 = _mm512_shuffle_f32x4(c[8 + r], c[12 + r], 0xdd);
        out[r] = _mm512_shuffle_f32x4(d0, d1, 0x88);
        out[8 + r] = _mm512_shuffle_f32x4(d0, d1, 0xdd);
        out[4 + r] = _mm512_shuffle_f32x4(e0, e1, 0x88);
        out[12 + r] = _mm512_shuffle_f32x4(e0, e1, 0xdd);
    }
}

// The activation terms of one call in the B layout: [terms][Tpad/16][KPa][16]
// pairs (token columns past T and pairs past K zero); used only by the calling
// (pool owner) thread, filled in parallel.
ActTerms& amx_act_scratch() {
    static ActTerms s;
    return s;
}

// Tokens g·16 .. g·16+15 of x into the B layout of every term.
MOEFY_AMX void amx_activation_group(const float* x, int T, int64_t g, int64_t K, int64_t KPa, int terms,
                                    uint32_t* const* dst) {
    thread_local std::vector<uint32_t> rows_buf;  // [terms][16 tokens][KPa], token-major
    uint32_t* rows = grow(rows_buf, size_t(terms) * 16 * size_t(KPa));
    for (int i = 0; i < 16; ++i) {
        const int64_t t = g * 16 + i;
        uint32_t* r[3];
        for (int j = 0; j < terms; ++j) r[j] = rows + (size_t(j) * 16 + size_t(i)) * size_t(KPa);
        if (t < T)
            to_bf16_terms(x + size_t(t) * size_t(K), K, KPa, terms, r);
        else
            for (int j = 0; j < terms; ++j) std::fill(r[j], r[j] + KPa, 0u);
    }
    for (int j = 0; j < terms; ++j) {
        const float* src = reinterpret_cast<const float*>(rows + size_t(j) * 16 * size_t(KPa));
        float* out = reinterpret_cast<float*>(dst[j] + size_t(g) * 16 * size_t(KPa));
        __m512 col[16];
        for (int64_t kc = 0; kc < KPa; kc += 16) {
            transpose16(src + kc, KPa, col);
            for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + size_t(kc + i) * 16, col[i]);
        }
    }
}

const uint32_t* const* amx_activations(const float* x, int T, int Tpad, int64_t K, int64_t KPa, int terms, bool par) {
    ActTerms& s = amx_act_scratch();
    const size_t per = size_t(Tpad) * size_t(KPa);
    uint32_t* base = grow(s.buf, per * size_t(terms));
    for (int j = 0; j < terms; ++j) s.t[j] = base + per * size_t(j);
    parallel_for_each(
        Tpad / 16, [&](int64_t g) { amx_activation_group(x, T, g, K, KPa, terms, s.t); }, par && Tpad > 16);
    return s.t;
}

// y[m0 .. m0+32 (those < T), n0 .. n0+cols] (+)= x · W block: A: 32 rows of W
// (row stride lda elements, KPa pairs readable on each), xb: the B-layout terms.
MOEFY_AMX void amx_block(const uint16_t* A, int64_t lda, const uint32_t* const* xb, int terms, int m0, int T,
                         int64_t KPa, float* y, int64_t ldy, int cols, bool accumulate) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const size_t group = size_t(16) * size_t(KPa);  // one B column group of 16 tokens
    for (int64_t kc = 0; kc < KPa; kc += 16) {
        // each load just before its first product, so that loads overlap the
        // products before them (bench_gemm: 15-20% over loading all four first)
        _tile_loadd(4, A + 2 * size_t(kc), lda * 2);
        for (int j = 0; j < terms; ++j) {
            const uint32_t* B = xb[j] + size_t(m0 / 16) * group + size_t(kc) * 16;
            _tile_loadd(6, B, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(7, B + group, 64);
            _tile_dpbf16ps(1, 4, 7);
            if (j == 0) _tile_loadd(5, A + 16 * size_t(lda) + 2 * size_t(kc), lda * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    alignas(64) float c[4][16 * 16];  // [W-row tile * 2 + token tile][16 W rows][16 tokens]
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
    for (int wr = 0; wr < 2; ++wr) {
        const int nc = std::min(16, cols - wr * 16);
        if (nc <= 0) break;
        const __mmask16 mask = nc == 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1);
        for (int tc = 0; tc < 2; ++tc) {
            const int nt = std::min(16, T - m0 - tc * 16);
            if (nt <= 0) break;
            __m512 col[16];
            transpose16(c[wr * 2 + tc], 16, col);
            for (int i = 0; i < nt; ++i) {
                float* out = y + size_t(m0 + tc * 16 + i) * size_t(ldy) + wr * 16;
                __m512 v = col[i];
                if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out));
                _mm512_mask_storeu_ps(out, mask, v);
            }
        }
    }
}

void gemm_amx(const float* x, int T, int64_t K, const Bf16Product* ps, int count, bool accumulate) {
    const int64_t KPa = ((K + 1) / 2 + 15) / 16 * 16;  // pairs, padded to whole tiles
    const int Tpad = (T + kAmxTokens - 1) / kAmxTokens * kAmxTokens;
    const int terms = activation_terms();
    const bool par = int64_t(T) * total_rows(ps, count) * K >= kParallelMinWork;
    const uint32_t* const* xb = amx_activations(x, T, Tpad, K, KPa, terms, par);
    const BlockList bl(ps, count, kAmxRows);
    const int64_t blocks = bl.total();
    parallel_run(
        [&](int th, int P) {
            amx_configure();
            for (int64_t gb = blocks * th / P; gb < blocks * (th + 1) / P; ++gb) {
                const auto [i, b] = bl.locate(gb);
                const uint16_t* W = ps[i].W;
                const int64_t N = ps[i].N;
                const int64_t n0 = b * kAmxRows, rows = std::min<int64_t>(kAmxRows, N - n0);
                // W's own rows where whole tiles fit; else a zero-padded copy of the block
                const uint16_t* A = W + size_t(n0) * size_t(K);
                int64_t lda = K;
                if (rows < kAmxRows || K != 2 * KPa) {
                    lda = 2 * KPa;
                    uint16_t* pad = reinterpret_cast<uint16_t*>(grow(pack_scratch(), size_t(kAmxRows) * size_t(KPa)));
                    std::memset(pad, 0, size_t(kAmxRows) * size_t(lda) * 2);
                    for (int64_t r = 0; r < rows; ++r) std::memcpy(pad + size_t(r) * size_t(lda), A + size_t(r) * size_t(K), size_t(K) * 2);
                    A = pad;
                }
                for (int m0 = 0; m0 < T; m0 += kAmxTokens)
                    amx_block(A, lda, xb, terms, m0, T, KPa, ps[i].y + n0, ps[i].ldy, int(rows), accumulate);
            }
            amx_release();
        },
        par && blocks > 1);
}

// ---- AVX2 / FMA ---------------------------------------------------------------------

#define MOEFY_AVX2 __attribute__((target("avx2,fma")))

// y[MR, 16] (+)= x[MR, 2·KP] (f32, row stride ldx) · one panel.
template <int MR>
MOEFY_AVX2 void kernel_avx2(const float* x, int64_t ldx, const uint32_t* P, int64_t KP, float* y, int64_t ldy, int cols,
                            bool accumulate) {
    __m256 acc[MR][2];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) acc[m][0] = _mm256_setzero_ps(), acc[m][1] = _mm256_setzero_ps();
    const __m256i odd_mask = _mm256_set1_epi32(int(0xffff0000u));
    for (int64_t kp = 0; kp < KP; ++kp) {
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(P + size_t(kp) * kPanel));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(P + size_t(kp) * kPanel + 8));
        const __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, odd_mask));
        const __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, odd_mask));
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
            const __m256 a = _mm256_broadcast_ss(x + m * ldx + 2 * kp), b = _mm256_broadcast_ss(x + m * ldx + 2 * kp + 1);
            acc[m][0] = _mm256_fmadd_ps(o0, b, _mm256_fmadd_ps(e0, a, acc[m][0]));
            acc[m][1] = _mm256_fmadd_ps(o1, b, _mm256_fmadd_ps(e1, a, acc[m][1]));
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
        float* out = y + m * ldy;
        if (cols >= 16) {
            __m256 r0 = acc[m][0], r1 = acc[m][1];
            if (accumulate) r0 = _mm256_add_ps(r0, _mm256_loadu_ps(out)), r1 = _mm256_add_ps(r1, _mm256_loadu_ps(out + 8));
            _mm256_storeu_ps(out, r0);
            _mm256_storeu_ps(out + 8, r1);
        } else {
            alignas(32) float tmp[16];
            _mm256_store_ps(tmp, acc[m][0]);
            _mm256_store_ps(tmp + 8, acc[m][1]);
            for (int c = 0; c < cols; ++c) out[c] = accumulate ? out[c] + tmp[c] : tmp[c];
        }
    }
}

using Avx2Kernel = void (*)(const float*, int64_t, const uint32_t*, int64_t, float*, int64_t, int, bool);
Avx2Kernel pick_avx2(int mr) {
    switch (mr) {
        case 1: return kernel_avx2<1>;
        case 2: return kernel_avx2<2>;
        case 3: return kernel_avx2<3>;
        default: return kernel_avx2<4>;
    }
}
constexpr int kMrAvx2 = 4;

std::vector<float>& padded_x() {
    static std::vector<float> v;  // used only by the calling thread
    return v;
}

void gemm_avx2(const float* x, int T, int64_t K, const Bf16Product* ps, int count, bool accumulate) {
    const int64_t KP = (K + 1) / 2;
    int64_t ldx = K;
    if (K % 2 != 0) {  // the kernel reads x in pairs: pad each row with a zero
        float* xp = grow(padded_x(), size_t(T) * size_t(2 * KP));
        for (int t = 0; t < T; ++t) {
            std::copy_n(x + size_t(t) * K, K, xp + size_t(t) * 2 * KP);
            xp[size_t(t) * 2 * KP + K] = 0.0f;
        }
        x = xp, ldx = 2 * KP;
    }
    const bool par = int64_t(T) * total_rows(ps, count) * K >= kParallelMinWork;
    const BlockList bl(ps, count, kBlockRows);
    parallel_for_each(
        bl.total(),
        [&](int64_t gb) {
            const auto [i, b] = bl.locate(gb);
            const int64_t N = ps[i].N, ldy = ps[i].ldy;
            float* y = ps[i].y;
            const int64_t n0 = b * kBlockRows, rows = std::min(kBlockRows, N - n0);
            const int np = int((rows + kPanel - 1) / kPanel);
            uint32_t* P = grow(pack_scratch(), size_t(np) * size_t(KP) * kPanel);
            pack_block(ps[i].W, n0, rows, K, KP, P);
            for (int m0 = 0; m0 < T; m0 += kMrAvx2) {
                const int mr = std::min(kMrAvx2, T - m0);
                const Avx2Kernel k = pick_avx2(mr);
                for (int p = 0; p < np; ++p)
                    k(x + size_t(m0) * ldx, ldx, P + size_t(p) * size_t(KP) * kPanel, KP,
                      y + size_t(m0) * ldy + n0 + p * kPanel, ldy, int(std::min<int64_t>(kPanel, rows - p * kPanel)),
                      accumulate);
            }
        },
        par && bl.total() > 1);
}

}  // namespace

void gemm_bf16(KernelPath path, const float* x, int T, const uint16_t* W, int64_t N, int64_t K, float* y, int64_t ldy,
               bool accumulate) {
    const Bf16Product p{W, N, y, ldy};
    gemm_bf16_multi(path, x, T, K, &p, 1, accumulate);
}

void gemm_bf16_multi(KernelPath path, const float* x, int T, int64_t K, const Bf16Product* ps, int count, bool accumulate) {
    if (T <= 0 || total_rows(ps, count) == 0) return;
    switch (path) {
        case KernelPath::Amx: gemm_amx(x, T, K, ps, count, accumulate); return;
        case KernelPath::Avx512Bf16: gemm_avx512(x, T, K, ps, count, accumulate); return;
        case KernelPath::Avx2: gemm_avx2(x, T, K, ps, count, accumulate); return;
        case KernelPath::Sgemm: break;
    }
    fail("gemm_bf16: kernel path {} has no BF16 micro-kernel", kernel_path_name(path));
}

int64_t bf16_row_stride(int64_t K) { return 2 * ((K + 1) / 2); }

void round_rows_to_bf16(const float* x, int T, int64_t K, uint16_t* out) {
    const int64_t KP = (K + 1) / 2;
    for (int t = 0; t < T; ++t) {
        uint32_t* row = reinterpret_cast<uint32_t*>(out + size_t(t) * size_t(2 * KP));
        to_bf16_terms(x + size_t(t) * size_t(K), K, KP, 1, &row);
    }
}

namespace {

// Rows [n0, n1) of W, two at a time (independent vdpbf16ps chains hide its
// latency), each against the TT tokens of xb; one 64-byte load of W per
// instruction, so T = 1 runs at the read bandwidth.
template <int TT>
MOEFY_AVX512BF16 void dot_rows_bf16_t(const uint16_t* xb, int64_t ldx, const uint16_t* W, int64_t K, int64_t n0,
                                      int64_t n1, float* y, int64_t ldy, bool accumulate) {
    const int64_t k32 = K / 32 * 32;
    const __mmask32 tail = __mmask32((uint64_t(1) << (K - k32)) - 1);
    auto store = [&](int64_t n, int t, __m512 a) {
        float& out = y[size_t(t) * size_t(ldy) + size_t(n)];
        const float v = _mm512_reduce_add_ps(a);
        out = accumulate ? out + v : v;
    };
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
        const uint16_t* w0 = W + size_t(n) * size_t(K);
        const uint16_t* w1 = w0 + K;
        __m512 a0[TT], a1[TT];
        for (int t = 0; t < TT; ++t) a0[t] = _mm512_setzero_ps(), a1[t] = _mm512_setzero_ps();
        for (int64_t k = 0; k < k32; k += 32) {
            const __m512bh v0 = (__m512bh)_mm512_loadu_si512(w0 + k), v1 = (__m512bh)_mm512_loadu_si512(w1 + k);
            for (int t = 0; t < TT; ++t) {
                const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + size_t(t) * size_t(ldx) + size_t(k));
                a0[t] = _mm512_dpbf16_ps(a0[t], v0, xv), a1[t] = _mm512_dpbf16_ps(a1[t], v1, xv);
            }
        }
        if (tail) {
            const __m512bh v0 = (__m512bh)_mm512_maskz_loadu_epi16(tail, w0 + k32);
            const __m512bh v1 = (__m512bh)_mm512_maskz_loadu_epi16(tail, w1 + k32);
            for (int t = 0; t < TT; ++t) {
                const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, xb + size_t(t) * size_t(ldx) + size_t(k32));
                a0[t] = _mm512_dpbf16_ps(a0[t], v0, xv), a1[t] = _mm512_dpbf16_ps(a1[t], v1, xv);
            }
        }
        for (int t = 0; t < TT; ++t) store(n, t, a0[t]), store(n + 1, t, a1[t]);
    }
    for (; n < n1; ++n) {
        const uint16_t* w0 = W + size_t(n) * size_t(K);
        __m512 a0[TT];
        for (int t = 0; t < TT; ++t) a0[t] = _mm512_setzero_ps();
        for (int64_t k = 0; k < k32; k += 32) {
            const __m512bh v0 = (__m512bh)_mm512_loadu_si512(w0 + k);
            for (int t = 0; t < TT; ++t)
                a0[t] = _mm512_dpbf16_ps(a0[t], v0, (__m512bh)_mm512_loadu_si512(xb + size_t(t) * size_t(ldx) + size_t(k)));
        }
        if (tail) {
            const __m512bh v0 = (__m512bh)_mm512_maskz_loadu_epi16(tail, w0 + k32);
            for (int t = 0; t < TT; ++t)
                a0[t] = _mm512_dpbf16_ps(a0[t], v0,
                                         (__m512bh)_mm512_maskz_loadu_epi16(tail, xb + size_t(t) * size_t(ldx) + size_t(k32)));
        }
        for (int t = 0; t < TT; ++t) store(n, t, a0[t]);
    }
}

}  // namespace

void dot_rows_bf16(const uint16_t* xb, int T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1, float* y,
                   int64_t ldy, bool accumulate) {
    const int64_t ldx = bf16_row_stride(K);
    for (int t0 = 0; t0 < T; t0 += 4) {  // at most 4 tokens a sweep: 8 accumulators and the loads stay in registers
        const int tt = std::min(4, T - t0);
        const uint16_t* x = xb + size_t(t0) * size_t(ldx);
        float* yt = y + size_t(t0) * size_t(ldy);
        switch (tt) {
            case 1: dot_rows_bf16_t<1>(x, ldx, W, K, n0, n1, yt, ldy, accumulate); break;
            case 2: dot_rows_bf16_t<2>(x, ldx, W, K, n0, n1, yt, ldy, accumulate); break;
            case 3: dot_rows_bf16_t<3>(x, ldx, W, K, n0, n1, yt, ldy, accumulate); break;
            default: dot_rows_bf16_t<4>(x, ldx, W, K, n0, n1, yt, ldy, accumulate); break;
        }
    }
}

MOEFY_AVX512BF16 double bf16_dot_peak_gflops(double seconds) {
    if (!cpu_supports(KernelPath::Avx512Bf16)) return 0.0;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), w = (__m512bh)_mm512_set1_epi32(0x3c003c00);
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    int64_t iters = 0;
    double dt = 0;
    do {
        for (int i = 0; i < 100000; ++i) {
            a0 = _mm512_dpbf16_ps(a0, x, w), a1 = _mm512_dpbf16_ps(a1, x, w), a2 = _mm512_dpbf16_ps(a2, x, w);
            a3 = _mm512_dpbf16_ps(a3, x, w), a4 = _mm512_dpbf16_ps(a4, x, w), a5 = _mm512_dpbf16_ps(a5, x, w);
            a6 = _mm512_dpbf16_ps(a6, x, w), a7 = _mm512_dpbf16_ps(a7, x, w), a8 = _mm512_dpbf16_ps(a8, x, w);
            a9 = _mm512_dpbf16_ps(a9, x, w);
            asm volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9));
        }
        iters += 100000;
        dt = std::chrono::duration<double>(clock::now() - t0).count();
    } while (dt < seconds);
    volatile float sink = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), a9));
    (void)sink;
    return double(iters) * 10 * 64 / dt / 1e9;  // 16 lanes x 2 multiply-adds x 2 flops
}

MOEFY_AMX double amx_peak_loop(double seconds) {
    amx_configure();
    alignas(64) static const uint32_t ones[256] = {};
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, ones, 64);
    _tile_loadd(5, ones, 64);
    _tile_loadd(6, ones, 64);
    _tile_loadd(7, ones, 64);
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    int64_t iters = 0;
    double dt = 0;
    do {
        for (int i = 0; i < 10000; ++i) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        iters += 10000;
        dt = std::chrono::duration<double>(clock::now() - t0).count();
    } while (dt < seconds);
    amx_release();
    return double(iters) * 4 * 16 * 16 * 32 * 2 / dt / 1e9;
}

double amx_dot_peak_gflops(double seconds) { return cpu_supports(KernelPath::Amx) ? amx_peak_loop(seconds) : 0.0; }

}  // namespace moefy::ops
