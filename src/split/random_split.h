#pragma once
// Random split: a seeded, uniformly random balanced partition of each layer's
// neurons. Layer l draws from its own stream Rng(seed, l), so layers are
// independent and the same seed gives the same plan byte for byte. Widths are
// I/E; when E does not divide I the first I%E experts get one more neuron.
#include <cstdint>

#include "split/expert_plan.h"

namespace moefy {

struct Checkpoint;

// One layer: neuron ids of each expert, ascending.
std::vector<std::vector<int32_t>> random_partition(int intermediate_size, int experts, uint64_t seed, int layer);

ExpertPlan random_split(const Checkpoint& model, int experts, uint64_t seed);

}  // namespace moefy
