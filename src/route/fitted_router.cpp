#include "route/fitted_router.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/parallel.h"
#include "model/moe_ffn.h"

extern "C" void dposv_(const char* uplo, const int* n, const int* nrhs, double* a, const int* lda, double* b, const int* ldb,
                       int* info);

namespace moefy {

namespace {

// The fit's products have E (a handful) on one side and N (thousands of tokens)
// on the other. OpenBLAS packs the whole token matrix on every such call, which
// cost most of the fit (packing, not arithmetic); below this width a direct
// loop reads it once instead.
constexpr int kSkinny = 32;
// Fixed number of partial sums in gemm_tn, independent of the thread count.
constexpr int kSumBlocks = 16;

// GCC 12 warns inside its own _mm512_reduce_add_ps (an "undefined" register it
// starts from); the values are all initialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Rows m0..m1-1 of C[M, N] = A[M, K] · B[N, K]ᵀ, on this thread. Each sum's
// order depends only on K (not on m0, m1 or the thread count).
void nt_rows(const float* A, const float* B, float* C, int m0, int m1, int N, int K) {
#if defined(__AVX512F__)
    // Two rows of A against up to 8 rows of B per sweep: 16 sums in registers,
    // each row of B loaded once for both rows of A.
    const __mmask16 tail = __mmask16((1u << (K % 16)) - 1u);
    for (int n0 = 0; n0 < N; n0 += 8) {
        const int nn = std::min(8, N - n0);
        const float* Bn = B + size_t(n0) * K;
        for (int m = m0; m < m1; m += 2) {
            const bool two = m + 1 < m1;
            const float* a0 = A + size_t(m) * K;
            const float* a1 = two ? a0 + K : a0;
            __m512 s0[8], s1[8];
            for (int n = 0; n < 8; ++n) s0[n] = s1[n] = _mm512_setzero_ps();
            int k = 0;
            for (; k + 16 <= K; k += 16) {
                const __m512 x0 = _mm512_loadu_ps(a0 + k), x1 = _mm512_loadu_ps(a1 + k);
                for (int n = 0; n < nn; ++n) {
                    const __m512 b = _mm512_loadu_ps(Bn + size_t(n) * K + k);
                    s0[n] = _mm512_fmadd_ps(x0, b, s0[n]);
                    s1[n] = _mm512_fmadd_ps(x1, b, s1[n]);
                }
            }
            if (k < K) {
                const __m512 x0 = _mm512_maskz_loadu_ps(tail, a0 + k), x1 = _mm512_maskz_loadu_ps(tail, a1 + k);
                for (int n = 0; n < nn; ++n) {
                    const __m512 b = _mm512_maskz_loadu_ps(tail, Bn + size_t(n) * K + k);
                    s0[n] = _mm512_fmadd_ps(x0, b, s0[n]);
                    s1[n] = _mm512_fmadd_ps(x1, b, s1[n]);
                }
            }
            for (int n = 0; n < nn; ++n) {
                C[size_t(m) * N + n0 + n] = _mm512_reduce_add_ps(s0[n]);
                if (two) C[size_t(m + 1) * N + n0 + n] = _mm512_reduce_add_ps(s1[n]);
            }
        }
    }
    return;
#endif
    // Four dot products per sweep of a row of A, the row loaded once for them.
    // Each sum runs in kLanes interleaved partial sums (term k in lane k mod
    // kLanes), added in a fixed tree at the end: independent lanes vectorise
    // without reassociation, and the order depends only on K.
    constexpr int kLanes = 8;
    auto total = [](const float* s) { return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])); };
    const int K8 = K - K % kLanes;
    for (int m = m0; m < m1; ++m) {
        const float* a = A + size_t(m) * K;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const float *b0 = B + size_t(n) * K, *b1 = b0 + K, *b2 = b1 + K, *b3 = b2 + K;
            float s0[kLanes] = {}, s1[kLanes] = {}, s2[kLanes] = {}, s3[kLanes] = {};
            for (int k = 0; k < K8; k += kLanes)
                for (int l = 0; l < kLanes; ++l) {
                    const float x = a[k + l];
                    s0[l] += x * b0[k + l], s1[l] += x * b1[k + l], s2[l] += x * b2[k + l], s3[l] += x * b3[k + l];
                }
            for (int k = K8; k < K; ++k) {
                const float x = a[k];
                s0[k - K8] += x * b0[k], s1[k - K8] += x * b1[k], s2[k - K8] += x * b2[k], s3[k - K8] += x * b3[k];
            }
            float* c = C + size_t(m) * N + n;
            c[0] = total(s0), c[1] = total(s1), c[2] = total(s2), c[3] = total(s3);
        }
        for (; n < N; ++n) {
            const float* b = B + size_t(n) * K;
            float s[kLanes] = {};
            for (int k = 0; k < K8; k += kLanes)
                for (int l = 0; l < kLanes; ++l) s[l] += a[k + l] * b[k + l];
            for (int k = K8; k < K; ++k) s[k - K8] += a[k] * b[k];
            C[size_t(m) * N + n] = total(s);
        }
    }
}
#pragma GCC diagnostic pop

