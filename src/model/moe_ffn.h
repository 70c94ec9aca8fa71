#pragma once
// The MoE feed-forward block: router, top-k selection and weighting for every
// layout moefy writes, and the dispatch of tokens to experts.
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/llama.h"

namespace moefy {

// Indices of the k largest of v[0..n), largest first; equal values go to the
// lower index (a stable order, so results never depend on the sort).
void topk_desc(const float* v, int n, int k, int32_t* idx);

// Router logits [T, E] -> selected experts sel [T, k] and combine weights w [T, k]
// for layer `layer`, following MoEConfig:
//   softmax_over_all: p = softmax(all E logits), w = p[sel], renormalised to
//                     sum 1 when renormalize_topk (mixtral; deepseek without);
//   else (llama-moe): w = softmax over the k selected logits if gate_softmax, else the raw logits;
//   then w *= score_scale[layer] if multiply_gate_scores, else w = 1.
void route_tokens(const MoEConfig& m, int layer, const float* logits, int T, int32_t* sel, float* w);

// Router logits [T, E] of x [T, H] (linear, or llama-moe's W2·tanh(W1·x)).
void router_logits(const MoEWeights& mw, const float* x, int T, float* logits, std::vector<float>& scratch);

// llama-moe-residual's shared-expert weights before their scale: sw [T, R] =
// softmax over the R shared experts of G·x (x [T, H]; G absent: uniform).
void shared_gate_softmax(const MoEWeights& mw, const float* x, int T, float* sw);

struct MoEScratch;

// x_resid[T, H] += MoE_FFN(xf[T, H]) for layer `layer`; hooks as documented in llama.h.
void moe_ffn(const ModelConfig& cfg, int layer, const MoEWeights& mw, const float* xf, int T, float* x_resid,
             const RunHooks& hooks, MoEScratch& s);

// Backward of moe_ffn with the model's own routing (recomputed from xf, as the
// forward chose it; top-k selection is piecewise constant, so the gradient
// reaches the router logits only through the combine weights):
//   dxf[T, H] += ∂L/∂xf, given dy[T, H] = ∂L/∂(the FFN's output);
//   weight gradients (params, optional) for the router(s), the shared gate and
//   every expert's gate, up and down projections that params asks for.
struct ParamGrads;
struct MoEBackwardScratch;
void moe_ffn_backward(const ModelConfig& cfg, int layer, const MoEWeights& mw, const float* xf, int T, const float* dy,
                      float* dxf, ParamGrads* params, MoEBackwardScratch& s);

// ∂L/∂logits of one token from ∂L/∂w of its k combine weights (route_tokens' backward):
// r: [E] logits, sel: [k], dw: [k]; dr: [E] is added to.
void route_weights_backward(const MoEConfig& m, int layer, const float* r, const int32_t* sel, const float* dw, float* dr);

struct MoEBackwardScratch {
    std::vector<float> logits, router_tmp, w, dw, dlogits, da, xg, dyg, dxg, wt, dwt, g, u, h, dh, dg, du, sw, dsw, dz, ys, col, dcol;
    std::vector<int32_t> sel, offsets, cursor, rows, slot;
};

struct MoEScratch {
    std::vector<float> logits, router_tmp, w, xg, g, u, h, y, mass, sw, col;
    std::vector<int32_t> sel;
    // tokens grouped per expert (counting sort), reused across calls
    std::vector<int32_t> offsets, cursor, rows, slot;  // [E+1], [E], [T·k], [T·k]
    std::vector<float> roww;                           // [T·k] combine weight of each row
};

}  // namespace moefy
