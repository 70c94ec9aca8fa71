// moefy build: the stages run in order and agree with running them by hand,
// a fitted router beats the reference's random router on the same split,
// bad requests are refused before any work, and the CLI writes its table,
// JSON and report.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/documents.h"
#include "eval/perplexity.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "pipeline/build.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

std::string data_file(const char* name) { return std::string(MOEFY_SOURCE_DIR) + "/data/" + name; }


}  // namespace

TEST(BuildPlan, ActiveFfnFraction) {
    ExpertPlan p;
    p.num_layers = 2;
    p.intermediate_size = 24;
    LayerPlan a;
    for (int e = 0; e < 4; ++e) a.experts.push_back(std::vector<int32_t>(6));
    p.layers = {a, a};
    EXPECT_DOUBLE_EQ(active_ffn_fraction(p, 2), 0.5);
    EXPECT_DOUBLE_EQ(active_ffn_fraction(p, 1), 0.25);
    // a shared expert of 4 plus 4 routed of 5: top-2 uses (4 + 10) / 24
    LayerPlan b;
    for (int e = 0; e < 4; ++e) b.experts.push_back(std::vector<int32_t>(5));
    b.shared.push_back(std::vector<int32_t>(4));
    p.layers = {b, a};
    EXPECT_DOUBLE_EQ(active_ffn_fraction(p, 2), ((4.0 + 10.0) / 24 + 0.5) / 2);
}

TEST(Build, RefusesBadRequestsBeforeWork) {
    TempDir t;
    BuildOptions o;
    o.model_dir = demo_model_dir();
    o.out_dir = t.path;  // exists
    o.method = SplitMethod::Random;
    o.routing = {RouterKind::Random, Weighting::Softmax, RoutedScale{}};
    EXPECT_NE(error_of([&] { run_build(o); }).find("output already exists"), std::string::npos);
    o.out_dir = t.path + "/out";
    // Words are parsed once, at the boundary, into the typed options.
    EXPECT_NE(error_of([&] { parse_split_method("kmeans"); }).find("--method 'kmeans'"), std::string::npos);
    o.method = SplitMethod::Graph;
    EXPECT_NE(error_of([&] { run_build(o); }).find("--method graph needs calibration text"), std::string::npos);
    o.method = SplitMethod::Random;
    o.routing.router = RouterKind::Fit;
    EXPECT_NE(error_of([&] { run_build(o); }).find("needs calibration text"), std::string::npos);
    o.routing.router = RouterKind::Random;
    EXPECT_NE(error_of([&] { parse_routed_scale("-2"); }).find("--scale '-2'"), std::string::npos);
    o.format = MoEFormat::Mixtral;
    o.gate = GateKind::Mlp;
    EXPECT_NE(error_of([&] { run_build(o); }).find("only the llama-moe layout"), std::string::npos);
    o.format = MoEFormat::LlamaMoE;
    o.gate.reset();
    o.oracle = true;
    EXPECT_NE(error_of([&] { run_build(o); }).find("--oracle needs evaluation text"), std::string::npos);
    o.oracle = false;
    EXPECT_NE(error_of([&] { parse_router_kind("magic"); }).find("--router 'magic'"), std::string::npos);
    EXPECT_FALSE(fs::exists(o.out_dir));
}

TEST(Build, RandomReferenceBuildMatchesStagesRunByHand) {
    REQUIRE_REPO_FILE(demo_model_dir() + "/model.safetensors");
    TempDir t;
    BuildOptions o;
    o.model_dir = demo_model_dir();
    o.out_dir = t.path + "/moe";
    o.method = SplitMethod::Random;
    o.experts = 8;
    o.top_k = 2;
    o.routing = {RouterKind::Random, Weighting::Softmax, RoutedScale{}};
    o.eval_data = data_file("eval.jsonl");
    o.eval_tokens = 600;
    o.oracle = true;
    o.save_plan = t.path + "/plan.json";
    std::vector<std::string> stages_seen;
    BuildResult r = run_build(o, [&](const std::string& s, double, double) {
        if (stages_seen.empty() || stages_seen.back() != s) stages_seen.push_back(s);
    });
    ASSERT_EQ(r.stages.size(), 4u);
    EXPECT_EQ(r.stages[0].name, "split");
    EXPECT_EQ(r.stages[1].name, "calibrate");
    EXPECT_EQ(r.stages[2].name, "convert");
    EXPECT_EQ(r.stages[3].name, "eval");
    EXPECT_DOUBLE_EQ(r.active_ffn_fraction, 0.25);
    EXPECT_EQ(r.convert.layout, "llama-moe");
    ASSERT_TRUE(r.eval && r.eval->oracle);
    EXPECT_EQ(r.eval->dense.tokens, 600u);

    // The plan is the random split with the same seed, and the scale is E / k.
    Checkpoint dense = Checkpoint::open(o.model_dir);
    EXPECT_EQ(ExpertPlan::load(o.save_plan).to_json(), random_split(dense, 8, 0).to_json());
    for (double s : r.convert.scales) EXPECT_DOUBLE_EQ(s, 4.0);

    // Dense and MoE perplexity equal what eval computes on the written model.
    auto tok = Tokenizer::from_dir(o.model_dir);
    auto windows = make_windows(read_documents(o.eval_data), *tok, {o.ctx, o.eval_tokens, true});
    auto dm = Model::load(dense);
    EXPECT_DOUBLE_EQ(evaluate_perplexity(*dm, windows).nll_sum, r.eval->dense.nll_sum);
    Checkpoint moe = Checkpoint::open(o.out_dir);
    auto mm = Model::load(moe);
    EXPECT_NEAR(evaluate_perplexity(*mm, windows).nll_sum, r.eval->moe.ppl.nll_sum, 1e-6 * r.eval->moe.ppl.nll_sum);
    // Random routing of a random split loses much; the oracle loses less.
    EXPECT_GT(r.eval->ppl_ratio(), 1.05);
    EXPECT_LT(r.eval->oracle->ppl.perplexity(), r.eval->moe.ppl.perplexity());

    nlohmann::json j = build_json(r);
    EXPECT_EQ(j["method"], "random");
    EXPECT_EQ(j["experts"], 8);
    EXPECT_EQ(j["plan"]["widths"][5].size(), 8u);
    EXPECT_DOUBLE_EQ(j["moe_ppl"].get<double>(), r.eval->moe.ppl.perplexity());
    EXPECT_TRUE(j["stages"].contains("convert"));
    auto cols = build_summary(r);
    ASSERT_GE(cols.size(), 9u);
    EXPECT_EQ(cols[0], (std::pair<std::string, std::string>{"method", "random"}));
    EXPECT_EQ(cols[3], (std::pair<std::string, std::string>{"active FFN", "0.250"}));
    EXPECT_EQ(cols[8].first, "oracle ppl");
}

