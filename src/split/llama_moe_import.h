#pragma once
// Import of the files LLaMA-MoE's Python scripts write (reference §0.1, §4.2):
//
//   split folders <dir>/layers.<l>.mlp.<proj>.weight, one torch.save file per layer:
//     label format (entry n = expert of neuron n; experts get their neurons in ascending order):
//       Random      list of int                         (-<E>Expert-Split-Random)
//       Clustering  list of numpy.int32 scalars         (-<E>Expert-Split-Clustering-<metric>)
//       Graph       list of int, pickle protocol 2      (-Split-Graph-<metric>/gp_split/; the folder above
//                                                        holds METIS text files under the same names)
//       Gradient    numpy float64 array [I]             (.../<E>Experts-<size>Neurons)
//     index-list format (expert e = list e, neurons in the stored order, lists may overlap):
//       Gradient, inner-shared  E lists                 (.../<E>Experts-<size>Neurons-Share)
//       Gradient, residual      R residual lists first, then E routed
//                                                       (.../<E>Experts-<R>Residuals-<size>Neurons[-Share])
//   importance folders <dir>/<cluster>/layers.<l>.mlp.{up,gate}_proj.weight.change (or .grad):
//     a 1-D float32 tensor [I] per file, one folder per data cluster.
//
// Everything read goes through the restricted unpickler (io/pickle.h): no code
// runs. Every file is checked against the model given (layer count, width) and
// the result is stamped with its FFN fingerprint, so the plan converts only
// that model. Quirks kept: float64 labels are accepted when integral (quirk 24),
// residual lists come first, and cluster folders are taken in lexicographic
// order by default (quirk 22: "0, 1, 10, 11, 2, ..."), which is what decides
// expert numbering and which clusters a residual split uses.
#include <cstdint>
#include <string>
#include <vector>

#include "split/expert_plan.h"
#include "split/importance.h"

namespace moefy {

struct Checkpoint;
struct PickleTree;

// One split file's content, before it is checked against a model.
struct ReferenceSplitFile {
    enum class Format { Labels, IndexLists };
    Format format = Format::Labels;
    std::string content;                       // what was pickled, e.g. "list of numpy.int32"
    std::vector<int64_t> labels;               // Labels: [I]
    std::vector<std::vector<int64_t>> lists;   // IndexLists: [lists][ids]
};

// Reads one torch.save'd split file; throws naming the file.
ReferenceSplitFile read_reference_split_file(const std::string& path);
// The same from a parsed pickle (`where` names it in messages).
ReferenceSplitFile reference_split_from_tree(const PickleTree& tree, const std::string& where);

struct LlamaMoeSplitOptions {
    std::string template_name;  // "layers.{}.mlp.up_proj.weight"; "" = whichever of up_proj / gate_proj exists
    int residual = -1;          // residual lists at the front; -1: from the folder name (<E>Experts-<R>Residuals-...), else 0
    int experts = 0;            // label format: expert count; 0: from the folder name (<E>Expert...), else max label + 1
    std::string method;         // recorded plan method; "" = from the folder name, else from the content
};

// A split folder (see above) -> an ExpertPlan for `model` (sizes checked, fingerprint recorded).
// params: {"imported_from": "llama-moe", "split_dir", "template", "format", "content", "reference_name",
// "experts", "residual", "residual_from", ...what the folder name says (metric, criterion, expert_size, share)}.
ExpertPlan import_llama_moe_split(const std::string& dir, const Checkpoint& model, const LlamaMoeSplitOptions& opt = {});

struct LlamaMoeImportanceOptions {
    std::string cluster_order = "lexicographic";  // as the reference reads the folders, or "numeric"
    std::string kernel;  // "" = from the folder name (<model>-Gradients-<kernel>-<level>-<kind>), else l1
    std::string level;   // "" = from the folder name, else sample
};

// An importance folder (see above) -> moefy's importance scores for `model`:
// cluster k is the k-th folder in `cluster_order`; kind from the file suffix
// (.change: feature_change, .grad: feature_grad). Token counts are unknown
// (0). metadata: imported_from, data, model, cluster_order, cluster_names (JSON
// list, in cluster order), ctx/ranks/windows as the format expects.
ImportanceFile import_llama_moe_importance(const std::string& dir, const Checkpoint& model,
                                           const LlamaMoeImportanceOptions& opt = {});

}  // namespace moefy
