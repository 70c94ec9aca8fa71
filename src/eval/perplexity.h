#pragma once
// Perplexity of a model over token windows (see data/documents.h for how
// documents become windows: every token after a document's BOS is predicted
// exactly once).
#include <cstddef>
#include <functional>
#include <vector>

#include "data/documents.h"
#include "model/llama.h"

namespace moefy {

struct PerplexityResult {
    size_t tokens = 0;      // predicted tokens
    double nll_sum = 0;     // natural log
    double seconds = 0;
    RoutingStats routing;   // MoE models: tokens per expert per layer
    double mean_nll() const { return tokens ? nll_sum / double(tokens) : 0.0; }
    double perplexity() const;
    double tokens_per_second() const { return seconds > 0 ? double(tokens) / seconds : 0.0; }
};

// progress(done_tokens, total_tokens)
using TokenProgress = std::function<void(size_t, size_t)>;

PerplexityResult evaluate_perplexity(Model& model, const std::vector<TokenWindow>& windows, const TokenProgress& progress = {},
                                     RouteOverride* route = nullptr);

// Fails with a clear message when `ctx` is longer than the model supports.
void check_context(const ModelConfig& cfg, int ctx, const std::string& model_dir);

}  // namespace moefy
