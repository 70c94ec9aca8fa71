// Backward of the MoE feed-forward block (model/moe_ffn.h). For token t and a
// routed expert e with combine weight w (forward: y_t += w · W_d h, h = silu(g) ⊙ u,
// g/u = xf_t·W_{g,u}ᵀ):
//   ∂L/∂w   = dy_t · (W_d h) = (dy_t·W_d) · h
//   ∂L/∂h   = w · (dy_t·W_d)            ∂L/∂W_d += (w·dy_t)ᵀ h
//   dg, du  = SwiGLU backward            ∂L/∂W_g += dgᵀ xf_t,  ∂L/∂W_u += duᵀ xf_t
//   ∂L/∂xf_t += dg·W_g + du·W_u
// then the combine weights' gradients go through route_tokens' weighting into
// the logits, and through the router into xf. Shared experts are the same with
// their fixed weight (deepseek: 1) or the residual gate's softmax.
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/backward.h"
#include "model/scratch.h"
#include "model/layers.h"
#include "model/matmul_t.h"
#include "model/moe_ffn.h"
#include "common/parallel.h"

namespace moefy {

namespace {

double dot(const float* a, const float* b, int n) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
    return s;
}

struct Grads {
    ParamGrads* params;
    float* of(const WeightRef& w) const { return params && !w.empty() ? params->grad_of(w) : nullptr; }
};

// One SwiGLU block's backward on n rows: x [n, H] its inputs, dy [n, H] the
// gradient at its output, wt [n] the weight its output was multiplied by
// (nullptr: 1). Writes dwt [n] = ∂L/∂wt when asked, adds ∂L/∂x into dx [n, H].
// dy is overwritten (scaled by wt).
void swiglu_block_backward(const FfnWeights& f, const float* x, float* dy, const float* wt, int n, int H, float* dwt,
                           float* dx, const Grads& grads, MoEBackwardScratch& s) {
    const int I = f.width();
    float* g = grow(s.g, size_t(n) * I);
    float* u = grow(s.u, size_t(n) * I);
    float* h = grow(s.h, size_t(n) * I);
    float* dh = grow(s.dh, size_t(n) * I);
    float* dg = grow(s.dg, size_t(n) * I);
    float* du = grow(s.du, size_t(n) * I);
    layers::swiglu_hidden(f, x, n, g, u, h);
    matmul_t(dy, n, f.down, dh);  // dy·W_d: [n, I]
    if (wt) {
        parallel_for_each(n, [&](int64_t i) {
            float* dhi = dh + size_t(i) * I;
            if (dwt) dwt[i] = float(dot(dhi, h + size_t(i) * I, I));
            for (int c = 0; c < I; ++c) dhi[c] *= wt[i];
            float* dyi = dy + size_t(i) * H;
            for (int c = 0; c < H; ++c) dyi[c] *= wt[i];
        }, size_t(n) * size_t(I + H) >= (1 << 16));
    }
    if (float* dW = grads.of(f.down)) layers::add_weight_grad(dW, dy, h, n, H, I);
    layers::swiglu_backward(g, u, dh, size_t(n) * size_t(I), dg, du, nullptr);
    if (float* dW = grads.of(f.gate)) layers::add_weight_grad(dW, dg, x, n, I, H);
    if (float* dW = grads.of(f.up)) layers::add_weight_grad(dW, du, x, n, I, H);
    matmul_t(dg, n, f.gate, dx, /*accumulate=*/true);
    matmul_t(du, n, f.up, dx, /*accumulate=*/true);
}

}  // namespace

