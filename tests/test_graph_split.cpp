// Graph split core: co-activation clamping, METIS graph building and text
// format, exact rebalancing, and recovery of planted co-activation blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "common/error.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "split/coactivation.h"
#include "split/expert_plan.h"
#include "split/graph_partition.h"
#include "test_util.h"

using namespace moefy;

namespace {

// Brute-force reference of the accumulator: per chunk of `chunk` tokens (the
// last one possibly partial), adj[i][j] += min(Σ_t r_ti r_tj, thr), in f64.
std::vector<double> brute_coact(const std::vector<float>& acts, int T, int n, int chunk, float thr, CoactMetric m) {
    std::vector<double> adj(size_t(n) * n, 0.0), c(size_t(n) * n);
    auto kern = [&](float x) -> double {
        return m == CoactMetric::l1 ? std::fabs(double(x)) : m == CoactMetric::l2 ? double(x) * x : double(x);
    };
    for (int t0 = 0; t0 < T; t0 += chunk) {
        std::fill(c.begin(), c.end(), 0.0);
        for (int t = t0; t < std::min(T, t0 + chunk); ++t)
            for (int i = 0; i < n; ++i)
                for (int j = i; j < n; ++j) c[size_t(i) * n + j] += kern(acts[size_t(t) * n + i]) * kern(acts[size_t(t) * n + j]);
        for (int i = 0; i < n; ++i)
            for (int j = i; j < n; ++j) adj[size_t(i) * n + j] += std::min(c[size_t(i) * n + j], double(thr));
    }
    return adj;
}

// Gaussian activations; a fraction `zeros` of them exactly 0 (ReLU-like sparsity).
std::vector<float> random_acts(int T, int n, uint64_t seed, double zeros = 0.0) {
    Rng r(seed);
    std::vector<float> a(size_t(T) * n);
    for (auto& x : a) x = r.uniform() < zeros ? 0.0f : float(r.normal() * 0.4);
    return a;
}

// Random symmetric matrix with ~`zero_frac` zero entries, values in [0, 10).
std::vector<float> random_symmetric(int n, uint64_t seed, double zero_frac) {
    Rng r(seed);
    std::vector<float> a(size_t(n) * n);
    for (int i = 0; i < n; ++i)
        for (int j = i; j < n; ++j) {
            const float v = r.uniform() < zero_frac ? 0.0f : float(r.uniform() * 10.0);
            a[size_t(i) * n + j] = a[size_t(j) * n + i] = v;
        }
    return a;
}

// numpy.percentile(linear) by full sort, independent of the library's selection.
double sorted_percentile(std::vector<float> v, double p) {
    std::sort(v.begin(), v.end());
    const double x = double(v.size() - 1) * (p / 100.0);
    const size_t lo = size_t(std::floor(x));
    if (lo + 1 >= v.size()) return v.back();
    const double g = x - double(lo);
    const double d = double(v[lo + 1] - v[lo]);
    return g >= 0.5 ? double(v[lo + 1]) - d * (1.0 - g) : double(v[lo]) + d * g;
}

double cut_weight(const std::vector<float>& adj, int n, const std::vector<int32_t>& lab) {
    double c = 0;
    for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j)
            if (lab[size_t(i)] != lab[size_t(j)]) c += adj[size_t(i) * n + j];
    return c;
}

std::vector<int> part_sizes(const std::vector<int32_t>& lab, int parts) {
    std::vector<int> s(size_t(parts), 0);
    for (int32_t l : lab) ++s[size_t(l)];
    return s;
}

}  // namespace

// ---- accumulator -----------------------------------------------------------------------------

