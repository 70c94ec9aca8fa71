#include "split/coactivation.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"

namespace moefy {

CoactMetric parse_coact_metric(std::string_view name) {
    if (name == "l1" || name == "l1_norm") return CoactMetric::l1;
    if (name == "l2" || name == "l2_norm") return CoactMetric::l2;
    if (name == "plain") return CoactMetric::plain;
    fail("co-activation metric '{}': unknown (expected l1, l2 or plain)", name);
}

const char* coact_metric_name(CoactMetric m) {
    switch (m) {
        case CoactMetric::l1: return "l1";
        case CoactMetric::l2: return "l2";
        case CoactMetric::plain: return "plain";
    }
    return "?";
}

// BLAS path: rows of adj per panel, so one chunk's panel rᵀr [P, I] (a thread's
// scratch) stays within a few MiB, and at least about 16 panels, so that the
// threads share the triangle evenly. Depends on n only.
static int panel_rows(int n) {
    const int by_size = std::max(16, ((1 << 20) / std::max(n, 1)) / 16 * 16);
    const int by_count = std::max(16, (n + 16 * 16 - 1) / (16 * 16) * 16);  // ceil(n / 16), rounded up to 16
    return std::min({by_size, by_count, n});
}

CoactivationAccumulator::CoactivationAccumulator(int intermediate_size, CoactMetric metric, int chunk_tokens,
                                                 float threshold)
    : n_(intermediate_size), metric_(metric), chunk_(chunk_tokens), threshold_(threshold) {
    if (n_ < 1) fail("co-activation: intermediate size {} must be positive", n_);
    if (metric != CoactMetric::l1 && metric != CoactMetric::l2 && metric != CoactMetric::plain)
        fail("co-activation: unknown metric value {}", int(metric));
    if (chunk_ < 1) fail("co-activation: chunk size {} tokens must be positive", chunk_);
    if (!(threshold_ > 0) || !std::isfinite(threshold_))
        fail("co-activation: clamp threshold {} must be positive and finite", threshold_);
    // Small chunks are grouped (≥ 256 tokens) so the accumulator is streamed once per group, not per chunk.
    group_tokens_ = chunk_ * std::max(1, 256 / chunk_);
    const size_t n = size_t(n_);
    if (double(group_tokens_) * double(n) * sizeof(float) > double(size_t(4) << 30))
        fail("co-activation: a chunk of {} tokens x {} neurons would buffer over 4 GiB; use smaller chunks", chunk_, n_);
    buf_.resize(size_t(group_tokens_) * n);
    acc_.assign(n * n, 0.0);
}

void CoactivationAccumulator::add(const float* acts, int T) {
    if (T < 0) fail("co-activation add: negative token count {}", T);
    if (T == 0) return;
    if (!acts) fail("co-activation add: null activations for {} tokens", T);
    const size_t n = size_t(n_);
    const size_t total = size_t(T) * n;
    // The last non-finite entry of each thread's share; the largest of them.
    std::vector<long> bad_of(size_t(parallel_threads()), -1);
    parallel_run([&](int t, int P) {
        const long k0 = long(total * size_t(t) / size_t(P)), k1 = long(total * size_t(t + 1) / size_t(P));
        long bad = -1;
        for (long k = k0; k < k1; ++k)
            if (!std::isfinite(acts[k])) bad = std::max(bad, k);
        bad_of[size_t(t)] = bad;
    }, total >= (size_t(1) << 16));
    const long bad = *std::max_element(bad_of.begin(), bad_of.end());
    if (bad >= 0)
        fail("co-activation add: non-finite activation at token {}, neuron {}", size_t(bad) / n, size_t(bad) % n);

    for (int t = 0; t < T; ++t) {
        const float* x = acts + size_t(t) * n;  // h_t: [I]
        float* r = buf_.data() + size_t(buffered_) * n;
        switch (metric_) {
            case CoactMetric::l1: for (size_t i = 0; i < n; ++i) r[i] = std::fabs(x[i]); break;
            case CoactMetric::l2: for (size_t i = 0; i < n; ++i) r[i] = x[i] * x[i]; break;
            case CoactMetric::plain: std::copy(x, x + n, r); break;
        }
        ++tokens_;
        if (++buffered_ == group_tokens_) flush();
    }
}

void CoactivationAccumulator::finish() {
    if (buffered_ > 0) flush();
}

void CoactivationAccumulator::sum_over(const RankGroup& group) {
    if (buffered_ > 0) fail("co-activation: sum_over before finish ({} tokens still buffered)", buffered_);
    group.sum(acc_.data(), acc_.size());
    int64_t counts[2] = {tokens_, chunks_};
    group.sum(counts, 2);
    tokens_ = counts[0], chunks_ = counts[1];
}

void CoactivationAccumulator::flush() {
    if (chunk_ <= kFusedMaxChunk)
        flush_fused();
    else
        flush_blas();
    chunks_ += (buffered_ + chunk_ - 1) / chunk_;
    buffered_ = 0;
}

// Large chunks: BLAS is efficient at rank k >= 64. For each panel of rows
// [i0, i0+P) and each buffered chunk c, in chunk order:
//   S = r_cᵀ r_c on rows [i0, i0+P), columns [i0, I)   (ssyrk on the diagonal
//   block, sgemm right of it), then adj[i][j] += min(S[i][j], thr) for j >= i.
// The panels are the pool's work items: a panel writes only its own rows of adj
// and each thread has its own S, so every entry is the same single-threaded
// calls and additions whatever the thread count. Panels of the triangle shrink
// from the first to the last, so threads take them one at a time, largest first.
void CoactivationAccumulator::flush_blas() {
    const int n = n_;
    const int T = buffered_;
    const int nchunks = (T + chunk_ - 1) / chunk_;
    const int P = panel_rows(n);
    const int panels = (n + P - 1) / P;
    const float thr = threshold_;
    const size_t per_thread = size_t(P) * size_t(n);
    const size_t threads = size_t(parallel_threads());
    if (scratch_.size() < threads * per_thread) scratch_.resize(threads * per_thread);
    parallel_for_dynamic(panels, 1, [&](int64_t p0, int64_t p1, int thread) {
        float* S = scratch_.data() + size_t(thread) * per_thread;  // [rows, cols], ld = cols
        for (int64_t p = p0; p < p1; ++p) {
            const int i0 = int(p) * P;
            const int rows = std::min(P, n - i0);
            const int cols = n - i0;  // columns i0..n-1
            for (int c = 0; c < nchunks; ++c) {
                const int t0 = c * chunk_;
                const int k = std::min(chunk_, T - t0);
                const float* r = buf_.data() + size_t(t0) * size_t(n);  // r_c: [k, I], ld = I
                cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, rows, k, 1.0f, r + i0, n, 0.0f, S, cols);
                if (cols > rows)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, cols - rows, k, 1.0f, r + i0, n,
                                r + i0 + rows, n, 0.0f, S + rows, cols);
                for (int a = 0; a < rows; ++a) {
                    const float* s = S + size_t(a) * size_t(cols);
                    double* acc = acc_.data() + size_t(i0 + a) * size_t(n) + size_t(i0);
                    for (int b = a; b < cols; ++b) acc[b] += double(std::min(s[b], thr));
                }
            }
        }
    }, panels > 1);
}

