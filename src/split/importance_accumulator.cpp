#include "split/importance_accumulator.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/parallel.h"

namespace moefy {

// ---- names -----------------------------------------------------------------------------

ImportanceKind parse_importance_kind(const std::string& s) {
    if (s == "feature_change") return ImportanceKind::FeatureChange;
    if (s == "feature_grad") return ImportanceKind::FeatureGrad;
    fail("importance kind '{}': expected feature_change or feature_grad", s);
}
ImportanceKernel parse_importance_kernel(const std::string& s) {
    if (s == "l1" || s == "l1_norm") return ImportanceKernel::L1;
    if (s == "l2" || s == "l2_norm") return ImportanceKernel::L2;
    if (s == "plain") return ImportanceKernel::Plain;
    fail("importance kernel '{}': expected l1, l2 or plain", s);
}
ImportanceLevel parse_importance_level(const std::string& s) {
    if (s == "sample") return ImportanceLevel::Sample;
    if (s == "total") return ImportanceLevel::Total;
    fail("importance level '{}': expected sample or total", s);
}
ImportanceTarget parse_importance_target(const std::string& s) {
    if (s == "up_proj" || s == "up") return ImportanceTarget::Up;
    if (s == "gate_proj" || s == "gate") return ImportanceTarget::Gate;
    fail("importance target '{}': expected up_proj or gate_proj", s);
}
const char* importance_kind_name(ImportanceKind k) { return k == ImportanceKind::FeatureChange ? "feature_change" : "feature_grad"; }
const char* importance_kernel_name(ImportanceKernel k) {
    switch (k) {
        case ImportanceKernel::L1: return "l1";
        case ImportanceKernel::L2: return "l2";
        case ImportanceKernel::Plain: return "plain";
    }
    return "?";
}
const char* importance_level_name(ImportanceLevel l) { return l == ImportanceLevel::Sample ? "sample" : "total"; }
const char* importance_target_name(ImportanceTarget t) { return t == ImportanceTarget::Up ? "up_proj" : "gate_proj"; }

// ---- sums ----------------------------------------------------------------------------------

namespace {

inline double apply_kernel(ImportanceKernel k, double x) {
    switch (k) {
        case ImportanceKernel::L1: return std::fabs(x);
        case ImportanceKernel::L2: return x * x;
        case ImportanceKernel::Plain: return x;
    }
    return x;
}

// acc[i] += Σ_t kernel(s_ti) (sample) or Σ_t s_ti (total), s = grad or feat ⊙ grad; feat, grad: [T, I].
// Columns are split over the threads; each column sums its tokens in order, so
// the result does not depend on the thread count.
void accumulate_columns(const float* feat, const float* grad, int T, int I, const ImportanceSettings& s, double* acc) {
    constexpr int kCols = 64;
    const bool change = s.kind == ImportanceKind::FeatureChange, sample = s.level == ImportanceLevel::Sample;
    parallel_for_each((I + kCols - 1) / kCols, [&](int64_t blk) {
        const int c0 = int(blk) * kCols, c1 = std::min(I, c0 + kCols);
        for (int t = 0; t < T; ++t) {
            const float* f = feat + size_t(t) * I;
            const float* g = grad + size_t(t) * I;
            for (int i = c0; i < c1; ++i) {
                const double x = change ? double(f[i]) * double(g[i]) : double(g[i]);
                acc[i] += sample ? apply_kernel(s.kernel, x) : x;
            }
        }
    }, size_t(T) * size_t(I) > 16384);
}

}  // namespace

void ImportanceSums::resize(int layers, int I) {
    num_layers = layers, intermediate_size = I;
    up.assign(size_t(layers) * size_t(I), 0.0);
    gate.assign(size_t(layers) * size_t(I), 0.0);
}

const double* ImportanceSums::sums(ImportanceTarget t, int layer) const {
    return (t == ImportanceTarget::Up ? up : gate).data() + size_t(layer) * size_t(intermediate_size);
}
double* ImportanceSums::sums(ImportanceTarget t, int layer) {
    return (t == ImportanceTarget::Up ? up : gate).data() + size_t(layer) * size_t(intermediate_size);
}

std::vector<double> ImportanceSums::scores(const ImportanceSettings& s, ImportanceTarget t, int layer) const {
    if (layer < 0 || layer >= num_layers) fail("importance: layer {} outside [0, {})", layer, num_layers);
    const double* p = sums(t, layer);
    std::vector<double> out(p, p + intermediate_size);
    const double n = tokens > 0 ? double(tokens) : 1.0;
    for (double& x : out) x = (s.level == ImportanceLevel::Total ? apply_kernel(s.kernel, x) : x) / n;
    return out;
}

void ImportanceSums::add(const ImportanceSums& o) {
    if (o.num_layers != num_layers || o.intermediate_size != intermediate_size)
        fail("importance: adding sums of {} layers x {} to sums of {} x {}", o.num_layers, o.intermediate_size, num_layers,
             intermediate_size);
    for (size_t i = 0; i < up.size(); ++i) up[i] += o.up[i], gate[i] += o.gate[i];
    tokens += o.tokens, windows += o.windows;
}

void ImportanceAccumulator::on_ffn_grads(const FfnGrads& a) {
    if (a.I != sums_.intermediate_size || a.layer >= sums_.num_layers)
        fail("importance: layer {} of width {} does not fit sums of {} layers x {}", a.layer, a.I, sums_.num_layers,
             sums_.intermediate_size);
    accumulate_columns(a.h, a.dh, a.T, a.I, s_, sums_.sums(ImportanceTarget::Up, a.layer));
    accumulate_columns(a.g, a.dg, a.T, a.I, s_, sums_.sums(ImportanceTarget::Gate, a.layer));
}

}  // namespace moefy
