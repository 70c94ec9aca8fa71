#pragma once
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
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/text_corpus.h"

namespace moefy {

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

// Throws unless hash_bits is in [4, 28], max_df in (0, 1] and min_word_len >= 1.
void check_tfidf_options(const TfidfOptions& opt);

TfidfEmbedding tfidf_embed(const std::vector<std::string>& docs, const TfidfOptions& opt = {});

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

}  // namespace moefy
