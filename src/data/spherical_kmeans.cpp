#include "data/spherical_kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "common/error.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "data/parallel_work.h"

namespace moefy {

// ---- spherical k-means ----------------------------------------------------------

namespace {

// What k-means needs from a set of unit vectors and K centroids.
struct KMeansSpace {
    virtual ~KMeansSpace() = default;
    virtual size_t size() const = 0;
    virtual bool nonzero(size_t i) const = 0;
    virtual void set_centroid(int k, size_t i) = 0;  // c_k = x_i
    virtual void sims_to(int k, float* s) = 0;       // s: [N] cos(x_i, c_k)
    // a, s: [N] most similar centroid and its similarity. A document stays in
    // its current cluster prev[i] unless another is strictly more similar
    // (prev == nullptr: none yet); other ties go to the lower index.
    virtual void nearest(const int32_t* prev, int32_t* a, float* s) = 0;
    virtual void sims_of(const int32_t* a, float* s) = 0;  // s_i = cos(x_i, c_{a_i})
    virtual void update(const int32_t* a) = 0;              // c_k = normalised Σ_{a_i = k} x_i
};

// y += a·x over n floats (restrict lets the compiler vectorise it).
inline void axpy(float* __restrict y, const float* __restrict x, float a, int n) {
    for (int k = 0; k < n; ++k) y[k] += a * x[k];
}

inline int32_t argmax_keep(const float* row, int K, int32_t current) {
    int32_t best = current >= 0 ? current : 0;
    for (int k = 0; k < K; ++k)
        if (row[k] > row[best]) best = k;
    return best;
}

// Sparse documents over the U buckets that occur at all; centroids C: [U, K]
// (bucket-major: one nonzero touches K adjacent floats).
//
// Similarities and centroid sums run over blocks of documents stored by
// bucket (CSC, 6 bytes per nonzero): a block walks C once in bucket order (a
// stream, instead of one random cache line of a 16 MiB C per nonzero) and
// scatters into its own [B, K] similarity rows, which stay in L2. Each
// document still sums its nonzeros in ascending bucket order, so results do
// not depend on B or on the number of threads.
struct SparseSpace final : KMeansSpace {
    struct Block {
        size_t d0 = 0, n = 0;              // documents d0 .. d0+n-1
        std::vector<uint32_t> bucket;      // [G] distinct buckets, ascending
        std::vector<uint32_t> start;       // [G+1] entry range of each
        std::vector<uint16_t> doc;         // [E] document - d0
        std::vector<float> val;            // [E]
    };

    const std::vector<SparseVec>& x;
    const int K;
    std::vector<uint32_t> remap;  // [D] bucket -> compact column u (ascending with the bucket)
    std::vector<Block> blocks;
    size_t U = 0, nnz = 0;
    std::vector<float> C;  // [U, K]

    SparseSpace(const std::vector<SparseVec>& x_, size_t D, int K_) : x(x_), K(K_), remap(D, 0) {
        for (const SparseVec& v : x) {
            for (uint32_t d : v.idx) remap[d] = 1;
            nnz += v.nnz();
        }
        for (size_t d = 0; d < D; ++d) remap[d] = remap[d] ? uint32_t(U++) : 0;
        C.assign(U * size_t(K), 0.0f);
        // [B, K] similarity rows of about 256 KiB.
        const size_t B = std::clamp<size_t>((size_t(1) << 16) / size_t(K), 64, 65536);
        blocks.resize((x.size() + B - 1) / B);
        std::vector<std::vector<uint32_t>> count(static_cast<size_t>(parallel_threads()));  // per thread, sized on first use
        parallel_for_dynamic(int64_t(blocks.size()), 1, [&](int64_t b0, int64_t b1, int thread) {
            count[size_t(thread)].resize(U + 1);
            for (size_t bi = size_t(b0); bi < size_t(b1); ++bi)
                make_block(blocks[bi], bi * B, std::min(B, x.size() - bi * B), count[size_t(thread)]);
        }, par());
    }

