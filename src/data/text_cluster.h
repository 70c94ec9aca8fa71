#pragma once
// Text clustering for the gradient split (reference §4.1): embed every
// document, group the documents with seeded spherical k-means, and write one
// .jsonl per cluster so that importance can be gathered per data cluster.
//
// Differences from the reference (§14 item 15): seeded and reproducible, and
// every document lands in exactly one cluster (the reference drops one in 33).
// The default embedding is TF-IDF (no sentence encoder needed); the dense path
// takes any precomputed embedding (e.g. the model's mean final hidden state).
//
// TF-IDF, as sklearn's TfidfVectorizer(sublinear_tf=True) but hashed:
//   words: maximal runs of ASCII letters, digits and '_', lowercased; every
//          other byte (punctuation, whitespace, all non-ASCII UTF-8 bytes)
//          separates words, so non-Latin scripts contribute no features.
//          Words shorter than min_word_len (2, as sklearn's token_pattern) are skipped.
//   bucket(w) = FNV-1a-32(w) mod 2^hash_bits: distinct words that collide share
//          one feature (with 2^18 buckets and ~10^5 distinct words a few percent do).
//   tf = 1 + ln(count of the bucket in the document)
//   idf = ln((1 + N) / (1 + df)) + 1                      (sklearn's smooth idf)
//   buckets in more than max_df·N documents are dropped (idf := 0): stopwords
//          would otherwise add one shared direction to every document and head
//          every cluster's term list. max_df = 1 keeps every bucket.
//   x = tf·idf, L2-normalised (a document with no kept word stays all zero).
//
// Spherical k-means (maximises Σ_i cos(x_i, c_{a_i}) over unit centroids):
//   init: k-means++ on the cosine distance 1 - cos (= ‖x - c‖²/2 for unit
//         vectors, so it is exactly the D² rule); all-zero documents are never seeds.
//   Lloyd: assign each document to the most similar centroid (a document
//         leaves its cluster only for a strictly more similar one; other ties
//         go to the lower index), stop when no assignment changes or after
//         max_iter; centroid = normalised sum of its documents.
//   empty cluster: re-seeded with the document least similar to its own
//         centroid (ties to the lower index) taken from a cluster of size > 1,
//         documents with features first.
//   documents without features (no kept word) have cosine 0 to everything:
//         they go where the tie rule puts them (first pass: cluster 0 before
//         relabelling), fill an empty cluster only when no document with
//         features can, and are never dropped.
//   restarts: restart r draws from Rng(seed, r); the highest objective wins
//         (ties to the earlier restart).
//   labels: clusters are numbered in the order of their first document, so a
//         result does not depend on which restart or seed found it.
// Every sum runs in a fixed order (per document: ascending feature index; per
// centroid: ascending document index), so the result is the same for any
// number of OpenMP threads. The dense path's products go through OpenBLAS
// sgemm/sgemv, which split rows, never the reduction.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace moefy {

// ---- input -------------------------------------------------------------------

// Documents plus, for each, the line that represents it in a cluster file:
// for .jsonl/.json input the input line verbatim (without its '\n'), for any
// other file the whole file as {"text": ...}. `paths` may name files and
// directories (a directory contributes its *.jsonl, *.json and *.txt files in
// sorted order). Blank .jsonl lines are not documents (as read_documents).
struct TextCorpus {
    std::vector<std::string> texts;
    std::vector<std::string> records;
    std::vector<std::string> files;  // the files read, in order
};
TextCorpus read_text_corpus(const std::vector<std::string>& paths, const std::string& text_field = "");

// ---- TF-IDF --------------------------------------------------------------------

struct TfidfOptions {
    int hash_bits = 18;    // 2^18 buckets
    double max_df = 0.5;   // drop buckets found in more than this fraction of documents
    int min_word_len = 2;
};

// A sparse vector: indices strictly ascending, one value each.
struct SparseVec {
    std::vector<uint32_t> idx;
    std::vector<float> val;
    size_t nnz() const { return idx.size(); }
};

