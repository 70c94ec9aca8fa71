// MoE feed-forward: routing, then tokens grouped per expert (ascending expert
// id, tokens in order), so each expert is one batched product per layer.
#include "model/moe_ffn.h"
#include "model/scratch.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "model/layers.h"
#include "common/parallel.h"
#include "model/vec_math.h"

namespace moefy {

namespace {

int max_width(const std::vector<FfnWeights>& fs) {
    int w = 0;
    for (const FfnWeights& f : fs) w = std::max(w, f.width());
    return w;
}

// y[n, H] = h[n, I] · W_downᵀ for one block, then the observer sees it.
void notify(const RunHooks& hooks, const FfnActs& a) {
    if (hooks.ffn && hooks.ffn->wants(a.layer)) hooks.ffn->on_ffn(a.layer, a);
}

// mass[t, e] = ‖E_e(x_t)‖₂ for every routed expert on every token (dense cost).
void expert_mass(const MoEWeights& mw, const float* x, int T, int H, MoEScratch& s, float* mass) {
    const int E = int(mw.experts.size()), I = max_width(mw.experts);
    float* g = grow(s.g, size_t(T) * I);
    float* u = grow(s.u, size_t(T) * I);
    float* h = grow(s.h, size_t(T) * I);
    float* y = grow(s.y, size_t(T) * H);
    for (int e = 0; e < E; ++e) {
        const FfnWeights& f = mw.experts[size_t(e)];
        layers::swiglu_hidden(f, x, T, g, u, h);
        matmul(h, T, f.down, y);
        for (int t = 0; t < T; ++t) mass[size_t(t) * E + e] = float(std::sqrt(vmath::sum_squares(y + size_t(t) * H, size_t(H))));
    }
}

}  // namespace

void topk_desc(const float* v, int n, int k, int32_t* idx) {
    std::vector<int32_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
    std::copy(order.begin(), order.begin() + k, idx);
}

void route_tokens(const MoEConfig& m, int layer, const float* logits, int T, int32_t* sel, float* w) {
    const int E = m.num_experts, k = m.top_k;
    const float scale = layer < int(m.score_scale.size()) ? m.score_scale[size_t(layer)] : 1.0f;
    for (int t = 0; t < T; ++t) {
        const float* r = logits + size_t(t) * E;
        int32_t* st = sel + size_t(t) * k;
        float* wt = w + size_t(t) * k;
        topk_desc(r, E, k, st);
        const float mx = r[st[0]];
        if (m.softmax_over_all) {
            double z = 0.0;
            for (int e = 0; e < E; ++e) z += std::exp(double(r[e] - mx));
            for (int j = 0; j < k; ++j) wt[j] = float(std::exp(double(r[st[j]] - mx)) / z);
            if (m.renormalize_topk) {
                float sum = 0.0f;
                for (int j = 0; j < k; ++j) sum += wt[j];
                for (int j = 0; j < k; ++j) wt[j] /= sum;
            }
        } else if (m.gate_softmax) {
            double z = 0.0;
            for (int j = 0; j < k; ++j) z += std::exp(double(r[st[j]] - mx));
            for (int j = 0; j < k; ++j) wt[j] = float(std::exp(double(r[st[j]] - mx)) / z);
        } else {
            for (int j = 0; j < k; ++j) wt[j] = r[st[j]];
        }
        for (int j = 0; j < k; ++j) wt[j] = m.multiply_gate_scores ? wt[j] * scale : 1.0f;
    }
}

void shared_gate_softmax(const MoEWeights& mw, const float* x, int T, float* sw) {
    const int R = int(mw.shared.size());
    if (!mw.shared_gate.empty()) {
        matmul(x, T, mw.shared_gate, sw);
    } else {
        std::fill(sw, sw + size_t(T) * R, 0.0f);
    }
    for (int t = 0; t < T; ++t) {
        float* st = sw + size_t(t) * R;
        const float mx = *std::max_element(st, st + R);
        double z = 0.0;
        for (int i = 0; i < R; ++i) z += std::exp(double(st[i] - mx));
        for (int i = 0; i < R; ++i) st[i] = float(std::exp(double(st[i] - mx)) / z);
    }
}

void router_logits(const MoEWeights& mw, const float* x, int T, float* logits, std::vector<float>& scratch) {
    if (!mw.router_w1.empty()) {
        const int64_t E = mw.router_w1.rows;
        float* a = grow(scratch, size_t(T) * size_t(E));
        matmul(x, T, mw.router_w1, a);
        for (size_t i = 0; i < size_t(T) * size_t(E); ++i) a[i] = std::tanh(a[i]);
        matmul(a, T, mw.router_w2, logits);
    } else {
        matmul(x, T, mw.router, logits);
    }
}

void moe_ffn(const ModelConfig& cfg, int layer, const MoEWeights& mw, const float* xf, int T, float* x_resid,
             const RunHooks& hooks, MoEScratch& s) {
    const MoEConfig& m = cfg.moe;
    const int H = cfg.hidden_size, E = int(mw.experts.size()), k = m.top_k;

    float* logits = grow(s.logits, size_t(T) * E);
    router_logits(mw, xf, T, logits, s.router_tmp);
    int32_t* sel = grow(s.sel, size_t(T) * k);
    float* w = grow(s.w, size_t(T) * k);
    route_tokens(m, layer, logits, T, sel, w);

    if (hooks.route && hooks.route->wants(layer)) {
        RouteInput in{layer, T, H, E, k, xf, logits, nullptr};
        if (hooks.route->wants_mass()) {
            expert_mass(mw, xf, T, H, s, grow(s.mass, size_t(T) * E));
            in.mass = s.mass.data();
        }
        hooks.route->route(in, sel, w);
        for (size_t i = 0; i < size_t(T) * k; ++i)
            if (sel[i] < -1 || sel[i] >= E) fail("layer {}: routing override chose expert {} of {}", layer, sel[i], E);
    }

    // Token lists per expert, tokens ascending, in one scratch array by a
    // counting sort: expert e's tokens are rows[off[e] .. off[e+1]). A token
    // choosing an expert twice (possible only through an override) is listed
    // once with the weights summed.
    int32_t* off = grow(s.offsets, size_t(E) + 1);
    int32_t* rows = grow(s.rows, size_t(T) * k);
    float* roww = grow(s.roww, size_t(T) * k);
    int32_t* slot = grow(s.slot, size_t(T) * k);  // [T, k] position in rows of each choice, -1: none
    std::fill(off, off + E + 1, 0);
    for (int t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) {
            const int32_t* st = sel + size_t(t) * k;
            if (st[j] >= 0 && std::find(st, st + j, st[j]) == st + j) ++off[st[j] + 1];
        }
    for (int e = 0; e < E; ++e) off[e + 1] += off[e];
    int32_t* cursor = grow(s.cursor, size_t(E));
    std::copy(off, off + E, cursor);
    for (int t = 0; t < T; ++t) {
        const int32_t* st = sel + size_t(t) * k;
        int32_t* sl = slot + size_t(t) * k;
        for (int j = 0; j < k; ++j) {
            const float wj = w[size_t(t) * k + j];
            sl[j] = -1;
            if (st[j] < 0) continue;
            const int32_t* first = std::find(st, st + j, st[j]);
            if (first != st + j) {
                roww[sl[first - st]] += wj;
                continue;
            }
            const int32_t pos = cursor[st[j]]++;
            rows[pos] = t, roww[pos] = wj, sl[j] = pos;
        }
    }
    if (hooks.routing) {
        RoutingStats& st = *hooks.routing;
        if (st.counts.size() < size_t(cfg.num_layers)) st.counts.resize(size_t(cfg.num_layers));
        if (st.tokens.size() < size_t(cfg.num_layers)) st.tokens.resize(size_t(cfg.num_layers));
        auto& c = st.counts[size_t(layer)];
        if (c.size() < size_t(E)) c.resize(size_t(E));
        for (int e = 0; e < E; ++e) c[size_t(e)] += int64_t(off[e + 1] - off[e]);
        st.tokens[size_t(layer)] += T;
    }

    const int I = std::max(max_width(mw.experts), max_width(mw.shared));
    float* g = grow(s.g, size_t(T) * I);
    float* u = grow(s.u, size_t(T) * I);
    float* h = grow(s.h, size_t(T) * I);
    float* y = grow(s.y, size_t(T) * H);
    float* xg = grow(s.xg, size_t(T) * H);

    for (int e = 0; e < E; ++e) {
        const int32_t* r = rows + off[e];
        const int n = off[e + 1] - off[e];
        if (n == 0) continue;
        const FfnWeights& f = mw.experts[size_t(e)];
        // xg: [n, H] the FFN inputs of this expert's tokens
        parallel_for_each(
            n, [&](int64_t i) { std::copy_n(xf + size_t(r[i]) * H, H, xg + size_t(i) * H); }, n * H >= (1 << 16));
        layers::swiglu_hidden(f, xg, n, g, u, h);
        notify(hooks, {layer, T, H, xf, e, false, n, r, roww + off[e], f.width(), g, u, h});
        matmul(h, n, f.down, y);
        const float* wt = roww + off[e];
        parallel_for_each(
            n,
            [&](int64_t i) {
                float* xr = x_resid + size_t(r[i]) * H;
                const float* yi = y + size_t(i) * H;
                for (int c = 0; c < H; ++c) xr[c] += wt[i] * yi[c];
            },
            n * H >= (1 << 16));
    }

    // Shared experts see every token. llama-moe-residual: weight softmax(G·x)_r ·
    // score_scale_factor_residual (G is zero after conversion: sf/R); deepseek: plain sum.
    const int R = int(mw.shared.size());
    if (R == 0) return;
    float* sw = nullptr;
    if (m.shared_multiply) {
        sw = grow(s.sw, size_t(T) * R);
        shared_gate_softmax(mw, xf, T, sw);
        for (size_t i = 0; i < size_t(T) * R; ++i) sw[i] *= m.shared_scale;
    }
    float* col = sw ? grow(s.col, size_t(T)) : nullptr;
    for (int i = 0; i < R; ++i) {
        const FfnWeights& f = mw.shared[size_t(i)];
        layers::swiglu_hidden(f, xf, T, g, u, h);
        if (sw)
            for (int t = 0; t < T; ++t) col[t] = sw[size_t(t) * R + i];
        notify(hooks, {layer, T, H, xf, i, true, T, nullptr, col, f.width(), g, u, h});
        if (!sw) {
            matmul(h, T, f.down, x_resid, /*accumulate=*/true);
            continue;
        }
        matmul(h, T, f.down, y);
        parallel_for_each(
            T,
            [&](int64_t t) {
                for (int c = 0; c < H; ++c) x_resid[size_t(t) * H + c] += col[t] * y[size_t(t) * H + c];
            },
            T * H >= (1 << 16));
    }
}

}  // namespace moefy
