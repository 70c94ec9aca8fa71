// Gradient split (LLaMA-MoE §5–§6), overlap statistics and the PNG plots.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"
#include "eval/overlap_plots.h"
#include "io/png.h"
#include "split/gradient_split.h"
#include "test_util.h"

using namespace moefy;
using Scores = std::vector<std::vector<double>>;

namespace {

Scores negated(const Scores& s) {
    Scores n = s;
    for (auto& v : n)
        for (auto& x : v) x = -x;
    return n;
}

// Random scores; with `levels` > 0 they are drawn from that many values, so ties are common.
Scores random_scores(Rng& rng, int E, int I, int levels = 0) {
    Scores s(static_cast<size_t>(E), std::vector<double>(static_cast<size_t>(I)));
    for (auto& v : s)
        for (auto& x : v) x = levels > 0 ? double(rng.below(uint64_t(levels))) : rng.uniform();
    return s;
}

bool is_partition(const ExpertSets& ex, int I, int expert_size) {
    std::vector<int> seen(size_t(I), 0);
    for (const auto& e : ex) {
        if (int(e.size()) != expert_size) return false;
        for (int32_t n : e) {
            if (n < 0 || n >= I) return false;
            ++seen[size_t(n)];
        }
    }
    return std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; });
}

// Best total over all partitions into E equal parts, by enumerating labelings.
double brute_force_best(const Scores& s, int expert_size, bool max) {
    const int E = int(s.size()), I = int(s[0].size());
    int64_t combos = 1;
    for (int i = 0; i < I; ++i) combos *= E;
    double best = max ? -INFINITY : INFINITY;
    for (int64_t code = 0; code < combos; ++code) {
        std::vector<int> cnt(size_t(E), 0);
        double t = 0;
        int64_t c = code;
        for (int n = 0; n < I; ++n, c /= E) {
            const int e = int(c % E);
            ++cnt[size_t(e)];
            t += s[size_t(e)][size_t(n)];
        }
        if (std::any_of(cnt.begin(), cnt.end(), [&](int k) { return k != expert_size; })) continue;
        best = max ? std::max(best, t) : std::min(best, t);
    }
    return best;
}

