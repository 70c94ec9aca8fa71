#pragma once
// Attention's two products for one (query block, head) pair, in f32 with
// AVX-512 register tiles: on these machines OpenBLAS is pinned to its AVX2
// kernels (OPENBLAS_CORETYPE=Haswell), and attention's T x T products do not
// shrink when the FFN becomes experts (README, "eval": a fifth of an MoE's
// perplexity time ran in them). Single-threaded: the caller's threads take the
// pairs. Every output element is one fixed sequence of operations (results do
// not depend on the thread count nor on how the pairs are dealt).
#include <cstdint>

namespace moefy::ops {

// Whether the kernels below serve head size d on this process's kernel path:
// the amx and avx512bf16 paths (their CPUs have AVX-512), d a multiple of 16 up
// to 128. Otherwise the caller keeps sgemm.
bool attention_kernels_serve(int d);

// Keys transposed for attention_scores: kt[c, j] = k[j, c] for the S keys of
// one kv head (k row stride ldk), into kt [d, ldkt], ldkt = keys_transposed_stride(S)
// (columns past S zero: the score tiles read whole 32-key tiles from any offset).
int64_t keys_transposed_stride(int S);
void transpose_keys(const float* k, int64_t ldk, int S, int d, float* kt, int64_t ldkt);

// s[i, j] = scale · Σ_c q[i, c] · kt[c, j] for i < tb, j < nk (row strides ldq,
// lds; kt may start at any key offset of a transpose_keys result).
void attention_scores(const float* q, int64_t ldq, int tb, const float* kt, int64_t ldkt, int nk, int d, float scale,
                      float* s, int64_t lds);

// o[i, :] = Σ_j p[i, j] · v[j, :] for i < tb, j < nk, d columns (row strides ldp, ldv, ldo).
void attention_apply(const float* p, int64_t ldp, int tb, const float* v, int64_t ldv, int nk, int d, float* o,
                     int64_t ldo);

}  // namespace moefy::ops
