// Reference comparison: oracle weights follow the model's own weighting rule
// exactly, top-k = E reproduces the dense model (router and oracle alike),
// per-layer FFN error matches a brute-force double computation, the oracle
// picks the largest-mass experts, and mismatched pairs are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "convert/convert.h"
#include "data/documents.h"
#include "eval/compare.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/moe_ffn.h"
#include "model/tensor_names.h"
#include "split/random_split.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

std::vector<TokenWindow> random_windows(int n, int T, int vocab, uint64_t seed) {
    Rng rng(seed, 0);
    std::vector<TokenWindow> w(size_t(n), TokenWindow(size_t(T), 0));
    for (auto& win : w)
        for (auto& t : win) t = int32_t(rng.next() % uint64_t(vocab));
    return w;
}

// A tiny dense model and an MoE made from it by a random split.
struct Pair {
    TempDir tmp;
    std::string dense_dir, moe_dir;
    ExpertPlan plan;
    Pair(int experts, int top_k, bool uniform, MoEFormat fmt = MoEFormat::LlamaMoE, uint64_t seed = 1) {
        TinyModelSpec s;
        s.seed = seed;
        dense_dir = write_tiny_model(tmp.path + "/dense", s);
        Checkpoint ck = Checkpoint::open(dense_dir);
        plan = random_split(ck, experts, 7);
        ConvertOptions o;
        o.format = fmt;
        o.top_k = top_k;
        o.multiply_gate_scores = !uniform;
        o.seed = 3;
        moe_dir = tmp.path + "/moe";
        convert_checkpoint(ck, plan, moe_dir, o);
    }
};

MoEConfig llama_moe_cfg(int E, int k, bool softmax, bool multiply, float scale) {
    MoEConfig m;
    m.num_experts = E;
    m.top_k = k;
    m.gate_softmax = softmax;
    m.multiply_gate_scores = multiply;
    m.score_scale = {scale, scale};
    return m;
}

}  // namespace

// ---- weights and selection ------------------------------------------------------

TEST(CompareOracle, ModelWeightsEqualEngineRoutingOnItsOwnChoice) {
    const int E = 6, k = 3, T = 50;
    std::vector<MoEConfig> cfgs = {llama_moe_cfg(E, k, true, true, 2.0f), llama_moe_cfg(E, k, false, true, 1.5f),
                                   llama_moe_cfg(E, k, true, false, 2.0f)};
    MoEConfig mix = llama_moe_cfg(E, k, true, true, 1.0f);
    mix.softmax_over_all = mix.renormalize_topk = true;
    MoEConfig ds = llama_moe_cfg(E, k, true, true, 1.0f);
    ds.softmax_over_all = true;
    cfgs.push_back(mix);
    cfgs.push_back(ds);
    Rng rng(5, 0);
    std::vector<float> logits(size_t(T) * E);
    for (float& z : logits) z = float(rng.normal());
    for (const MoEConfig& m : cfgs) {
        std::vector<int32_t> sel(size_t(T) * k);
        std::vector<float> w(size_t(T) * k), w2(size_t(T) * k);
        route_tokens(m, 1, logits.data(), T, sel.data(), w.data());
        for (int t = 0; t < T; ++t)
            model_weights(m, 1, logits.data() + size_t(t) * E, E, sel.data() + size_t(t) * k, k, w2.data() + size_t(t) * k);
        for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w2[i], w[i], 1e-6f * std::max(1.0f, std::fabs(w[i])));
    }
}

