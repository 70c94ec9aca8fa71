#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "common/error.h"

namespace moefy {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

double layer_major_nll_sum(Model& model, const std::vector<TokenWindow>& windows, const RunHooks& hooks,
                           const LayerMajorCallbacks& cb, const TokenProgress& progress, const RankGroup& group) {
    const int L = model.config().num_layers, H = model.config().hidden_size;
    // This rank's windows: i mod size == rank.
    std::vector<size_t> mine;
    size_t total = 0;  // predicted tokens of this rank
    for (size_t i = size_t(group.rank()); i < windows.size(); i += size_t(group.size()))
        mine.push_back(i), total += windows[i].size() - 1;
    std::vector<double> nll(windows.size(), 0.0);  // per window; other ranks' stay 0 until the sum
    group.run_share("evaluation", [&] {
        size_t done = 0;  // predicted tokens of the finished groups
        for (size_t g0 = 0; g0 < mine.size();) {
            size_t g1 = g0, group_tokens = 0;
            while (g1 < mine.size() && (g1 == g0 || group_tokens + windows[mine[g1]].size() <= kLayerMajorGroupTokens))
                group_tokens += windows[mine[g1++]].size();
            size_t predicted = 0;
            std::vector<std::vector<float>> xs(g1 - g0);
            for (size_t g = g0; g < g1; ++g) {
                const TokenWindow& w = windows[mine[g]];
                xs[g - g0].resize(w.size() * size_t(H));
                model.embed(w.data(), int(w.size()), xs[g - g0].data());
                predicted += w.size() - 1;
            }
            for (int l = 0; l < L; ++l) {
                for (size_t g = g0; g < g1; ++g) {
                    model.run_layer(l, xs[g - g0].data(), int(windows[mine[g]].size()), hooks);
                    if (cb.after_window) cb.after_window();
                }
                model.release_layer(l);
                if (cb.after_layer) cb.after_layer(l);
                if (progress) progress(done + predicted * size_t(l + 1) / size_t(L + 1), total);
            }
            for (size_t g = g0; g < g1; ++g) {
                const TokenWindow& w = windows[mine[g]];
                nll[mine[g]] = model.nll_sum_of_stream(xs[g - g0].data(), w.data(), int(w.size()));
            }
            done += predicted;
            if (progress) progress(done, total);
            g0 = g1;
        }
        });
    group.sum(nll.data(), nll.size());
    double sum = 0;
    for (double v : nll) sum += v;  // in window order, whatever the ranks
    return sum;
}

void sum_over_ranks(const RankGroup& group, const Model& model, RoutingStats& rs) {
    if (group.size() == 1 || !model.config().is_moe()) return;
    // The shape every rank's counts would have had, had it routed a token in every layer.
    const size_t L = size_t(model.config().num_layers);
    rs.counts.resize(L);
    rs.tokens.resize(L, 0);
    for (size_t l = 0; l < L; ++l) {
        const size_t E = model.layer(int(l)).is_moe ? model.layer(int(l)).moe.experts.size() : 0;
        rs.counts[l].resize(std::max(rs.counts[l].size(), E), 0);
        group.sum(rs.counts[l].data(), rs.counts[l].size());
    }
    group.sum(rs.tokens.data(), L);
}

PerplexityResult evaluate_perplexity(Model& model, const std::vector<TokenWindow>& windows, const TokenProgress& progress,
                                     RouteOverride* route, const RankGroup& group) {
    PerplexityResult r;
    r.tokens = predicted_tokens(windows);
    if (r.tokens == 0) fail("no tokens to evaluate (the data is too short)");
    auto t0 = std::chrono::steady_clock::now();
    RunHooks hooks;
    hooks.routing = model.config().is_moe() ? &r.routing : nullptr;
    hooks.route = route;
    r.nll_sum = layer_major_nll_sum(model, windows, hooks, {}, progress, group);
    sum_over_ranks(group, model, r.routing);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

void check_context(const ModelConfig& cfg, int ctx, const std::string& model_dir) {
    if (ctx < 2) fail("--ctx must be at least 2 (got {})", ctx);
    if (ctx > cfg.max_position_embeddings)
        fail("--ctx {} is longer than {} supports (max_position_embeddings {})", ctx, model_dir, cfg.max_position_embeddings);
}

}  // namespace moefy
