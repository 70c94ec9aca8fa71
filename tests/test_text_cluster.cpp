// Text clustering: TF-IDF golden values, planted topics recovered exactly,
// spherical k-means identities and a brute-force optimum, thread-count and
// run-to-run determinism, no document lost, refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/parallel.h"
#include "common/rng.h"
#include "data/text_cluster.h"
#include "test_util.h"

using namespace moefy;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// 3 topics with disjoint vocabularies; every document also holds stopwords
// shared by all topics (dropped by max_df). Document i belongs to topic i % 3.
std::vector<std::string> planted_docs(int per_topic, uint64_t seed) {
    const std::vector<std::vector<std::string>> vocab = {
        {"galaxy", "orbit", "comet", "nebula", "planet", "rocket", "stellar", "quasar", "meteor", "lunar", "solar", "cosmos"},
        {"butter", "flour", "oven", "recipe", "sugar", "whisk", "dough", "yeast", "bake", "pastry", "cream", "knead"},
        {"compiler", "pointer", "kernel", "thread", "mutex", "syntax", "runtime", "linker", "buffer", "socket", "parser", "stack"}};
    const std::vector<std::string> stop = {"the", "and", "of", "to", "is"};
    Rng rng(seed);
    std::vector<std::string> docs;
    for (int i = 0; i < 3 * per_topic; ++i) {
        const auto& v = vocab[size_t(i % 3)];
        std::string d;
        const int n = 8 + int(rng.below(20));
        for (int w = 0; w < n; ++w) {
            d += (rng.below(3) == 0 ? stop[rng.below(stop.size())] : v[rng.below(v.size())]);
            d += rng.below(5) == 0 ? ", " : " ";
        }
        docs.push_back(d);
    }
    return docs;
}

std::string jsonl_of(const std::vector<std::string>& docs) {
    std::string s;
    for (size_t i = 0; i < docs.size(); ++i) s += json{{"text", docs[i]}, {"id", i}}.dump() + "\n";
    return s;
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    size_t b = 0;
    while (b < text.size()) {
        size_t e = text.find('\n', b);
        if (e == std::string::npos) e = text.size();
        out.push_back(text.substr(b, e - b));
        b = e + 1;
    }
    return out;
}

// All lines of OUT/0.jsonl .. OUT/K-1.jsonl, as a sorted multiset.
std::vector<std::string> output_lines(const std::string& out, int K) {
    std::vector<std::string> all;
    for (int k = 0; k < K; ++k) {
        const std::string p = out + "/" + std::to_string(k) + ".jsonl";
        EXPECT_TRUE(fs::exists(p)) << p;
        for (auto& l : lines_of(read_file(p))) all.push_back(l);
    }
    std::sort(all.begin(), all.end());
    return all;
}

// Σ_k ‖Σ_{a_i = k} x_i‖ for unit rows x: [n, d], the spherical k-means
// objective of a partition with its best (normalised-sum) centroids.
double partition_objective(const std::vector<float>& x, size_t n, size_t d, const std::vector<int32_t>& a, int K) {
    std::vector<double> s(size_t(K) * d, 0.0);
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < d; ++j) s[size_t(a[i]) * d + j] += x[i * d + j];
    double obj = 0;
    for (int k = 0; k < K; ++k) {
        double ss = 0;
        for (size_t j = 0; j < d; ++j) ss += s[size_t(k) * d + j] * s[size_t(k) * d + j];
        obj += std::sqrt(ss);
    }
    return obj;
}

// Dense copy over the buckets that occur (cosines are unchanged); dim: out.
std::vector<float> densify(const std::vector<SparseVec>& docs, size_t& dim) {
    std::map<uint32_t, size_t> cols;
    for (const auto& v : docs)
        for (uint32_t b : v.idx) cols.emplace(b, cols.size());
    dim = cols.size();
    std::vector<float> x(docs.size() * dim, 0.0f);
    for (size_t i = 0; i < docs.size(); ++i)
        for (size_t j = 0; j < docs[i].nnz(); ++j) x[i * dim + cols[docs[i].idx[j]]] = docs[i].val[j];
    return x;
}

}  // namespace