// One vector register of floats: 16 with AVX-512 (the build is -march=native),
// else 8 (one AVX register, two SSE ones without AVX). Each column's sum is the
// same sequence of operations at either width.
#if defined(__AVX512F__)
constexpr int kW = 16;
#else
constexpr int kW = 8;
#endif
typedef float v8 __attribute__((vector_size(kW * 4)));
static inline v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
static inline v8 min8(v8 a, v8 b) { return a < b ? a : b; }
// adj's lanes in double: y[0..kW) += v
typedef double v8d __attribute__((vector_size(kW * 8)));
static inline void add_to(double* y, v8 v) {
    v8d a;
    std::memcpy(&a, y, sizeof a);
    a += __builtin_convertvector(v, v8d);
    std::memcpy(y, &a, sizeof a);
}

// One row segment: acc[j] += min(Σ_t coef[t]·rows[t][j], thr) for j in [j0, j1).
// 4 vectors of columns at a time keep the four sums in registers across the t loop.
static void clamp_add_segment(double* acc, const float* const* rows, const float* coef, int m, int j0, int j1, float thr) {
    const v8 vt = v8{} + thr;
    int j = j0;
    for (; j + 4 * kW <= j1; j += 4 * kW) {
        v8 s0{}, s1{}, s2{}, s3{};
        for (int t = 0; t < m; ++t) {
            const float a = coef[t];
            const float* x = rows[t] + j;
            s0 += a * load8(x);
            s1 += a * load8(x + kW);
            s2 += a * load8(x + 2 * kW);
            s3 += a * load8(x + 3 * kW);
        }
        double* y = acc + j;
        add_to(y, min8(s0, vt));
        add_to(y + kW, min8(s1, vt));
        add_to(y + 2 * kW, min8(s2, vt));
        add_to(y + 3 * kW, min8(s3, vt));
    }
    for (; j < j1; ++j) {
        float s = 0.0f;
        for (int t = 0; t < m; ++t) s += coef[t] * rows[t][j];
        acc[j] += double(std::min(s, thr));
    }
}

