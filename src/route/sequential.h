#pragma once
// Sequential calibration: each layer's router, scale and refit are fitted on
// the FFN inputs that the layers before it produce *as converted*, not on the
// dense model's. Layer l of the converted model sees the hidden states of the
// converted layers 0..l-1, so fitting it on those is fitting it for what it
// will run on (the prototype measured 1.245 -> 1.230 x dense with an oracle
// router, 1.297 -> 1.267 x with a least-squares one; docs/quality.md has
// moefy's own rows).
//
// One pass over the layers, not one over the model per layer: the residual
// stream of every calibration window is kept ([tokens, H] f32) and advanced a
// layer at a time,
//   x_mid = x + Attn_l(x)                     (attention is not converted)
//   xf = RMSNorm_post(x_mid);  h = dense SwiGLU activations of xf
//   layer l's statistics from (xf, h) of the kept tokens -> router, scale, refit W'
//   x = x_mid + W' z(xf, h)                   (z: h masked to the routing, route/refit.h)
// which is exactly what the converted layer computes. Cost: one forward of the
// dense model plus one extra gate/up product per layer.
#include <cstddef>
#include <vector>

#include "data/documents.h"
#include "mpi/rank_group.h"
#include "route/build_routers.h"
#include "route/calibration.h"
#include "route/refit.h"

namespace moefy {

class Model;
struct ExpertPlan;

struct SequentialResult {
    RouterBuild build;  // routers and scales of every layer (as build_routers makes them)
    RefitResult refit;  // down projections, when refitting (down is empty otherwise)
};

// `dense` is the dense model; `ro` as for build_routers (its calib.max_tokens
// kept tokens per layer also bound the refit's). refit: also refit each layer's
// down projections (with `refit_opt`) before advancing through it. observe
// (optional): each layer's kept FFN inputs and dense activations as fitted on.
// Data-parallel over `group`: the ranks share the windows' forward passes, and
// every rank fits each layer on all kept rows, in order, so every rank returns
// what one process returns (the fits themselves are repeated on every rank).
SequentialResult calibrate_sequentially(const Model& dense, const ExpertPlan& plan, const RouterOptions& ro,
                                        const std::vector<TokenWindow>& windows, bool refit, const RefitOptions& refit_opt,
                                        const KeptRowsFn& observe = {}, const CalibProgress& progress = {},
                                        const RankGroup& group = {});

}  // namespace moefy