    // Counting sort of the block's nonzeros by bucket; documents stay in order within a bucket.
    void make_block(Block& b, size_t d0, size_t n, std::vector<uint32_t>& count) {
        b.d0 = d0;
        b.n = n;
        std::fill(count.begin(), count.end(), 0u);
        size_t E = 0;
        for (size_t i = d0; i < d0 + n; ++i) {
            for (uint32_t d : x[i].idx) ++count[remap[d] + 1];
            E += x[i].nnz();
        }
        for (size_t u = 0; u < U; ++u)
            if (count[u + 1]) b.bucket.push_back(uint32_t(u));
        b.start.reserve(b.bucket.size() + 1);
        b.start.push_back(0);
        for (uint32_t u : b.bucket) b.start.push_back(b.start.back() + count[u + 1]);
        for (size_t g = 0; g < b.bucket.size(); ++g) count[b.bucket[g]] = b.start[g];  // next slot of bucket u
        b.doc.resize(E);
        b.val.resize(E);
        for (size_t i = d0; i < d0 + n; ++i)
            for (size_t j = 0; j < x[i].nnz(); ++j) {
                const uint32_t e = count[remap[x[i].idx[j]]]++;
                b.doc[e] = uint16_t(i - d0);
                b.val[e] = x[i].val[j];
            }
    }

    size_t size() const override { return x.size(); }
    bool nonzero(size_t i) const override { return x[i].nnz() > 0; }
    bool par() const { return nnz * size_t(K) > kParallelWork; }

    void set_centroid(int k, size_t i) override {
        for (size_t u = 0; u < U; ++u) C[u * K + k] = 0.0f;
        for (size_t j = 0; j < x[i].nnz(); ++j) C[size_t(remap[x[i].idx[j]]) * K + k] = x[i].val[j];
    }

    // s[i] = Σ_j x_ij · C[u_j, pick(i)] for every document of every block.
    template <typename Pick>
    void sims_one(float* s, Pick pick) {
        parallel_for_dynamic(int64_t(blocks.size()), 1, [&](int64_t b0, int64_t b1, int) {
            for (size_t bi = size_t(b0); bi < size_t(b1); ++bi) {
                const Block& b = blocks[bi];
                float* sb = s + b.d0;
                std::fill(sb, sb + b.n, 0.0f);
                for (size_t g = 0; g < b.bucket.size(); ++g) {
                    const float* c = &C[size_t(b.bucket[g]) * K];
                    for (uint32_t e = b.start[g]; e < b.start[g + 1]; ++e) sb[b.doc[e]] += b.val[e] * c[pick(b.d0 + b.doc[e])];
                }
            }
        }, nnz > kParallelWork);
    }

    void sims_to(int k, float* s) override {
        sims_one(s, [k](size_t) { return k; });
    }
    void sims_of(const int32_t* a, float* s) override {
        sims_one(s, [a](size_t i) { return a[i]; });
    }

    void nearest(const int32_t* prev, int32_t* a, float* s) override {
        std::vector<std::vector<float>> sims(static_cast<size_t>(parallel_threads()));  // per thread
        parallel_for_dynamic(int64_t(blocks.size()), 1, [&](int64_t b0, int64_t b1, int thread) {
            std::vector<float>& sim = sims[size_t(thread)];
            for (size_t bi = size_t(b0); bi < size_t(b1); ++bi) {
                const Block& b = blocks[bi];
                sim.assign(b.n * size_t(K), 0.0f);  // [n, K]
                for (size_t g = 0; g < b.bucket.size(); ++g) {
                    const float* c = &C[size_t(b.bucket[g]) * K];
                    for (uint32_t e = b.start[g]; e < b.start[g + 1]; ++e) axpy(&sim[size_t(b.doc[e]) * K], c, b.val[e], K);
                }
                for (size_t r = 0; r < b.n; ++r) {
                    const size_t i = b.d0 + r;
                    a[i] = argmax_keep(&sim[r * K], K, prev ? prev[i] : -1);
                    s[i] = sim[r * K + size_t(a[i])];
                }
            }
        }, par());
    }

