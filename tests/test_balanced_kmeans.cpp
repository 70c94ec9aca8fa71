// Balanced assignment (exact min-cost transportation with k sinks) and
// balanced k-means: optimality against brute force and LEMON, planted
// clusters, exact sizes, determinism, input validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <vector>

#include "common/error.h"
#include "common/rng.h"
#include "split/balanced_assignment.h"
#include "split/balanced_kmeans.h"
#include "split/expert_plan.h"

using namespace moefy;

namespace {

// Random capacities >= 0 summing to n (some columns may get 0).
std::vector<int> random_caps(Rng& rng, int n, int k) {
    std::vector<int> cap(size_t(k), 0);
    for (int i = 0; i < n; ++i) ++cap[rng.below(uint64_t(k))];
    return cap;
}

// Enumerates all k^n labelings with the given column counts; returns the minimal total cost.
template <class Cost>
double brute_force_min(const std::vector<Cost>& C, int n, int k, const std::vector<int>& cap) {
    std::vector<int> lab(size_t(n), 0), cnt(size_t(k), 0);
    double best = std::numeric_limits<double>::infinity();
    int64_t total = 1;
    for (int i = 0; i < n; ++i) total *= k;
    for (int64_t code = 0; code < total; ++code) {
        int64_t c = code;
        std::fill(cnt.begin(), cnt.end(), 0);
        double cost = 0;
        for (int i = 0; i < n; ++i) {
            lab[i] = int(c % k);
            c /= k;
            ++cnt[lab[i]];
            cost += double(C[size_t(i) * k + lab[i]]);
        }
        if (cnt == cap) best = std::min(best, cost);
    }
    return best;
}

template <class Cost>
void expect_valid(const std::vector<int32_t>& labels, const std::vector<Cost>& C, int k, const std::vector<int>& cap,
                  double total) {
    std::vector<int> cnt(size_t(k), 0);
    double sum = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
        ASSERT_GE(labels[i], 0);
        ASSERT_LT(labels[i], k);
        ++cnt[labels[i]];
        sum += double(C[i * k + labels[i]]);
    }
    EXPECT_EQ(cnt, cap);
    EXPECT_NEAR(sum, total, 1e-6 * std::max(1.0, std::abs(total)));
}

// n points in d dims around k well separated centres; planted[i] = true cluster.
struct Planted {
    std::vector<float> X;
    std::vector<int> planted;
};
Planted planted_clusters(const std::vector<int>& sizes, int d, double spread, double noise, uint64_t seed) {
    Rng rng(seed);
    const int k = int(sizes.size());
    std::vector<double> centre(size_t(k) * d);
    for (auto& v : centre) v = spread * rng.normal();
    Planted p;
    std::vector<int> order;
    for (int c = 0; c < k; ++c)
        for (int s = 0; s < sizes[c]; ++s) order.push_back(c);
    rng.shuffle(order.begin(), order.end());  // clusters interleaved in row order
    for (int c : order) {
        p.planted.push_back(c);
        for (int j = 0; j < d; ++j) p.X.push_back(float(centre[size_t(c) * d + j] + noise * rng.normal()));
    }
    return p;
}

// True when `labels` equals `truth` up to a renaming of the clusters.
bool same_partition(const std::vector<int32_t>& labels, const std::vector<int>& truth) {
    std::map<int, int> fwd, bwd;
    for (size_t i = 0; i < labels.size(); ++i) {
        auto [f, fnew] = fwd.emplace(labels[i], truth[i]);
        auto [b, bnew] = bwd.emplace(truth[i], labels[i]);
        if (f->second != truth[i] || b->second != labels[i]) return false;
    }
    return true;
}

std::vector<int> label_counts(const std::vector<int32_t>& labels, int k) {
    std::vector<int> cnt(size_t(k), 0);
    for (int32_t l : labels) ++cnt[l];
    return cnt;
}

// Sum of squared distances of rows to their cluster means (double precision).
double within_ss(const std::vector<float>& X, int n, int d, const std::vector<int32_t>& labels, int k) {
    std::vector<double> mean(size_t(k) * d, 0.0);
    std::vector<int> cnt = label_counts(labels, k);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < d; ++j) mean[size_t(labels[i]) * d + j] += X[size_t(i) * d + j];
    for (int c = 0; c < k; ++c)
        for (int j = 0; j < d; ++j) mean[size_t(c) * d + j] /= cnt[c];
    double ss = 0;
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < d; ++j) {
            const double v = X[size_t(i) * d + j] - mean[size_t(labels[i]) * d + j];
            ss += v * v;
        }
    return ss;
}

}  // namespace

