#pragma once
// Model configuration read from a Hugging Face config.json: dense LLaMA /
// Mistral, and the MoE layouts moefy writes (llama-moe, llama-moe-residual,
// mixtral, deepseek).
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moefy {

enum class ModelKind { Dense, LlamaMoE, LlamaMoEResidual, Mixtral, Deepseek };
const char* model_kind_name(ModelKind k);  // "dense", "llama-moe", ...

struct RopeScaling {
    std::string type;  // "" (none), "llama3", "linear"
    double factor = 1.0;
    double low_freq_factor = 1.0;
    double high_freq_factor = 4.0;
    int original_max_position_embeddings = 8192;
};

// How the routed experts of an MoE layer are chosen and weighted.
//   llama-moe:  logits = gate(x); top-k; w = softmax(top-k logits) if gate_softmax else logits;
//               y = sum_j (w_j * scale[l]) * E_j(x) if multiply_gate_scores else sum_j E_j(x)
//   mixtral:    softmax over all E, top-k, renormalised to sum 1 (== softmax of the top-k logits)
//   deepseek:   softmax over all E, top-k, not renormalised (norm_topk_prob false)
// Ties in top-k go to the lower expert index.
struct MoEConfig {
    int num_experts = 0;                        // routed experts per layer
    int top_k = 0;
    std::vector<std::vector<int>> expert_widths;  // [layer][expert]
    std::string gate_network = "mlp";          // llama-moe: "mlp" (Linear-tanh-Linear) or "linear"
    bool gate_softmax = true;
    bool multiply_gate_scores = true;
    std::vector<float> score_scale;             // [layer]; 1.0 where the layout has none
    bool softmax_over_all = false;              // deepseek/mixtral: softmax over all E before top-k
    bool renormalize_topk = false;              // mixtral: true
    // Always-active shared experts (llama-moe-residual, deepseek).
    int num_shared = 0;                         // shared tensor groups per layer (deepseek: 1, all shared experts fused)
    std::vector<std::vector<int>> shared_widths;  // [layer][shared expert]
    float shared_scale = 1.0f;                    // llama-moe-residual: score_scale_factor_residual
    bool shared_multiply = true;                  // llama-moe-residual: multiply_gate_scores_residual
};

struct ModelConfig {
    ModelKind kind = ModelKind::Dense;
    std::string architecture;  // architectures[0]
    std::string model_type;
    int vocab_size = 0;
    int hidden_size = 0;
    int intermediate_size = 0;  // dense FFN width (for MoE: as the config states it)
    int num_layers = 0;
    int num_heads = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
    int max_position_embeddings = 0;
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    bool tie_word_embeddings = false;
    std::optional<int> sliding_window;
    int bos_token_id = 1;
    int eos_token_id = 2;
    std::string torch_dtype;
    MoEConfig moe;              // num_experts == 0 for dense models
    nlohmann::json raw;         // the whole config.json as read

    bool is_moe() const { return kind != ModelKind::Dense; }
    // Parses and validates; `where` names the file in errors. Unknown
    // architectures are refused by name.
    static ModelConfig parse(const nlohmann::json& j, const std::string& where);
    static ModelConfig load(const std::string& config_json_path);
};

}  // namespace moefy
