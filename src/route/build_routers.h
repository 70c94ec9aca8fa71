#pragma once
// Routers that work without retraining, and the output scale: the one entry
// point that `moefy convert` and `moefy build` call (through convert/routing.h,
// which turns a RouterBuild into the converter's options).
//
//   random    the reference: N(0, 0.02) from the seed (LLaMA-MoE's converted gate).
//   centroid  mean of each expert's normalised gate-projection rows (centroid_router.h).
//   fit       fitted on calibration text run through the dense model (fitted_router.h).
//
// Weighting of the selected experts (see scale_fit.h): softmax (the reference:
// softmax over the k selected logits × scale) or uniform (weight 1 × scale; with
// scale 1 this is MoEfication's pure masking). With calibration data, softmax
// weighting also fits the logits' temperature (the routers' last matrix is
// rescaled, the selection is unchanged), and `fit_scale` fits each layer's scale
// in closed form for the chosen router and weighting (scale_fit.h).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/enum_names.h"
#include "data/documents.h"
#include "route/calibration.h"
#include "route/fitted_router.h"
#include "route/random_router.h"
#include "route/scale_fit.h"

namespace moefy {

struct Checkpoint;
struct ExpertPlan;

enum class RouterKind { Random, Centroid, Fit };
inline constexpr EnumName<RouterKind> router_kind_names[] = {
    {RouterKind::Random, "random"}, {RouterKind::Centroid, "centroid"}, {RouterKind::Fit, "fit"}};
inline const char* router_kind_name(RouterKind k) { return enum_name(router_kind_names, k); }
inline RouterKind parse_router_kind(const std::string& s) { return parse_enum(router_kind_names, s, "--router"); }

// How the converter weights the experts of one layer after the top-k:
//   SoftmaxTopK: softmax over the k selected logits (llama-moe, mixtral);
//   SoftmaxAll:  softmax over all E logits, not renormalised (deepseek v1).
enum class CombineRule { SoftmaxTopK, SoftmaxAll };

struct RouterOptions {
    RouterKind kind = RouterKind::Fit;
    bool mlp = false;  // llama-moe "mlp" gate (W2 tanh(W1 x)); else one linear matrix
    int top_k = 2;
    Weighting weighting = Weighting::Uniform;
    CombineRule combine = CombineRule::SoftmaxTopK;  // what "softmax" means in the target layout
    // Scale of the routed sum: fitted per layer, a fixed value, or nullopt = the
    // weighting's natural value (softmax: E / k as the reference; uniform: 1).
    bool fit_scale = true;
    std::optional<double> scale;
    // Softmax weighting with calibration data: fit the logit temperature.
    bool fit_temperature = true;
    uint64_t seed = 0;  // random router
    CalibOptions calib;
    FitOptions fit;     // top_k and mlp are taken from above
};

struct LayerRouterReport {
    double scale = 1;        // routed output scale of this layer
    double temperature = 1;  // factor applied to the logits (softmax weighting)
    double rel_error = 0;    // calibration: ‖r − s·Σ w y‖² / ‖r‖² (0 when there is no calibration data)
    double mass = 0;         // calibration: Σ_{selected} ‖y_e‖ / Σ_{true top-k} ‖y_e‖
    FitReport fit;           // router fit only
};

struct RouterBuild {
    std::vector<RouterWeights> routers;  // [layer]
    std::vector<double> scales;          // [layer] scale to apply with these routers
    Weighting weighting = Weighting::Uniform;
    std::vector<LayerRouterReport> layers;
    std::vector<double> gamma_max;  // [layer] max |post-attention RMSNorm weight|, bounds ‖x‖ for flattening
    size_t calib_tokens = 0;  // tokens per layer the statistics were taken over
    double seconds_calib = 0, seconds_fit = 0;
};

// stage: "calibrate" (tokens) or "fit" (layers).
using RouterProgress = std::function<void(const char* stage, double done, double total)>;

// Whether the options need calibration windows (fit router, fitted scale, or a
// softmax temperature to fit).
bool needs_calibration(const RouterOptions& opt);

// Builds every layer's router and scale. `calib` may be empty only when
// needs_calibration() is false.
RouterBuild build_routers(const Checkpoint& dense, const ExpertPlan& plan, const RouterOptions& opt,
                          const std::vector<TokenWindow>& calib, const RouterProgress& progress = {});

// The same from calibration statistics gathered earlier (collect_calibration with
// the same plan; may be empty only when needs_calibration() is false), e.g. to
// build routers for several top-k or weightings from one pass over the text.
RouterBuild build_routers_from_stats(const Checkpoint& dense, const ExpertPlan& plan, const RouterOptions& opt,
                                     const std::vector<LayerCalib>& stats, const RouterProgress& progress = {});

// One layer's router and scale from that layer's statistics alone (stats may be
// null when needs_calibration() is false): what build_routers_from_stats does
// for each layer, for callers that calibrate layer by layer (route/sequential.h).
// `model` is the dense model, whose layer l is used by the centroid router.
class Model;
struct LayerRouter {
    RouterWeights router;
    double scale = 1;
    LayerRouterReport report;
};
LayerRouter build_layer_router(const Model& model, const ExpertPlan& plan, const RouterOptions& opt, int l, const LayerCalib* stats);

// [layer] max |post-attention RMSNorm weight| of a model (RouterBuild::gamma_max).
std::vector<double> post_norm_gamma_max(const Model& model);

// Every statistic above for routers built elsewhere (e.g. to report a random
// router's error next to a fitted one).
std::vector<LayerRouterReport> evaluate_routers(const std::vector<LayerCalib>& calib, const std::vector<RouterWeights>& routers,
                                                int top_k, Weighting weighting, CombineRule combine, const std::vector<double>& scales);

// The multiplier 2^-m used by set_convert_routing (convert/routing.h) for a
// router: the smallest power of two that bounds every logit gap by `gap` for any
// RMSNorm output with weight γ (‖x‖₂ ≤ max|γ|·√H).
double flatten_factor(const RouterWeights& r, double max_abs_gamma, double gap = 1e-3);

}  // namespace moefy
