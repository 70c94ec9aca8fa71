#include "convert/routing.h"

#include <chrono>
#include <optional>

#include <cmath>

#include "common/error.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "route/sequential.h"
#include "split/expert_plan.h"

namespace moefy {

RoutedScale parse_routed_scale(const std::string& s) {
    if (s == "fit") return RoutedScale::fit();
    if (s == "auto") return {};
    size_t used = 0;
    double v = 0;
    try {
        v = std::stod(s, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != s.size() || s.empty() || !(std::isfinite(v) && v > 0))
        fail("--scale '{}': expected fit, auto or a positive number", s);
    return RoutedScale::fixed(v);
}

std::string routed_scale_name(const RoutedScale& s) {
    switch (s.mode) {
        case RoutedScale::Mode::Auto: return "auto";
        case RoutedScale::Mode::Fit: return "fit";
        case RoutedScale::Mode::Fixed: return fmt::format("{:g}", s.value);
    }
    return "?";
}

bool is_reference_routing(const RoutingChoice& c) {
    return c.router == RouterKind::Random && c.weighting == Weighting::Softmax && c.scale.mode != RoutedScale::Mode::Fit;
}

RouterOptions router_options(const RoutingChoice& c, const ConvertOptions& co) {
    RouterOptions ro;
    ro.kind = c.router;
    ro.weighting = c.weighting;
    ro.top_k = co.top_k;
    ro.mlp = co.gate_kind() == GateKind::Mlp;
    ro.combine = co.format == MoEFormat::Deepseek ? CombineRule::SoftmaxAll : CombineRule::SoftmaxTopK;
    ro.seed = co.seed;
    ro.fit_scale = c.scale.mode == RoutedScale::Mode::Fit;
    if (c.scale.mode == RoutedScale::Mode::Fixed) ro.scale = c.scale.value;
    return ro;
}

namespace {
bool left_to_converter(const RoutingChoice& c) { return c.reference_by_converter && is_reference_routing(c); }
}  // namespace

bool routing_needs_calibration(const RoutingChoice& c, const ConvertOptions& co) {
    return !left_to_converter(c) && needs_calibration(router_options(c, co));
}

void check_routing(const RoutingChoice& c, const ConvertOptions& co) {
    if (!left_to_converter(c) && (!co.gate_softmax || !co.multiply_gate_scores))
        fail("--no-softmax / --no-multiply-gate-scores set the reference router's weighting by hand; with --router {} "
             "use --weighting softmax|uniform instead",
             router_kind_name(c.router));
}

RoutingResult apply_routing(const Checkpoint& dense, const ExpertPlan& plan, const RoutingChoice& c,
                            const std::vector<TokenWindow>& calib, const std::string& calib_file, ConvertOptions& co,
                            const RouterProgress& progress) {
    check_routing(c, co);
    RoutingResult out;
    if (left_to_converter(c)) {
        co.routers.clear();
        co.layer_scales.clear();
        co.scale.reset();
        if (c.scale.mode == RoutedScale::Mode::Fixed) co.scale = c.scale.value;
        return out;
    }
    return apply_routing_with(plan, c, calib.empty() ? "" : calib_file, co,
                              [&](const RouterOptions& ro) { return build_routers(dense, plan, ro, calib, progress); });
}

RoutingResult apply_routing_with(const ExpertPlan& plan, const RoutingChoice& c, const std::string& calib_file,
                                 ConvertOptions& co, const RouterBuilder& build) {
    check_routing(c, co);
    if (left_to_converter(c)) fail("routing: the reference routing is made by the converter, not by a router builder");
    RoutingResult out;
    // Routers and weights for the layout's semantics (gguf: mixtral's or deepseek's).
    const MoEFormat format = co.format;
    co.format = routing_semantics(format, plan);
    const RouterBuild rb = build(router_options(c, co));
    set_convert_routing(rb, co);
    co.format = format;
    co.provenance = routing_provenance(c, calib_file, rb.calib_tokens);
    out.built = true;
    out.layers = rb.layers;
    out.calib_tokens = rb.calib_tokens;
    out.build = rb;
    return out;
}

CalibratedRouting calibrate_routing(const Checkpoint& dense, const ExpertPlan& plan, const RoutingChoice& c,
                                    const RoutingExtras& extras, const std::vector<TokenWindow>& calib,
                                    const std::string& calib_file, ConvertOptions& co, const RouterProgress& progress,
                                    const RankGroup& group) {
    using Clock = std::chrono::steady_clock;
    auto since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
    CalibratedRouting out;
    const bool have_text = !calib.empty();
    out.sequential = extras.sequential && have_text && routing_needs_calibration(c, co) && !left_to_converter(c);
    RouterOptions ro;
    std::optional<SequentialResult> seq;
    RefitOptions ropt;
    const bool refit_wanted = extras.refit && have_text;
    auto t0 = Clock::now();
    if (out.sequential) {
        auto model = Model::load(dense);
        out.routing = apply_routing_with(plan, c, calib_file, co, [&](const RouterOptions& opt) {
            ro = opt;
            ropt.max_tokens = opt.calib.max_tokens;
            seq = calibrate_sequentially(
                *model, plan, opt, calib, refit_wanted, ropt, {},
                [&](size_t d, size_t n) { if (progress) progress("calibrate", double(d), double(n)); }, group);
            return seq->build;
        });
    } else {
        out.routing = apply_routing(dense, plan, c, calib, calib_file, co, progress);
        ro = router_options(c, co);
        ropt.max_tokens = ro.calib.max_tokens;
    }
    out.seconds_routing = since(t0);

    out.refit = refit_wanted && out.routing.built;
    if (out.refit) {
        t0 = Clock::now();
        RefitResult rf;
        if (seq) {
            rf = std::move(seq->refit);
        } else {
            auto model = Model::load(dense);
            rf = refit_down_projections(*model, plan, refit_routing(out.routing.build, co.top_k, ro.combine, ro.calib.shared_weight),
                                        calib, ropt, progress);
        }
        out.refit_layers = rf.layers;
        out.refit_tokens = rf.layers.empty() ? 0 : rf.layers[0].tokens + rf.layers[0].val_tokens;
        co.down_proj = std::move(rf.down);
        co.provenance["refit"] = {{"tokens_per_layer", out.refit_tokens}, {"held_out_every", ropt.val_every}};
        out.seconds_refit = since(t0);
    }
    if (out.sequential) co.provenance["sequential"] = true;
    return out;
}

nlohmann::json routing_provenance(const RoutingChoice& c, const std::string& calib_file, size_t calib_tokens) {
    nlohmann::json j = {{"router",
                         {{"kind", router_kind_name(c.router)},
                          {"weighting", weighting_name(c.weighting)},
                          {"scale", routed_scale_name(c.scale)}}}};
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
