// Sequential calibration (route/sequential.h): what each layer is fitted on is
// what that layer receives in the converted model.
#include <gtest/gtest.h>

#include <cmath>

#include "common/rng.h"
#include "convert/convert.h"
#include "convert/routing.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "route/sequential.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;

namespace {

// Every layer's FFN inputs of the token rows seen, [layer] of [rows, H].
struct FfnInputs : FfnObserver {
    std::vector<std::vector<float>> x;
    explicit FfnInputs(int L) : x(size_t(L)) {}
    int last = -1;
    void on_ffn(int layer, const FfnActs& a) override {
        if (layer == last) return;  // one call per expert: the input is the same
        last = layer;
        x[size_t(layer)].insert(x[size_t(layer)].end(), a.x, a.x + size_t(a.T) * a.H);
    }
};

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) num += std::pow(double(a[i]) - b[i], 2), den += double(b[i]) * b[i];
    return std::sqrt(num / den);
}

}  // namespace

TEST(Sequential, EachLayerIsFittedOnWhatTheConvertedModelFeedsIt) {
    TempDir tmp;
    TinyModelSpec s;
    s.layers = 3, s.intermediate = 48, s.seed = 3;
    const Checkpoint dense = Checkpoint::open(write_tiny_model(tmp.path + "/dense", s));
    const ExpertPlan plan = random_split(dense, 4, 2);
    std::vector<TokenWindow> windows;
    Rng rng(8);
    for (int w = 0; w < 24; ++w) {
        TokenWindow t(16);
        for (int32_t& x : t) x = int32_t(rng.below(uint64_t(s.vocab)));
        windows.push_back(t);
    }

    ConvertOptions co;
    co.format = MoEFormat::Mixtral;
    co.top_k = 2;
    co.dtype = DType::F32;
    const RoutingChoice choice{RouterKind::Fit, Weighting::Uniform, RoutedScale::fit()};
    auto model = Model::load(dense);
    std::vector<std::vector<float>> fitted_on(size_t(s.layers));
    SequentialResult seq;
    apply_routing_with(plan, choice, "", co, [&](const RouterOptions& ro) {
        RouterOptions all = ro;
        all.calib.max_tokens = 1 << 20;  // every token kept: rows line up with the forward below
        seq = calibrate_sequentially(*model, plan, all, windows, /*refit=*/true, RefitOptions{},
                                     [&](int l, const float* x, const float*, int n) {
                                         fitted_on[size_t(l)].assign(x, x + size_t(n) * s.hidden);
                                     });
        return seq.build;
    });
    co.down_proj = seq.refit.down;
    ASSERT_EQ(seq.refit.layers.size(), size_t(s.layers));
    convert_checkpoint(dense, plan, tmp.path + "/moe", co);

    const Checkpoint moe_ck = Checkpoint::open(tmp.path + "/moe");
    auto moe = Model::load(moe_ck);
    FfnInputs converted(s.layers), dense_in(s.layers);
    for (const TokenWindow& w : windows) {
        converted.last = dense_in.last = -1;
        moe->forward(w.data(), int(w.size()), 0, nullptr, nullptr, RunHooks(&converted));
        model->forward(w.data(), int(w.size()), 0, nullptr, nullptr, RunHooks(&dense_in));
    }
    for (int l = 0; l < s.layers; ++l) {
        SCOPED_TRACE(l);
        ASSERT_EQ(fitted_on[size_t(l)].size(), converted.x[size_t(l)].size());
        const double seq_err = rel_diff(fitted_on[size_t(l)], converted.x[size_t(l)]);
        // The converted routers' weights are uniform only to within the flattening gap (1e-3 of the logits).
        EXPECT_LT(seq_err, 1e-3);
        if (l == 0) continue;  // layer 0's input is the embedding in every model
        const double dense_err = rel_diff(dense_in.x[size_t(l)], converted.x[size_t(l)]);
        EXPECT_GT(dense_err, 30 * seq_err);  // the dense model's inputs are not what the converted layer sees
    }
}

TEST(SequentialCli, ConvertWithRefitAndSequentialGivesWhatBuildGives) {
    TempDir tmp;
    const std::string plan = tmp.path + "/plan.json";
    ASSERT_EQ(run_cli(fmt::format("split random --model {} --experts 8 --out {}", demo_model_dir(), plan)).status, 0);
    const std::string text = fmt::format("{} --calib-tokens 1024 --ctx 128", repo_data_file("calib.jsonl"));
    const CliResult c = run_cli(fmt::format(
        "convert --model {} --plan {} --format mixtral --top-k 2 --router fit --weighting uniform --scale fit --refit "
        "--sequential --calib {} --out {}/convert",
        demo_model_dir(), plan, text, tmp.path));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_NE(c.out.find("layer by layer (sequential)"), std::string::npos) << c.out;
    const CliResult b = run_cli(fmt::format("build --model {} --plan {} --format mixtral --top-k 2 --data {} --out {}/build",
                                            demo_model_dir(), plan, text, tmp.path));
    ASSERT_EQ(b.status, 0) << b.out;
    EXPECT_EQ(read_file(tmp.path + "/convert/model.safetensors"), read_file(tmp.path + "/build/model.safetensors"));
    const CliResult r = run_cli(fmt::format("convert --model {} --plan {} --refit --out {}/ref", demo_model_dir(), plan, tmp.path));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("--refit / --sequential work on routers moefy builds"), std::string::npos) << r.out;
}