// ------------------------------------------------------------------ TF-IDF

TEST(TextClusterTfidf, WordsAndHash) {
    // Non-ASCII bytes separate words ("w" and "rld_x42" around the ö); single
    // letters are dropped; case folds.
    EXPECT_EQ(text_words("Hello, w\xc3\xb6rld_x42 a B2 foo-bar\tFOO"),
              (std::vector<std::string>{"hello", "rld_x42", "b2", "foo", "bar", "foo"}));
    EXPECT_EQ(text_words("I x", 1), (std::vector<std::string>{"i", "x"}));
    EXPECT_TRUE(text_words("!!! \xe4\xb8\xad\xe6\x96\x87").empty());
    // FNV-1a 32-bit reference vectors.
    EXPECT_EQ(fnv1a32(""), 0x811c9dc5u);
    EXPECT_EQ(fnv1a32("a"), 0xe40c292cu);
    EXPECT_EQ(fnv1a32("foobar"), 0xbf9cf968u);
    EXPECT_EQ(word_bucket("foobar", 18), 0xbf9cf968u & 0x3ffffu);
}

TEST(TextClusterTfidf, HandMadeIdfAndSublinearTf) {
    const std::vector<std::string> docs = {"apple banana apple", "Banana cherry", "cherry CHERRY cherry date"};
    const uint32_t ap = word_bucket("apple", 18), ba = word_bucket("banana", 18), ch = word_bucket("cherry", 18),
                   da = word_bucket("date", 18);
    ASSERT_EQ((std::set<uint32_t>{ap, ba, ch, da}).size(), 4u) << "test words collide";

    TfidfOptions opt;
    opt.max_df = 1.0;
    TfidfEmbedding e = tfidf_embed(docs, opt);
    ASSERT_EQ(e.dim, 1u << 18);
    EXPECT_EQ(e.df[ap], 1u);
    EXPECT_EQ(e.df[ba], 2u);
    EXPECT_EQ(e.df[ch], 2u);
    // idf = ln((1+N)/(1+df)) + 1 with N = 3.
    EXPECT_NEAR(e.idf[ap], 1.6931471805599454, 1e-6);
    EXPECT_NEAR(e.idf[ba], 1.2876820724517808, 1e-6);
    EXPECT_EQ(e.dropped_buckets, 0u);
    auto weight = [&](size_t i, uint32_t b) {
        const SparseVec& v = e.docs[i];
        auto it = std::lower_bound(v.idx.begin(), v.idx.end(), b);
        return it != v.idx.end() && *it == b ? v.val[size_t(it - v.idx.begin())] : 0.0f;
    };
    // doc 0: apple tf 2 -> (1 + ln 2)·idf, banana tf 1 -> idf; then L2 norm.
    EXPECT_NEAR(weight(0, ap), 0.9122016295971542, 1e-6);
    EXPECT_NEAR(weight(0, ba), 0.4097416099937816, 1e-6);
    EXPECT_EQ(e.docs[0].nnz(), 2u);
    // doc 2: cherry tf 3 (case folded), date tf 1.
    EXPECT_NEAR(weight(2, ch), 0.8474084852202652, 1e-6);
    EXPECT_NEAR(weight(2, da), 0.5309414837594586, 1e-6);
    for (const SparseVec& v : e.docs) {
        EXPECT_TRUE(std::is_sorted(v.idx.begin(), v.idx.end()));
        double ss = 0;
        for (float w : v.val) ss += double(w) * w;
        EXPECT_NEAR(ss, 1.0, 1e-6);
    }

    // max_df = 0.5: banana and cherry (df 2 > 1.5) are dropped; doc 1 is left empty.
    TfidfEmbedding d = tfidf_embed(docs, TfidfOptions{});
    EXPECT_EQ(d.dropped_buckets, 2u);
    EXPECT_EQ(d.idf[ba], 0.0f);
    ASSERT_EQ(d.docs[0].nnz(), 1u);
    EXPECT_EQ(d.docs[0].idx[0], ap);
    EXPECT_FLOAT_EQ(d.docs[0].val[0], 1.0f);
    EXPECT_EQ(d.docs[1].nnz(), 0u);
}

