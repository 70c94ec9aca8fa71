// Calibration pass: an FfnObserver on the dense model that, for the kept tokens
// of each layer, splits the FFN output into the plan's expert contributions and
// reduces them to the Gram statistics of calibration.h.
#include "route/calibration.h"

#include <cblas.h>

#include "common/error.h"
#include "model/llama.h"
#include "split/expert_plan.h"

namespace moefy {

namespace {

// Neuron ids of the routed experts, then the shared ones, as one permutation
// with a column block per expert.
struct BlockLayout {
    std::vector<int32_t> ids;   // [P] neuron id of permuted column p
    std::vector<int> off, width;  // [E + R]
    int E = 0, R = 0;
};

BlockLayout block_layout(const LayerPlan& lp) {
    BlockLayout b;
    b.E = int(lp.experts.size());
    b.R = int(lp.shared.size());
    auto add = [&](const std::vector<int32_t>& ex) {
        b.off.push_back(int(b.ids.size()));
        b.width.push_back(int(ex.size()));
        b.ids.insert(b.ids.end(), ex.begin(), ex.end());
    };
    for (const auto& e : lp.experts) add(e);
    for (const auto& s : lp.shared) add(s);
    return b;
}

class CalibObserver : public FfnObserver {
public:
    CalibObserver(Model& model, const ExpertPlan& plan, const CalibOptions& opt, std::vector<LayerCalib>& out)
        : model_(model), opt_(opt), out_(out) {
        for (const LayerPlan& lp : plan.layers) blocks_.push_back(block_layout(lp));
    }

    // Token rows of the next window to keep (indices into [0, T)).
    void set_rows(std::vector<int32_t> rows) { rows_ = std::move(rows); }
    bool wants(int layer) const override { return !rows_.empty(); }
    void on_ffn(int l, const FfnActs& a) override;

private:
    Model& model_;
    const CalibOptions& opt_;
    std::vector<LayerCalib>& out_;
    std::vector<BlockLayout> blocks_;
    std::vector<int32_t> rows_;
    std::vector<float> wd_, wp_, hk_, hp_, y_, d_;
};

void CalibObserver::on_ffn(int l, const FfnActs& a) {
    if (a.expert != -1) fail("calibration: layer {} is not a dense FFN layer (the model must be dense)", l);
    const BlockLayout& bl = blocks_[size_t(l)];
    const int H = a.H, I = a.I, n = int(rows_.size()), E = bl.E, B = bl.E + bl.R, P = int(bl.ids.size());
    const WeightRef& down = model_.layer(l).ffn.down;  // [H, I]

    // wd: [H, I] down projection in f32; wp: [H, P] its columns in block order.
    wd_.resize(size_t(H) * I);
    wp_.resize(size_t(H) * P);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < H; ++i) {
        float* row = wd_.data() + size_t(i) * I;
        weight_row_f32(down, i, row);
        float* prow = wp_.data() + size_t(i) * P;
        for (int p = 0; p < P; ++p) prow[p] = row[bl.ids[size_t(p)]];
    }
    // hk: [n, I] activations of the kept tokens; hp: [n, P] in block order.
    hk_.resize(size_t(n) * I);
    hp_.resize(size_t(n) * P);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; ++t) {
        const float* src = a.h + size_t(rows_[size_t(t)]) * I;
        std::copy_n(src, I, hk_.data() + size_t(t) * I);
        float* dst = hp_.data() + size_t(t) * P;
        for (int p = 0; p < P; ++p) dst[p] = src[bl.ids[size_t(p)]];
    }
    // y: [n, B, H] every block's output; d: [n, H] the dense output.
    y_.resize(size_t(n) * B * H);
    d_.resize(size_t(n) * H);
    for (int j = 0; j < B; ++j)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, H, bl.width[size_t(j)], 1.0f, hp_.data() + bl.off[size_t(j)], P,
                    wp_.data() + bl.off[size_t(j)], P, 0.0f, y_.data() + size_t(j) * H, B * H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, H, I, 1.0f, hk_.data(), I, wd_.data(), I, 0.0f, d_.data(), H);

    LayerCalib& c = out_[size_t(l)];
    const size_t base = size_t(c.N), tri = c.tri();
    c.x.resize((base + n) * H);
    c.gram.resize((base + n) * tri);
    c.b.resize((base + n) * E);
    c.rr.resize(base + n);
    c.absh.resize((base + n) * E);
    const float omega = float(opt_.shared_weight);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; ++t) {
        const size_t o = base + size_t(t);
        std::copy_n(a.x + size_t(rows_[size_t(t)]) * H, H, c.x.data() + o * H);
        const float* yt = y_.data() + size_t(t) * B * H;  // [B, H]
        float* r = d_.data() + size_t(t) * H;               // becomes r_t in place
        for (int s = E; s < B; ++s)
            for (int i = 0; i < H; ++i) r[i] -= omega * yt[size_t(s) * H + i];
        float* g = c.gram.data() + o * tri;
        for (int e = 0; e < E; ++e) {
            const float* ye = yt + size_t(e) * H;
            for (int f = e; f < E; ++f) {
                const float* yf = yt + size_t(f) * H;
                double acc = 0;
                for (int i = 0; i < H; ++i) acc += double(ye[i]) * yf[i];
                *g++ = float(acc);
            }
            double acc = 0;
            for (int i = 0; i < H; ++i) acc += double(r[i]) * ye[i];
            c.b[o * E + size_t(e)] = float(acc);
            const float* he = hp_.data() + size_t(t) * P + bl.off[size_t(e)];
            double ah = 0;
            for (int i = 0; i < bl.width[size_t(e)]; ++i) ah += std::fabs(he[i]);
            c.absh[o * E + size_t(e)] = float(ah);
        }
        double acc = 0;
        for (int i = 0; i < H; ++i) acc += double(r[i]) * r[i];
        c.rr[o] = float(acc);
    }
    c.N += n;
}

}  // namespace

