// The backward driver (model/backward.h): a forward over the decoder layers
// that keeps what the backward needs, the loss and its gradient at the
// logits, then the layers in reverse. The forward is the engine's own layer
// forward (model/decoder_layer.h); every product's blocks depend only on its
// shape, so forward and backward give bitwise the same result for any number
// of threads.
#include "model/backward.h"
#include "model/scratch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "model/layers.h"
#include "model/matmul.h"
#include "model/decoder_layer.h"
#include "model/matmul_t.h"
#include "model/moe_ffn.h"
#include "common/parallel.h"

namespace moefy {

namespace {

// The logits are formed for this many (token, vocabulary) entries at a time (64 MiB).
constexpr size_t kLogitsChunkElems = size_t(1) << 24;

struct Dims {
    size_t L, H, I, Qd, KVd, heads, V;
    explicit Dims(const ModelConfig& c)
        : L(size_t(c.num_layers)), H(size_t(c.hidden_size)), I(size_t(c.intermediate_size)),
          Qd(size_t(c.num_heads) * size_t(c.head_dim)), KVd(size_t(c.num_kv_heads) * size_t(c.head_dim)),
          heads(size_t(c.num_heads)), V(size_t(c.vocab_size)) {}
    // Floats of the forward activations one layer's backward reads.
    size_t layer_acts(size_t T) const { return T * (H + Qd + 2 * KVd + 2 * I); }
    size_t logits_rows(size_t T) const { return std::clamp<size_t>(kLogitsChunkElems / V, 1, std::max<size_t>(T, 1)); }
};

}  // namespace

ActivationMemory parse_activation_memory(const std::string& s) {
    if (s == "auto") return ActivationMemory::Auto;
    if (s == "store") return ActivationMemory::Store;
    if (s == "recompute") return ActivationMemory::Recompute;
    fail("activation memory '{}': expected auto, store or recompute", s);
}

// One layer's forward activations, as the backward reads them.
struct LayerActs {
    float* x_mid;  // [T, H] residual stream after attention
    float* q;      // [T, Qd] after RoPE
    float* k;      // [T, KVd] after RoPE
    float* v;      // [T, KVd]
    float* g;      // [T, I] gate pre-activation
    float* u;      // [T, I] up projection
};

struct Backprop::Impl {
    std::vector<float> xs;    // [L+1, T, H] residual stream at each layer input; xs[L] = last layer output
    std::vector<float> acts;  // [sets, layer_acts(T)]
    std::vector<float> xn;    // [T, H] normed stream (forward), normed final stream (loss)
    std::vector<float> dx;    // [T, H] ∂L/∂(residual stream)
    std::vector<float> dxn;   // [T, H] ∂L/∂(a norm's output)
    std::vector<float> att;   // [T, Qd] attention output (forward), ∂L/∂ of it (backward)
    std::vector<float> dq;    // [T, Qd]
    std::vector<float> dk, dv;       // [T, KVd]
    std::vector<float> h;            // [T, I] forward scratch; h for the observer
    std::vector<float> dh, dg, du;   // [T, I]
    std::vector<float> stats;        // [2, T, heads] attention log-sum-exp and Σ P ⊙ dP
    std::vector<float> logits;       // [rows, V] a chunk of logits, then their gradient
    std::vector<double> nll;         // [T-1]
    MoEScratch moe;                  // MoE layers' forward
    MoEBackwardScratch moe_back;     // and backward

