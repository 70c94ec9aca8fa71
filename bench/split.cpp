// bench_split: balanced k-means on one synthetic LLaMA-7B FFN layer
// (up_proj rows: 11008 x 4096), E = 8 and 16, 10 restarts, as the reference
// clustering split runs it. Prints seconds per restart (wall and process
// CPU: on a shared machine the CPU seconds are the stable number), iterations,
// the shares of distance GEMMs / balanced assignment / M-step / k-means++,
// and the machine's single-thread sgemm GFLOP/s on the same shapes, measured
// in the same run.
//
//   bench_split [--quick] [--restarts R] [--metric l2|cos|spherical]
//   --quick: 2752 x 1024, E = 8 and 16, 3 restarts
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include <cblas.h>

#include "common/parallel.h"
#include "common/rng.h"
#include "split/balanced_assignment.h"
#include "split/balanced_kmeans.h"

using namespace moefy;
using Clock = std::chrono::steady_clock;

static double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
// CPU seconds of the whole process: on a shared machine this, not the wall time, shows the work done.
static double cpu_secs() {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// Rows with weak cluster structure, like FFN input weights: 64 latent
// directions, each row a mixture of its own direction (small weight) and
// isotropic noise; rows then L2-normalised, as the split does.
static std::vector<float> synthetic_layer(int n, int d, uint64_t seed) {
    const int latent = 64;
    std::vector<float> dirs(size_t(latent) * d), X(size_t(n) * d);
    Rng r0(seed);
    for (auto& v : dirs) v = float(r0.normal());
    parallel_for_each(n, [&](int64_t i) {
        Rng rng(seed, uint64_t(i) + 100);
        const int g = int(rng.below(latent));
        const double w = 0.6 + 0.4 * rng.uniform();
        float* x = X.data() + size_t(i) * d;
        double q = 0;
        for (int j = 0; j < d; ++j) {
            x[j] = float(w * dirs[size_t(g) * d + j] + 1.5 * rng.normal());
            q += double(x[j]) * x[j];
        }
        const float inv = float(1.0 / std::sqrt(q));
        for (int j = 0; j < d; ++j) x[j] *= inv;
    });
    return X;
}

// sgemm GFLOP/s on the distance GEMM shape [n, d] x [d, k], and on a square one:
// one single-threaded call (OpenBLAS runs one thread process-wide), or with
// `pool`, fixed blocks of 512 rows shared by the pool's threads (one
// single-threaded call each, as the engine runs its products).
static double sgemm_gflops(int m, int n, int k, int reps, bool pool = false) {
    std::vector<float> A(size_t(m) * k, 0.5f), B(size_t(n) * k, 0.25f), C(size_t(m) * n);
    constexpr int kRows = 512;
    auto product = [&] {
        parallel_for((m + kRows - 1) / kRows, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
                const int r0 = int(b) * kRows, rows = std::min(kRows, m - r0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, k, 1.0f, A.data() + size_t(r0) * k, k,
                            B.data(), k, 0.0f, C.data() + size_t(r0) * n, n);
            }
        }, pool);
    };
    product();
    auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) product();
    return 2.0 * m * n * k * reps / secs(t0) / 1e9;
}

