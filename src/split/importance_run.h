#pragma once
// The importance run (split/importance.h): every cluster file's windows through
// the dense model's backward pass, shared round-robin between the ranks of a
// RankGroup (mpi/rank_group.h) and all-reduced.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/backward.h"
#include "mpi/rank_group.h"
#include "split/importance_accumulator.h"

namespace moefy {

struct Checkpoint;
class Tokenizer;

// The cluster files of a `moefy cluster-text` directory: <dir>/0.jsonl ..
// <dir>/K-1.jsonl, K from summary.json when present, else the consecutive files found.
std::vector<std::string> cluster_files(const std::string& dir);

struct ImportanceOptions {
    ImportanceSettings settings;
    int ctx = 2048;                      // tokens per window
    size_t max_tokens_per_cluster = 0;   // predicted tokens per cluster at most (0: all)
    std::string text_field;              // JSONL field of the text ("" = text, else content)
    BackwardOptions backward;
};

struct ImportanceResult {
    ImportanceSettings settings;
    int ctx = 0;
    size_t max_tokens_per_cluster = 0;
    std::string model, data;  // as given
    int num_layers = 0, hidden_size = 0, intermediate_size = 0;
    std::string ffn_fingerprint;
    int ranks = 1;
    double seconds = 0;
    std::vector<ImportanceSums> clusters;  // all-reduced over the ranks
};

// progress(tokens done, tokens of this rank in all), on every rank.
using ImportanceProgress = std::function<void(size_t, size_t)>;

// Importance of every cluster in `clusters_dir` for the dense model `ck`.
ImportanceResult compute_importance(const Checkpoint& ck, const Tokenizer& tok, const std::string& clusters_dir,
                                    const ImportanceOptions& opt, const RankGroup& group = {},
                                    const ImportanceProgress& progress = {});

}  // namespace moefy
