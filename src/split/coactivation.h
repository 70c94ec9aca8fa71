#pragma once
// Co-activation matrix of one FFN layer, the input of the graph split
// (MoEfication, LLaMA-MoE §3.3):
//
//   adj = Σ_chunks min( Σ_{t in chunk} outer(r_t, r_t), threshold ),  r_t = kernel(h_t)
//
// where h_t: [I] is one token's FFN activation and kernel is |x| (l1), x² (l2)
// or x (plain). The clamp bounds what one chunk of tokens can add to a pair, so
// adj[i][j] counts, roughly, the chunks in which neurons i and j fire together.
//
// Chunk size matters a lot:
// * MoEfication clamps per batch of 8 tokens. This is the default here.
// * LLaMA-MoE clamps per dump file (≈ 4×2048 tokens). With dense SiLU activations
//   nearly every pair saturates inside one file, so adj becomes close to
//   "number of files" everywhere and the graph carries little signal
//   (reference §14 item 8). To reproduce it, set chunk_tokens to the tokens of a
//   file and call finish() at the end of each file.
//
// Only the upper triangle (j >= i) is accumulated: the matrix is symmetric by
// construction and mirroring it later makes it exactly symmetric, which METIS
// requires (the reference relied on GEMM rounding for that, §14 item 10).
//
// Compute: tokens are buffered in groups of whole chunks (>= 256 tokens) so adj
// is swept once per group. Chunks of up to 64 tokens use a fused kernel
// (product, clamp and add in registers, threads over tiles of adj, exact zeros
// skipped); larger chunks use single-threaded cblas_ssyrk/sgemm per panel of
// rows, where BLAS is efficient, the threads sharing the panels. Each chunk's
// clamped f32 contribution is added in double (the reference keeps adj in f32):
// the sum then does not depend, in practice, on the order the chunks arrive in,
// so data-parallel ranks that each sum their own chunks get the one-process
// matrix (in f32 the last bits differed, and the graph's integer edge weights,
// ⌊adj / threshold⌋, could fall on either side of a boundary). The graph reads
// it as f32, the reference's dtype (symmetric()).
// Memory: I² doubles for adj plus the group buffer [group, I].
#include <cstdint>
#include <string_view>
#include <vector>

#include "mpi/rank_group.h"

namespace moefy {

enum class CoactMetric { l1, l2, plain };

// Accepts the reference's names too: "l1" | "l1_norm", "l2" | "l2_norm", "plain".
CoactMetric parse_coact_metric(std::string_view name);
const char* coact_metric_name(CoactMetric m);

class CoactivationAccumulator {
public:
    static constexpr int kDefaultChunkTokens = 8;   // MoEfication
    static constexpr float kDefaultThreshold = 1.0f;  // reference --threshold

    CoactivationAccumulator(int intermediate_size, CoactMetric metric = CoactMetric::l1,
                            int chunk_tokens = kDefaultChunkTokens, float threshold = kDefaultThreshold);

    // acts: [T, I] row-major f32. Tokens are buffered; every chunk_tokens tokens
    // (counted across calls) form one clamped chunk. Throws on non-finite input
    // before buffering anything.
    void add(const float* acts, int tokens);
    // Ends the current chunk early (the partial chunk is clamped on its own).
    // add() may be called again afterwards; it starts a new chunk.
    void finish();
    // Data-parallel: adds the other ranks' matrices and counts to this one (every
    // rank gets the total). Call after finish(), on every rank, with each rank's
    // chunks whole (graph_split gives each rank whole chunks).
    void sum_over(const RankGroup& group);

    int size() const { return n_; }
    CoactMetric metric() const { return metric_; }
    int chunk_tokens() const { return chunk_; }
    float threshold() const { return threshold_; }
    int64_t tokens() const { return tokens_; }    // tokens added so far
    int64_t chunks() const { return chunks_; }    // chunks clamped and accumulated so far
    int pending_tokens() const { return buffered_; }  // buffered, not yet in upper()

    // adj: [I, I] row-major; only j >= i is filled, the strict lower triangle is 0.
    // Complete only after finish(): up to a group of tokens may still be buffered.
    const double* upper() const { return acc_.data(); }
    double at(int i, int j) const { return i <= j ? acc_[size_t(i) * size_t(n_) + size_t(j)] : at(j, i); }
    // The full symmetric [I, I] matrix in f32 (diagonal included), mirrored from upper().
    std::vector<float> symmetric() const;
    // Fraction of neuron pairs i < j clamped in every chunk (adj = chunks·threshold).
    // Near 1, the graph is close to uniform and carries little signal: use
    // smaller chunks or a larger threshold (reference §3.3 quirk).
    double saturated_fraction() const;

private:
    // Chunks up to this many tokens use the fused kernel, larger ones BLAS.
    static constexpr int kFusedMaxChunk = 64;
    void flush();  // accumulates the buffered tokens, chunk by chunk
    void flush_fused();
    void flush_blas();

    int n_;
    CoactMetric metric_;
    int chunk_;
    float threshold_;
    int group_tokens_;  // tokens buffered before a flush: whole chunks, so each acc panel is touched once per group
    int buffered_ = 0;
    int64_t tokens_ = 0;
    int64_t chunks_ = 0;
    std::vector<float> buf_;      // r: [group_tokens, I], kernel already applied
    std::vector<float> scratch_;  // BLAS path: per thread, one panel of one chunk's rᵀr: [threads, panel, I]
    std::vector<double> acc_;     // adj: [I, I], upper triangle
};

// Mirrors the upper triangle of a row-major [n, n] matrix into a full symmetric
// f32 one (cache-blocked).
std::vector<float> mirror_upper(const double* upper, int n);

}  // namespace moefy
