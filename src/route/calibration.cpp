// Calibration pass: an FfnObserver on the dense model that, for the kept tokens
// of each layer, splits the FFN output into the plan's expert contributions and
// reduces them to the Gram statistics of calibration.h.
#include "route/calibration.h"

#include <cblas.h>

#include "common/error.h"
#include "model/llama.h"
#include "split/expert_plan.h"
#include "model/matmul.h"
#include "common/parallel.h"

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

// Whether every neuron 0..I-1 is in exactly one block.
bool blocks_partition(const BlockLayout& bl, int I) {
    if (bl.ids.size() != size_t(I)) return false;
    std::vector<char> seen(size_t(I), 0);
    for (int32_t id : bl.ids) {
        if (id < 0 || id >= I || seen[size_t(id)]) return false;
        seen[size_t(id)] = 1;
    }
    return true;
}

}  // namespace

std::vector<float> dense_down_f32(const Model& model, int l) {
    const WeightRef& down = model.layer(l).ffn.down;  // [H, I]
    const int H = int(down.rows), I = int(down.cols);
    std::vector<float> wd(size_t(H) * I);
    parallel_for_each(H, [&](int64_t i) { weight_row_f32(down, int(i), wd.data() + size_t(i) * I); });
    return wd;
}

void accumulate_calibration(LayerCalib& c, const LayerPlan& lp, const float* wd, const float* x, const float* h, int n, int I,
                            double shared_weight) {
    const BlockLayout bl = block_layout(lp);
    const int H = c.H, E = bl.E, B = bl.E + bl.R, P = int(bl.ids.size());
    if (E != c.E) fail("calibration: the plan has {} experts, the statistics {}", E, c.E);
    // wp: [H, P] the down projection's columns in block order; hp: [n, P] likewise.
    std::vector<float> wp(size_t(H) * P), hp(size_t(n) * P), y(size_t(n) * B * H), d(size_t(n) * H);
    parallel_for_each(H, [&](int64_t i) {
        const float* row = wd + size_t(i) * I;
        float* prow = wp.data() + size_t(i) * P;
        for (int p = 0; p < P; ++p) prow[p] = row[bl.ids[size_t(p)]];
    });
    parallel_for_each(n, [&](int64_t t) {
        const float* src = h + size_t(t) * I;
        float* dst = hp.data() + size_t(t) * P;
        for (int p = 0; p < P; ++p) dst[p] = src[bl.ids[size_t(p)]];
    });
    // y: [n, B, H] every block's output; d: [n, H] the dense output. Single-threaded sgemm
    // (OpenBLAS runs one thread process-wide, common/parallel.cpp) on fixed blocks of
    // tokens that the engine threads share: the same bits for any thread count.
    // When the blocks partition the neurons (every split but a sharing gradient plan),
    // d is the sum of the block outputs, not a second product as large as all of them.
    const bool partition = blocks_partition(bl, I);
    constexpr int kRows = 128;
    parallel_for_each((n + kRows - 1) / kRows, [&](int64_t blk) {
        const int t0 = int(blk) * kRows, m = std::min(kRows, n - t0);
        for (int j = 0; j < B; ++j)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, H, bl.width[size_t(j)], 1.0f,
                        hp.data() + size_t(t0) * P + bl.off[size_t(j)], P, wp.data() + bl.off[size_t(j)], P, 0.0f,
                        y.data() + size_t(t0) * B * H + size_t(j) * H, B * H);
        if (!partition) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, H, I, 1.0f, h + size_t(t0) * I, I, wd, I, 0.0f,
                        d.data() + size_t(t0) * H, H);
            return;
        }
        std::vector<double> sum(static_cast<size_t>(H));
        for (int t = t0; t < t0 + m; ++t) {
            const float* yt = y.data() + size_t(t) * B * H;
            std::fill(sum.begin(), sum.end(), 0.0);
            for (int j = 0; j < B; ++j)
                for (int i = 0; i < H; ++i) sum[size_t(i)] += yt[size_t(j) * H + i];
            float* dt = d.data() + size_t(t) * H;
            for (int i = 0; i < H; ++i) dt[i] = float(sum[size_t(i)]);
        }
    });

    const size_t base = size_t(c.N), tri = c.tri();
    c.x.resize((base + n) * H);
    c.gram.resize((base + n) * tri);
    c.b.resize((base + n) * E);
    c.rr.resize(base + n);
    c.absh.resize((base + n) * E);
    const float omega = float(shared_weight);
    parallel_for_each(n, [&](int64_t t) {
        const size_t o = base + size_t(t);
        std::copy_n(x + size_t(t) * H, H, c.x.data() + o * H);
        const float* yt = y.data() + size_t(t) * B * H;  // [B, H]
        float* r = d.data() + size_t(t) * H;               // becomes r_t in place
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
            const float* he = hp.data() + size_t(t) * P + bl.off[size_t(e)];
            double ah = 0;
            for (int i = 0; i < bl.width[size_t(e)]; ++i) ah += std::fabs(he[i]);
            c.absh[o * E + size_t(e)] = float(ah);
        }
        double acc = 0;
        for (int i = 0; i < H; ++i) acc += double(r[i]) * r[i];
        c.rr[o] = float(acc);
    });
    c.N += n;
}

