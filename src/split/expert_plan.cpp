#include "split/expert_plan.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "io/json.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/tensor_names.h"

namespace moefy {

using nlohmann::json;

bool ExpertPlan::has_shared() const {
    for (const LayerPlan& l : layers)
        if (!l.shared.empty()) return true;
    return false;
}

bool ExpertPlan::is_partition() const {
    if (has_shared()) return false;
    std::vector<int> seen;
    for (const LayerPlan& l : layers) {
        seen.assign(size_t(intermediate_size), 0);
        size_t total = 0;
        for (const auto& e : l.experts) {
            total += e.size();
            for (int32_t n : e)
                if (n < 0 || n >= intermediate_size || seen[size_t(n)]++) return false;
        }
        if (total != size_t(intermediate_size)) return false;
    }
    return true;
}

bool ExpertPlan::equal_widths() const {
    if (layers.empty() || layers[0].experts.empty()) return false;
    const size_t w = layers[0].experts[0].size();
    for (const LayerPlan& l : layers)
        for (const auto& e : l.experts)
            if (e.size() != w) return false;
    return true;
}

json ExpertPlan::to_json() const {
    json j;
    j["format"] = kFormat;
    j["version"] = kVersion;
    j["model"] = {{"num_layers", num_layers},
                  {"hidden_size", hidden_size},
                  {"intermediate_size", intermediate_size},
                  {"ffn_fingerprint", ffn_fingerprint}};
    j["method"] = method;
    j["params"] = params;
    j["stats"] = stats;
    json ls = json::array();
    for (const LayerPlan& l : layers) {
        json lj;
        std::vector<int> widths;
        for (const auto& e : l.experts) widths.push_back(int(e.size()));
        lj["widths"] = widths;
        lj["experts"] = l.experts;
        lj["shared"] = l.shared;
        lj["stats"] = l.stats.is_null() ? json::object() : l.stats;
        ls.push_back(std::move(lj));
    }
    j["layers"] = std::move(ls);
    return j;
}

static std::vector<std::vector<int32_t>> read_lists(const json& j, const std::string& where) {
    if (!j.is_array()) fail("{}: expected a list of neuron-id lists", where);
    std::vector<std::vector<int32_t>> out;
    for (size_t e = 0; e < j.size(); ++e) {
        if (!j[e].is_array()) fail("{}[{}]: expected a list of neuron ids", where, e);
        std::vector<int32_t> ids;
        ids.reserve(j[e].size());
        for (const json& v : j[e]) {
            if (!v.is_number_integer()) fail("{}[{}]: neuron id is not an integer", where, e);
            // Read whole: 2^32 + 5 must be refused as out of range, not read as neuron 5.
            if (!json_int_in(v, 0, INT32_MAX)) fail("{}[{}]: neuron id {} is out of range", where, e, v.dump());
            ids.push_back(v.get<int32_t>());
        }
        out.push_back(std::move(ids));
    }
    return out;
}

ExpertPlan ExpertPlan::from_json(const json& j, const std::string& where) {
    if (!j.is_object()) fail("{}: not a JSON object", where);
    // Compared as json, so a format of another type is "not a plan" rather than an escaped type_error.
    if (j.value("format", json()) != kFormat) fail("{}: not an expert plan (format is not '{}')", where, kFormat);
    if (!j.contains("version") || !json_int_in(j["version"], kVersion, kVersion))
        fail("{}: unsupported plan version (this moefy reads version {})", where, kVersion);
    ExpertPlan p;
    try {
        const json& m = j.at("model");
        for (auto [key, dst] : {std::pair{"num_layers", &p.num_layers}, std::pair{"hidden_size", &p.hidden_size},
                                std::pair{"intermediate_size", &p.intermediate_size}})
            *dst = int(json_int(m.at(key), 1, int64_t(1) << 30, fmt::format("{}: model.{}", where, key)));
        p.ffn_fingerprint = m.value("ffn_fingerprint", "");
        p.method = j.at("method").get<std::string>();
        p.params = j.value("params", json::object());
        p.stats = j.value("stats", json::object());
        const json& ls = j.at("layers");
        if (!ls.is_array()) fail("{}: 'layers' is not a list", where);
        for (size_t l = 0; l < ls.size(); ++l) {
            LayerPlan lp;
            lp.experts = read_lists(ls[l].at("experts"), fmt::format("{}: layers[{}].experts", where, l));
            if (ls[l].contains("shared")) lp.shared = read_lists(ls[l]["shared"], fmt::format("{}: layers[{}].shared", where, l));
            lp.stats = ls[l].value("stats", json::object());
            p.layers.push_back(std::move(lp));
        }
    } catch (const json::exception& e) {
        fail("{}: malformed plan: {}", where, e.what());
    }
    p.validate(where);
    return p;
}

// Indented JSON, except that each neuron-id list stays on one line, so a plan
// reads as one expert per line.
static std::string plan_text(const json& j) {
    std::string out = "{\n";
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
        out += first ? "" : ",\n";
        first = false;
        out += " " + json(it.key()).dump() + ": ";
        if (it.key() != "layers") {
            out += it->dump();
            continue;
        }
        out += "[\n";
        for (size_t l = 0; l < it->size(); ++l) {
            const json& lj = (*it)[l];
            out += "  {\"stats\": " + lj["stats"].dump() + ",\n   \"widths\": " + lj["widths"].dump() + ",\n";
            for (const char* key : {"experts", "shared"}) {
                out += fmt::format("   \"{}\": [", key);
                for (size_t e = 0; e < lj[key].size(); ++e) out += (e ? ",\n    " : "\n    ") + lj[key][e].dump();
                out += lj[key].empty() ? "]" : "\n   ]";
                out += key[0] == 'e' ? ",\n" : "\n";
            }
            out += l + 1 < it->size() ? "  },\n" : "  }\n";
        }
        out += " ]";
    }
    return out + "\n}\n";
}

