// Neuron importance (split/importance.h) and `split gradient` on top of it:
// the statistics against a brute-force pass over the backward's activations,
// the file round trip, the rank split (simulated in-process, and mpirun -np 2
// when moefy is built with MPI), and the refusals of bad requests.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/safetensors.h"
#include "common/parallel.h"
#include "model/backward.h"
#include "model/checkpoint.h"
#include "split/importance.h"
#include "test_util.h"
#include "tiny_model.h"
#include "tokenizer/tokenizer.h"

namespace moefy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A tiny random dense model that reads text with the demo model's tokenizer (vocab 4096).
std::string tiny_text_model(const std::string& dir, uint64_t seed = 1, int layers = 2) {
    TinyModelSpec s;
    s.vocab = 4096;
    s.layers = layers;
    s.max_pos = 128;
    s.seed = seed;
    write_tiny_model(dir, s);
    for (const char* f : {"tokenizer.model", "tokenizer_config.json"})
        fs::copy_file(demo_model_dir() + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
    return dir;
}

// K cluster files of the bundled calibration text, two documents each, and summary.json.
std::string cluster_dir(const std::string& dir, int K) {
    fs::create_directories(dir);
    std::ifstream in(std::string(MOEFY_SOURCE_DIR) + "/data/calib.jsonl");
    std::string line;
    for (int k = 0; k < K; ++k) {
        std::ofstream out(dir + "/" + std::to_string(k) + ".jsonl");
        for (int d = 0; d < 2 && std::getline(in, line); ++d) out << line << "\n";
    }
    std::ofstream(dir + "/summary.json") << json{{"clusters", K}}.dump();
    return dir;
}

// Every layer's activations and gradients of one backward run.
struct Capture : BackwardObserver {
    std::vector<FfnGrads> seen;
    std::vector<std::vector<float>> store;
    void on_ffn_grads(const FfnGrads& a) override {
        const size_t n = size_t(a.T) * size_t(a.I);
        FfnGrads c = a;
        for (const float** p : {&c.h, &c.dh, &c.g, &c.dg}) {
            store.emplace_back(*p, *p + n);
            *p = store.back().data();
        }
        seen.push_back(c);
    }
    const FfnGrads& layer(int l) const {  // layers arrive last first
        for (const FfnGrads& a : seen)
            if (a.layer == l) return a;
        throw Error("layer not seen");
    }
};

double kernel(ImportanceKernel k, double x) {
    return k == ImportanceKernel::L1 ? std::fabs(x) : k == ImportanceKernel::L2 ? x * x : x;
}

TEST(ImportanceTest, StatisticsMatchBruteForceForEverySetting) {
    TempDir tmp;
    TinyModelSpec spec;
    spec.layers = 2;
    write_tiny_model(tmp.path, spec);
    Checkpoint ck = Checkpoint::open(tmp.path);
    auto model = Model::load(ck);
    Backprop bp(*model);
    const std::vector<std::vector<int32_t>> windows = {{1, 5, 9, 3, 30, 2, 7}, {4, 4, 8}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
    const int L = spec.layers, I = spec.intermediate;
    // Brute force from the raw activations: per (layer, neuron), per target.
    std::vector<Capture> caps(windows.size());
    for (size_t w = 0; w < windows.size(); ++w)
        bp.run(windows[w].data(), int(windows[w].size()), &caps[w]);
    const int64_t predicted = 6 + 2 + 10;
    for (auto kind : {ImportanceKind::FeatureChange, ImportanceKind::FeatureGrad})
        for (auto kern : {ImportanceKernel::L1, ImportanceKernel::L2, ImportanceKernel::Plain})
            for (auto level : {ImportanceLevel::Sample, ImportanceLevel::Total}) {
                const ImportanceSettings st{kind, kern, level};
                ImportanceSums sums;
                sums.resize(L, I);
                ImportanceAccumulator acc(sums, st);
                for (const auto& w : windows) {
                    bp.run(w.data(), int(w.size()), &acc);
                    sums.tokens += int64_t(w.size()) - 1;
                }
                ASSERT_EQ(sums.tokens, predicted);
                for (ImportanceTarget tg : {ImportanceTarget::Up, ImportanceTarget::Gate})
                    for (int l = 0; l < L; ++l) {
                        const std::vector<double> got = sums.scores(st, tg, l);
                        for (int i = 0; i < I; ++i) {
                            double s = 0;
                            for (const Capture& c : caps) {
                                const FfnGrads& a = c.layer(l);
                                const float* f = tg == ImportanceTarget::Up ? a.h : a.g;
                                const float* g = tg == ImportanceTarget::Up ? a.dh : a.dg;
                                for (int t = 0; t < a.T; ++t) {
                                    const size_t j = size_t(t) * I + size_t(i);
                                    const double x = kind == ImportanceKind::FeatureChange ? double(f[j]) * g[j] : double(g[j]);
                                    s += level == ImportanceLevel::Sample ? kernel(kern, x) : x;
                                }
                            }
                            const double want = (level == ImportanceLevel::Total ? kernel(kern, s) : s) / double(predicted);
                            ASSERT_NEAR(got[size_t(i)], want, 1e-12 * std::fabs(want) + 1e-300)
                                << importance_kind_name(kind) << " " << importance_kernel_name(kern) << " "
                                << importance_level_name(level) << " " << importance_target_name(tg) << " layer " << l
                                << " neuron " << i;
                        }
                    }
            }
    // l1 of feature_change is |h·dh|: never negative, and not all zero.
    ImportanceSums sums;
    sums.resize(L, I);
    ImportanceAccumulator acc(sums, {});
    bp.run(windows[0].data(), int(windows[0].size()), &acc);
    sums.tokens = 6;
    double total = 0;
    for (double x : sums.scores({}, ImportanceTarget::Up, 1)) {
        EXPECT_GE(x, 0.0);
        total += x;
    }
    EXPECT_GT(total, 0.0);
}

TEST(ImportanceTest, FileRoundTripAndTokenCounts) {
    TempDir tmp;
    const std::string model = tiny_text_model(tmp.path + "/model"), data = cluster_dir(tmp.path + "/clusters", 3);
    Checkpoint ck = Checkpoint::open(model);
    auto tok = Tokenizer::from_dir(model);
    ImportanceOptions opt;
    opt.ctx = 48;
    opt.max_tokens_per_cluster = 150;
    opt.settings.level = ImportanceLevel::Total;
    opt.settings.kernel = ImportanceKernel::L2;
    size_t calls = 0, last_done = 0, last_total = 0;
    const ImportanceResult r = compute_importance(ck, *tok, data, opt, {}, [&](size_t d, size_t n) {
        ++calls, last_done = d, last_total = n;
    });
    ASSERT_EQ(r.clusters.size(), 3u);
    EXPECT_EQ(last_done, last_total);
    int64_t windows = 0;
    for (int k = 0; k < 3; ++k) {
        const auto w = make_windows(read_documents(cluster_files(data)[size_t(k)]), *tok, {48, 150, true});
        EXPECT_EQ(r.clusters[size_t(k)].tokens, int64_t(predicted_tokens(w))) << k;
        EXPECT_EQ(r.clusters[size_t(k)].windows, int64_t(w.size())) << k;
        windows += int64_t(w.size());
    }
    EXPECT_EQ(int64_t(calls), windows);

    const std::string path = tmp.path + "/imp.safetensors";
    write_importance(path, r);
    const ImportanceFile f = read_importance(path);
    EXPECT_EQ(f.clusters, 3);
    EXPECT_EQ(f.num_layers, 2);
    EXPECT_EQ(f.intermediate_size, 24);
    EXPECT_EQ(f.hidden_size, 16);
    EXPECT_EQ(f.settings.kernel, ImportanceKernel::L2);
    EXPECT_EQ(f.settings.level, ImportanceLevel::Total);
    EXPECT_EQ(f.ffn_fingerprint, ffn_fingerprint(*ck.tensors, ck.config));
    EXPECT_EQ(f.metadata.at("ctx"), "48");
    for (int k = 0; k < 3; ++k) EXPECT_EQ(f.tokens[size_t(k)], r.clusters[size_t(k)].tokens);
    for (ImportanceTarget t : {ImportanceTarget::Up, ImportanceTarget::Gate})
        for (int l = 0; l < 2; ++l)
            for (int k = 0; k < 3; ++k) {
                const std::vector<double> want = r.clusters[size_t(k)].scores(r.settings, t, l);
                for (int i = 0; i < 24; ++i)
                    ASSERT_EQ(f.scores(t)[size_t(l)][size_t(k)][size_t(i)], double(float(want[size_t(i)])));
            }
    // Readable names in the file.
    SafetensorsFile raw(path);
    EXPECT_EQ(raw.tensors().size(), 3u * 2u * 2u);
    bool found = false;
    for (const TensorView& t : raw.tensors()) found |= t.name == "cluster.2.layers.1.mlp.up_proj";
    EXPECT_TRUE(found);
}

TEST(ImportanceTest, RanksSumToTheSingleProcessResult) {
    TempDir tmp;
    const std::string model = tiny_text_model(tmp.path + "/model"), data = cluster_dir(tmp.path + "/clusters", 2);
    Checkpoint ck = Checkpoint::open(model);
    auto tok = Tokenizer::from_dir(model);
    ImportanceOptions opt;
    opt.ctx = 40;
    opt.max_tokens_per_cluster = 200;
    const ImportanceResult one = compute_importance(ck, *tok, data, opt);
    // Rank 1 runs on one thread: per-window results do not depend on the thread count.
    ImportanceResult r0 = compute_importance(ck, *tok, data, opt, RankGroup::simulated(0, 2));
    ImportanceResult r1;
    {
        ScopedThreadLimit one_thread(1);
        r1 = compute_importance(ck, *tok, data, opt, RankGroup::simulated(1, 2));
    }
    for (size_t k = 0; k < 2; ++k) {
        EXPECT_GT(r0.clusters[k].windows, 0);
        EXPECT_GT(r1.clusters[k].windows, 0);
        r0.clusters[k].add(r1.clusters[k]);
        EXPECT_EQ(r0.clusters[k].tokens, one.clusters[k].tokens);
        EXPECT_EQ(r0.clusters[k].windows, one.clusters[k].windows);
        for (size_t i = 0; i < one.clusters[k].up.size(); ++i) {
            ASSERT_NEAR(r0.clusters[k].up[i], one.clusters[k].up[i], 1e-12 * std::fabs(one.clusters[k].up[i]));
            ASSERT_NEAR(r0.clusters[k].gate[i], one.clusters[k].gate[i], 1e-12 * std::fabs(one.clusters[k].gate[i]));
        }
    }
}

TEST(ImportanceTest, MpirunMatchesOneProcess) {
    if (const std::string why = mpirun_missing(); !why.empty()) GTEST_SKIP() << why;
    TempDir tmp;
    const std::string model = tiny_text_model(tmp.path + "/model"), data = cluster_dir(tmp.path + "/clusters", 3);
    const std::string args = "importance --model " + model + " --data " + data + " --ctx 40 --max-tokens-per-cluster 200";
    const CliResult a = run_cli(args + " --out " + tmp.path + "/one.safetensors");
    ASSERT_EQ(a.status, 0) << a.out;
    const CliResult b = run_cli_mpi(2, args + " --out " + tmp.path + "/two.safetensors");
    ASSERT_EQ(b.status, 0) << b.out;
    const ImportanceFile one = read_importance(tmp.path + "/one.safetensors");
    const ImportanceFile two = read_importance(tmp.path + "/two.safetensors");
    EXPECT_EQ(one.metadata.at("ranks"), "1");
    EXPECT_EQ(two.metadata.at("ranks"), "2");
    EXPECT_EQ(one.tokens, two.tokens);
    EXPECT_EQ(one.metadata.at("windows"), two.metadata.at("windows"));
    for (ImportanceTarget t : {ImportanceTarget::Up, ImportanceTarget::Gate})
        for (int l = 0; l < one.num_layers; ++l)
            for (int k = 0; k < one.clusters; ++k)
                for (int i = 0; i < one.intermediate_size; ++i) {
                    const double x = one.scores(t)[size_t(l)][size_t(k)][size_t(i)];
                    ASSERT_NEAR(two.scores(t)[size_t(l)][size_t(k)][size_t(i)], x, 1e-9 * std::fabs(x))
                        << importance_tensor_name(k, l, t) << "[" << i << "]";
                }
}

// ---- split gradient -------------------------------------------------------------------

// An importance file of K clusters for a tiny model, with scores of a known pattern.
std::string synthetic_importance(const std::string& path, const Checkpoint& ck, int K) {
    ImportanceResult r;
    r.num_layers = ck.config.num_layers;
    r.hidden_size = ck.config.hidden_size;
    r.intermediate_size = ck.config.intermediate_size;
    r.ffn_fingerprint = ffn_fingerprint(*ck.tensors, ck.config);
    r.ctx = 8;
    r.clusters.resize(size_t(K));
    for (int k = 0; k < K; ++k) {
        ImportanceSums& s = r.clusters[size_t(k)];
        s.resize(r.num_layers, r.intermediate_size);
        s.tokens = 100;
        // cluster k prefers neurons i with i % K == k
        for (int l = 0; l < r.num_layers; ++l)
            for (int i = 0; i < r.intermediate_size; ++i) {
                s.sums(ImportanceTarget::Up, l)[i] = (i % K == k ? 50.0 : 1.0) + 0.01 * i + l;
                s.sums(ImportanceTarget::Gate, l)[i] = 1.0 + 0.5 * ((i + k) % 5);
            }
    }
    write_importance(path, r);
    return path;
}

TEST(SplitGradientTest, PlanFromImportanceFile) {
    TempDir tmp;
    const std::string model = tiny_text_model(tmp.path + "/model");
    Checkpoint ck = Checkpoint::open(model);
    const std::string imp = synthetic_importance(tmp.path + "/imp.safetensors", ck, 4);
    const CliResult r = run_cli("split gradient --importance " + imp + " --experts 3 --model " + model + " --plots " +
                                tmp.path + "/plots --out " + tmp.path + "/plan.json");
    ASSERT_EQ(r.status, 0) << r.out;
    const ExpertPlan p = ExpertPlan::load(tmp.path + "/plan.json");
    p.validate_for(ck.config, ffn_fingerprint(*ck.tensors, ck.config), "plan");
    EXPECT_EQ(p.method, "gradient");
    EXPECT_TRUE(p.is_partition());
    EXPECT_EQ(p.params["importance"]["target"], "up_proj");
    // The same plan as gradient_split_plan on the file's scores.
    const ImportanceFile f = read_importance(imp);
    GradientSplitOptions o;
    o.experts = 3;
    o.hidden_size = f.hidden_size;
    o.ffn_fingerprint = f.ffn_fingerprint;
    const ExpertPlan q = gradient_split_plan(f.up, o);
    for (int l = 0; l < p.num_layers; ++l) EXPECT_EQ(p.layers[size_t(l)].experts, q.layers[size_t(l)].experts) << l;
    // Cluster k's favourite neurons (i % 4 == k) land in expert k for k < 3: 6 of its 8 neurons at least.
    for (int e = 0; e < 3; ++e) {
        int own = 0;
        for (int32_t i : p.layers[0].experts[size_t(e)]) own += i % 4 == e;
        EXPECT_EQ(own, 6) << e;
    }
    EXPECT_TRUE(fs::exists(tmp.path + "/plots/overlap_rate/overlap_rate_layer0.png"));
    EXPECT_TRUE(fs::exists(tmp.path + "/plots/total_neurons.txt"));
}

TEST(SplitGradientTest, BadRequestsGiveClearErrors) {
    TempDir tmp;
    const std::string model = tiny_text_model(tmp.path + "/model");
    Checkpoint ck = Checkpoint::open(model);
    const ImportanceFile f = read_importance(synthetic_importance(tmp.path + "/imp.safetensors", ck, 3));
    auto split = [&](int experts, int residual, int size, bool share) {
        GradientSplitOptions o;
        o.experts = experts, o.residual = residual, o.expert_size = size, o.share = share;
        return error_of([&] { gradient_split_from_importance(f, ImportanceTarget::Up, o); });
    };
    EXPECT_NE(split(4, 0, 0, false).find("3 data clusters for 4 experts"), std::string::npos) << split(4, 0, 0, false);
    EXPECT_NE(split(3, 3, 0, false).find("leave no routed experts"), std::string::npos) << split(3, 3, 0, false);
    EXPECT_NE(split(3, 0, 7, false).find("--expert-size 7 does not fit"), std::string::npos) << split(3, 0, 7, false);
    EXPECT_NE(split(3, 1, 13, true).find("--expert-size 13 does not fit"), std::string::npos) << split(3, 1, 13, true);
    EXPECT_NE(split(3, 0, 25, true).find("exceeds the intermediate size 24"), std::string::npos);
    EXPECT_EQ(split(3, 1, 8, false), "(no error)");  // residual + 2 routed of 8 neurons each
    EXPECT_EQ(split(2, 0, 10, true), "(no error)");

    // An importance file from another model: other weights (fingerprint), other shape.
    TempDir other;
    Checkpoint ck2 = Checkpoint::open(tiny_text_model(other.path + "/a", /*seed=*/2));
    EXPECT_NE(error_of([&] { check_importance_for(f, ck2.config, ffn_fingerprint(*ck2.tensors, ck2.config)); })
                  .find("computed for another model"),
              std::string::npos);
    Checkpoint ck3 = Checkpoint::open(tiny_text_model(other.path + "/b", 1, /*layers=*/3));
    EXPECT_NE(error_of([&] { check_importance_for(f, ck3.config, ffn_fingerprint(*ck3.tensors, ck3.config)); })
                  .find("computed for a model of 2 layers"),
              std::string::npos);
    EXPECT_EQ(error_of([&] { check_importance_for(f, ck.config, ffn_fingerprint(*ck.tensors, ck.config)); }), "(no error)");

    // Through the CLI: a message and exit status 1.
    const std::string imp = tmp.path + "/imp.safetensors";
    CliResult r = run_cli("split gradient --importance " + imp + " --experts 3 --model " + other.path + "/a --out " +
                          tmp.path + "/p.json");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("computed for another model"), std::string::npos) << r.out;
    r = run_cli("split gradient --importance " + imp + " --experts 5 --out " + tmp.path + "/p.json");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("3 data clusters for 5 experts"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(tmp.path + "/p.json"));
    // Not an importance file at all.
    EXPECT_NE(error_of([&] { read_importance(model + "/model.safetensors"); }).find("not an importance file"),
              std::string::npos);
}

TEST(ImportanceTest, CliEndToEndAndBadClusterDirectories) {
    TempDir tmp;
    const std::string model = tiny_text_model(tmp.path + "/model"), data = cluster_dir(tmp.path + "/clusters", 3);
    CliResult r = run_cli("importance --model " + model + " --data " + data +
                          " --ctx 32 --max-tokens-per-cluster 64 --kind feature_grad --out " + tmp.path + "/imp.safetensors");
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("3 clusters x 2 layers"), std::string::npos) << r.out;
    r = run_cli("split gradient --importance " + tmp.path + "/imp.safetensors --share --expert-size 12 --model " + model +
                " --out " + tmp.path + "/plan.json");
    ASSERT_EQ(r.status, 0) << r.out;
    const ExpertPlan p = ExpertPlan::load(tmp.path + "/plan.json");
    EXPECT_EQ(p.num_experts(), 3);
    EXPECT_EQ(p.layers[0].experts[0].size(), 12u);

    // summary.json promises a cluster that is not there; no clusters at all; unknown kernel.
    std::ofstream(data + "/summary.json") << json{{"clusters", 4}}.dump();
    r = run_cli("importance --model " + model + " --data " + data + " --ctx 32 --out " + tmp.path + "/x.safetensors");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("3.jsonl is missing"), std::string::npos) << r.out;
    fs::create_directories(tmp.path + "/empty");
    r = run_cli("importance --model " + model + " --data " + tmp.path + "/empty --ctx 32 --out " + tmp.path + "/x.safetensors");
    EXPECT_NE(r.out.find("no cluster files"), std::string::npos) << r.out;
    r = run_cli("importance --model " + model + " --data " + data + " --ctx 32 --kernel l3 --out " + tmp.path + "/x.safetensors");
    EXPECT_NE(r.out.find("importance kernel 'l3'"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(tmp.path + "/x.safetensors"));
}

}  // namespace
}  // namespace moefy
