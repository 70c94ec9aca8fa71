#pragma once
// Expert refit: new down-projection values, per layer and in closed form, for
// the routing the final router makes.
//
// For a calibration token t (dense activations h_t [I], dense FFN output
// y_t = W0 h_t, W0 [H, I] the dense down projection) the MoE layer computes
// W' z_t, with z_t the masked, weighted activations of the routing:
//   z_tn = w_t,e · h_tn   n in a selected routed expert e, w_t,e its final combine weight (× scale)
//        = ω · h_tn       n in a shared (always-active) expert, ω its combine weight
//        = 0              otherwise.
// The refit solves the ridge regression
//   min_W' Σ_t ‖y_t − W' z_t‖² + λ ‖W' − W0‖²
//   ⇒ W' (A + λI) = W0 (C + λI),    A = Σ_t z_t z_tᵀ,   C = Σ_t h_t z_tᵀ      ([I, I], f64)
// one Cholesky solve (LAPACK dposv, I × I with H right-hand sides) per layer and λ.
// λ = ρ · mean diag(A), ρ from a grid, chosen by the error on held-out
// calibration tokens (1 in val_every; never evaluation text):
//   err(W') = Σ_v ‖y_v‖² − 2 ⟨W0 C_v, W'⟩ + ⟨W' A_v, W'⟩,
// then W' is solved once more on all tokens with the chosen ρ. When no ρ beats
// W0 on the held-out tokens the layer keeps W0. With every expert active at
// weight 1, z = h, A = C and W' = W0 for every λ.
//
// Only values change (the column of every neuron, routed or shared), so every
// output layout stays as it is; an overlapping plan's copies of a neuron share
// one column. Memory: 4 I×I f64 matrices per layer (18 MB for I = 768, 3.9 GB
// for a 7B layer, I = 11008): refit_down_projections holds every layer's at
// once; refit_layer_from_acts (sequential calibration) one layer's.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "data/documents.h"
#include "route/calibration.h"
#include "route/random_router.h"
#include "route/scale_fit.h"

namespace moefy {

class Model;
struct ExpertPlan;
struct LayerPlan;
struct RouterBuild;
enum class CombineRule;

// How the final model routes one layer.
struct RefitRouting {
    RouterWeights router;
    int top_k = 2;
    Weighting weighting = Weighting::Uniform;
    bool over_all = false;      // softmax over all E experts (deepseek), else over the selected k
    double scale = 1.0;         // the layer's routed output scale
    double shared_weight = 1.0; // ω
};

// The routing of every layer of a router build (routers, scales, weighting).
std::vector<RefitRouting> refit_routing(const RouterBuild& rb, int top_k, CombineRule combine, double shared_weight = 1.0);

// z [n, I] for x [n, H], h [n, I] under the routing (see above).
void masked_activations(const LayerPlan& lp, const RefitRouting& r, const float* x, const float* h, int n, int I, float* z);

struct RefitLayerStats {
    int I = 0;
    size_t tokens = 0, val_tokens = 0;
    std::vector<double> A, C;    // [I, I] training tokens: Σ z zᵀ, Σ h zᵀ
    std::vector<double> Av, Cv;  // [I, I] held-out tokens
    double yy_val = 0;           // Σ_v ‖y_v‖²
    explicit RefitLayerStats(int width = 0);
};

// Adds n tokens (h, z: [n, I]) to the training or held-out sums; W0 [H, I] (for ‖y‖², held out only).
void accumulate_refit(RefitLayerStats& s, const float* W0, int H, const float* h, const float* z, int n, bool held_out);

// W' [H, I] = W0 (C + λI)(A + λI)⁻¹ (f64 inside). Throws when A + λI is not positive definite.
std::vector<float> solve_refit(const std::vector<double>& A, const std::vector<double>& C, const float* W0, int H, int I,
                               double lambda);

struct RefitOptions {
    std::vector<double> ridge_grid = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};  // ρ candidates
    int val_every = 8;          // 1 kept token in val_every is held out to choose ρ
    size_t max_tokens = 16384;  // kept calibration tokens per layer
};

struct RefitLayerReport {
    double ridge = 0, lambda = 0;                          // chosen ρ and λ (0: kept W0)
    double val_rel_error_before = 0, val_rel_error_after = 0;  // held-out err / Σ‖y‖² with W0 and with W'
    bool refitted = false;
    size_t tokens = 0, val_tokens = 0;
};

// Chooses ρ on the held-out sums and solves on all tokens; out: W' [H, I] (or W0).
RefitLayerReport refit_layer(const RefitLayerStats& s, const float* W0, int H, const RefitOptions& opt, std::vector<float>& out);

// One layer from its cached dense activations alone (the first opt.max_tokens
// of a): refit_from_acts for one layer, for callers that calibrate layer by
// layer (route/sequential.h). W0: [H, I] the dense down projection; out: W'.
RefitLayerReport refit_layer_from_acts(const LayerPlan& lp, const RefitRouting& r, const float* W0, int H, const DenseLayerActs& a,
                                       const RefitOptions& opt, std::vector<float>& out);

struct RefitResult {
    std::vector<std::vector<float>> down;  // [layer] W' [H, I] f32
    std::vector<RefitLayerReport> layers;
    double seconds_stats = 0, seconds_solve = 0;
};

using RefitProgress = std::function<void(const char* stage, double done, double total)>;

// One pass of the dense model over `windows`, then one refit per layer.
RefitResult refit_down_projections(Model& dense, const ExpertPlan& plan, const std::vector<RefitRouting>& routing,
                                   const std::vector<TokenWindow>& windows, const RefitOptions& opt,
                                   const RefitProgress& progress = {});

// The same from cached dense activations (collect_dense_acts), no model pass.
RefitResult refit_from_acts(const Model& dense, const ExpertPlan& plan, const std::vector<RefitRouting>& routing,
                            const std::vector<DenseLayerActs>& acts, const RefitOptions& opt);

}  // namespace moefy
