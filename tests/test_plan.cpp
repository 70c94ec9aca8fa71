// Expert plans and the random split.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "common/error.h"
#include "model/checkpoint.h"
#include "split/expert_plan.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;

TEST(Plan, RandomPartitionIsBalancedAndCoversEveryNeuron) {
    for (auto [I, E] : std::vector<std::pair<int, int>>{{768, 8}, {172, 4}, {10, 3}, {11, 2}, {5, 5}}) {
        auto ex = random_partition(I, E, 7, 0);
        ASSERT_EQ(int(ex.size()), E);
        std::vector<int> seen(size_t(I), 0);
        size_t lo = SIZE_MAX, hi = 0;
        for (auto& e : ex) {
            EXPECT_TRUE(std::is_sorted(e.begin(), e.end()));
            lo = std::min(lo, e.size());
            hi = std::max(hi, e.size());
            for (int n : e) ++seen[size_t(n)];
        }
        for (int s : seen) ASSERT_EQ(s, 1);
        EXPECT_LE(hi - lo, 1u) << I << "/" << E;
        EXPECT_EQ(int(ex[0].size()), (I + E - 1) / E);  // the first I%E experts are the wider ones
    }
}

TEST(Plan, RandomPartitionDependsOnSeedAndLayer) {
    auto a = random_partition(768, 8, 0, 0);
    EXPECT_EQ(a, random_partition(768, 8, 0, 0));
    EXPECT_NE(a, random_partition(768, 8, 1, 0));
    EXPECT_NE(a, random_partition(768, 8, 0, 1));
}

TEST(Plan, RandomSplitIsByteReproducibleAndValid) {
    TempDir dir;
    std::string model = write_tiny_model(dir.path + "/m", TinyModelSpec{});
    Checkpoint ck = Checkpoint::open(model);
    ExpertPlan p = random_split(ck, 4, 3);
    p.save(dir.path + "/a.json");
    random_split(ck, 4, 3).save(dir.path + "/b.json");
    random_split(ck, 4, 4).save(dir.path + "/c.json");
    EXPECT_EQ(read_file(dir.path + "/a.json"), read_file(dir.path + "/b.json"));
    EXPECT_NE(read_file(dir.path + "/a.json"), read_file(dir.path + "/c.json"));
    ExpertPlan q = ExpertPlan::load(dir.path + "/a.json");
    EXPECT_TRUE(q.is_partition());
    EXPECT_EQ(q.method, "random");
    EXPECT_EQ(q.params["seed"], 3);
    EXPECT_EQ(q.layers.size(), p.layers.size());
    for (size_t l = 0; l < p.layers.size(); ++l) EXPECT_EQ(q.layers[l].experts, p.layers[l].experts);
    q.validate_for(ck.config, ffn_fingerprint(*ck.tensors, ck.config), "a.json");
}

TEST(Plan, ValidationRefusesBadPlans) {
    TempDir dir;
    std::string model = write_tiny_model(dir.path + "/m", TinyModelSpec{});
    Checkpoint ck = Checkpoint::open(model);
    const std::string fp = ffn_fingerprint(*ck.tensors, ck.config);
    ExpertPlan good = random_split(ck, 4, 0);
    auto expect_error = [&](ExpertPlan p, const char* what) {
        try {
            p.validate_for(ck.config, fp, "plan.json");
            ADD_FAILURE() << "accepted: " << what;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
        }
    };
    ExpertPlan dup = good;
    dup.layers[1].experts[2].push_back(dup.layers[1].experts[2][0]);
    expect_error(dup, "twice");
    ExpertPlan out = good;
    out.layers[0].experts[0][0] = ck.config.intermediate_size;
    expect_error(out, "outside");
    ExpertPlan other = good;
    other.ffn_fingerprint = "fnv1a64:0000000000000000";
    expect_error(other, "another model");
    ExpertPlan sizes = good;
    sizes.hidden_size += 1;
    expect_error(sizes, "was made for a model");
    ExpertPlan empty = good;
    empty.layers[0].experts[3].clear();
    expect_error(empty, "empty");
    // Overlapping and shared experts are representable, though not partitions: a
    // method that shares (the gradient split) may write them, a partitioning one may not.
    ExpertPlan overlap = good;
    overlap.layers[0].experts[0].push_back(overlap.layers[0].experts[1][0]);
    expect_error(overlap, "partitions the neurons");
    overlap.method = "gradient";
    overlap.validate_for(ck.config, fp, "plan.json");
    EXPECT_FALSE(overlap.is_partition());
    ExpertPlan shared = good;
    shared.method = "gradient";
    for (auto& l : shared.layers) l.shared.push_back({0, 1, 2});
    shared.validate_for(ck.config, fp, "plan.json");
    EXPECT_TRUE(shared.has_shared());
    shared.save(dir.path + "/s.json");
    EXPECT_EQ(ExpertPlan::load(dir.path + "/s.json").layers[1].shared, shared.layers[1].shared);
}

// Found by fuzz_plan: a "format" that is not a string must be a plan error, not a json::type_error.
TEST(Plan, FormatOfAnotherTypeIsNotAPlan) {
    for (const char* text : {R"({"format": {}, "version": 1})", R"({"format": 7, "version": 1})", R"({"version": 1})"}) {
        try {
            ExpertPlan::from_json(nlohmann::json::parse(text), "plan.json");
            ADD_FAILURE() << "accepted: " << text;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("not an expert plan"), std::string::npos) << e.what();
        }
    }
}

TEST(Plan, ExpertCountChecks) {
    EXPECT_THROW(check_expert_count(1, 100), Error);
    EXPECT_THROW(check_expert_count(101, 100), Error);
    EXPECT_NO_THROW(check_expert_count(100, 100));
    EXPECT_EQ(balanced_widths(10, 4), (std::vector<int>{3, 3, 2, 2}));
}

TEST(Plan, CliSplitRandomAndInspect) {
    TempDir dir;
    std::string model = write_tiny_model(dir.path + "/m", TinyModelSpec{});
    auto r = run_cli("split random --model " + model + " --experts 3 --seed 5 --out " + dir.path + "/p.json");
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(ExpertPlan::load(dir.path + "/p.json").is_partition());
    r = run_cli("split random --model " + model + " --experts 1000 --out " + dir.path + "/q.json");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.out.find("larger than the FFN width"), std::string::npos) << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir.path + "/q.json"));
    r = run_cli("inspect " + model + " --json");
    ASSERT_EQ(r.status, 0) << r.out;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["intermediate_size"], 24);
    EXPECT_EQ(j["kv_heads"], 2);
    r = run_cli("inspect " + dir.path + "/nothing");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("does not exist"), std::string::npos);
}

TEST(Config, RefusesUnknownArchitecturesByName) {
    nlohmann::json j = {{"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", 10}};
    try {
        ModelConfig::parse(j, "config.json");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("GPT2LMHeadModel"), std::string::npos);
    }
    nlohmann::json m = {{"model_type", "falcon"}};
    EXPECT_THROW(ModelConfig::parse(m, "config.json"), Error);
}

TEST(Config, ReadsTheDemoModel) {
    ModelConfig c = ModelConfig::load(demo_model_dir() + "/config.json");
    EXPECT_EQ(c.kind, ModelKind::Dense);
    EXPECT_EQ(c.hidden_size, 192);
    EXPECT_EQ(c.intermediate_size, 768);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.head_dim, 32);
    Checkpoint ck = Checkpoint::open(demo_model_dir());
    EXPECT_EQ(ck.main_dtype(), DType::BF16);
}
