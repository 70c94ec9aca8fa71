#pragma once
// Calibration statistics for training-free routers: one pass of the dense model
// over calibration windows, keeping per layer what router fitting and scale
// fitting need, and nothing that grows with the FFN width.
//
// Per kept token t of layer l (x_t: the FFN input after the post-attention norm):
//   y_te = W_down[:, S_e] · h_t[S_e]          routed expert e's output, [H]
//   r_t  = d_t − ω · Σ_s y_ts                  what the routed experts should add up to:
//                                              dense FFN output minus the always-on shared experts
//   G_t  = [⟨y_te, y_te'⟩]                    Gram of the expert outputs, [E, E] (packed upper triangle)
//   b_t  = [⟨r_t, y_te⟩]                      [E]
//   rr_t = ‖r_t‖²
//   a_t  = [Σ_{n∈S_e} |h_tn|]                 activation mass, [E]
// With these, the output error of any routing (experts sel, weights w) is exact:
//   ‖r_t − Σ_j w_j y_{t,sel_j}‖² = rr_t − 2 Σ_j w_j b_t[sel_j] + Σ_{j,j'} w_j w_j' G_t[sel_j, sel_j'].
//
// Memory: N · (H + E(E+1)/2 + 2E + 1) floats per layer for N kept tokens.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "data/documents.h"

namespace moefy {

class Model;
struct ExpertPlan;
struct LayerPlan;

struct LayerCalib {
    int N = 0, H = 0, E = 0;
    std::vector<float> x;     // [N, H] FFN inputs
    std::vector<float> gram;  // [N, E(E+1)/2] upper triangle, row by row: (0,0) (0,1) .. (0,E-1) (1,1) ..
    std::vector<float> b;     // [N, E]
    std::vector<float> rr;    // [N]
    std::vector<float> absh;  // [N, E]

    size_t tri() const { return size_t(E) * size_t(E + 1) / 2; }
    // G_t[e, f] for any order of e, f.
    float g(int t, int e, int f) const;
    // ‖y_te‖₂: the norm of expert e's output contribution on token t.
    float mass(int t, int e) const { return std::sqrt(std::max(0.0f, g(t, e, e))); }
};

struct CalibOptions {
    size_t max_tokens = 16384;  // kept per layer; a uniform stride over all tokens of the windows
    double shared_weight = 1.0;  // ω above: the combine weight of each shared expert in the output layout
};

// done/total in tokens run through the model.
using CalibProgress = std::function<void(size_t done, size_t total)>;

// Runs the dense `model` over `windows` (no KV cache, each window from position 0)
// and gathers the statistics of every layer for `plan`'s experts. Throws when the
// plan does not fit the model or there are no tokens.
std::vector<LayerCalib> collect_calibration(Model& model, const ExpertPlan& plan, const std::vector<TokenWindow>& windows,
                                            const CalibOptions& opt, const CalibProgress& progress = {});

// Dense FFN inputs and activations of the kept calibration tokens of one layer:
// kept from one pass of the dense model, they serve any number of plans
// (`build --budget`) without running the model again. 4·N·(H + I) bytes.
struct DenseLayerActs {
    int N = 0, H = 0, I = 0;
    std::vector<float> x;  // [N, H] FFN inputs (after the post-attention norm)
    std::vector<float> h;  // [N, I] silu(gate) * up
};

// fn(layer, x [n, H], h [n, I], n) for the kept tokens of each window, every
// layer: the pass all calibration statistics are made from. Kept: min(max_tokens,
// total) tokens evenly spread over all windows' tokens.
using KeptRowsFn = std::function<void(int layer, const float* x, const float* h, int n)>;
void for_each_kept_batch(Model& model, const std::vector<TokenWindow>& windows, size_t max_tokens, const KeptRowsFn& fn,
                         const CalibProgress& progress = {});

std::vector<DenseLayerActs> collect_dense_acts(Model& model, const std::vector<TokenWindow>& windows, size_t max_tokens,
                                               const CalibProgress& progress = {});

// collect_calibration from cached activations (the first opt.max_tokens of them).
std::vector<LayerCalib> calibration_from_acts(const Model& model, const ExpertPlan& plan, const std::vector<DenseLayerActs>& acts,
                                              const CalibOptions& opt);

// Adds n tokens (x [n, H], h [n, I] dense activations) to c for the layer's plan;
// wd: [H, I] the dense down projection in f32.
void accumulate_calibration(LayerCalib& c, const LayerPlan& lp, const float* wd, const float* x, const float* h, int n, int I,
                            double shared_weight);

// Layer l's dense down projection [H, I] as f32.
std::vector<float> dense_down_f32(const Model& model, int l);

// Packed index of (e, f), e <= f, in an [E(E+1)/2] upper triangle.
inline size_t tri_index(int E, int e, int f) { return size_t(e) * size_t(2 * E - e + 1) / 2 + size_t(f - e); }

inline float LayerCalib::g(int t, int e, int f) const {
    if (e > f) std::swap(e, f);
    return gram[size_t(t) * tri() + tri_index(E, e, f)];
}

}  // namespace moefy