// C[M, N] = A[M, K] · B[N, K]ᵀ
void gemm_nt(const float* A, const float* B, float* C, int M, int N, int K) {
    if (N > kSkinny) {
        // Fixed row blocks of C, one single-threaded sgemm each, shared by the threads.
        constexpr int kRows = 256;
        const int blocks = (M + kRows - 1) / kRows;
        parallel_for_each(blocks, [&](int64_t b) {
            const int m0 = int(b) * kRows, mm = std::min(kRows, M - m0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mm, N, K, 1.0f, A + size_t(m0) * K, K, B, K, 0.0f,
                        C + size_t(m0) * N, N);
        });
        return;
    }
    const int pairs = (M + 1) / 2;
    parallel_for(pairs, [&](int64_t p0, int64_t p1) { nt_rows(A, B, C, int(2 * p0), std::min(M, int(2 * p1)), N, K); });
}

// part[M, N] += A[k0:k1, M]ᵀ · B[k0:k1, N], each sum adding its k terms in order.
// Sums for up to 8 rows of C by 32 columns live in registers over the slice.
void accumulate_tn_slice(const float* A, const float* B, float* part, int M, int N, int k0, int k1) {
    int n0 = 0;
#if defined(__AVX512F__)
    for (; n0 + 32 <= N; n0 += 32)
        for (int m0 = 0; m0 < M; m0 += 8) {
            const int mm = std::min(8, M - m0);
            __m512 lo[8], hi[8];
            for (int m = 0; m < mm; ++m) {
                lo[m] = _mm512_loadu_ps(part + size_t(m0 + m) * N + n0);
                hi[m] = _mm512_loadu_ps(part + size_t(m0 + m) * N + n0 + 16);
            }
            for (int k = k0; k < k1; ++k) {
                const float* b = B + size_t(k) * N + n0;
                const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
                const float* a = A + size_t(k) * M + m0;
                for (int m = 0; m < mm; ++m) {
                    const __m512 am = _mm512_set1_ps(a[m]);
                    lo[m] = _mm512_fmadd_ps(am, b0, lo[m]);
                    hi[m] = _mm512_fmadd_ps(am, b1, hi[m]);
                }
            }
            for (int m = 0; m < mm; ++m) {
                _mm512_storeu_ps(part + size_t(m0 + m) * N + n0, lo[m]);
                _mm512_storeu_ps(part + size_t(m0 + m) * N + n0 + 16, hi[m]);
            }
        }
#endif
    for (int k = k0; k < k1; ++k) {
        const float* a = A + size_t(k) * M;
        const float* b = B + size_t(k) * N;
        for (int m = 0; m < M; ++m) {
            const float am = a[m];
            float* p = part + size_t(m) * N;
            for (int n = n0; n < N; ++n) p[n] = std::fma(am, b[n], p[n]);
        }
    }
}