void ExpertPlan::save(const std::string& path) const { write_file_atomic(path, plan_text(to_json())); }

ExpertPlan ExpertPlan::load(const std::string& path) {
    return from_json(read_json_file(path), path);
}

void ExpertPlan::validate(const std::string& where) const {
    if (num_layers <= 0 || hidden_size <= 0 || intermediate_size <= 0) fail("{}: model sizes must be positive", where);
    if (int(layers.size()) != num_layers) fail("{}: plan has {} layers but says num_layers {}", where, layers.size(), num_layers);
    const size_t E = layers[0].experts.size(), R = layers[0].shared.size();
    if (E < 1) fail("{}: layer 0 has no routed experts", where);
    // Duplicates are found by sorting each list, not with a table of intermediate_size
    // entries: the sizes come from the file and may ask for gigabytes.
    std::vector<int32_t> sorted;
    for (size_t l = 0; l < layers.size(); ++l) {
        const LayerPlan& lp = layers[l];
        if (lp.experts.size() != E) fail("{}: layer {} has {} experts, layer 0 has {}", where, l, lp.experts.size(), E);
        if (lp.shared.size() != R) fail("{}: layer {} has {} shared experts, layer 0 has {}", where, l, lp.shared.size(), R);
        auto check = [&](const std::vector<int32_t>& ids, const char* kind, size_t e) {
            if (ids.empty()) fail("{}: layer {} {} expert {} is empty", where, l, kind, e);
            for (int32_t n : ids)
                if (n < 0 || n >= intermediate_size)
                    fail("{}: layer {} {} expert {} has neuron id {} outside [0, {})", where, l, kind, e, n, intermediate_size);
            sorted.assign(ids.begin(), ids.end());
            std::sort(sorted.begin(), sorted.end());
            for (size_t i = 1; i < sorted.size(); ++i)
                if (sorted[i] == sorted[i - 1]) fail("{}: layer {} {} expert {} lists neuron {} twice", where, l, kind, e, sorted[i]);
        };
        for (size_t e = 0; e < lp.experts.size(); ++e) check(lp.experts[e], "routed", e);
        for (size_t e = 0; e < lp.shared.size(); ++e) check(lp.shared[e], "shared", e);
    }
    // Methods that partition: every neuron in exactly one expert. The gradient split
    // partitions unless it was asked to share neurons (LLaMA-MoE's share_neurons=False).
    const bool gradient_partition = method == "gradient" && !json_get_or(params, "share", true, where + ": params");
    if (method == "random" || method == "cluster" || method == "graph" || gradient_partition) {
        const std::string kind = gradient_partition ? "'gradient' plan without --share" : fmt::format("'{}' plan", method);
        std::vector<int> owner;
        for (size_t l = 0; l < layers.size(); ++l) {
            size_t listed = 0;
            for (const auto* list : {&layers[l].experts, &layers[l].shared})
                for (const auto& ids : *list) listed += ids.size();
            if (listed < size_t(intermediate_size))
                fail("{}: layer {} lists {} neuron ids for {} neurons, so some neuron is in no expert, but a {} "
                     "partitions the neurons (each in exactly one expert)", where, l, listed, intermediate_size, kind);
            owner.assign(size_t(intermediate_size), -1);  // no larger than the ids the file lists
            int e = 0;
            for (const auto* list : {&layers[l].experts, &layers[l].shared})
                for (const auto& ids : *list) {
                    for (int32_t n : ids) {
                        if (owner[size_t(n)] >= 0)
                            fail("{}: layer {} has neuron {} in experts {} and {}, but a {} partitions the neurons "
                                 "(each in exactly one expert)", where, l, n, owner[size_t(n)], e, kind);
                        owner[size_t(n)] = e;
                    }
                    ++e;
                }
            for (size_t n = 0; n < owner.size(); ++n)
                if (owner[n] < 0)
                    fail("{}: layer {} has neuron {} in no expert, but a {} partitions the neurons "
                         "(each in exactly one expert)", where, l, n, kind);
        }
    }
}