void route_weights_backward(const MoEConfig& m, int layer, const float* r, const int32_t* sel, const float* dw, float* dr) {
    if (!m.multiply_gate_scores) return;  // every weight is 1
    const int E = m.num_experts, k = m.top_k;
    const double scale = layer < int(m.score_scale.size()) ? m.score_scale[size_t(layer)] : 1.0;
    const double mx = r[sel[0]];
    if (m.softmax_over_all && !m.renormalize_topk) {
        // w_j = scale · p[sel_j], p = softmax over all E: ∂/∂r_e = p_e (δ_e − Σ_j p[sel_j] δ_j)
        std::vector<double> p(static_cast<size_t>(E));
        double z = 0.0;
        for (int e = 0; e < E; ++e) z += (p[size_t(e)] = std::exp(double(r[e]) - mx));
        double pd = 0.0;
        std::vector<double> delta(static_cast<size_t>(E), 0.0);
        for (int j = 0; j < k; ++j) {
            delta[size_t(sel[j])] = scale * dw[j];
            pd += p[size_t(sel[j])] / z * delta[size_t(sel[j])];
        }
        for (int e = 0; e < E; ++e) dr[e] += float(p[size_t(e)] / z * (delta[size_t(e)] - pd));
    } else if (m.softmax_over_all || m.gate_softmax) {
        // softmax over the k selected logits (mixtral's renormalised top-k is the same function)
        std::vector<double> q(static_cast<size_t>(k));
        double z = 0.0;
        for (int j = 0; j < k; ++j) z += (q[size_t(j)] = std::exp(double(r[sel[j]]) - mx));
        double qd = 0.0;
        for (int j = 0; j < k; ++j) qd += (q[size_t(j)] /= z) * scale * dw[j];
        for (int j = 0; j < k; ++j) dr[sel[j]] += float(q[size_t(j)] * (scale * dw[j] - qd));
    } else {
        for (int j = 0; j < k; ++j) dr[sel[j]] += float(scale * dw[j]);
    }
}

