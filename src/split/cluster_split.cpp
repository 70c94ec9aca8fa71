#include "split/cluster_split.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/error.h"
#include "common/parallel.h"
#include "model/tensor_names.h"
#include "split/balanced_kmeans.h"

namespace moefy {
namespace {

// sklearn Normalizer(norm='l2'): each row to unit length; zero rows stay zero. W: [rows, cols].
void normalise_rows(float* W, int64_t rows, int64_t cols) {
    parallel_for_each(rows, [&](int64_t i) {
        float* w = W + i * cols;
        double q = 0;
        for (int64_t j = 0; j < cols; ++j) q += double(w[j]) * w[j];
        if (q <= 0) return;
        const float inv = float(1.0 / std::sqrt(q));
        for (int64_t j = 0; j < cols; ++j) w[j] *= inv;
    });
}

}  // namespace

ExpertPlan cluster_split(const Checkpoint& ckpt, const ClusterSplitOptions& opts, const SplitProgress& progress) {
    const ModelConfig& cfg = ckpt.config;
    if (cfg.is_moe())
        fail("{}: cluster split needs a dense model, this one is {}", ckpt.dir, model_kind_name(cfg.kind));
    if (!ckpt.tensors) fail("{}: checkpoint has no tensors open", ckpt.dir);
    if (opts.proj != "up" && opts.proj != "gate")
        fail("cluster split: unknown projection '{}' (expected up or gate)", opts.proj);
    KMeansOptions km;
    km.metric = parse_kmeans_metric(opts.metric);
    km.restarts = opts.restarts;
    km.max_iter = opts.max_iter;
    km.tol = opts.tol;
    km.seed = opts.seed;
    km.threads = opts.threads;
    const int L = cfg.num_layers, I = cfg.intermediate_size, H = cfg.hidden_size;
    if (!opts.neurons.empty() && int(opts.neurons.size()) != L)
        fail("cluster split: neuron subsets for {} layers, the model has {}", opts.neurons.size(), L);
    check_expert_count(opts.experts, opts.neurons.empty() ? I : int(opts.neurons[0].size()));
    const int E = opts.experts;

    ExpertPlan plan;
    plan.num_layers = L;
    plan.hidden_size = H;
    plan.intermediate_size = I;
    plan.ffn_fingerprint = ffn_fingerprint(*ckpt.tensors, cfg);
    plan.method = "cluster";
    plan.params = {{"experts", E},           {"proj", opts.proj},         {"metric", opts.metric},
                   {"seed", opts.seed},      {"restarts", opts.restarts}, {"max_iter", opts.max_iter},
                   {"tol", opts.tol},        {"cost_scale", km.cost_scale}};
    plan.layers.resize(size_t(L));

    std::vector<float> W(size_t(I) * H);  // one layer's rows, [I, H]
    for (int l = 0; l < L; ++l) {
        const TensorView& t = ckpt.tensors->get(names::dense_ffn(l, opts.proj.c_str()), {I, H});
        ckpt.tensors->read_rows_f32(t, 0, I, W.data());
        ckpt.tensors->release(t);
        // ids: the neurons split in this layer; their rows first in W.
        std::vector<int32_t> ids(static_cast<size_t>(I));
        std::iota(ids.begin(), ids.end(), 0);
        if (!opts.neurons.empty()) ids = opts.neurons[size_t(l)];
        const int n = int(ids.size());
        check_expert_count(E, n);
        for (int i = 0; i < n; ++i)
            if (ids[size_t(i)] != i) std::copy_n(W.data() + size_t(ids[size_t(i)]) * H, H, W.data() + size_t(i) * H);
        normalise_rows(W.data(), n, H);
        KMeansResult r;
        try {
            r = balanced_kmeans(W.data(), n, H, E, km);
        } catch (const Error& e) {
            fail("{}: layer {} ({}): {}", ckpt.dir, l, t.name, e.what());
        }
        LayerPlan& lp = plan.layers[l];
        lp.experts.assign(size_t(E), {});
        for (int i = 0; i < n; ++i) lp.experts[r.labels[size_t(i)]].push_back(ids[size_t(i)]);  // ascending ids
        lp.stats = {{"inertia", r.inertia}, {"iterations", r.iterations}, {"best_restart", r.best_restart}};
        if (progress) progress(l + 1, L);
    }
    return plan;
}

}  // namespace moefy
