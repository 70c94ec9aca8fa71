// Expert refit: the solve is the ridge regression it claims (against LAPACK's
// QR least squares of the stacked system), every expert active gives back the
// dense down projection, and the converted model carries the refitted values
// and reproduces the dense FFN better than without them.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numeric>

#include "common/rng.h"
#include "convert/convert.h"
#include "eval/compare.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/tensor_names.h"
#include "route/refit.h"
#include "convert/routing.h"
#include "route/build_routers.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tiny_model.h"

extern "C" void dgels_(const char* trans, const int* m, const int* n, const int* nrhs, double* a, const int* lda, double* b,
                       const int* ldb, double* work, const int* lwork, int* info);

using namespace moefy;
namespace fs = std::filesystem;

namespace {

std::vector<float> gaussian(size_t n, Rng& rng) {
    std::vector<float> v(n);
    for (float& x : v) x = float(rng.normal());
    return v;
}

// Row i of W' by QR least squares of [Z; √λ I] w = [y_i; √λ W0_i] (column-major for LAPACK).
std::vector<double> stacked_least_squares(const std::vector<float>& Z, const std::vector<float>& Y, const std::vector<float>& W0,
                                          int N, int H, int I, double lambda) {
    const int m = N + I, n = I, nrhs = H;
    std::vector<double> a(size_t(m) * n, 0.0), b(size_t(m) * nrhs, 0.0);
    const double sl = std::sqrt(lambda);
    for (int t = 0; t < N; ++t)
        for (int j = 0; j < I; ++j) a[size_t(j) * m + t] = Z[size_t(t) * I + j];
    for (int j = 0; j < I; ++j) a[size_t(j) * m + N + j] = sl;
    for (int i = 0; i < H; ++i) {
        for (int t = 0; t < N; ++t) b[size_t(i) * m + t] = Y[size_t(t) * H + i];
        for (int j = 0; j < I; ++j) b[size_t(i) * m + N + j] = sl * W0[size_t(i) * I + j];
    }
    int lwork = -1, info = 0;
    double q = 0;
    dgels_("N", &m, &n, &nrhs, a.data(), &m, b.data(), &m, &q, &lwork, &info);
    lwork = int(q);
    std::vector<double> work(static_cast<size_t>(lwork));
    dgels_("N", &m, &n, &nrhs, a.data(), &m, b.data(), &m, work.data(), &lwork, &info);
    EXPECT_EQ(info, 0);
    std::vector<double> W(size_t(H) * I);
    for (int i = 0; i < H; ++i)
        for (int j = 0; j < I; ++j) W[size_t(i) * I + j] = b[size_t(i) * m + j];
    return W;
}

}  // namespace

TEST(Refit, SolvesTheMaskedRidgeRegression) {
    const int N = 80, H = 5, I = 12, E = 4;
    Rng rng(3, 0);
    const std::vector<float> h = gaussian(size_t(N) * I, rng), W0 = gaussian(size_t(H) * I, rng);
    // z: two of four blocks of 3 neurons per token, with weights in (0.5, 1.5).
    std::vector<float> z(size_t(N) * I, 0.0f), y(size_t(N) * H, 0.0f);
    for (int t = 0; t < N; ++t) {
        const int a = int(rng.below(E)), b = (a + 1 + int(rng.below(E - 1))) % E;
        for (int e : {a, b}) {
            const float w = 0.5f + float(rng.uniform());
            for (int n = 3 * e; n < 3 * e + 3; ++n) z[size_t(t) * I + n] = w * h[size_t(t) * I + n];
        }
        for (int i = 0; i < H; ++i)
            for (int n = 0; n < I; ++n) y[size_t(t) * H + i] += W0[size_t(i) * I + n] * h[size_t(t) * I + n];
    }
    RefitLayerStats s(I);
    accumulate_refit(s, W0.data(), H, h.data(), z.data(), N, false);
    EXPECT_EQ(s.tokens, size_t(N));
    for (double lambda : {1e-3, 0.5, 20.0}) {
        const std::vector<float> Wp = solve_refit(s.A, s.C, W0.data(), H, I, lambda);
        const std::vector<double> ref = stacked_least_squares(z, y, W0, N, H, I, lambda);
        double maxref = 0;
        for (double v : ref) maxref = std::max(maxref, std::fabs(v));
        for (size_t i = 0; i < Wp.size(); ++i) EXPECT_NEAR(Wp[i], ref[i], 1e-4 * (1 + maxref)) << "lambda " << lambda << " entry " << i;
        // And it beats W0 on its own objective.
        auto objective = [&](const std::vector<float>& W) {
            double o = 0;
            for (int t = 0; t < N; ++t)
                for (int i = 0; i < H; ++i) {
                    double p = 0;
                    for (int n = 0; n < I; ++n) p += double(W[size_t(i) * I + n]) * z[size_t(t) * I + n];
                    o += (y[size_t(t) * H + i] - p) * (y[size_t(t) * H + i] - p);
                }
            for (size_t i = 0; i < W.size(); ++i) o += lambda * (W[i] - W0[i]) * (W[i] - W0[i]);
            return o;
        };
        EXPECT_LT(objective(Wp), objective(W0));
    }
}

