// MoE vs dense on the same tokens: perplexity, per-layer FFN output error
// (reconstructed from the engine's FFN hook), expert load, oracle routing.
#include "eval/compare.h"
#include "model/scratch.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"
#include "model/checkpoint.h"
#include "model/layers.h"
#include "model/moe_ffn.h"
#include "model/tensor_names.h"

namespace moefy {

// ---- load statistics -------------------------------------------------------------

std::vector<double> LayerQuality::load() const {
    std::vector<double> f(counts.size(), 0.0);
    if (tokens <= 0) return f;
    for (size_t e = 0; e < counts.size(); ++e) f[e] = double(counts[e]) / double(tokens);
    return f;
}

static double coefficient_of_variation(const std::vector<double>& v) {
    if (v.empty()) return 0.0;
    double mean = 0, var = 0;
    for (double x : v) mean += x;
    mean /= double(v.size());
    for (double x : v) var += (x - mean) * (x - mean);
    var /= double(v.size());
    return mean > 0 ? std::sqrt(var) / mean : 0.0;
}

double LayerQuality::load_cv() const { return coefficient_of_variation(load()); }

double MoEQuality::total_rel_error() const {
    double num = 0, den = 0;
    for (const LayerQuality& l : layers) num += l.err_num, den += l.err_den;
    return den > 0 ? num / den : 0.0;
}

// ---- oracle routing ------------------------------------------------------------------

void model_weights(const MoEConfig& m, int layer, const float* z, int E, const int32_t* sel, int k, float* w) {
    const float scale = layer < int(m.score_scale.size()) ? m.score_scale[size_t(layer)] : 1.0f;
    if (!m.multiply_gate_scores) {
        for (int j = 0; j < k; ++j) w[j] = sel[j] >= 0 ? 1.0f : 0.0f;
        return;
    }
    float mx = -INFINITY;
    if (m.softmax_over_all) {
        for (int e = 0; e < E; ++e) mx = std::max(mx, z[e]);
    } else {
        for (int j = 0; j < k; ++j)
            if (sel[j] >= 0) mx = std::max(mx, z[sel[j]]);
    }
    if (m.softmax_over_all || m.gate_softmax) {
        double sum = 0.0;
        if (m.softmax_over_all && !m.renormalize_topk) {
            for (int e = 0; e < E; ++e) sum += std::exp(double(z[e] - mx));
        } else {
            // mixtral's renormalised top-k softmax equals the softmax of the chosen logits
            for (int j = 0; j < k; ++j)
                if (sel[j] >= 0) sum += std::exp(double(z[sel[j]] - mx));
        }
        for (int j = 0; j < k; ++j) w[j] = sel[j] >= 0 ? float(std::exp(double(z[sel[j]] - mx)) / sum) : 0.0f;
    } else {
        for (int j = 0; j < k; ++j) w[j] = sel[j] >= 0 ? z[sel[j]] : 0.0f;
    }
    for (int j = 0; j < k; ++j) w[j] *= scale;
}

void oracle_route(const MoEConfig& m, int layer, const float* logits, const float* mass, int T, int E, int k,
                  int32_t* sel, float* w) {
    if (k < 1 || k > E) fail("oracle routing: top-k {} with {} experts", k, E);
    parallel_for_each(T, [&](int64_t t) {
        int32_t* st = sel + size_t(t) * k;
        topk_desc(mass + size_t(t) * E, E, k, st);
        model_weights(m, layer, logits + size_t(t) * E, E, st, k, w + size_t(t) * k);
    }, T > 64);
}

void OracleRoute::route(const RouteInput& in, int32_t* sel, float* weight) {
    if (!in.mass) fail("oracle routing: layer {}: the engine gave no expert masses", in.layer);
    oracle_route(m_, in.layer, in.logits, in.mass, in.T, in.E, in.k, sel, weight);
}

// ---- checks --------------------------------------------------------------------------

void check_reference_pair(const Checkpoint& moe, const Checkpoint& dense) {
    const ModelConfig& a = moe.config;
    const ModelConfig& b = dense.config;
    if (b.is_moe()) fail("--reference {}: is an MoE model ({}); the reference must be the dense model", dense.dir, model_kind_name(b.kind));
    if (!a.is_moe()) fail("--model {}: is a dense model; comparing against a reference needs an MoE model", moe.dir);
    auto same = [&](const char* field, int x, int y) {
        if (x != y) fail("{} and {}: {} differs ({} vs {}); the MoE model was not made from this reference", moe.dir, dense.dir, field, x, y);
    };
    same("num_hidden_layers", a.num_layers, b.num_layers);
    same("hidden_size", a.hidden_size, b.hidden_size);
    same("vocab_size", a.vocab_size, b.vocab_size);
    same("num_attention_heads", a.num_heads, b.num_heads);
    same("num_key_value_heads", a.num_kv_heads, b.num_kv_heads);
    // Sampled bytes of the embedding: a cheap guard against a reference of the
    // same shape but different weights (a converted model copies it bit for bit).
    const TensorView* ea = moe.tensors->find(names::embed());
    const TensorView* eb = dense.tensors->find(names::embed());
    if (ea && eb && ea->dtype == eb->dtype && ea->nbytes == eb->nbytes) {
        const size_t block = std::min<size_t>(4096, ea->nbytes);
        for (size_t off : {size_t(0), (ea->nbytes - block) / 2, ea->nbytes - block})
            if (std::memcmp(ea->data + off, eb->data + off, block) != 0)
                fail("{} and {}: {} differs; the MoE model was not made from this reference", moe.dir, dense.dir, names::embed());
    }
}

// ---- FFN error --------------------------------------------------------------------

namespace {

// Rebuilds each MoE layer's FFN output from the per-expert calls of the hook
// (the engine's own h, down projection and combine weights), and compares it
// with the dense FFN on the same input. The first call of a layer computes the
// dense output; finish() (after every forward) closes the open layer.
class FfnErrorObserver final : public FfnObserver {
public:
    FfnErrorObserver(const Model& moe, const Model& dense)
        : moe_(moe), dense_(dense), num_(size_t(moe.config().num_layers)), den_(size_t(moe.config().num_layers)) {}

