#pragma once
// Fitted routers: from calibration statistics, router weights whose top-k picks
// the experts that carry the most of the dense FFN's output on each token.
//
// Target per token t: m_t[e], the mass of expert e (‖y_te‖₂ or Σ_{n∈S_e}|h_tn|),
// turned into a distribution p_t = softmax(m_t / (τ · max_e m_t)). Loss: the
// listwise cross-entropy  −1/N Σ_t Σ_e p_te log softmax(z_t)_e  of the router's
// logits z_t, minimised by full-batch Adam (sgemm for both products) from a
// least-squares start; the iterate with the best held-out top-k mass is kept.
//
//   linear: z = W1 x                 W1: [E, H]
//   mlp:    z = W2 tanh(W1 x)        W1: [E, H], W2: [E, E], started in tanh's linear range
//                                    from the fitted linear router (W1 = W/a, W2 = a·I)
#include <cstdint>
#include <vector>

#include "route/calibration.h"
#include "route/random_router.h"

namespace moefy {

// logits [N, E] = router(x [N, H]).
void router_forward(const RouterWeights& r, const float* x, int N, float* logits);

enum class FitTarget { OutputNorm, ActivationSum };

struct FitOptions {
    int top_k = 2;
    bool mlp = false;
    FitTarget target = FitTarget::OutputNorm;
    double temperature = 0.1;  // τ of the target distribution (relative to the token's largest mass)
    int iters = 300;
    double lr = 0.02;          // Adam step size (on the column-normalised inputs)
    double ridge = 1e-3;       // least-squares start: λ relative to the mean diagonal of XᵀX
    int val_every = 10;        // 1 token in val_every is held out for model selection
};

struct FitReport {
    double val_mass_init = 0, val_mass = 0;      // held-out Σ_{selected} m / Σ_{true top-k} m
    double val_recall_init = 0, val_recall = 0;  // held-out |selected ∩ true top-k| / k
    double loss_init = 0, loss = 0;              // training cross-entropy
    int best_iter = 0;
};

// Per-token expert masses [N, E] for a target.
std::vector<float> target_mass(const LayerCalib& c, FitTarget target);

// Held-out quality of logits [N, E] against masses [N, E] over tokens t with t % every == every-1
// (every = 1: all tokens). Returns {mass captured, recall}.
std::pair<double, double> topk_quality(const float* logits, const float* mass, int N, int E, int k, int every);

// Least-squares linear router: W = argmin ‖X Wᵀ − M̂‖² + λ‖W‖², M̂ = masses
// divided by each token's mean mass.
RouterWeights least_squares_router(const LayerCalib& c, const std::vector<float>& mass, double ridge);

// The fitted router (linear or mlp per opt.mlp), starting from least squares.
RouterWeights fit_router(const LayerCalib& c, const FitOptions& opt, FitReport* report = nullptr);

}  // namespace moefy
