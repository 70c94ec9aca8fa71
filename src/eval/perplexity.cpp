#include "eval/perplexity.h"

#include <chrono>
#include <cmath>

#include "common/error.h"

namespace moefy {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

double layer_major_nll_sum(Model& model, const std::vector<TokenWindow>& windows, const RunHooks& hooks,
                           const LayerMajorCallbacks& cb, const TokenProgress& progress) {
    const int L = model.config().num_layers, H = model.config().hidden_size;
    const size_t total = predicted_tokens(windows);
    double nll = 0;
    size_t done = 0;  // predicted tokens of the finished groups
    for (size_t g0 = 0; g0 < windows.size();) {
        size_t g1 = g0, group_tokens = 0;
        while (g1 < windows.size() && (g1 == g0 || group_tokens + windows[g1].size() <= kLayerMajorGroupTokens))
            group_tokens += windows[g1++].size();
        size_t predicted = 0;
        std::vector<std::vector<float>> xs(g1 - g0);
        for (size_t i = g0; i < g1; ++i) {
            xs[i - g0].resize(windows[i].size() * size_t(H));
            model.embed(windows[i].data(), int(windows[i].size()), xs[i - g0].data());
            predicted += windows[i].size() - 1;
        }
        for (int l = 0; l < L; ++l) {
            for (size_t i = g0; i < g1; ++i) {
                model.run_layer(l, xs[i - g0].data(), int(windows[i].size()), hooks);
                if (cb.after_window) cb.after_window();
            }
            model.release_layer(l);
            if (cb.after_layer) cb.after_layer(l);
            if (progress) progress(done + predicted * size_t(l + 1) / size_t(L + 1), total);
        }
        for (size_t i = g0; i < g1; ++i) nll += model.nll_sum_of_stream(xs[i - g0].data(), windows[i].data(), int(windows[i].size()));
        done += predicted;
        if (progress) progress(done, total);
        g0 = g1;
    }
    return nll;
}

PerplexityResult evaluate_perplexity(Model& model, const std::vector<TokenWindow>& windows, const TokenProgress& progress,
                                     RouteOverride* route) {
    PerplexityResult r;
    r.tokens = predicted_tokens(windows);
    if (r.tokens == 0) fail("no tokens to evaluate (the data is too short)");
    auto t0 = std::chrono::steady_clock::now();
    RunHooks hooks;
    hooks.routing = model.config().is_moe() ? &r.routing : nullptr;
    hooks.route = route;
    r.nll_sum = layer_major_nll_sum(model, windows, hooks, {}, progress);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

void check_context(const ModelConfig& cfg, int ctx, const std::string& model_dir) {
    if (ctx < 2) fail("--ctx must be at least 2 (got {})", ctx);
    if (ctx > cfg.max_position_embeddings)
        fail("--ctx {} is longer than {} supports (max_position_embeddings {})", ctx, model_dir, cfg.max_position_embeddings);
}

}  // namespace moefy