// C[M, N] = A[K, M]ᵀ · B[K, N]
void gemm_tn(const float* A, const float* B, float* C, int M, int N, int K) {
    if (M > kSkinny) {
        // Fixed column blocks of C, one single-threaded sgemm each, shared by the
        // threads: both cores busy, the same bits for any thread count.
        constexpr int kCols = 512;
        const int blocks = (N + kCols - 1) / kCols;
        parallel_for_dynamic(blocks, 1, [&](int64_t b, int64_t, int) {
            const int n0 = int(b) * kCols, nn = std::min(kCols, N - n0);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, nn, K, 1.0f, A, M, B + n0, N, 0.0f, C + n0, N);
        });
        return;
    }
    // Partial sums over a fixed split of K (not one per thread), added in block
    // order: the same bits for any thread count. Within a block, C's
    // partial sums are kept in registers for a tile of columns over a slice of
    // kRows rows of A and B (the slice stays in L2 across the tiles); each sum
    // still adds its k terms in order.
    const size_t MN = size_t(M) * N;
    const int blocks = std::max(1, std::min(K, kSumBlocks));
    std::vector<float> parts(size_t(blocks) * MN, 0.0f);
    parallel_for_each(blocks, [&](int64_t blk) {
        float* part = parts.data() + size_t(blk) * MN;
        const int k0 = int(int64_t(K) * blk / blocks), k1 = int(int64_t(K) * (blk + 1) / blocks);
        constexpr int kRows = 64;
        for (int ks = k0; ks < k1; ks += kRows)
            accumulate_tn_slice(A, B, part, M, N, ks, std::min(k1, ks + kRows));
    });
    std::fill(C, C + MN, 0.0f);
    for (size_t off = 0; off < parts.size(); off += MN)
        for (size_t i = 0; i < MN; ++i) C[i] += parts[off + i];
}

// Train/held-out token split and the column-normalised inputs x̃ = x / σ.
struct FitData {
    int H = 0, E = 0, k = 0;
    int n_tr = 0, n_va = 0;
    std::vector<float> sigma;        // [H] RMS of each input dimension (train tokens)
    std::vector<float> x_tr, x_va;   // [n, H] normalised
    std::vector<float> p_tr;         // [n_tr, E] target distributions
    std::vector<float> m_tr, m_va;   // [n, E] masses
};

FitData make_fit_data(const LayerCalib& c, const std::vector<float>& mass, const FitOptions& opt) {
    FitData d;
    d.H = c.H, d.E = c.E, d.k = opt.top_k;
    const int H = c.H, E = c.E, every = std::max(1, opt.val_every);
    std::vector<int> tr, va;
    for (int t = 0; t < c.N; ++t) (every > 1 && t % every == every - 1 ? va : tr).push_back(t);
    if (tr.empty()) fail("router fit: no calibration tokens");
    if (va.empty()) va = tr;
    d.n_tr = int(tr.size()), d.n_va = int(va.size());
    std::vector<double> ss(size_t(H), 0.0);
    for (int t : tr)
        for (int i = 0; i < H; ++i) ss[size_t(i)] += double(c.x[size_t(t) * H + i]) * c.x[size_t(t) * H + i];
    d.sigma.resize(size_t(H));
    for (int i = 0; i < H; ++i) d.sigma[size_t(i)] = float(std::sqrt(ss[size_t(i)] / tr.size()) + 1e-12);
    auto gather = [&](const std::vector<int>& ids, std::vector<float>& out) {
        out.resize(ids.size() * H);
        parallel_for_each(int64_t(ids.size()), [&](int64_t j) {
            for (int i = 0; i < H; ++i) out[size_t(j) * H + i] = c.x[size_t(ids[size_t(j)]) * H + i] / d.sigma[size_t(i)];
        });
    };
    gather(tr, d.x_tr);
    gather(va, d.x_va);
    d.p_tr.resize(tr.size() * E);
    for (size_t j = 0; j < tr.size(); ++j) {
        const float* m = mass.data() + size_t(tr[j]) * E;
        float* p = d.p_tr.data() + j * E;
        const double mx = std::max(1e-30, double(*std::max_element(m, m + E)));
        double z = 0;
        for (int e = 0; e < E; ++e) z += (p[e] = float(std::exp((m[e] - mx) / (opt.temperature * mx))));
        for (int e = 0; e < E; ++e) p[e] = float(p[e] / z);
    }
    auto gather_mass = [&](const std::vector<int>& ids, std::vector<float>& out) {
        out.resize(ids.size() * E);
        for (size_t j = 0; j < ids.size(); ++j) std::copy_n(mass.data() + size_t(ids[j]) * E, E, out.data() + j * E);
    };
    gather_mass(tr, d.m_tr);
    gather_mass(va, d.m_va);
    return d;
}

