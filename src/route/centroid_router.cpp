#include "route/centroid_router.h"

#include <cmath>

#include "common/error.h"
#include "common/parallel.h"
#include "model/llama.h"
#include "split/expert_plan.h"

namespace moefy {

RouterWeights make_centroid_router(const Model& dense, int layer, const LayerPlan& plan, bool mlp) {
    const LayerWeights& lw = dense.layer(layer);
    if (lw.is_moe) fail("centroid router: layer {} of the model is already an MoE layer", layer);
    const WeightRef& gate = lw.ffn.gate;  // [I, H]
    const int E = int(plan.experts.size()), H = int(gate.cols);
    RouterWeights r;
    r.num_experts = E;
    r.hidden_size = H;
    r.w1.assign(size_t(E) * H, 0.0f);
    for (int e = 0; e < E; ++e)
        for (int32_t n : plan.experts[size_t(e)])
            if (n < 0 || n >= gate.rows) fail("centroid router: layer {} expert {} has neuron {} of {}", layer, e, n, gate.rows);
    double gg = 0;
    for (float g : lw.post_norm) gg += double(g) * g;
    const double inv_gamma = gg > 0 ? 1.0 / std::sqrt(gg) : 1.0;
    parallel_for_dynamic(E, 1, [&](int64_t e0, int64_t e1, int) {
        for (int e = int(e0); e < int(e1); ++e) {
            std::vector<float> row(static_cast<size_t>(H));
            std::vector<double> c(static_cast<size_t>(H), 0.0);
            for (int32_t n : plan.experts[size_t(e)]) {
                weight_row_f32(gate, n, row.data());
                double ss = 0;
                for (float v : row) ss += double(v) * v;
                const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
                for (int i = 0; i < H; ++i) c[size_t(i)] += row[size_t(i)] * inv;
            }
            double cc = 0;
            for (double v : c) cc += v * v;
            const double s = cc > 0 ? inv_gamma / std::sqrt(cc) : 0.0;
            for (int i = 0; i < H; ++i) r.w1[size_t(e) * H + i] = float(c[size_t(i)] * s);
        }
    });
    if (mlp) {
        r.w2.assign(size_t(E) * E, 0.0f);
        for (int e = 0; e < E; ++e) r.w2[size_t(e) * E + e] = 1.0f;
    }
    return r;
}

}  // namespace moefy