TEST(TextClusterTfidf, UnitLengthOnPlantedCorpus) {
    TfidfEmbedding e = tfidf_embed(planted_docs(20, 7));
    EXPECT_EQ(e.dropped_buckets, 5u);  // the 5 stopwords, in every document
    for (const SparseVec& v : e.docs) {
        ASSERT_GT(v.nnz(), 0u);
        double ss = 0;
        for (float w : v.val) ss += double(w) * w;
        EXPECT_NEAR(ss, 1.0, 1e-6);
    }
}

// ------------------------------------------------------------------ k-means

TEST(TextClusterKMeans, PlantedTopicsRecoveredExactly) {
    const auto docs = planted_docs(20, 1);
    TfidfEmbedding e = tfidf_embed(docs);
    for (uint64_t seed = 0; seed < 5; ++seed) {
        SphericalKMeansOptions o;
        o.clusters = 3;
        o.seed = seed;
        SphericalKMeansResult r = spherical_kmeans(e.docs, e.dim, o);
        // Labels follow the first document of each cluster, so topic t is cluster t.
        for (size_t i = 0; i < docs.size(); ++i) ASSERT_EQ(r.assign[i], int32_t(i % 3)) << "seed " << seed << " doc " << i;
        EXPECT_EQ(r.sizes, (std::vector<size_t>{20, 20, 20}));
        EXPECT_TRUE(r.converged);

        // The same partition from the dense path on the same vectors.
        size_t dim = 0;
        std::vector<float> x = densify(e.docs, dim);
        SphericalKMeansResult rd = spherical_kmeans(x.data(), docs.size(), dim, o);
        EXPECT_EQ(rd.assign, r.assign);
        EXPECT_NEAR(rd.objective, r.objective, 1e-3);
    }

    // The top terms of each cluster are its own topic's words.
    SphericalKMeansOptions o;
    o.clusters = 3;
    SphericalKMeansResult r = spherical_kmeans(e.docs, e.dim, o);
    auto terms = cluster_top_terms(docs, e, r.assign, 3, 5, TfidfOptions{});
    const std::vector<std::set<std::string>> topic = {{"galaxy", "orbit", "comet", "nebula", "planet", "rocket", "stellar", "quasar", "meteor", "lunar", "solar", "cosmos"},
                                                      {"butter", "flour", "oven", "recipe", "sugar", "whisk", "dough", "yeast", "bake", "pastry", "cream", "knead"},
                                                      {"compiler", "pointer", "kernel", "thread", "mutex", "syntax", "runtime", "linker", "buffer", "socket", "parser", "stack"}};
    for (int k = 0; k < 3; ++k) {
        ASSERT_EQ(terms[size_t(k)].size(), 5u);
        for (size_t q = 0; q < 5; ++q) {
            EXPECT_TRUE(topic[size_t(k)].count(terms[size_t(k)][q].word)) << terms[size_t(k)][q].word;
            if (q) {
                EXPECT_LE(terms[size_t(k)][q].weight, terms[size_t(k)][q - 1].weight);
            }
        }
    }
}