template <typename F>
void expect_error(F f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "no moefy::Error; expected one mentioning '" << needle << "'";
    } catch (const moefy::Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

// §5.2 / §6 worked examples.
const Scores kS52 = {{.9, .1, .5, .7, .3, .2}, {.8, .6, .4, .95, .05, .15}};
const Scores kS6 = {{.9, .1, .5, .7, .3, .2, .65, .05},
                    {.8, .6, .4, .95, .05, .15, .55, .35},
                    {.2, .3, .9, .85, .1, .6, .75, .45}};

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reference's worked examples

TEST(GradientSplit, GreedyWorkedExample) {
    // labels [0,1,0,1,0,1]
    const ExpertSets want = {{0, 2, 4}, {1, 3, 5}};
    EXPECT_EQ(greedy_independent_split(kS52, 3, Criterion::Max), want);
    EXPECT_DOUBLE_EQ(split_total(kS52, want), .9 + .5 + .3 + .6 + .95 + .15);
}

TEST(GradientSplit, GreedyTiesGoToLaterExpertAndLowerNeuron) {
    // All equal: each step every expert offers its lowest free id; the later expert wins
    // the tie, so expert 1 fills up with 0, 1 first.
    const Scores s = {{1, 1, 1, 1}, {1, 1, 1, 1}};
    EXPECT_EQ(greedy_independent_split(s, 2, Criterion::Max), (ExpertSets{{2, 3}, {0, 1}}));
    EXPECT_EQ(greedy_independent_split(s, 2, Criterion::Min), (ExpertSets{{2, 3}, {0, 1}}));
    EXPECT_EQ(rank_neurons({3, 5, 3, 5, 1}, Criterion::Max), (std::vector<int32_t>{1, 3, 0, 2, 4}));
    EXPECT_EQ(rank_neurons({3, 5, 3, 5, 1}, Criterion::Min), (std::vector<int32_t>{4, 0, 2, 1, 3}));
}

TEST(GradientSplit, SharedWorkedExample) {
    EXPECT_EQ(shared_split(kS52, 4, Criterion::Max), (ExpertSets{{0, 3, 2, 4}, {3, 0, 1, 2}}));
    EXPECT_EQ(shared_split(kS52, 6, Criterion::Max)[1], (std::vector<int32_t>{3, 0, 1, 2, 5, 4}));
    EXPECT_EQ(shared_split(kS52, 2, Criterion::Min), (ExpertSets{{1, 5}, {4, 5}}));
}

TEST(GradientSplit, ResidualWorkedExample) {
    // E_moe = 3, R = 1: the reference loads 4 cluster vectors and uses only the first 3.
    Scores s = kS6;
    s.push_back({9, 9, 9, 9, 9, 9, 9, 9});
    for (int pass = 0; pass < 2; ++pass) {
        auto plain = residual_split(s, 3, 1, 2, Criterion::Max, false);
        EXPECT_EQ(plain.residual, (ExpertSets{{3, 0}}));
        EXPECT_EQ(plain.routed, (ExpertSets{{4, 5}, {1, 7}, {2, 6}}));
        auto shared = residual_split(s, 3, 1, 2, Criterion::Max, true);
        EXPECT_EQ(shared.residual, (ExpertSets{{3, 0}}));
        EXPECT_EQ(shared.routed, (ExpertSets{{6, 2}, {1, 6}, {2, 6}}));
        s[3] = {0, 1, 2, 3, 4, 5, 6, 7};  // the ignored vector changes nothing
    }
}

TEST(GradientSplit, ResidualTwoChunksWorkedByHand) {
    // R = 2, shared, worked by hand: round 1 tops a[0,3] b[3,0] c[2,3] -> 3 (3 votes);
    // round 2 tops a[0,6] b[0,1] c[2,6] -> 0, 6 (2 votes each, both fit);
    // round 3 tops a[2,4] b[1,2] c[2,5] -> 2 (3 votes). Residual [3,0,6,2] in two chunks.
    Scores s = kS6;
    s.push_back(std::vector<double>(8, 0.0));
    s.push_back(std::vector<double>(8, 0.0));
    auto r = residual_split(s, 3, 2, 2, Criterion::Max, true);
    EXPECT_EQ(r.residual, (ExpertSets{{3, 0}, {6, 2}}));
    EXPECT_EQ(r.routed, (ExpertSets{{4, 5}, {1, 7}, {5, 7}}));
}

TEST(GradientSplit, MinCriterionIsMaxOfNegatedScores) {
    Rng rng(7);
    for (int levels : {0, 3}) {
        Scores s = random_scores(rng, 4, 24, levels);
        Scores n = negated(s);
        EXPECT_EQ(greedy_independent_split(s, 6, Criterion::Min), greedy_independent_split(n, 6, Criterion::Max));
        EXPECT_EQ(shared_split(s, 9, Criterion::Min), shared_split(n, 9, Criterion::Max));
        for (bool share : {false, true}) {
            auto a = residual_split(s, 3, 1, 6, Criterion::Min, share);
            auto b = residual_split(n, 3, 1, 6, Criterion::Max, share);
            EXPECT_EQ(a.residual, b.residual);
            EXPECT_EQ(a.routed, b.routed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Optimal assignment

TEST(GradientSplit, OptimalBeatsGreedyOnHandCase) {
    // Greedy gives neuron 0 (10) to expert 0 and leaves expert 1 with 0; swapping gives 8 + 9.
    const Scores s = {{10, 8}, {9, 0}};
    EXPECT_EQ(greedy_independent_split(s, 1, Criterion::Max), (ExpertSets{{0}, {1}}));
    EXPECT_EQ(optimal_independent_split(s, 1, Criterion::Max), (ExpertSets{{1}, {0}}));
    EXPECT_DOUBLE_EQ(split_total(s, optimal_independent_split(s, 1, Criterion::Max)), 17.0);
    EXPECT_DOUBLE_EQ(split_total(s, optimal_independent_split(s, 1, Criterion::Min)), 10.0);
}

TEST(GradientSplit, OptimalMatchesBruteForce) {
    Rng rng(11);
    struct Case {
        int E, I;
    };
    for (Case c : {Case{2, 2}, Case{2, 4}, Case{2, 6}, Case{2, 8}, Case{3, 6}, Case{3, 9}, Case{4, 8}}) {
        for (int trial = 0; trial < 12; ++trial) {
            const int es = c.I / c.E;
            Scores s = random_scores(rng, c.E, c.I, trial % 3 == 0 ? 3 : 0);
            for (Criterion cr : {Criterion::Max, Criterion::Min}) {
                const bool max = cr == Criterion::Max;
                auto opt = optimal_independent_split(s, es, cr);
                ASSERT_TRUE(is_partition(opt, c.I, es));
                for (const auto& e : opt) EXPECT_TRUE(std::is_sorted(e.begin(), e.end()));
                EXPECT_NEAR(split_total(s, opt), brute_force_best(s, es, max), 1e-12)
                    << "E=" << c.E << " I=" << c.I << " trial " << trial << " " << criterion_name(cr);
            }
        }
    }
}

TEST(GradientSplit, OptimalNeverWorseThanGreedy) {
    Rng rng(5);
    int strictly_better = 0;
    for (int trial = 0; trial < 16; ++trial) {
        const int E = 2 + trial % 7, es = 8 + trial, I = E * es;
        Scores s = random_scores(rng, E, I, trial % 4 == 0 ? 5 : 0);
        for (Criterion cr : {Criterion::Max, Criterion::Min}) {
            auto g = greedy_independent_split(s, es, cr);
            auto o = optimal_independent_split(s, es, cr);
            ASSERT_TRUE(is_partition(g, I, es));
            ASSERT_TRUE(is_partition(o, I, es));
            const double tg = split_total(s, g), to = split_total(s, o);
            if (cr == Criterion::Max) {
                EXPECT_GE(to, tg - 1e-12);
            } else {
                EXPECT_LE(to, tg + 1e-12);
            }
            strictly_better += std::fabs(to - tg) > 1e-9;
        }
        // Residual, not shared: the optimum over the non-residual neurons, same residual.
        if (E >= 3) {
            auto g = residual_split(s, E - 1, 1, es, Criterion::Max, false, Assign::Greedy);
            auto o = residual_split(s, E - 1, 1, es, Criterion::Max, false, Assign::Optimal);
            EXPECT_EQ(g.residual, o.residual);
            const ScoreSpan routed = ScoreSpan(s).first(size_t(E - 1));
            EXPECT_GE(split_total(routed, o.routed), split_total(routed, g.routed) - 1e-12);
            ExpertSets all = o.routed;
            all.push_back(o.residual[0]);
            EXPECT_TRUE(is_partition(all, I, es));
        }
    }
    EXPECT_GT(strictly_better, 8);  // greedy is really suboptimal on random data
}

TEST(GradientSplit, OptimalIsExactBelowTheQuantisationStep) {
    // Costs are quantised to 2^40 steps of max|s| before the network simplex. Here the
    // quantised problem strictly prefers {0},{1} (N + 2 steps against N + 1), but the
    // true scores prefer {1},{0} by a quarter step; cycle cancelling must find it.
    const double N = 1e6, q = N / std::ldexp(1.0, 40);
    const Scores s = {{N, 1.4 * q}, {N + 0.45 * q, 1.6 * q}};
    EXPECT_EQ(optimal_independent_split(s, 1, Criterion::Max), (ExpertSets{{1}, {0}}));
    EXPECT_EQ(optimal_independent_split(negated(s), 1, Criterion::Min), (ExpertSets{{1}, {0}}));
}

// ---------------------------------------------------------------------------------------------
// Overlap statistics

TEST(GradientSplit, OverlapStatsHandMade) {
    // Memberships: n0 {0}, n1 {0,1}, n2 {0,1,2}, n3 {1}, n4 {2}, n5 none.
    const ExpertSets ex = {{0, 1, 2}, {3, 2, 1}, {4, 2}};
    OverlapStats st = overlap_stats(ex, 6);
    EXPECT_EQ(st.rate, (std::vector<std::vector<double>>{{1, .5, .25}, {.5, 1, .25}, {.25, .25, 1}}));
    EXPECT_EQ(st.count, (std::vector<std::vector<int>>{{1, 1, 1}, {1, 1, 1}, {1, 0, 1}}));
    EXPECT_EQ(st.sizes, (std::vector<int>{3, 3, 2}));
    EXPECT_EQ(st.distinct_neurons, 5);

    // A partition: identity rates, every neuron used by exactly one expert.
    OverlapStats p = overlap_stats({{0, 2, 4}, {1, 3, 5}}, 6);
    EXPECT_EQ(p.rate, (std::vector<std::vector<double>>{{1, 0}, {0, 1}}));
    EXPECT_EQ(p.count, (std::vector<std::vector<int>>{{3, 0}, {3, 0}}));
    EXPECT_EQ(p.distinct_neurons, 6);

    // JSON round trip; bits past the first 64-bit word count too.
    OverlapStats big = overlap_stats({{0, 63, 64, 129}, {64, 129, 130}}, 131);
    EXPECT_DOUBLE_EQ(big.rate[0][1], 2.0 / 5.0);
    OverlapStats back = OverlapStats::from_json(big.to_json(), 131, "test");
    EXPECT_EQ(back.rate, big.rate);
    EXPECT_EQ(back.count, big.count);
    EXPECT_EQ(back.distinct_neurons, 5);
    expect_error([] { overlap_stats({{0, 6}}, 6); }, "neuron 6 outside [0, 6)");
}

// ---------------------------------------------------------------------------------------------
// Bad inputs

TEST(GradientSplit, BadInputsThrow) {
    expect_error([] { greedy_independent_split(kS52, 2, Criterion::Max); }, "must equal the intermediate size 6");
    expect_error([] { optimal_independent_split(kS52, 4, Criterion::Max); }, "must equal the intermediate size 6");
    expect_error([] { shared_split(kS52, 7, Criterion::Max); }, "between 1 and the intermediate size 6");
    expect_error([] { shared_split(kS52, 0, Criterion::Max); }, "between 1 and the intermediate size 6");
    expect_error([] { greedy_independent_split(Scores{{1, 2}, {1, 2, 3}}, 1, Criterion::Max); },
                 "score vector 1 has 3 entries");
    expect_error([] { shared_split(Scores{{1, NAN}}, 1, Criterion::Max); }, "not finite");
    expect_error([] { greedy_independent_split(Scores{}, 1, Criterion::Max); }, "at least one expert");
    // Residual: clusters, sizes, and a residual count that leaves no routed experts.
    expect_error([] { residual_split(kS6, 3, 1, 2, Criterion::Max, false); }, "3 score vectors (data clusters) for 4");
    Scores s4 = kS6;
    s4.push_back(kS6[0]);
    expect_error([&] { residual_split(s4, 3, 1, 3, Criterion::Max, false); }, "must equal the intermediate size 8");
    expect_error([&] { residual_split(s4, 3, 1, 5, Criterion::Max, true); }, "every routed expert is full");
    expect_error([&] { residual_split(s4, 0, 4, 2, Criterion::Max, true); }, "at least one must be routed");
    expect_error([&] { residual_split(s4, 3, 0, 2, Criterion::Max, true); }, "at least one residual expert");
    expect_error([] { parse_criterion("mean"); }, "criterion 'mean'");
    expect_error([] { parse_assign("best"); }, "assignment 'best'");

    const std::vector<Scores> layers = {kS6, kS6};
    GradientSplitOptions o;
    o.experts = 4;
    o.expert_size = 2;
    expect_error([&] { gradient_split_plan(layers, o); }, "3 score vectors (data clusters) per layer for 4 experts");
    o.experts = 3;
    o.residual = 3;
    expect_error([&] { gradient_split_plan(layers, o); }, "leave no routed experts");
    o.residual = 0;
    expect_error([&] { gradient_split_plan(layers, o); }, "layer 0: gradient split: independent split");
    o.expert_size = 0;
    expect_error([&] { gradient_split_plan(layers, o); }, "3 experts do not divide the intermediate size 8");
    std::vector<Scores> ragged = layers;
    ragged[1][2].pop_back();
    o.experts = 2;
    expect_error([&] { gradient_split_plan(ragged, o); }, "layer 1 cluster 2 has 7 scores");
    ragged = layers;
    ragged[1].pop_back();
    expect_error([&] { gradient_split_plan(ragged, o); }, "layer 1 has 2 score vectors");
}

// ---------------------------------------------------------------------------------------------
// Whole plan

TEST(GradientSplit, PlanIndependentAndResidual) {
    Rng rng(3);
    std::vector<Scores> layers;
    for (int l = 0; l < 3; ++l) layers.push_back(random_scores(rng, 5, 40));
    GradientSplitOptions o;
    o.experts = 4;
    o.hidden_size = 16;
    o.ffn_fingerprint = "abc";
    ExpertPlan p = gradient_split_plan(layers, o);
    EXPECT_EQ(p.method, "gradient");
    EXPECT_EQ(p.num_layers, 3);
    EXPECT_EQ(p.intermediate_size, 40);
    EXPECT_EQ(p.hidden_size, 16);
    EXPECT_EQ(p.ffn_fingerprint, "abc");
    EXPECT_EQ(p.params["expert_size"], 10);
    EXPECT_EQ(p.params["clusters"], 5);
    EXPECT_EQ(p.params["criterion"], "max");
    EXPECT_EQ(p.params["assign"], "greedy");
    EXPECT_TRUE(p.is_partition());
    p.validate("plan");
    double gsum = 0, osum = 0;
    for (int l = 0; l < 3; ++l) {
        const ScoreSpan s = ScoreSpan(layers[size_t(l)]).first(4);  // the 5th cluster is not used
        const auto& lp = p.layers[size_t(l)];
        EXPECT_EQ(lp.experts, greedy_independent_split(s, 10, Criterion::Max));
        const double g = lp.stats["greedy_total"], opt = lp.stats["optimal_total"];
        EXPECT_DOUBLE_EQ(g, split_total(s, lp.experts));
        EXPECT_DOUBLE_EQ(opt, split_total(s, optimal_independent_split(s, 10, Criterion::Max)));
        EXPECT_GE(opt, g);
        EXPECT_EQ(lp.stats["distinct_neurons"], 40);
        EXPECT_EQ(lp.stats["overlap"]["count"][2].get<std::vector<int>>(), (std::vector<int>{10, 0, 0, 0}));
        gsum += g, osum += opt;
    }
    EXPECT_DOUBLE_EQ(double(p.stats["greedy_total"]), gsum);
    EXPECT_DOUBLE_EQ(double(p.stats["optimal_total"]), osum);

    o.assign = Assign::Optimal;
    ExpertPlan po = gradient_split_plan(layers, o);
    EXPECT_EQ(po.layers[1].experts, optimal_independent_split(ScoreSpan(layers[1]).first(4), 10, Criterion::Max));

    // Residual: R = 1 of 4 experts, routed in `experts`, residual in `shared`.
    o.residual = 1;
    o.assign = Assign::Greedy;
    ExpertPlan pr = gradient_split_plan(layers, o);
    auto want = residual_split(ScoreSpan(layers[2]).first(4), 3, 1, 10, Criterion::Max, false);
    EXPECT_EQ(pr.layers[2].experts, want.routed);
    EXPECT_EQ(pr.layers[2].shared, want.residual);
    EXPECT_EQ(pr.params["routed"], 3);
    EXPECT_GE(double(pr.stats["optimal_total"]), double(pr.stats["greedy_total"]));
    pr.validate("residual plan");

    // Shared residual and inner sharing: overlapping routed experts, no totals.
    o.share = true;
    o.expert_size = 12;
    ExpertPlan ps = gradient_split_plan(layers, o);
    EXPECT_EQ(ps.layers[0].experts, residual_split(ScoreSpan(layers[0]).first(4), 3, 1, 12, Criterion::Max, true).routed);
    EXPECT_FALSE(ps.layers[0].stats.contains("greedy_total"));
    o.residual = 0;
    ExpertPlan pi = gradient_split_plan(layers, o);
    EXPECT_EQ(pi.layers[0].experts, shared_split(ScoreSpan(layers[0]).first(4), 12, Criterion::Max));
    const OverlapStats ov = overlap_stats(pi.layers[0].experts, 40);
    EXPECT_EQ(pi.layers[0].stats["overlap"], ov.to_json());
    EXPECT_EQ(pi.layers[0].stats["distinct_neurons"], ov.distinct_neurons);
    EXPECT_FALSE(pi.is_partition());
}

// ---------------------------------------------------------------------------------------------
// PNG writer, read back by a small independent decoder (stored deflate blocks only)

namespace {

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
    return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | b[at + 3];
}

// Bitwise CRC-32, independent of the table-driven one under test.
uint32_t crc_bitwise(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) {
        c ^= p[i];
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

struct Decoded {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
    int blocks = 0;
};

Decoded decode_png(const std::vector<uint8_t>& f) {
    Decoded d;
    const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    EXPECT_TRUE(f.size() > 8 && std::equal(sig, sig + 8, f.begin()));
    std::vector<uint8_t> z;
    std::vector<std::string> types;
    size_t at = 8;
    while (at + 12 <= f.size()) {
        const uint32_t len = be32(f, at);
        const std::string type(f.begin() + long(at + 4), f.begin() + long(at + 8));
        types.push_back(type);
        EXPECT_EQ(crc_bitwise(&f[at + 4], len + 4), be32(f, at + 8 + len)) << "CRC of " << type;
        const std::vector<uint8_t> data(f.begin() + long(at + 8), f.begin() + long(at + 8 + len));
        if (type == "IHDR") {
            d.width = int(be32(data, 0)), d.height = int(be32(data, 4));
            EXPECT_EQ(std::vector<uint8_t>(data.begin() + 8, data.end()), (std::vector<uint8_t>{8, 2, 0, 0, 0}));
        } else if (type == "IDAT") {
            z.insert(z.end(), data.begin(), data.end());
        }
        at += 12 + len;
    }
    EXPECT_EQ(at, f.size());
    EXPECT_EQ(types.front(), "IHDR");
    EXPECT_EQ(types.back(), "IEND");
    // zlib header, stored blocks, Adler-32.
    EXPECT_EQ(z[0] & 0x0F, 8);
    EXPECT_EQ((z[0] * 256 + z[1]) % 31, 0);
    std::vector<uint8_t> raw;
    size_t p = 2;
    for (bool final = false; !final;) {
        final = z[p] & 1;
        EXPECT_EQ((z[p] >> 1) & 3, 0) << "not a stored block";
        const unsigned len = z[p + 1] | z[p + 2] << 8, nlen = z[p + 3] | z[p + 4] << 8;
        EXPECT_EQ(len ^ 0xFFFFu, nlen);
        raw.insert(raw.end(), z.begin() + long(p + 5), z.begin() + long(p + 5 + len));
        p += 5 + len;
        ++d.blocks;
    }
    uint32_t a = 1, b = 0;
    for (uint8_t x : raw) a = (a + x) % 65521, b = (b + a) % 65521;
    EXPECT_EQ(p + 4, z.size());
    EXPECT_EQ(be32(z, p), b << 16 | a) << "Adler-32";
    const size_t row = size_t(d.width) * 3;
    EXPECT_EQ(raw.size(), (row + 1) * size_t(d.height));
    for (int y = 0; y < d.height; ++y) {
        EXPECT_EQ(raw[size_t(y) * (row + 1)], 0) << "filter type of row " << y;
        d.rgb.insert(d.rgb.end(), raw.begin() + long(size_t(y) * (row + 1) + 1), raw.begin() + long(size_t(y + 1) * (row + 1)));
    }
    return d;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

}  // namespace

TEST(GradientSplitPng, ChecksumsKnownValues) {
    const std::string check = "123456789";
    EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(check.data()), check.size()), 0xCBF43926u);
    const std::string wiki = "Wikipedia";
    EXPECT_EQ(adler32(reinterpret_cast<const uint8_t*>(wiki.data()), wiki.size()), 0x11E60398u);
    // Chaining equals one call, also across Adler's 5552-byte reduction runs.
    std::vector<uint8_t> big(20000);
    for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 7 + 3);
    EXPECT_EQ(crc32(big.data() + 100, big.size() - 100, crc32(big.data(), 100)), crc32(big.data(), big.size()));
    EXPECT_EQ(crc32(big.data(), big.size()), crc_bitwise(big.data(), big.size()));
    EXPECT_EQ(adler32(big.data() + 9000, 11000, adler32(big.data(), 9000)), adler32(big.data(), big.size()));
    uint32_t a = 1, b = 0;
    for (uint8_t x : big) a = (a + x) % 65521, b = (b + a) % 65521;
    EXPECT_EQ(adler32(big.data(), big.size()), b << 16 | a);
}

TEST(GradientSplitPng, RoundTripsPixelsThroughStoredBlocks) {
    Rng rng(9);
    for (auto [w, h] : {std::pair{1, 1}, std::pair{3, 2}, std::pair{150, 170}}) {  // 150x170: two blocks
        Image img(w, h);
        for (auto& x : img.rgb) x = uint8_t(rng.below(256));
        const std::vector<uint8_t> png = encode_png(img);
        Decoded d = decode_png(png);
        EXPECT_EQ(d.width, w);
        EXPECT_EQ(d.height, h);
        EXPECT_EQ(d.rgb, img.rgb);
        EXPECT_EQ(d.blocks, int(((size_t(w) * 3 + 1) * size_t(h) + 65534) / 65535));
    }
    TempDir t;
    Image img(4, 3, {10, 20, 30});
    img.set(1, 2, {1, 2, 3});
    write_png(t.path + "/a.png", img);
    Decoded d = decode_png(bytes_of(read_file(t.path + "/a.png")));
    EXPECT_EQ(d.rgb, img.rgb);
    EXPECT_EQ(img.at(1, 2), (Rgb{1, 2, 3}));
    expect_error([] { encode_png(Image()); }, "image is empty");
    expect_error([&] { write_png(t.path + "/no/such/dir/a.png", img); }, "cannot create");
}

TEST(GradientSplitPng, FontDrawsDigits) {
    Image img(12, 8);
    img.draw_text(0, 0, "17", {0, 0, 0});
    // '1': column 2 lit on rows 0..6; '7': top row fully lit at x 6..10.
    for (int y = 0; y < 7; ++y) EXPECT_EQ(img.at(2, y), (Rgb{0, 0, 0}));
    for (int x = 6; x < 11; ++x) EXPECT_EQ(img.at(x, 0), (Rgb{0, 0, 0}));
    EXPECT_EQ(img.at(0, 0), (Rgb{255, 255, 255}));
    EXPECT_EQ(text_width("17"), 11);
}

// ---------------------------------------------------------------------------------------------
// Plots

TEST(GradientSplitPlots, HeatmapAndBarsShowTheStatistics) {
    EXPECT_EQ(viridis(0), (Rgb{68, 1, 84}));
    EXPECT_EQ(viridis(0.5), (Rgb{33, 144, 141}));
    EXPECT_EQ(viridis(1), (Rgb{253, 231, 37}));
    EXPECT_EQ(viridis(7), viridis(1));

    const OverlapStats st = overlap_stats({{0, 1, 2}, {3, 2, 1}, {4, 2}}, 6);
    const Image heat = render_overlap_rate(st, 2);
    const HeatmapLayout hl = overlap_rate_layout(3);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)  // a cell's corner pixel (the centre holds its value in percent)
            EXPECT_EQ(heat.at(hl.x0 + j * hl.cell + 1, hl.y0 + i * hl.cell + 1), viridis(st.rate[size_t(i)][size_t(j)]))
                << i << "," << j;

    // Expert 2: 1 neuron with r = 1 (bottom third of the height of the largest expert, 3)
    // and 1 with r = 3 (next third), nothing above.
    const Image bars = render_overlap_count(st, 2);
    const BarLayout bl = overlap_count_layout(3);
    const int x = bl.x0 + bl.gap + 2 * (bl.bar + bl.gap) + bl.bar / 2;
    const int third = bl.height / 3;
    EXPECT_EQ(bars.at(x, bl.base - 1), viridis(0));
    EXPECT_EQ(bars.at(x, bl.base - third + 1), viridis(0));
    EXPECT_EQ(bars.at(x, bl.base - third - 1), viridis(1));
    EXPECT_EQ(bars.at(x, bl.base - 2 * third + 1), viridis(1));
    EXPECT_EQ(bars.at(x, bl.base - 2 * third - 1), (Rgb{255, 255, 255}));
    // Expert 0: r = 1, 2, 3 one neuron each, full height.
    const int x0 = bl.x0 + bl.gap + bl.bar / 2;
    EXPECT_EQ(bars.at(x0, bl.base - third - third / 2), viridis(0.5));
    EXPECT_EQ(bars.at(x0, bl.base - bl.height), viridis(1));

    // Many experts still fit and encode.
    Rng rng(1);
    const OverlapStats many = overlap_stats(shared_split(random_scores(rng, 64, 512), 100, Criterion::Max), 512);
    EXPECT_GT(encode_png(render_overlap_rate(many, 0)).size(), 1000u);
    EXPECT_GT(encode_png(render_overlap_count(many, 0)).size(), 1000u);
}

TEST(GradientSplitPlots, WritesReferenceFileLayout) {
    ExpertPlan p;
    p.num_layers = 2;
    p.intermediate_size = 6;
    p.layers.resize(2);
    p.layers[0].experts = {{0, 1, 2}, {3, 2, 1}, {4, 2}};
    p.layers[1].experts = {{0, 1}, {2, 3}, {0, 4}};
    p.layers[1].shared = {{5}};
    TempDir t;
    const std::string dir = t.path + "/vis";
    for (int run = 0; run < 2; ++run) write_overlap_plots(p, dir);  // rewritten, not appended
    EXPECT_EQ(read_file(dir + "/total_neurons.txt"), "5\n6\n");
    for (int l = 0; l < 2; ++l) {
        const auto rate = bytes_of(read_file(fmt::format("{}/overlap_rate/overlap_rate_layer{}.png", dir, l)));
        const auto count = bytes_of(read_file(fmt::format("{}/overlap_count/overlap_count_layer{}.png", dir, l)));
        const OverlapStats st = overlap_stats(p.layers[size_t(l)].experts, 6);
        EXPECT_EQ(decode_png(rate).rgb, render_overlap_rate(st, l).rgb);
        EXPECT_EQ(decode_png(count).rgb, render_overlap_count(st, l).rgb);
    }
}
