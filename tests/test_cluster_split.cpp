// Clustering split: a tiny synthetic LLaMA whose up_proj rows hold planted
// clusters, the real stories260K checkpoint (skipped when absent), and input
// validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/tensor_names.h"
#include "split/cluster_split.h"
#include "test_util.h"

using namespace moefy;

namespace {

constexpr int kH = 16, kI = 48, kL = 2, kV = 32, kGroups = 4;

// Writes a dense LLaMA (f32) to `dir`. up_proj row n of layer l lies near one of
// kGroups random directions (group[l][n]), scaled by a random factor so that only
// the direction, not the norm, identifies the group; all other weights are noise.
std::vector<std::vector<int>> write_planted_llama(const std::string& dir) {
    Rng rng(2024);
    std::vector<std::vector<int>> group(kL);
    std::map<std::string, std::vector<float>> data;
    std::vector<TensorSpec> specs;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
        specs.push_back({name, DType::F32, shape});
        data[name] = std::move(v);
    };
    auto noise = [&](size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = float(0.02 * rng.normal());
        return v;
    };
    add(names::embed(), {kV, kH}, noise(size_t(kV) * kH));
    for (int l = 0; l < kL; ++l) {
        add(names::attn(l, "q"), {kH, kH}, noise(size_t(kH) * kH));
        add(names::attn(l, "k"), {kH, kH}, noise(size_t(kH) * kH));
        add(names::attn(l, "v"), {kH, kH}, noise(size_t(kH) * kH));
        add(names::attn(l, "o"), {kH, kH}, noise(size_t(kH) * kH));
        add(names::input_norm(l), {kH}, std::vector<float>(kH, 1.0f));
        add(names::post_norm(l), {kH}, std::vector<float>(kH, 1.0f));
        add(names::dense_ffn(l, "gate"), {kI, kH}, noise(size_t(kI) * kH));
        std::vector<double> dirs(size_t(kGroups) * kH);
        for (auto& x : dirs) x = rng.normal();
        for (int n = 0; n < kI; ++n) group[l].push_back(n % kGroups);
        rng.shuffle(group[l].begin(), group[l].end());
        std::vector<float> up(size_t(kI) * kH);
        for (int n = 0; n < kI; ++n) {
            const double scale = 0.01 + 0.1 * rng.uniform();
            for (int j = 0; j < kH; ++j)
                up[size_t(n) * kH + j] = float(scale * (dirs[size_t(group[l][n]) * kH + j] + 0.1 * rng.normal()));
        }
        add(names::dense_ffn(l, "up"), {kI, kH}, std::move(up));
        add(names::dense_ffn(l, "down"), {kH, kI}, noise(size_t(kH) * kI));
    }
    add(names::final_norm(), {kH}, std::vector<float>(kH, 1.0f));
    add(names::lm_head(), {kV, kH}, noise(size_t(kV) * kH));
    write_safetensors(dir + "/model.safetensors", specs, [&](size_t i, ByteSink& sink) {
        const auto& v = data.at(specs[i].name);
        sink.write(v.data(), v.size() * sizeof(float));
    });
    const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                                {"hidden_size", kH},       {"intermediate_size", kI},
                                {"num_hidden_layers", kL}, {"num_attention_heads", 2},
                                {"num_key_value_heads", 2}, {"vocab_size", kV},
                                {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
                                {"rope_theta", 10000.0},   {"hidden_act", "silu"},
                                {"tie_word_embeddings", false}, {"torch_dtype", "float32"}};
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    return group;
}

// True when every expert holds exactly the neurons of one planted group.
bool matches_groups(const std::vector<std::vector<int32_t>>& experts, const std::vector<int>& group) {
    std::set<int> seen;
    for (const auto& e : experts) {
        if (e.empty()) return false;
        const int g = group[e[0]];
        if (!seen.insert(g).second) return false;
        for (int32_t n : e)
            if (group[n] != g) return false;
    }
    return int(seen.size()) == kGroups;
}

}  // namespace

TEST(ClusterSplit, RecoversPlantedNeuronGroups) {
    TempDir dir;
    const auto group = write_planted_llama(dir.path);
    const Checkpoint ck = Checkpoint::open(dir.path);
    for (const char* metric : {"l2", "cos", "spherical"}) {
        ClusterSplitOptions o;
        o.experts = kGroups;
        o.metric = metric;
        o.restarts = 3;
        std::vector<std::pair<int, int>> calls;
        const ExpertPlan plan = cluster_split(ck, o, [&](int l, int n) { calls.emplace_back(l, n); });
        EXPECT_EQ(calls, (std::vector<std::pair<int, int>>{{1, kL}, {2, kL}}));
        plan.validate_for(ck.config, ffn_fingerprint(*ck.tensors, ck.config), "plan");
        EXPECT_TRUE(plan.is_partition());
        EXPECT_TRUE(plan.equal_widths());
        EXPECT_EQ(plan.method, "cluster");
        EXPECT_EQ(plan.params.at("metric"), metric);
        EXPECT_EQ(plan.params.at("proj"), "up");
        EXPECT_EQ(plan.params.at("seed"), 0);
        EXPECT_EQ(plan.params.at("restarts"), 3);
        ASSERT_EQ(plan.num_layers, kL);
        for (int l = 0; l < kL; ++l) {
            const LayerPlan& lp = plan.layers[l];
            ASSERT_EQ(lp.experts.size(), size_t(kGroups));
            for (const auto& e : lp.experts) {
                EXPECT_EQ(e.size(), size_t(kI / kGroups));
                EXPECT_TRUE(std::is_sorted(e.begin(), e.end()));
            }
            EXPECT_TRUE(matches_groups(lp.experts, group[l])) << metric << " layer " << l;
            EXPECT_GT(lp.stats.at("inertia").get<double>(), 0.0);
        }
    }
    // The gate rows are pure noise: clustering them does not find the up_proj groups.
    ClusterSplitOptions g;
    g.experts = kGroups;
    g.proj = "gate";
    g.restarts = 2;
    const ExpertPlan gp = cluster_split(ck, g);
    EXPECT_FALSE(matches_groups(gp.layers[0].experts, group[0]));
    EXPECT_TRUE(gp.is_partition());
}

