#pragma once
// ExpertPlan: one JSON file that describes a split of every FFN layer into
// experts. Neuron n of layer l is row n of gate_proj/up_proj and column n of
// down_proj. Routed experts may overlap (inner-sharing) and shared experts are
// always active (inter-sharing / residual); a plain partition has neither.
//
// {"format": "moefy-expert-plan", "version": 1,
//  "model": {"num_layers", "hidden_size", "intermediate_size", "ffn_fingerprint"},
//  "method": "random", "params": {...seed...}, "stats": {...},
//  "layers": [{"experts": [[ids...], ...], "shared": [[ids...], ...], "stats": {...}}, ...]}
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace moefy {

class TensorStore;

struct LayerPlan {
    std::vector<std::vector<int32_t>> experts;  // routed experts, neuron ids in the method's order
    std::vector<std::vector<int32_t>> shared;   // always-active experts (may be empty)
    nlohmann::json stats = nlohmann::json::object();
};

struct ExpertPlan {
    static constexpr const char* kFormat = "moefy-expert-plan";
    static constexpr int kVersion = 1;

    int num_layers = 0;
    int hidden_size = 0;
    int intermediate_size = 0;
    std::string ffn_fingerprint;
    std::string method;
    nlohmann::json params = nlohmann::json::object();
    nlohmann::json stats = nlohmann::json::object();
    std::vector<LayerPlan> layers;

    int num_experts() const { return layers.empty() ? 0 : int(layers[0].experts.size()); }
    int num_shared() const { return layers.empty() ? 0 : int(layers[0].shared.size()); }
    // True when every layer's routed experts cover each neuron exactly once and there are no shared experts.
    bool is_partition() const;
    bool has_shared() const;
    // True when all routed experts in all layers have the same width.
    bool equal_widths() const;

    nlohmann::json to_json() const;
    static ExpertPlan from_json(const nlohmann::json& j, const std::string& where);
    // Writes atomically (temp file + rename).
    void save(const std::string& path) const;
    static ExpertPlan load(const std::string& path);

    // Checks structure: ids in [0, intermediate_size), no id twice inside one
    // expert, no empty expert, the same expert count in every layer. Throws naming `where`.
    void validate(const std::string& where) const;
    // Also checks the plan was made for this model (sizes and fingerprint).
    void validate_for(const ModelConfig& cfg, const std::string& fingerprint, const std::string& where) const;
};

// Cheap identity of a dense model's FFN weights: FNV-1a over each FFN
// tensor's name, dtype, shape and a few sampled 4 KiB blocks of its bytes.
std::string ffn_fingerprint(const TensorStore& tensors, const ModelConfig& cfg);

// Widths for splitting `total` neurons into `parts` balanced parts: the first
// total % parts parts get one extra neuron.
std::vector<int> balanced_widths(int total, int parts);

// Checks E against I for methods that partition: 2 <= E <= I. Throws with a clear message.
void check_expert_count(int experts, int intermediate_size);

}  // namespace moefy