    bool wants(int l) const override { return moe_.layer(l).is_moe; }
    void on_ffn(int l, const FfnActs& a) override;
    void finish();
    double num(int l) const { return num_[size_t(l)]; }
    double den(int l) const { return den_[size_t(l)]; }
    void sum_over(const RankGroup& group) {
        group.sum(num_.data(), num_.size());
        group.sum(den_.data(), den_.size());
    }

private:
    void begin_layer(int l, const FfnActs& a);

    const Model& moe_;
    const Model& dense_;
    std::vector<double> num_, den_;  // [layer]
    int cur_ = -1, T_ = 0, H_ = 0;
    std::vector<float> yd_, ym_, g_, u_, h_, y_;
};

void FfnErrorObserver::begin_layer(int l, const FfnActs& a) {
    cur_ = l;
    T_ = a.T;
    H_ = a.H;
    const FfnWeights& f = dense_.layer(l).ffn;
    const size_t TI = size_t(a.T) * size_t(f.width()), TH = size_t(a.T) * size_t(a.H);
    float* g = grow(g_, TI);
    float* u = grow(u_, TI);
    float* h = grow(h_, TI);
    // yd: [T, H] dense FFN output on the MoE model's FFN input
    layers::swiglu_hidden(f, a.x, a.T, g, u, h);
    matmul(h, a.T, f.down, grow(yd_, TH));
    std::fill_n(grow(ym_, TH), TH, 0.0f);
}

void FfnErrorObserver::on_ffn(int l, const FfnActs& a) {
    if (a.expert < 0) fail("FFN error: layer {} is dense in an MoE model", l);
    if (l != cur_) {
        finish();
        begin_layer(l, a);
    }
    const MoEWeights& mw = moe_.layer(l).moe;
    const auto& blocks = a.shared ? mw.shared : mw.experts;
    if (a.expert >= int(blocks.size())) fail("FFN error: layer {}: no expert {}", l, a.expert);
    const FfnWeights& f = blocks[size_t(a.expert)];
    const int H = a.H, n = a.n;
    // y: [n, H] this expert's unweighted output on its rows
    float* y = grow(y_, size_t(n) * size_t(H));
    matmul(a.h, n, f.down, y);
    float* ym = ym_.data();
    parallel_for_each(n, [&](int64_t i) {
        const size_t t = a.rows ? size_t(a.rows[i]) : size_t(i);
        const float w = a.weight ? a.weight[i] : 1.0f;
        for (int c = 0; c < H; ++c) ym[t * H + c] += w * y[size_t(i) * H + c];
    }, n > 16);
}

void FfnErrorObserver::finish() {
    if (cur_ < 0) return;
    // Sums over fixed blocks of elements, added in block order: the same bits
    // for any thread count.
    constexpr size_t kBlock = size_t(1) << 14;
    const size_t TH = size_t(T_) * size_t(H_), blocks = (TH + kBlock - 1) / kBlock;
    const float* yd = yd_.data();
    const float* ym = ym_.data();
    std::vector<double> num_b(blocks, 0.0), den_b(blocks, 0.0);
    parallel_for_each(int64_t(blocks), [&](int64_t b) {
        double num = 0, den = 0;
        for (size_t i = size_t(b) * kBlock; i < std::min(TH, size_t(b + 1) * kBlock); ++i) {
            const double d = double(ym[i]) - double(yd[i]);
            num += d * d;
            den += double(yd[i]) * double(yd[i]);
        }
        num_b[size_t(b)] = num;
        den_b[size_t(b)] = den;
    });
    double num = 0, den = 0;
    for (size_t b = 0; b < blocks; ++b) num += num_b[b], den += den_b[b];
    num_[size_t(cur_)] += num;
    den_[size_t(cur_)] += den;
    cur_ = -1;
}

}  // namespace

MoEQuality evaluate_moe_quality(Model& moe, const Model& dense, const std::vector<TokenWindow>& windows, RouteOverride* route,
                                const TokenProgress& progress, const RankGroup& group) {
    const ModelConfig& mc = moe.config();
    const ModelConfig& dc = dense.config();
    if (!mc.is_moe()) fail("FFN error: the model under test is dense");
    if (dc.is_moe()) fail("FFN error: the reference model is not dense");
    if (mc.num_layers != dc.num_layers || mc.hidden_size != dc.hidden_size)
        fail("FFN error: the models differ in shape ({} vs {} layers, hidden {} vs {})", mc.num_layers, dc.num_layers,
             mc.hidden_size, dc.hidden_size);
    const size_t total = predicted_tokens(windows);
    if (total == 0) fail("no tokens to evaluate (the data is too short)");

    MoEQuality q;
    FfnErrorObserver obs(moe, dense);
    RunHooks hooks;
    hooks.ffn = &obs;
    hooks.routing = &q.ppl.routing;
    hooks.route = route;
    const auto t0 = std::chrono::steady_clock::now();
    LayerMajorCallbacks cb;
    cb.after_window = [&] { obs.finish(); };
    cb.after_layer = [&](int l) { dense.release_layer(l); };
    q.ppl.nll_sum = layer_major_nll_sum(moe, windows, hooks, cb, progress, group);
    obs.sum_over(group);
    sum_over_ranks(group, moe, q.ppl.routing);
    q.ppl.tokens = total;
    q.ppl.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const RoutingStats& rs = q.ppl.routing;
    for (int l = 0; l < mc.num_layers; ++l) {
        if (!moe.layer(l).is_moe) continue;
        LayerQuality lq;
        lq.layer = l;
        lq.err_num = obs.num(l);
        lq.err_den = obs.den(l);
        if (size_t(l) < rs.counts.size()) lq.counts = rs.counts[size_t(l)];
        if (size_t(l) < rs.tokens.size()) lq.tokens = rs.tokens[size_t(l)];
        lq.counts.resize(moe.layer(l).moe.experts.size());
        q.layers.push_back(std::move(lq));
    }
    return q;
}

ReferenceComparison compare_with_reference(Model& moe, Model& dense, const std::vector<TokenWindow>& windows, bool oracle,
                                           const CompareProgress& progress, const RankGroup& group) {
    auto stage = [&](const char* name) -> TokenProgress {
        if (!progress) return {};
        return [&progress, name](size_t d, size_t t) { progress(name, d, t); };
    };
    ReferenceComparison c;
    c.dense = evaluate_perplexity(dense, windows, stage("dense"), nullptr, group);
    c.moe = evaluate_moe_quality(moe, dense, windows, nullptr, stage("moe"), group);
    if (oracle) {
        OracleRoute route(moe.config().moe);
        c.oracle = evaluate_moe_quality(moe, dense, windows, &route, stage("oracle"), group);
    }
    return c;
}

// ---- JSON --------------------------------------------------------------------------

nlohmann::json quality_json(const MoEQuality& q) {
    nlohmann::json layers = nlohmann::json::array();
    for (const LayerQuality& l : q.layers)
        layers.push_back({{"layer", l.layer}, {"ffn_rel_error", l.rel_error()}, {"load", l.load()}, {"load_cv", l.load_cv()}});
    return {{"tokens", q.ppl.tokens},
            {"mean_nll", q.ppl.mean_nll()},
            {"perplexity", q.ppl.perplexity()},
            {"ffn_rel_error", q.total_rel_error()},
            {"seconds", q.ppl.seconds},
            {"layers", layers}};
}

nlohmann::json comparison_json(const ReferenceComparison& c) {
    nlohmann::json j = {{"tokens", c.dense.tokens},
                        {"dense", {{"mean_nll", c.dense.mean_nll()}, {"perplexity", c.dense.perplexity()}, {"seconds", c.dense.seconds}}},
                        {"moe", quality_json(c.moe)},
                        {"ppl_ratio", c.ppl_ratio()}};
    if (c.oracle) {
        j["oracle"] = quality_json(*c.oracle);
        j["oracle_ppl_ratio"] = c.dense.perplexity() > 0 ? c.oracle->ppl.perplexity() / c.dense.perplexity() : 0.0;
    }
    return j;
}

nlohmann::json routing_load_json(const RoutingStats& rs) {
    nlohmann::json layers = nlohmann::json::array();
    for (size_t l = 0; l < rs.counts.size(); ++l) {
        if (rs.counts[l].empty()) continue;  // a dense layer
        LayerQuality q;
        q.layer = int(l);
        q.counts = rs.counts[l];
        q.tokens = l < rs.tokens.size() ? rs.tokens[l] : 0;
        layers.push_back({{"layer", l}, {"fraction", q.load()}, {"cv", q.load_cv()}});
    }
    return layers;
}

}  // namespace moefy
