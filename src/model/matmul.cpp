#include "model/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <cblas.h>
#include <immintrin.h>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/ops/gemm_bf16.h"
#include "model/ops/kernel_path.h"
#include "model/scratch.h"
#include "common/parallel.h"

namespace moefy {

namespace {

// Below this many tokens the direct kernel wins: it streams W once and never
// writes an f32 copy; at and above it sgemm's register blocking pays for the
// conversion pass and the re-packing (BF16 [5632, 2048] on this Zen 4: direct
// 22 GFLOP/cpu-s at T = 12, sgemm path 15 at T = 16 and 23 at T = 32).
constexpr int kGemmMinTokens = 32;
// At most this many f32 elements per converted row block (16 MiB per thread;
// a block's sgemm takes far longer than reading it back from memory).
constexpr int64_t kMaxBlockElems = int64_t(1) << 22;
// Products with fewer multiply-adds than this stay on one thread (a parallel
// job costs a few microseconds).
constexpr int64_t kParallelMinWork = int64_t(1) << 18;
constexpr int64_t kGemmParallelMinWork = int64_t(1) << 24;

void run_to_f32(DType t, const void* src, float* dst, int64_t n) { to_f32(t, src, dst, size_t(n)); }

// ---- direct kernel: dot(x[K], w[K]) with w in its stored dtype ----------------

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p, DType t) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (t == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}
#endif

float dot_f32(const float* x, const float* w, int64_t K) {
    int64_t k = 0;
    float s = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(load8(x + k), load8(w + k), a0);
        a1 = _mm256_fmadd_ps(load8(x + k + 8), load8(w + k + 8), a1);
        a2 = _mm256_fmadd_ps(load8(x + k + 16), load8(w + k + 16), a2);
        a3 = _mm256_fmadd_ps(load8(x + k + 24), load8(w + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(load8(x + k), load8(w + k), a0);
    s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; k < K; ++k) s += x[k] * w[k];
    return s;
}

float dot_half(const float* x, const uint16_t* w, int64_t K, DType t) {
    int64_t k = 0;
    float s = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(load8(x + k), load8(w + k, t), a0);
        a1 = _mm256_fmadd_ps(load8(x + k + 8), load8(w + k + 8, t), a1);
        a2 = _mm256_fmadd_ps(load8(x + k + 16), load8(w + k + 16, t), a2);
        a3 = _mm256_fmadd_ps(load8(x + k + 24), load8(w + k + 24, t), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(load8(x + k), load8(w + k, t), a0);
    s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    const bool bf = t == DType::BF16;
    for (; k < K; ++k) s += x[k] * (bf ? bf16_to_f32(w[k]) : f16_to_f32(w[k]));
    return s;
}

// s[j] = x_j · w for the four rows x_j = x + j·K: w is loaded (and converted)
// once for the four tokens.
template <DType D>
void dot4(const float* x, const uint8_t* w, int64_t K, float* s) {
    int64_t k = 0;
    for (int j = 0; j < 4; ++j) s[j] = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) {
        __m256 wv;
        if constexpr (D == DType::F32)
            wv = load8(reinterpret_cast<const float*>(w) + k);
        else
            wv = load8(reinterpret_cast<const uint16_t*>(w) + k, D);
        a0 = _mm256_fmadd_ps(load8(x + k), wv, a0);
        a1 = _mm256_fmadd_ps(load8(x + K + k), wv, a1);
        a2 = _mm256_fmadd_ps(load8(x + 2 * K + k), wv, a2);
        a3 = _mm256_fmadd_ps(load8(x + 3 * K + k), wv, a3);
    }
    s[0] = hsum(a0), s[1] = hsum(a1), s[2] = hsum(a2), s[3] = hsum(a3);
#endif
    for (; k < K; ++k) {
        float wk;
        if constexpr (D == DType::F32)
            wk = reinterpret_cast<const float*>(w)[k];
        else if constexpr (D == DType::BF16)
            wk = bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[k]);
        else
            wk = f16_to_f32(reinterpret_cast<const uint16_t*>(w)[k]);
        for (int j = 0; j < 4; ++j) s[j] += x[j * K + k] * wk;
    }
}

// Output column n of y[T, N] (+)= x[T, K] · Wᵀ: row n of W is read once,
// tokens four at a time, then one at a time.
inline void direct_row(const float* x, int T, const WeightRef& W, float* y, bool accumulate, int64_t n) {
    const int64_t N = W.rows, K = W.cols;
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        float s[4] = {};
        const float* xt = x + size_t(t) * size_t(K);
        switch (W.dtype) {
            case DType::F32: dot4<DType::F32>(xt, W.row_ptr(n), K, s); break;
            case DType::BF16: dot4<DType::BF16>(xt, W.row_ptr(n), K, s); break;
            case DType::F16: dot4<DType::F16>(xt, W.row_ptr(n), K, s); break;
        }
        for (int j = 0; j < 4; ++j) {
            float& out = y[size_t(t + j) * size_t(N) + size_t(n)];
            out = accumulate ? out + s[j] : s[j];
        }
    }
    for (; t < T; ++t) {
        const float* xt = x + size_t(t) * size_t(K);
        const float s = W.dtype == DType::F32 ? dot_f32(xt, reinterpret_cast<const float*>(W.row_ptr(n)), K)
                                              : dot_half(xt, reinterpret_cast<const uint16_t*>(W.row_ptr(n)), K, W.dtype);
        float& out = y[size_t(t) * size_t(N) + size_t(n)];
        out = accumulate ? out + s : s;
    }
}