// Rows of the log-softmax cross-entropy: loss[t] and grad = (softmax(z) − p) / n.
void softmax_xent_rows(const float* z, const float* p, int rows, int E, int n, float* grad, double* loss) {
    for (int t = 0; t < rows; ++t) {
        const float* zt = z + size_t(t) * E;
        const float* pt = p + size_t(t) * E;
        float* gt = grad + size_t(t) * E;
        const float mx = *std::max_element(zt, zt + E);
        double s = 0;
        for (int e = 0; e < E; ++e) s += std::exp(double(zt[e] - mx));
        const double lse = mx + std::log(s);
        double l = 0;
        for (int e = 0; e < E; ++e) {
            l -= pt[e] * (zt[e] - lse);
            gt[e] = float((std::exp(zt[e] - lse) - pt[e]) / n);
        }
        loss[t] = l;
    }
}

struct Adam {
    std::vector<float> m, v;
    int t = 0;
    explicit Adam(size_t n) : m(n, 0.0f), v(n, 0.0f) {}
    void step(float* w, const float* g, size_t n, double lr) {
        const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
        ++t;
        const double c1 = 1.0 - std::pow(b1, t), c2 = 1.0 - std::pow(b2, t);
        for (size_t i = 0; i < n; ++i) {
            m[i] = float(b1 * m[i] + (1 - b1) * g[i]);
            v[i] = float(b2 * v[i] + (1 - b2) * double(g[i]) * g[i]);
            w[i] -= float(lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps));
        }
    }
};

// Router in normalised input space: logits = W2 tanh(W1 x̃) (mlp) or W1 x̃.
struct NormRouter {
    std::vector<float> w1, w2;
    bool mlp() const { return !w2.empty(); }
};

// Rows [0, n) on this thread: u = W1 x̃, a = tanh(u) (mlp), z the logits.
void norm_forward_rows(const NormRouter& r, const float* x, int n, int H, int E, float* u, float* a, float* z) {
    if (!r.mlp()) {
        nt_rows(x, r.w1.data(), z, 0, n, E, H);
        return;
    }
    nt_rows(x, r.w1.data(), u, 0, n, E, H);
    for (size_t i = 0; i < size_t(n) * E; ++i) a[i] = std::tanh(u[i]);
    nt_rows(a, r.w2.data(), z, 0, n, E, E);
}

// Rows [0, n) on all threads, in slices of 64 rows (each row's values do not depend on the slicing).
void norm_forward(const NormRouter& r, const float* x, int n, int H, int E, float* u, float* a, float* z) {
    constexpr int kSlice = 64;
    parallel_for_each((n + kSlice - 1) / kSlice, [&](int64_t s) {
        const int s0 = int(s) * kSlice;
        const size_t o = size_t(s0) * E;
        norm_forward_rows(r, x + size_t(s0) * H, std::min(kSlice, n - s0), H, E, u + o, a + o, z + o);
    });
}