TEST(Build, FittedRouterBeatsRandomRouterOnTheSameSplit) {
    REQUIRE_REPO_FILE(demo_model_dir() + "/model.safetensors");
    TempDir t;
    Checkpoint dense = Checkpoint::open(demo_model_dir());
    random_split(dense, 8, 3).save(t.path + "/plan.json");
    BuildOptions o;
    o.model_dir = demo_model_dir();
    o.plan_path = t.path + "/plan.json";
    o.top_k = 2;
    o.calib_data = data_file("calib.jsonl");
    o.calib_tokens = 4096;
    o.eval_data = data_file("eval.jsonl");
    o.eval_tokens = 1500;
    o.gate = GateKind::Linear;
    o.out_dir = t.path + "/random";
    o.routing = {RouterKind::Random, Weighting::Softmax, RoutedScale{}};
    BuildResult a = run_build(o);
    o.out_dir = t.path + "/fit";
    o.routing = {RouterKind::Fit, Weighting::Uniform, RoutedScale::fit()};
    BuildResult b = run_build(o);
    EXPECT_EQ(b.plan.to_json(), a.plan.to_json());
    EXPECT_DOUBLE_EQ(b.eval->dense.nll_sum, a.eval->dense.nll_sum);
    EXPECT_LT(b.eval->moe.total_rel_error(), a.eval->moe.total_rel_error());
    EXPECT_LT(b.eval->moe.ppl.perplexity(), a.eval->moe.ppl.perplexity());
    EXPECT_GT(b.calib_tokens, 1000u);
}

TEST(BuildCli, TableJsonAndReport) {
    REQUIRE_REPO_FILE(demo_model_dir() + "/model.safetensors");
    TempDir t;
    const std::string base = fmt::format("build --model {} --method random --experts 4 --top-k 2 --router random "
                                         "--weighting softmax --scale auto --eval-data {} --eval-tokens 200 --format mixtral",
                                         demo_model_dir(), data_file("eval.jsonl"));
    CliResult c = run_cli(base + fmt::format(" --out {}/a --report {}/r.html", t.path, t.path));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_NE(c.out.find("method  experts  top-k  active FFN"), std::string::npos) << c.out;
    EXPECT_NE(c.out.find("mixtral layout"), std::string::npos) << c.out;
    const std::string html = read_file(t.path + "/r.html");
    EXPECT_NE(html.find("data-plot=\"widths\""), std::string::npos);
    EXPECT_NE(html.find("data-plot=\"load\""), std::string::npos);
    c = run_cli(base + fmt::format(" --out {}/b --json 2>/dev/null", t.path));
    ASSERT_EQ(c.status, 0) << c.out;
    nlohmann::json j = nlohmann::json::parse(c.out);
    EXPECT_EQ(j["layout"], "mixtral");
    EXPECT_EQ(j["eval"]["tokens"], 200);
    EXPECT_GT(j["moe_ppl"].get<double>(), 1.0);
    c = run_cli(base + fmt::format(" --out {}/b", t.path));
    EXPECT_EQ(c.status, 1);
    EXPECT_NE(c.out.find("output already exists"), std::string::npos) << c.out;
}

// Without --data, build calibrates on the bundled text when its choices need text
// (the default fitted router does), as convert does; with choices that need none
// it reads none.
TEST(BuildCli, DefaultsToTheBundledCalibrationText) {
    REQUIRE_REPO_FILE(demo_model_dir() + "/model.safetensors");
    TempDir t;
    const std::string base = fmt::format("build --model {} --method random --experts 4 --calib-tokens 256 --ctx 64 --json", demo_model_dir());
    CliResult c = run_cli(base + fmt::format(" --out {}/fit", t.path));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_NE(c.out.find("calibration text: " + repo_data_file("calib.jsonl") + " (bundled"), std::string::npos) << c.out;
    const std::string json_text = c.out.substr(c.out.find('{'));
    const nlohmann::json j = nlohmann::json::parse(json_text);
    EXPECT_EQ(j["calib_data"], repo_data_file("calib.jsonl")) << json_text;
    EXPECT_GT(j["calib_tokens"].get<size_t>(), 0u);
    c = run_cli(base + fmt::format(" --router random --scale auto --out {}/random", t.path));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_EQ(c.out.find("calibration text:"), std::string::npos) << c.out;
}
