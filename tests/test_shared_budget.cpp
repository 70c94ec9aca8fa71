// Shared experts for every method (the most active neurons, the rest split by
// the method, written by the layouts that hold them, refused by mixtral) and the
// budget search (the cheapest configuration of a planted space, its Pareto front).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "common/error.h"
#include "common/rng.h"
#include "convert/convert.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "pipeline/budget.h"
#include "pipeline/build.h"
#include "split/shared_split.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

// Mean |h| per neuron of every layer over windows, by an independent observer.
struct MassObserver : FfnObserver {
    std::vector<std::vector<double>> sum;
    size_t tokens0 = 0;
    void on_ffn(int l, const FfnActs& a) override {
        if (sum.size() <= size_t(l)) sum.resize(size_t(l) + 1, std::vector<double>(size_t(a.I), 0.0));
        for (int t = 0; t < a.n; ++t)
            for (int i = 0; i < a.I; ++i) sum[size_t(l)][size_t(i)] += std::fabs(a.h[size_t(t) * a.I + i]);
    }
};

}  // namespace

TEST(SharedExperts, RateAndMassPickTheMostActiveNeurons) {
    // 3 tokens over 6 neurons; top = 2 per token for the rate.
    NeuronActivity act(1, 6, 2);
    const float h[3 * 6] = {5, 0, 1, 0, 0, 4,   //
                            0, 0, 1, 0, 3, 2,   //
                            0, 0, 1, 0, 3, 2.5f};
    act.add(0, h, 3);
    const std::vector<double> mass = act.score(0, SharedCriterion::Mass), rate = act.score(0, SharedCriterion::Rate);
    EXPECT_DOUBLE_EQ(mass[0], 5.0 / 3);
    EXPECT_DOUBLE_EQ(rate[5], 1.0);      // in every token's top two
    EXPECT_DOUBLE_EQ(rate[4], 2.0 / 3);  // in two of them
    EXPECT_DOUBLE_EQ(rate[2], 0.0);      // always active, never among the largest
    EXPECT_EQ(top_neurons(mass, 2), (std::vector<int32_t>{5, 4}));
    EXPECT_EQ(top_neurons(rate, 2), (std::vector<int32_t>{5, 4}));
    EXPECT_EQ(top_neurons(mass, 3), (std::vector<int32_t>{5, 4, 0}));
    const SharedChoice c = choose_shared(act, 3, 1, SharedCriterion::Mass);  // widths 2, 2, 2
    EXPECT_EQ(c.groups[0], (std::vector<std::vector<int32_t>>{{4, 5}}));
    EXPECT_EQ(c.rest[0], (std::vector<int32_t>{0, 1, 2, 3}));
    EXPECT_NE(error_of([&] { choose_shared(act, 3, 2, SharedCriterion::Mass); }).find("at most 1"), std::string::npos);
}

