#include "eval/perplexity.h"

#include <chrono>
#include <cmath>

#include "common/error.h"

namespace moefy {

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

PerplexityResult evaluate_perplexity(Model& model, const std::vector<TokenWindow>& windows, const TokenProgress& progress,
                                     RouteOverride* route) {
    PerplexityResult r;
    const size_t total = predicted_tokens(windows);
    if (total == 0) fail("no tokens to evaluate (the data is too short)");
    auto t0 = std::chrono::steady_clock::now();
    RunHooks hooks;
    hooks.routing = model.config().is_moe() ? &r.routing : nullptr;
    hooks.route = route;
    for (const TokenWindow& w : windows) {
        r.nll_sum += model.nll_sum(w.data(), int(w.size()), hooks);
        r.tokens += w.size() - 1;
        if (progress) progress(r.tokens, total);
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

void check_context(const ModelConfig& cfg, int ctx, const std::string& model_dir) {
    if (ctx < 2) fail("--ctx must be at least 2 (got {})", ctx);
    if (ctx > cfg.max_position_embeddings)
        fail("--ctx {} is longer than {} supports (max_position_embeddings {})", ctx, model_dir, cfg.max_position_embeddings);
}

}  // namespace moefy