TEST(CompareOracle, PicksLargestMassWithModelWeights) {
    const int E = 4, k = 2;
    // token 0: mass favours 3 then 1; token 1: ties between 0 and 2 go to the lower index
    const float mass[] = {0.1f, 0.5f, 0.2f, 0.9f, 0.7f, 0.1f, 0.7f, 0.3f};
    const float logits[] = {0.0f, 1.0f, 2.0f, 3.0f, 0.5f, 0.0f, -0.5f, 0.0f};
    int32_t sel[4];
    float w[4];
    MoEConfig m = llama_moe_cfg(E, k, true, true, 2.0f);
    oracle_route(m, 0, logits, mass, 2, E, k, sel, w);
    EXPECT_EQ(sel[0], 3);
    EXPECT_EQ(sel[1], 1);
    EXPECT_EQ(sel[2], 0);
    EXPECT_EQ(sel[3], 2);
    // softmax over the chosen logits (3, 1) and (0.5, -0.5), times 2
    const double a = 1.0 / (1.0 + std::exp(-2.0)), b = 1.0 / (1.0 + std::exp(-1.0));
    EXPECT_NEAR(w[0], 2 * a, 1e-6);
    EXPECT_NEAR(w[1], 2 * (1 - a), 1e-6);
    EXPECT_NEAR(w[2], 2 * b, 1e-6);
    EXPECT_NEAR(w[3], 2 * (1 - b), 1e-6);
    m.multiply_gate_scores = false;
    oracle_route(m, 0, logits, mass, 2, E, k, sel, w);
    for (float x : w) EXPECT_EQ(x, 1.0f);
    EXPECT_THROW(oracle_route(m, 0, logits, mass, 2, E, 5, sel, w), Error);
}

// ---- layer-major evaluation --------------------------------------------------------

// evaluate_perplexity and the MoE quality run layer-major over groups of windows;
// they must be nll_sum window by window, bit for bit, the routing counts included.
// Windows of 24 tokens and a group limit of 16384: one group; 700 windows: two.
TEST(CompareLayerMajor, EqualsNllSumWindowByWindow) {
    Pair p(4, 2, /*uniform=*/false);
    Checkpoint dc = Checkpoint::open(p.dense_dir), mc = Checkpoint::open(p.moe_dir);
    auto dense = Model::load(dc);
    auto moe = Model::load(mc);
    for (int n : {3, 700}) {
        auto windows = random_windows(n, 24, 32, 21);
        for (Model* m : {dense.get(), moe.get()}) {
            double want = 0;
            RoutingStats rs;
            RunHooks hooks;
            hooks.routing = m->config().is_moe() ? &rs : nullptr;
            for (const TokenWindow& w : windows) want += m->nll_sum(w.data(), int(w.size()), hooks);
            const PerplexityResult r = evaluate_perplexity(*m, windows);
            EXPECT_EQ(r.nll_sum, want) << n << " windows, " << (m == dense.get() ? "dense" : "moe");
            EXPECT_EQ(r.tokens, size_t(n) * 23u);
            EXPECT_EQ(r.routing.counts, rs.counts);
        }
        const MoEQuality q = evaluate_moe_quality(*moe, *dense, windows, nullptr);
        double want = 0;
        for (const TokenWindow& w : windows) want += moe->nll_sum(w.data(), int(w.size()));
        EXPECT_EQ(q.ppl.nll_sum, want);
    }
}

// ---- top-k = E is the dense model ---------------------------------------------------

TEST(CompareReference, AllExpertsUniformEqualsDenseForRouterAndOracle) {
    Pair p(4, 4, /*uniform=*/true);
    Checkpoint dc = Checkpoint::open(p.dense_dir), mc = Checkpoint::open(p.moe_dir);
    check_reference_pair(mc, dc);
    auto dense = Model::load(dc);
    auto moe = Model::load(mc);
    auto windows = random_windows(3, 24, 32, 11);
    ReferenceComparison c = compare_with_reference(*moe, *dense, windows, /*oracle=*/true);
    ASSERT_TRUE(c.oracle);
    EXPECT_EQ(c.dense.tokens, 3u * 23u);
    EXPECT_EQ(c.moe.ppl.tokens, c.dense.tokens);
    EXPECT_NEAR(c.moe.ppl.mean_nll(), c.dense.mean_nll(), 1e-5);
    EXPECT_NEAR(c.oracle->ppl.mean_nll(), c.dense.mean_nll(), 1e-5);
    EXPECT_NEAR(c.ppl_ratio(), 1.0, 1e-5);
    ASSERT_EQ(c.moe.layers.size(), 2u);
    for (const MoEQuality* q : {&c.moe, &*c.oracle})
        for (const LayerQuality& l : q->layers) {
            EXPECT_GT(l.err_den, 0.0);
            EXPECT_LT(l.rel_error(), 1e-10);
            EXPECT_EQ(l.tokens, 3 * 24);
            for (double f : l.load()) EXPECT_DOUBLE_EQ(f, 1.0);  // every token uses every expert
            EXPECT_DOUBLE_EQ(l.load_cv(), 0.0);
        }
}

