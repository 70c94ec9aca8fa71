#include "route/build_routers.h"

#include <chrono>
#include <cmath>

#include "common/error.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "route/centroid_router.h"
#include "split/expert_plan.h"

namespace moefy {

bool needs_calibration(const RouterOptions& opt) {
    return opt.kind == RouterKind::Fit || opt.fit_scale ||
           (opt.weighting == Weighting::Softmax && opt.fit_temperature && opt.kind != RouterKind::Random);
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double natural_scale(const RouterOptions& opt, int E) {
    if (opt.scale) return *opt.scale;
    return opt.weighting == Weighting::Softmax ? double(E) / opt.top_k : 1.0;
}

// Σ_{selected} m / Σ_{true top-k} m with m = ‖y_e‖ over all calibration tokens.
double captured_mass(const LayerCalib& c, const std::vector<float>& logits, int k) {
    const std::vector<float> m = target_mass(c, FitTarget::OutputNorm);
    return topk_quality(logits.data(), m.data(), c.N, c.E, k, 1).first;
}

}  // namespace

namespace {

void check_options(const ModelConfig& cfg, const ExpertPlan& plan, const RouterOptions& opt) {
    const int E = plan.num_experts(), k = opt.top_k;
    if (k < 1 || k > E) fail("--top-k {}: must be between 1 and the plan's {} experts", k, E);
    if (opt.scale && !(std::isfinite(*opt.scale) && *opt.scale > 0)) fail("--scale {}: must be a positive number", *opt.scale);
    if (plan.num_layers != cfg.num_layers) fail("expert plan: {} layers, the model has {}", plan.num_layers, cfg.num_layers);
}

// What both entry points refuse before any work (the plan against the model, the
// options, calibration the options need but did not get), then the model.
std::unique_ptr<Model> load_checked(const Checkpoint& dense, const ExpertPlan& plan, const RouterOptions& opt,
                                    bool have_calibration) {
    const ModelConfig& cfg = dense.config;
    plan.validate_for(cfg, ffn_fingerprint(*dense.tensors, cfg), "expert plan");
    check_options(cfg, plan, opt);
    if (needs_calibration(opt) && !have_calibration)
        fail("router '{}' with {} weighting{} needs calibration text (none given)", router_kind_name(opt.kind),
             weighting_name(opt.weighting), opt.fit_scale ? " and a fitted scale" : "");
    return Model::load(dense);
}

// Layer l's router and scale from its statistics alone (c: nullptr without calibration).
LayerRouter build_layer(const Model& model, const ExpertPlan& plan, const RouterOptions& opt, const FitOptions& fo, int l,
                        const LayerCalib* c) {
    const int E = plan.num_experts(), H = model.config().hidden_size, k = opt.top_k;
    const bool over_all = opt.combine == CombineRule::SoftmaxAll;
    LayerRouterReport rep;
    RouterWeights r;
    switch (opt.kind) {
        case RouterKind::Random: r = make_random_router(E, H, opt.mlp, opt.seed, l); break;
        case RouterKind::Centroid: r = make_centroid_router(model, l, plan.layers[size_t(l)], opt.mlp); break;
        case RouterKind::Fit:
            if (!c) fail("layer {}: a fitted router needs calibration statistics", l);
            r = fit_router(*c, fo, &rep.fit);
            break;
    }
    double s = natural_scale(opt, E);
    if (c) {
        const std::vector<float> z = calib_logits(*c, r);
        ScaleTerms terms;
        if (opt.weighting == Weighting::Softmax && opt.fit_temperature && opt.kind != RouterKind::Random) {
            rep.temperature = fit_logit_temperature(*c, z, k, over_all, opt.fit_scale ? 0.0 : s, &terms);
            scale_router_logits(r, rep.temperature);
        } else {
            terms = logits_scale_terms(*c, z, k, opt.weighting, over_all);
        }
        // A non-positive optimum means the routed sum points away from the
        // dense output: keep the natural scale rather than write a useless one.
        if (opt.fit_scale && terms.best_scale() > 0) s = terms.best_scale();
        rep.rel_error = terms.rel_error(s);
        rep.mass = captured_mass(*c, z, k);
    }
    rep.scale = s;
    return {std::move(r), s, rep};
}

RouterBuild build_from(const Model& model, const ExpertPlan& plan, const RouterOptions& opt, const std::vector<LayerCalib>& stats,
                       const RouterProgress& progress) {
    const ModelConfig& cfg = model.config();
    const int L = cfg.num_layers, E = plan.num_experts(), H = cfg.hidden_size, k = opt.top_k;
    if (!stats.empty() && (int(stats.size()) != L || stats[0].E != E || stats[0].H != H))
        fail("calibration statistics are for {} layers of {} experts over {} inputs; the plan needs {} x {} over {}", stats.size(),
             stats[0].E, stats[0].H, L, E, H);

    RouterBuild out;
    out.weighting = opt.weighting;
    out.calib_tokens = stats.empty() ? 0 : size_t(stats[0].N);
    const auto t1 = Clock::now();
    FitOptions fo = opt.fit;
    fo.top_k = k;
    fo.mlp = opt.mlp;
    for (int l = 0; l < L; ++l) {
        LayerRouter lr = build_layer(model, plan, opt, fo, l, stats.empty() ? nullptr : &stats[size_t(l)]);
        out.routers.push_back(std::move(lr.router));
        out.scales.push_back(lr.scale);
        out.layers.push_back(lr.report);
        if (progress) progress("fit", double(l + 1), double(L));
    }
    out.seconds_fit = since(t1);
    out.gamma_max = post_norm_gamma_max(model);
    return out;
}

}  // namespace

std::vector<double> post_norm_gamma_max(const Model& model) {
    std::vector<double> out;
    for (int l = 0; l < model.config().num_layers; ++l) {
        double g = 0;
        for (float v : model.layer(l).post_norm) g = std::max(g, double(std::fabs(v)));
        out.push_back(g);
    }
    return out;
}

LayerRouter build_layer_router(const Model& model, const ExpertPlan& plan, const RouterOptions& opt, int l, const LayerCalib* stats) {
    FitOptions fo = opt.fit;
    fo.top_k = opt.top_k;
    fo.mlp = opt.mlp;
    return build_layer(model, plan, opt, fo, l, stats);
}

RouterBuild build_routers(const Checkpoint& dense, const ExpertPlan& plan, const RouterOptions& opt,
                          const std::vector<TokenWindow>& calib, const RouterProgress& progress) {
    auto model = load_checked(dense, plan, opt, !calib.empty());
    std::vector<LayerCalib> stats;
    const auto t0 = Clock::now();
    if (needs_calibration(opt)) {
        stats = collect_calibration(*model, plan, calib, opt.calib, [&](size_t d, size_t t) {
            if (progress) progress("calibrate", double(d), double(t));
        });
    }
    const double tc = since(t0);
    RouterBuild out = build_from(*model, plan, opt, stats, progress);
    out.seconds_calib = tc;
    return out;
}

RouterBuild build_routers_from_stats(const Checkpoint& dense, const ExpertPlan& plan, const RouterOptions& opt,
                                     const std::vector<LayerCalib>& stats, const RouterProgress& progress) {
    auto model = load_checked(dense, plan, opt, !stats.empty());
    return build_from(*model, plan, opt, stats, progress);
}

std::vector<LayerRouterReport> evaluate_routers(const std::vector<LayerCalib>& calib, const std::vector<RouterWeights>& routers,
                                                int top_k, Weighting weighting, CombineRule combine, const std::vector<double>& scales) {
    if (routers.size() != calib.size() || scales.size() != calib.size())
        fail("evaluate routers: {} layers of calibration data, {} routers, {} scales", calib.size(), routers.size(), scales.size());
    std::vector<LayerRouterReport> out;
    for (size_t l = 0; l < calib.size(); ++l) {
        const std::vector<float> z = calib_logits(calib[l], routers[l]);
        const ScaleTerms t = logits_scale_terms(calib[l], z, top_k, weighting, combine == CombineRule::SoftmaxAll);
        LayerRouterReport r;
        r.scale = scales[l];
        r.rel_error = t.rel_error(scales[l]);
        r.mass = captured_mass(calib[l], z, top_k);
        out.push_back(r);
    }
    return out;
}

double flatten_factor(const RouterWeights& r, double max_abs_gamma, double gap) {
    const int E = r.num_experts, H = r.hidden_size;
    // Bound on |logit|: mlp: Σ_f |W2[e, f]| (tanh is bounded by 1); linear: ‖W1[e]‖·‖x‖.
    double bound = 0;
    for (int e = 0; e < E; ++e) {
        double b = 0;
        if (r.is_mlp()) {
            for (int f = 0; f < E; ++f) b += std::fabs(r.w2[size_t(e) * E + f]);
        } else {
            for (int i = 0; i < H; ++i) b += double(r.w1[size_t(e) * H + i]) * r.w1[size_t(e) * H + i];
            b = std::sqrt(b) * max_abs_gamma * std::sqrt(double(H));
        }
        bound = std::max(bound, b);
    }
    const double spread = 2 * bound;  // largest possible gap between two logits
    if (spread <= gap) return 1.0;
    return std::exp2(-std::ceil(std::log2(spread / gap)));
}

}  // namespace moefy
