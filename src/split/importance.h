#pragma once
// Neuron importance for the gradient split (LLaMA-MoE §4.2): for each data
// cluster and layer, a score per FFN neuron from the activations and their
// gradients of the mean next-token NLL (model/backward.h).
//
// Targets (the reference's file names, §14 item 19):
//   "up_proj":   h = silu(g) ⊙ u, the input of down_proj, and ∂L/∂h
//   "gate_proj": the gate pre-activation g = xf·W_gᵀ, and ∂L/∂g
// Per token t of a window, s_t = ∂L/∂a_t (feature_grad) or a_t ⊙ ∂L/∂a_t
// (feature_change, the first-order loss change if the neuron were zeroed);
//   sample: sum += Σ_t kernel(s_t);   total: sum += Σ_t s_t, kernel applied at the end (§14 item 20)
//   kernel: l1 |x|, l2 x², plain x
//   score = (total ? kernel(sum) : sum) / tokens,  tokens = Σ over windows of (T - 1)
// L is each window's mean NLL, so gradients carry 1/(T-1) as in the reference.
// Sums are f64 throughout (the reference sums in bf16, §14 item 17); the file
// stores the final scores as F32.
//
// Differences from the reference: windows come from data/documents.h
// (documents are never concatenated, so no window crosses a document
// boundary), feature_grad works (§14 item 16), and clusters are numbered in
// numeric order (expert e comes from cluster e; see split/gradient_split.h).
//
// Data parallel: ranks take a cluster's windows round-robin (window i goes to
// rank i mod size) and the f64 sums are all-reduced; with MPI (an optional
// build feature, MOEFY_WITH_MPI) `mpirun -np N moefy importance ...` gives the
// single-process result up to the order of f64 additions.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/documents.h"
#include "model/backward.h"
#include "split/expert_plan.h"
#include "split/gradient_split.h"

namespace moefy {

struct Checkpoint;
class Tokenizer;

enum class ImportanceKind { FeatureChange, FeatureGrad };
enum class ImportanceKernel { L1, L2, Plain };
enum class ImportanceLevel { Sample, Total };
enum class ImportanceTarget { Up, Gate };

// Parsers accept the reference's spellings too ("l1_norm", "l2_norm").
ImportanceKind parse_importance_kind(const std::string& s);      // feature_change | feature_grad
ImportanceKernel parse_importance_kernel(const std::string& s);  // l1 | l2 | plain
ImportanceLevel parse_importance_level(const std::string& s);    // sample | total
ImportanceTarget parse_importance_target(const std::string& s);  // up_proj | gate_proj (or up | gate)
const char* importance_kind_name(ImportanceKind k);
const char* importance_kernel_name(ImportanceKernel k);
const char* importance_level_name(ImportanceLevel l);
const char* importance_target_name(ImportanceTarget t);  // "up_proj" | "gate_proj"

struct ImportanceSettings {
    ImportanceKind kind = ImportanceKind::FeatureChange;
    ImportanceKernel kernel = ImportanceKernel::L1;
    ImportanceLevel level = ImportanceLevel::Sample;
};

// The f64 sums of one data cluster.
struct ImportanceSums {
    int num_layers = 0, intermediate_size = 0;
    std::vector<double> up, gate;  // [L, I]
    int64_t tokens = 0;            // predicted tokens, Σ (T - 1)
    int64_t windows = 0;

    void resize(int layers, int I);
    const double* sums(ImportanceTarget t, int layer) const;
    double* sums(ImportanceTarget t, int layer);
    // The finished score of one layer: (total ? kernel(sum) : sum) / tokens.
    std::vector<double> scores(const ImportanceSettings& s, ImportanceTarget t, int layer) const;
    // Adds another cluster-part's sums (element-wise) and counts.
    void add(const ImportanceSums& o);
};

// Adds the activations and gradients of each backward run into sums (both targets).
class ImportanceAccumulator : public BackwardObserver {
public:
    ImportanceAccumulator(ImportanceSums& sums, const ImportanceSettings& s) : sums_(sums), s_(s) {}
    void on_ffn_grads(const FfnGrads& a) override;

private:
    ImportanceSums& sums_;
    ImportanceSettings s_;
};

// ---- processes ---------------------------------------------------------------------

// The processes that share one run. Alone by default; world() is
// MPI_COMM_WORLD when moefy is built with MPI and was started by an MPI
// launcher (MPI is initialised on first use and finalised at exit).
class RankGroup {
public:
    RankGroup() = default;
    static RankGroup world();
    // Rank `rank` of `size` whose sums are NOT reduced (sum() is a no-op): a
    // test adds the ranks' results itself.
    static RankGroup simulated(int rank, int size);
    static bool built_with_mpi();

    int rank() const { return rank_; }
    int size() const { return size_; }
    // Element-wise sum over the ranks, in place, every rank gets the result.
    void sum(double* v, size_t n) const;
    void sum(int64_t* v, size_t n) const;
    // After an error on this rank: ends all ranks (MPI_Abort). Returns when not under MPI.
    void abort(int code) const;

private:
    int rank_ = 0, size_ = 1;
    bool mpi_ = false;
};

// ---- the whole run ------------------------------------------------------------------

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

// Writes finished scores (for example imported ones) in the same format: the
// fields above come from `f`, every f.metadata entry is added unless it would
// replace one of them (model, data, ctx, ... are the caller's to give).
void write_importance_scores(const std::string& path, const ImportanceFile& f);

// Throws unless the file was computed from this model (layers, sizes, FFN fingerprint).
void check_importance_for(const ImportanceFile& f, const ModelConfig& cfg, const std::string& fingerprint);

// `moefy split gradient`: checks the request against the file (clusters >=
// experts, a routed expert left, the expert size fits the intermediate size)
// with messages naming the file, then gradient_split_plan on the target's
// scores; the model identity comes from the file. params gains
// "importance": {file, target, kind, kernel, level, tokens}.
ExpertPlan gradient_split_from_importance(const ImportanceFile& f, ImportanceTarget target, GradientSplitOptions opt);

}  // namespace moefy
