#include "model/matmul_t.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <cblas.h>

#include "common/parallel.h"

namespace moefy {

namespace {

// Converted column blocks hold at most this many f32 elements (8 MiB), so a
// thread's block stays in cache between conversion and sgemm.
constexpr int64_t kMaxBlockElems = int64_t(1) << 21;
// Never narrower than this: sgemm re-packs x once per block.
constexpr int64_t kMinBlock = 64;
// Blocks to aim for: enough for the threads of one socket to share.
constexpr int64_t kMinBlocks = 8;

std::vector<float>& block_scratch() {
    thread_local std::vector<float> buf;
    return buf;
}

// Rows (or columns) per block when M of them, each of `inner` elements, are
// cut into blocks: a function of the shape only (see the header). Blocks hold
// at most kMaxBlockElems, are at least kMinBlock wide and number at least
// kMinBlocks when M allows, so that up to that many threads share the work.
int64_t block_size(int64_t M, int64_t inner) {
    const int64_t cap = std::max(kMinBlock, kMaxBlockElems / std::max<int64_t>(inner, 1));
    const int64_t blocks = std::max((M + cap - 1) / cap, std::min(kMinBlocks, (M + kMinBlock - 1) / kMinBlock));
    // Equal blocks, rounded up to 16 (a whole AVX-512 register of f32).
    const int64_t b = (M + blocks - 1) / blocks;
    return std::min(M, (b + 15) / 16 * 16);
}

}  // namespace

void matmul_t(const float* x, int T, const WeightRef& W, float* y, bool accumulate) {
    const int64_t N = W.rows, K = W.cols;
    if (T <= 0 || K == 0) return;
    if (N == 0) {
        if (!accumulate) std::fill(y, y + size_t(T) * size_t(K), 0.0f);
        return;
    }
    const int64_t kb = block_size(K, N);
    const int64_t blocks = (K + kb - 1) / kb;
    const size_t es = dtype_size(W.dtype);
    const float beta = accumulate ? 1.0f : 0.0f;
    parallel_for_each(blocks, [&](int64_t b) {
        const int64_t k0 = b * kb, n = std::min(kb, K - k0);
        const auto* base = static_cast<const uint8_t*>(W.data) + size_t(k0) * es;
        if (W.dtype == DType::F32) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, int(n), int(N), 1.0f, x, int(N),
                        reinterpret_cast<const float*>(base), int(K), beta, y + k0, int(K));
            return;
        }
        std::vector<float>& buf = block_scratch();
        if (buf.size() < size_t(N * n)) buf.resize(size_t(N * n));
        for (int64_t r = 0; r < N; ++r) to_f32(W.dtype, base + size_t(r) * size_t(K) * es, buf.data() + size_t(r * n), size_t(n));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, int(n), int(N), 1.0f, x, int(N), buf.data(), int(n),
                    beta, y + k0, int(K));
    }, blocks > 1);
}

}  // namespace moefy
