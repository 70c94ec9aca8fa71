#pragma once
// Graph split core: co-activation matrix -> sparse weighted graph -> METIS
// k-way partition -> exact balanced experts (LLaMA-MoE §3.3-3.5, MoEfication).
//
// Steps, for a symmetric co-activation matrix adj: [I, I] (diagonal included):
// 1. Threshold as the reference: thr = first non-zero numpy-style percentile
//    (linear interpolation) at p = 10, 20, ..., 100 of all I² entries, diagonal
//    included; thr *= 0.99; an edge i != j exists iff adj[i][j] / thr >= 1
//    (f32 division, as numpy does on the f32 matrix) and weighs
//    trunc(adj[i][j] / thr). No self loops.
// 2. METIS_PartGraphKway with gpmetis's defaults (edge-cut, ufactor 30) and the
//    given seed.
// 3. Rebalance to exact widths balanced_widths(I, E), deterministically (the
//    reference moves random vertices with an unseeded shuffle, §3.5 / §14 item 12):
//    see rebalance_partition().
#include <cstdint>
#include <string>
#include <vector>

#include <metis.h>
#include <nlohmann/json.hpp>

namespace moefy {

class CoactivationAccumulator;

// METIS sums edge weights in idx_t (32-bit here); the sum of all CSR weights
// (both directions) is kept under this by scaling weights down when needed.
constexpr int64_t kMetisMaxTotalWeight = int64_t(1) << 30;

// Undirected graph in METIS CSR form, 0-based: the neighbours of vertex i are
// adjncy[xadj[i] .. xadj[i+1]), ascending, with weights adjwgt; each edge is
// stored in both directions with the same weight.
struct MetisGraph {
    int n = 0;
    std::vector<idx_t> xadj;    // [n + 1]
    std::vector<idx_t> adjncy;  // [2m]
    std::vector<idx_t> adjwgt;  // [2m]
    int percentile = 0;         // the decile p that gave the first non-zero value
    double threshold = 0.0;     // that percentile × 0.99: the divisor of adj
    int64_t weight_scale = 1;   // weights were divided by this (then kept >= 1) to fit kMetisMaxTotalWeight

    int64_t num_edges() const { return int64_t(adjncy.size()) / 2; }
};

// numpy.percentile(values, p) with the default "linear" method, over all n²
// entries of a row-major matrix. Lerp in f64 (numpy does the same for f32 input).
double matrix_percentile(const float* adj, int n, double p);
// The same for a symmetric matrix (not checked), from its upper triangle,
// without a copy: what the graph threshold uses (one I x I matrix is 485 MB at 7B).
double symmetric_percentile(const float* adj, int n, double p);

// Step 1. adj: [n, n] symmetric (checked exactly). Throws when every entry is
// zero or when no edge survives the threshold (the reference asserts the same).
MetisGraph build_metis_graph(const float* adj, int n, int64_t max_total_weight = kMetisMaxTotalWeight);

// The reference's METIS graph file text: "n m 001\n", then per vertex its
// neighbours as "j w" pairs (1-based j, ascending) joined by spaces; an empty
// line for an isolated vertex.
std::string metis_graph_text(const MetisGraph& g);
// Writes metis_graph_text() to path (temp file + rename).
void write_metis_graph(const MetisGraph& g, const std::string& path);

// Step 2: labels in [0, parts). The graph is passed as is (not modified).
// seed goes to METIS_OPTION_SEED (low 31 bits). ufactor is raised when needed
// so that parts of ceil(n/parts) vertices are allowed (with 30, small n with
// parts not dividing n would ask METIS for the impossible). edgecut gets
// METIS's objective.
std::vector<int32_t> metis_partition(const MetisGraph& g, int parts, uint64_t seed, int ufactor = 30,
                                     int64_t* edgecut = nullptr);

// Step 3. Makes part sizes exactly balanced_widths(n, parts), in expert order.
// Which parts get the extra neuron when parts does not divide n: the currently
// largest ones (ties: lower id); those are then renumbered to come first, the
// rest keeping their relative order. Moves, greedily one at a time: among all
// neurons v of over-full parts and all under-full parts q, the pair with the
// least cut increase
//     cost(v, q) = w(v, own part) - w(v, q),   w(v, P) = Σ_{u in P, u != v} adj[v][u]
// (ties: lower v, then lower q), updating w after each move. adj is the full
// symmetric co-activation matrix (not the thresholded graph). Returns the
// number of neurons moved.
int rebalance_partition(std::vector<int32_t>& labels, const float* adj, int n, int parts);

// Fraction of the off-diagonal weight of adj that lies inside parts (0 when adj
// has no off-diagonal weight).
double kept_fraction(const float* adj, int n, const std::vector<int32_t>& labels);

// A seeded uniformly random partition with widths balanced_widths(n, parts).
std::vector<int32_t> random_balanced_labels(int n, int parts, uint64_t seed);

// Neuron ids of each expert, ascending.
std::vector<std::vector<int32_t>> experts_from_labels(const std::vector<int32_t>& labels, int parts);

struct GraphPartitionResult {
    std::vector<int32_t> labels;                // [I]: expert of each neuron
    std::vector<std::vector<int32_t>> experts;  // [E]: neuron ids, ascending; sizes = balanced_widths(I, E)
    double kept_fraction = 0.0;                 // co-activation weight kept inside experts (off-diagonal)
    double random_kept_fraction = 0.0;          // the same for a seeded random balanced partition
    int64_t num_edges = 0;                      // undirected edges given to METIS
    int percentile = 0;
    double threshold = 0.0;
    int64_t weight_scale = 1;
    int64_t metis_edgecut = 0;                  // METIS objective before rebalancing
    int moved = 0;                              // neurons moved by rebalancing
    double saturated_fraction = 0.0;            // CoactivationAccumulator::saturated_fraction() (accumulator input only)

    nlohmann::json stats() const;  // everything but labels/experts, for LayerPlan::stats
};

// Steps 1-3 on a finished accumulator (call finish() first; pending tokens are an error).
GraphPartitionResult partition_coactivation(const CoactivationAccumulator& acc, int experts, uint64_t seed);
// The same on a full symmetric matrix adj: [n, n].
GraphPartitionResult partition_coactivation(const float* adj, int n, int experts, uint64_t seed);

}  // namespace moefy