// Few tokens: every product of the list in one parallel region, the threads
// splitting each W's rows (no barrier between the products). In bf16-activation
// mode the products on BF16 weights round x once, as the micro-kernels do, and
// run vdpbf16ps on the stored rows: a token's products then do not depend on
// how many tokens share the call (decode = prefill, an expert's 5 tokens = its 50).
void matmul_direct(const float* x, int T, const MatmulOut* outs, size_t count, bool accumulate) {
    bool any_bf16 = false;
    for (size_t i = 0; i < count; ++i) any_bf16 = any_bf16 || outs[i].W->dtype == DType::BF16;
    const int64_t K = outs[0].W->cols;  // one x [T, K] for every product of the list
    const uint16_t* xb = nullptr;
    if (any_bf16 && ops::rounds_activations_to_bf16()) {
        thread_local std::vector<uint16_t> buf;
        uint16_t* r = grow(buf, size_t(T) * size_t(ops::bf16_row_stride(K)));
        ops::round_rows_to_bf16(x, T, K, r);
        xb = r;
    }
    int64_t work = 0, rows = 0;
    for (size_t i = 0; i < count; ++i) work += outs[i].W->rows * outs[i].W->cols * T, rows += outs[i].W->rows;
    // the rows of all products, end to end, split evenly over the threads
    parallel_for(
        rows,
        [&](int64_t b, int64_t e) {
            int64_t base = 0;
            for (size_t i = 0; i < count && base < e; base += outs[i].W->rows, ++i) {
                const WeightRef& W = *outs[i].W;
                const int64_t n0 = std::max(b - base, int64_t(0)), n1 = std::min(e - base, W.rows);
                if (n0 >= n1) continue;
                if (xb != nullptr && W.dtype == DType::BF16)
                    ops::dot_rows_bf16(xb, T, static_cast<const uint16_t*>(W.data), K, n0, n1, outs[i].y, W.rows, accumulate);
                else
                    for (int64_t n = n0; n < n1; ++n) direct_row(x, T, W, outs[i].y, accumulate, n);
            }
        },
        work >= kParallelMinWork);
}

// Per-thread scratch for converted row blocks; grows, never shrinks.
std::vector<float>& block_scratch() {
    thread_local std::vector<float> buf;
    return buf;
}

void sgemm_xwt(const float* x, int T, const float* w, int64_t n, int64_t K, float* y, int64_t ldy, bool accumulate) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, int(n), int(K), 1.0f, x, int(K), w, int(K),
                accumulate ? 1.0f : 0.0f, y, int(ldy));
}

}  // namespace

int64_t matmul_gemm_block_rows(int64_t N, int64_t K) {
    const int64_t cap = std::max<int64_t>(16, kMaxBlockElems / std::max<int64_t>(K, 1));  // rows per block
    // 2 blocks for small weights (less re-packing of x), else a multiple of 4
    const int64_t unit = N * K >= (int64_t(1) << 20) ? 4 : 2;
    const int64_t blocks = unit * ((N + unit * cap - 1) / (unit * cap));
    return std::max<int64_t>(1, (N + blocks - 1) / blocks);
}