double held_out_mass(const NormRouter& r, const FitData& d, std::vector<float>& u, std::vector<float>& a, std::vector<float>& z,
                     double* recall) {
    u.resize(size_t(d.n_va) * d.E), a.resize(u.size()), z.resize(u.size());
    norm_forward(r, d.x_va.data(), d.n_va, d.H, d.E, u.data(), a.data(), z.data());
    auto q = topk_quality(z.data(), d.m_va.data(), d.n_va, d.E, d.k, 1);
    if (recall) *recall = q.second;
    return q.first;
}

// The training loss and its gradients (g1 for W1, g2 for W2 when mlp) in one
// pass over the inputs: each slice of kSliceRows rows runs forward, through the
// loss and back while it is in cache (two separate products would read the
// [n, H] inputs twice). Rows are in kSumBlocks fixed blocks whose partial
// gradients are added in block order, and token losses are added in token
// order: the same bits for any thread count.
double loss_and_gradient(const NormRouter& r, const FitData& d, std::vector<float>& g1, std::vector<float>& g2) {
    const int n = d.n_tr, H = d.H, E = d.E;
    const bool mlp = r.mlp();
    constexpr int kSliceRows = 64;
    const int blocks = std::max(1, std::min(n, kSumBlocks));
    const size_t P1 = g1.size(), P2 = g2.size(), PB = P1 + P2;
    std::vector<float> parts(size_t(blocks) * PB, 0.0f);
    std::vector<double> token_loss(size_t(n), 0.0);
    parallel_for(blocks, [&](int64_t blk0, int64_t blk1) {
        const size_t SE = size_t(kSliceRows) * E;  // this thread's slice buffers
        std::vector<float> u(SE), a(SE), z(SE), dz(SE), du(SE);
        for (int blk = int(blk0); blk < int(blk1); ++blk) {
            float* p1 = parts.data() + size_t(blk) * PB;
            float* p2 = p1 + P1;
            const int k0 = int(int64_t(n) * blk / blocks), k1 = int(int64_t(n) * (blk + 1) / blocks);
            for (int s0 = k0; s0 < k1; s0 += kSliceRows) {
                const int m = std::min(kSliceRows, k1 - s0);
                const float* x = d.x_tr.data() + size_t(s0) * H;
                norm_forward_rows(r, x, m, H, E, u.data(), a.data(), z.data());
                // loss: dz = (softmax(z) − p) / n
                softmax_xent_rows(z.data(), d.p_tr.data() + size_t(s0) * E, m, E, n, dz.data(), token_loss.data() + s0);
                if (mlp) {
                    accumulate_tn_slice(dz.data(), a.data(), p2, E, E, 0, m);  // gW2 += dZᵀ A
                    for (int t = 0; t < m; ++t)                                 // dU = (dZ W2) ⊙ (1 − A²)
                        for (int j = 0; j < E; ++j) {
                            float sum = 0.0f;
                            for (int e = 0; e < E; ++e) sum += dz[size_t(t) * E + e] * r.w2[size_t(e) * E + j];
                            const float at = a[size_t(t) * E + j];
                            du[size_t(t) * E + j] = sum * (1.0f - at * at);
                        }
                    accumulate_tn_slice(du.data(), x, p1, E, H, 0, m);  // gW1 += dUᵀ X
                } else {
                    accumulate_tn_slice(dz.data(), x, p1, E, H, 0, m);  // gW1 += dZᵀ X
                }
            }
        }
    });
    std::fill(g1.begin(), g1.end(), 0.0f);
    std::fill(g2.begin(), g2.end(), 0.0f);
    for (int blk = 0; blk < blocks; ++blk) {
        const float* p1 = parts.data() + size_t(blk) * PB;
        for (size_t i = 0; i < P1; ++i) g1[i] += p1[i];
        for (size_t i = 0; i < P2; ++i) g2[i] += p1[P1 + i];
    }
    double loss = 0;
    for (double l : token_loss) loss += l;
    return loss / n;
}

