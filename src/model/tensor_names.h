#pragma once
// Tensor names of every layout moefy reads or writes, in one place, so the
// converter and the engine cannot disagree.
#include <string>

#include <fmt/format.h>

namespace moefy::names {

inline std::string embed() { return "model.embed_tokens.weight"; }
inline std::string final_norm() { return "model.norm.weight"; }
inline std::string lm_head() { return "lm_head.weight"; }
// Every tensor of decoder layer l starts with this.
inline std::string layer_prefix(int l) { return fmt::format("model.layers.{}.", l); }
inline std::string attn(int l, const char* p) { return fmt::format("model.layers.{}.self_attn.{}_proj.weight", l, p); }  // p: q k v o
inline std::string input_norm(int l) { return fmt::format("model.layers.{}.input_layernorm.weight", l); }
inline std::string post_norm(int l) { return fmt::format("model.layers.{}.post_attention_layernorm.weight", l); }
// Dense FFN; proj: "gate", "up", "down".
inline std::string dense_ffn(int l, const char* proj) { return fmt::format("model.layers.{}.mlp.{}_proj.weight", l, proj); }

// llama-moe (LlamaMoEForCausalLM); `prefix` is "mlp" or, for the residual layout, "mlp.moe_layer".
inline std::string llama_moe_expert(int l, const char* proj, int e, const char* prefix = "mlp") {
    return fmt::format("model.layers.{}.{}.calculator.experts.weight_{}.{}", l, prefix, proj, e);
}
inline std::string llama_moe_gate_mlp(int l, int i, const char* prefix = "mlp") {  // i: 0 or 2
    return fmt::format("model.layers.{}.{}.gate.gate_network.{}.weight", l, prefix, i);
}
inline std::string llama_moe_gate_linear(int l, const char* prefix = "mlp") {
    return fmt::format("model.layers.{}.{}.gate.gate_network.weight", l, prefix);
}
inline std::string llama_moe_noise(int l, const char* prefix = "mlp") {
    return fmt::format("model.layers.{}.{}.gate.weight_noise.weight", l, prefix);
}
inline std::string llama_moe_residual_expert(int l, const char* proj, int r) {
    return fmt::format("model.layers.{}.mlp.residual_block.calculator.experts.weight_{}.{}", l, proj, r);
}
inline std::string llama_moe_residual_gate(int l) {
    return fmt::format("model.layers.{}.mlp.residual_block.gate.gate_network.weight", l);
}

// mixtral; w: "w1" (gate), "w3" (up), "w2" (down).
inline std::string mixtral_expert(int l, int e, const char* w) {
    return fmt::format("model.layers.{}.block_sparse_moe.experts.{}.{}.weight", l, e, w);
}
inline std::string mixtral_router(int l) { return fmt::format("model.layers.{}.block_sparse_moe.gate.weight", l); }

// deepseek; proj: "gate", "up", "down".
inline std::string deepseek_expert(int l, int e, const char* proj) {
    return fmt::format("model.layers.{}.mlp.experts.{}.{}_proj.weight", l, e, proj);
}
inline std::string deepseek_shared(int l, const char* proj) {
    return fmt::format("model.layers.{}.mlp.shared_experts.{}_proj.weight", l, proj);
}
inline std::string deepseek_router(int l) { return fmt::format("model.layers.{}.mlp.gate.weight", l); }

}  // namespace moefy::names
