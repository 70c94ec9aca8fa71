#pragma once
// Vectorised elementwise math and reductions for the engine's hot loops
// (softmax, SiLU, log-sum-exp, RMS norm). exp uses the Cephes single-precision
// polynomial (about 2 ulp), 16 lanes at a time with AVX-512, else 8 with AVX2;
// the scalar tail uses std::exp.
#include <cmath>
#include <cstddef>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// GCC 12 warns inside its own AVX-512 intrinsics (the "undefined" register
// they start from) wherever they are inlined; nothing here reads an
// uninitialised value.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moefy::vmath {

// e^x as the Cephes single-precision polynomial: x clamped to [kLo, kHi] (so
// 2^n stays a normal float), n = round(x·log2 e), r = x - n·ln2 with ln2 split
// in two so r stays exact, e^r by the polynomial, times 2^n through the
// exponent bits. exp8 and exp16 run it on 8 and 16 lanes: the same operations
// per lane, so the same values.
namespace exp_poly {
constexpr float kLo = -87.33654f, kHi = 88.0f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
}  // namespace exp_poly

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp8(__m256 x) {
    using namespace exp_poly;
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kLo)), _mm256_set1_ps(kHi));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    __m256 p = _mm256_set1_ps(kP[0]);
    for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP[i]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

#if defined(__x86_64__)
// Defined for any x86-64 build (not only -mavx512f ones): the AMX attention
// kernel (model/ops/attention_amx.cpp) calls it from its own target.
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
    using namespace exp_poly;
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kLo)), _mm512_set1_ps(kHi));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kP[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP[i]));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
#endif

// max over x[0..n), n >= 1 (a NaN element is passed over, as std::max(m, x) does).
inline float max_of(const float* x, size_t n) {
    size_t i = 0;
    float m = x[0];
#if defined(__AVX2__) && defined(__FMA__)
    if (n >= 32) {
        __m256 a0 = _mm256_set1_ps(m), a1 = a0, a2 = a0, a3 = a0;
        for (; i + 32 <= n; i += 32) {
            a0 = _mm256_max_ps(_mm256_loadu_ps(x + i), a0), a1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), a1);
            a2 = _mm256_max_ps(_mm256_loadu_ps(x + i + 16), a2), a3 = _mm256_max_ps(_mm256_loadu_ps(x + i + 24), a3);
        }
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)));
        for (float l : lanes) m = l > m ? l : m;
    }
#endif
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

// Σ x[i]² in double (each square exact; 16 partial sums, so the loop is not one
// chain of dependent adds).
inline double sum_squares(const float* x, size_t n) {
    size_t i = 0;
    double s = 0.0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 16 <= n; i += 16) {
        const __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), v1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        const __m256d v2 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 8)), v3 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 12));
        a0 = _mm256_fmadd_pd(v0, v0, a0), a1 = _mm256_fmadd_pd(v1, v1, a1);
        a2 = _mm256_fmadd_pd(v2, v2, a2), a3 = _mm256_fmadd_pd(v3, v3, a3);
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
    for (; i < n; ++i) s += double(x[i]) * double(x[i]);
    return s;
}

// y[i] = e^(x[i] - shift); returns Σ y (x and y may alias).
inline float exp_shifted(const float* x, float shift, float* y, size_t n) {
    size_t i = 0;
    float sum = 0.0f;
#if defined(__AVX512F__)
    {
        const __m512 s16 = _mm512_set1_ps(shift);
        __m512 acc16 = _mm512_setzero_ps();
        for (; i + 16 <= n; i += 16) {
            const __m512 v = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s16));
            _mm512_storeu_ps(y + i, v);
            acc16 = _mm512_add_ps(acc16, v);
        }
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, acc16);
        for (float l : lanes) sum += l;
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 s = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(y + i, v);
        acc = _mm256_add_ps(acc, v);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (float l : lanes) sum += l;
#endif
    for (; i < n; ++i) sum += y[i] = std::exp(x[i] - shift);
    return sum;
}

// h[i] = silu(g[i]) · u[i] = g / (1 + e^-g) · u
inline void silu_mul(const float* g, const float* u, float* h, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        const __m512 gv = _mm512_loadu_ps(g + i);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), _mm512_loadu_ps(u + i)));
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; ++i) h[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace moefy::vmath

#pragma GCC diagnostic pop
