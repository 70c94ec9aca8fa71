#include "data/tfidf.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "common/error.h"
#include "common/parallel.h"
#include "data/parallel_work.h"

namespace moefy {

// ---- TF-IDF --------------------------------------------------------------------

uint32_t fnv1a32(std::string_view s) {
    uint32_t h = 2166136261u;
    for (unsigned char ch : s) h = (h ^ ch) * 16777619u;
    return h;
}

uint32_t word_bucket(std::string_view lowercase_word, int hash_bits) {
    return fnv1a32(lowercase_word) & ((uint32_t(1) << hash_bits) - 1);
}

static inline bool is_word_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
static inline unsigned char ascii_lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Calls fn(begin, len, fnv1a32(lowercased word)) for every word of at least min_len bytes.
template <typename Fn>
static void for_each_word(std::string_view text, int min_len, Fn&& fn) {
    const size_t n = text.size();
    size_t i = 0;
    while (i < n) {
        while (i < n && !is_word_byte((unsigned char)text[i])) ++i;
        const size_t b = i;
        uint32_t h = 2166136261u;
        for (; i < n && is_word_byte((unsigned char)text[i]); ++i) h = (h ^ ascii_lower((unsigned char)text[i])) * 16777619u;
        if (i > b && i - b >= size_t(min_len)) fn(b, i - b, h);
    }
}

static std::string lower_word(std::string_view text, size_t b, size_t len) {
    std::string w(len, ' ');
    for (size_t j = 0; j < len; ++j) w[j] = char(ascii_lower((unsigned char)text[b + j]));
    return w;
}

std::vector<std::string> text_words(std::string_view text, int min_word_len) {
    std::vector<std::string> out;
    for_each_word(text, min_word_len, [&](size_t b, size_t len, uint32_t) { out.push_back(lower_word(text, b, len)); });
    return out;
}

void check_tfidf_options(const TfidfOptions& opt) {
    if (opt.hash_bits < 4 || opt.hash_bits > 28) fail("tf-idf hash bits must be in [4, 28] (got {})", opt.hash_bits);
    if (!(opt.max_df > 0 && opt.max_df <= 1)) fail("tf-idf max_df must be in (0, 1] (got {})", opt.max_df);
    if (opt.min_word_len < 1) fail("tf-idf min_word_len must be at least 1 (got {})", opt.min_word_len);
}

TfidfEmbedding tfidf_embed(const std::vector<std::string>& docs, const TfidfOptions& opt) {
    check_tfidf_options(opt);
    const size_t N = docs.size();
    const uint32_t mask = (uint32_t(1) << opt.hash_bits) - 1;
    TfidfEmbedding e;
    e.dim = mask + 1;
    e.docs.resize(N);

    size_t bytes = 0;
    for (const std::string& d : docs) bytes += d.size();
    const bool par = bytes > kParallelWork;

    // Raw bucket counts per document: idx sorted, val = count.
    parallel_for_dynamic(int64_t(N), 16, [&](int64_t i0, int64_t i1, int) {
        for (size_t i = size_t(i0); i < size_t(i1); ++i) {
            std::vector<uint32_t> b;
            for_each_word(docs[i], opt.min_word_len, [&](size_t, size_t, uint32_t h) { b.push_back(h & mask); });
            std::sort(b.begin(), b.end());
            SparseVec& v = e.docs[i];
            for (size_t j = 0; j < b.size();) {
                size_t k = j;
                while (k < b.size() && b[k] == b[j]) ++k;
                v.idx.push_back(b[j]);
                v.val.push_back(float(k - j));
                j = k;
            }
        }
    }, par);

    e.df.assign(e.dim, 0);
    for (const SparseVec& v : e.docs)
        for (uint32_t d : v.idx) ++e.df[d];

    e.idf.assign(e.dim, 0.0f);
    const double max_count = opt.max_df * double(N);
    for (uint32_t d = 0; d < e.dim; ++d) {
        if (!e.df[d]) continue;
        if (double(e.df[d]) > max_count) {
            ++e.dropped_buckets;
            continue;
        }
        e.idf[d] = float(std::log((1.0 + double(N)) / (1.0 + double(e.df[d]))) + 1.0);
    }

    // x = (1 + ln tf) · idf, kept buckets only, L2-normalised.
    parallel_for_dynamic(int64_t(N), 64, [&](int64_t i0, int64_t i1, int) {
        for (size_t i = size_t(i0); i < size_t(i1); ++i) {
            SparseVec& v = e.docs[i];
            size_t m = 0;
            double ss = 0;
            for (size_t j = 0; j < v.idx.size(); ++j) {
                const float idf = e.idf[v.idx[j]];
                if (idf == 0.0f) continue;
                const float x = (1.0f + std::log(v.val[j])) * idf;
                v.idx[m] = v.idx[j];
                v.val[m] = x;
                ss += double(x) * x;
                ++m;
            }
            v.idx.resize(m);
            v.val.resize(m);
            v.idx.shrink_to_fit();
            v.val.shrink_to_fit();
            const float inv = m ? float(1.0 / std::sqrt(ss)) : 0.0f;
            for (float& x : v.val) x *= inv;
        }
    }, par);
    return e;
}

// ---- naming clusters ---------------------------------------------------------------

std::vector<std::vector<ClusterTerm>> cluster_top_terms(const std::vector<std::string>& texts, const TfidfEmbedding& emb,
                                                        const std::vector<int32_t>& assign, int clusters, int top,
                                                        const TfidfOptions& opt) {
    if (assign.size() != emb.docs.size() || texts.size() != emb.docs.size())
        fail("cluster terms: {} texts, {} embeddings and {} assignments differ", texts.size(), emb.docs.size(), assign.size());
    std::vector<std::vector<size_t>> members(static_cast<size_t>(clusters));
    for (size_t i = 0; i < assign.size(); ++i) {
        if (assign[i] < 0 || assign[i] >= clusters) fail("cluster terms: document {} has cluster {} outside [0, {})", i, assign[i], clusters);
        members[size_t(assign[i])].push_back(i);
    }
    const uint32_t mask = emb.dim - 1;
    std::vector<std::vector<ClusterTerm>> out(static_cast<size_t>(clusters));
    size_t bytes = 0;
    for (const std::string& t : texts) bytes += t.size();
    std::vector<std::vector<float>> scratch(static_cast<size_t>(parallel_threads()));  // per thread, sized on first use
    parallel_for_dynamic(clusters, 1, [&](int64_t k0, int64_t k1, int thread) {
        std::vector<float>& c = scratch[size_t(thread)];
        c.resize(emb.dim);
        for (int k = int(k0); k < int(k1); ++k) {
            // Centroid direction: Σ x_i over the cluster, in document order.
            std::fill(c.begin(), c.end(), 0.0f);
            for (size_t i : members[size_t(k)]) {
                const SparseVec& v = emb.docs[i];
                for (size_t j = 0; j < v.nnz(); ++j) c[v.idx[j]] += v.val[j];
            }
            double ss = 0;
            std::vector<uint32_t> cand;
            for (uint32_t d = 0; d < emb.dim; ++d)
                if (c[d] > 0) cand.push_back(d), ss += double(c[d]) * c[d];
            const size_t n = std::min(cand.size(), size_t(std::max(top, 0)));
            auto heavier = [&](uint32_t p, uint32_t q) { return c[p] != c[q] ? c[p] > c[q] : p < q; };
            std::partial_sort(cand.begin(), cand.begin() + long(n), cand.end(), heavier);
            cand.resize(n);

            // Name each bucket by its most frequent word in this cluster.
            std::vector<std::map<std::string, size_t>> words(n);
            for (size_t i : members[size_t(k)]) {
                const std::string& t = texts[i];
                for_each_word(t, opt.min_word_len, [&](size_t b, size_t len, uint32_t h) {
                    const uint32_t d = h & mask;
                    for (size_t q = 0; q < n; ++q)
                        if (cand[q] == d) ++words[q][lower_word(t, b, len)];
                });
            }
            const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
            for (size_t q = 0; q < n; ++q) {
                std::string name;
                size_t most = 0;
                for (const auto& [w, cnt] : words[q])  // alphabetical, so ties keep the first
                    if (cnt > most) most = cnt, name = w;
                out[size_t(k)].push_back({name, float(c[cand[q]] * inv)});
            }
        }
    }, bytes > kParallelWork);
    return out;
}

}  // namespace moefy