TEST(TextClusterKMeans, ObjectiveIsSumOfCentroidNorms) {
    // Random dense data (no structure) so that Lloyd needs several iterations;
    // stopping by max_iter or by convergence, the reported objective is that
    // of the returned partition with its normalised-sum centroids.
    const size_t n = 300, d = 16;
    Rng rng(3);
    std::vector<float> x(n * d);
    for (auto& v : x) v = float(rng.normal());
    std::vector<float> u = x;
    for (size_t i = 0; i < n; ++i) {
        double ss = 0;
        for (size_t j = 0; j < d; ++j) ss += double(u[i * d + j]) * u[i * d + j];
        for (size_t j = 0; j < d; ++j) u[i * d + j] = float(u[i * d + j] / std::sqrt(ss));
    }
    for (int max_iter : {1, 3, 100}) {
        SphericalKMeansOptions o;
        o.clusters = 7;
        o.max_iter = max_iter;
        SphericalKMeansResult r = spherical_kmeans(x.data(), n, d, o);
        EXPECT_NEAR(r.objective, partition_objective(u, n, d, r.assign, 7), 1e-3) << "max_iter " << max_iter;
        EXPECT_LE(r.iterations, max_iter);
        for (size_t s : r.sizes) EXPECT_GT(s, 0u);
        if (max_iter == 100) {
            EXPECT_TRUE(r.converged);
        }
    }
    // Sparse path on the same vectors.
    std::vector<SparseVec> sp(n);
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < d; ++j) sp[i].idx.push_back(uint32_t(j)), sp[i].val.push_back(x[i * d + j]);
    SphericalKMeansOptions o;
    o.clusters = 7;
    SphericalKMeansResult r = spherical_kmeans(sp, uint32_t(d), o);
    EXPECT_NEAR(r.objective, partition_objective(u, n, d, r.assign, 7), 1e-3);
}

TEST(TextClusterKMeans, MatchesBruteForceOptimum) {
    // 10 points in 3-d, K = 3: 3^10 partitions enumerated.
    const size_t n = 10, d = 3;
    const int K = 3;
    for (uint64_t seed : {11, 12, 13}) {
        Rng rng(seed);
        std::vector<float> x(n * d);
        for (auto& v : x) v = float(rng.normal());
        for (size_t i = 0; i < n; ++i) {
            double ss = 0;
            for (size_t j = 0; j < d; ++j) ss += double(x[i * d + j]) * x[i * d + j];
            for (size_t j = 0; j < d; ++j) x[i * d + j] = float(x[i * d + j] / std::sqrt(ss));
        }
        double best = -1;
        std::vector<int32_t> a(n);
        for (int code = 0; code < 59049; ++code) {
            int c = code;
            std::vector<int> cnt(K, 0);
            for (size_t i = 0; i < n; ++i) a[i] = c % 3, c /= 3, ++cnt[size_t(a[i])];
            if (std::count(cnt.begin(), cnt.end(), 0)) continue;
            best = std::max(best, partition_objective(x, n, d, a, K));
        }
        SphericalKMeansOptions o;
        o.clusters = K;
        o.restarts = 20;
        o.seed = seed;
        SphericalKMeansResult r = spherical_kmeans(x.data(), n, d, o);
        EXPECT_NEAR(r.objective, best, 1e-4) << "seed " << seed;
    }
}

