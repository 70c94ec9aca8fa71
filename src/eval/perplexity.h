#pragma once
// Perplexity of a model over token windows (see data/documents.h for how
// documents become windows: every token after a document's BOS is predicted
// exactly once).
#include <cstddef>
#include <functional>
#include <vector>

#include "data/documents.h"
#include "model/llama.h"
#include "mpi/rank_group.h"

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

// Runs layer-major (below), so each layer's weights are read once per group of
// windows and a 7B model never has more than a layer resident. Data-parallel
// over `group` (windows round-robin); every rank gets the whole result.
PerplexityResult evaluate_perplexity(Model& model, const std::vector<TokenWindow>& windows, const TokenProgress& progress = {},
                                     RouteOverride* route = nullptr, const RankGroup& group = {});

// Windows at most this many tokens together form one layer-major group (their
// streams: kLayerMajorGroupTokens x hidden x 4 bytes, 268 MB at 7B).
constexpr size_t kLayerMajorGroupTokens = 16384;

struct LayerMajorCallbacks {
    std::function<void()> after_window;    // after each window's run of a layer (hooks close their layer here)
    std::function<void(int)> after_layer;  // after a group's windows all ran layer l
};

// Σ over windows of model.nll_sum(window, hooks), computed layer-major: windows in
// groups of up to kLayerMajorGroupTokens; in a group every window's residual
// stream advances one layer at a time, and each finished layer's weights leave
// the resident set (Model::release_layer). The same numbers as nll_sum window by
// window (embed + run_layer is forward's computation), summed in window order.
// progress: predicted tokens done (a group's share grows with its layers).
// Data-parallel: a rank runs windows i with i mod size == rank (hooks and
// callbacks see only those), the per-window sums are all-reduced and added in
// window order, so every rank returns what one process returns.
double layer_major_nll_sum(Model& model, const std::vector<TokenWindow>& windows, const RunHooks& hooks,
                           const LayerMajorCallbacks& cb = {}, const TokenProgress& progress = {},
                           const RankGroup& group = {});

// Routing counts summed over the ranks (every rank gets the total).
void sum_over_ranks(const RankGroup& group, const Model& model, RoutingStats& rs);

// Fails with a clear message when `ctx` is longer than the model supports.
void check_context(const ModelConfig& cfg, int ctx, const std::string& model_dir);

}  // namespace moefy
