#pragma once
// One decoder layer's forward, the only one: Model::forward (inference, with
// or without a KV cache) and the backward pass's forward (model/backward.cpp)
// both run it. What the backward keeps is a policy of the caller: it hands in
// its own activation buffers for q, k, v, g, u and asks for a copy of the
// residual stream after attention.
//
//   xa = RMSNorm_in(x);  q, k, v = xa·W_{q,k,v}ᵀ;  RoPE(q, k);  x += Attn(q, K, V)·W_oᵀ
//   (record: x_mid = x)
//   xf = RMSNorm_post(x);  x += FFN(xf)     (SwiGLU, or the MoE FFN of model/moe_ffn.h)
#include "model/config.h"
#include "model/llama.h"

namespace moefy {

struct MoEScratch;

// The keys and values attention reads. k_new, v_new: [T, KVd] rows this call
// writes (after RoPE for k); k_all, v_all: [S, KVd] every visible key/value at
// positions kpos0.., which contain k_new/v_new (a KV cache: the cache rows 0..;
// no cache: k_new itself, kpos0 = pos0).
struct LayerKV {
    float* k_new = nullptr;
    float* v_new = nullptr;
    const float* k_all = nullptr;
    const float* v_all = nullptr;
    int S = 0;
    int kpos0 = 0;
};

// Buffers the layer writes, owned by the caller. xn: [T, H]; q, att: [T, Qd];
// g, u, h: [T, I] (dense layers); moe: MoE layers.
struct LayerBuffers {
    float* xn = nullptr;
    float* q = nullptr;
    float* att = nullptr;
    float* g = nullptr;
    float* u = nullptr;
    float* h = nullptr;
    MoEScratch* moe = nullptr;
    float* x_mid = nullptr;  // optional [T, H]: the residual stream after attention is copied here
};

// The attention half alone, x += Attn(RMSNorm_in(x))·W_oᵀ (uses b.xn, b.q, b.att;
// x_mid is not written): for callers that put their own FFN after it
// (sequential calibration, route/sequential.h).
void attention_block_forward(const ModelConfig& c, const LayerWeights& L, const std::vector<float>& inv_freq, float* x, int T,
                             int pos0, const LayerKV& kv, const LayerBuffers& b);

// x: [T, H] residual stream at positions pos0.., updated in place.
void decoder_layer_forward(const ModelConfig& c, int l, const LayerWeights& L, const std::vector<float>& inv_freq,
                           float* x, int T, int pos0, const LayerKV& kv, const LayerBuffers& b, const RunHooks& hooks);

}  // namespace moefy
