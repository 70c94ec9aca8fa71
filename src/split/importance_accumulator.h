#pragma once
// Neuron importance sums (split/importance.h describes the scores): the
// settings, the f64 sums of one data cluster and the backward observer that
// adds every window's activations and gradients into them.
#include <cstdint>
#include <string>
#include <vector>

#include "model/backward.h"

namespace moefy {

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

}  // namespace moefy
