#pragma once
// Gradient split (LLaMA-MoE §5–§6): turn per-cluster neuron-importance vectors
// into experts. Expert e is built from the importance vector of data cluster e
// (numeric cluster order; the reference reads cluster folders in lexicographic
// order, quirk 22, which only the caller that loads the vectors can reproduce).
//
//   independent (not shared): a partition, every expert exactly expert_size neurons,
//                             by the reference's greedy or by an exact min-cost-flow optimum;
//   inner-sharing (shared):   each expert takes its own top expert_size neurons, experts overlap;
//   inter-sharing (residual): R always-active experts take the neurons most experts agree on,
//                             the routed experts split (or share) the rest.
//
// Rankings are a stable sort (ties to the lower neuron index; the reference's
// torch.sort is unstable, quirk 23). "Total importance" of a split is
// sum_e sum_{n in S_e} s_e[n].
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "split/expert_plan.h"

namespace moefy {

enum class Criterion { Max, Min };  // keep the highest / the lowest scores
Criterion parse_criterion(const std::string& s);  // "max" | "min"
const char* criterion_name(Criterion c);

enum class Assign { Greedy, Optimal };  // for independent splits
Assign parse_assign(const std::string& s);  // "greedy" | "optimal"
const char* assign_name(Assign a);

using ExpertSets = std::vector<std::vector<int32_t>>;  // [expert][neuron ids]
// scores[c]: importance of each of the I neurons for data cluster c, all the same length.
using ScoreSpan = std::span<const std::vector<double>>;

// Neuron ids best first: descending scores for Max, ascending for Min; ties to the lower id.
std::vector<int32_t> rank_neurons(const std::vector<double>& s, Criterion c);

// sum_e sum_{n in experts[e]} scores[e][n].
double split_total(ScoreSpan scores, const ExpertSets& experts);

// §5.2 exactly: repeatedly give the expert (with room) whose best unused neuron
// scores best that neuron; ties between experts go to the LATER expert. One
// expert per score vector; needs expert_size * E == I. Ids ascending per expert
// (the reference's label format, which its converter visits in ascending order).
ExpertSets greedy_independent_split(ScoreSpan scores, int expert_size, Criterion c);

// Same constraints; the partition with the largest (Max) / smallest (Min) total
// importance: min-cost flow (LEMON network simplex on integer-quantised costs),
// then cancelling any remaining improving cycle in exact double arithmetic, so
// the result is optimal for the double scores, not only for their quantisation.
// Ids ascending per expert.
ExpertSets optimal_independent_split(ScoreSpan scores, int expert_size, Criterion c);

// §5.3: expert e = its top expert_size neurons, in score order. 1 <= expert_size <= I.
ExpertSets shared_split(ScoreSpan scores, int expert_size, Criterion c);

struct ResidualSplit {
    ExpertSets residual;  // R always-active experts, neurons in the order they were chosen
    ExpertSets routed;    // num_routed experts
};

// §6 exactly. Needs num_routed + num_residual score vectors (the reference
// computes one per expert) but, like the reference (quirk 25), uses only the
// first num_routed. Residual neurons: repeatedly take the neurons that lie in the
// top expert_size of the most routed experts (ascending id; the capacity cut keeps
// the lowest ids) until R * expert_size are held, then chunk them into R experts.
// Routed experts: share -> each expert's top expert_size of the remaining neurons
// (score order; needs (R + 1) * expert_size <= I so every routed expert is full);
// not shared -> the §5.2 greedy over the remaining neurons (pick order, as the
// reference stores it) or, with Assign::Optimal, the exact optimum (ascending);
// needs expert_size * (num_routed + R) == I.
ResidualSplit residual_split(ScoreSpan scores, int num_routed, int num_residual, int expert_size, Criterion c,
                             bool share, Assign assign = Assign::Greedy);

// Overlap of the experts of one layer (§5.4).
struct OverlapStats {
    int intermediate_size = 0;
    std::vector<std::vector<double>> rate;  // [E][E]: |Si ∩ Sj| / |Si ∪ Sj| (0 when both are empty)
    std::vector<std::vector<int>> count;    // [E][E]: count[e][r-1] = neurons of e selected by exactly r experts
    std::vector<int> sizes;                 // [E]: |Se|
    int distinct_neurons = 0;               // |∪ Se|

    int num_experts() const { return int(rate.size()); }
    nlohmann::json to_json() const;  // {"rate", "count", "sizes", "distinct_neurons"}
    static OverlapStats from_json(const nlohmann::json& j, int intermediate_size, const std::string& where);
};
OverlapStats overlap_stats(const ExpertSets& experts, int intermediate_size);

struct GradientSplitOptions {
    int experts = 0;      // all experts, residual ones included (the reference's E_moe + R); 0: one per cluster
    int residual = 0;     // R always-active experts; the routed experts are the other experts - R
    int expert_size = 0;  // neurons per expert; 0: I / experts (must divide I)
    bool share = false;   // inner-sharing (no residual) / shared routed experts (residual)
    Criterion criterion = Criterion::Max;
    Assign assign = Assign::Greedy;  // independent splits only
    bool compare = true;  // independent splits: also solve the other assignment to report both totals
    // Copied into the plan. num_layers and intermediate_size come from the shape of `scores`.
    int hidden_size = 0;
    std::string ffn_fingerprint;
};

// scores: [layer][cluster][I]. Builds method "gradient" with params {experts,
// expert_size, share, residual, criterion, assign, clusters, cluster_order};
// per layer: routed experts in `experts`, residual experts in `shared`, stats
// {"overlap": OverlapStats of the routed experts, "distinct_neurons" (routed and
// residual), and for independent splits "greedy_total", "optimal_total"}.
// Plan stats: the sums of greedy_total / optimal_total over layers. Layers run in parallel.
ExpertPlan gradient_split_plan(const std::vector<std::vector<std::vector<double>>>& scores,
                               const GradientSplitOptions& opt);

}  // namespace moefy