TEST(CompareReference, AllExpertsSoftmaxOracleEqualsOwnRouting) {
    // Softmax weighting at k = E is not the dense model, but the oracle then
    // chooses the same set with the same weights as the router.
    Pair p(4, 4, /*uniform=*/false);
    const Checkpoint dense_ck = Checkpoint::open(p.dense_dir);
    auto dense = Model::load(dense_ck);
    Checkpoint mc = Checkpoint::open(p.moe_dir);
    auto moe = Model::load(mc);
    auto windows = random_windows(2, 20, 32, 12);
    ReferenceComparison c = compare_with_reference(*moe, *dense, windows, true);
    EXPECT_NEAR(c.oracle->ppl.mean_nll(), c.moe.ppl.mean_nll(), 1e-5);
    EXPECT_GT(c.moe.total_rel_error(), 1e-3);  // softmax weights shrink the sum: a real error
    for (size_t l = 0; l < c.moe.layers.size(); ++l)
        EXPECT_NEAR(c.oracle->layers[l].rel_error(), c.moe.layers[l].rel_error(), 1e-6);
}

// ---- FFN error against brute force ----------------------------------------------------

namespace {

struct CaptureX : FfnObserver {
    std::vector<std::vector<float>> xs;  // layer 0 input of each forward
    bool wants(int l) const override { return l == 0; }
    void on_ffn(int, const FfnActs& a) override { xs.emplace_back(a.x, a.x + size_t(a.T) * a.H); }
};

// Token t goes to expert t % E alone, weight 1.
struct RoundRobin : RouteOverride {
    void route(const RouteInput& in, int32_t* sel, float* w) override {
        for (int t = 0; t < in.T; ++t) sel[t] = t % in.E, w[t] = 1.0f;
    }
};

const float* f32(const Checkpoint& c, const std::string& name) {
    return reinterpret_cast<const float*>(c.tensors->get(name).data);
}

}  // namespace

TEST(CompareReference, FfnErrorMatchesBruteForceOnFirstLayer) {
    const int E = 4;
    Pair p(E, 1, /*uniform=*/true);
    Checkpoint dc = Checkpoint::open(p.dense_dir), mc = Checkpoint::open(p.moe_dir);
    auto dense = Model::load(dc);
    auto moe = Model::load(mc);
    auto windows = random_windows(2, 17, 32, 13);
    CaptureX cap;
    for (const auto& w : windows) dense->forward(w.data(), int(w.size()), 0, nullptr, nullptr, &cap);
    RoundRobin rr;
    MoEQuality q = evaluate_moe_quality(*moe, *dense, windows, &rr);

    // Layer 0 sees the same input in both models (embedding and attention are copied).
    const int H = 16, I = 24;
    const float* G = f32(dc, names::dense_ffn(0, "gate"));
    const float* U = f32(dc, names::dense_ffn(0, "up"));
    const float* D = f32(dc, names::dense_ffn(0, "down"));
    std::vector<int> owner(I, -1);
    for (int e = 0; e < E; ++e)
        for (int n : p.plan.layers[0].experts[size_t(e)]) owner[size_t(n)] = e;
    double num = 0, den = 0;
    for (const auto& x : cap.xs) {
        const int T = int(x.size()) / H;
        for (int t = 0; t < T; ++t) {
            std::vector<double> yd(H, 0.0), ym(H, 0.0);
            for (int n = 0; n < I; ++n) {
                double g = 0, u = 0;
                for (int i = 0; i < H; ++i) g += double(G[n * H + i]) * x[size_t(t) * H + i], u += double(U[n * H + i]) * x[size_t(t) * H + i];
                const double h = g / (1 + std::exp(-g)) * u;
                for (int c = 0; c < H; ++c) {
                    yd[size_t(c)] += double(D[c * I + n]) * h;
                    if (owner[size_t(n)] == t % E) ym[size_t(c)] += double(D[c * I + n]) * h;
                }
            }
            for (int c = 0; c < H; ++c) num += (ym[size_t(c)] - yd[size_t(c)]) * (ym[size_t(c)] - yd[size_t(c)]), den += yd[size_t(c)] * yd[size_t(c)];
        }
    }
    ASSERT_EQ(q.layers.size(), 2u);
    EXPECT_NEAR(q.layers[0].err_den, den, 1e-4 * den);
    EXPECT_NEAR(q.layers[0].err_num, num, 1e-4 * num);
    EXPECT_GT(q.layers[0].rel_error(), 0.1);  // one expert of four leaves most of the output out
    // Round robin over 17 tokens: experts get 5, 4, 4, 4 tokens per window.
    EXPECT_EQ(q.layers[0].counts, (std::vector<int64_t>{10, 8, 8, 8}));
    EXPECT_EQ(q.layers[0].tokens, 34);
    const double mean = 0.25, sd = std::sqrt((3 * std::pow(8.0 / 34 - mean, 2) + std::pow(10.0 / 34 - mean, 2)) / 4);
    EXPECT_NEAR(q.layers[0].load_cv(), sd / mean, 1e-12);
}

