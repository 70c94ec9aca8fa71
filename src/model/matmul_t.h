#pragma once
// The products of the backward pass. Activation gradients flow through a
// linear layer y = x·Wᵀ as dx = dy·W (matmul_t). W is the same row-major
// [N, K] Hugging Face weight the forward uses (F32, F16 or BF16, usually in a
// memory mapping); compute is f32.
//
// W is cut into column blocks of a width that depends only on (N, K), never on
// the thread count (at least kMinBlocks of them when W is wide enough, so that
// the threads have blocks to share); the engine threads share the blocks, each converts its
// block (F16/BF16) into its own f32 buffer [N, kb] and runs a single-threaded
// cblas_sgemm on it (F32 blocks go to sgemm in place, strided). Every output
// element is therefore produced by the same sgemm call whatever the number of
// threads, so results are bitwise reproducible across thread counts (which the
// MPI importance run relies on: ranks may get fewer threads than one process).
#include "model/matmul.h"

namespace moefy {

// y[T, K] = x[T, N] · W (+ y when accumulate), W: [N, K]. x and y are dense row-major.
void matmul_t(const float* x, int T, const WeightRef& W, float* y, bool accumulate = false);

}  // namespace moefy
