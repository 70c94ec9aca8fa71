#pragma once
// Measured quality of an MoE model against the dense model it came from, on
// the same token windows:
//
//   perplexity      dense and MoE (and oracle-routed MoE), same tokens, their ratio;
//   FFN error       per MoE layer l, with x the MoE model's own FFN input there:
//                     err_l = Σ_t ‖moe_l(x_t) − dense_l(x_t)‖² / Σ_t ‖dense_l(x_t)‖²
//                   (dense_l: the reference checkpoint's SwiGLU block of layer l);
//   expert load     per layer, the fraction of tokens that chose each routed
//                   expert, and its coefficient of variation (std / mean).
//
// Oracle routing: per token, the top-k routed experts by true output mass
// ‖E_e(x_t)‖₂ (the engine's RouteInput::mass), weighted exactly as the model
// weights its own choice (MoEConfig: softmax over the chosen experts' logits ×
// the layer scale, softmax over all E, raw logits, or 1 when gate scores are
// not multiplied). It is the best any router can do on this split with this
// weighting by that criterion, and with top-k = E it selects every expert, so
// a partition with unit weights reproduces the dense model.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/documents.h"
#include "eval/perplexity.h"
#include "model/llama.h"

namespace moefy {

struct Checkpoint;

// One MoE layer's measurements.
struct LayerQuality {
    int layer = 0;
    double err_num = 0;  // Σ_t ‖moe − dense‖²
    double err_den = 0;  // Σ_t ‖dense‖²
    std::vector<int64_t> counts;  // [E] tokens that selected each routed expert
    int64_t tokens = 0;           // tokens routed through the layer

    double rel_error() const { return err_den > 0 ? err_num / err_den : 0.0; }
    // counts / tokens per expert: sums to top-k when every slot is filled.
    std::vector<double> load() const;
    // Coefficient of variation of load(): 0 for perfectly even routing.
    double load_cv() const;
};

// The MoE model evaluated under one routing (its own router, or the oracle).
struct MoEQuality {
    PerplexityResult ppl;
    std::vector<LayerQuality> layers;  // MoE layers only, ascending
    // Σ err_num / Σ err_den over all layers.
    double total_rel_error() const;
};

struct ReferenceComparison {
    PerplexityResult dense;
    MoEQuality moe;
    std::optional<MoEQuality> oracle;
    double ppl_ratio() const { return dense.perplexity() > 0 ? moe.ppl.perplexity() / dense.perplexity() : 0.0; }
};

// Combine weights of the experts sel [k] of one token, as the model would
// weight them had its router chosen them (see route_tokens in model/moe_ffn.h).
// Empty slots (-1) get weight 0. logits: [E].
void model_weights(const MoEConfig& m, int layer, const float* logits, int E, const int32_t* sel, int k, float* w);

// Oracle choice for T tokens: sel [T, k] = the k largest of mass [T, E] per
// token (largest first, ties to the lower index), w [T, k] by model_weights.
void oracle_route(const MoEConfig& m, int layer, const float* logits, const float* mass, int T, int E, int k,
                  int32_t* sel, float* w);

// The RouteOverride behind --oracle.
class OracleRoute : public RouteOverride {
public:
    explicit OracleRoute(const MoEConfig& m) : m_(m) {}
    bool wants_mass() const override { return true; }
    void route(const RouteInput& in, int32_t* sel, float* weight) override;

private:
    MoEConfig m_;
};

// Refuses a pair that cannot be compared: `dense` must be dense, `moe` an MoE
// model with the same layer count, hidden size, vocabulary and FFN width
// (routed + shared experts of a partition cover it), and, when both store the
// embedding in the same dtype, the same embedding bytes (sampled). Names both
// directories in the error.
void check_reference_pair(const Checkpoint& moe, const Checkpoint& dense);

// progress(stage, done tokens, total tokens); stage: "dense", "moe", "oracle".
using CompareProgress = std::function<void(const char* stage, size_t done, size_t total)>;

// The MoE model over `windows` with `route` (nullptr: its own router),
// measuring FFN error against `dense` in every MoE layer and expert load.
// Data-parallel over `group` as evaluate_perplexity.
MoEQuality evaluate_moe_quality(Model& moe, const Model& dense, const std::vector<TokenWindow>& windows,
                                RouteOverride* route = nullptr, const TokenProgress& progress = {},
                                const RankGroup& group = {});

// Dense perplexity, MoE quality and, when `oracle`, oracle-routed quality, all on `windows`.
ReferenceComparison compare_with_reference(Model& moe, Model& dense, const std::vector<TokenWindow>& windows, bool oracle,
                                           const CompareProgress& progress = {}, const RankGroup& group = {});

// {"tokens", "perplexity", "mean_nll", "seconds", "layers": [{"layer", "ffn_rel_error", "load", "load_cv"}]}
nlohmann::json quality_json(const MoEQuality& q);
// {"tokens", "dense": {...}, "moe": {...}, "oracle": {...} (when run), "ppl_ratio", "oracle_ppl_ratio"}
nlohmann::json comparison_json(const ReferenceComparison& c);

// Expert load of plain routing statistics (any MoE run): [{"layer", "fraction", "cv"}].
nlohmann::json routing_load_json(const RoutingStats& rs);

}  // namespace moefy