TEST(GraphSplitCoact, ClampPerChunkByHand) {
    // t0, t1 form chunk 1; t2 alone is a partial chunk flushed by finish().
    const std::vector<float> acts = {0.5f, 0.2f, 0.0f,   //
                                     -0.4f, 0.0f, 0.3f,  //
                                     2.0f, -1.0f, 0.5f};
    // chunk 1 (|x|): C00 .41 C01 .1 C02 .12 C11 .04 C12 0 C22 .09 (none clamped)
    // chunk 2: C00 4 C01 2 C02 1 C11 1 (all clamped to 1), C12 .5, C22 .25
    const double want2[3][3] = {{1.41, 1.1, 1.12}, {0, 1.04, 0.5}, {0, 0, 0.34}};
    CoactivationAccumulator a(3, CoactMetric::l1, 2, 1.0f);
    a.add(acts.data(), 1);  // chunks span add() calls
    a.add(acts.data() + 3, 2);
    EXPECT_EQ(a.pending_tokens(), 3);
    a.finish();
    EXPECT_EQ(a.tokens(), 3);
    EXPECT_EQ(a.chunks(), 2);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            EXPECT_NEAR(a.upper()[i * 3 + j], want2[i][j], 1e-6) << i << "," << j;
            EXPECT_EQ(a.at(i, j), a.at(j, i));
        }
    // One chunk of 3: the sums 4.41, 2.1, 1.12, 1.04 all clamp to 1.
    CoactivationAccumulator b(3, CoactMetric::l1, 3, 1.0f);
    b.add(acts.data(), 3);
    EXPECT_EQ(b.pending_tokens(), 3);  // chunks are grouped; upper() is complete after finish()
    b.finish();
    EXPECT_EQ(b.pending_tokens(), 0);
    const double want3[3][3] = {{1, 1, 1}, {0, 1, 0.5}, {0, 0, 0.34}};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) EXPECT_NEAR(b.upper()[i * 3 + j], want3[i][j], 1e-6) << i << "," << j;
    // Pairs clamped in every chunk: a (0,1), (0,2) hit 1 only in chunk 2; b: (0,1), (0,2) in its one chunk.
    EXPECT_DOUBLE_EQ(a.saturated_fraction(), 0.0);
    EXPECT_DOUBLE_EQ(b.saturated_fraction(), 2.0 / 3.0);
    const std::vector<float> full = b.symmetric();
    EXPECT_FLOAT_EQ(full[2 * 3 + 1], 0.5f);
    EXPECT_FLOAT_EQ(full[1 * 3 + 2], 0.5f);
}

TEST(GraphSplitCoact, MetricsAndThreshold) {
    const float t[2] = {1.0f, -3.0f};
    CoactivationAccumulator plain(2, CoactMetric::plain, 1, 2.0f);
    plain.add(t, 1);
    plain.finish();
    EXPECT_FLOAT_EQ(plain.at(0, 0), 1.0f);
    EXPECT_FLOAT_EQ(plain.at(0, 1), -3.0f);  // only the maximum is clamped
    EXPECT_FLOAT_EQ(plain.at(1, 1), 2.0f);   // 9 -> threshold 2
    CoactivationAccumulator l2(2, CoactMetric::l2, 1, 2.0f);
    l2.add(t, 1);
    l2.add(t, 1);
    l2.finish();
    EXPECT_FLOAT_EQ(l2.at(0, 0), 2.0f);  // 1 per chunk, 2 chunks
    EXPECT_FLOAT_EQ(l2.at(0, 1), 4.0f);  // 9 -> 2 per chunk
    EXPECT_EQ(parse_coact_metric("l1_norm"), CoactMetric::l1);
    EXPECT_EQ(parse_coact_metric("l2"), CoactMetric::l2);
    EXPECT_EQ(parse_coact_metric("plain"), CoactMetric::plain);
    EXPECT_STREQ(coact_metric_name(CoactMetric::l2), "l2");
}

