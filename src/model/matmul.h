#pragma once
// Every matrix product of the engine goes through here: y = x · Wᵀ with W a
// row-major [N, K] Hugging Face weight kept in its stored dtype (F32, F16, BF16,
// usually inside a memory mapping). Compute is f32 accumulation.
//
//   T large, BF16 -> the kernel path's own micro-kernels (model/ops/gemm_bf16.h:
//                 AMX, AVX512-BF16 or AVX2, chosen by model/ops/kernel_path.h)
//                 on W packed per 64-row block; T >= 8.
//   T large, else -> W is cut into row blocks (depending only on N, K) that the
//                 engine threads share (common/parallel.h); each thread
//                 converts its block (F16/BF16) into its own f32 buffer and
//                 runs a single-threaded cblas_sgemm on it (F32 blocks go to
//                 sgemm in place). T >= 32 (F32: T >= 2).
//   T small    -> a vectorised dot-product kernel that reads the stored dtype
//                 directly (generation is bound by the bytes of W, so no
//                 conversion pass), threads split the rows.
// On every path each output element is one fixed sequence of operations:
// results do not depend on the thread count.
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "io/dtype.h"

namespace moefy {

struct TensorView;

// A [rows, cols] row-major weight: rows = N outputs, cols = K inputs.
struct WeightRef {
    const void* data = nullptr;
    DType dtype = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;

    bool empty() const { return data == nullptr; }
    size_t nbytes() const { return size_t(rows) * size_t(cols) * dtype_size(dtype); }
    const uint8_t* row_ptr(int64_t r) const {
        return static_cast<const uint8_t*>(data) + size_t(r) * size_t(cols) * dtype_size(dtype);
    }
    // Rows [r0, r0+n): still a [n, cols] weight, no copy.
    WeightRef slice_rows(int64_t r0, int64_t n) const { return {row_ptr(r0), dtype, n, cols}; }
};

// A weight from a checkpoint tensor viewed as [shape[0], rest]; `view` must outlive it.
WeightRef weight_ref(const TensorView& view);

// y[T, N] = x[T, K] · Wᵀ (+ y when accumulate). x and y are dense row-major.
void matmul(const float* x, int T, const WeightRef& W, float* y, bool accumulate = false);

// y_i[T, N_i] = x[T, K] · W_iᵀ for weights that share the input (q/k/v,
// gate/up). For few tokens all of them run in one parallel pass.
struct MatmulOut {
    const WeightRef* W;
    float* y;
};
void matmul_multi(const float* x, int T, std::initializer_list<MatmulOut> outs);

// out[i, :] = W[ids[i], :] as f32 (embedding lookup). Throws on an id outside [0, rows).
void gather_rows(const WeightRef& W, const int32_t* ids, int n, float* out);

// Row r of W as f32.
void weight_row_f32(const WeightRef& W, int64_t r, float* out);

// T at and above which F16/BF16 products go to sgemm (below: the direct kernel).
int matmul_gemm_min_tokens();

// Rows of W per block on the sgemm path (each block one single-threaded sgemm,
// the blocks shared by the engine threads): depends on N and K only. The
// benchmarks' sgemm floor cuts its products the same way.
int64_t matmul_gemm_block_rows(int64_t N, int64_t K);

}  // namespace moefy