// Adam on the cross-entropy; keeps the iterate with the best held-out mass.
void train(NormRouter& r, const FitData& d, const FitOptions& opt, FitReport& rep, bool first_stage) {
    const int H = d.H;
    std::vector<float> g1(r.w1.size()), g2(r.w2.size());
    std::vector<float> vu, va, vz;
    Adam adam1(r.w1.size()), adam2(r.w2.size());
    NormRouter best = r;
    double best_recall = 0;
    double best_mass = held_out_mass(r, d, vu, va, vz, &best_recall);
    if (first_stage) rep.val_mass_init = best_mass, rep.val_recall_init = best_recall;
    int best_iter = 0;
    const double lr0 = opt.lr / std::sqrt(double(H));
    for (int it = 1; it <= opt.iters; ++it) {
        const double loss = loss_and_gradient(r, d, g1, g2);
        if (it == 1 && first_stage) rep.loss_init = loss;
        rep.loss = loss;
        // Cosine decay to a tenth of the step size.
        const double lr = lr0 * (0.55 + 0.45 * std::cos(3.141592653589793 * it / opt.iters));
        adam1.step(r.w1.data(), g1.data(), g1.size(), lr);
        if (r.mlp()) adam2.step(r.w2.data(), g2.data(), g2.size(), lr);
        if (it % 10 == 0 || it == opt.iters) {
            double rec = 0;
            const double m = held_out_mass(r, d, vu, va, vz, &rec);
            if (m > best_mass) best_mass = m, best_recall = rec, best = r, best_iter = it;
        }
    }
    r = std::move(best);
    rep.val_mass = best_mass;
    rep.val_recall = best_recall;
    rep.best_iter = best_iter;
}

// Least squares in normalised space: V [E, H] from (X̃ᵀX̃ + λI) Vᵀ = X̃ᵀ M̂.
std::vector<float> least_squares_norm(const float* x, const float* mass, int n, int H, int E, double ridge) {
    std::vector<float> mh(size_t(n) * E);
    for (int t = 0; t < n; ++t) {
        const float* m = mass + size_t(t) * E;
        double mean = 0;
        for (int e = 0; e < E; ++e) mean += m[e];
        mean = std::max(1e-30, mean / E);
        for (int e = 0; e < E; ++e) mh[size_t(t) * E + e] = float(m[e] / mean);
    }
    std::vector<float> xtx(size_t(H) * H), xtm(size_t(H) * E);
    gemm_tn(x, x, xtx.data(), H, H, n);
    gemm_tn(x, mh.data(), xtm.data(), H, E, n);
    double tr = 0;
    for (int i = 0; i < H; ++i) tr += xtx[size_t(i) * H + i];
    const double lam = ridge * std::max(1e-30, tr / H);
    std::vector<double> A(xtx.begin(), xtx.end()), B(size_t(H) * E);
    for (int i = 0; i < H; ++i) A[size_t(i) * H + i] += lam;
    // Column-major B [H, E] for LAPACK; A is symmetric so its layout does not matter.
    for (int i = 0; i < H; ++i)
        for (int e = 0; e < E; ++e) B[size_t(e) * H + i] = xtm[size_t(i) * E + e];
    const int nn = H, nrhs = E;
    int info = 0;
    dposv_("L", &nn, &nrhs, A.data(), &nn, B.data(), &nn, &info);
    if (info != 0) fail("least-squares router: the normal equations are singular (LAPACK dposv info {})", info);
    std::vector<float> V(size_t(E) * H);
    for (int e = 0; e < E; ++e)
        for (int i = 0; i < H; ++i) V[size_t(e) * H + i] = float(B[size_t(e) * H + i]);
    return V;
}

// Back to the model's input space: W1[:, i] = V1[:, i] / σ_i.
RouterWeights denormalise(const NormRouter& r, const std::vector<float>& sigma, int E, int H) {
    RouterWeights out;
    out.num_experts = E;
    out.hidden_size = H;
    out.w1 = r.w1;
    for (int e = 0; e < E; ++e)
        for (int i = 0; i < H; ++i) out.w1[size_t(e) * H + i] /= sigma[size_t(i)];
    out.w2 = r.w2;
    return out;
}

}  // namespace

