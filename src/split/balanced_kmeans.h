#pragma once
// Balanced k-means: every cluster gets an exact, prescribed number of rows.
// Follows k-means-constrained 0.7.3 (the library the reference clustering
// split uses, see reference/llama-moe-expert-construction.md §2):
//
//   * data mean-centred before everything (l2, cos); sizes fixed per cluster
//   * k-means++ init (first centre uniform, then n_local_trials = 2 + floor(ln k)
//     candidates drawn by D^2, the one lowering the potential most wins)
//   * E-step: exact min-cost balanced assignment on costs round(1000 * D)
//   * M-step: arithmetic mean of each cluster's rows
//   * stop when ||C_new - C_old||_F^2 <= tol * mean column variance
//   * the restart with the lowest inertia (sum of squared chosen distances) wins;
//     per restart the labels are those of the last centres, the centres those of
//     the iteration with the lowest inertia (library quirk, kept)
//
// Metrics:
//   l2        ||xc_i - c_j||  (not squared) on mean-centred rows
//   cos       1 - cos(xc_i, c_j) on mean-centred rows vs arithmetic-mean centres (reference quirk)
//   spherical 1 - cos(u_i, c_j) with u_i = x_i / ||x_i||, centres renormalised to unit length
//
// All restarts advance in lockstep: one GEMM per step computes the distances
// of every active restart (one pass over X for all of them, row blocks spread
// over the threads), then the per-restart work (distances, exact
// assignment, M-step) runs in parallel across restarts. Results do not depend
// on the thread count.
#include <cstdint>
#include <string>
#include <vector>

namespace moefy {

enum class KMeansMetric { L2, Cos, Spherical };

KMeansMetric parse_kmeans_metric(const std::string& name);  // "l2", "cos", "spherical"; throws otherwise
const char* kmeans_metric_name(KMeansMetric m);

struct KMeansOptions {
    KMeansMetric metric = KMeansMetric::L2;
    int restarts = 10;
    int max_iter = 500;
    double tol = 1e-4;          // relative to the mean column variance, as sklearn
    uint64_t seed = 0;          // restart r draws from Rng(seed, r)
    double cost_scale = 1000;   // E-step costs round(cost_scale * D) as integers (reference); 0: float costs
    std::vector<int> sizes;     // [k] exact cluster sizes, sum n; empty: balanced_widths(n, k)
    int threads = 0;            // per-restart work on at most this many threads; 0: parallel_threads()
};

struct KMeansResult {
    std::vector<int32_t> labels;          // [n] cluster of each row; cluster j has exactly sizes[j] rows
    std::vector<float> centers;           // [k, d] in the input's coordinates (unit rows for spherical)
    double inertia = 0;                   // sum_i D(i, label_i)^2 of the winning restart
    int best_restart = 0;
    std::vector<int> iterations;          // [restarts]
    std::vector<double> restart_inertia;  // [restarts]
    // Wall seconds per phase, all restarts together (for the benchmark).
    double seconds_init = 0;      // k-means++ (its GEMMs included)
    double seconds_distance = 0;  // distance GEMMs and the distance/cost transform
    double seconds_assign = 0;    // exact balanced assignment
    double seconds_update = 0;    // M-step
    double seconds_wall = 0;      // everything, including the data pass before the restarts
};

// X: [n, d] row-major, finite. Requires 1 <= k <= n. Throws moefy::Error on bad input.
KMeansResult balanced_kmeans(const float* X, int n, int d, int k, const KMeansOptions& opts);

}  // namespace moefy