TEST(BalancedAssignment, OptimalAgainstBruteForceSmall) {
    Rng rng(7);
    for (int trial = 0; trial < 60; ++trial) {
        const int n = 1 + int(rng.below(8));  // 1..8
        const int k = 1 + int(rng.below(4));  // 1..4
        const std::vector<int> cap = random_caps(rng, n, k);
        // Integer costs from a small range: many ties and equal-cost optima.
        std::vector<int64_t> Ci(size_t(n) * k);
        for (auto& c : Ci) c = int64_t(rng.below(12)) - 3;
        std::vector<int32_t> labels(n);
        const int64_t got = balanced_assignment(Ci.data(), n, k, cap, labels.data());
        EXPECT_EQ(double(got), brute_force_min(Ci, n, k, cap)) << "trial " << trial;
        expect_valid(labels, Ci, k, cap, double(got));

        std::vector<float> Cf(size_t(n) * k);
        for (auto& c : Cf) c = float(rng.uniform() * 10 - 2);
        const double gotf = balanced_assignment(Cf.data(), n, k, cap, labels.data());
        EXPECT_NEAR(gotf, brute_force_min(Cf, n, k, cap), 1e-5) << "trial " << trial;
        expect_valid(labels, Cf, k, cap, gotf);
    }
}

TEST(BalancedAssignment, AgreesWithNetworkSimplex) {
    Rng rng(11);
    struct Case { int n, k; bool skewed; };
    for (Case cs : {Case{300, 3, false}, Case{1000, 8, true}, Case{1500, 16, true}, Case{997, 16, false},
                    Case{2000, 8, false}}) {
        const int n = cs.n, k = cs.k;
        // Exactly balanced capacities (as k-means uses), or random ones.
        std::vector<int> cap = cs.skewed ? random_caps(rng, n, k) : balanced_widths(n, k);
        // Costs like k-means distances: points against centres, where many rows prefer the same centres.
        const int d = 4;
        std::vector<double> pts(size_t(n) * d), cen(size_t(k) * d);
        for (auto& v : pts) v = rng.normal();
        for (auto& v : cen) v = 0.5 * rng.normal() + 0.7;
        std::vector<float> Cf(size_t(n) * k);
        std::vector<int64_t> Ci(size_t(n) * k);
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < k; ++j) {
                double s = 0;
                for (int t = 0; t < d; ++t) s += std::pow(pts[size_t(i) * d + t] - cen[size_t(j) * d + t], 2);
                Cf[size_t(i) * k + j] = float(std::sqrt(s));
                Ci[size_t(i) * k + j] = std::llround(1000 * std::sqrt(s));
            }
        std::vector<int32_t> a(n), b(n);
        const int64_t ours = balanced_assignment(Ci.data(), n, k, cap, a.data());
        const int64_t lemon = balanced_assignment_network_simplex(Ci.data(), n, k, cap, b.data());
        EXPECT_EQ(ours, lemon) << "n=" << n << " k=" << k;
        expect_valid(a, Ci, k, cap, double(ours));
        expect_valid(b, Ci, k, cap, double(lemon));

        const double oursf = balanced_assignment(Cf.data(), n, k, cap, a.data());
        const double lemonf = balanced_assignment_network_simplex(Cf.data(), n, k, cap, b.data());
        EXPECT_NEAR(oursf, lemonf, 1e-9 * lemonf) << "n=" << n << " k=" << k;
        expect_valid(a, Cf, k, cap, oursf);
    }
}

TEST(BalancedAssignment, UnconstrainedOptimumIsKeptWhenItFits) {
    // Every row's cheapest column, with capacities equal to those counts: nothing moves.
    const int n = 6, k = 3;
    const std::vector<int64_t> C = {1, 5, 9,  7, 0, 3,  2, 8, 1,  4, 4, 0,  0, 9, 9,  6, 1, 6};
    std::vector<int32_t> labels(n);
    EXPECT_EQ(balanced_assignment(C.data(), n, k, std::vector<int>{2, 2, 2}, labels.data()), 1 + 0 + 1 + 0 + 0 + 1);
    EXPECT_EQ(labels, (std::vector<int32_t>{0, 1, 2, 2, 0, 1}));
    // Force everything into column 1: the only feasible assignment.
    EXPECT_EQ(balanced_assignment(C.data(), n, k, std::vector<int>{0, 6, 0}, labels.data()), 5 + 0 + 8 + 4 + 9 + 1);
}

