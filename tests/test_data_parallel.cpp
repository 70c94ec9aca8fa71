// The model-running stages under `mpirun -np N` (graph split, sequential
// calibration, eval, and build running all three) give what one process gives.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace {

// The JSON object a command printed (progress lines on stderr may precede it).
nlohmann::json json_of(const CliResult& r) {
    const size_t at = r.out.find('{');
    if (at == std::string::npos) return nlohmann::json();
    return nlohmann::json::parse(r.out.substr(at), nullptr, /*allow_exceptions=*/false);
}

void expect_near_rel(double got, double want, double rel, const char* what) {
    EXPECT_NEAR(got, want, rel * std::fabs(want)) << what;
}

TEST(DataParallel, MpirunEvalMatchesOneProcess) {
    if (const std::string why = mpirun_missing(); !why.empty()) GTEST_SKIP() << why;
    REQUIRE_REPO_FILE(demo_model_dir());
    const std::string args = "eval --model " + demo_model_dir() + " --data " + repo_data_file("eval.jsonl") +
                             " --ctx 128 --max-tokens 1500 --json";
    const CliResult one = run_cli(args);
    ASSERT_EQ(one.status, 0) << one.out;
    const CliResult three = run_cli_mpi(3, args);  // windows do not divide evenly over 3 ranks
    ASSERT_EQ(three.status, 0) << three.out;
    const nlohmann::json a = json_of(one), b = json_of(three);
    ASSERT_TRUE(a.is_object() && b.is_object()) << one.out << three.out;
    EXPECT_EQ(a["tokens"], b["tokens"]);
    expect_near_rel(b["mean_nll"].get<double>(), a["mean_nll"].get<double>(), 1e-12, "mean NLL");
}

TEST(DataParallel, MpirunGraphSplitMatchesOneProcess) {
    if (const std::string why = mpirun_missing(); !why.empty()) GTEST_SKIP() << why;
    REQUIRE_REPO_FILE(demo_model_dir());
    TempDir tmp;
    const std::string args = "split graph --model " + demo_model_dir() + " --data " + repo_data_file("calib.jsonl") +
                             " --experts 4 --tokens 3000 --ctx 256";
    const CliResult one = run_cli(args + " --out " + tmp.path + "/one.json");
    ASSERT_EQ(one.status, 0) << one.out;
    const CliResult three = run_cli_mpi(3, args + " --out " + tmp.path + "/three.json");
    ASSERT_EQ(three.status, 0) << three.out;
    const nlohmann::json a = nlohmann::json::parse(read_file(tmp.path + "/one.json"));
    const nlohmann::json b = nlohmann::json::parse(read_file(tmp.path + "/three.json"));
    ASSERT_EQ(a["layers"].size(), b["layers"].size());
    for (size_t l = 0; l < a["layers"].size(); ++l) {
        // The same partition; the statistics differ only in the f32 sums' order.
        EXPECT_EQ(a["layers"][l]["experts"], b["layers"][l]["experts"]) << "layer " << l;
        expect_near_rel(b["layers"][l]["stats"]["kept_fraction"].get<double>(),
                        a["layers"][l]["stats"]["kept_fraction"].get<double>(), 1e-6, "kept fraction");
    }
    EXPECT_EQ(a["params"], b["params"]);
}

// build --method graph with its default sequential calibration and an eval: every
// model-running stage data-parallel. Rank 0 writes; the checkpoint is the same bytes.
TEST(DataParallel, MpirunBuildMatchesOneProcess) {
    if (const std::string why = mpirun_missing(); !why.empty()) GTEST_SKIP() << why;
    REQUIRE_REPO_FILE(demo_model_dir());
    TempDir tmp;
    const std::string args = "build --model " + demo_model_dir() + " --method graph --experts 8 --top-k 2 --ctx 256 --data " +
                             repo_data_file("calib.jsonl") + " --calib-tokens 1024 --eval-data " + repo_data_file("eval.jsonl") +
                             " --eval-tokens 600 --json";
    const CliResult one = run_cli(args + " --out " + tmp.path + "/one");
    ASSERT_EQ(one.status, 0) << one.out;
    const CliResult two = run_cli_mpi(2, args + " --out " + tmp.path + "/two");
    ASSERT_EQ(two.status, 0) << two.out;
    EXPECT_EQ(read_file(tmp.path + "/one/model.safetensors"), read_file(tmp.path + "/two/model.safetensors"));
    EXPECT_EQ(read_file(tmp.path + "/one/config.json"), read_file(tmp.path + "/two/config.json"));
    const nlohmann::json a = json_of(one), b = json_of(two);
    ASSERT_TRUE(a.is_object() && b.is_object()) << one.out << two.out;
    ASSERT_TRUE(a.contains("eval")) << a.dump();
    for (const char* m : {"dense", "moe"})
        expect_near_rel(b["eval"][m]["mean_nll"].get<double>(), a["eval"][m]["mean_nll"].get<double>(), 1e-12, m);
    // The FFN error sums are added per rank, then over the ranks: equal up to their order.
    expect_near_rel(b["eval"]["moe"]["ffn_rel_error"].get<double>(), a["eval"]["moe"]["ffn_rel_error"].get<double>(), 1e-9,
                    "FFN error");
}

}  // namespace
