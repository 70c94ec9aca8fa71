#include "split/balanced_kmeans.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>

#include <cblas.h>

#include "common/error.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "split/balanced_assignment.h"
#include "split/expert_plan.h"

namespace moefy {

KMeansMetric parse_kmeans_metric(const std::string& name) {
    if (name == "l2") return KMeansMetric::L2;
    if (name == "cos") return KMeansMetric::Cos;
    if (name == "spherical") return KMeansMetric::Spherical;
    fail("unknown k-means metric '{}' (expected l2, cos or spherical)", name);
}

const char* kmeans_metric_name(KMeansMetric m) {
    switch (m) {
        case KMeansMetric::L2: return "l2";
        case KMeansMetric::Cos: return "cos";
        case KMeansMetric::Spherical: return "spherical";
    }
    return "?";
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Below this much work per pass (rows x columns) a parallel region costs more
// than it saves, worst of all on a busy machine where a barrier waits for a
// descheduled thread.
constexpr int64_t kParallelWork = int64_t(1) << 20;

// Threads for a loop: the budget at the top level, one inside a parallel restart.
int loop_threads(int budget) { return in_parallel_region() ? 1 : budget; }

// The rows as the metric sees them, never materialised: p_i = s_i * x_i - mu.
// l2/cos: s_i = 1, mu = column mean (centred data). spherical: s_i = 1/||x_i||, mu = 0.
struct Points {
    const float* X = nullptr;
    int n = 0, d = 0;
    std::vector<float> scale;    // [n] s_i
    std::vector<float> mu;       // [d]
    std::vector<double> sqnorm;  // [n] ||p_i||^2
    double tol_abs = 0;          // tol * mean column variance of p
    int threads = 1;             // thread budget for passes over the data
};

// Column sums of s_i * x_i in double, split into column blocks (one per thread).
std::vector<double> column_sums(const float* X, int n, int d, const std::vector<float>& scale, int threads) {
    std::vector<double> sum(d, 0.0);
    const int parts = std::max(1, std::min(loop_threads(threads), d / 64));
    parallel_for_each(parts, [&](int64_t p) {
        const int j0 = int(int64_t(d) * p / parts), j1 = int(int64_t(d) * (p + 1) / parts);
        for (int i = 0; i < n; ++i) {
            const float* x = X + size_t(i) * d;
            const double s = scale[i];
            for (int j = j0; j < j1; ++j) sum[j] += s * x[j];
        }
    });
    return sum;
}

Points make_points(const float* X, int n, int d, const KMeansOptions& opts) {
    Points P;
    P.X = X;
    P.n = n;
    P.d = d;
    P.scale.assign(size_t(n), 1.0f);
    P.mu.assign(size_t(d), 0.0f);
    P.sqnorm.assign(size_t(n), 0.0);
    P.threads = int64_t(n) * d < kParallelWork ? 1 : opts.threads > 0 ? opts.threads : parallel_threads();
    const bool unit = opts.metric == KMeansMetric::Spherical;
    if (unit) {
        parallel_for(n, [&](int64_t i0, int64_t i1) {
            for (int i = int(i0); i < int(i1); ++i) {
                const float* x = X + size_t(i) * d;
                double s = 0;
                for (int j = 0; j < d; ++j) s += double(x[j]) * x[j];
                P.scale[i] = s > 0 ? float(1.0 / std::sqrt(s)) : 0.0f;  // a zero row stays at the origin
            }
        }, true, loop_threads(P.threads));
    }
    const std::vector<double> colsum = column_sums(X, n, d, P.scale, P.threads);
    if (!unit)
        for (int j = 0; j < d; ++j) P.mu[j] = float(colsum[j] / n);
    int bad = -1;
    std::mutex bad_mutex;
    parallel_for(n, [&](int64_t i0, int64_t i1) {
        for (int i = int(i0); i < int(i1); ++i) {
            const float* x = X + size_t(i) * d;
            const float s = P.scale[i];
            double q = 0;
            for (int j = 0; j < d; ++j) {
                const double v = double(s * x[j]) - P.mu[j];
                q += v * v;
            }
            P.sqnorm[i] = q;
            if (!std::isfinite(q)) {
                std::lock_guard<std::mutex> lock(bad_mutex);
                bad = bad < 0 ? i : std::min(bad, i);
            }
        }
    }, true, loop_threads(P.threads));
    if (bad >= 0) fail("balanced_kmeans: row {} holds a non-finite value", bad);
    // mean_j var_j = (sum_i ||p_i||^2 / n - ||mean p||^2) / d, as sklearn's _tolerance.
    double total = 0, mean_sq = 0;
    for (int i = 0; i < n; ++i) total += P.sqnorm[i];
    for (int j = 0; j < d; ++j) {
        const double m = colsum[j] / n - P.mu[j];
        mean_sq += m * m;
    }
    P.tol_abs = std::max(0.0, (total / n - mean_sq) / d) * opts.tol;
    return P;
}

// G[i, j] = p_i . c_j for centres C [m, d] given in p-space. G: [n, m].
// One single-threaded sgemm per fixed block of rows, blocks spread over the
// threads: every element is computed by the same call whatever the thread
// count (OpenBLAS itself runs one thread, common/parallel.cpp).
void point_dots(const Points& P, const float* C, int m, float* G) {
    constexpr int kRowBlock = 512;
    std::vector<double> mc(m, 0.0);  // mu . c_j
    for (int j = 0; j < m; ++j)
        for (int t = 0; t < P.d; ++t) mc[j] += double(P.mu[t]) * C[size_t(j) * P.d + t];
    const int blocks = (P.n + kRowBlock - 1) / kRowBlock;
    parallel_for_dynamic(blocks, 1, [&](int64_t b0, int64_t b1, int) {
        for (int b = int(b0); b < int(b1); ++b) {
            const int r0 = b * kRowBlock, rows = std::min(kRowBlock, P.n - r0);
            float* g = G + size_t(r0) * m;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, m, P.d, 1.0f, P.X + size_t(r0) * P.d, P.d, C, P.d,
                        0.0f, g, m);
            for (int i = 0; i < rows; ++i)  // x_i . c_j -> p_i . c_j = s_i (x_i . c_j) - mu . c_j
                for (int j = 0; j < m; ++j)
                    g[size_t(i) * m + j] = float(double(P.scale[r0 + i]) * g[size_t(i) * m + j] - mc[j]);
        }
    }, true, loop_threads(P.threads));
}

std::vector<double> row_sqnorms(const float* C, int m, int d) {
    std::vector<double> r(m, 0.0);
    for (int j = 0; j < m; ++j)
        for (int t = 0; t < d; ++t) r[j] += double(C[size_t(j) * d + t]) * C[size_t(j) * d + t];
    return r;
}

void materialise_point(const Points& P, int i, float* out) {
    const float* x = P.X + size_t(i) * P.d;
    const float s = P.scale[i];
    for (int j = 0; j < P.d; ++j) out[j] = s * x[j] - P.mu[j];
}

// Column blocks for a pass over X: one per thread, each column still visits
// its rows in index order, so sums do not depend on the thread count.
int column_parts(const Points& P) { return std::max(1, std::min(loop_threads(P.threads), P.d / 64)); }
int part_begin(int d, int p, int parts) { return int(int64_t(d) * p / parts); }

// One restart of k-means-constrained's single run. All restarts advance in
// lockstep, so that each pass over X (the distance GEMM, the k-means++
// candidate GEMM, the first M-step) serves every restart at once: with k =
// 8..16 columns per restart a GEMM alone is bound by reading X, with 10 x k
// columns it is bound by arithmetic.
struct Restart {
    enum Phase { Iterating, Final, Done };
    Rng rng;
    Phase phase = Iterating;
    std::vector<float> C, C_new;  // [k, d] centres in p-space
    std::vector<double> S;        // [k, d] sums of s_i x_i per cluster, in double
    std::vector<int32_t> labels;  // [n] current E-step
    std::vector<int32_t> summed;  // [n] labels S was built from
    std::vector<float> D;         // [n, k] metric distances
    std::vector<int64_t> Q;       // [n, k] quantised costs
    std::vector<double> closest;  // [n] k-means++ squared distance to the nearest chosen centre
    double pot = 0;
    double inertia = 0, shift = 0;
    int it = 0;
    std::vector<int32_t> best_labels;
    std::vector<float> best_centres;
    double best_inertia = std::numeric_limits<double>::infinity();

