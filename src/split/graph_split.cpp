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

// Hands the chosen activation of the wanted layers to their accumulators.
struct CoactObserver : FfnObserver {
    int first = 0, last = 0;  // layers [first, last)
    bool use_gate = false;
    std::vector<std::unique_ptr<CoactivationAccumulator>>* accs = nullptr;
    std::vector<float> buf;
    double seconds = 0;

    bool wants(int layer) const override { return layer >= first && layer < last; }
    void on_ffn(int layer, const FfnActs& a) override {
        double t0 = now_s();
        const float* src = a.h;
        if (use_gate) {  // silu(gate)
            buf.resize(size_t(a.n) * size_t(a.I));
            for (size_t i = 0; i < buf.size(); ++i) buf[i] = a.gate[i] / (1.0f + std::exp(-a.gate[i]));
            src = buf.data();
        }
        (*accs)[size_t(layer - first)]->add(src, a.n);
        seconds += now_s() - t0;
    }
};

}  // namespace

ExpertPlan graph_split(const Checkpoint& ck, const std::vector<TokenWindow>& windows, const GraphSplitOptions& o,
                       const GraphProgress& progress, GraphSplitTimings* timings) {
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

    const int L = c.num_layers, I = c.intermediate_size;
    const size_t per_layer = size_t(I) * size_t(I) * sizeof(float);
    const int group = std::max(1, int(std::min<size_t>(size_t(L), o.matrix_budget_bytes / per_layer)));
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
    double kept = 0, kept_random = 0;
    for (int first = 0; first < L; first += group) {
        const int last = std::min(L, first + group);
        std::vector<std::unique_ptr<CoactivationAccumulator>> accs;
        for (int l = first; l < last; ++l)
            accs.push_back(std::make_unique<CoactivationAccumulator>(I, metric, o.chunk_tokens, o.threshold));
        CoactObserver obs;
        obs.first = first;
        obs.last = last;
        obs.use_gate = o.proj == "gate";
        obs.accs = &accs;
        const double t0 = now_s();
        size_t done = 0;
        for (const auto& w : windows) {
            model->forward(w.data(), int(w.size()), 0, nullptr, nullptr, RunHooks(&obs));
            done += w.size();
            if (progress) progress(fmt::format("layers {}-{}: activations", first, last - 1), double(done), double(tokens));
        }
        for (auto& a : accs) a->finish();
        const double pass = now_s() - t0;
        t.accumulate_s += obs.seconds;
        t.forward_s += pass - obs.seconds;
        ++t.passes;
        for (int l = first; l < last; ++l) {
            const double p0 = now_s();
            GraphPartitionResult r;
            if (o.neurons.empty()) {
                r = partition_coactivation(*accs[size_t(l - first)], o.experts, o.seed + uint64_t(l));
            } else {
                // The co-activation graph restricted to the neurons left to route.
                const std::vector<int32_t>& ids = o.neurons[size_t(l)];
                const int n = int(ids.size());
                const std::vector<float> full = accs[size_t(l - first)]->symmetric();
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
            accs[size_t(l - first)].reset();  // free the matrix before the next layer's METIS run
            if (progress) progress("partition", double(l + 1), double(L));
        }
    }
    // No wall-clock times in the plan: the same inputs and seed must give the same bytes
    // (timings go to the caller through `timings`).
    plan.stats = {{"kept_fraction_mean", kept}, {"random_kept_fraction_mean", kept_random}};
    if (timings) *timings = t;
    return plan;
}

}  // namespace moefy