std::vector<LayerCalib> collect_calibration(Model& model, const ExpertPlan& plan, const std::vector<TokenWindow>& windows,
                                            const CalibOptions& opt, const CalibProgress& progress) {
    const ModelConfig& cfg = model.config();
    if (cfg.is_moe()) fail("calibration: the model is already an MoE model ({}); it needs the dense model", model_kind_name(cfg.kind));
    if (plan.num_layers != cfg.num_layers || plan.hidden_size != cfg.hidden_size || plan.intermediate_size != cfg.intermediate_size)
        fail("calibration: the expert plan is for {} layers of {} x {}, the model has {} layers of {} x {}", plan.num_layers,
             plan.hidden_size, plan.intermediate_size, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size);
    if (opt.max_tokens < 1) fail("calibration: the token budget must be at least 1");
    size_t total = 0;
    for (const TokenWindow& w : windows) total += w.size();
    if (total == 0) fail("calibration: no tokens (the calibration text is empty)");

    std::vector<LayerCalib> out(size_t(cfg.num_layers));
    for (LayerCalib& c : out) {
        c.H = cfg.hidden_size;
        c.E = plan.num_experts();
    }
    // Keep token g when ⌊g·K/total⌋ steps up: min(K, total) tokens, evenly spread.
    const size_t K = std::min(opt.max_tokens, total);
    auto kept = [&](size_t g) { return (g + 1) * K / total != g * K / total; };
    CalibObserver obs(model, plan, opt, out);
    size_t g = 0;  // global index of the window's first token
    for (const TokenWindow& w : windows) {
        std::vector<int32_t> rows;
        for (size_t t = 0; t < w.size(); ++t)
            if (kept(g + t)) rows.push_back(int32_t(t));
        g += w.size();
        if (!rows.empty()) {
            // Causal: tokens after the last kept one change nothing we keep.
            const int T = rows.back() + 1;
            obs.set_rows(std::move(rows));
            model.forward(w.data(), T, 0, nullptr, nullptr, RunHooks(&obs));
        }
        if (progress) progress(g, total);
    }
    return out;
}

}  // namespace moefy