TEST(TextClusterKMeans, SameResultForAnyThreadCount) {
    // 1200 documents of 30 words from a shared pool of 400 with a weak topic
    // bias: large enough that every loop runs in parallel, noisy enough that
    // Lloyd takes many iterations.
    Rng rng(5);
    std::vector<std::string> docs;
    for (int i = 0; i < 1200; ++i) {
        std::string d;
        for (int w = 0; w < 30; ++w) {
            const uint64_t id = rng.below(2) ? rng.below(400) : uint64_t(i % 5) * 80 + rng.below(80);
            d += 'w';
            d += std::to_string(id);
            d += ' ';
        }
        docs.push_back(d);
    }
    const size_t n = 2000, dd = 16;
    std::vector<float> x(n * dd);
    for (auto& v : x) v = float(rng.normal());

    SphericalKMeansOptions o;
    o.clusters = 9;
    o.seed = 9;
    o.restarts = 2;
    TfidfEmbedding e1;
    SphericalKMeansResult r1, d1;
    {
        ScopedThreadLimit one(1);
        e1 = tfidf_embed(docs);
        r1 = spherical_kmeans(e1.docs, e1.dim, o);
        d1 = spherical_kmeans(x.data(), n, dd, o);
    }
    TfidfEmbedding e2 = tfidf_embed(docs);  // all of the pool's threads (OMP_NUM_THREADS, else the CPUs)
    SphericalKMeansResult r2 = spherical_kmeans(e2.docs, e2.dim, o);
    SphericalKMeansResult d2 = spherical_kmeans(x.data(), n, dd, o);
    for (size_t i = 0; i < docs.size(); ++i) {
        ASSERT_EQ(e1.docs[i].idx, e2.docs[i].idx);
        ASSERT_EQ(e1.docs[i].val, e2.docs[i].val);
    }
    EXPECT_GT(r1.iterations, 3);
    EXPECT_EQ(r1.assign, r2.assign);
    EXPECT_EQ(r1.objective, r2.objective);  // bit-identical
    EXPECT_EQ(r1.iterations, r2.iterations);
    EXPECT_EQ(d1.assign, d2.assign);
    EXPECT_EQ(d1.objective, d2.objective);
}

TEST(TextClusterKMeans, DuplicatesAndEmptyDocuments) {
    // 6 copies of one text, 2 of another, 2 without features. K = 4 exceeds
    // the distinct directions, so empty clusters must be re-seeded; every
    // document is still assigned and every cluster filled.
    std::vector<std::string> docs(6, "alpha beta gamma");
    docs.push_back("delta epsilon");
    docs.push_back("delta epsilon");
    docs.push_back("!!!");
    docs.push_back("\xc3\xa9\xc3\xa9");
    TfidfOptions to;
    to.max_df = 1.0;
    TfidfEmbedding e = tfidf_embed(docs, to);
    EXPECT_EQ(e.docs[8].nnz(), 0u);
    EXPECT_EQ(e.docs[9].nnz(), 0u);
    for (int K : {2, 3, 4}) {
        SphericalKMeansOptions o;
        o.clusters = K;
        SphericalKMeansResult r = spherical_kmeans(e.docs, e.dim, o);
        ASSERT_EQ(r.assign.size(), docs.size());
        for (size_t s : r.sizes) EXPECT_GT(s, 0u) << "K " << K;
        EXPECT_EQ(r.assign[6], r.assign[7]);
        EXPECT_NE(r.assign[6], r.assign[0]);
        // Every nonzero document sits with its exact copies' centroid: cos 1 each.
        EXPECT_NEAR(r.objective, 8.0, 1e-4) << "K " << K;
        if (K == 2) {
            for (int i = 1; i < 6; ++i) EXPECT_EQ(r.assign[size_t(i)], r.assign[0]);
        }
    }
}

TEST(TextClusterKMeans, RefusesBadRequests) {
    TfidfEmbedding e = tfidf_embed(planted_docs(2, 1));  // 6 documents
    SphericalKMeansOptions o;
    o.clusters = 1;
    EXPECT_THROW(spherical_kmeans(e.docs, e.dim, o), Error);
    o.clusters = 7;
    EXPECT_THROW(spherical_kmeans(e.docs, e.dim, o), Error);
    o.clusters = 6;
    EXPECT_NO_THROW(spherical_kmeans(e.docs, e.dim, o));
    o.max_iter = 0;
    EXPECT_THROW(spherical_kmeans(e.docs, e.dim, o), Error);
    o.max_iter = 10;
    o.restarts = 0;
    EXPECT_THROW(spherical_kmeans(e.docs, e.dim, o), Error);
    o.restarts = 1;
    o.clusters = 2;
    std::vector<SparseVec> bad = e.docs;
    bad[1].idx = {5, 3};
    bad[1].val = {0.6f, 0.8f};
    EXPECT_THROW(spherical_kmeans(bad, e.dim, o), Error);
    bad[1].idx = {e.dim};
    bad[1].val = {1.0f};
    EXPECT_THROW(spherical_kmeans(bad, e.dim, o), Error);
    TfidfOptions to;
    to.max_df = 0;
    EXPECT_THROW(tfidf_embed({"a b"}, to), Error);
}