void ExpertPlan::validate_for(const ModelConfig& cfg, const std::string& fingerprint, const std::string& where) const {
    validate(where);
    if (cfg.is_moe()) fail("{}: the model is already an MoE model ({}); plans apply to dense models", where, model_kind_name(cfg.kind));
    if (num_layers != cfg.num_layers || hidden_size != cfg.hidden_size || intermediate_size != cfg.intermediate_size)
        fail("{}: plan was made for a model with {} layers, hidden {}, intermediate {}; this model has {}, {}, {}", where,
             num_layers, hidden_size, intermediate_size, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size);
    if (ffn_fingerprint.empty() && !fingerprint.empty())
        fail("{}: plan has no model.ffn_fingerprint, so it cannot be checked against this model (plans written by "
             "moefy split carry one)", where);
    if (!fingerprint.empty() && ffn_fingerprint != fingerprint)
        fail("{}: plan was made for another model (FFN fingerprint {} differs from this model's {})", where, ffn_fingerprint,
             fingerprint);
}

std::string ffn_fingerprint(const TensorStore& tensors, const ModelConfig& cfg) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
    auto mix = [&](const void* p, size_t n) {
        const uint8_t* b = static_cast<const uint8_t*>(p);
        for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
    };
    constexpr size_t kBlock = 4096;
    for (int l = 0; l < cfg.num_layers; ++l) {
        for (const char* proj : {"gate", "up", "down"}) {
            const TensorView& t = tensors.get(names::dense_ffn(l, proj));
            mix(t.name.data(), t.name.size());
            mix(dtype_name(t.dtype), std::strlen(dtype_name(t.dtype)));
            for (int64_t d : t.shape) mix(&d, sizeof d);
            // Three sampled blocks: start, middle, end.
            for (size_t at : {size_t(0), t.nbytes / 2, t.nbytes > kBlock ? t.nbytes - kBlock : 0}) {
                size_t n = std::min(kBlock, t.nbytes - std::min(at, t.nbytes));
                mix(t.data + at, n);
            }
        }
    }
    return fmt::format("fnv1a64:{:016x}", h);
}

std::vector<int> balanced_widths(int total, int parts) {
    std::vector<int> w(size_t(parts), total / parts);
    for (int i = 0; i < total % parts; ++i) ++w[size_t(i)];
    return w;
}

void check_expert_count(int experts, int intermediate_size) {
    if (experts < 2) fail("--experts must be at least 2 (got {})", experts);
    if (experts > intermediate_size)
        fail("--experts {} is larger than the FFN width {}: every expert needs at least one neuron", experts, intermediate_size);
}

}  // namespace moefy
