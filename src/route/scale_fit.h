#pragma once
// Combine weights of the selected experts, and the output scale that makes the
// routed sum best reproduce the dense FFN on calibration tokens.
//
// For routing (sel, w) of N tokens and a per-layer scale s, the error is
//   err(s) = Σ_t ‖r_t − s · Σ_j w_tj y_{t,sel_tj}‖² = rr − 2 s·num + s²·den
//   num = Σ_t Σ_j w_tj b_t[sel_tj]      den = Σ_t Σ_j Σ_j' w_tj w_tj' G_t[sel_tj, sel_tj']
// (r, y, b, G as in calibration.h), minimised by s* = num / den.
#include <cstdint>
#include <string>
#include <vector>

#include "common/enum_names.h"
#include "route/calibration.h"

namespace moefy {

struct RouterWeights;

// How the selected experts' outputs are combined:
//   softmax: reference LLaMA-MoE (and Mixtral): softmax over the k selected logits, times the scale;
//   uniform: weight 1 per selected expert, times the scale (MoEfication's masking when the scale is 1).
enum class Weighting { Softmax, Uniform };
inline constexpr EnumName<Weighting> weighting_names[] = {{Weighting::Softmax, "softmax"}, {Weighting::Uniform, "uniform"}};
inline const char* weighting_name(Weighting w) { return enum_name(weighting_names, w); }
inline Weighting parse_weighting(const std::string& s) { return parse_enum(weighting_names, s, "--weighting"); }

// Top-k of logits [N, E] (ties to the lower index, as the engine) into sel [N, k],
// and the unscaled combine weights into w [N, k]. Softmax is over the k selected
// logits, or over all E (not renormalised, as DeepSeek v1) when `over_all`.
void route_topk(const float* logits, int N, int E, int k, Weighting weighting, int32_t* sel, float* w, bool over_all = false);

struct ScaleTerms {
    double rr = 0, num = 0, den = 0;
    size_t tokens = 0;
    double error(double s) const { return rr - 2.0 * s * num + s * s * den; }
    // err(s) / rr: the fraction of the (shared-free) dense FFN output energy the routing misses.
    double rel_error(double s) const { return rr > 0 ? error(s) / rr : 0.0; }
    // s* = num / den; 1 when den is 0 (nothing routed).
    double best_scale() const { return den > 0 ? num / den : 1.0; }
};

// The sums above over the calibration tokens for a routing sel/w [N, k].
ScaleTerms scale_terms(const LayerCalib& c, const int32_t* sel, const float* w, int k);

// Logits [N, E] of the calibration inputs under a router.
std::vector<float> calib_logits(const LayerCalib& c, const RouterWeights& r);

// Scale terms of routing by logits [N, E] with the given weighting.
ScaleTerms logits_scale_terms(const LayerCalib& c, const std::vector<float>& logits, int k, Weighting weighting,
                              bool over_all = false);

// Softmax weighting depends on the logits' scale β (weights = softmax(β·z) over
// the selected k). Finds β ∈ [lo, hi] (log scale) minimising the error with the
// scale either fitted (fixed_scale <= 0) or fixed; returns β and fills `terms`.
double fit_logit_temperature(const LayerCalib& c, const std::vector<float>& logits, int k, bool over_all, double fixed_scale,
                             ScaleTerms* terms, double lo = 1.0 / 64, double hi = 64.0);

// Multiplies the router's logits by β (the last matrix: W2 for mlp, W1 for linear).
void scale_router_logits(RouterWeights& r, double beta);

}  // namespace moefy