// ------------------------------------------------------------------ files

TEST(TextClusterOutput, DeterministicVerbatimAndComplete) {
    TempDir t;
    const auto docs = planted_docs(20, 2);
    // Verbatim means verbatim: odd spacing, escapes and extra fields survive.
    std::string text = jsonl_of(docs);
    text += "{ \"id\" : 60,   \"text\": \"galaxy orbit comet nebula \\u00e9 planet\" }\n";
    text += "\n";  // blank lines are not documents
    text += "{\"text\":\"flour sugar oven bake yeast\",\"extra\":[1,2,{\"a\":null}]}";  // no final newline
    write_text(t.path + "/in.jsonl", text);

    TextClusterOptions opt;
    opt.data = {t.path + "/in.jsonl"};
    opt.kmeans.clusters = 3;
    opt.kmeans.seed = 4;
    opt.out = t.path + "/a";
    json s = cluster_text_tfidf(opt);
    opt.out = t.path + "/b";
    cluster_text_tfidf(opt);

    for (const char* f : {"0.jsonl", "1.jsonl", "2.jsonl", "summary.json"})
        EXPECT_EQ(read_file(t.path + "/a/" + f), read_file(t.path + "/b/" + f)) << f;
    EXPECT_FALSE(fs::exists(t.path + "/a/3.jsonl"));

    std::vector<std::string> in;
    for (auto& l : lines_of(text))
        if (!l.empty()) in.push_back(l);
    std::sort(in.begin(), in.end());
    EXPECT_EQ(output_lines(t.path + "/a", 3), in);

    // Topic t (documents i % 3 == t, and the two extra lines) is cluster t.
    const auto c0 = lines_of(read_file(t.path + "/a/0.jsonl"));
    const auto c1 = lines_of(read_file(t.path + "/a/1.jsonl"));
    ASSERT_EQ(c0.size(), 21u);
    ASSERT_EQ(c1.size(), 21u);
    EXPECT_EQ(c0.back(), "{ \"id\" : 60,   \"text\": \"galaxy orbit comet nebula \\u00e9 planet\" }");
    EXPECT_EQ(c1.back(), "{\"text\":\"flour sugar oven bake yeast\",\"extra\":[1,2,{\"a\":null}]}");
    for (size_t j = 0; j < 20; ++j) EXPECT_EQ(json::parse(c0[j])["id"], 3 * j);

    json sum = json::parse(read_file(t.path + "/a/summary.json"));
    EXPECT_EQ(sum, s);
    EXPECT_EQ(sum["clusters"], 3);
    EXPECT_EQ(sum["documents"], 62);
    EXPECT_EQ(sum["sizes"], json({21, 21, 20}));
    EXPECT_EQ(sum["seed"], 4);
    EXPECT_EQ(sum["embed"], "tfidf");
    EXPECT_GT(sum["objective"].get<double>(), 0.0);
    ASSERT_EQ(sum["top_terms"].size(), 3u);
    for (const auto& ts : sum["top_terms"]) EXPECT_EQ(ts.size(), 10u);
    EXPECT_EQ(sum["top_terms"][2].size(), 10u);
}