    // C[u, k] = Σ_{a_i = k} x_iu, normalised per k. Threads own fixed bucket
    // ranges and walk the blocks in order, so each sum runs over documents in
    // ascending order for any thread count.
    void update(const int32_t* a) override {
        std::fill(C.begin(), C.end(), 0.0f);
        const long chunks = 64;
        const size_t step = (U + size_t(chunks) - 1) / size_t(chunks);
        std::vector<double> part(size_t(chunks) * size_t(K), 0.0);  // [chunk, K] Σ c²
        parallel_for_dynamic(chunks, 1, [&](int64_t ch0, int64_t ch1, int) {
            for (long ch = long(ch0); ch < long(ch1); ++ch) {
                const uint32_t u0 = uint32_t(std::min(U, size_t(ch) * step)), u1 = uint32_t(std::min(U, size_t(ch + 1) * step));
                for (const Block& b : blocks) {
                    size_t g = size_t(std::lower_bound(b.bucket.begin(), b.bucket.end(), u0) - b.bucket.begin());
                    for (; g < b.bucket.size() && b.bucket[g] < u1; ++g) {
                        float* c = &C[size_t(b.bucket[g]) * K];
                        for (uint32_t e = b.start[g]; e < b.start[g + 1]; ++e) c[a[b.d0 + b.doc[e]]] += b.val[e];
                    }
                }
                double* p = &part[size_t(ch) * K];
                for (size_t u = u0; u < u1; ++u)
                    for (int k = 0; k < K; ++k) p[k] += double(C[u * K + k]) * C[u * K + k];
            }
        }, par());
        std::vector<float> inv(static_cast<size_t>(K));
        for (int k = 0; k < K; ++k) {
            double ss = 0;
            for (long ch = 0; ch < chunks; ++ch) ss += part[size_t(ch) * K + k];
            inv[size_t(k)] = ss > 0 ? float(1.0 / std::sqrt(ss)) : 0.0f;
        }
        parallel_for_each(int64_t(U), [&](int64_t u) {
            for (int k = 0; k < K; ++k) C[size_t(u) * K + k] *= inv[size_t(k)];
        }, par());
    }
};

// Dense rows X: [N, D] (normalised copy); centroids C: [K, D].
struct DenseSpace final : KMeansSpace {
    // Rows per BLAS call: fixed (the same calls for any thread count), small enough
    // that a few thousand documents still make several blocks per thread.
    static constexpr size_t kRowBlock = 256;
    const size_t N, D;
    const int K;
    std::vector<float> X, C;
    std::vector<uint8_t> nz;

    DenseSpace(const float* x, size_t N_, size_t D_, int K_) : N(N_), D(D_), K(K_), X(x, x + N_ * D_), C(size_t(K_) * D_), nz(N_) {
        parallel_for_each(int64_t(N), [&](int64_t i) {
            float* r = &X[size_t(i) * D];
            double ss = 0;
            for (size_t d = 0; d < D; ++d) ss += double(r[d]) * r[d];
            nz[size_t(i)] = ss > 0;
            const float inv = ss > 0 ? float(1.0 / std::sqrt(ss)) : 0.0f;
            for (size_t d = 0; d < D; ++d) r[d] *= inv;
        }, N * D > kParallelWork);
    }

    size_t size() const override { return N; }
    bool nonzero(size_t i) const override { return nz[i]; }
    void set_centroid(int k, size_t i) override { std::copy_n(&X[i * D], D, &C[size_t(k) * D]); }

    // s = X · c_k: one single-threaded sgemv per fixed block of rows, the blocks
    // shared by the threads (the same calls for any thread count).
    void sims_to(int k, float* s) override {
        const int64_t blocks = int64_t((N + kRowBlock - 1) / kRowBlock);
        parallel_for_each(blocks, [&](int64_t b) {
            const size_t i0 = size_t(b) * kRowBlock, n = std::min(kRowBlock, N - i0);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(n), int(D), 1.0f, &X[i0 * D], int(D), &C[size_t(k) * D], 1, 0.0f,
                        s + i0, 1);
        }, N * D > kParallelWork);
    }

    // S = X · Cᵀ in fixed row blocks (one single-threaded sgemm each, a [block, K]
    // buffer per thread), the blocks shared by the threads.
    void nearest(const int32_t* prev, int32_t* a, float* s) override {
        const int64_t blocks = int64_t((N + kRowBlock - 1) / kRowBlock);
        parallel_for(blocks, [&](int64_t b0, int64_t b1) {
            std::vector<float> S(kRowBlock * size_t(K));
            for (int64_t b = b0; b < b1; ++b) {
                const size_t i0 = size_t(b) * kRowBlock, n = std::min(kRowBlock, N - i0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), K, int(D), 1.0f, &X[i0 * D], int(D), C.data(),
                            int(D), 0.0f, S.data(), K);
                for (size_t r = 0; r < n; ++r) {
                    const float* row = &S[r * size_t(K)];
                    a[i0 + r] = argmax_keep(row, K, prev ? prev[i0 + r] : -1);
                    s[i0 + r] = row[a[i0 + r]];
                }
            }
        }, N * D * size_t(K) > kParallelWork);
    }