TEST(Refit, EveryExpertActiveAtWeightOneGivesTheDenseDownProjection) {
    const int N = 50, H = 4, I = 10;
    Rng rng(5, 0);
    const std::vector<float> h = gaussian(size_t(N) * I, rng), W0 = gaussian(size_t(H) * I, rng);
    RefitLayerStats s(I);
    accumulate_refit(s, W0.data(), H, h.data(), h.data(), N, false);
    for (double lambda : {1e-8, 1e-2, 3.0}) {
        const std::vector<float> Wp = solve_refit(s.A, s.C, W0.data(), H, I, lambda);
        for (size_t i = 0; i < Wp.size(); ++i) EXPECT_NEAR(Wp[i], W0[i], 1e-4 * (1 + std::fabs(W0[i]))) << "lambda " << lambda;
    }
}

namespace {

struct TinyRefit {
    TempDir tmp;
    Checkpoint dense;
    ExpertPlan plan;
    std::vector<TokenWindow> windows;
    TinyRefit() {
        TinyModelSpec s;
        s.seed = 7;
        s.intermediate = 24;
        write_tiny_model(tmp.path + "/dense", s);
        dense = Checkpoint::open(tmp.path + "/dense");
        plan = random_split(dense, 4, 7);
        Rng rng(7, 1);
        for (int w = 0; w < 12; ++w) {
            TokenWindow t(32);
            for (auto& id : t) id = int32_t(rng.below(uint64_t(s.vocab)));
            windows.push_back(t);
        }
    }
};

}  // namespace

TEST(Refit, FullRoutingThroughTheModelKeepsTheDenseWeights) {
    TinyRefit tr;
    auto model = Model::load(tr.dense);
    RouterOptions ro;
    ro.kind = RouterKind::Random;
    ro.top_k = 4;  // every expert
    ro.weighting = Weighting::Uniform;
    ro.fit_scale = false;
    ro.scale = 1.0;
    const RouterBuild rb = build_routers(tr.dense, tr.plan, ro, {});
    RefitOptions opt;
    const RefitResult r = refit_down_projections(*model, tr.plan, refit_routing(rb, 4, CombineRule::SoftmaxTopK), tr.windows, opt);
    ASSERT_EQ(r.down.size(), 2u);
    for (int l = 0; l < 2; ++l) {
        const std::vector<float> W0 = dense_down_f32(*model, l);
        ASSERT_EQ(r.down[size_t(l)].size(), W0.size());
        EXPECT_EQ(r.layers[size_t(l)].tokens + r.layers[size_t(l)].val_tokens, size_t(12 * 32));
        for (size_t i = 0; i < W0.size(); ++i) EXPECT_NEAR(r.down[size_t(l)][i], W0[i], 1e-4 * (1 + std::fabs(W0[i])));
    }
}

TEST(Refit, ConvertedModelCarriesTheRefitAndErrsLess) {
    TinyRefit tr;
    auto model = Model::load(tr.dense);
    RouterOptions ro;
    ro.kind = RouterKind::Fit;
    ro.top_k = 2;
    ro.fit.iters = 30;
    const RouterBuild rb = build_routers(tr.dense, tr.plan, ro, tr.windows);
    RefitOptions opt;
    const RefitResult r = refit_down_projections(*model, tr.plan, refit_routing(rb, 2, CombineRule::SoftmaxTopK), tr.windows, opt);
    for (const RefitLayerReport& l : r.layers) EXPECT_LE(l.val_rel_error_after, l.val_rel_error_before + 1e-12);
    EXPECT_TRUE(r.layers[0].refitted);

    double err[2] = {0, 0};
    for (int refit = 0; refit < 2; ++refit) {
        ConvertOptions co;
        co.format = MoEFormat::LlamaMoE;
        co.top_k = 2;
        co.gate = GateKind::Linear;
        co.dtype = DType::F32;
        set_convert_routing(rb, co);
        if (refit) co.down_proj = r.down;
        const std::string out = tr.tmp.path + "/moe" + std::to_string(refit);
        convert_checkpoint(tr.dense, tr.plan, out, co);
        const Checkpoint moe = Checkpoint::open(out);
        if (refit) {
            // Expert e's down projection is W'[:, ids] (scale 1: nothing folded).
            const LayerPlan& lp = tr.plan.layers[0];
            const std::vector<float> d1 = moe.tensors->read_f32(names::llama_moe_expert(0, "down", 1, "mlp"));
            const auto& ids = lp.experts[1];
            const int H = 16, I = 24;
            for (int i = 0; i < H; ++i)
                for (size_t j = 0; j < ids.size(); ++j)
                    EXPECT_EQ(d1[size_t(i) * ids.size() + j], r.down[0][size_t(i) * I + size_t(ids[j])]);
        }
        auto m = Model::load(moe);
        const MoEQuality q = evaluate_moe_quality(*m, *model, tr.windows);
        err[refit] = q.layers[0].rel_error();  // layer 0 sees the dense model's input
    }
    EXPECT_LT(err[1], err[0]);
}
