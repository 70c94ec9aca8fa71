#pragma once
// Neuron importance for the gradient split (LLaMA-MoE §4.2): for each data
// cluster and layer, a score per FFN neuron from the activations and their
// gradients of the mean next-token NLL (model/backward.h).
//
// Targets (the reference's file names, §14 item 19):
//   "up_proj":   h = silu(g) ⊙ u, the input of down_proj, and ∂L/∂h
//   "gate_proj": the gate pre-activation g = xf·W_gᵀ, and ∂L/∂g
// Per token t of a window, s_t = ∂L/∂a_t (feature_grad) or a_t ⊙ ∂L/∂a_t
// (feature_change, the first-order loss change if the neuron were zeroed);
//   sample: sum += Σ_t kernel(s_t);   total: sum += Σ_t s_t, kernel applied at the end (§14 item 20)
//   kernel: l1 |x|, l2 x², plain x
//   score = (total ? kernel(sum) : sum) / tokens,  tokens = Σ over windows of (T - 1)
// L is each window's mean NLL, so gradients carry 1/(T-1) as in the reference.
// Sums are f64 throughout (the reference sums in bf16, §14 item 17); the file
// stores the final scores as F32.
//
// Differences from the reference: windows come from data/documents.h
// (documents are never concatenated, so no window crosses a document
// boundary), feature_grad works (§14 item 16), and clusters are numbered in
// numeric order (expert e comes from cluster e; see split/gradient_split.h).
//
// Data parallel: ranks take a cluster's windows round-robin (window i goes to
// rank i mod size) and the f64 sums are all-reduced; with MPI (an optional
// build feature, MOEFY_WITH_MPI) `mpirun -np N moefy importance ...` gives the
// single-process result up to the order of f64 additions.
// The pieces: importance_accumulator.h (settings, sums, the backward observer),
// importance_run.h (the run over cluster files, data parallel over a
// RankGroup), importance_file.h (the file format); this header adds the split
// entry point and includes them all.
#include "data/documents.h"
#include "split/expert_plan.h"
#include "split/gradient_split.h"
#include "split/importance_accumulator.h"
#include "split/importance_file.h"
#include "split/importance_run.h"

namespace moefy {

// `moefy split gradient`: checks the request against the file (clusters >=
// experts, a routed expert left, the expert size fits the intermediate size)
// with messages naming the file, then gradient_split_plan on the target's
// scores; the model identity comes from the file. params gains
// "importance": {file, target, kind, kernel, level, tokens}.
ExpertPlan gradient_split_from_importance(const ImportanceFile& f, ImportanceTarget target, GradientSplitOptions opt);

}  // namespace moefy
