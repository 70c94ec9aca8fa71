#pragma once
// Shared (always-active) experts for any split method. Of E experts of width
// w = I/E, the N·w neurons with the highest activation mass (mean |h| over
// calibration tokens) or activation rate (the fraction of tokens on which the
// neuron is among the token's N·w largest |h|, CMoE's criterion) become N shared
// experts (the highest-scoring w neurons the first, and so on); the split method
// then splits the remaining I − N·w neurons into E − N routed experts.
//
// h = silu(gate) · up, the down projection's input, of the dense model.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/enum_names.h"
#include "data/documents.h"
#include "split/expert_plan.h"

namespace moefy {

class Model;

enum class SharedCriterion { Mass, Rate };
inline constexpr EnumName<SharedCriterion> shared_criterion_names[] = {{SharedCriterion::Rate, "rate"},
                                                                      {SharedCriterion::Mass, "mass"}};
SharedCriterion parse_shared_criterion(const std::string& s);  // "rate" | "mass"
const char* shared_criterion_name(SharedCriterion c);

// Per-neuron activity of the dense FFNs, accumulated token by token.
struct NeuronActivity {
    int I = 0;
    int top = 0;                               // the rate's "among the token's `top` largest |h|"
    std::vector<size_t> tokens;                // [layer]
    std::vector<std::vector<double>> abs_sum;  // [layer][I] Σ_t |h_tn|
    std::vector<std::vector<int64_t>> top_count;  // [layer][I] tokens with n among the `top` largest |h_t|

    NeuronActivity(int layers, int intermediate_size, int top_count_k);
    // h: [n, I] of layer `layer`.
    void add(int layer, const float* h, int n);
    // [I] mean |h| (Mass) or rate (Rate).
    std::vector<double> score(int layer, SharedCriterion c) const;
};

// One pass of the dense `model` over `windows` (at most max_tokens tokens, whole windows).
NeuronActivity collect_neuron_activity(Model& model, const std::vector<TokenWindow>& windows, int top, size_t max_tokens);

// The `count` neurons of highest score (ties to the lower id), in descending score order.
std::vector<int32_t> top_neurons(const std::vector<double>& score, int count);

struct SharedChoice {
    int experts = 0, shared = 0;
    SharedCriterion criterion = SharedCriterion::Mass;
    std::vector<std::vector<std::vector<int32_t>>> groups;  // [layer][shared expert] neuron ids, ascending
    std::vector<std::vector<int32_t>> rest;                 // [layer] the neurons left to route, ascending
};

// Shared neurons of every layer: N of the E balanced widths of I.
SharedChoice choose_shared(const NeuronActivity& act, int experts, int shared, SharedCriterion c);

// Neurons the rate counts per token for N shared of E experts over I: N·w.
int shared_neuron_count(int intermediate_size, int experts, int shared);

// Puts the choice's shared experts into a plan whose routed experts cover exactly
// choice.rest, and records it in the plan's params ("shared", "shared_criterion").
void attach_shared(ExpertPlan& plan, const SharedChoice& choice);

// The routed experts of a random split of `rest` into `experts` (seeded per layer as random_split).
std::vector<std::vector<int32_t>> random_partition_of(const std::vector<int32_t>& rest, int experts, uint64_t seed, int layer);

// The whole choice from calibration text: one dense pass over `windows` (at most
// max_tokens tokens) measures the activity, then choose_shared.
struct Checkpoint;
SharedChoice measure_shared(const Checkpoint& dense, const std::vector<TokenWindow>& windows, int experts, int shared,
                            SharedCriterion c, size_t max_tokens);

// Checks `shared` against `experts`: 0 <= N <= E - 2 (at least two routed experts remain).
void check_shared_count(int shared, int experts);

}  // namespace moefy
