#pragma once
// The forward functions of one decoder layer, one per piece of math. Each is
// written so that its backward can sit next to it (the inputs it would need are
// the ones its caller already keeps: x, gate, up for SwiGLU; x and the norm's
// 1/rms for RMSNorm).
#include <cstdint>
#include <optional>
#include <vector>

#include "model/config.h"
#include "model/llama.h"

namespace moefy::layers {

// y[t] = x[t] / sqrt(mean(x[t]²) + eps) ⊙ w.   x, y: [T, H] (may alias)
void rmsnorm(const float* x, const float* w, int T, int H, double eps, float* y);

// RoPE inverse frequencies [head_dim/2] with the config's scaling (llama3, linear).
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

// Rotates each head of x in place, HF rotate_half layout: element i pairs with
// i + d/2. x: [T, ld] holding `heads` heads of d at stride d; token t is at position pos0 + t.
void rope(float* x, int T, int ld, int heads, int d, int pos0, const std::vector<float>& inv_freq);

struct AttnShape {
    int heads = 0, kv_heads = 0, head_dim = 0;
    std::optional<int> window;  // Mistral sliding window: key j visible to query i iff i - window < j <= i
};

// out[t] = Σ_j softmax_j(q_t·k_j / sqrt(d)) v_j over the keys visible to t, per head
// (query head h reads kv head h / (heads / kv_heads)).
//   q: [T, heads·d] at positions qpos0..;  k, v: [S, kv_heads·d] at positions kpos0..;
//   out: [T, heads·d].
void attention(const AttnShape& s, const float* q, int T, int qpos0, const float* k, const float* v, int S, int kpos0,
               float* out);

// One SwiGLU block's hidden activations: g = x·W_gᵀ, u = x·W_uᵀ, h = silu(g) ⊙ u.
//   x: [n, H];  g, u, h: [n, I].  The down projection is left to the caller
//   (dense: straight into the residual stream; experts: into a scratch, then weighted).
void swiglu_hidden(const FfnWeights& f, const float* x, int n, float* g, float* u, float* h);

}  // namespace moefy::layers
