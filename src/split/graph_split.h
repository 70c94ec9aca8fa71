#pragma once
// Co-activation graph split, end to end: run the dense model over calibration
// text, accumulate each layer's co-activation matrix (split/coactivation.h),
// partition it with METIS and rebalance (split/graph_partition.h).
//
// Activation per --proj, as the reference's dumps: "up" -> h = silu(gate)·up
// (the down_proj input), "gate" -> silu(gate).
//
// One layer-major pass: the residual streams of all windows are kept in f32
// (tokens x hidden x 4 bytes: 134 MB for 8192 tokens of a 7B model) and each
// layer runs on all of them, so one I x I matrix is in memory at a time and the
// weights are read once.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/documents.h"
#include "mpi/rank_group.h"
#include "split/expert_plan.h"

namespace moefy {

struct Checkpoint;

struct GraphSplitOptions {
    int experts = 8;
    std::string proj = "up";       // "up" | "gate"
    std::string metric = "l1";     // "l1" | "l2" | "plain"
    uint64_t seed = 0;
    int chunk_tokens = 8;          // clamp per this many tokens (MoEfication: 8)
    float threshold = 1.0f;        // clamp value
    // [layer] the neurons to split (ascending; the rest are shared experts,
    // split/shared_split.h): the graph restricted to them; empty: all neurons.
    std::vector<std::vector<int32_t>> neurons;
};

struct GraphSplitTimings {
    double forward_s = 0, accumulate_s = 0, partition_s = 0;
    size_t tokens = 0;
    int passes = 0;
};

// progress(stage text, done, total)
using GraphProgress = std::function<void(const std::string&, double, double)>;

// Minimum tokens of text the split accepts: fewer give no usable statistics.
constexpr size_t kGraphMinTokens = 256;

// Data-parallel over `group`: each rank runs its share of the windows (whole
// chunks of tokens, in order), the matrices are summed over the ranks and every
// rank partitions the sum, so all ranks return the same plan. It equals one
// process's up to the f32 sums' order (an edge weight at an integer boundary of
// the METIS weights could round the other way).
ExpertPlan graph_split(const Checkpoint& model, const std::vector<TokenWindow>& windows, const GraphSplitOptions& opts,
                       const GraphProgress& progress = {}, GraphSplitTimings* timings = nullptr,
                       const RankGroup& group = {});

}  // namespace moefy
