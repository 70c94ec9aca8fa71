#pragma once
// Attention's two products for one (query block, head) pair on AMX tiles, the
// amx path in its bf16 activation mode. Both operands of attention are
// activations (f32), so each is split into two BF16 terms, x = hi + lo (17 of
// its 24 bits), and every tile product is hi·hi' + lo·hi' + hi·lo', summed in
// f32: about 2^-16 relative per product. One BF16 per operand (2^-8) moved
// the demo model's per-position NLL by up to 2% (README, "eval"); this split
// keeps attention close to f32 while three tile products still take a
// fraction of the time of the f32 register tiles (model/ops/attention_f32.h),
// which attention's T x T products needed: they do not shrink when the FFN
// becomes experts. Single-threaded: the caller's threads take the pairs. Every
// output element is one fixed sequence of operations.
#include <cstddef>
#include <cstdint>

namespace moefy::ops {

// Whether these kernels serve head size d in this process: the amx path in
// bf16 activation mode (exact mode keeps f32 attention), d a multiple of 32.
bool attention_amx_serves(int d);

// The keys and values of one kv head (S keys, row stride ld_in, d columns) in
// the tiles' B layouts, two terms each (hi, then lo), keys past S zero:
//   kb [2][d/2][ld] 32-bit pairs: [t][c][j] = dims 2c, 2c+1 of key j
//   vb [2][ld/2][d] 32-bit pairs: [t][j][c] = dim c of keys 2j, 2j+1
// with ld = amx_kv_stride(S); each holds amx_kv_size(S, d) pairs.
int64_t amx_kv_stride(int S);
size_t amx_kv_size(int S, int d);
void amx_prepare_kv(const float* k, const float* v, int64_t ld_in, int S, int d, uint32_t* kb, uint32_t* vb);

// One (query block, head) pair: o[i, :] = softmax_j(scale · q[i]·k[j]) v[j]
// over the keys j in [key_lo[i], key_hi[i]) (indices into the S keys, within
// [lo, lo + nk)), i < tb <= 128; a row with no key gets zeros. q, o: row strides ldq,
// ldo, d columns; kb, vb from amx_prepare_kv for the head's kv head. The
// scores stay in this thread's scratch; the probabilities are split into their
// BF16 terms as they are exponentiated and normalised after P·V (d columns).
void amx_attention_block(const float* q, int64_t ldq, int tb, const uint32_t* kb, const uint32_t* vb, int64_t ld, int lo,
                         int nk, int d, float scale, const int* key_lo, const int* key_hi, float* o, int64_t ldo);

}  // namespace moefy::ops