    void sims_of(const int32_t* a, float* s) override {
        parallel_for_each(int64_t(N), [&](int64_t i) {
            const float* xr = &X[size_t(i) * D];
            const float* c = &C[size_t(a[i]) * D];
            float acc = 0;
            for (size_t d = 0; d < D; ++d) acc += xr[d] * c[d];
            s[i] = acc;
        }, N * D > kParallelWork);
    }

    void update(const int32_t* a) override {
        std::vector<std::vector<size_t>> members(static_cast<size_t>(K));
        for (size_t i = 0; i < N; ++i) members[size_t(a[i])].push_back(i);
        std::vector<std::vector<double>> accs(static_cast<size_t>(parallel_threads()));  // per thread, sized on first use
        parallel_for_dynamic(K, 1, [&](int64_t k0, int64_t k1, int thread) {
            std::vector<double>& acc = accs[size_t(thread)];
            acc.resize(D);
            for (int k = int(k0); k < int(k1); ++k) {
                std::fill(acc.begin(), acc.end(), 0.0);
                for (size_t i : members[size_t(k)]) {
                    const float* xr = &X[i * D];
                    for (size_t d = 0; d < D; ++d) acc[d] += xr[d];
                }
                double ss = 0;
                for (double v : acc) ss += v * v;
                const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
                float* c = &C[size_t(k) * D];
                for (size_t d = 0; d < D; ++d) c[d] = float(acc[d] * inv);
            }
        }, N * D > kParallelWork);
    }
};

// k-means++ on d_i = 1 - max_k cos(x_i, c_k); all-zero documents are never drawn.
void seed_centroids(KMeansSpace& sp, int K, Rng& rng) {
    const size_t N = sp.size();
    std::vector<uint8_t> chosen(N, 0);
    std::vector<size_t> live;
    for (size_t i = 0; i < N; ++i)
        if (sp.nonzero(i)) live.push_back(i);
    // Fallback when no mass is left: the first unchosen document, nonzero ones first.
    auto first_unchosen = [&] {
        for (size_t i : live)
            if (!chosen[i]) return i;
        for (size_t i = 0; i < N; ++i)
            if (!chosen[i]) return i;
        return size_t(0);
    };
    size_t first = live.empty() ? size_t(rng.below(N)) : live[rng.below(live.size())];
    std::vector<float> best(N, -std::numeric_limits<float>::infinity()), s(N);
    for (int k = 0;; ++k) {
        sp.set_centroid(k, first);
        chosen[first] = 1;
        if (k + 1 == K) break;
        sp.sims_to(k, s.data());
        double total = 0;
        for (size_t i = 0; i < N; ++i) {
            best[i] = std::max(best[i], s[i]);
            if (sp.nonzero(i) && !chosen[i]) total += std::max(0.0, 1.0 - double(best[i]));
        }
        if (!(total > 0)) {
            first = first_unchosen();
            continue;
        }
        const double r = rng.uniform() * total;
        double cum = 0;
        size_t pick = N;
        for (size_t i = 0; i < N; ++i) {
            if (!sp.nonzero(i) || chosen[i]) continue;
            const double w = std::max(0.0, 1.0 - double(best[i]));
            if (w <= 0) continue;
            pick = i;  // the last positive one, should rounding carry r past the end
            cum += w;
            if (cum > r) break;
        }
        first = pick;
    }
}

// Moves into each empty cluster the document least similar to its own centroid
// among clusters with more than one document (nonzero documents first).
void fill_empty(std::vector<int32_t>& a, const std::vector<float>& s, int K, const KMeansSpace& sp) {
    std::vector<size_t> count(size_t(K), 0);
    for (int32_t c : a) ++count[size_t(c)];
    std::vector<uint8_t> moved(a.size(), 0);
    for (int k = 0; k < K; ++k) {
        if (count[size_t(k)]) continue;
        size_t pick = a.size();
        for (int pass = 0; pass < 2 && pick == a.size(); ++pass)
            for (size_t i = 0; i < a.size(); ++i) {
                if (moved[i] || count[size_t(a[i])] < 2 || (pass == 0 && !sp.nonzero(i))) continue;
                if (pick == a.size() || s[i] < s[pick]) pick = i;
            }
        --count[size_t(a[pick])];
        a[pick] = k;
        count[size_t(k)] = 1;
        moved[pick] = 1;
    }
}

