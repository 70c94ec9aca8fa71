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
// The pieces: text_corpus.h (reading), tfidf.h (the TF-IDF embedding and
// cluster terms), spherical_kmeans.h (the clustering); this header adds the
// writer and the whole pipelines, and includes them all.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/spherical_kmeans.h"
#include "data/text_corpus.h"
#include "data/tfidf.h"

namespace moefy {

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

}  // namespace moefy