namespace {

// Wraps the oracle and checks every choice against the masses it was given.
struct OracleSpy : RouteOverride {
    OracleRoute inner;
    int tokens = 0, bad = 0;
    explicit OracleSpy(const MoEConfig& m) : inner(m) {}
    bool wants_mass() const override { return true; }
    void route(const RouteInput& in, int32_t* sel, float* w) override {
        inner.route(in, sel, w);
        for (int t = 0; t < in.T; ++t, ++tokens) {
            const float* m = in.mass + size_t(t) * in.E;
            float lo = INFINITY;
            for (int j = 0; j < in.k; ++j) lo = std::min(lo, m[sel[size_t(t) * in.k + j]]);
            for (int e = 0; e < in.E; ++e) {
                const bool chosen = std::count(sel + size_t(t) * in.k, sel + size_t(t + 1) * in.k, e) > 0;
                if (!chosen && m[e] > lo) ++bad;
            }
        }
    }
};

}  // namespace

TEST(CompareReference, OracleChoosesLargestMassExpertsAndBeatsRandomRouter) {
    Pair p(4, 2, /*uniform=*/true);
    const Checkpoint dense_ck = Checkpoint::open(p.dense_dir);
    auto dense = Model::load(dense_ck);
    Checkpoint mc = Checkpoint::open(p.moe_dir);
    auto moe = Model::load(mc);
    auto windows = random_windows(3, 20, 32, 14);
    OracleSpy spy(mc.config.moe);
    MoEQuality q = evaluate_moe_quality(*moe, *dense, windows, &spy);
    EXPECT_EQ(spy.tokens, 3 * 20 * 2);  // every token of every window, in both layers
    EXPECT_EQ(spy.bad, 0);
    MoEQuality own = evaluate_moe_quality(*moe, *dense, windows);
    // Picking the two largest of four outputs leaves less out than a random router
    // in the first layer, where both runs see the same input.
    EXPECT_LT(q.layers[0].rel_error(), own.layers[0].rel_error());
    // The load sums to k per token.
    for (const LayerQuality& l : q.layers) {
        double s = 0;
        for (double f : l.load()) s += f;
        EXPECT_NEAR(s, 2.0, 1e-12);
    }
}

// ---- refusals -----------------------------------------------------------------------------

