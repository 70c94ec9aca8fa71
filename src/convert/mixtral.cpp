// MixtralForCausalLM: softmax over all experts, top-k, renormalised to sum 1,
// no output scale. Renormalised top-k softmax equals llama-moe's softmax over the
// k selected logits, so the only thing to carry over is the scale factor, which
// is folded into w2 (in f32, then cast).
#include <algorithm>

#include "common/error.h"
#include "convert/layout.h"
#include "model/tensor_names.h"

namespace moefy::convert {

using nlohmann::json;

namespace {

void check(const Context& c) {
    if (c.R > 0)
        fail("plan has {} shared experts per layer, but Mixtral has no always-on experts: use --format deepseek "
             "(shared + routed) or --format llama-moe (llama-moe-residual layout)",
             c.R);
    if (!c.plan.equal_widths()) {
        size_t lo = SIZE_MAX, hi = 0;
        for (const LayerPlan& lp : c.plan.layers)
            for (const auto& e : lp.experts) lo = std::min(lo, e.size()), hi = std::max(hi, e.size());
        fail("plan has expert widths from {} to {}, but Mixtral stores one intermediate_size for every expert: "
             "use --format llama-moe (per-expert widths), or a plan with equal widths",
             lo, hi);
    }
    if (c.mlp_gate)
        fail("--gate mlp: Mixtral's router is one linear layer (block_sparse_moe.gate [E, H]); the Linear-tanh-Linear "
             "gate exists only in --format llama-moe");
    if (!c.opt.gate_softmax)
        fail("--no-softmax: Mixtral always weights experts by the renormalised softmax; use --format llama-moe");
    if (!c.opt.multiply_gate_scores)
        fail("--no-multiply-gate-scores: Mixtral always multiplies expert outputs by their routing weights; use --format llama-moe");
}

void layer(const Context& c, int l, std::vector<OutTensor>& out) {
    const LayerPlan& lp = c.plan.layers[size_t(l)];
    const TensorView& wg = c.ffn(l, "gate");
    const TensorView& wu = c.ffn(l, "up");
    const TensorView& wd = c.ffn(l, "down");
    out.push_back(c.router(names::mixtral_router(l), l, false));
    for (int e = 0; e < c.E; ++e) {
        const auto& ids = lp.experts[size_t(e)];
        out.push_back(c.rows(names::mixtral_expert(l, e, "w1"), wg, ids));
        out.push_back(c.cols(names::mixtral_expert(l, e, "w2"), wd, ids, c.scales[size_t(l)]));
        out.push_back(c.rows(names::mixtral_expert(l, e, "w3"), wu, ids));
    }
}

json config(const Context& c) {
    json j = c.dense.config.raw;
    j["architectures"] = {"MixtralForCausalLM"};
    j["model_type"] = "mixtral";
    j["torch_dtype"] = torch_dtype_name(c.dtype);
    j["num_local_experts"] = c.E;
    j["num_experts_per_tok"] = c.k;
    j["intermediate_size"] = c.plan.layers[0].experts[0].size();
    // The dense model's own window (a Mistral source) or none; never Mixtral-8x7B's (reference bug 39).
    if (!c.dense.config.sliding_window) j["sliding_window"] = nullptr;
    j["router_aux_loss_coef"] = 0.02;
    j["router_jitter_noise"] = 0.0;
    j["output_router_logits"] = false;
    return j;
}

}  // namespace

Layout mixtral_layout() { return {"mixtral", check, layer, config}; }

}  // namespace moefy::convert