TEST(TextClusterOutput, DenseEmbeddingsPath) {
    TempDir t;
    const auto docs = planted_docs(10, 3);
    write_text(t.path + "/in.jsonl", jsonl_of(docs));
    TextClusterOptions opt;
    opt.data = {t.path + "/in.jsonl"};
    opt.kmeans.clusters = 3;
    opt.out = t.path + "/out";
    TextCorpus c = read_text_corpus(opt.data);
    // Embedding: one-hot topic direction plus noise.
    const size_t d = 8;
    std::vector<float> x(docs.size() * d);
    Rng rng(1);
    for (size_t i = 0; i < docs.size(); ++i)
        for (size_t j = 0; j < d; ++j) x[i * d + j] = (j == i % 3 ? 1.0f : 0.0f) + 0.1f * float(rng.normal());
    json s = cluster_text_embedded(opt, c, x, d, json{{"kind", "model"}, {"model", "demo"}});
    EXPECT_EQ(s["embed"], "model");
    EXPECT_EQ(s["embedding"]["dim"], d);
    EXPECT_EQ(s["sizes"], json({10, 10, 10}));
    const auto c2 = lines_of(read_file(t.path + "/out/2.jsonl"));
    ASSERT_EQ(c2.size(), 10u);
    for (size_t j = 0; j < 10; ++j) EXPECT_EQ(json::parse(c2[j])["id"], 3 * j + 2);
    opt.out = t.path + "/out2";
    EXPECT_THROW(cluster_text_embedded(opt, c, std::vector<float>(x.begin(), x.end() - 1), d, json{}), Error);
    EXPECT_FALSE(fs::exists(opt.out));
}

TEST(TextClusterOutput, TxtFilesAndDirectories) {
    TempDir t;
    fs::create_directory(t.path + "/d");
    const auto docs = planted_docs(2, 4);
    for (size_t i = 0; i < docs.size(); ++i) write_text(t.path + "/d/doc" + std::to_string(i) + ".txt", docs[i] + "\n\"quoted\"\n");
    write_text(t.path + "/d/ignored.bin", "not data");
    TextClusterOptions opt;
    opt.data = {t.path + "/d"};
    opt.kmeans.clusters = 3;
    opt.out = t.path + "/out";
    json s = cluster_text_tfidf(opt);
    EXPECT_EQ(s["documents"], 6);
    EXPECT_EQ(s["data"].size(), 6u);
    std::multiset<std::string> got;
    for (int k = 0; k < 3; ++k)
        for (auto& l : lines_of(read_file(t.path + "/out/" + std::to_string(k) + ".jsonl"))) got.insert(json::parse(l)["text"]);
    std::multiset<std::string> want;
    for (auto& d : docs) want.insert(d + "\n\"quoted\"\n");
    EXPECT_EQ(got, want);
}

TEST(SharedTextCluster, EvalCorpusNoDocumentLost) {
    const std::string path = shared_path("corpus/eval.jsonl");
    if (!fs::exists(path)) GTEST_SKIP() << path << " not present";
    TempDir t;
    TextClusterOptions opt;
    opt.data = {path};
    opt.kmeans.clusters = 4;
    opt.out = t.path + "/out";
    json s = cluster_text_tfidf(opt);
    std::vector<std::string> in;
    for (auto& l : lines_of(read_file(path)))
        if (!l.empty()) in.push_back(l);
    std::sort(in.begin(), in.end());
    ASSERT_EQ(in.size(), 108u);
    EXPECT_EQ(output_lines(opt.out, 4), in);
    EXPECT_EQ(s["documents"], 108);
    size_t total = 0;
    for (auto& z : s["sizes"]) {
        EXPECT_GT(z.get<size_t>(), 0u);
        total += z.get<size_t>();
    }
    EXPECT_EQ(total, 108u);
    for (const auto& ts : s["top_terms"]) EXPECT_EQ(ts.size(), 10u);
}

