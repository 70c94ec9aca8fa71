#pragma once
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
// number of threads. The dense path's products go through OpenBLAS
// sgemm/sgemv, which split rows, never the reduction.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/tfidf.h"

namespace moefy {

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

// Refusals shared by both embeddings: clusters < 2 or > documents, bad
// max_iter / restarts. `what` names the data.
void check_cluster_request(size_t documents, const SphericalKMeansOptions& opt, const std::string& what);

}  // namespace moefy