int main(int argc, char** argv) {
    bool quick = false;
    int restarts = -1;
    std::string metric = "l2";
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--quick")) quick = true;
        else if (!std::strcmp(argv[i], "--restarts") && i + 1 < argc) restarts = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--metric") && i + 1 < argc) metric = argv[++i];
        else {
            std::fprintf(stderr, "usage: bench_split [--quick] [--restarts R] [--metric l2|cos|spherical]\n");
            return 2;
        }
    }
    const int n = quick ? 2752 : 11008, d = quick ? 1024 : 4096;
    if (restarts < 0) restarts = quick ? 3 : 10;
    std::printf("bench_split: %d x %d rows, %d restarts, metric %s, %d threads\n", n, d, restarts, metric.c_str(),
                parallel_threads());

    auto t0 = Clock::now();
    const std::vector<float> X = synthetic_layer(n, d, 1);
    std::printf("synthetic layer: %.2f s\n", secs(t0));

    // Machine reference: the GEMM shapes k-means runs, on the pool and single-threaded.
    const int nt = parallel_threads();
    const double g_sq = sgemm_gflops(2048, 2048, 2048, 2, true);
    const double g16_all = sgemm_gflops(n, 16, d, 5, true);
    const double g16_one = sgemm_gflops(n, 16, d, 5);
    const double g8_one = sgemm_gflops(n, 8, d, 5);
    const double g160_one = sgemm_gflops(n, 160, d, 2);
    std::printf("sgemm GFLOP/s (OpenBLAS 1 thread per pool thread): square 2048 (%d thr) %.1f | [%d x %d]x[%d x 16]: "
                "%d thr %.1f, 1 thr %.1f | x8, 1 thr %.1f | x160, 1 thr %.1f\n",
                nt, g_sq, n, d, d, nt, g16_all, g16_one, g8_one, g160_one);

    for (int E : {8, 16}) {
        KMeansOptions o;
        o.metric = parse_kmeans_metric(metric);
        o.restarts = restarts;
        auto t1 = Clock::now();
        const double c1 = cpu_secs();
        const KMeansResult r = balanced_kmeans(X.data(), n, d, E, o);
        const double wall = secs(t1), cpu = cpu_secs() - c1;
        int iters = 0;
        for (int it : r.iterations) iters += it;
        const double busy = r.seconds_init + r.seconds_distance + r.seconds_assign + r.seconds_update;
        // One distance GEMM per E-step (iterations + 1 per restart).
        const double gemm_flops = 2.0 * n * d * E * (iters + restarts);
        std::printf("\nE=%d: total %.2f s wall, %.2f s CPU for %d restarts (per restart: %.2f s wall, %.2f s CPU)\n",
                    E, wall, cpu, restarts, wall / restarts, cpu / restarts);
        std::printf("  iterations per restart:");
        for (int it : r.iterations) std::printf(" %d", it);
        std::printf("  (mean %.1f)\n", double(iters) / restarts);
        std::printf("  shares of %.2f thread-s: distance GEMM+transform %.1f%%, balanced assignment %.1f%%, "
                    "M-step %.1f%%, k-means++ %.1f%%\n", busy,
                    100 * r.seconds_distance / busy, 100 * r.seconds_assign / busy, 100 * r.seconds_update / busy,
                    100 * r.seconds_init / busy);
        std::printf("  distance GEMM+transform: %.1f GFLOP/s per thread (single-thread sgemm: %.1f on [n x %d], "
                    "%.1f on [n x 160])\n",
                    gemm_flops / r.seconds_distance / 1e9, E == 16 ? g16_one : g8_one, E, g160_one);
        std::printf("  assignment: %.2f ms per E-step; inertia %.4f (best restart %d)\n",
                    1e3 * r.seconds_assign / (iters + restarts), r.inertia, r.best_restart);
    }

    // Exact assignment vs LEMON NetworkSimplex on one E-step worth of costs.
    {
        const int k = 16;
        Rng rng(5);
        std::vector<int64_t> C(size_t(n) * k);
        std::vector<double> c(size_t(k) * 8);
        for (auto& v : c) v = rng.normal();
        for (int i = 0; i < n; ++i) {
            double p[8];
            for (double& v : p) v = rng.normal();
            for (int j = 0; j < k; ++j) {
                double s = 0;
                for (int t = 0; t < 8; ++t) s += (p[t] - c[j * 8 + t]) * (p[t] - c[j * 8 + t]);
                C[size_t(i) * k + j] = std::llround(1000 * std::sqrt(s));
            }
        }
        std::vector<int> cap(k, n / k);
        for (int j = 0; j < n % k; ++j) ++cap[j];
        std::vector<int32_t> la(n), lb(n);
        auto t2 = Clock::now();
        const int64_t a = balanced_assignment(C.data(), n, k, cap, la.data());
        const double ta = secs(t2);
        t2 = Clock::now();
        const int64_t b = balanced_assignment_network_simplex(C.data(), n, k, cap, lb.data());
        const double tb = secs(t2);
        std::printf("\nassignment from scratch, n=%d k=%d random costs: shortest paths %.1f ms, LEMON network simplex "
                    "%.1f ms (%.0fx), totals %s\n",
                    n, k, 1e3 * ta, 1e3 * tb, tb / ta, a == b ? "equal" : "DIFFER");
    }
    return 0;
}