namespace {

// Many tokens: W's rows are cut into equal blocks, a multiple of 4 of them (2
// for small W), as few as the size cap allows (every sgemm call re-packs all of x); the engine
// threads share the blocks, each converts its block (F16/BF16) into its own
// f32 buffer and runs a single-threaded sgemm on it. The cut depends only on
// (N, K), so results are bitwise the same for any thread count, and 1, 2 or 4
// threads get equal shares.
void matmul_gemm(const float* x, int T, const WeightRef& W, float* y, bool accumulate) {
    const int64_t N = W.rows, K = W.cols;
    const ops::KernelPath path = ops::kernel_path();
    if (W.dtype == DType::BF16 && path != ops::KernelPath::Sgemm) {
        ops::gemm_bf16(path, x, T, static_cast<const uint16_t*>(W.data), N, K, y, N, accumulate);
        return;
    }
    const int64_t nb = matmul_gemm_block_rows(N, K);
    const int64_t blocks = (N + nb - 1) / nb;
    auto block = [&](int64_t b) {
        const int64_t n0 = b * nb, n = std::min(nb, N - n0);
        if (n <= 0) return;
        const float* wb = reinterpret_cast<const float*>(W.row_ptr(n0));
        if (W.dtype != DType::F32) {
            std::vector<float>& buf = block_scratch();
            if (buf.size() < size_t(n * K)) buf.resize(size_t(n * K));
            run_to_f32(W.dtype, W.row_ptr(n0), buf.data(), n * K);
            wb = buf.data();
        }
        sgemm_xwt(x, T, wb, n, K, y + n0, N, accumulate);
    };
    parallel_for(
        blocks, [&](int64_t b, int64_t e) { for (; b < e; ++b) block(b); }, N * K * T >= kGemmParallelMinWork);
}

}  // namespace

int matmul_gemm_min_tokens() { return kGemmMinTokens; }

WeightRef weight_ref(const TensorView& v) { return {v.data, v.dtype, v.rows(), v.cols()}; }

namespace {
// Own BF16 micro-kernels pack W per call (a pass over W next to T passes of
// compute), so they take over from the direct kernel at fewer tokens than sgemm.
constexpr int kOwnGemmMinTokens = 8;
bool use_direct(int T, const WeightRef& W) {
    if (W.dtype == DType::F32) return T < 2;
    if (W.dtype == DType::BF16 && ops::kernel_path() != ops::KernelPath::Sgemm) return T < kOwnGemmMinTokens;
    return T < kGemmMinTokens;
}
}  // namespace

void matmul(const float* x, int T, const WeightRef& W, float* y, bool accumulate) {
    if (T <= 0 || W.rows == 0) return;
    if (W.cols == 0) {
        if (!accumulate) std::fill(y, y + size_t(T) * size_t(W.rows), 0.0f);
        return;
    }
    if (use_direct(T, W)) {
        const MatmulOut out{&W, y};
        matmul_direct(x, T, &out, 1, accumulate);
    } else {
        matmul_gemm(x, T, W, y, accumulate);
    }
}

void matmul_multi(const float* x, int T, std::initializer_list<MatmulOut> outs) {
    bool direct = T > 0, own_bf16 = T > 0 && ops::kernel_path() != ops::KernelPath::Sgemm;
    for (const MatmulOut& o : outs) {
        direct = direct && o.W->cols > 0 && use_direct(T, *o.W);
        own_bf16 = own_bf16 && o.W->cols > 0 && o.W->dtype == DType::BF16;
    }
    if (direct) {
        matmul_direct(x, T, outs.begin(), outs.size(), false);
        return;
    }
    if (own_bf16 && outs.size() <= 4) {  // one conversion of x, one parallel region
        ops::Bf16Product ps[4];
        int n = 0;
        for (const MatmulOut& o : outs) ps[n++] = {static_cast<const uint16_t*>(o.W->data), o.W->rows, o.y, o.W->rows};
        ops::gemm_bf16_multi(ops::kernel_path(), x, T, outs.begin()->W->cols, ps, n, false);
        return;
    }
    for (const MatmulOut& o : outs) matmul(x, T, *o.W, o.y);
}

void gather_rows(const WeightRef& W, const int32_t* ids, int n, float* out) {
    for (int i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= W.rows) fail("token id {} is outside the vocabulary [0, {})", ids[i], W.rows);
    parallel_for(
        n,
        [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) run_to_f32(W.dtype, W.row_ptr(ids[i]), out + size_t(i) * size_t(W.cols), W.cols);
        },
        int64_t(n) * W.cols >= kParallelMinWork);
}

void weight_row_f32(const WeightRef& W, int64_t r, float* out) { run_to_f32(W.dtype, W.row_ptr(r), out, W.cols); }

}  // namespace moefy