TEST(GraphSplitCoact, MatchesBruteForce) {
    struct Case { int n, T, chunk; CoactMetric m; float thr; double zeros; };
    // Small chunks take the fused kernel (4-row blocks, tails, 64x256 tiles; T = 270
    // spans two 256-token groups), chunks over 64 tokens BLAS (n = 1100: 14 panels of 80 rows).
    for (const Case c : {Case{37, 50, 8, CoactMetric::l1, 1.0f, 0.0}, Case{1100, 270, 8, CoactMetric::plain, 0.5f, 0.0},
                         Case{70, 64, 8, CoactMetric::l1, 1.0f, 0.8}, Case{20, 40, 16, CoactMetric::l2, 1.0f, 0.0},
                         Case{1100, 250, 100, CoactMetric::l1, 10.0f, 0.0}}) {
        const auto acts = random_acts(c.T, c.n, uint64_t(c.n), c.zeros);
        CoactivationAccumulator a(c.n, c.m, c.chunk, c.thr);
        const int pieces[3] = {7, c.T / 2, c.T - 7 - c.T / 2};
        int at = 0;
        for (int k : pieces) a.add(acts.data() + size_t(at) * c.n, k), at += k;
        a.finish();
        EXPECT_EQ(a.chunks(), (c.T + c.chunk - 1) / c.chunk);
        const auto want = brute_coact(acts, c.T, c.n, c.chunk, c.thr, c.m);
        double maxerr = 0;
        for (int i = 0; i < c.n; ++i)
            for (int j = 0; j < c.n; ++j) {
                const double w = j >= i ? want[size_t(i) * c.n + j] : 0.0;
                maxerr = std::max(maxerr, std::fabs(a.upper()[size_t(i) * c.n + j] - w));
            }
        EXPECT_LT(maxerr, 2e-5 * std::max(1.0f, c.thr)) << "n=" << c.n << " chunk=" << c.chunk;
    }
}

// The BLAS path's panels are shared by the pool's threads: the same bits for 1
// thread and for all of them (n = 300: 10 panels, the last one short; a partial chunk).
TEST(GraphSplitCoact, BlasPathSameBitsForAnyThreadCount) {
    const int n = 300, T = 700, chunk = 128;
    const auto acts = random_acts(T, n, 5, 0.1);
    auto run = [&] {
        CoactivationAccumulator a(n, CoactMetric::l1, chunk, 4.0f);
        a.add(acts.data(), T);
        a.finish();
        return std::vector<float>(a.upper(), a.upper() + size_t(n) * n);
    };
    std::vector<float> one;
    {
        ScopedThreadLimit limit(1);
        one = run();
    }
    EXPECT_EQ(one, run());  // all of the pool's threads (OMP_NUM_THREADS, else the CPUs)
}

TEST(GraphSplitCoact, RejectsBadInput) {
    EXPECT_THROW(parse_coact_metric("cosine"), Error);
    EXPECT_THROW(CoactivationAccumulator(0), Error);
    EXPECT_THROW(CoactivationAccumulator(4, CoactMetric::l1, 0), Error);
    EXPECT_THROW(CoactivationAccumulator(4, CoactMetric::l1, 8, 0.0f), Error);
    EXPECT_THROW(CoactivationAccumulator(4, CoactMetric(7)), Error);
    CoactivationAccumulator a(2, CoactMetric::l1, 4);
    const float bad[4] = {1.0f, 2.0f, NAN, 0.0f};
    EXPECT_THROW(a.add(bad, 2), Error);
    EXPECT_EQ(a.tokens(), 0);  // nothing buffered from a rejected call
    EXPECT_THROW(partition_coactivation(a, 2, 0), Error);  // no tokens
    a.add(bad, 1);
    EXPECT_THROW(partition_coactivation(a, 2, 0), Error);  // pending tokens: finish() first
}

// ---- METIS graph -----------------------------------------------------------------------------

TEST(GraphSplitGraph, PercentileMatchesNumpy) {
    const float m[4] = {4, 1, 3, 2};  // sorted 1 2 3 4
    EXPECT_DOUBLE_EQ(matrix_percentile(m, 2, 10), 1.3);
    EXPECT_DOUBLE_EQ(matrix_percentile(m, 2, 50), 2.5);
    EXPECT_DOUBLE_EQ(matrix_percentile(m, 2, 90), 3.7);
    EXPECT_DOUBLE_EQ(matrix_percentile(m, 2, 100), 4.0);
    const auto r = random_symmetric(31, 5, 0.3);
    for (double p : {10.0, 20.0, 30.0, 70.0, 100.0})
        EXPECT_DOUBLE_EQ(matrix_percentile(r.data(), 31, p), sorted_percentile(r, p)) << p;
}