// Four rows at once (the r loads are shared): acc[q][j] += min(Σ_t coef[t][q]·rows[t][j], thr)
// for q < 4 and j in [j0, j1). coef: [m, 4]. All j must lie on or above row 3's diagonal.
static void clamp_add_4rows(double* const* acc, const float* const* rows, const float* coef, int m, int j0, int j1,
                            float thr) {
    const v8 vt = v8{} + thr;
    int j = j0;
    for (; j + 2 * kW <= j1; j += 2 * kW) {
        v8 s[4][2] = {};
        for (int t = 0; t < m; ++t) {
            const v8 x0 = load8(rows[t] + j), x1 = load8(rows[t] + j + kW);
            const float* c = coef + 4 * t;
            for (int q = 0; q < 4; ++q) {
                s[q][0] += c[q] * x0;
                s[q][1] += c[q] * x1;
            }
        }
        for (int q = 0; q < 4; ++q) {
            double* y = acc[q] + j;
            add_to(y, min8(s[q][0], vt));
            add_to(y + kW, min8(s[q][1], vt));
        }
    }
    for (; j < j1; ++j)
        for (int q = 0; q < 4; ++q) {
            float v = 0.0f;
            for (int t = 0; t < m; ++t) v += coef[4 * t + q] * rows[t][j];
            acc[q][j] += double(std::min(v, thr));
        }
}