void moe_ffn_backward(const ModelConfig& cfg, int layer, const MoEWeights& mw, const float* xf, int T, const float* dy,
                      float* dxf, ParamGrads* params, MoEBackwardScratch& s) {
    const MoEConfig& m = cfg.moe;
    const int H = cfg.hidden_size, E = int(mw.experts.size()), k = m.top_k;
    const Grads grads{params};

    // The forward's routing, again.
    float* logits = grow(s.logits, size_t(T) * E);
    router_logits(mw, xf, T, logits, s.router_tmp);  // router_tmp: tanh(W1·x) of the mlp router
    int32_t* sel = grow(s.sel, size_t(T) * k);
    float* w = grow(s.w, size_t(T) * k);
    route_tokens(m, layer, logits, T, sel, w);
    float* dw = grow_zeroed(s.dw, size_t(T) * k);

    // Token lists per expert (counting sort, tokens ascending); slot: the (t, j) of each row.
    int32_t* off = grow_zeroed(s.offsets, size_t(E) + 1);
    for (size_t i = 0; i < size_t(T) * k; ++i) ++off[sel[i] + 1];
    for (int e = 0; e < E; ++e) off[e + 1] += off[e];
    int32_t* cursor = grow(s.cursor, size_t(E));
    std::copy(off, off + E, cursor);
    int32_t* rows = grow(s.rows, size_t(T) * k);
    int32_t* slot = grow(s.slot, size_t(T) * k);
    for (int t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) {
            const int32_t pos = cursor[sel[size_t(t) * k + j]]++;
            rows[pos] = t, slot[pos] = t * k + j;
        }

    for (int e = 0; e < E; ++e) {
        const int n = off[e + 1] - off[e];
        if (n == 0) continue;
        const int32_t* r = rows + off[e];
        const int32_t* sl = slot + off[e];
        float* xg = grow(s.xg, size_t(n) * H);
        float* dyg = grow(s.dyg, size_t(n) * H);
        float* dxg = grow_zeroed(s.dxg, size_t(n) * H);
        float* wt = grow(s.wt, size_t(n));
        float* dwt = grow(s.dwt, size_t(n));
        for (int i = 0; i < n; ++i) {
            std::copy_n(xf + size_t(r[i]) * H, H, xg + size_t(i) * H);
            std::copy_n(dy + size_t(r[i]) * H, H, dyg + size_t(i) * H);
            wt[i] = w[sl[i]];
        }
        swiglu_block_backward(mw.experts[size_t(e)], xg, dyg, wt, n, H, dwt, dxg, grads, s);
        for (int i = 0; i < n; ++i) {
            dw[sl[i]] = dwt[i];
            float* d = dxf + size_t(r[i]) * H;
            const float* gi = dxg + size_t(i) * H;
            for (int c = 0; c < H; ++c) d[c] += gi[c];
        }
    }

    // Combine weights -> router logits -> router weights and xf.
    float* dlog = grow_zeroed(s.dlogits, size_t(T) * E);
    for (int t = 0; t < T; ++t)
        route_weights_backward(m, layer, logits + size_t(t) * E, sel + size_t(t) * k, dw + size_t(t) * k,
                               dlog + size_t(t) * E);
    if (!mw.router_w1.empty()) {
        // logits = W2 · a, a = tanh(W1 · x)
        const int64_t A = mw.router_w1.rows;
        const float* a = s.router_tmp.data();
        if (float* dW = grads.of(mw.router_w2)) layers::add_weight_grad(dW, dlog, a, T, E, A);
        float* da = grow(s.da, size_t(T) * size_t(A));
        matmul_t(dlog, T, mw.router_w2, da);
        for (size_t i = 0; i < size_t(T) * size_t(A); ++i) da[i] *= 1.0f - a[i] * a[i];
        if (float* dW = grads.of(mw.router_w1)) layers::add_weight_grad(dW, da, xf, T, A, H);
        matmul_t(da, T, mw.router_w1, dxf, /*accumulate=*/true);
    } else {
        if (float* dW = grads.of(mw.router)) layers::add_weight_grad(dW, dlog, xf, T, E, H);
        matmul_t(dlog, T, mw.router, dxf, /*accumulate=*/true);
    }

    // Shared experts: every token, weight 1 (deepseek) or softmax(G·x)·scale (llama-moe-residual).
    const int R = int(mw.shared.size());
    if (R == 0) return;
    float* sw = nullptr;   // [T, R] softmax (before the scale)
    float* dsw = nullptr;  // [T, R] ∂L/∂ of the weights
    if (m.shared_multiply) {
        sw = grow(s.sw, size_t(T) * R);
        dsw = grow_zeroed(s.dsw, size_t(T) * R);
        shared_gate_softmax(mw, xf, T, sw);
    }
    float* dys = grow(s.ys, size_t(T) * H);
    float* col = sw ? grow(s.col, size_t(T)) : nullptr;
    float* dcol = sw ? grow(s.dcol, size_t(T)) : nullptr;
    for (int i = 0; i < R; ++i) {
        std::copy_n(dy, size_t(T) * H, dys);
        if (sw)
            for (int t = 0; t < T; ++t) col[t] = sw[size_t(t) * R + i] * m.shared_scale;
        swiglu_block_backward(mw.shared[size_t(i)], xf, dys, col, T, H, dcol, dxf, grads, s);
        if (sw)
            for (int t = 0; t < T; ++t) dsw[size_t(t) * R + i] = dcol[t] * m.shared_scale;
    }
    if (!sw || mw.shared_gate.empty()) return;
    // softmax backward: dz_i = s_i (dsw_i − Σ_j s_j dsw_j)
    float* dz = grow(s.dz, size_t(T) * R);
    for (int t = 0; t < T; ++t) {
        const float* st = sw + size_t(t) * R;
        const float* dt = dsw + size_t(t) * R;
        const double sd = dot(st, dt, R);
        for (int i = 0; i < R; ++i) dz[size_t(t) * R + i] = float(st[i] * (dt[i] - sd));
    }
    if (float* dW = grads.of(mw.shared_gate)) layers::add_weight_grad(dW, dz, xf, T, R, H);
    matmul_t(dz, T, mw.shared_gate, dxf, /*accumulate=*/true);
}

}  // namespace moefy