struct TfidfEmbedding {
    uint32_t dim = 0;             // 2^hash_bits
    std::vector<uint32_t> df;     // [dim] documents containing the bucket
    std::vector<float> idf;       // [dim] 0 for dropped or unseen buckets
    std::vector<SparseVec> docs;  // [N] unit length (or empty)
    size_t dropped_buckets = 0;   // buckets removed by max_df
};

uint32_t fnv1a32(std::string_view s);
// The lowercased words of `text`, in order (see the rules above).
std::vector<std::string> text_words(std::string_view text, int min_word_len = 2);
uint32_t word_bucket(std::string_view lowercase_word, int hash_bits);

TfidfEmbedding tfidf_embed(const std::vector<std::string>& docs, const TfidfOptions& opt = {});

// ---- spherical k-means ----------------------------------------------------------

struct SphericalKMeansOptions {
    int clusters = 16;
    uint64_t seed = 0;
    int max_iter = 100;
    int restarts = 3;
};

struct SphericalKMeansResult {
    std::vector<int32_t> assign;  // [N] cluster of each document
    std::vector<size_t> sizes;    // [K] all > 0
    double objective = 0;         // Σ_i cos(x_i, c_{assign_i}), of the winning restart
    int iterations = 0;           // Lloyd iterations of the winning restart
    bool converged = false;       // it stopped because no assignment changed
    int restart = 0;              // which restart won
};

// Sparse documents (e.g. TfidfEmbedding::docs) in `dim` dimensions.
SphericalKMeansResult spherical_kmeans(const std::vector<SparseVec>& docs, uint32_t dim, const SphericalKMeansOptions& opt);
// Dense embeddings x: [n, dim] row-major; rows are normalised internally (on a copy).
SphericalKMeansResult spherical_kmeans(const float* x, size_t n, size_t dim, const SphericalKMeansOptions& opt);

// ---- naming clusters ---------------------------------------------------------------

struct ClusterTerm {
    std::string word;  // most frequent word of the bucket within the cluster
    float weight;      // the bucket's weight in the unit centroid
};
// The `top` heaviest buckets of each cluster's centroid, each named by the
// word that hashes to it most often in the cluster's documents (ties to the
// alphabetically first); the weight belongs to the bucket, which may also hold
// rarer colliding words. Memory: one [dim] row per thread plus the words of
// the chosen buckets.
std::vector<std::vector<ClusterTerm>> cluster_top_terms(const std::vector<std::string>& texts,
                                                        const TfidfEmbedding& emb, const std::vector<int32_t>& assign,
                                                        int clusters, int top, const TfidfOptions& opt);

// ---- output ---------------------------------------------------------------------------

// Writes out/0.jsonl .. out/K-1.jsonl (each document's record in input order,
// one per line) and out/summary.json, atomically through OutputDir. `summary`
// is written as given (pretty-printed).
void write_text_clusters(const std::string& out, bool force, const TextCorpus& corpus,
                         const std::vector<int32_t>& assign, int clusters, const nlohmann::json& summary);

// The whole TF-IDF pipeline behind `moefy cluster-text --embed tfidf`:
// reads, embeds, clusters, names and writes; returns the summary it wrote.
struct TextClusterOptions {
    std::vector<std::string> data;
    std::string text_field;
    std::string out;
    bool force = false;
    SphericalKMeansOptions kmeans;
    TfidfOptions tfidf;
    int top_terms = 10;
};
nlohmann::json cluster_text_tfidf(const TextClusterOptions& opt);

// The same for precomputed dense embeddings x: [documents, dim] of `corpus`
// (e.g. `--embed model`); `embed` is recorded in the summary ("embed": its
// "kind", plus whatever else it holds under "embedding").
nlohmann::json cluster_text_embedded(const TextClusterOptions& opt, const TextCorpus& corpus, const std::vector<float>& x,
                                     size_t dim, const nlohmann::json& embed);

// Refusals shared by both embeddings: clusters < 2 or > documents, bad
// max_iter / restarts. `what` names the data.
void check_cluster_request(size_t documents, const SphericalKMeansOptions& opt, const std::string& what);

}  // namespace moefy
