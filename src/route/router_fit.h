#pragma once
// Routers that work without retraining, and the output scale: the one entry
// point that `moefy convert` (and later `moefy build`) call.
//
//   random    the reference: N(0, 0.02) from the seed (LLaMA-MoE's converted gate).
//   centroid  mean of each expert's normalised gate-projection rows (centroid_router.h).
//   fit       fitted on calibration text run through the dense model (fit_router.h).
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

#include "data/documents.h"
#include "route/calibration.h"
#include "route/fit_router.h"
#include "route/random_router.h"
#include "route/scale_fit.h"

namespace moefy {

struct Checkpoint;
struct ExpertPlan;
struct ConvertOptions;
enum class MoEFormat;

enum class RouterKind { Random, Centroid, Fit };
const char* router_kind_name(RouterKind k);
RouterKind parse_router_kind(const std::string& s);  // "random" | "centroid" | "fit"

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

// `--router`, `--weighting` and `--scale` (fit | auto | a positive number) as
// `moefy convert` and `moefy build` take them, for a layout and gate.
RouterOptions parse_router_options(const std::string& router, const std::string& weighting, const std::string& scale,
                                   MoEFormat format, bool mlp_gate, int top_k, uint64_t seed);

// What config.json records under "moefy" about routers built here:
// {"router": {kind, weighting, scale}} plus {"calibration": {file, tokens_per_layer}}
// when calibration text was read (calib_file not empty).
nlohmann::json routing_provenance(const std::string& router, const std::string& weighting, const std::string& scale,
                                  const std::string& calib_file, size_t calib_tokens);

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

// Every statistic above for routers built elsewhere (e.g. to report a random
// router's error next to a fitted one).
std::vector<LayerRouterReport> evaluate_routers(const std::vector<LayerCalib>& calib, const std::vector<RouterWeights>& routers,
                                                int top_k, Weighting weighting, CombineRule combine, const std::vector<double>& scales);

// Puts routers, weighting and scales into the converter's options for its
// layout (opt.format and opt.top_k must be set):
//   softmax: gate_softmax = multiply_gate_scores = true, layer_scales = scales.
//   uniform: llama-moe with every scale 1: multiply_gate_scores = false (exact,
//            as MoEfication). Otherwise (mixtral/deepseek always; llama-moe with
//            a scale) the softmax is flattened: the routers' last matrix is
//            multiplied by 2^-m, which keeps the selection bit-exact (a power of
//            two scales every float product exactly) while every logit gap
//            shrinks below 1e-3, so the weights are 1/k (llama-moe, mixtral) or
//            1/E (deepseek) to within 0.1%; the scale is multiplied by k or E to
//            make up. Runtimes then compute the uniform sum to bf16 precision.
void set_convert_routing(const RouterBuild& build, ConvertOptions& opt);

// The multiplier 2^-m used by set_convert_routing for a router: the smallest
// power of two that bounds every logit gap by `gap` for any RMSNorm output with
// weight γ (‖x‖₂ ≤ max|γ|·√H).
double flatten_factor(const RouterWeights& r, double max_abs_gamma, double gap = 1e-3);

}  // namespace moefy
