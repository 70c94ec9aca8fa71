#pragma once
// Clustering split (reference §2): per layer, the rows of the dense FFN's
// up_proj or gate_proj weight (one row = one neuron's input weights) are
// L2-normalised and grouped by balanced k-means into E equal-sized experts.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "split/expert_plan.h"

namespace moefy {

struct ClusterSplitOptions {
    int experts = 8;
    std::string proj = "up";      // "up" | "gate": whose rows are clustered
    std::string metric = "l2";    // "l2" | "cos" | "spherical" (see balanced_kmeans.h)
    uint64_t seed = 0;            // every layer uses this seed, as the reference (random_state=0 per layer)
    int restarts = 10;
    int max_iter = 500;
    double tol = 1e-4;
    int threads = 0;              // passed to KMeansOptions::threads
    // [layer] the neurons to split (ascending; the rest are shared experts,
    // split/shared_split.h); empty: all of them.
    std::vector<std::vector<int32_t>> neurons;
};

// Called after each layer with (layers done, layer count).
using SplitProgress = std::function<void(int layer, int layers)>;

// Experts hold neuron ids in ascending order. When E does not divide I, the
// widths are balanced_widths(I, E) (the first I % E experts one wider).
// Holds one layer's rows as f32 at a time. Throws moefy::Error for E < 2,
// E > I, an unknown metric or projection, an MoE checkpoint, or missing tensors.
ExpertPlan cluster_split(const Checkpoint& ckpt, const ClusterSplitOptions& opts, const SplitProgress& progress = {});

}  // namespace moefy