    LayerActs layer(const Dims& d, size_t T, size_t set) {
        float* p = acts.data() + set * d.layer_acts(T);
        LayerActs a;
        a.x_mid = p, p += T * d.H;
        a.q = p, p += T * d.Qd;
        a.k = p, p += T * d.KVd;
        a.v = p, p += T * d.KVd;
        a.g = p, p += T * d.I;
        a.u = p;
        return a;
    }
};

Backprop::Backprop(const Model& model, BackwardOptions opt) : model_(model), opt_(opt), impl_(std::make_unique<Impl>()) {}

Backprop::~Backprop() = default;

BackwardMemory Backprop::memory(const ModelConfig& cfg, int T, bool store_all) {
    const Dims d(cfg);
    const size_t t = size_t(std::max(T, 0));
    BackwardMemory m;
    m.checkpoints = (d.L + 1) * t * d.H * sizeof(float);
    m.layer_acts = (store_all ? d.L : 1) * d.layer_acts(t) * sizeof(float);
    m.scratch = (t * (3 * d.H + 2 * d.Qd + 2 * d.KVd + 4 * d.I + 2 * d.heads) + d.logits_rows(t) * d.V) * sizeof(float) +
                t * sizeof(double);
    return m;
}

bool Backprop::stores_all(int T) const {
    switch (opt_.memory) {
        case ActivationMemory::Store: return true;
        case ActivationMemory::Recompute: return false;
        case ActivationMemory::Auto: break;
    }
    const BackwardMemory m = memory(model_.config(), T, true);
    return m.checkpoints + m.layer_acts <= opt_.store_budget_bytes;
}

namespace {

// x_out = decoder layer l (x_in), x: [T, H]: the engine's layer forward
// (model/decoder_layer.h) writing q, k, v, g, u into the kept activations `a`
// and recording the stream after attention in a.x_mid.
void forward_layer(const Model& m, int l, const float* x_in, int T, float* x_out, const LayerActs& a,
                   Backprop::Impl& w) {
    const ModelConfig& c = m.config();
    std::memcpy(x_out, x_in, size_t(T) * size_t(c.hidden_size) * sizeof(float));
    const LayerKV kv{a.k, a.v, a.k, a.v, T, 0};
    const LayerBuffers buf{w.xn.data(), a.q, w.att.data(), a.g, a.u, w.h.data(), &w.moe, a.x_mid};
    decoder_layer_forward(c, l, m.layer(l), m.rope_freqs(), x_out, T, 0, kv, buf, {});
}

// dx: ∂L/∂(output of layer l) on entry, ∂L/∂(its input x_in) on return.
void backward_layer(const Model& m, int l, const float* x_in, int T, const LayerActs& a, BackwardObserver* obs,
                    ParamGrads* params, Backprop::Impl& w) {
    const ModelConfig& c = m.config();
    const LayerWeights& L = m.layer(l);
    const int H = c.hidden_size, D = c.head_dim, Qd = c.num_heads * D, KVd = c.num_kv_heads * D;
    float* dx = w.dx.data();
    auto grad_of = [&](const WeightRef& W) { return params ? params->grad_of(W) : nullptr; };

    if (L.is_moe) {
        // FFN: x_out = x_mid + MoE(xf), xf = RMSNorm_post(x_mid); the MoE block's own backward
        layers::rmsnorm(a.x_mid, L.post_norm.data(), T, H, c.rms_norm_eps, w.xn.data());
        std::fill(w.dxn.begin(), w.dxn.begin() + ptrdiff_t(size_t(T) * size_t(H)), 0.0f);
        moe_ffn_backward(c, l, L.moe, w.xn.data(), T, dx, w.dxn.data(), params, w.moe_back);
    } else {
        // FFN: x_out = x_mid + h·W_dᵀ, h = silu(g) ⊙ u, g/u = RMSNorm_post(x_mid)·W_{g,u}ᵀ
        const int I = L.ffn.width();
        matmul_t(dx, T, L.ffn.down, w.dh.data());  // dh: [T, I]
        const bool want = obs && obs->wants(l);
        float* dWd = grad_of(L.ffn.down);
        layers::swiglu_backward(a.g, a.u, w.dh.data(), size_t(T) * size_t(I), w.dg.data(), w.du.data(),
                                want || dWd ? w.h.data() : nullptr);
        if (want) obs->on_ffn_grads(FfnGrads{l, T, I, w.h.data(), w.dh.data(), a.g, w.dg.data()});
        if (dWd) layers::add_weight_grad(dWd, dx, w.h.data(), T, H, I);
        if (float* dW = grad_of(L.ffn.gate) ; dW || grad_of(L.ffn.up)) {
            layers::rmsnorm(a.x_mid, L.post_norm.data(), T, H, c.rms_norm_eps, w.xn.data());  // xf
            if (dW) layers::add_weight_grad(dW, w.dg.data(), w.xn.data(), T, I, H);
            if (float* dWu = grad_of(L.ffn.up)) layers::add_weight_grad(dWu, w.du.data(), w.xn.data(), T, I, H);
        }
        matmul_t(w.dg.data(), T, L.ffn.gate, w.dxn.data());
        matmul_t(w.du.data(), T, L.ffn.up, w.dxn.data(), /*accumulate=*/true);
    }
    layers::rmsnorm_backward(a.x_mid, L.post_norm.data(), T, H, c.rms_norm_eps, w.dxn.data(), dx, /*accumulate=*/true);

    // Attention: x_mid = x_in + Attn(RoPE(xa·W_qᵀ), RoPE(xa·W_kᵀ), xa·W_vᵀ)·W_oᵀ, xa = RMSNorm_in(x_in)
    matmul_t(dx, T, L.o, w.att.data());  // ∂L/∂att: [T, Qd]
    const layers::AttnShape shape{c.num_heads, c.num_kv_heads, D, c.sliding_window};
    layers::attention_backward(shape, a.q, a.k, a.v, T, w.att.data(), w.dq.data(), w.dk.data(), w.dv.data(),
                               w.stats.data());
    layers::rope_backward(w.dq.data(), T, Qd, c.num_heads, D, 0, m.rope_freqs());
    layers::rope_backward(w.dk.data(), T, KVd, c.num_kv_heads, D, 0, m.rope_freqs());
    matmul_t(w.dq.data(), T, L.q, w.dxn.data());
    matmul_t(w.dk.data(), T, L.k, w.dxn.data(), /*accumulate=*/true);
    matmul_t(w.dv.data(), T, L.v, w.dxn.data(), /*accumulate=*/true);
    layers::rmsnorm_backward(x_in, L.input_norm.data(), T, H, c.rms_norm_eps, w.dxn.data(), dx, /*accumulate=*/true);
}

// Mean NLL of the T-1 predictions from the last layer's output x: [T, H];
// writes dx = ∂L/∂x and returns Σ NLL. Logits are formed a chunk of tokens at
// a time ([rows, V]) and turned into their gradient in place.
double loss_backward(const Model& m, const int32_t* tokens, int T, const float* x, Backprop::Impl& w,
                     float* per_position, const float* teacher) {
    const ModelConfig& c = m.config();
    const Dims d(c);
    const int H = c.hidden_size, V = c.vocab_size, n = T - 1;
    const WeightRef& head = m.lm_head_weight();
    layers::rmsnorm(x, m.final_norm_weight().data(), T, H, c.rms_norm_eps, w.xn.data());
    std::fill(w.dxn.begin(), w.dxn.begin() + ptrdiff_t(size_t(T) * size_t(H)), 0.0f);  // row T-1 predicts nothing
    const int rows = int(d.logits_rows(size_t(n)));
    const double inv_n = 1.0 / double(n);
    for (int r0 = 0; r0 < n; r0 += rows) {
        const int rn = std::min(rows, n - r0);
        float* lg = w.logits.data();  // [rn, V]
        matmul(w.xn.data() + size_t(r0) * H, rn, head, lg);
        parallel_for_each(rn, [&](int64_t i) {
            float* row = lg + size_t(i) * V;
            const int y = tokens[r0 + i + 1];
            const float mx = *std::max_element(row, row + V);
            double se = 0.0;
            for (int j = 0; j < V; ++j) se += std::exp(double(row[j] - mx));
            const double lse = double(mx) + std::log(se);
            if (teacher) {
                // KL(q ‖ p) = Σ_j q_j (log q_j − log p_j); ∂/∂logit_j = (p_j − q_j) / n
                const float* q = teacher + size_t(r0 + i) * V;
                double kl = 0;
                for (int j = 0; j < V; ++j) {
                    if (q[j] > 0) kl += double(q[j]) * (std::log(double(q[j])) - (double(row[j]) - lse));
                    row[j] = float((std::exp(double(row[j]) - lse) - double(q[j])) * inv_n);
                }
                w.nll[size_t(r0 + i)] = kl;
                return;
            }
            w.nll[size_t(r0 + i)] = lse - double(row[y]);
            // ∂L/∂logit_j = (softmax_j - [j = y]) / n
            for (int j = 0; j < V; ++j) row[j] = float(std::exp(double(row[j]) - lse) * inv_n);
            row[y] -= float(inv_n);
        }, rn > 1);
        matmul_t(lg, rn, head, w.dxn.data() + size_t(r0) * H);
    }
    layers::rmsnorm_backward(x, m.final_norm_weight().data(), T, H, c.rms_norm_eps, w.dxn.data(), w.dx.data(),
                             /*accumulate=*/false);
    double total = 0.0;
    for (int t = 0; t < n; ++t) {
        total += w.nll[size_t(t)];
        if (per_position) per_position[t] = float(w.nll[size_t(t)]);
    }
    return total;
}

}  // namespace

double Backprop::run(const int32_t* tokens, int T, BackwardObserver* obs, float* per_position, ParamGrads* params,
                     const float* teacher) {
    const ModelConfig& c = model_.config();
    if (T < 2) fail("backward: a window needs at least 2 tokens (one prediction), got {}", T);
    if (c.max_position_embeddings > 0 && T > c.max_position_embeddings)
        fail("backward: window of {} tokens exceeds max_position_embeddings {} of the model", T, c.max_position_embeddings);
    const Dims d(c);
    const size_t t = size_t(T);
    const bool store = stores_all(T);
    Impl& w = *impl_;
    grow(w.xs, (d.L + 1) * t * d.H);
    grow(w.acts, (store ? d.L : 1) * d.layer_acts(t));
    for (auto* v : {&w.xn, &w.dx, &w.dxn}) grow(*v, t * d.H);
    for (auto* v : {&w.att, &w.dq}) grow(*v, t * d.Qd);
    for (auto* v : {&w.dk, &w.dv}) grow(*v, t * d.KVd);
    for (auto* v : {&w.h, &w.dh, &w.dg, &w.du}) grow(*v, t * d.I);
    grow(w.stats, 2 * t * d.heads);
    grow(w.logits, d.logits_rows(t - 1) * d.V);
    grow(w.nll, t);

    auto xs = [&](size_t l) { return w.xs.data() + l * t * d.H; };
    gather_rows(model_.embed_weight(), tokens, T, xs(0));
    for (size_t l = 0; l < d.L; ++l) forward_layer(model_, int(l), xs(l), T, xs(l + 1), w.layer(d, t, store ? l : 0), w);
    const double nll = loss_backward(model_, tokens, T, xs(d.L), w, per_position, teacher);
    for (size_t l = d.L; l-- > 0;) {
        const LayerActs a = w.layer(d, t, store ? l : 0);
        // Recompute mode: the last layer's activations are still in the one set.
        if (!store && l + 1 < d.L) forward_layer(model_, int(l), xs(l), T, xs(l + 1), a, w);
        backward_layer(model_, int(l), xs(l), T, a, obs, params, w);
    }
    return nll;
}

}  // namespace moefy
