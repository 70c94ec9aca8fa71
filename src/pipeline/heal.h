#pragma once
// Healing: a short training of an MoE checkpoint on calibration text, so the
// experts and routers recover some of what the split cost, without retraining.
//
// Loss: the mean next-token NLL of calibration windows, or, with a teacher
// (the dense source model), the mean KL(teacher ‖ MoE) of the next-token
// distributions: a target per vocabulary entry rather than per token, which is
// what the MoE is meant to approximate (measured better on the eval text:
// README, "heal").
// Trained: every MoE layer's router and its experts' projections (routed and
// shared; without all_experts only their down projections). Everything
// else (attention, norms, embeddings) is frozen. Gradients from the engine's own backward pass
// (model/backward.h). Optimiser: Adam (β 0.9, 0.999) on f32 master copies of
// the trained tensors, linear warm-up then cosine decay to a tenth, gradients
// averaged over `accumulate` windows per step and clipped to a global norm.
// Step sizes are relative: each tensor moves by lr × its initial RMS per unit
// Adam step (as Adafactor's relative step). Fitted routers with uniform
// weighting have weights near 1e-6 (only their direction chooses experts), so
// one absolute learning rate for them and for the experts cannot work.
//
// The output is an ordinary checkpoint in the input's layout: every file of
// the input directory copied, the tensors written in their stored dtype with
// the trained ones replaced (rounded from the f32 masters); a GGUF input gives
// a copy of the GGUF file with the trained tensors' bytes replaced (f32, f16,
// bf16; q8_0 tensors are refused before training). One window in
// eight (at least one) is held out of training; its loss before and after is
// the measure of what healing did.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/documents.h"

namespace moefy {

struct Checkpoint;

struct HealOptions {
    std::string out_dir;
    // The dense model the MoE was made from: when given, the loss is the KL
    // divergence from its next-token distribution (distillation) instead of the
    // NLL of the text's tokens.
    std::string teacher_dir;
    bool force = false;
    int steps = 100;
    int accumulate = 4;         // windows per step
    double lr = 3e-2;           // peak step size, relative to each tensor's RMS (measured: README, "heal")
    double warmup = 0.1;        // fraction of the steps
    double clip_norm = 1.0;     // global gradient norm (0: none)
    bool all_experts = true;    // also the experts' gate and up projections (measured better with a teacher)
    uint64_t seed = 0;          // order of the training windows
};

struct HealResult {
    int steps = 0;
    size_t trained_params = 0;
    size_t train_windows = 0, heldout_windows = 0;
    size_t heldout_tokens = 0;        // predicted tokens of the held-out windows
    double heldout_nll_before = 0;    // mean NLL per token on the held-out windows
    double heldout_nll_after = 0;     // of the checkpoint as written (trained tensors in their stored dtype)
    double first_loss = 0, last_loss = 0;  // training loss (NLL or KL) of the first and last step
    double seconds = 0;
};

// step (1-based), steps, the step's mean training loss.
using HealProgress = std::function<void(int step, int steps, double loss)>;

// Heals `moe` (an MoE checkpoint directory) on `windows` and writes the result to
// opt.out_dir (atomically; it may be moe's own directory with force; a file for
// a GGUF input). Throws moefy::Error for a dense model, a q8_0 GGUF, fewer than
// two windows or bad options.
HealResult heal_checkpoint(const Checkpoint& moe, const std::vector<TokenWindow>& windows, const HealOptions& opt,
                           const HealProgress& progress = {});

}  // namespace moefy