SphericalKMeansResult lloyd(KMeansSpace& sp, const SphericalKMeansOptions& opt, int restart) {
    const size_t N = sp.size();
    const int K = opt.clusters;
    Rng rng(opt.seed, uint64_t(restart));
    seed_centroids(sp, K, rng);

    SphericalKMeansResult r;
    r.restart = restart;
    r.assign.assign(N, -1);
    std::vector<int32_t> a(N);
    std::vector<float> s(N);
    for (int it = 1; it <= opt.max_iter; ++it) {
        sp.nearest(it == 1 ? nullptr : r.assign.data(), a.data(), s.data());
        size_t changed = 0;
        for (size_t i = 0; i < N; ++i) changed += a[i] != r.assign[i];
        r.assign.swap(a);
        r.iterations = it;
        if (!changed) {
            r.converged = true;
            break;
        }
        fill_empty(r.assign, s, K, sp);
        sp.update(r.assign.data());
    }
    // Not converged: the centroids were refit after the last assignment.
    if (!r.converged) sp.sims_of(r.assign.data(), s.data());
    r.objective = 0;
    for (size_t i = 0; i < N; ++i) r.objective += double(s[i]);
    return r;
}

// Renumbers clusters in the order of their first document and counts sizes.
void canonical_labels(SphericalKMeansResult& r, int K) {
    std::vector<int32_t> map(size_t(K), -1);
    int32_t next = 0;
    for (int32_t& c : r.assign) {
        if (map[size_t(c)] < 0) map[size_t(c)] = next++;
        c = map[size_t(c)];
    }
    r.sizes.assign(size_t(K), 0);
    for (int32_t c : r.assign) ++r.sizes[size_t(c)];
}

SphericalKMeansResult run_restarts(KMeansSpace& sp, const SphericalKMeansOptions& opt) {
    SphericalKMeansResult best;
    for (int rs = 0; rs < opt.restarts; ++rs) {
        SphericalKMeansResult r = lloyd(sp, opt, rs);
        if (rs == 0 || r.objective > best.objective) best = std::move(r);
    }
    canonical_labels(best, opt.clusters);
    return best;
}

}  // namespace

void check_cluster_request(size_t documents, const SphericalKMeansOptions& opt, const std::string& what) {
    if (opt.clusters < 2) fail("{}: need at least 2 clusters (got {})", what, opt.clusters);
    if (size_t(opt.clusters) > documents)
        fail("{}: {} clusters requested but there are only {} documents", what, opt.clusters, documents);
    if (opt.max_iter < 1) fail("{}: max-iter must be at least 1 (got {})", what, opt.max_iter);
    if (opt.restarts < 1) fail("{}: restarts must be at least 1 (got {})", what, opt.restarts);
}

SphericalKMeansResult spherical_kmeans(const std::vector<SparseVec>& docs, uint32_t dim, const SphericalKMeansOptions& opt) {
    check_cluster_request(docs.size(), opt, "spherical k-means");
    for (size_t i = 0; i < docs.size(); ++i) {
        const SparseVec& v = docs[i];
        if (v.idx.size() != v.val.size()) fail("spherical k-means: document {} has {} indices but {} values", i, v.idx.size(), v.val.size());
        for (size_t j = 0; j < v.nnz(); ++j)
            if (v.idx[j] >= dim || (j && v.idx[j] <= v.idx[j - 1]))
                fail("spherical k-means: document {} has indices that are not ascending below {}", i, dim);
    }
    // Sparse vectors are clustered as given: tfidf_embed already normalises;
    // normalise here too so that any caller gets cosine similarity.
    std::vector<SparseVec> unit;
    const std::vector<SparseVec>* x = &docs;
    bool all_unit = true;
    for (const SparseVec& v : docs) {
        double ss = 0;
        for (float w : v.val) ss += double(w) * w;
        if (v.nnz() && std::abs(ss - 1.0) > 1e-4) all_unit = false;
    }
    if (!all_unit) {
        unit = docs;
        for (SparseVec& v : unit) {
            double ss = 0;
            for (float w : v.val) ss += double(w) * w;
            const float inv = ss > 0 ? float(1.0 / std::sqrt(ss)) : 0.0f;
            for (float& w : v.val) w *= inv;
        }
        x = &unit;
    }
    SparseSpace sp(*x, dim, opt.clusters);
    return run_restarts(sp, opt);
}

SphericalKMeansResult spherical_kmeans(const float* x, size_t n, size_t dim, const SphericalKMeansOptions& opt) {
    check_cluster_request(n, opt, "spherical k-means");
    if (dim == 0) fail("spherical k-means: embeddings have dimension 0");
    DenseSpace sp(x, n, dim, opt.clusters);
    return run_restarts(sp, opt);
}

}  // namespace moefy