// The radix select on the upper triangle gives numpy's percentile of the whole
// matrix: with zeros, ties, negative entries, and a size past the parallel cutoff.
TEST(GraphSplitGraph, SymmetricPercentileMatchesFullMatrix) {
    for (int n : {1, 2, 31, 300}) {
        auto r = random_symmetric(n, 7 + uint64_t(n), 0.3);
        for (int i = 0; i < n; ++i)
            for (int j = i; j < n; ++j)
                if ((i + j) % 7 == 3) r[size_t(i) * n + j] = r[size_t(j) * n + i] = -r[size_t(i) * n + j];  // some < 0
        if (n > 2) r[1] = r[size_t(n)] = r[2];  // a tie
        for (double p : {0.0, 5.0, 10.0, 33.3, 50.0, 90.0, 99.9, 100.0})
            EXPECT_DOUBLE_EQ(symmetric_percentile(r.data(), n, p), sorted_percentile(r, p)) << "n " << n << " p " << p;
    }
}

TEST(GraphSplitGraph, CsrSymmetricNoSelfLoopsMatchesBruteForce) {
    const int n = 50;
    auto adj = random_symmetric(n, 11, 0.35);  // 35% zeros: decile 40 is the first non-zero
    for (int i = 0; i < n; ++i) adj[size_t(i) * n + i] = 100.0f;  // large diagonal: counted, never an edge
    const MetisGraph g = build_metis_graph(adj.data(), n);
    EXPECT_EQ(g.percentile, 40);
    const double thr = sorted_percentile(adj, 40) * 0.99;
    EXPECT_DOUBLE_EQ(g.threshold, thr);
    EXPECT_EQ(g.weight_scale, 1);
    ASSERT_EQ(g.xadj.size(), size_t(n + 1));
    EXPECT_EQ(g.xadj[0], 0);
    std::set<std::pair<int, int>> seen;
    int64_t want_edges = 0;
    for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
            const float w = adj[size_t(i) * n + j] / float(thr);
            if (i != j && w >= 1.0f) ++want_edges;
        }
        ASSERT_LE(g.xadj[i], g.xadj[i + 1]);
        for (idx_t k = g.xadj[i]; k < g.xadj[i + 1]; ++k) {
            const int j = g.adjncy[size_t(k)];
            EXPECT_NE(j, i) << "self loop";
            if (k > g.xadj[i]) {
                EXPECT_LT(g.adjncy[size_t(k) - 1], j) << "not ascending";
            }
            EXPECT_EQ(g.adjwgt[size_t(k)], idx_t(adj[size_t(i) * n + j] / float(thr)));
            EXPECT_GE(g.adjwgt[size_t(k)], 1);
            seen.insert({i, j});
            // the reverse edge, same weight
            const auto b = g.adjncy.begin() + g.xadj[j], e = g.adjncy.begin() + g.xadj[j + 1];
            const auto it = std::lower_bound(b, e, idx_t(i));
            ASSERT_TRUE(it != e && *it == i) << i << "-" << j << " has no reverse";
            EXPECT_EQ(g.adjwgt[size_t(it - g.adjncy.begin())], g.adjwgt[size_t(k)]);
        }
    }
    EXPECT_EQ(int64_t(seen.size()), want_edges);
    EXPECT_EQ(g.num_edges() * 2, want_edges);
    EXPECT_GT(want_edges, 0);
    EXPECT_LT(want_edges, n * (n - 1));  // some pairs were dropped
}

TEST(GraphSplitGraph, MetisTextByteExact) {
    // 8 of 16 entries are zero: deciles 10..40 are 0, decile 50 lerps to 0.5
    // (between the last 0 and the smallest value 1), so thr = 0.495:
    // 6 / 0.495 = 12.1 -> 12, 3 / 0.495 = 6.06 -> 6; vertex 3 is isolated.
    const float adj[16] = {3, 6, 0, 0,  //
                           6, 2, 3, 0,  //
                           0, 3, 4, 0,  //
                           0, 0, 0, 1};
    const MetisGraph g = build_metis_graph(adj, 4);
    EXPECT_EQ(g.percentile, 50);
    EXPECT_DOUBLE_EQ(g.threshold, 0.5 * 0.99);
    const std::string want = "4 2 001\n2 12\n1 12 3 6\n2 6\n\n";
    EXPECT_EQ(metis_graph_text(g), want);
    TempDir d;
    write_metis_graph(g, d.path + "/layers.0.mlp.up_proj.weight");
    EXPECT_EQ(read_file(d.path + "/layers.0.mlp.up_proj.weight"), want);
}