TEST(SharedExperts, EveryMethodSplitsTheRestAndLayoutsWriteThem) {
    TempDir tmp;
    TinyModelSpec s;
    s.seed = 11;
    s.intermediate = 32;
    s.max_pos = 128;
    write_tiny_model(tmp.path + "/dense", s);
    Checkpoint dense = Checkpoint::open(tmp.path + "/dense");
    Rng rng(11, 2);
    std::vector<TokenWindow> windows;
    for (int w = 0; w < 6; ++w) {
        TokenWindow t(64);
        for (auto& id : t) id = int32_t(rng.below(uint64_t(s.vocab)));
        windows.push_back(t);
    }
    MassObserver mo;
    {
        auto m = Model::load(dense);
        for (const auto& w : windows) m->forward(w.data(), int(w.size()), 0, nullptr, nullptr, RunHooks(&mo));
    }
    BuildOptions o;
    o.experts = 4;  // width 8
    o.shared = 1;
    o.shared_criterion = SharedCriterion::Mass;  // what the observer below measures
    o.calib_tokens = 100000;
    for (SplitMethod method : {SplitMethod::Random, SplitMethod::Cluster, SplitMethod::Graph}) {
        o.method = method;
        const ExpertPlan p = make_build_plan(dense, o, windows);
        ASSERT_EQ(p.num_experts(), 3) << split_method_name(method);
        ASSERT_EQ(p.num_shared(), 1) << split_method_name(method);
        for (size_t l = 0; l < p.layers.size(); ++l) {
            const LayerPlan& lp = p.layers[l];
            ASSERT_EQ(lp.shared[0].size(), 8u);
            // The shared neurons are the 8 of highest mean |h|.
            const std::vector<int32_t> top = top_neurons(mo.sum[l], 8);
            EXPECT_EQ(std::set<int32_t>(lp.shared[0].begin(), lp.shared[0].end()), std::set<int32_t>(top.begin(), top.end()))
                << split_method_name(method) << " layer " << l;
            std::vector<int32_t> all(lp.shared[0]);
            for (const auto& e : lp.experts) {
                EXPECT_EQ(e.size(), 8u) << split_method_name(method);
                all.insert(all.end(), e.begin(), e.end());
            }
            std::sort(all.begin(), all.end());
            for (int i = 0; i < 32; ++i) EXPECT_EQ(all[size_t(i)], i) << split_method_name(method) << ": not a partition";
        }
        EXPECT_EQ(p.params["shared"], 1);
    }
    o.method = SplitMethod::Random;
    const ExpertPlan p = make_build_plan(dense, o, windows);
    for (MoEFormat f : {MoEFormat::LlamaMoE, MoEFormat::Deepseek}) {
        ConvertOptions co;
        co.format = f;
        co.top_k = 2;
        co.gate = GateKind::Linear;
        const std::string out = tmp.path + "/" + moe_format_name(f);
        const ConvertReport r = convert_checkpoint(dense, p, out, co);
        EXPECT_EQ(r.num_shared, 1);
        EXPECT_EQ(r.layout, f == MoEFormat::LlamaMoE ? "llama-moe-residual" : "deepseek");
        EXPECT_TRUE(Checkpoint::open(out).config.is_moe());
    }
    ConvertOptions co;
    co.format = MoEFormat::Mixtral;
    co.top_k = 2;
    EXPECT_NE(error_of([&] { convert_checkpoint(dense, p, tmp.path + "/mixtral", co); }).find("no always-on experts"),
              std::string::npos);
    BuildOptions b;
    b.model_dir = tmp.path + "/dense";
    b.out_dir = tmp.path + "/b";
    b.format = MoEFormat::Mixtral;
    b.shared = 1;
    b.experts = 4;
    b.calib_data = "x.jsonl";
    EXPECT_NE(error_of([&] { run_build(b); }).find("Mixtral has no always-active experts"), std::string::npos);
}

TEST(BudgetSearch, FindsTheCheapestConfigurationOfAPlantedSpace) {
    BudgetSpace space;
    space.methods = {"a", "b"};
    space.experts = {8};
    space.shared = {0, 1, 2};
    const std::vector<BudgetCandidate> all = budget_candidates(space, 8, true);
    // 2 methods x (7 + 6 + 5 top-k) x 2 refit
    ASSERT_EQ(all.size(), 2u * 18u * 2u);
    // Planted: the ratio falls with top-k and shared, refit and method b help.
    auto planted = [](const BudgetCandidate& c) {
        const double q = c.top_k + 1.3 * c.shared + (c.refit ? 0.8 : 0.0) + (c.method == "b" ? 0.4 : 0.0);
        return 1.0 + 3.0 / (q * q);
    };
    for (double budget : {1.2, 1.5, 2.0, 1.05}) {
        int calls = 0;
        const BudgetSearch s = search_budget(all, budget, [&](const BudgetCandidate& c) {
            ++calls;
            return planted(c);
        });
        // Brute force: the smallest active fraction within the budget, then the lowest ratio.
        const BudgetCandidate* best = nullptr;
        for (const BudgetCandidate& c : all) {
            if (planted(c) > budget) continue;
            if (!best || c.active < best->active - 1e-12 ||
                (std::fabs(c.active - best->active) <= 1e-12 && planted(c) < planted(*best)))
                best = &c;
        }
        ASSERT_TRUE(best) << budget;
        ASSERT_GE(s.winner, 0);
        const BudgetCandidate& w = s.evaluated[size_t(s.winner)];
        EXPECT_DOUBLE_EQ(w.active, best->active) << budget;
        EXPECT_DOUBLE_EQ(w.ratio, planted(*best)) << budget;
        EXPECT_LE(w.ratio, budget);
        EXPECT_EQ(calls, int(s.evaluated.size()));
        EXPECT_LT(calls, int(all.size()) / 2) << "the search should not evaluate most of the space";
        // The front: nothing evaluated beats a front point in both coordinates.
        for (const BudgetCandidate& f : s.evaluated) {
            if (!f.front) continue;
            for (const BudgetCandidate& g : s.evaluated)
                EXPECT_FALSE(g.active <= f.active && g.ratio <= f.ratio && (g.active < f.active || g.ratio < f.ratio));
        }
        EXPECT_TRUE(s.evaluated[size_t(s.winner)].front);
    }
    EXPECT_EQ(search_budget(all, 1.0001, planted).winner, -1);
    // mixtral: no shared experts in the space.
    for (const BudgetCandidate& c : budget_candidates(space, 8, false)) EXPECT_EQ(c.shared, 0);
}
