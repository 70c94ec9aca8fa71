#include "convert/routing.h"

#include <cmath>

#include "common/error.h"

namespace moefy {

RouterOptions parse_router_options(const std::string& router, const std::string& weighting, const std::string& scale,
                                   MoEFormat format, bool mlp_gate, int top_k, uint64_t seed) {
    RouterOptions ro;
    ro.kind = parse_router_kind(router);
    ro.weighting = parse_weighting(weighting);
    ro.top_k = top_k;
    ro.mlp = mlp_gate;
    ro.combine = format == MoEFormat::Deepseek ? CombineRule::SoftmaxAll : CombineRule::SoftmaxTopK;
    ro.seed = seed;
    ro.fit_scale = scale == "fit";
    if (ro.fit_scale || scale == "auto") return ro;
    size_t used = 0;
    double v = 0;
    try {
        v = std::stod(scale, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != scale.size() || scale.empty() || !(std::isfinite(v) && v > 0))
        fail("--scale '{}': expected fit, auto or a positive number", scale);
    ro.scale = v;
    return ro;
}

nlohmann::json routing_provenance(const std::string& router, const std::string& weighting, const std::string& scale,
                                  const std::string& calib_file, size_t calib_tokens) {
    nlohmann::json j = {{"router", {{"kind", router}, {"weighting", weighting}, {"scale", scale}}}};
    if (!calib_file.empty()) j["calibration"] = {{"file", calib_file}, {"tokens_per_layer", calib_tokens}};
    return j;
}

void set_convert_routing(const RouterBuild& build, ConvertOptions& opt) {
    const size_t L = build.routers.size();
    if (build.scales.size() != L || build.gamma_max.size() != L) fail("router build: inconsistent layer counts");
    opt.routers = build.routers;
    opt.layer_scales = build.scales;
    opt.scale.reset();
    opt.gate_softmax = true;
    opt.multiply_gate_scores = true;
    if (build.weighting == Weighting::Softmax) return;
    bool all_one = true;
    for (double s : build.scales) all_one = all_one && s == 1.0;
    if (opt.format == MoEFormat::LlamaMoE && all_one) {
        opt.multiply_gate_scores = false;  // sum of the selected experts, as MoEfication
        return;
    }
    // Flattened softmax: each weight is 1/k (renormalised top-k) or 1/E (deepseek).
    const int E = L ? build.routers[0].num_experts : 0;
    const double spread = opt.format == MoEFormat::Deepseek ? double(E) : double(opt.top_k);
    for (size_t l = 0; l < L; ++l) {
        scale_router_logits(opt.routers[l], flatten_factor(build.routers[l], build.gamma_max[l]));
        opt.layer_scales[l] *= spread;
    }
}

}  // namespace moefy
