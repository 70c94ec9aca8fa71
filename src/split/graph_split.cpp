#include "split/graph_split.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "common/error.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "split/coactivation.h"
#include "split/graph_partition.h"

namespace moefy {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Hands rows [row_begin, row_end) of one layer's chosen activation to its accumulator.
struct CoactObserver : FfnObserver {
    int layer = 0;
    bool use_gate = false;
    CoactivationAccumulator* acc = nullptr;
    int row_begin = 0, row_end = 0;  // of the window being run
    std::vector<float> buf;
    double seconds = 0;

    bool wants(int l) const override { return l == layer; }
    void on_ffn(int, const FfnActs& a) override {
        double t0 = now_s();
        const int n = std::min(row_end, a.n) - row_begin;
        if (n <= 0) return;
        const float* src = a.h + size_t(row_begin) * size_t(a.I);
        if (use_gate) {  // silu(gate)
            buf.resize(size_t(n) * size_t(a.I));
            const float* g = a.gate + size_t(row_begin) * size_t(a.I);
            for (size_t i = 0; i < buf.size(); ++i) buf[i] = g[i] / (1.0f + std::exp(-g[i]));
            src = buf.data();
        }
        acc->add(src, n);
        seconds += now_s() - t0;
    }
};

// The windows one rank runs and the rows of each it accumulates. Chunks are
// counted over the windows' tokens in order (a chunk may span two windows); a
// rank owns a contiguous range of whole chunks, so every chunk is clamped
// exactly as one process clamps it, and runs each window that overlaps its
// range (a window holding a chunk that spans two ranks is run by both).
struct RankShare {
    size_t window;
    int row_begin, row_end;
};

std::vector<RankShare> rank_share(const std::vector<TokenWindow>& windows, size_t tokens, int chunk, const RankGroup& group) {
    const size_t chunks = (tokens + size_t(chunk) - 1) / size_t(chunk);
    const size_t r = size_t(group.rank()), n = size_t(group.size());
    const size_t lo = std::min(tokens, r * chunks / n * size_t(chunk)), hi = std::min(tokens, (r + 1) * chunks / n * size_t(chunk));
    std::vector<RankShare> share;
    size_t start = 0;  // the window's first token, counted over all windows
    for (size_t i = 0; i < windows.size(); start += windows[i].size(), ++i) {
        const size_t end = start + windows[i].size();
        if (end <= lo || start >= hi) continue;
        share.push_back({i, int(std::max(lo, start) - start), int(std::min(hi, end) - start)});
    }
    return share;
}

}  // namespace

