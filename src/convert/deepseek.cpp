// DeepseekForCausalLM (DeepSeekMoE v1): softmax over all routed experts, top-k
// without renormalisation (norm_topk_prob false), plus shared experts that are
// always on and unweighted. HF stores all shared experts as one MLP of width
// n_shared_experts * moe_intermediate_size, so the plan's shared experts are
// concatenated (their sum is exactly that MLP). routed_scaling_factor stays 1.0
// and the scale is folded into the routed down projections, which keeps HF,
// vLLM and llama.cpp (which reads expert_weights_scale only in some builds) in agreement.
#include <algorithm>

#include "common/error.h"
#include "convert/layout.h"
#include "model/tensor_names.h"

namespace moefy::convert {

using nlohmann::json;

namespace {

int routed_width(const Context& c) { return int(c.plan.layers[0].experts[0].size()); }

int shared_total(const LayerPlan& lp) {
    int s = 0;
    for (const auto& e : lp.shared) s += int(e.size());
    return s;
}

void check(const Context& c) {
    if (!c.plan.equal_widths())
        fail("plan has routed experts of different widths, but DeepSeek stores one moe_intermediate_size: use --format "
             "llama-moe (per-expert widths), or a plan with equal widths");
    const int w = routed_width(c);
    if (c.R > 0) {
        const int s0 = shared_total(c.plan.layers[0]);
        for (size_t l = 0; l < c.plan.layers.size(); ++l) {
            const int s = shared_total(c.plan.layers[l]);
            if (s != s0)
                fail("plan: layer {} shared experts hold {} neurons but layer 0 holds {}; DeepSeek has one n_shared_experts "
                     "for all layers: use --format llama-moe",
                     l, s, s0);
        }
        if (s0 % w != 0)
            fail("plan: the shared experts hold {} neurons, not a multiple of the routed width {}; DeepSeek's shared MLP "
                 "is n_shared_experts x moe_intermediate_size wide: use --format llama-moe (llama-moe-residual layout)",
                 s0, w);
    }
    if (c.mlp_gate)
        fail("--gate mlp: DeepSeek's router is one linear layer (mlp.gate [E, H]); the Linear-tanh-Linear gate exists only "
             "in --format llama-moe");
    if (!c.opt.gate_softmax)
        fail("--no-softmax: DeepSeek always weights experts by the softmax over all experts; use --format llama-moe");
    if (!c.opt.multiply_gate_scores)
        fail("--no-multiply-gate-scores: DeepSeek always multiplies routed outputs by their weights; use --format llama-moe");
}

void layer(const Context& c, int l, std::vector<OutTensor>& out) {
    const LayerPlan& lp = c.plan.layers[size_t(l)];
    const TensorView& wg = c.ffn(l, "gate");
    const TensorView& wu = c.ffn(l, "up");
    const TensorView& wd = c.ffn(l, "down");
    out.push_back(c.router(names::deepseek_router(l), l, false));
    for (int e = 0; e < c.E; ++e) {
        const auto& ids = lp.experts[size_t(e)];
        out.push_back(c.rows(names::deepseek_expert(l, e, "gate"), wg, ids));
        out.push_back(c.rows(names::deepseek_expert(l, e, "up"), wu, ids));
        out.push_back(c.cols(names::deepseek_expert(l, e, "down"), wd, ids, c.scales[size_t(l)]));
    }
    if (c.R == 0) return;
    std::vector<int32_t> shared;  // shared experts side by side: one MLP computing their sum
    for (const auto& s : lp.shared) shared.insert(shared.end(), s.begin(), s.end());
    out.push_back(c.rows(names::deepseek_shared(l, "gate"), wg, shared));
    out.push_back(c.rows(names::deepseek_shared(l, "up"), wu, shared));
    out.push_back(c.cols(names::deepseek_shared(l, "down"), wd, std::move(shared)));
}

json config(const Context& c) {
    json j = c.dense.config.raw;
    const int w = routed_width(c);
    j["architectures"] = {"DeepseekForCausalLM"};
    j["model_type"] = "deepseek";
    j["torch_dtype"] = torch_dtype_name(c.dtype);
    j["n_routed_experts"] = c.E;
    j["n_shared_experts"] = c.R > 0 ? json(shared_total(c.plan.layers[0]) / w) : json(nullptr);
    j["moe_intermediate_size"] = w;
    j["num_experts_per_tok"] = c.k;
    j["first_k_dense_replace"] = 0;
    j["moe_layer_freq"] = 1;
    j["norm_topk_prob"] = false;
    j["scoring_func"] = "softmax";
    j["routed_scaling_factor"] = 1.0;
    j["aux_loss_alpha"] = 0.001;
    j["seq_aux"] = true;
    return j;
}

}  // namespace

Layout deepseek_layout() { return {"deepseek", check, layer, config}; }

}  // namespace moefy::convert
