// The importance file (split/importance_file.h).
#include "split/importance_file.h"

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json.h"
#include "io/output_dir.h"
#include "io/safetensors.h"

namespace moefy {

namespace fs = std::filesystem;

std::string importance_tensor_name(int cluster, int layer, ImportanceTarget t) {
    return fmt::format("cluster.{}.layers.{}.mlp.{}", cluster, layer, importance_target_name(t));
}

namespace {
constexpr const char* kFormat = "moefy-importance";
constexpr int kVersion = 1;
constexpr ImportanceTarget kTargets[] = {ImportanceTarget::Up, ImportanceTarget::Gate};
}  // namespace

// One F32 tensor per (cluster, layer, target), written to a temporary sibling of `path` and renamed into place.
static void write_score_tensors(const std::string& path, const std::vector<TensorSpec>& specs,
                         const std::vector<std::vector<float>>& values, const std::map<std::string, std::string>& meta) {
    check_output_path(path, OutputKind::File, true);
    remove_stale_siblings(path);
    const std::string tmp = temp_sibling(path);
    try {
        write_safetensors(tmp, specs, [&](size_t i, ByteSink& sink) { sink.write(values[i].data(), values[i].size() * 4); },
                          meta);
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
    commit_file(tmp, path);
}

void write_importance(const std::string& path, const ImportanceResult& r) {
    const int K = int(r.clusters.size()), L = r.num_layers, I = r.intermediate_size;
    std::vector<TensorSpec> specs;
    std::vector<std::vector<float>> values;
    nlohmann::json tokens = nlohmann::json::array(), windows = nlohmann::json::array();
    for (int k = 0; k < K; ++k) {
        const ImportanceSums& s = r.clusters[size_t(k)];
        if (s.num_layers != L || s.intermediate_size != I)
            fail("{}: cluster {} has sums of {} layers x {}, expected {} x {}", path, k, s.num_layers, s.intermediate_size, L, I);
        tokens.push_back(s.tokens);
        windows.push_back(s.windows);
        for (int l = 0; l < L; ++l)
            for (ImportanceTarget t : kTargets) {
                specs.push_back({importance_tensor_name(k, l, t), DType::F32, {I}});
                const std::vector<double> sc = s.scores(r.settings, t, l);
                values.emplace_back(sc.begin(), sc.end());
            }
    }
    const std::map<std::string, std::string> meta = {
        {"format", kFormat},
        {"version", std::to_string(kVersion)},
        {"kind", importance_kind_name(r.settings.kind)},
        {"kernel", importance_kernel_name(r.settings.kernel)},
        {"level", importance_level_name(r.settings.level)},
        {"ctx", std::to_string(r.ctx)},
        {"max_tokens_per_cluster", std::to_string(r.max_tokens_per_cluster)},
        {"clusters", std::to_string(K)},
        {"num_layers", std::to_string(L)},
        {"hidden_size", std::to_string(r.hidden_size)},
        {"intermediate_size", std::to_string(I)},
        {"ffn_fingerprint", r.ffn_fingerprint},
        {"model", r.model},
        {"data", r.data},
        {"ranks", std::to_string(r.ranks)},
        {"tokens", tokens.dump()},
        {"windows", windows.dump()},
        {"scores", "f64 sums / tokens, stored as F32"}};
    write_score_tensors(path, specs, values, meta);
}

void write_importance_scores(const std::string& path, const ImportanceFile& f) {
    const int K = f.clusters, L = f.num_layers, I = f.intermediate_size;
    if (f.tokens.size() != size_t(K)) fail("{}: {} token counts for {} clusters", path, f.tokens.size(), K);
    std::vector<TensorSpec> specs;
    std::vector<std::vector<float>> values;
    for (int k = 0; k < K; ++k)
        for (int l = 0; l < L; ++l)
            for (ImportanceTarget t : kTargets) {
                const auto& sc = f.scores(t);
                if (sc.size() != size_t(L) || sc[size_t(l)].size() != size_t(K) || sc[size_t(l)][size_t(k)].size() != size_t(I))
                    fail("{}: {} scores of layer {} cluster {} are not [{}]", path, importance_target_name(t), l, k, I);
                specs.push_back({importance_tensor_name(k, l, t), DType::F32, {I}});
                values.emplace_back(sc[size_t(l)][size_t(k)].begin(), sc[size_t(l)][size_t(k)].end());
            }
    std::map<std::string, std::string> meta = {
        {"format", kFormat},
        {"version", std::to_string(kVersion)},
        {"kind", importance_kind_name(f.settings.kind)},
        {"kernel", importance_kernel_name(f.settings.kernel)},
        {"level", importance_level_name(f.settings.level)},
        {"clusters", std::to_string(K)},
        {"num_layers", std::to_string(L)},
        {"hidden_size", std::to_string(f.hidden_size)},
        {"intermediate_size", std::to_string(I)},
        {"ffn_fingerprint", f.ffn_fingerprint},
        {"tokens", nlohmann::json(f.tokens).dump()}};
    for (const auto& [k, v] : f.metadata) meta.emplace(k, v);  // never overrides the fields above
    write_score_tensors(path, specs, values, meta);
}

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

void check_importance_for(const ImportanceFile& f, const ModelConfig& cfg, const std::string& fingerprint) {
    if (f.num_layers != cfg.num_layers || f.intermediate_size != cfg.intermediate_size || f.hidden_size != cfg.hidden_size)
        fail("{}: computed for a model of {} layers, hidden {}, intermediate {}; this model has {}, {}, {}", f.path,
             f.num_layers, f.hidden_size, f.intermediate_size, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size);
    if (f.ffn_fingerprint != fingerprint)
        fail("{}: computed for another model (FFN fingerprint {}, this model's is {})", f.path, f.ffn_fingerprint,
             fingerprint);
}

ImportanceFile importance_scores(const ImportanceResult& r, const std::string& where) {
    ImportanceFile f;
    f.path = where;
    f.settings = r.settings;
    f.clusters = int(r.clusters.size());
    f.num_layers = r.num_layers;
    f.hidden_size = r.hidden_size;
    f.intermediate_size = r.intermediate_size;
    f.ffn_fingerprint = r.ffn_fingerprint;
    f.up.assign(size_t(r.num_layers), std::vector<std::vector<double>>(r.clusters.size()));
    f.gate = f.up;
    for (size_t k = 0; k < r.clusters.size(); ++k) {
        const ImportanceSums& s = r.clusters[k];
        f.tokens.push_back(s.tokens);
        for (int l = 0; l < r.num_layers; ++l) {
            f.up[size_t(l)][k] = s.scores(r.settings, ImportanceTarget::Up, l);
            f.gate[size_t(l)][k] = s.scores(r.settings, ImportanceTarget::Gate, l);
        }
    }
    return f;
}

}  // namespace moefy