TEST(GraphSplitGraph, WeightScalingKeepsEdges) {
    const int n = 40;
    auto adj = random_symmetric(n, 3, 0.5);
    for (auto& x : adj) x = x * x * x;  // wide range: weights up to ~1000x the threshold
    const MetisGraph g = build_metis_graph(adj.data(), n);
    const int64_t full = std::accumulate(g.adjwgt.begin(), g.adjwgt.end(), int64_t(0));
    const int64_t limit = full / 3;
    ASSERT_GT(limit, int64_t(g.adjwgt.size()));  // room for weight 1 on every edge
    const MetisGraph s = build_metis_graph(adj.data(), n, limit);
    EXPECT_EQ(g.weight_scale, 1);
    EXPECT_GT(s.weight_scale, 1);
    EXPECT_EQ(s.xadj, g.xadj);
    EXPECT_EQ(s.adjncy, g.adjncy);
    int64_t total = 0;
    for (size_t k = 0; k < s.adjwgt.size(); ++k) {
        EXPECT_EQ(s.adjwgt[k], std::max<idx_t>(1, g.adjwgt[k] / idx_t(s.weight_scale)));
        total += s.adjwgt[k];
    }
    EXPECT_LE(total, limit);
}

TEST(GraphSplitGraph, RejectsBadMatrices) {
    float asym[4] = {1, 2, 3, 1};
    EXPECT_THROW(build_metis_graph(asym, 2), Error);
    float zero[4] = {0, 0, 0, 0};
    EXPECT_THROW(build_metis_graph(zero, 2), Error);
    float diag[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};  // non-zero percentile but no off-diagonal edge
    EXPECT_THROW(build_metis_graph(diag, 3), Error);
    float nan[4] = {1, NAN, NAN, 1};
    EXPECT_THROW(build_metis_graph(nan, 2), Error);
}

// ---- rebalancing -----------------------------------------------------------------------------

TEST(GraphSplitRebalance, MovesTheCheapestNeuron) {
    // {0, 2, 3} are tightly linked (5); neuron 1 is barely tied to them (1 each)
    // and leans to {4, 5} (2 each): moving 1 costs 3 - 4 = -1, any other move > 0.
    const int n = 6;
    std::vector<float> adj(36, 0.0f);
    auto set = [&](int i, int j, float w) { adj[size_t(i) * n + j] = adj[size_t(j) * n + i] = w; };
    set(0, 2, 5), set(0, 3, 5), set(2, 3, 5);
    set(1, 0, 1), set(1, 2, 1), set(1, 3, 1);
    set(1, 4, 2), set(1, 5, 2), set(4, 5, 5);
    std::vector<int32_t> lab = {0, 0, 0, 0, 1, 1};
    EXPECT_EQ(rebalance_partition(lab, adj.data(), n, 2), 1);
    EXPECT_EQ(lab, (std::vector<int32_t>{0, 1, 0, 0, 1, 1}));
}

TEST(GraphSplitRebalance, GreedyMatchesBruteForceForOneMove) {
    const int n = 12;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
        const auto adj = random_symmetric(n, seed, 0.2);
        const std::vector<int32_t> start = {0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1};  // 7 / 5
        double best = 1e300;
        for (int v = 0; v < n; ++v)
            if (start[size_t(v)] == 0) {
                auto l = start;
                l[size_t(v)] = 1;
                best = std::min(best, cut_weight(adj, n, l));
            }
        auto lab = start;
        EXPECT_EQ(rebalance_partition(lab, adj.data(), n, 2), 1);
        EXPECT_EQ(part_sizes(lab, 2), (std::vector<int>{6, 6}));
        EXPECT_NEAR(cut_weight(adj, n, lab), best, 1e-4);
    }
}