namespace {

// Hands the kept tokens' FFN inputs and activations of every dense layer to `fn`.
class KeptRowsObserver : public FfnObserver {
public:
    explicit KeptRowsObserver(const KeptRowsFn& fn) : fn_(fn) {}
    // Token rows of the next window to keep (indices into [0, T)).
    void set_rows(std::vector<int32_t> rows) { rows_ = std::move(rows); }
    bool wants(int) const override { return !rows_.empty(); }
    void on_ffn(int l, const FfnActs& a) override {
        if (a.expert != -1) fail("calibration: layer {} is not a dense FFN layer (the model must be dense)", l);
        const int H = a.H, I = a.I, n = int(rows_.size());
        // xk: [n, H], hk: [n, I] the kept tokens' FFN inputs and activations.
        xk_.resize(size_t(n) * H);
        hk_.resize(size_t(n) * I);
        parallel_for_each(n, [&](int64_t t) {
            std::copy_n(a.x + size_t(rows_[size_t(t)]) * H, H, xk_.data() + size_t(t) * H);
            std::copy_n(a.h + size_t(rows_[size_t(t)]) * I, I, hk_.data() + size_t(t) * I);
        });
        fn_(l, xk_.data(), hk_.data(), n);
    }

private:
    const KeptRowsFn& fn_;
    std::vector<int32_t> rows_;
    std::vector<float> xk_, hk_;
};

void check_plan_fits(const ModelConfig& cfg, const ExpertPlan& plan) {
    if (plan.num_layers != cfg.num_layers || plan.hidden_size != cfg.hidden_size || plan.intermediate_size != cfg.intermediate_size)
        fail("calibration: the expert plan is for {} layers of {} x {}, the model has {} layers of {} x {}", plan.num_layers,
             plan.hidden_size, plan.intermediate_size, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size);
}

std::vector<LayerCalib> empty_calibration(const ModelConfig& cfg, const ExpertPlan& plan) {
    std::vector<LayerCalib> out(size_t(cfg.num_layers));
    for (LayerCalib& c : out) {
        c.H = cfg.hidden_size;
        c.E = plan.num_experts();
    }
    return out;
}

}  // namespace

void for_each_kept_batch(Model& model, const std::vector<TokenWindow>& windows, size_t max_tokens, const KeptRowsFn& fn,
                         const CalibProgress& progress) {
    const ModelConfig& cfg = model.config();
    if (cfg.is_moe()) fail("calibration: the model is already an MoE model ({}); it needs the dense model", model_kind_name(cfg.kind));
    if (max_tokens < 1) fail("calibration: the token budget must be at least 1");
    size_t total = 0;
    for (const TokenWindow& w : windows) total += w.size();
    if (total == 0) fail("calibration: no tokens (the calibration text is empty)");
    // Keep token g when ⌊g·K/total⌋ steps up: min(K, total) tokens, evenly spread.
    const size_t K = std::min(max_tokens, total);
    auto kept = [&](size_t g) { return (g + 1) * K / total != g * K / total; };
    KeptRowsObserver obs(fn);
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
}

std::vector<LayerCalib> collect_calibration(Model& model, const ExpertPlan& plan, const std::vector<TokenWindow>& windows,
                                            const CalibOptions& opt, const CalibProgress& progress) {
    const ModelConfig& cfg = model.config();
    check_plan_fits(cfg, plan);
    std::vector<LayerCalib> out = empty_calibration(cfg, plan);
    std::vector<std::vector<float>> wd(size_t(cfg.num_layers));  // [layer] dense down projection [H, I] in f32
    for_each_kept_batch(
        model, windows, opt.max_tokens,
        [&](int l, const float* x, const float* h, int n) {
            if (wd[size_t(l)].empty()) wd[size_t(l)] = dense_down_f32(model, l);
            accumulate_calibration(out[size_t(l)], plan.layers[size_t(l)], wd[size_t(l)].data(), x, h, n, cfg.intermediate_size,
                                   opt.shared_weight);
        },
        progress);
    return out;
}

std::vector<DenseLayerActs> collect_dense_acts(Model& model, const std::vector<TokenWindow>& windows, size_t max_tokens,
                                               const CalibProgress& progress) {
    const ModelConfig& cfg = model.config();
    std::vector<DenseLayerActs> out(size_t(cfg.num_layers));
    for (DenseLayerActs& a : out) {
        a.H = cfg.hidden_size;
        a.I = cfg.intermediate_size;
    }
    for_each_kept_batch(
        model, windows, max_tokens,
        [&](int l, const float* x, const float* h, int n) {
            DenseLayerActs& a = out[size_t(l)];
            a.x.insert(a.x.end(), x, x + size_t(n) * a.H);
            a.h.insert(a.h.end(), h, h + size_t(n) * a.I);
            a.N += n;
        },
        progress);
    return out;
}

std::vector<LayerCalib> calibration_from_acts(const Model& model, const ExpertPlan& plan, const std::vector<DenseLayerActs>& acts,
                                              const CalibOptions& opt) {
    const ModelConfig& cfg = model.config();
    check_plan_fits(cfg, plan);
    if (acts.size() != size_t(cfg.num_layers)) fail("calibration: activations of {} layers for {} layers", acts.size(), cfg.num_layers);
    std::vector<LayerCalib> out = empty_calibration(cfg, plan);
    for (int l = 0; l < cfg.num_layers; ++l) {
        const DenseLayerActs& a = acts[size_t(l)];
        const int n = std::min<int>(a.N, int(opt.max_tokens));
        // The first n cached tokens, in slices that bound the scratch memory.
        const std::vector<float> wd = dense_down_f32(model, l);
        for (int t0 = 0; t0 < n; t0 += 1024) {
            const int m = std::min(1024, n - t0);
            accumulate_calibration(out[size_t(l)], plan.layers[size_t(l)], wd.data(), a.x.data() + size_t(t0) * a.H,
                                   a.h.data() + size_t(t0) * a.I, m, a.I, opt.shared_weight);
        }
    }
    return out;
}

}  // namespace moefy