void router_forward(const RouterWeights& r, const float* x, int N, float* logits) {
    const int E = r.num_experts, H = r.hidden_size;
    if (!r.is_mlp()) {
        gemm_nt(x, r.w1.data(), logits, N, E, H);
        return;
    }
    std::vector<float> a(size_t(N) * E);
    gemm_nt(x, r.w1.data(), a.data(), N, E, H);
    for (float& v : a) v = std::tanh(v);
    gemm_nt(a.data(), r.w2.data(), logits, N, E, E);
}

std::vector<float> target_mass(const LayerCalib& c, FitTarget target) {
    if (target == FitTarget::ActivationSum) return c.absh;
    std::vector<float> m(size_t(c.N) * c.E);
    for (int t = 0; t < c.N; ++t)
        for (int e = 0; e < c.E; ++e) m[size_t(t) * c.E + e] = c.mass(t, e);
    return m;
}

std::pair<double, double> topk_quality(const float* logits, const float* mass, int N, int E, int k, int every) {
    double got = 0, best = 0, hits = 0;
    int n = 0;
    std::vector<int32_t> s(static_cast<size_t>(k)), o(static_cast<size_t>(k));
    for (int t = every - 1; t < N; t += every, ++n) {
        const float* m = mass + size_t(t) * E;
        topk_desc(logits + size_t(t) * E, E, k, s.data());
        topk_desc(m, E, k, o.data());
        for (int j = 0; j < k; ++j) {
            got += m[s[size_t(j)]];
            best += m[o[size_t(j)]];
            hits += std::count(o.begin(), o.end(), s[size_t(j)]);
        }
    }
    return {best > 0 ? got / best : 1.0, n ? hits / (double(n) * k) : 1.0};
}

RouterWeights least_squares_router(const LayerCalib& c, const std::vector<float>& mass, double ridge) {
    FitOptions o;
    o.val_every = 1;
    FitData d = make_fit_data(c, mass, o);
    NormRouter r;
    r.w1 = least_squares_norm(d.x_tr.data(), d.m_tr.data(), d.n_tr, c.H, c.E, ridge);
    return denormalise(r, d.sigma, c.E, c.H);
}

RouterWeights fit_router(const LayerCalib& c, const FitOptions& opt, FitReport* report) {
    if (opt.top_k < 1 || opt.top_k > c.E) fail("router fit: top-k {} with {} experts", opt.top_k, c.E);
    if (!(opt.temperature > 0)) fail("router fit: target temperature must be positive (got {})", opt.temperature);
    const std::vector<float> mass = target_mass(c, opt.target);
    const FitData d = make_fit_data(c, mass, opt);
    FitReport rep;
    NormRouter r;
    r.w1 = least_squares_norm(d.x_tr.data(), d.m_tr.data(), d.n_tr, c.H, c.E, opt.ridge);
    train(r, d, opt, rep, true);
    if (opt.mlp) {
        // Enter tanh's near-linear range: W1 = V / a with 2·std(V x̃) = a, W2 = a·I.
        std::vector<float> z(size_t(d.n_tr) * c.E);
        gemm_nt(d.x_tr.data(), r.w1.data(), z.data(), d.n_tr, c.E, c.H);
        double ss = 0;
        for (float v : z) ss += double(v) * v;
        const double a = std::max(1e-6, 2.0 * std::sqrt(ss / z.size()));
        for (float& v : r.w1) v = float(v / a);
        r.w2.assign(size_t(c.E) * c.E, 0.0f);
        for (int e = 0; e < c.E; ++e) r.w2[size_t(e) * c.E + e] = float(a);
        FitReport rep2;
        train(r, d, opt, rep2, false);
        rep.val_mass = rep2.val_mass, rep.val_recall = rep2.val_recall, rep.loss = rep2.loss, rep.best_iter = rep2.best_iter;
    }
    if (report) *report = rep;
    return denormalise(r, d.sigma, c.E, c.H);
}

}  // namespace moefy