// Small chunks (MoEfication's 8 tokens): a rank-8 BLAS update is mostly
// packing overhead, so the product, clamp and accumulation are fused. The
// upper triangle is cut into tiles [64 rows x 256 columns]; one parallel loop
// per group of chunks hands tiles to threads (each adj entry has one owner).
// Within a tile, the group's r columns (256 tokens x 256 floats) stay in L2
// and each acc row segment stays in L1 across the group's chunks. Tokens whose
// activation of row neuron i is exactly 0 are skipped (sparse ReLU models).
void CoactivationAccumulator::flush_fused() {
    constexpr int BI = 64, BJ = 256;
    const int n = n_;
    const size_t N = size_t(n);
    const int T = buffered_;
    const int nchunks = (T + chunk_ - 1) / chunk_;
    const float thr = threshold_;
    const int nbi = (n + BI - 1) / BI, nbj = (n + BJ - 1) / BJ;
    std::vector<std::pair<int, int>> tiles;  // (i0, j0) with some j >= i inside
    for (int bi = 0; bi < nbi; ++bi)
        for (int bj = 0; bj < nbj; ++bj)
            if ((bj + 1) * BJ > bi * BI) tiles.push_back({bi * BI, bj * BJ});
    const float* r = buf_.data();  // [T, I]
    double* adj = acc_.data();
    struct Scratch {
        std::vector<float> coef;
        std::vector<const float*> rows;
    };
    std::vector<Scratch> scratch(static_cast<size_t>(parallel_threads()));  // per thread, sized on first use
    parallel_for_dynamic(int64_t(tiles.size()), 1, [&](int64_t k0, int64_t k1, int thread) {
        std::vector<float>& coef = scratch[size_t(thread)].coef;
        std::vector<const float*>& rows = scratch[size_t(thread)].rows;
        coef.resize(4 * static_cast<size_t>(chunk_));
        rows.resize(static_cast<size_t>(chunk_));
        for (size_t k = size_t(k0); k < size_t(k1); ++k) {
            const int i0 = tiles[k].first, i1 = std::min(n, i0 + BI);
            const int j0 = tiles[k].second, j1 = std::min(n, j0 + BJ);
            int i = i0;
            // Rows four at a time; the few columns left of row i+3's diagonal go one row at a time.
            for (; i + 4 <= i1 && std::max(i, j0) < j1; i += 4) {
                const int js = std::max(i, j0), jd = std::min(j1, std::max(js, i + 3));
                double* acc[4] = {adj + size_t(i) * N, adj + size_t(i + 1) * N, adj + size_t(i + 2) * N,
                                  adj + size_t(i + 3) * N};
                for (int c = 0; c < nchunks; ++c) {
                    const int t0 = c * chunk_, t1 = std::min(T, t0 + chunk_);
                    int m = 0;
                    for (int t = t0; t < t1; ++t) {
                        const float* x = r + size_t(t) * N;
                        if (x[i] == 0.0f && x[i + 1] == 0.0f && x[i + 2] == 0.0f && x[i + 3] == 0.0f) continue;
                        std::copy(x + i, x + i + 4, coef.data() + 4 * m);
                        rows[size_t(m++)] = x;
                    }
                    if (m == 0) continue;
                    for (int q = 0; q < 4; ++q)
                        for (int j = std::max(js, i + q); j < jd; ++j) {
                            float v = 0.0f;
                            for (int t = 0; t < m; ++t) v += coef[size_t(4 * t + q)] * rows[size_t(t)][j];
                            acc[q][j] += double(std::min(v, thr));
                        }
                    clamp_add_4rows(acc, rows.data(), coef.data(), m, jd, j1, thr);
                }
            }
            for (; i < i1 && std::max(i, j0) < j1; ++i) {
                const int js = std::max(i, j0);
                double* acc = adj + size_t(i) * N;
                for (int c = 0; c < nchunks; ++c) {
                    const int t0 = c * chunk_, t1 = std::min(T, t0 + chunk_);
                    int m = 0;
                    for (int t = t0; t < t1; ++t) {
                        const float* x = r + size_t(t) * N;
                        if (x[i] != 0.0f) coef[size_t(m)] = x[i], rows[size_t(m)] = x, ++m;
                    }
                    if (m > 0) clamp_add_segment(acc, rows.data(), coef.data(), m, js, j1, thr);
                }
            }
        }
    }, size_t(T) * N * N >= (size_t(1) << 22));
}

std::vector<float> CoactivationAccumulator::symmetric() const { return mirror_upper(acc_.data(), n_); }

double CoactivationAccumulator::saturated_fraction() const {
    if (n_ < 2 || chunks_ == 0) return 0.0;
    const double full = double(chunks_) * threshold_ * (1.0 - 1e-5);
    const size_t N = size_t(n_);
    std::vector<long> count_of(size_t(parallel_threads()), 0);  // per thread (integer counts: any order)
    parallel_for_dynamic(n_, 16, [&](int64_t i0, int64_t i1, int thread) {
        long c = 0;
        for (int i = int(i0); i < int(i1); ++i) {
            const double* row = acc_.data() + size_t(i) * N;
            for (size_t j = size_t(i) + 1; j < N; ++j) c += row[j] >= full;
        }
        count_of[size_t(thread)] += c;
    }, n_ >= 256);
    long count = 0;
    for (long c : count_of) count += c;
    return double(count) / (double(N) * double(N - 1) / 2.0);
}

std::vector<float> mirror_upper(const double* upper, int n) {
    const size_t N = size_t(n);
    std::vector<float> full(N * N);
    constexpr int B = 64;
    const int nb = (n + B - 1) / B;
    parallel_for_dynamic(nb, 1, [&](int64_t b0, int64_t b1, int) {
        for (int bi = int(b0); bi < int(b1); ++bi) {
            const int i0 = bi * B, i1 = std::min(n, i0 + B);
            for (int bj = bi; bj < nb; ++bj) {
                const int j0 = bj * B, j1 = std::min(n, j0 + B);
                for (int i = i0; i < i1; ++i)
                    for (int j = std::max(i, j0); j < j1; ++j) {
                        const float v = float(upper[size_t(i) * N + size_t(j)]);
                        full[size_t(i) * N + size_t(j)] = v;
                        full[size_t(j) * N + size_t(i)] = v;
                    }
            }
        }
    }, nb > 4);
    return full;
}

}  // namespace moefy
