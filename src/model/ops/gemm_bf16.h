#pragma once
// Batched products on BF16 weights as stored: y[T, N] (+)= x[T, K] · Wᵀ with W
// a row-major [N, K] BF16 matrix (a checkpoint's Hugging Face layout).
//
// W is cut into blocks of kBlockRows rows (a function of N only); the engine
// threads (common/parallel.h) share the blocks. On avx512bf16 and avx2 each thread packs its block
// into panels of 16 rows, [K/2][16 rows][2 k] (the operand layout of
// vdpbf16ps: one 32-bit lane holds the pair k, k+1 of one row), in its own
// buffer, then runs the micro-kernel over all T rows of x with the whole K in
// registers. Every output element is one fixed sequence of operations, so the
// result does not depend on the thread count nor on T (row t of y is the same
// whatever rows surround it).
//   avx512bf16: x is rounded to BF16 pairs once per call (split: hi + lo, two
//               vdpbf16ps per product); 6 rows x 64 columns per micro-kernel.
//   amx:        no packing: W as stored is tdpbf16ps's A operand (16 rows x 32
//               k per tile, W's own row stride; a zero-padded copy only for a
//               last block under 32 rows or K not a multiple of 32), x in the
//               pair layout is its B operand, prepared once per call; blocks of
//               32 rows of W x 32 tokens, C tiles transposed into y in registers.
//   avx2:       x stays f32; a panel's pairs are widened to f32 in registers;
//               4 rows x 16 columns per micro-kernel.
#include <cstdint>

#include "model/ops/kernel_path.h"

namespace moefy::ops {

constexpr int64_t kBlockRows = 64;

// ldy: row stride of y. path must be Amx, Avx512Bf16 or Avx2 and supported.
void gemm_bf16(KernelPath path, const float* x, int T, const uint16_t* W, int64_t N, int64_t K, float* y, int64_t ldy,
               bool accumulate);

// Several products of the same x (q/k/v, gate/up): x is converted once and
// the threads share the row blocks of all of them in one parallel region;
// each y is what gemm_bf16 gives. At most 4 products.
struct Bf16Product {
    const uint16_t* W;  // [N, K]
    int64_t N;
    float* y;  // [T, N], row stride ldy
    int64_t ldy;
};
void gemm_bf16_multi(KernelPath path, const float* x, int T, int64_t K, const Bf16Product* ps, int count, bool accumulate);

// Decoding (a few tokens) with activations rounded to BF16 (bf16 mode on the
// amx and avx512bf16 paths): the stored weights are read once, row by row, with
// vdpbf16ps; no packing. The caller rounds x once per call and may split the
// rows [n0, n1) of one or several products over threads.
// xb: T rows of bf16_row_stride(K) BF16 values (the pad element is zero).
int64_t bf16_row_stride(int64_t K);
// x [K] f32 -> `terms` (1..3) rows of KPa BF16 pairs (pairs past K zero):
// t0 = bf16(x), t1 = bf16(x - t0), t2 = bf16(x - t0 - t1). Three terms hold
// all 24 bits of a normal f32, so Σ_j W·t_j is the f32 product (each BF16 x
// BF16 product is exact in f32). Needs AVX512-BF16.
void to_bf16_terms(const float* x, int64_t K, int64_t KPa, int terms, uint32_t* const* out);
// Rounds x [T, K] as the micro-kernels do (so decode and prefill see the same x).
void round_rows_to_bf16(const float* x, int T, int64_t K, uint16_t* out);
// y[t, n] (+)= dot(xb[t], W[n]) for n in [n0, n1); y row stride ldy. Needs AVX512-BF16.
void dot_rows_bf16(const uint16_t* xb, int T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1, float* y,
                   int64_t ldy, bool accumulate);

// Peak of the avx512bf16 micro-kernel's instruction (vdpbf16ps on registers,
// no memory), GFLOP/s of one thread for `seconds`: the bench's compute ceiling.
double bf16_dot_peak_gflops(double seconds);
// The same for the amx path's tdpbf16ps (tiles in registers); 0 without AMX.
double amx_dot_peak_gflops(double seconds);

}  // namespace moefy::ops
