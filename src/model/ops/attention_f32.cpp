#include "model/ops/attention_f32.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "model/ops/kernel_path.h"

namespace moefy::ops {

namespace {

#define MOEFY_AVX512F __attribute__((target("avx512f")))

constexpr int kKeyCols = 32;  // keys per score tile: two vectors

// s rows [i0, i0+MR) x keys [j, j+32) (those < nk): MR x 2 accumulators over c.
template <int MR>
MOEFY_AVX512F void scores_tile(const float* q, int64_t ldq, const float* kt, int64_t ldkt, int j, int nk, int d,
                               float scale, float* s, int64_t lds) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = _mm512_setzero_ps(), acc[r][1] = _mm512_setzero_ps();
    for (int c = 0; c < d; ++c) {
        const __m512 k0 = _mm512_loadu_ps(kt + size_t(c) * size_t(ldkt) + size_t(j));
        const __m512 k1 = _mm512_loadu_ps(kt + size_t(c) * size_t(ldkt) + size_t(j) + 16);
        for (int r = 0; r < MR; ++r) {
            const __m512 qv = _mm512_set1_ps(q[size_t(r) * size_t(ldq) + size_t(c)]);
            acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
        }
    }
    const __m512 sv = _mm512_set1_ps(scale);
    const int left = nk - j;
    const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : left <= 16 ? __mmask16(0) : __mmask16((1u << (left - 16)) - 1);
    for (int r = 0; r < MR; ++r) {
        float* out = s + size_t(r) * size_t(lds) + size_t(j);
        _mm512_mask_storeu_ps(out, m0, _mm512_mul_ps(acc[r][0], sv));
        _mm512_mask_storeu_ps(out + 16, m1, _mm512_mul_ps(acc[r][1], sv));
    }
}

// o rows [i0, i0+MR) x DV·16 columns: MR x DV accumulators over the keys.
template <int DV, int MR>
MOEFY_AVX512F void apply_tile(const float* p, int64_t ldp, const float* v, int64_t ldv, int nk, float* o, int64_t ldo) {
    __m512 acc[MR][DV];
    for (int r = 0; r < MR; ++r)
        for (int x = 0; x < DV; ++x) acc[r][x] = _mm512_setzero_ps();
    for (int j = 0; j < nk; ++j) {
        __m512 vv[DV];
        for (int x = 0; x < DV; ++x) vv[x] = _mm512_loadu_ps(v + size_t(j) * size_t(ldv) + 16 * x);
        for (int r = 0; r < MR; ++r) {
            const __m512 pv = _mm512_set1_ps(p[size_t(r) * size_t(ldp) + size_t(j)]);
            for (int x = 0; x < DV; ++x) acc[r][x] = _mm512_fmadd_ps(pv, vv[x], acc[r][x]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int x = 0; x < DV; ++x) _mm512_storeu_ps(o + size_t(r) * size_t(ldo) + 16 * x, acc[r][x]);
}

// Rows in tiles of MRmax, the last tile with the rows that are left.
template <int MRmax, typename Tile>
void over_rows(int tb, Tile&& tile) {
    int i = 0;
    for (; i + MRmax <= tb; i += MRmax) tile(i, std::integral_constant<int, MRmax>{});
    if constexpr (MRmax > 1)
        if (i < tb) {
            const int left = tb - i;
            // a compile-time row count for each possible remainder
            [&]<int... R>(std::integer_sequence<int, R...>) {
                ((left == R + 1 ? (tile(i, std::integral_constant<int, R + 1>{}), 0) : 0), ...);
            }(std::make_integer_sequence<int, MRmax - 1>{});
        }
}

template <int DV>
void apply_rows(const float* p, int64_t ldp, int tb, const float* v, int64_t ldv, int nk, float* o, int64_t ldo) {
    constexpr int MR = DV >= 8 ? 3 : DV >= 4 ? 6 : 8;  // MR x DV accumulators in the 32 registers
    over_rows<MR>(tb, [&](int i, auto mr) {
        apply_tile<DV, decltype(mr)::value>(p + size_t(i) * size_t(ldp), ldp, v, ldv, nk, o + size_t(i) * size_t(ldo), ldo);
    });
}

}  // namespace

bool attention_kernels_serve(int d) {
    const KernelPath p = kernel_path();
    return (p == KernelPath::Amx || p == KernelPath::Avx512Bf16) && d > 0 && d % 16 == 0 && d <= 128;
}

// A whole tile of columns past any key range [lo, lo + nk) within the S keys.
int64_t keys_transposed_stride(int S) { return (int64_t(S) + kKeyCols - 1) / kKeyCols * kKeyCols + kKeyCols; }

void transpose_keys(const float* k, int64_t ldk, int nk, int d, float* kt, int64_t ldkt) {
    for (int c = 0; c < d; ++c) {
        float* row = kt + size_t(c) * size_t(ldkt);
        for (int j = 0; j < nk; ++j) row[j] = k[size_t(j) * size_t(ldk) + size_t(c)];
        std::fill(row + nk, row + ldkt, 0.0f);
    }
}

void attention_scores(const float* q, int64_t ldq, int tb, const float* kt, int64_t ldkt, int nk, int d, float scale,
                      float* s, int64_t lds) {
    for (int j = 0; j < nk; j += kKeyCols)
        over_rows<8>(tb, [&](int i, auto mr) {
            scores_tile<decltype(mr)::value>(q + size_t(i) * size_t(ldq), ldq, kt, ldkt, j, nk, d, scale,
                                             s + size_t(i) * size_t(lds), lds);
        });
}

void attention_apply(const float* p, int64_t ldp, int tb, const float* v, int64_t ldv, int nk, int d, float* o,
                     int64_t ldo) {
    switch (d / 16) {
        case 1: apply_rows<1>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        case 2: apply_rows<2>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        case 3: apply_rows<3>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        case 4: apply_rows<4>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        case 5: apply_rows<5>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        case 6: apply_rows<6>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        case 7: apply_rows<7>(p, ldp, tb, v, ldv, nk, o, ldo); return;
        default: apply_rows<8>(p, ldp, tb, v, ldv, nk, o, ldo); return;
    }
}

}  // namespace moefy::ops