TEST(CompareReference, RefusesMismatchedPairs) {
    Pair p(4, 2, true);
    Pair other(4, 2, true, MoEFormat::LlamaMoE, /*seed=*/2);
    Checkpoint dc = Checkpoint::open(p.dense_dir), mc = Checkpoint::open(p.moe_dir);
    Checkpoint od = Checkpoint::open(other.dense_dir);
    auto msg = [](const std::function<void()>& f) {
        try {
            f();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(msg([&] { check_reference_pair(mc, od); }).find("model.embed_tokens.weight differs"), std::string::npos);
    EXPECT_NE(msg([&] { check_reference_pair(dc, dc); }).find("is a dense model"), std::string::npos);
    EXPECT_NE(msg([&] { check_reference_pair(mc, mc); }).find("the reference must be the dense model"), std::string::npos);
    auto dense = Model::load(dc);
    auto windows = random_windows(1, 1, 32, 1);  // one token: nothing to predict
    auto moe = Model::load(mc);
    EXPECT_THROW(evaluate_moe_quality(*moe, *dense, windows), Error);
}

TEST(CompareReference, JsonCarriesEveryMeasurement) {
    Pair p(4, 2, false, MoEFormat::Mixtral);
    const Checkpoint dense_ck = Checkpoint::open(p.dense_dir);
    auto dense = Model::load(dense_ck);
    Checkpoint mc = Checkpoint::open(p.moe_dir);
    auto moe = Model::load(mc);
    auto windows = random_windows(2, 16, 32, 15);
    ReferenceComparison c = compare_with_reference(*moe, *dense, windows, true);
    nlohmann::json j = comparison_json(c);
    EXPECT_EQ(j["tokens"], 30);
    EXPECT_DOUBLE_EQ(j["dense"]["perplexity"].get<double>(), c.dense.perplexity());
    EXPECT_DOUBLE_EQ(j["moe"]["perplexity"].get<double>(), c.moe.ppl.perplexity());
    EXPECT_DOUBLE_EQ(j["oracle"]["perplexity"].get<double>(), c.oracle->ppl.perplexity());
    EXPECT_DOUBLE_EQ(j["ppl_ratio"].get<double>(), c.moe.ppl.perplexity() / c.dense.perplexity());
    ASSERT_EQ(j["moe"]["layers"].size(), 2u);
    EXPECT_EQ(j["moe"]["layers"][1]["load"].size(), 4u);
    EXPECT_DOUBLE_EQ(j["moe"]["layers"][1]["ffn_rel_error"].get<double>(), c.moe.layers[1].rel_error());
    EXPECT_DOUBLE_EQ(j["moe"]["layers"][1]["load_cv"].get<double>(), c.moe.layers[1].load_cv());
}

// ---- the CLI on the demo model ------------------------------------------------------------

TEST(CompareCli, EvalReferenceOracleAtAllExpertsEqualsDense) {
    const std::string demo = demo_model_dir();
    REQUIRE_REPO_FILE(demo + "/model.safetensors");
    TempDir t;
    const std::string plan = t.path + "/plan.json", moe = t.path + "/moe";
    ASSERT_EQ(run_cli(fmt::format("split random --model {} --experts 4 --out {}", demo, plan)).status, 0);
    CliResult c = run_cli(fmt::format("convert --model {} --plan {} --top-k 4 --no-multiply-gate-scores --out {}", demo, plan, moe));
    ASSERT_EQ(c.status, 0) << c.out;
    const std::string data = std::string(MOEFY_SOURCE_DIR) + "/data/eval.jsonl";
    c = run_cli(fmt::format("eval --model {} --reference {} --data {} --max-tokens 300 --oracle --json 2>/dev/null", moe, demo, data));
    ASSERT_EQ(c.status, 0) << c.out;
    nlohmann::json j = nlohmann::json::parse(c.out);
    EXPECT_EQ(j["tokens"], 300);
    EXPECT_NEAR(j["ppl_ratio"].get<double>(), 1.0, 1e-4);
    EXPECT_NEAR(j["oracle_ppl_ratio"].get<double>(), 1.0, 1e-4);
    for (const auto& l : j["moe"]["layers"]) EXPECT_LT(l["ffn_rel_error"].get<double>(), 1e-8);
    // Text output names what it measured; --oracle alone is refused.
    c = run_cli(fmt::format("eval --model {} --reference {} --data {} --max-tokens 100", moe, demo, data));
    ASSERT_EQ(c.status, 0) << c.out;
    EXPECT_NE(c.out.find("perplexity   dense"), std::string::npos) << c.out;
    EXPECT_NE(c.out.find("layer  5"), std::string::npos) << c.out;
    c = run_cli(fmt::format("eval --model {} --data {} --oracle", moe, data));
    EXPECT_EQ(c.status, 1);
    EXPECT_NE(c.out.find("--oracle needs --reference"), std::string::npos) << c.out;
}
