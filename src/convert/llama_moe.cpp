// LlamaMoEForCausalLM (reference §8.2, 8.3, 8.6) and, when the plan has shared
// experts, LlamaMoEResidualForCausalLM (§8.2 residual converter, §9.4).
//
// Deliberate fixes over the reference converter (§14): gate_network really
// follows --gate (bug 28); widths are checked per layer (bug 29); the source
// dtype is kept (bug 31); the router init is seeded (quirk 30).
#include "common/error.h"
#include "convert/layout.h"
#include "model/tensor_names.h"

namespace moefy::convert {

using nlohmann::json;

namespace {

int total(const std::vector<int>& w) {
    int s = 0;
    for (int x : w) s += x;
    return s;
}

// LinearGLUExperts asserts sum(size_experts[l]) == intermediate_size in every
// layer, and the config has one intermediate_size, so every layer's total must match.
void check_equal_totals(const std::vector<std::vector<int>>& widths, const char* kind, const char* field) {
    for (size_t l = 1; l < widths.size(); ++l)
        if (total(widths[l]) != total(widths[0]))
            fail("plan: layer {} {} experts hold {} neurons in total but layer 0 holds {}; the llama-moe config has one {}, "
                 "so every layer's {} widths must add up to the same total",
                 l, kind, total(widths[l]), total(widths[0]), field, kind);
}

void check(const Context& c) {
    check_equal_totals(c.routed_widths(), "routed", c.R > 0 ? "intermediate_size_moe" : "intermediate_size");
    if (c.R > 0) check_equal_totals(c.shared_widths(), "shared", "intermediate_size_residual");
}

void layer(const Context& c, int l, std::vector<OutTensor>& out) {
    const char* pre = c.R > 0 ? "mlp.moe_layer" : "mlp";
    const LayerPlan& lp = c.plan.layers[size_t(l)];
    const TensorView& wg = c.ffn(l, "gate");
    const TensorView& wu = c.ffn(l, "up");
    const TensorView& wd = c.ffn(l, "down");
    for (int e = 0; e < c.E; ++e) out.push_back(c.rows(names::llama_moe_expert(l, "gate", e, pre), wg, lp.experts[size_t(e)]));
    for (int e = 0; e < c.E; ++e) out.push_back(c.rows(names::llama_moe_expert(l, "up", e, pre), wu, lp.experts[size_t(e)]));
    for (int e = 0; e < c.E; ++e) out.push_back(c.cols(names::llama_moe_expert(l, "down", e, pre), wd, lp.experts[size_t(e)]));
    if (c.mlp_gate) {
        out.push_back(c.router(names::llama_moe_gate_mlp(l, 0, pre), l, false));
        out.push_back(c.router(names::llama_moe_gate_mlp(l, 2, pre), l, true));
    } else {
        out.push_back(c.router(names::llama_moe_gate_linear(l, pre), l, false));
    }
    // Training-only noise controller; zeros as the reference writes it.
    out.push_back(c.zeros(names::llama_moe_noise(l, pre), {c.E, c.H}));
    if (c.R == 0) return;
    for (int r = 0; r < c.R; ++r) out.push_back(c.rows(names::llama_moe_residual_expert(l, "gate", r), wg, lp.shared[size_t(r)]));
    for (int r = 0; r < c.R; ++r) out.push_back(c.rows(names::llama_moe_residual_expert(l, "up", r), wu, lp.shared[size_t(r)]));
    for (int r = 0; r < c.R; ++r) out.push_back(c.cols(names::llama_moe_residual_expert(l, "down", r), wd, lp.shared[size_t(r)]));
    // UniformLearnableGate over the residual experts, zero as constructed:
    // softmax gives each residual expert 1/R.
    out.push_back(c.zeros(names::llama_moe_residual_gate(l), {c.R, c.H}));
}

json scale_value(const std::vector<double>& s) {
    for (double v : s)
        if (v != s[0]) return json(s);
    return json(s.empty() ? 1.0 : s[0]);
}

json config(const Context& c) {
    json j = c.dense.config.raw;
    const bool residual = c.R > 0;
    const auto widths = c.routed_widths();
    j["architectures"] = {residual ? "LlamaMoEResidualForCausalLM" : "LlamaMoEForCausalLM"};
    j["model_type"] = residual ? "llama_moe_residual" : "llama_moe";
    j["torch_dtype"] = torch_dtype_name(c.dtype);
    j["num_experts"] = c.E;
    j["num_selects"] = c.k;
    j["size_experts"] = widths;
    j["gate_type"] = "TopKBalancedNoisyGate";
    j["gate_network"] = c.mlp_gate ? "mlp" : "linear";
    j["gate_use_softmax"] = c.opt.gate_softmax;
    j["gate_use_balance"] = true;
    j["gate_balance_loss_weight"] = 0.01;
    j["gate_add_noise"] = true;
    j["gate_noise_epsilon"] = 0.01;
    j["calculator_type"] = "UniversalCalculator";
    j["multiply_gate_scores"] = c.opt.multiply_gate_scores;
    j["score_scale_factor"] = scale_value(c.scales);
    j["drop_tokens"] = true;
    j["dropped_padding"] = "zero";
    j["capacity_factor"] = 1.25;
    if (!residual) {
        j["add_weight_norm"] = false;
        j["intermediate_size"] = total(widths[0]);
        return j;
    }
    const auto shared = c.shared_widths();
    j["intermediate_size_moe"] = total(widths[0]);
    j["intermediate_size_residual"] = total(shared[0]);
    j["intermediate_size"] = total(widths[0]) + total(shared[0]);
    j["num_experts_residual"] = c.R;
    j["size_experts_residual"] = shared;
    j["gate_use_softmax_residual"] = true;
    j["multiply_gate_scores_residual"] = true;
    // The zero residual gate weighs each of the R shared experts 1/R; a factor R
    // makes their sum exactly the dense neurons' contribution (the reference
    // writes 1.0, which averages them when R > 1).
    j["score_scale_factor_residual"] = double(c.R);
    j["use_weighting"] = false;
    return j;
}

}  // namespace

Layout llama_moe_layout(bool residual) {
    return {residual ? "llama-moe-residual" : "llama-moe", check, layer, config};
}

}  // namespace moefy::convert
