#include "model/expected_tensors.h"

#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "model/tensor_names.h"

namespace moefy {

void for_each_expected_tensor(const ModelConfig& c, const ExpectedTensorVisitor& visit) {
    auto add = [&](std::string name, std::vector<int64_t> shape) { visit({std::move(name), std::move(shape)}); };
    auto add_ffn = [&](std::string gate, std::string up, std::string down, int64_t w, int64_t H) {
        add(std::move(gate), {w, H});
        add(std::move(up), {w, H});
        add(std::move(down), {H, w});
    };
    const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim;
    const int64_t Q = int64_t(c.num_heads) * D, KV = int64_t(c.num_kv_heads) * D;
    const MoEConfig& m = c.moe;
    const int64_t E = m.num_experts;
    add(names::embed(), {V, H});
    add(names::final_norm(), {H});
    visit({names::lm_head(), {V, H}, c.tie_word_embeddings});
    for (int l = 0; l < c.num_layers; ++l) {
        add(names::attn(l, "q"), {Q, H});
        add(names::attn(l, "k"), {KV, H});
        add(names::attn(l, "v"), {KV, H});
        add(names::attn(l, "o"), {H, Q});
        add(names::input_norm(l), {H});
        add(names::post_norm(l), {H});
        auto width = [&](const std::vector<std::vector<int>>& w, int e) { return int64_t(w.at(size_t(l)).at(size_t(e))); };
        switch (c.kind) {
            case ModelKind::Dense:
                add_ffn(names::dense_ffn(l, "gate"), names::dense_ffn(l, "up"), names::dense_ffn(l, "down"),
                        c.intermediate_size, H);
                break;
            case ModelKind::LlamaMoE:
            case ModelKind::LlamaMoEResidual: {
                const char* pre = c.kind == ModelKind::LlamaMoE ? "mlp" : "mlp.moe_layer";
                for (int e = 0; e < E; ++e)
                    add_ffn(names::llama_moe_expert(l, "gate", e, pre), names::llama_moe_expert(l, "up", e, pre),
                            names::llama_moe_expert(l, "down", e, pre), width(m.expert_widths, e), H);
                if (m.gate_network == "mlp") {
                    add(names::llama_moe_gate_mlp(l, 0, pre), {E, H});
                    add(names::llama_moe_gate_mlp(l, 2, pre), {E, E});
                } else {
                    add(names::llama_moe_gate_linear(l, pre), {E, H});
                }
                for (int r = 0; r < m.num_shared; ++r)
                    add_ffn(names::llama_moe_residual_expert(l, "gate", r), names::llama_moe_residual_expert(l, "up", r),
                            names::llama_moe_residual_expert(l, "down", r), width(m.shared_widths, r), H);
                if (m.num_shared > 0) add(names::llama_moe_residual_gate(l), {m.num_shared, H});
                visit({names::llama_moe_noise(l, pre), {}, true, false});
                break;
            }
            case ModelKind::Mixtral:
                add(names::mixtral_router(l), {E, H});
                for (int e = 0; e < E; ++e)
                    add_ffn(names::mixtral_expert(l, e, "w1"), names::mixtral_expert(l, e, "w3"),
                            names::mixtral_expert(l, e, "w2"), width(m.expert_widths, e), H);
                break;
            case ModelKind::Deepseek:
                add(names::deepseek_router(l), {E, H});
                for (int e = 0; e < E; ++e)
                    add_ffn(names::deepseek_expert(l, e, "gate"), names::deepseek_expert(l, e, "up"),
                            names::deepseek_expert(l, e, "down"), width(m.expert_widths, e), H);
                if (m.num_shared > 0)
                    add_ffn(names::deepseek_shared(l, "gate"), names::deepseek_shared(l, "up"), names::deepseek_shared(l, "down"),
                            width(m.shared_widths, 0), H);
                break;
        }
    }
}

void for_each_expected_gguf_tensor(const GgufShape& s, const ExpectedTensorVisitor& visit) {
    auto add = [&](std::string name, std::vector<int64_t> ne) { visit({std::move(name), std::move(ne)}); };
    const int64_t H = s.hidden, E = s.experts;
    add("token_embd.weight", {H, s.vocab});
    for (int64_t l = 0; l < s.layers; ++l) {
        const std::string p = fmt::format("blk.{}.", l);
        add(p + "attn_norm.weight", {H});
        add(p + "attn_q.weight", {H, s.q_rows});
        add(p + "attn_k.weight", {H, s.kv_rows});
        add(p + "attn_v.weight", {H, s.kv_rows});
        add(p + "attn_output.weight", {s.q_rows, H});
        add(p + "ffn_norm.weight", {H});
        if (E == 0) {
            add(p + "ffn_gate.weight", {H, s.ffn});
            add(p + "ffn_up.weight", {H, s.ffn});
            add(p + "ffn_down.weight", {s.ffn, H});
            continue;
        }
        const int64_t W = s.expert_width;
        add(p + "ffn_gate_inp.weight", {H, E});
        add(p + "ffn_gate_exps.weight", {H, W, E});
        add(p + "ffn_up_exps.weight", {H, W, E});
        add(p + "ffn_down_exps.weight", {W, H, E});
        if (s.deepseek && s.shared_width > 0) {
            add(p + "ffn_gate_shexp.weight", {H, s.shared_width});
            add(p + "ffn_up_shexp.weight", {H, s.shared_width});
            add(p + "ffn_down_shexp.weight", {s.shared_width, H});
        }
    }
    add("output_norm.weight", {H});
    if (s.has_output) add("output.weight", {H, s.vocab});
    if (s.rope_freqs > 0) add("rope_freqs.weight", {s.rope_freqs});
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
    std::vector<ExpectedTensor> t;
    for_each_expected_tensor(c, [&](ExpectedTensor e) { t.push_back(std::move(e)); });
    return t;
}

std::vector<ExpectedTensor> expected_gguf_tensors(const GgufShape& s) {
    std::vector<ExpectedTensor> t;
    for_each_expected_gguf_tensor(s, [&](ExpectedTensor e) { t.push_back(std::move(e)); });
    return t;
}

void check_tensor_list(const std::vector<ExpectedTensor>& expected,
                       const std::vector<std::pair<std::string, std::vector<int64_t>>>& have, const std::string& where) {
    std::map<std::string, const ExpectedTensor*> want;
    for (const ExpectedTensor& e : expected) want[e.name] = &e;
    std::set<std::string> seen;
    for (const auto& [name, shape] : have) {
        auto it = want.find(name);
        if (it == want.end()) fail("{}: tensor '{}' is not part of the architecture", where, name);
        if (!seen.insert(name).second) fail("{}: tensor '{}' appears twice", where, name);
        if (it->second->check_shape && shape != it->second->shape)
            fail("{}: tensor '{}' has shape [{}], the architecture says [{}]", where, name, fmt::join(shape, ", "),
                 fmt::join(it->second->shape, ", "));
    }
    for (const ExpectedTensor& e : expected)
        if (!e.optional && !seen.count(e.name)) fail("{}: tensor '{}' is missing", where, e.name);
}

}  // namespace moefy