TEST(GraphSplitRebalance, ExactSizesWhenUnevenAndEmptyParts) {
    const int n = 10, E = 3;  // widths 4, 3, 3
    const auto adj = random_symmetric(n, 9, 0.1);
    std::vector<int32_t> lab = {2, 2, 2, 1, 2, 2, 2, 1, 2, 2};  // part 0 empty, part 2 holds 8
    EXPECT_EQ(rebalance_partition(lab, adj.data(), n, E), 4);
    EXPECT_EQ(part_sizes(lab, E), balanced_widths(n, E));
    // The largest part got the extra neuron and became expert 0; it only lost neurons.
    for (int v : {3, 7}) EXPECT_EQ(lab[size_t(v)], 2);  // old part 1 was never over-full
    // Already balanced: nothing moves and labels are kept (E divides n) or only renumbered.
    std::vector<int32_t> even = {0, 1, 0, 1, 1, 0};
    const auto adj6 = random_symmetric(6, 2, 0.0);
    EXPECT_EQ(rebalance_partition(even, adj6.data(), 6, 2), 0);
    EXPECT_EQ(even, (std::vector<int32_t>{0, 1, 0, 1, 1, 0}));
    std::vector<int32_t> uneven = {1, 1, 0, 0, 1};  // part 1 has the extra neuron -> becomes expert 0
    const auto adj5 = random_symmetric(5, 2, 0.0);
    EXPECT_EQ(rebalance_partition(uneven, adj5.data(), 5, 2), 0);
    EXPECT_EQ(uneven, (std::vector<int32_t>{0, 0, 1, 1, 0}));
}

TEST(GraphSplitRebalance, KeptFractionByHand) {
    const float adj[16] = {9, 1, 2, 3,  //
                           1, 9, 4, 5,  //
                           2, 4, 9, 6,  //
                           3, 5, 6, 9};
    // off-diagonal total (upper) 21; {0,1},{2,3} keep 1 + 6 = 7
    EXPECT_DOUBLE_EQ(kept_fraction(adj, 4, {0, 0, 1, 1}), 7.0 / 21.0);
    EXPECT_DOUBLE_EQ(kept_fraction(adj, 4, {0, 1, 1, 0}), 7.0 / 21.0);  // 3 + 4
    EXPECT_DOUBLE_EQ(kept_fraction(adj, 4, {0, 1, 0, 1}), 7.0 / 21.0);  // 2 + 5
}

// ---- end to end ------------------------------------------------------------------------------

namespace {

// Activations with planted blocks: neuron v belongs to block[v]; each token
// fires one block (sometimes two) strongly and every neuron weakly.
std::vector<float> planted_acts(const std::vector<int>& block, int blocks, int T, uint64_t seed) {
    const int n = int(block.size());
    Rng r(seed);
    std::vector<float> a(size_t(T) * n);
    for (int t = 0; t < T; ++t) {
        const int b1 = int(r.below(uint64_t(blocks)));
        const int b2 = r.uniform() < 0.2 ? int(r.below(uint64_t(blocks))) : b1;
        for (int v = 0; v < n; ++v) {
            const bool on = block[size_t(v)] == b1 || block[size_t(v)] == b2;
            a[size_t(t) * n + v] = on ? float(0.5 + r.uniform()) : float(0.03 * r.normal());
        }
    }
    return a;
}

// Assigns neurons to blocks of the given sizes in a seeded random order.
std::vector<int> planted_blocks(const std::vector<int>& sizes, uint64_t seed) {
    std::vector<int> block;
    for (size_t b = 0; b < sizes.size(); ++b) block.insert(block.end(), size_t(sizes[b]), int(b));
    Rng r(seed);
    r.shuffle(block.begin(), block.end());
    return block;
}

void expect_recovers(const GraphPartitionResult& res, const std::vector<int>& block, int E) {
    const int n = int(block.size());
    ASSERT_EQ(res.experts.size(), size_t(E));
    std::vector<int> sizes;
    for (const auto& ex : res.experts) {
        sizes.push_back(int(ex.size()));
        EXPECT_TRUE(std::is_sorted(ex.begin(), ex.end()));
        for (int32_t v : ex) EXPECT_EQ(block[size_t(v)], block[size_t(ex[0])]) << "expert mixes blocks";
    }
    EXPECT_EQ(sizes, balanced_widths(n, E));
    std::set<int> used;
    for (const auto& ex : res.experts) used.insert(block[size_t(ex[0])]);
    EXPECT_EQ(used.size(), size_t(E)) << "two experts share a block";
    for (int v = 0; v < n; ++v)
        EXPECT_TRUE(std::binary_search(res.experts[size_t(res.labels[size_t(v)])].begin(),
                                       res.experts[size_t(res.labels[size_t(v)])].end(), v));
}

}  // namespace