TEST(BalancedAssignment, RejectsBadCapacities) {
    const std::vector<int64_t> C(12, 1);
    std::vector<int32_t> labels(4);
    EXPECT_THROW(balanced_assignment(C.data(), 4, 3, std::vector<int>{1, 1, 1}, labels.data()), Error);   // sum 3 != 4
    EXPECT_THROW(balanced_assignment(C.data(), 4, 3, std::vector<int>{3, 2, -1}, labels.data()), Error);  // negative
    EXPECT_THROW(balanced_assignment(C.data(), 4, 3, std::vector<int>{2, 2}, labels.data()), Error);      // wrong count
    EXPECT_THROW(balanced_assignment(C.data(), 4, 0, std::vector<int>{}, labels.data()), Error);
}

TEST(BalancedKMeans, RecoversPlantedClustersEveryMetric) {
    const std::vector<int> sizes = {40, 40, 40, 40, 40};
    const int d = 24, k = 5, n = 200;
    const Planted p = planted_clusters(sizes, d, 3.0, 0.3, 42);
    for (KMeansMetric m : {KMeansMetric::L2, KMeansMetric::Cos, KMeansMetric::Spherical}) {
        KMeansOptions o;
        o.metric = m;
        o.restarts = 3;
        const KMeansResult r = balanced_kmeans(p.X.data(), n, d, k, o);
        EXPECT_TRUE(same_partition(r.labels, p.planted)) << kmeans_metric_name(m);
        EXPECT_EQ(label_counts(r.labels, k), sizes);
        ASSERT_EQ(r.iterations.size(), 3u);
        ASSERT_EQ(r.centers.size(), size_t(k) * d);
        if (m == KMeansMetric::L2) {
            // Converged: labels and centres agree, so the inertia is the within-cluster sum of squares,
            // and each centre is its cluster's mean.
            EXPECT_NEAR(r.inertia, within_ss(p.X, n, d, r.labels, k), 1e-4 * r.inertia);
            for (int j = 0; j < d; ++j) {
                double mean = 0;
                for (int i = 0; i < n; ++i)
                    if (r.labels[i] == 0) mean += p.X[size_t(i) * d + j];
                EXPECT_NEAR(r.centers[j], mean / sizes[0], 1e-4);
            }
        }
        if (m == KMeansMetric::Spherical) {
            for (int c = 0; c < k; ++c) {
                double q = 0;
                for (int j = 0; j < d; ++j) q += double(r.centers[size_t(c) * d + j]) * r.centers[size_t(c) * d + j];
                EXPECT_NEAR(q, 1.0, 1e-5);
            }
        }
    }
}

TEST(BalancedKMeans, HonoursUnequalSizes) {
    // Cluster j gets exactly sizes[j] rows, even when that splits planted clusters.
    const std::vector<int> sizes = {15, 60, 30, 45};
    const int d = 16, k = 4, n = 150;
    const Planted p = planted_clusters({50, 50, 50}, d, 3.0, 0.2, 5);
    KMeansOptions o;
    o.sizes = sizes;
    for (KMeansMetric m : {KMeansMetric::L2, KMeansMetric::Spherical}) {
        o.metric = m;
        const KMeansResult r = balanced_kmeans(p.X.data(), n, d, k, o);
        EXPECT_EQ(label_counts(r.labels, k), sizes);
    }
}

TEST(BalancedKMeans, FindsBruteForceOptimumOnTinyInstances) {
    // n = 10 points in 2-D split 5/5 or 3/7: enumerate every labeling with those sizes.
    for (uint64_t seed : {1, 2, 3, 4, 5, 6}) {
        Rng rng(seed);
        const int n = 10, d = 2, k = 2;
        const std::vector<int> sizes = seed % 2 ? std::vector<int>{5, 5} : std::vector<int>{3, 7};
        std::vector<float> X(size_t(n) * d);
        for (auto& v : X) v = float(rng.normal());
        double best = std::numeric_limits<double>::infinity();
        for (int mask = 0; mask < (1 << n); ++mask) {
            if (__builtin_popcount(mask) != sizes[1]) continue;
            std::vector<int32_t> lab(n);
            for (int i = 0; i < n; ++i) lab[i] = (mask >> i) & 1;
            best = std::min(best, within_ss(X, n, d, lab, k));
        }
        KMeansOptions o;
        o.cost_scale = 0;  // exact float costs: no quantisation ties on this scale
        o.sizes = sizes;
        const KMeansResult r = balanced_kmeans(X.data(), n, d, k, o);
        EXPECT_EQ(label_counts(r.labels, k), sizes);
        EXPECT_NEAR(within_ss(X, n, d, r.labels, k), best, 1e-9 + 1e-6 * best) << "seed " << seed;
        EXPECT_NEAR(r.inertia, best, 1e-4 * best) << "seed " << seed;
    }
}