ExpertPlan graph_split(const Checkpoint& ck, const std::vector<TokenWindow>& windows, const GraphSplitOptions& o,
                       const GraphProgress& progress, GraphSplitTimings* timings, const RankGroup& group) {
    const ModelConfig& c = ck.config;
    if (c.is_moe()) fail("{}: already an MoE model ({}); split a dense model", ck.dir, model_kind_name(c.kind));
    if (!o.neurons.empty() && int(o.neurons.size()) != c.num_layers)
        fail("graph split: neuron subsets for {} layers, the model has {}", o.neurons.size(), c.num_layers);
    check_expert_count(o.experts, o.neurons.empty() ? c.intermediate_size : int(o.neurons[0].size()));
    if (o.proj != "up" && o.proj != "gate") fail("unknown --proj '{}' (up or gate)", o.proj);
    const CoactMetric metric = parse_coact_metric(o.metric);
    if (o.chunk_tokens < 1) fail("--chunk-tokens must be at least 1");
    size_t tokens = 0;
    for (const auto& w : windows) tokens += w.size();
    if (tokens < kGraphMinTokens)
        fail("the calibration data has {} tokens; the graph split needs at least {} (give more text with --data)", tokens,
             kGraphMinTokens);

    const int L = c.num_layers, H = c.hidden_size, I = c.intermediate_size;
    auto model = Model::load(ck);

    ExpertPlan plan;
    plan.num_layers = L;
    plan.hidden_size = c.hidden_size;
    plan.intermediate_size = I;
    plan.ffn_fingerprint = ffn_fingerprint(*ck.tensors, c);
    plan.method = "graph";
    plan.params = {{"experts", o.experts}, {"proj", o.proj},           {"metric", coact_metric_name(metric)},
                   {"seed", o.seed},       {"tokens", tokens},         {"chunk_tokens", o.chunk_tokens},
                   {"threshold", o.threshold}};
    plan.layers.resize(size_t(L));
    GraphSplitTimings t;
    t.tokens = tokens;
    t.passes = 1;
    double kept = 0, kept_random = 0;
    // Layer-major: every window's residual stream x [T, H] is kept, and layer l
    // runs on all windows before layer l + 1. So the model is read once, one
    // co-activation matrix is in memory at a time (485 MB at 7B; a token-major
    // pass would need all of them, or a pass over the text per group of layers),
    // and a finished layer's weights leave the resident set. embed + run_layer is
    // exactly Model::forward, so the statistics are the same.
    const double e0 = now_s();
    const std::vector<RankShare> share = rank_share(windows, tokens, o.chunk_tokens, group);
    size_t my_tokens = 0;
    for (const RankShare& w : share) my_tokens += size_t(w.row_end - w.row_begin);
    std::vector<std::vector<float>> xs(share.size());
    for (size_t i = 0; i < share.size(); ++i) {
        const TokenWindow& w = windows[share[i].window];
        xs[i].resize(w.size() * size_t(H));
        model->embed(w.data(), int(w.size()), xs[i].data());
    }
    t.forward_s += now_s() - e0;
    for (int l = 0; l < L; ++l) {
        CoactivationAccumulator acc(I, metric, o.chunk_tokens, o.threshold);
        CoactObserver obs;
        obs.layer = l;
        obs.use_gate = o.proj == "gate";
        obs.acc = &acc;
        const double t0 = now_s();
        group.run_share("graph split", [&] {
            size_t done = 0;
            for (size_t i = 0; i < share.size(); ++i) {
                const TokenWindow& w = windows[share[i].window];
                obs.row_begin = share[i].row_begin, obs.row_end = share[i].row_end;
                model->run_layer(l, xs[i].data(), int(w.size()), RunHooks(&obs));
                done += size_t(share[i].row_end - share[i].row_begin);
                if (progress)
                    progress(fmt::format("layer {}/{}: activations", l + 1, L), double(size_t(l) * my_tokens + done),
                             double(size_t(L) * my_tokens));
            }
            acc.finish();
        });
        acc.sum_over(group);
        t.accumulate_s += obs.seconds;
        t.forward_s += now_s() - t0 - obs.seconds;
        model->release_layer(l);

        const double p0 = now_s();
        GraphPartitionResult r;
        if (o.neurons.empty()) {
            r = partition_coactivation(acc, o.experts, o.seed + uint64_t(l));
        } else {
            // The co-activation graph restricted to the neurons left to route.
            const std::vector<int32_t>& ids = o.neurons[size_t(l)];
            const int n = int(ids.size());
            const std::vector<float> full = acc.symmetric();
            std::vector<float> sub(size_t(n) * n);
            for (int i = 0; i < n; ++i)
                for (int j = 0; j < n; ++j) sub[size_t(i) * n + j] = full[size_t(ids[size_t(i)]) * I + size_t(ids[size_t(j)])];
            r = partition_coactivation(sub.data(), n, o.experts, o.seed + uint64_t(l));
            for (auto& e : r.experts)
                for (int32_t& id : e) id = ids[size_t(id)];
            for (auto& e : r.experts) std::sort(e.begin(), e.end());
        }
        t.partition_s += now_s() - p0;
        plan.layers[size_t(l)].experts = std::move(r.experts);
        plan.layers[size_t(l)].stats = r.stats();
        kept += r.kept_fraction / L;
        kept_random += r.random_kept_fraction / L;
    }
    // No wall-clock times in the plan: the same inputs and seed must give the same bytes
    // (timings go to the caller through `timings`).
    plan.stats = {{"kept_fraction_mean", kept}, {"random_kept_fraction_mean", kept_random}};
    if (timings) *timings = t;
    return plan;
}

}  // namespace moefy
