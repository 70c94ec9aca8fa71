#include "split/cluster_split.h"

#include <cmath>
#include <vector>

#include "common/error.h"
#include "model/tensor_names.h"
#include "split/balanced_kmeans.h"

namespace moefy {
namespace {

// sklearn Normalizer(norm='l2'): each row to unit length; zero rows stay zero. W: [rows, cols].
void normalise_rows(float* W, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
        float* w = W + i * cols;
        double q = 0;
        for (int64_t j = 0; j < cols; ++j) q += double(w[j]) * w[j];
        if (q <= 0) continue;
        const float inv = float(1.0 / std::sqrt(q));
        for (int64_t j = 0; j < cols; ++j) w[j] *= inv;
    }
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
    check_expert_count(opts.experts, I);
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
        normalise_rows(W.data(), I, H);
        KMeansResult r;
        try {
            r = balanced_kmeans(W.data(), I, H, E, km);
        } catch (const Error& e) {
            fail("{}: layer {} ({}): {}", ckpt.dir, l, t.name, e.what());
        }
        LayerPlan& lp = plan.layers[l];
        lp.experts.assign(size_t(E), {});
        for (int n = 0; n < I; ++n) lp.experts[r.labels[n]].push_back(n);  // ascending ids
        lp.stats = {{"inertia", r.inertia}, {"iterations", r.iterations}, {"best_restart", r.best_restart}};
        if (progress) progress(l + 1, L);
    }
    return plan;
}

}  // namespace moefy