TEST(BalancedKMeans, ExactSizesWhenKDoesNotDivideN) {
    Rng rng(3);
    const int n = 103, d = 12;
    std::vector<float> X(size_t(n) * d);
    for (auto& v : X) v = float(rng.normal());
    for (int k : {2, 7, 8, 10}) {
        KMeansOptions o;
        o.restarts = 2;
        const KMeansResult r = balanced_kmeans(X.data(), n, d, k, o);
        EXPECT_EQ(label_counts(r.labels, k), balanced_widths(n, k)) << "k=" << k;
    }
    // k == n: every row alone.
    KMeansOptions o;
    o.restarts = 1;
    const KMeansResult r = balanced_kmeans(X.data(), 5, d, 5, o);
    EXPECT_EQ(label_counts(r.labels, 5), std::vector<int>(5, 1));
    EXPECT_NEAR(r.inertia, 0.0, 1e-4);
}

TEST(BalancedKMeans, SameSeedSameLabelsAnyThreadCount) {
    // Large enough (n x d >= 2^20) for the passes over X to run on several threads.
    Rng rng(9);
    const int n = 4200, d = 256, k = 6;
    std::vector<float> X(size_t(n) * d);
    for (auto& v : X) v = float(rng.normal());
    for (KMeansMetric m : {KMeansMetric::L2, KMeansMetric::Spherical}) {
        KMeansOptions o;
        o.metric = m;
        o.restarts = 3;
        o.max_iter = 8;
        o.seed = 123;
        o.threads = 2;
        const KMeansResult a = balanced_kmeans(X.data(), n, d, k, o);
        o.threads = 1;
        const KMeansResult c = balanced_kmeans(X.data(), n, d, k, o);
        EXPECT_EQ(a.labels, c.labels);
        EXPECT_EQ(a.centers, c.centers);
        EXPECT_EQ(a.inertia, c.inertia);
        EXPECT_EQ(a.iterations, c.iterations);
        EXPECT_EQ(a.restart_inertia, c.restart_inertia);
        // The winner is the restart with the smallest inertia.
        EXPECT_EQ(a.inertia, *std::min_element(a.restart_inertia.begin(), a.restart_inertia.end()));
        EXPECT_EQ(a.inertia, a.restart_inertia[a.best_restart]);
        for (int it : a.iterations) {
            EXPECT_GE(it, 1);
            EXPECT_LE(it, o.max_iter);
        }
    }
}

TEST(BalancedKMeans, MaxIterStopsEarly) {
    Rng rng(4);
    const int n = 300, d = 16, k = 6;
    std::vector<float> X(size_t(n) * d);
    for (auto& v : X) v = float(rng.normal());
    KMeansOptions o;
    o.restarts = 2;
    o.max_iter = 2;
    o.tol = 0;
    const KMeansResult r = balanced_kmeans(X.data(), n, d, k, o);
    EXPECT_EQ(r.iterations, (std::vector<int>{2, 2}));
    EXPECT_EQ(label_counts(r.labels, k), balanced_widths(n, k));
}

TEST(BalancedKMeans, RejectsBadInput) {
    std::vector<float> X(40, 1.0f);
    KMeansOptions o;
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 0, o), Error);
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 11, o), Error);
    EXPECT_THROW(balanced_kmeans(nullptr, 10, 4, 2, o), Error);
    EXPECT_THROW(balanced_kmeans(X.data(), 0, 4, 1, o), Error);
    KMeansOptions bad = o;
    bad.sizes = {5, 4};  // sums to 9
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 2, bad), Error);
    bad.sizes = {10, 0};
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 2, bad), Error);
    bad = o;
    bad.restarts = 0;
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 2, bad), Error);
    bad = o;
    bad.max_iter = 0;
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 2, bad), Error);
    X[17] = std::nanf("");
    EXPECT_THROW(balanced_kmeans(X.data(), 10, 4, 2, o), Error);
    EXPECT_THROW(parse_kmeans_metric("euclid"), Error);
    EXPECT_EQ(parse_kmeans_metric("spherical"), KMeansMetric::Spherical);
    EXPECT_STREQ(kmeans_metric_name(parse_kmeans_metric("cos")), "cos");
}
