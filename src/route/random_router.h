#pragma once
// Router weights of one MoE layer, in f32, and the reference initialisation:
// LLaMA-MoE's converted gate is HF's N(0, initializer_range = 0.02) (reference
// §8.5), here seeded so that the same seed gives the same checkpoint.
//
//   linear gate: logits = W1 · x                  W1: [E, H]
//   mlp gate:    logits = W2 · tanh(W1 · x)       W1: [E, H], W2: [E, E]
//
// Better (training-free) routers produce the same struct, so the converter does
// not care where a router came from.
#include <cstdint>
#include <string>
#include <vector>

namespace moefy {

struct RouterWeights {
    int num_experts = 0;
    int hidden_size = 0;
    std::vector<float> w1;  // [E, H] row-major
    std::vector<float> w2;  // [E, E] row-major for the mlp gate; empty for a linear gate

    bool is_mlp() const { return !w2.empty(); }
};

// Every entry N(0, stddev), drawn from Rng(seed, layer): W1 row by row, then W2.
RouterWeights make_random_router(int num_experts, int hidden_size, bool mlp, uint64_t seed, int layer,
                                 double stddev = 0.02);

// Throws naming `where` unless the router has E experts over H inputs and the
// right gate kind (mlp: W2 present, linear: absent).
void check_router(const RouterWeights& r, int num_experts, int hidden_size, bool mlp, const std::string& where);

}  // namespace moefy
