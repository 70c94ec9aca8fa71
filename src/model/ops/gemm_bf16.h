#pragma once
// Batched products on BF16 weights as stored: y[T, N] (+)= x[T, K] · Wᵀ with W
// a row-major [N, K] BF16 matrix (a checkpoint's Hugging Face layout).
//
// W is cut into blocks of kBlockRows rows (a function of N only); the engine
// threads (model/parallel.h) share the blocks. Each thread packs its block
// into panels of 16 rows, [K/2][16 rows][2 k] (the operand layout of
// vdpbf16ps: one 32-bit lane holds the pair k, k+1 of one row), in its own
// buffer, then runs the micro-kernel over all T rows of x with the whole K in
// registers. Every output element is one fixed sequence of operations, so the
// result does not depend on the thread count nor on T (row t of y is the same
// whatever rows surround it).
//   avx512bf16: x is rounded to BF16 pairs once per call (split: hi + lo, two
//               vdpbf16ps per product); 6 rows x 64 columns per micro-kernel.
//   avx2:       x stays f32; a panel's pairs are widened to f32 in registers;
//               4 rows x 16 columns per micro-kernel.
#include <cstdint>

#include "model/ops/kernel_path.h"

namespace moefy::ops {

constexpr int64_t kBlockRows = 64;

// ldy: row stride of y. path must be Avx2 or Avx512Bf16 and supported.
void gemm_bf16(KernelPath path, const float* x, int T, const uint16_t* W, int64_t N, int64_t K, float* y, int64_t ldy,
               bool accumulate);

// Peak of the avx512bf16 micro-kernel's instruction (vdpbf16ps on registers,
// no memory), GFLOP/s of one thread for `seconds`: the bench's compute ceiling.
double bf16_dot_peak_gflops(double seconds);
// The same for the amx path's tdpbf16ps (tiles in registers); 0 without AMX.
double amx_dot_peak_gflops(double seconds);

}  // namespace moefy::ops