TEST(ClusterSplit, UnevenWidthsAndDeterminism) {
    TempDir dir;
    write_planted_llama(dir.path);
    const Checkpoint ck = Checkpoint::open(dir.path);
    ClusterSplitOptions o;
    o.experts = 5;  // 48 = 10 + 10 + 10 + 9 + 9
    o.restarts = 2;
    o.seed = 77;
    const ExpertPlan a = cluster_split(ck, o);
    const ExpertPlan b = cluster_split(ck, o);
    EXPECT_EQ(a.to_json().dump(), b.to_json().dump());
    EXPECT_TRUE(a.is_partition());
    for (const LayerPlan& lp : a.layers) {
        std::vector<int> w;
        for (const auto& e : lp.experts) w.push_back(int(e.size()));
        EXPECT_EQ(w, balanced_widths(kI, 5));
    }
}

TEST(ClusterSplit, RejectsBadOptions) {
    TempDir dir;
    write_planted_llama(dir.path);
    const Checkpoint ck = Checkpoint::open(dir.path);
    ClusterSplitOptions o;
    o.restarts = 1;
    o.experts = 1;
    EXPECT_THROW(cluster_split(ck, o), Error);
    o.experts = kI + 1;
    EXPECT_THROW(cluster_split(ck, o), Error);
    o.experts = 4;
    o.metric = "manhattan";
    EXPECT_THROW(cluster_split(ck, o), Error);
    o.metric = "l2";
    o.proj = "down";
    EXPECT_THROW(cluster_split(ck, o), Error);
    o.proj = "up";
    o.max_iter = 0;
    EXPECT_THROW(cluster_split(ck, o), Error);
}

TEST(SharedClusterSplit, Stories260KBeatsRandomPartition) {
    if (!shared_exists("fixtures/stories260K/model.safetensors")) GTEST_SKIP() << "stories260K fixture absent";
    const Checkpoint ck = Checkpoint::open(shared_path("fixtures/stories260K"));
    const int I = ck.config.intermediate_size, H = ck.config.hidden_size, E = 8;  // 172 = 4*22 + 4*21
    ClusterSplitOptions o;
    o.experts = E;
    const ExpertPlan plan = cluster_split(ck, o);
    EXPECT_TRUE(plan.is_partition());
    ASSERT_EQ(plan.num_layers, ck.config.num_layers);
    // Within-expert sum of squares of the normalised, centred up_proj rows: the
    // clustering must beat a random balanced partition with the same widths.
    for (int l = 0; l < plan.num_layers; ++l) {
        std::vector<float> W = ck.tensors->read_f32(names::dense_ffn(l, "up"));
        for (int n = 0; n < I; ++n) {
            double q = 0;
            for (int j = 0; j < H; ++j) q += double(W[size_t(n) * H + j]) * W[size_t(n) * H + j];
            for (int j = 0; j < H; ++j) W[size_t(n) * H + j] = float(W[size_t(n) * H + j] / std::sqrt(q));
        }
        auto wss = [&](const std::vector<std::vector<int32_t>>& experts) {
            double ss = 0;
            for (const auto& e : experts)
                for (int j = 0; j < H; ++j) {
                    double m = 0;
                    for (int32_t n : e) m += W[size_t(n) * H + j];
                    m /= double(e.size());
                    for (int32_t n : e) ss += std::pow(W[size_t(n) * H + j] - m, 2);
                }
            return ss;
        };
        const LayerPlan& lp = plan.layers[l];
        std::vector<int> w;
        for (const auto& e : lp.experts) w.push_back(int(e.size()));
        EXPECT_EQ(w, balanced_widths(I, E));
        // The labels come from the final exact assignment, so the inertia is at
        // least the within-cluster sum of squares around the clusters' own means.
        const double ours = wss(lp.experts);
        EXPECT_GE(lp.stats.at("inertia").get<double>(), ours * (1 - 1e-3));
        Rng rng(l + 1);
        std::vector<int32_t> perm(static_cast<size_t>(I));
        for (int n = 0; n < I; ++n) perm[n] = n;
        double random_best = 1e300;
        for (int t = 0; t < 20; ++t) {
            rng.shuffle(perm.begin(), perm.end());
            std::vector<std::vector<int32_t>> ex;
            size_t at = 0;
            for (int width : w) {
                ex.emplace_back(perm.begin() + at, perm.begin() + at + width);
                at += width;
            }
            random_best = std::min(random_best, wss(ex));
        }
        EXPECT_LT(ours, 0.97 * random_best) << "layer " << l;
    }
}
