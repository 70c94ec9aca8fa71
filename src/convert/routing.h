#pragma once
// Routing as the converter needs it, decided in one place for `moefy convert`
// and `moefy build`: the `--router`, `--weighting` and `--scale` choice, the
// routers built for it (route/build_routers.h) and put into ConvertOptions for
// the output layout. route/ knows nothing of layouts; this is where the two
// meet, above both.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "data/documents.h"
#include "mpi/rank_group.h"
#include "route/build_routers.h"
#include "route/refit.h"

namespace moefy {

struct Checkpoint;
struct ExpertPlan;

// --scale: fit (per layer, on calibration text), auto (the weighting's natural
// value: softmax E / k, uniform 1) or a positive number.
struct RoutedScale {
    enum class Mode { Auto, Fit, Fixed };
    Mode mode = Mode::Auto;
    double value = 0;  // Fixed only

    static RoutedScale fit() { return {Mode::Fit, 0}; }
    static RoutedScale fixed(double v) { return {Mode::Fixed, v}; }
};
RoutedScale parse_routed_scale(const std::string& s);  // throws "--scale '<s>': expected fit, auto or a positive number"
std::string routed_scale_name(const RoutedScale& s);   // "fit" | "auto" | the number ({:g})

struct RoutingChoice {
    RouterKind router = RouterKind::Random;
    Weighting weighting = Weighting::Softmax;
    RoutedScale scale;  // auto
    // The reference routing (random router, softmax weighting, scale not fitted)
    // is left to the converter, which draws the same routers from the seed and
    // writes one scale (`moefy convert`: then --no-softmax and
    // --no-multiply-gate-scores apply). Otherwise it is built like every other
    // choice, with per-layer scales and statistics (`moefy build`).
    bool reference_by_converter = false;
};

// The reference's routing: random router, softmax × a given or the natural scale.
bool is_reference_routing(const RoutingChoice& c);

// The route/ options for a choice in a layout: gate kind, top-k and seed from
// `co`, and what softmax means there (deepseek: over all experts).
RouterOptions router_options(const RoutingChoice& c, const ConvertOptions& co);

// Whether the choice reads calibration text (fit router, fitted scale, or a
// softmax temperature to fit) when converting with `co`.
bool routing_needs_calibration(const RoutingChoice& c, const ConvertOptions& co);

// Everything about a choice that can be refused without reading weights or
// text: --no-softmax / --no-multiply-gate-scores belong to the reference routing.
void check_routing(const RoutingChoice& c, const ConvertOptions& co);

struct RoutingResult {
    bool built = false;                      // false: left to the converter (reference routing)
    std::vector<LayerRouterReport> layers;   // [layer] when built
    size_t calib_tokens = 0;                 // calibration tokens per layer the routers saw
    RouterBuild build;                       // when built: routers and scales before set_convert_routing (refit)
};

// The convert-time routing policy: checks the choice, builds the routers and
// scales (calibrating on `calib` when the choice needs it; `calib` may be
// empty otherwise) and puts them, with their provenance (`calib_file` names
// the text), into `co` for its layout (co.format, co.top_k, co.gate and co.seed
// must be set).
RoutingResult apply_routing(const Checkpoint& dense, const ExpertPlan& plan, const RoutingChoice& c,
                            const std::vector<TokenWindow>& calib, const std::string& calib_file, ConvertOptions& co,
                            const RouterProgress& progress = {});

// As apply_routing, with the routers made by `build` from the route/ options
// (e.g. sequential calibration, route/sequential.h) instead of build_routers.
// Not for the reference routing (left to the converter): throws.
using RouterBuilder = std::function<RouterBuild(const RouterOptions&)>;
RoutingResult apply_routing_with(const ExpertPlan& plan, const RoutingChoice& c, const std::string& calib_file,
                                 ConvertOptions& co, const RouterBuilder& build);

// Past routing, the same for `convert` and `build`: the expert refit
// (route/refit.h) for the routing just built, and sequential calibration
// (route/sequential.h: routers, scales and refit fitted layer by layer on the
// converted layers' outputs). Each applies only when calibration text is given
// and the routers are built here (sequential: fitted on that text).
struct RoutingExtras {
    bool refit = false;
    bool sequential = false;
};

struct CalibratedRouting {
    RoutingResult routing;
    bool refit = false, sequential = false;       // as run
    std::vector<RefitLayerReport> refit_layers;  // [layer] when refit
    size_t refit_tokens = 0;                     // per layer, held-out ones included
    double seconds_routing = 0, seconds_refit = 0;  // sequential: its refit is inside the routing pass
};

// apply_routing, then the extras: co.down_proj and co.provenance ("refit",
// "sequential") are set for the converter. The sequential calibration is
// data-parallel over `group` (route/sequential.h); the other routings run
// whole on every rank.
CalibratedRouting calibrate_routing(const Checkpoint& dense, const ExpertPlan& plan, const RoutingChoice& c,
                                    const RoutingExtras& extras, const std::vector<TokenWindow>& calib,
                                    const std::string& calib_file, ConvertOptions& co, const RouterProgress& progress = {},
                                    const RankGroup& group = {});

// What config.json records under "moefy" about routers built here:
// {"router": {kind, weighting, scale}} plus {"calibration": {file, tokens_per_layer}}
// when calibration text was read (calib_file not empty).
nlohmann::json routing_provenance(const RoutingChoice& c, const std::string& calib_file, size_t calib_tokens);

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

}  // namespace moefy
