#pragma once
// Backward pass of a LLaMA (dense or MoE) to the FFN activations and, on
// request, to weights: the gradient of the mean next-token NLL of one token window,
//   L = 1/(T-1) · Σ_{t<T-1} -log p(tokens[t+1] | tokens[..t]),
// with respect to every layer's FFN hidden activation h = silu(g) ⊙ u and gate
// pre-activation g = xf·W_gᵀ (the quantities LLaMA-MoE's gradient split scores,
// reference §4.2; the 1/(T-1) is the reference's mean loss).
//
// Forward (per layer l, x: [T, H] residual stream), as Model::forward:
//   xa = RMSNorm_in(x);  q, k, v = xa·W_{q,k,v}ᵀ;  RoPE(q, k);  x += Attn(q, k, v)·W_oᵀ
//   xf = RMSNorm_post(x); g = xf·W_gᵀ; u = xf·W_uᵀ; h = silu(g) ⊙ u;  x += h·W_dᵀ
// Backward, layers in reverse, dx = ∂L/∂x flowing down the residual stream:
//   logits:   dlogits = (softmax - onehot) / (T-1);  dxn = dlogits · lm_head;  dx = RMSNorm_f'ᵀ dxn
//   FFN:      dh = dx·W_d;  dg = dh ⊙ u ⊙ silu'(g);  du = dh ⊙ silu(g);
//             dx += RMSNorm_post'ᵀ (dg·W_g + du·W_u)
//   attention: datt = dx·W_o;  softmax·V and QKᵀ backward per head (GQA: the
//             group's heads add into their kv head);  RoPE⁻¹ on dq, dk;
//             dx += RMSNorm_in'ᵀ (dq·W_q + dk·W_k + dv·W_v)
//   MoE FFN:  the backward of model/moe_ffn.h (moe_ffn_backward): the model's own
//             routing, gradients through the combine weights into the router logits.
// Weight gradients (ParamGrads): dW_d += dyᵀ·h, dW_g += dgᵀ·xf, dW_u += duᵀ·xf,
// routers dW_r += dlogitsᵀ·xf, for the weights the caller asks for; attention,
// norm and embedding weights get none (healing trains routers and experts).
// The forward is the engine's decoder-layer forward (model/decoder_layer.h);
// products go through matmul / matmul_t, whose blocks do not depend on the
// thread count: results are bitwise reproducible.
//
// Memory. The residual stream at each layer input is always kept
// ([L+1, T, H]); the rest of a layer's forward (x after attention, q, k, v, g,
// u: T·(H + Qd + 2·KVd + 2·I) floats) is either stored for every layer, or
// recomputed layer by layer from its input during the backward (one extra
// forward of the layers, ~4/3 of the work). Auto stores when that fits the
// budget. For a 7B shape (H 4096, I 11008, 32 layers, V 32000) at T = 2048:
// store-all needs ~11.5 GiB of activations, recompute ~1.9 GiB (plus the
// weights), so 7B runs recompute; see Backprop::memory().
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/layers.h"
#include "model/llama.h"

namespace moefy {

// One layer's FFN activations and their gradients during the backward; the
// pointers are valid only during on_ffn_grads. Row T-1 of dh and dg is zero
// (the last token predicts nothing).
struct FfnGrads {
    int layer = 0;
    int T = 0;
    int I = 0;
    const float* h = nullptr;   // [T, I] silu(g) ⊙ u (the input of down_proj)
    const float* dh = nullptr;  // [T, I] ∂L/∂h
    const float* g = nullptr;   // [T, I] gate pre-activation xf·W_gᵀ
    const float* dg = nullptr;  // [T, I] ∂L/∂g
};

// Where weight gradients go: for every weight W the backward meets (by its
// data pointer) it adds ∂L/∂W into grad_of(W), an f32 buffer of W's [rows, cols],
// or skips W when grad_of returns null.
struct ParamGrads {
    virtual ~ParamGrads() = default;
    virtual float* grad_of(const WeightRef& w) = 0;
};

// FFN activations are handed out for dense layers only (MoE layers: none).
struct BackwardObserver {
    virtual ~BackwardObserver() = default;
    // Only layers that return true are handed out (h is not formed for the others).
    virtual bool wants(int layer) const { return true; }
    virtual void on_ffn_grads(const FfnGrads& a) = 0;
};

enum class ActivationMemory { Auto, Store, Recompute };
ActivationMemory parse_activation_memory(const std::string& s);  // "auto" | "store" | "recompute"

struct BackwardOptions {
    ActivationMemory memory = ActivationMemory::Auto;
    size_t store_budget_bytes = size_t(8) << 30;  // Auto stores every layer when that takes at most this
};

// Bytes of f32 buffers a backward of T tokens holds (weights not included).
struct BackwardMemory {
    size_t checkpoints = 0;  // residual stream at every layer input, [L+1, T, H]
    size_t layer_acts = 0;   // stored forward activations: one layer (recompute) or all layers (store)
    size_t scratch = 0;      // forward and gradient scratch of one layer, logits chunk, attention stats
    size_t total() const { return checkpoints + layer_acts + scratch; }
};

// Runs forward + backward over one token window at a time. Holds references
// into the Model's weights (the Model must outlive it) and its own buffers;
// not safe to call from two threads at once.
class Backprop {
public:
    explicit Backprop(const Model& model, BackwardOptions opt = {});
    ~Backprop();
    Backprop(const Backprop&) = delete;
    Backprop& operator=(const Backprop&) = delete;

