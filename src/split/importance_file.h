#pragma once
// The importance file (split/importance.h): one safetensors file of F32 score
// vectors with the run's settings and the model's identity in its metadata.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "split/importance_accumulator.h"
#include "split/importance_run.h"

namespace moefy {

// Tensor name of one score vector, e.g. "cluster.3.layers.7.mlp.up_proj".
std::string importance_tensor_name(int cluster, int layer, ImportanceTarget t);

// One safetensors file: the F32 scores [I] of every (cluster, layer, target),
// cluster-major, and metadata {"format": "moefy-importance", "version",
// "kind", "kernel", "level", "ctx", "max_tokens_per_cluster", "clusters",
// "num_layers", "hidden_size", "intermediate_size", "ffn_fingerprint",
// "model", "data", "ranks", "tokens": [per cluster], "windows": [per cluster]}.
void write_importance(const std::string& path, const ImportanceResult& r);

struct ImportanceFile {
    std::string path;
    ImportanceSettings settings;
    int clusters = 0, num_layers = 0, hidden_size = 0, intermediate_size = 0;
    std::string ffn_fingerprint;
    std::vector<int64_t> tokens;  // [cluster]
    std::map<std::string, std::string> metadata;
    std::vector<std::vector<std::vector<double>>> up, gate;  // [layer][cluster][I]

    const std::vector<std::vector<std::vector<double>>>& scores(ImportanceTarget t) const {
        return t == ImportanceTarget::Up ? up : gate;
    }
};
// Reads and validates (format, every tensor present with shape [I], finite values).
ImportanceFile read_importance(const std::string& path);

// The scores of a finished run as read_importance returns them, without the
// file round trip (kept in f64); `where` names the run in messages and in the
// plan's params. metadata stays empty.
ImportanceFile importance_scores(const ImportanceResult& r, const std::string& where);

// Throws unless the file was computed from this model (layers, sizes, FFN fingerprint).
void check_importance_for(const ImportanceFile& f, const ModelConfig& cfg, const std::string& fingerprint);

}  // namespace moefy
