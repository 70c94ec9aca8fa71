#include "route/sequential.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "common/error.h"
#include "model/decoder_layer.h"
#include "model/layers.h"
#include "model/llama.h"
#include "model/matmul.h"
#include "split/expert_plan.h"

namespace moefy {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One calibration window's residual stream and which of its tokens are kept.
struct Stream {
    const TokenWindow* tokens = nullptr;
    int T = 0;                  // tokens run: up to the last kept one (causal: later ones change nothing kept)
    std::vector<int32_t> kept;  // row indices
    size_t row0 = 0;            // its first kept token's row in the layer's kept rows (all ranks' streams, in order)
    std::vector<float> x;       // [T, H]
};

}  // namespace

SequentialResult calibrate_sequentially(const Model& dense, const ExpertPlan& plan, const RouterOptions& ro,
                                        const std::vector<TokenWindow>& windows, bool refit, const RefitOptions& refit_opt,
                                        const KeptRowsFn& observe, const CalibProgress& progress, const RankGroup& group) {
    const ModelConfig& c = dense.config();
    if (c.is_moe()) fail("sequential calibration: the model is already an MoE model; it needs the dense model");
    const int L = c.num_layers, H = c.hidden_size, I = c.intermediate_size;
    const int Qd = c.num_heads * c.head_dim, KVd = c.num_kv_heads * c.head_dim;
    if (plan.num_layers != L || plan.hidden_size != H || plan.intermediate_size != I)
        fail("sequential calibration: the expert plan is for {} layers of {} x {}, the model has {} layers of {} x {}",
             plan.num_layers, plan.hidden_size, plan.intermediate_size, L, H, I);
    const size_t max_tokens = ro.calib.max_tokens;
    if (max_tokens < 1) fail("calibration: the token budget must be at least 1");

    // Kept tokens as for_each_kept_batch keeps them: min(K, total), evenly spread.
    size_t total = 0;
    for (const TokenWindow& w : windows) total += w.size();
    if (total == 0) fail("calibration: no tokens (the calibration text is empty)");
    const size_t K = std::min(max_tokens, total);
    // Data-parallel: rank r advances the streams s with s mod size == r (the windows
    // with kept tokens, counted in order); each layer's kept rows are put together
    // in stream order on every rank, so all ranks fit what one process fits.
    std::vector<Stream> streams;
    size_t g = 0, rows = 0, with_kept = 0;
    int Tmax = 0;
    for (const TokenWindow& w : windows) {
        Stream s;
        s.tokens = &w;
        for (size_t t = 0; t < w.size(); ++t)
            if ((g + t + 1) * K / total != (g + t) * K / total) s.kept.push_back(int32_t(t));
        g += w.size();
        if (s.kept.empty()) continue;
        s.row0 = rows;
        rows += s.kept.size();
        if (with_kept++ % size_t(group.size()) != size_t(group.rank())) continue;
        s.T = s.kept.back() + 1;
        s.x.resize(size_t(s.T) * H);
        gather_rows(dense.embed_weight(), w.data(), s.T, s.x.data());
        Tmax = std::max(Tmax, s.T);
        streams.push_back(std::move(s));
    }

    std::vector<float> xn(size_t(Tmax) * H), q(size_t(Tmax) * Qd), att(size_t(Tmax) * Qd), k(size_t(Tmax) * KVd),
        v(size_t(Tmax) * KVd), gate(size_t(Tmax) * I), up(size_t(Tmax) * I), h(size_t(Tmax) * I), z(size_t(Tmax) * I);
    const LayerBuffers buf{xn.data(), q.data(), att.data(), nullptr, nullptr, nullptr, nullptr, nullptr};
    // xn, h of a stream's current x (after attention): the FFN input and the dense activations.
    auto ffn_inputs = [&](const Stream& s, const LayerWeights& lw) {
        layers::rmsnorm(s.x.data(), lw.post_norm.data(), s.T, H, c.rms_norm_eps, xn.data());
        layers::swiglu_hidden(lw.ffn, xn.data(), s.T, gate.data(), up.data(), h.data());
    };

    SequentialResult out;
    out.build.weighting = ro.weighting;
    out.build.calib_tokens = K;
    out.build.gamma_max = post_norm_gamma_max(dense);
    const auto t0 = Clock::now();
    for (int l = 0; l < L; ++l) {
        const LayerWeights& lw = dense.layer(l);
        const LayerPlan& lp = plan.layers[size_t(l)];
        // Attention of layer l on the converted stream, then the kept tokens' FFN inputs and activations.
        DenseLayerActs acts;
        acts.H = H, acts.I = I, acts.N = int(rows);
        acts.x.assign(rows * size_t(H), 0.0f);
        acts.h.assign(rows * size_t(I), 0.0f);
        group.run_share("calibration", [&] {
            for (Stream& s : streams) {
                const LayerKV kv{k.data(), v.data(), k.data(), v.data(), s.T, 0};
                attention_block_forward(c, lw, dense.rope_freqs(), s.x.data(), s.T, 0, kv, buf);
                ffn_inputs(s, lw);
                for (size_t j = 0; j < s.kept.size(); ++j) {
                    const size_t t = size_t(s.kept[j]), row = s.row0 + j;
                    std::copy_n(xn.begin() + long(t * H), H, acts.x.begin() + long(row * H));
                    std::copy_n(h.begin() + long(t * I), I, acts.h.begin() + long(row * I));
                }
            }
                });
        // Other ranks' rows are 0 here: the sum puts them in place (x + 0 is x).
        group.sum(acts.x.data(), acts.x.size());
        group.sum(acts.h.data(), acts.h.size());
        if (observe) observe(l, acts.x.data(), acts.h.data(), acts.N);
        const std::vector<float> wd = dense_down_f32(dense, l);
        LayerCalib stats;
        stats.H = H, stats.E = plan.num_experts();
        const bool calibrated = needs_calibration(ro);
        if (calibrated)
            for (int r0 = 0; r0 < acts.N; r0 += 1024) {
                const int m = std::min(1024, acts.N - r0);
                accumulate_calibration(stats, lp, wd.data(), acts.x.data() + size_t(r0) * H, acts.h.data() + size_t(r0) * I, m, I,
                                       ro.calib.shared_weight);
            }
        LayerRouter lr = build_layer_router(dense, plan, ro, l, calibrated ? &stats : nullptr);
        RefitRouting rr;
        rr.router = lr.router;
        rr.top_k = ro.top_k;
        rr.weighting = ro.weighting;
        rr.over_all = ro.combine == CombineRule::SoftmaxAll;
        rr.scale = lr.scale;
        rr.shared_weight = ro.calib.shared_weight;
        std::vector<float> down;
        if (refit) {
            down = wd;
            out.refit.layers.push_back(refit_layer_from_acts(lp, rr, wd.data(), H, acts, refit_opt, down));
        }

        // Through the converted layer: x = x_mid + W' z, W' the refitted down projection (f32)
        // or, without a refit, the stored one as the converted model runs it.
        const WeightRef Wd = refit ? WeightRef{down.data(), DType::F32, H, I} : lw.ffn.down;
        for (Stream& s : streams) {
            ffn_inputs(s, lw);
            masked_activations(lp, rr, xn.data(), h.data(), s.T, I, z.data());
            matmul(z.data(), s.T, Wd, s.x.data(), /*accumulate=*/true);
        }
        out.build.routers.push_back(std::move(lr.router));
        out.build.scales.push_back(lr.scale);
        out.build.layers.push_back(lr.report);
        if (refit) out.refit.down.push_back(std::move(down));
        dense.release_layer(l);  // one layer pass: a 7B model keeps one layer resident
        if (progress) progress(size_t(l + 1), size_t(L));
    }
    out.build.seconds_calib = since(t0);
    return out;
}

}  // namespace moefy