TEST(GraphSplit, RecoversPlantedBlocks) {
    const int n = 64, E = 4, T = 1024;
    const auto block = planted_blocks({16, 16, 16, 16}, 42);
    const auto acts = planted_acts(block, E, T, 7);
    CoactivationAccumulator acc(n);  // l1, 8-token chunks, threshold 1
    acc.add(acts.data(), T);
    acc.finish();
    const GraphPartitionResult res = partition_coactivation(acc, E, 1);
    expect_recovers(res, block, E);
    // Kept weight is that of the planted partition; a random split keeps about 1/E.
    const auto adj = acc.symmetric();
    EXPECT_DOUBLE_EQ(res.kept_fraction, kept_fraction(adj.data(), n, std::vector<int32_t>(block.begin(), block.end())));
    EXPECT_LT(res.random_kept_fraction, 0.5 * res.kept_fraction);
    EXPECT_GT(res.num_edges, 0);
    EXPECT_EQ(res.stats()["graph_edges"], res.num_edges);
    EXPECT_DOUBLE_EQ(res.saturated_fraction, acc.saturated_fraction());
    EXPECT_LT(res.saturated_fraction, 0.5);
}

TEST(GraphSplit, RecoversUnevenBlocksWhenEDoesNotDivideI) {
    const int n = 66, E = 4;  // widths 17, 17, 16, 16
    const auto block = planted_blocks(balanced_widths(n, E), 5);
    const auto acts = planted_acts(block, E, 1024, 8);
    CoactivationAccumulator acc(n, CoactMetric::l2);
    acc.add(acts.data(), 1024);
    acc.finish();
    expect_recovers(partition_coactivation(acc, E, 3), block, E);
}

TEST(GraphSplit, SameSeedSameResult) {
    const int n = 90, E = 4;
    const auto adj = random_symmetric(n, 77, 0.05);  // no structure: METIS has real choices
    const auto a = partition_coactivation(adj.data(), n, E, 123);
    const auto b = partition_coactivation(adj.data(), n, E, 123);
    EXPECT_EQ(a.labels, b.labels);
    EXPECT_EQ(a.metis_edgecut, b.metis_edgecut);
    EXPECT_EQ(a.random_kept_fraction, b.random_kept_fraction);
    EXPECT_EQ(part_sizes(a.labels, E), balanced_widths(n, E));
    // METIS optimises the cut, so it beats a random balanced split on the kept weight.
    EXPECT_GT(a.kept_fraction, a.random_kept_fraction);
    // The graph given to METIS is left untouched.
    const MetisGraph g = build_metis_graph(adj.data(), n);
    const MetisGraph copy = g;
    metis_partition(g, E, 123);
    EXPECT_EQ(g.xadj, copy.xadj);
    EXPECT_EQ(g.adjncy, copy.adjncy);
    EXPECT_EQ(g.adjwgt, copy.adjwgt);
}

TEST(GraphSplit, RejectsBadExpertCounts) {
    const auto adj = random_symmetric(8, 1, 0.0);
    EXPECT_THROW(partition_coactivation(adj.data(), 8, 1, 0), Error);
    EXPECT_THROW(partition_coactivation(adj.data(), 8, 9, 0), Error);
    std::vector<int32_t> lab(8, 0);
    EXPECT_THROW(rebalance_partition(lab, adj.data(), 8, 1), Error);
    lab[3] = 5;
    EXPECT_THROW(rebalance_partition(lab, adj.data(), 8, 2), Error);  // label out of range
    EXPECT_THROW(random_balanced_labels(8, 0, 1), Error);
    const MetisGraph g = build_metis_graph(adj.data(), 8);
    EXPECT_THROW(metis_partition(g, 9, 0), Error);
}
