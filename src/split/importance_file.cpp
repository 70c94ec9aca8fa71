// The importance file's reader and the names of its settings: kept apart from
// the computation so that the reader (fuzzed, fuzz/fuzz_importance.cpp) links
// without the model, backward pass and tokenizer.
#include <cmath>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "split/importance.h"

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

std::string importance_tensor_name(int cluster, int layer, ImportanceTarget t) {
    return fmt::format("cluster.{}.layers.{}.mlp.{}", cluster, layer, importance_target_name(t));
}

namespace {
constexpr const char* kFormat = "moefy-importance";
constexpr int kVersion = 1;
constexpr ImportanceTarget kTargets[] = {ImportanceTarget::Up, ImportanceTarget::Gate};
}  // namespace

namespace {

const std::string& meta_field(const std::map<std::string, std::string>& m, const std::string& key, const std::string& path) {
    auto it = m.find(key);
    if (it == m.end()) fail("{}: importance metadata lacks '{}'", path, key);
    return it->second;
}

int meta_int(const std::map<std::string, std::string>& m, const std::string& key, const std::string& path) {
    const std::string& v = meta_field(m, key, path);
    try {
        size_t pos = 0;
        const long x = std::stol(v, &pos);
        if (pos == v.size() && x >= 0 && x <= (1L << 30)) return int(x);
    } catch (const std::exception&) {
    }
    fail("{}: importance metadata '{}' = '{}' is not a count", path, key, v);
}

}  // namespace

ImportanceFile read_importance(const std::string& path) {
    SafetensorsFile file(path);
    const auto& m = file.metadata();
    auto fmt_it = m.find("format");
    if (fmt_it == m.end() || fmt_it->second != kFormat)
        fail("{}: not an importance file (metadata format is '{}', expected '{}')", path,
             fmt_it == m.end() ? "" : fmt_it->second, kFormat);
    if (meta_int(m, "version", path) != kVersion)
        fail("{}: importance file version {} (this moefy reads {})", path, meta_field(m, "version", path), kVersion);
    ImportanceFile f;
    f.path = path;
    f.metadata = m;
    f.settings.kind = parse_importance_kind(meta_field(m, "kind", path));
    f.settings.kernel = parse_importance_kernel(meta_field(m, "kernel", path));
    f.settings.level = parse_importance_level(meta_field(m, "level", path));
    f.clusters = meta_int(m, "clusters", path);
    f.num_layers = meta_int(m, "num_layers", path);
    f.hidden_size = meta_int(m, "hidden_size", path);
    f.intermediate_size = meta_int(m, "intermediate_size", path);
    f.ffn_fingerprint = meta_field(m, "ffn_fingerprint", path);
    if (f.clusters < 1 || f.num_layers < 1 || f.intermediate_size < 1)
        fail("{}: importance file of {} clusters, {} layers, intermediate size {}", path, f.clusters, f.num_layers,
             f.intermediate_size);
    try {
        f.tokens = parse_json(meta_field(m, "tokens", path), path + ": metadata 'tokens'").get<std::vector<int64_t>>();
    } catch (const nlohmann::json::exception& e) {
        fail("{}: importance metadata 'tokens': {}", path, e.what());
    }
    if (f.tokens.size() != size_t(f.clusters))
        fail("{}: 'tokens' has {} entries for {} clusters", path, f.tokens.size(), f.clusters);

    std::map<std::string, const TensorView*> by_name;
    for (const TensorView& t : file.tensors()) by_name[t.name] = &t;
    const size_t expected = size_t(f.clusters) * size_t(f.num_layers) * 2;
    if (by_name.size() != expected)
        fail("{}: {} tensors, expected {} ({} clusters x {} layers x up_proj/gate_proj)", path, by_name.size(), expected,
             f.clusters, f.num_layers);
    const size_t I = size_t(f.intermediate_size);
    for (ImportanceTarget t : kTargets) {
        auto& dst = t == ImportanceTarget::Up ? f.up : f.gate;
        dst.assign(size_t(f.num_layers), std::vector<std::vector<double>>(size_t(f.clusters)));
        for (int l = 0; l < f.num_layers; ++l)
            for (int k = 0; k < f.clusters; ++k) {
                const std::string name = importance_tensor_name(k, l, t);
                auto it = by_name.find(name);
                if (it == by_name.end()) fail("{}: tensor {} is missing", path, name);
                const TensorView& v = *it->second;
                if (v.dtype != DType::F32 || v.shape != std::vector<int64_t>{int64_t(I)})
                    fail("{}: tensor {} is {} {}, expected F32 [{}]", path, name, dtype_name(v.dtype), v.shape_str(), I);
                std::vector<float> tmp(I);
                to_f32(v.dtype, v.data, tmp.data(), I);
                for (size_t i = 0; i < I; ++i)
                    if (!std::isfinite(tmp[i])) fail("{}: tensor {} holds a non-finite value at {}", path, name, i);
                dst[size_t(l)][size_t(k)].assign(tmp.begin(), tmp.end());
            }
    }
    return f;
}

}  // namespace moefy