TEST(TextClusterOutput, Refusals) {
    TempDir t;
    write_text(t.path + "/in.jsonl", jsonl_of(planted_docs(2, 1)));  // 6 documents
    write_text(t.path + "/empty.jsonl", "");
    write_text(t.path + "/bad.jsonl", "{\"text\": \"ok\"}\nnot json\n");
    TextClusterOptions opt;
    opt.data = {t.path + "/in.jsonl"};
    opt.kmeans.clusters = 2;
    opt.out = t.path + "/out";

    auto refused = [&](TextClusterOptions o, const std::string& needle) {
        try {
            cluster_text_tfidf(o);
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
            return true;
        }
        return false;
    };
    TextClusterOptions o = opt;
    o.kmeans.clusters = 1;
    EXPECT_TRUE(refused(o, "at least 2 clusters"));
    o.kmeans.clusters = 7;
    EXPECT_TRUE(refused(o, "only 6 documents"));
    o = opt;
    o.data = {t.path + "/missing.jsonl"};
    EXPECT_TRUE(refused(o, "missing.jsonl"));
    o.data = {t.path + "/empty.jsonl"};
    EXPECT_TRUE(refused(o, "empty.jsonl"));
    o.data = {t.path + "/bad.jsonl"};
    EXPECT_TRUE(refused(o, "bad.jsonl:2"));
    o.data = {};
    EXPECT_TRUE(refused(o, "no data"));
    EXPECT_FALSE(fs::exists(opt.out));
    EXPECT_EQ(std::distance(fs::directory_iterator(t.path), fs::directory_iterator()), 3);  // no temporaries left

    // An existing output is kept unless --force.
    fs::create_directory(opt.out);
    write_text(opt.out + "/keep", "x");
    EXPECT_TRUE(refused(opt, "already exists"));
    EXPECT_TRUE(fs::exists(opt.out + "/keep"));
    opt.force = true;
    cluster_text_tfidf(opt);
    EXPECT_FALSE(fs::exists(opt.out + "/keep"));
    EXPECT_TRUE(fs::exists(opt.out + "/summary.json"));
}

TEST(TextClusterCli, RunsAndRefusesModelEmbedding) {
    TempDir t;
    write_text(t.path + "/in.jsonl", jsonl_of(planted_docs(5, 1)));
    CliResult r = run_cli("cluster-text --data " + t.path + "/in.jsonl --clusters 3 --seed 2 --out " + t.path + "/out");
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("15 documents in 3 clusters"), std::string::npos) << r.out;
    EXPECT_EQ(json::parse(read_file(t.path + "/out/summary.json"))["sizes"], json({5, 5, 5}));
    r = run_cli("cluster-text --data " + t.path + "/in.jsonl --clusters 3 --out " + t.path + "/out");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
    r = run_cli("cluster-text --data " + t.path + "/in.jsonl --clusters 3 --embed model --out " + t.path + "/o2");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("--embed model needs --model"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(t.path + "/o2"));
}

// --embed model on the bundled demo model: every document kept, the same clusters
// twice, and the summary says how documents were embedded.
TEST(TextClusterCli, ModelEmbeddingClustersTheDemoCorpus) {
    TempDir t;
    const std::string M = demo_model_dir(), data = std::string(MOEFY_SOURCE_DIR) + "/data/calib.jsonl";
    std::vector<json> sums;
    for (const char* out : {"/a", "/b"}) {
        const CliResult r = run_cli(fmt::format("cluster-text --data {} --clusters 4 --embed model --model {} --ctx 64 --out {}{}",
                                                data, M, t.path, out));
        ASSERT_EQ(r.status, 0) << r.out;
        sums.push_back(json::parse(read_file(t.path + out + "/summary.json")));
    }
    EXPECT_EQ(sums[0]["embed"], "model");
    EXPECT_EQ(sums[0]["embedding"]["dim"], 192);
    EXPECT_EQ(sums[0]["sizes"], sums[1]["sizes"]);
    size_t total = 0;
    for (const auto& n : sums[0]["sizes"]) total += n.get<size_t>();
    EXPECT_EQ(total, 240u);  // data/calib.jsonl: no document lost
    for (int c = 0; c < 4; ++c)
        EXPECT_EQ(read_file(fmt::format("{}/a/{}.jsonl", t.path, c)), read_file(fmt::format("{}/b/{}.jsonl", t.path, c)));
}