    // Forward and backward of tokens[0..T) at positions 0..T-1 (2 <= T <=
    // max_position_embeddings). Returns Σ NLL over the T-1 predictions (natural
    // log); the gradients handed to `obs` are those of the mean, Σ / (T-1).
    // per_position: optional [T-1] output of the single NLL terms.
    // params: optional weight gradients, added to (the caller zeroes them).
    // teacher: optional [T-1, V] next-token probabilities of another model
    // (distillation): the loss is then Σ_t KL(teacher_t ‖ model_t), its mean's
    // gradient, instead of the NLL of the tokens.
    double run(const int32_t* tokens, int T, BackwardObserver* obs, float* per_position = nullptr,
               ParamGrads* params = nullptr, const float* teacher = nullptr);

    // Whether a window of T tokens keeps every layer's activations (else recomputes).
    bool stores_all(int T) const;
    static BackwardMemory memory(const ModelConfig& cfg, int T, bool store_all);
    const Model& model() const { return model_; }

    struct Impl;

private:
    const Model& model_;
    BackwardOptions opt_;
    std::unique_ptr<Impl> impl_;
};

namespace layers {

// ---- backward of the layer functions of model/layers.h ------------------------

// RMSNorm y = x·r ⊙ w, r = 1/sqrt(mean(x²) + eps):
//   dx = r·(w ⊙ dy) - x · r³/H · Σ_i x_i w_i dy_i,   x, dy, dx: [T, H]; dx += when accumulate.
void rmsnorm_backward(const float* x, const float* w, int T, int H, double eps, const float* dy, float* dx,
                      bool accumulate);

// RoPE is a rotation per pair (i, i + d/2); its backward rotates dx by -angle, in place.
void rope_backward(float* dx, int T, int ld, int heads, int d, int pos0, const std::vector<float>& inv_freq);

// SwiGLU h = silu(g) ⊙ u:  dg = dh ⊙ u ⊙ σ(g)(1 + g(1 - σ(g))),  du = dh ⊙ silu(g).
// g, u, dh, dg, du: [n], du may alias dh. h (optional, may be null): silu(g) ⊙ u as the forward computes it.
void swiglu_backward(const float* g, const float* u, const float* dh, size_t n, float* dg, float* du, float* h);

// The weight gradient of y = x·Wᵀ: dW[N, K] += dyᵀ·x over n rows, dy: [n, N], x: [n, K].
void add_weight_grad(float* dW, const float* dy, const float* x, int n, int64_t N, int64_t K);

// Causal (optionally sliding-window) self-attention of T tokens (the forward's
// layers::attention with S = T and equal query and key positions):
//   q: [T, heads·d] and k: [T, kv_heads·d] after RoPE, v: [T, kv_heads·d],
//   dout: [T, heads·d] = ∂L/∂out.  Writes dq: [T, heads·d], dk, dv: [T, kv_heads·d].
//   stats: scratch of 2·T·heads floats (per row log-sum-exp and Σ P ⊙ dP).
// Recomputes the softmax from q and k (nothing of the forward is kept). Two
// passes: dq per (query block, head), then dk, dv per (key block, kv head), so
// every output element is written by one task in a fixed order: the result
// does not depend on the thread count.
void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v, int T, const float* dout,
                        float* dq, float* dk, float* dv, float* stats);

}  // namespace layers

}  // namespace moefy
