#pragma once
// Centroid router (MoEfication's similarity selection, EMoE): expert e's router
// row is the mean of its neurons' L2-normalised gate-projection rows, itself
// normalised and divided by ‖γ‖₂ (γ: the post-attention RMSNorm weight), so
// that a logit is about the cosine between the FFN input and the centroid
// (‖x‖ ≈ ‖γ‖ after RMSNorm). Needs no data.
//
//   linear: W1 = C                    [E, H]
//   mlp:    W1 = C, W2 = I            tanh(cosine) keeps the order of the linear logits
#include "route/random_router.h"

namespace moefy {

class Model;
struct LayerPlan;

RouterWeights make_centroid_router(const Model& dense, int layer, const LayerPlan& plan, bool mlp);

}  // namespace moefy