    explicit Restart(uint64_t seed, uint64_t r) : rng(seed, r) {}
};

// Accumulates thread-seconds: wall time x the threads the phase kept busy.
struct Timer {
    double* acc;
    int threads = 1;
    Clock::time_point t0 = Clock::now();
    ~Timer() { *acc += since(t0) * threads; }
};

// Runs fn(r) for every listed restart: in parallel across restarts (one
// parallel region, no barrier inside), or, for a single one, directly so that
// its inner loops can use the threads.
template <class Fn>
void for_each_restart(const std::vector<int>& list, int threads, Fn&& fn) {
    const int m = int(list.size());
    if (m == 1 || threads <= 1) {
        for (int r : list) fn(r);
        return;
    }
    std::vector<std::exception_ptr> errors(m);
    parallel_for_dynamic(m, 1, [&](int64_t a0, int64_t a1, int) {
        for (int a = int(a0); a < int(a1); ++a) {
            try {
                fn(list[a]);
            } catch (...) {
                errors[a] = std::current_exception();
            }
        }
    }, true, std::min(threads, m));
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// Threads a GEMM over the data keeps busy (for the thread-second accounting).
int gemm_threads(const Points& P) { return std::min(P.threads, std::max(1, (P.n + 511) / 512)); }

// sklearn's legacy k-means++ (_k_init) in p-space, with squared Euclidean
// distances, for every restart at once: the first centre uniform, then per
// step n_local_trials = 2 + floor(ln k) candidates drawn with probability
// proportional to D^2; the candidate leaving the smallest potential wins.
// Per step: one GEMM for all restarts' candidates, then one parallel region
// in which each restart scores its candidates and draws the next ones.
void kmeanspp(const Points& P, int k, std::vector<Restart>& runs, const std::vector<int>& all, int threads,
              double& t_gemm, double& t_other) {
    const int n = P.n, d = P.d, R = int(runs.size());
    const int trials = 2 + int(std::log(double(k)));
    const int m = R * trials;  // GEMM columns: restart r's candidates are r*trials .. r*trials+trials-1
    std::vector<float> cand(size_t(m) * d);
    std::vector<float> G(size_t(n) * m);
    std::vector<double> cn;

    auto draw = [&](Restart& run, int r) {  // searchsorted(cumsum(closest), u * pot), side left, clipped
        std::vector<double> cumsum(n);
        double acc = 0;
        for (int i = 0; i < n; ++i) cumsum[i] = acc += run.closest[i];
        for (int t = 0; t < trials; ++t) {
            const double u = run.rng.uniform() * run.pot;
            const auto id = std::min<ptrdiff_t>(std::lower_bound(cumsum.begin(), cumsum.end(), u) - cumsum.begin(), n - 1);
            materialise_point(P, int(id), cand.data() + (size_t(r) * trials + t) * d);
        }
    };
    auto gemm = [&](int cols) {
        Timer t{&t_gemm, gemm_threads(P)};
        point_dots(P, cand.data(), cols, G.data());
        cn = row_sqnorms(cand.data(), cols, d);
    };
    auto per_restart = [&](auto&& fn) {
        const int used = std::min(threads, R);
        auto t0 = Clock::now();
        for_each_restart(all, threads, fn);
        t_other += since(t0) * used;
    };

    for (int r = 0; r < R; ++r) materialise_point(P, int(runs[r].rng.below(uint64_t(n))), cand.data() + size_t(r) * d);
    gemm(R);
    per_restart([&](int r) {
        Restart& run = runs[r];
        std::copy_n(cand.data() + size_t(r) * d, d, run.C.data());
        run.closest.resize(size_t(n));
        run.pot = 0;
        for (int i = 0; i < n; ++i) {
            run.closest[i] = std::max(0.0, P.sqnorm[i] + cn[r] - 2.0 * G[size_t(i) * R + r]);
            run.pot += run.closest[i];
        }
    });
    if (k > 1) per_restart([&](int r) { draw(runs[r], r); });  // apart: cand is still read above
    for (int c = 1; c < k; ++c) {
        gemm(m);
        per_restart([&](int r) {
            Restart& run = runs[r];
            auto dist = [&](int i, int t) {
                const int col = r * trials + t;
                return std::max(0.0, P.sqnorm[i] + cn[col] - 2.0 * G[size_t(i) * m + col]);
            };
            int best = 0;
            double best_pot = 0;
            for (int t = 0; t < trials; ++t) {
                double s = 0;
                for (int i = 0; i < n; ++i) s += std::min(run.closest[i], dist(i, t));
                if (t == 0 || s < best_pot) best = t, best_pot = s;
            }
            for (int i = 0; i < n; ++i) run.closest[i] = std::min(run.closest[i], dist(i, best));
            run.pot = best_pot;
            std::copy_n(cand.data() + (size_t(r) * trials + best) * d, d, run.C.data() + size_t(c) * d);
            if (c + 1 < k) draw(run, r);  // only this restart's candidate slots
        });
    }
    for (int r : all) std::vector<double>().swap(runs[r].closest);
}

// Distances D [n, k] (and costs round(scale * D)) of one restart from its
// columns col0 .. col0+k-1 of the dot products G [n, ldg].
void distances(const Points& P, const float* G, int ldg, int col0, const std::vector<double>& cn, int k,
               const KMeansOptions& opts, Restart& run) {
    const bool l2 = opts.metric == KMeansMetric::L2;
    const bool quantise = opts.cost_scale > 0;
    parallel_for(P.n, [&](int64_t i0, int64_t i1) {
        for (int i = int(i0); i < int(i1); ++i) {
            const float* g = G + size_t(i) * ldg + col0;
            for (int j = 0; j < k; ++j) {
                const size_t ij = size_t(i) * k + j;
                const double cj = cn[size_t(col0) + j];
                double dist;
                if (l2) {
                    dist = std::sqrt(std::max(0.0, P.sqnorm[i] + cj - 2.0 * g[j]));
                } else {  // 1 - cosine; a zero vector is at cosine 0 from everything (sklearn normalize)
                    const double den = std::sqrt(P.sqnorm[i] * cj);
                    dist = std::clamp(1.0 - (den > 0 ? g[j] / den : 0.0), 0.0, 2.0);
                }
                run.D[ij] = float(dist);
                if (quantise) run.Q[ij] = std::llround(opts.cost_scale * dist);
            }
        }
    }, true, loop_threads(P.threads));
}

// Exact balanced labels for the distances; returns the inertia sum_i D(i, l_i)^2.
double assign(int n, int k, const KMeansOptions& opts, std::span<const int> sizes, Restart& run) {
    if (opts.cost_scale > 0)
        balanced_assignment(run.Q.data(), n, k, sizes, run.labels.data());
    else
        balanced_assignment(run.D.data(), n, k, sizes, run.labels.data());
    double inertia = 0;
    for (int i = 0; i < n; ++i) {
        const double dist = run.D[size_t(i) * k + run.labels[i]];
        inertia += dist * dist;
    }
    return inertia;
}

// First M-step of every listed restart in one pass over X: S_r[label] += s_i x_i.
void sum_clusters(const Points& P, int k, std::vector<Restart>& runs, const std::vector<int>& list) {
    const int n = P.n, d = P.d;
    for (int r : list) runs[r].S.assign(size_t(k) * d, 0.0);
    const int parts = column_parts(P);
    parallel_for_each(parts, [&](int64_t p) {
        const int j0 = part_begin(d, int(p), parts), j1 = part_begin(d, int(p) + 1, parts);
        for (int i = 0; i < n; ++i) {
            const float* x = P.X + size_t(i) * d;
            const double s = P.scale[i];
            for (int r : list) {
                double* c = runs[r].S.data() + size_t(runs[r].labels[i]) * d;
                for (int j = j0; j < j1; ++j) c[j] += s * x[j];
            }
        }
    });
    for (int r : list) runs[r].summed = runs[r].labels;
}

// Later M-steps: only the rows whose label changed move their contribution.
void move_changed_rows(const Points& P, Restart& run) {
    const int n = P.n, d = P.d;
    std::vector<int> moved;
    for (int i = 0; i < n; ++i)
        if (run.labels[i] != run.summed[i]) moved.push_back(i);
    const int parts = column_parts(P);
    parallel_for_each(parts, [&](int64_t p) {
        const int j0 = part_begin(d, int(p), parts), j1 = part_begin(d, int(p) + 1, parts);
        for (int i : moved) {
            const float* x = P.X + size_t(i) * d;
            const double s = P.scale[i];
            double* from = run.S.data() + size_t(run.summed[i]) * d;
            double* to = run.S.data() + size_t(run.labels[i]) * d;
            for (int j = j0; j < j1; ++j) {
                from[j] -= s * x[j];
                to[j] += s * x[j];
            }
        }
    });
    run.summed = run.labels;
}

// C_new_j = S_j / |j| - mu (renormalised for spherical).
void centres_from_sums(const Points& P, int k, std::span<const int> sizes, bool spherical, Restart& run) {
    const int d = P.d;
    for (int c = 0; c < k; ++c) {
        const double* sc = run.S.data() + size_t(c) * d;
        float* cc = run.C_new.data() + size_t(c) * d;
        const double inv = 1.0 / sizes[c];
        for (int j = 0; j < d; ++j) cc[j] = float(sc[j] * inv - P.mu[j]);
        if (spherical) {
            double q = 0;
            for (int j = 0; j < d; ++j) q += double(cc[j]) * cc[j];
            if (q > 0) {
                const float r = float(1.0 / std::sqrt(q));
                for (int j = 0; j < d; ++j) cc[j] *= r;
            }
        }
    }
}

// After an M-step: keep the best (labels, centres) by inertia, measure the
// centre shift, and decide whether the restart stops. As the library: the
// labels finally returned are those of the last centres (one more E-step,
// phase Final) unless the centres did not move at all.
void finish_iteration(const Points& P, const KMeansOptions& opts, Restart& run) {
    if (run.inertia < run.best_inertia) {
        run.best_inertia = run.inertia;
        run.best_labels = run.labels;
        run.best_centres = run.C_new;
    }
    double shift = 0;
    for (size_t t = 0; t < run.C.size(); ++t) {
        const double v = double(run.C_new[t]) - run.C[t];
        shift += v * v;
    }
    run.shift = shift;
    run.C.swap(run.C_new);
    ++run.it;
    if (shift <= P.tol_abs || run.it >= opts.max_iter) run.phase = shift > 0 ? Restart::Final : Restart::Done;
}

}  // namespace

KMeansResult balanced_kmeans(const float* X, int n, int d, int k, const KMeansOptions& opts) {
    if (!X) fail("balanced_kmeans: no data");
    if (n < 1 || d < 1) fail("balanced_kmeans: empty data ({} rows x {} columns)", n, d);
    if (k < 1 || k > n) fail("balanced_kmeans: {} clusters for {} rows (need 1 <= k <= n)", k, n);
    if (opts.restarts < 1) fail("balanced_kmeans: restarts must be >= 1, got {}", opts.restarts);
    if (opts.max_iter < 1) fail("balanced_kmeans: max_iter must be >= 1, got {}", opts.max_iter);
    if (!(opts.tol >= 0)) fail("balanced_kmeans: tol must be >= 0, got {}", opts.tol);
    if (!(opts.cost_scale >= 0) || opts.cost_scale > 1e12)
        fail("balanced_kmeans: cost_scale must be in [0, 1e12], got {}", opts.cost_scale);
    std::vector<int> sizes = opts.sizes.empty() ? balanced_widths(n, k) : opts.sizes;
    if (int(sizes.size()) != k) fail("balanced_kmeans: {} sizes for {} clusters", sizes.size(), k);
    int64_t total = 0;
    for (int j = 0; j < k; ++j) {
        if (sizes[j] < 1) fail("balanced_kmeans: size of cluster {} is {} (must be >= 1)", j, sizes[j]);
        total += sizes[j];
    }
    if (total != n) fail("balanced_kmeans: cluster sizes sum to {} but there are {} rows", total, n);

    KMeansResult res;
    auto t0 = Clock::now();
    const Points P = make_points(X, n, d, opts);
    const int R = opts.restarts;
    const int threads = P.threads;
    const bool spherical = opts.metric == KMeansMetric::Spherical;

    std::vector<Restart> runs;
    runs.reserve(size_t(R));
    std::vector<int> all;
    for (int r = 0; r < R; ++r) {
        runs.emplace_back(opts.seed, uint64_t(r));
        Restart& run = runs.back();
        run.C.resize(size_t(k) * d);
        run.C_new.resize(size_t(k) * d);
        run.labels.resize(size_t(n));
        run.D.resize(size_t(n) * k);
        if (opts.cost_scale > 0) run.Q.resize(size_t(n) * k);
        all.push_back(r);
    }
    double init_gemm = 0, init_other = 0;
    kmeanspp(P, k, runs, all, threads, init_gemm, init_other);
    res.seconds_init = init_gemm + init_other;

    // Per round: one GEMM for all active restarts, then one parallel region in
    // which each restart turns its columns into distances, solves the exact
    // assignment and updates its centres (the first M-step, which reads all
    // of X, is done for all restarts in one pass after the region).
    std::vector<float> Cs, G;  // stacked centres of the active restarts [m, d], their dot products [n, m]
    std::vector<double> t_dist(R, 0.0), t_assign(R, 0.0), t_update(R, 0.0);
    for (;;) {
        std::vector<int> active;
        for (int r = 0; r < R; ++r)
            if (runs[r].phase != Restart::Done) active.push_back(r);
        if (active.empty()) break;
        const int m = int(active.size()) * k;
        std::vector<double> cn;
        {
            Timer t{&res.seconds_distance, gemm_threads(P)};
            Cs.resize(size_t(m) * d);
            G.resize(size_t(n) * m);
            for (size_t a = 0; a < active.size(); ++a)
                std::copy(runs[active[a]].C.begin(), runs[active[a]].C.end(), Cs.begin() + a * k * d);
            point_dots(P, Cs.data(), m, G.data());
            cn = row_sqnorms(Cs.data(), m, d);
        }
        std::vector<int> slot(size_t(R), -1), first;
        for (size_t a = 0; a < active.size(); ++a) slot[active[a]] = int(a);
        for (int r : active)
            if (runs[r].phase == Restart::Iterating && runs[r].summed.empty()) first.push_back(r);
        for_each_restart(active, threads, [&](int r) {
            Restart& run = runs[r];
            auto t0 = Clock::now();
            distances(P, G.data(), m, slot[r] * k, cn, k, opts, run);
            auto t1 = Clock::now();
            run.inertia = assign(n, k, opts, sizes, run);
            auto t2 = Clock::now();
            t_dist[r] += std::chrono::duration<double>(t1 - t0).count();
            t_assign[r] += std::chrono::duration<double>(t2 - t1).count();
            if (run.phase == Restart::Final) {  // relabelled with the last centres: done
                run.best_labels = run.labels;
                run.best_inertia = run.inertia;
                run.phase = Restart::Done;
                return;
            }
            if (run.summed.empty()) return;  // first M-step: batched below
            move_changed_rows(P, run);
            centres_from_sums(P, k, sizes, spherical, run);
            finish_iteration(P, opts, run);
            t_update[r] += since(t2);
        });
        if (!first.empty()) {
            Timer t{&res.seconds_update, column_parts(P)};
            sum_clusters(P, k, runs, first);
            for (int r : first) {
                centres_from_sums(P, k, sizes, spherical, runs[r]);
                finish_iteration(P, opts, runs[r]);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        res.seconds_distance += t_dist[r];
        res.seconds_assign += t_assign[r];
        res.seconds_update += t_update[r];
    }

    int best = 0;
    for (int r = 0; r < R; ++r) {
        res.iterations.push_back(runs[r].it);
        res.restart_inertia.push_back(runs[r].best_inertia);
        if (runs[r].best_inertia < runs[best].best_inertia) best = r;  // first wins ties
    }
    Restart& b = runs[best];
    res.best_restart = best;
    res.inertia = b.best_inertia;
    res.labels = std::move(b.best_labels);
    res.centers = std::move(b.best_centres);
    for (int c = 0; c < k; ++c)
        for (int j = 0; j < d; ++j) res.centers[size_t(c) * d + j] += P.mu[j];
    res.seconds_wall = since(t0);
    return res;
}

}  // namespace moefy
