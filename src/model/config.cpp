#include "model/config.h"

#include "common/error.h"
#include "io/json.h"
#include "io/output_dir.h"

#include <cmath>
#include <cstdint>

namespace moefy {

using nlohmann::json;

const char* model_kind_name(ModelKind k) {
    switch (k) {
        case ModelKind::Dense: return "dense";
        case ModelKind::LlamaMoE: return "llama-moe";
        case ModelKind::LlamaMoEResidual: return "llama-moe-residual";
        case ModelKind::Mixtral: return "mixtral";
        case ModelKind::Deepseek: return "deepseek";
    }
    return "?";
}

namespace {

// Every size moefy reads from a config fits int with room for products in int64.
constexpr int64_t kMaxSize = int64_t(1) << 30;
// Per-layer tables (expert widths, scales) are sized from these before any tensor is
// seen, so they are capped: far above any published model (DeepSeek-V3: 61 layers x 256
// experts), far below what would let a 100-byte config.json ask for gigabytes.
constexpr int64_t kMaxLayers = int64_t(1) << 16;
constexpr int64_t kMaxExpertSlots = int64_t(1) << 22;  // layers x experts

int checked_product(int a, int b, const char* what, const std::string& where) {
    const int64_t p = int64_t(a) * int64_t(b);
    if (p > kMaxSize) fail("{}: {} = {} x {} is larger than {}", where, what, a, b, kMaxSize);
    return int(p);
}

void check_expert_slots(int64_t layers, int64_t experts, const char* field, const std::string& where) {
    if (layers * experts > kMaxExpertSlots)
        fail("{}: {} layers x {} experts ('{}') is more than the {} expert slots moefy supports", where, layers, experts, field,
             kMaxExpertSlots);
}

// Field readers that name the file and the field when something is wrong.
struct Reader {
    const json& j;
    const std::string& where;

    bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
    // Integers are read whole (int64) and range-checked: 2^32 + 192 is refused, never read as 192.
    int get_int(const char* k, int64_t lo = INT32_MIN, int64_t hi = INT32_MAX) const {
        if (!has(k)) fail("{}: missing field '{}'", where, k);
        if (!j[k].is_number_integer()) fail("{}: field '{}' must be an integer", where, k);
        return int(json_int(j[k], lo, hi, fmt::format("{}: field '{}'", where, k)));
    }
    int get_int(const char* k, int def) const { return has(k) ? get_int(k) : def; }
    int get_positive(const char* k) const {
        if (has(k) && j[k].is_number_integer() && json_int_in(j[k], INT64_MIN, 0))
            fail("{}: field '{}' must be positive, got {}", where, k, j[k].dump());
        return get_int(k, 1, kMaxSize);
    }
    // A finite number > 0 (epsilons, rope bases): 0, negatives, NaN and Inf are refused.
    double get_positive_num(const char* k, double def) const {
        const double v = get_num(k, def);
        if (!(v > 0) || !std::isfinite(v)) fail("{}: field '{}' must be a finite number > 0, got {}", where, k, j[k].dump());
        return v;
    }
    double get_num(const char* k, double def) const {
        if (!has(k)) return def;
        if (!j[k].is_number()) fail("{}: field '{}' must be a number", where, k);
        return j[k].get<double>();
    }
    bool get_bool(const char* k, bool def) const {
        if (!has(k)) return def;
        if (!j[k].is_boolean()) fail("{}: field '{}' must be true or false", where, k);
        return j[k].get<bool>();
    }
    std::string get_str(const char* k, const std::string& def) const {
        if (!has(k)) return def;
        if (!j[k].is_string()) fail("{}: field '{}' must be a string", where, k);
        return j[k].get<std::string>();
    }
    // [layers][n] integer table
    std::vector<std::vector<int>> get_table(const char* k, int layers, int n) const {
        if (!has(k) || !j[k].is_array()) fail("{}: missing field '{}' (per-layer expert widths)", where, k);
        const json& a = j[k];
        if (int(a.size()) != layers) fail("{}: '{}' has {} layers, num_hidden_layers is {}", where, k, a.size(), layers);
        std::vector<std::vector<int>> out;
        for (size_t l = 0; l < a.size(); ++l) {
            if (!a[l].is_array() || int(a[l].size()) != n) fail("{}: '{}'[{}] must list {} widths", where, k, l, n);
            std::vector<int> row;
            for (const json& v : a[l]) {
                if (!json_int_in(v, 1, kMaxSize)) fail("{}: '{}'[{}] has a width that is not an integer in [1, {}]", where, k, l, kMaxSize);
                row.push_back(v.get<int>());
            }
            out.push_back(std::move(row));
        }
        return out;
    }
};

ModelKind kind_of(const std::string& arch, const std::string& model_type, const std::string& where) {
    if (arch == "LlamaForCausalLM" || arch == "MistralForCausalLM") return ModelKind::Dense;
    if (arch == "LlamaMoEForCausalLM") return ModelKind::LlamaMoE;
    if (arch == "LlamaMoEResidualForCausalLM") return ModelKind::LlamaMoEResidual;
    if (arch == "MixtralForCausalLM") return ModelKind::Mixtral;
    if (arch == "DeepseekForCausalLM") return ModelKind::Deepseek;
    if (arch.empty()) {
        if (model_type == "llama" || model_type == "mistral") return ModelKind::Dense;
        if (model_type == "llama_moe") return ModelKind::LlamaMoE;
        if (model_type == "llama_moe_residual") return ModelKind::LlamaMoEResidual;
        if (model_type == "mixtral") return ModelKind::Mixtral;
        if (model_type == "deepseek") return ModelKind::Deepseek;
        fail("{}: unsupported model_type '{}' (moefy supports llama, mistral and the MoE layouts it writes)", where,
             model_type.empty() ? "(none)" : model_type);
    }
    fail("{}: unsupported architecture '{}' (moefy supports LlamaForCausalLM, MistralForCausalLM and the MoE layouts it writes)",
         where, arch);
}

std::vector<float> scale_list(const json& j, const char* k, int layers, const std::string& where) {
    if (!j.contains(k) || j[k].is_null()) return std::vector<float>(size_t(layers), 1.0f);
    const json& v = j[k];
    if (v.is_number()) return std::vector<float>(size_t(layers), v.get<float>());
    if (v.is_array()) {
        if (int(v.size()) != layers) fail("{}: '{}' lists {} values for {} layers", where, k, v.size(), layers);
        std::vector<float> out;
        for (const json& x : v) {
            if (!x.is_number()) fail("{}: '{}' holds a non-number", where, k);
            out.push_back(x.get<float>());
        }
        return out;
    }
    fail("{}: '{}' must be a number or a list of numbers", where, k);
}

}  // namespace

ModelConfig ModelConfig::parse(const json& j, const std::string& where) {
    if (!j.is_object()) fail("{}: not a JSON object", where);
    Reader r{j, where};
    ModelConfig c;
    c.raw = j;
    if (r.has("architectures")) {
        if (!j["architectures"].is_array() || j["architectures"].empty() || !j["architectures"][0].is_string())
            fail("{}: 'architectures' must be a non-empty list of names", where);
        c.architecture = j["architectures"][0].get<std::string>();
    }
    c.model_type = r.get_str("model_type", "");
    c.kind = kind_of(c.architecture, c.model_type, where);
    if (r.get_str("hidden_act", "silu") != "silu")
        fail("{}: hidden_act '{}' is not supported (LLaMA-family models use silu)", where, r.get_str("hidden_act", ""));

    c.vocab_size = r.get_positive("vocab_size");
    c.hidden_size = r.get_positive("hidden_size");
    c.num_layers = r.get_positive("num_hidden_layers");
    if (c.num_layers > kMaxLayers)
        fail("{}: field 'num_hidden_layers' is {}, more than the {} layers moefy supports", where, c.num_layers, kMaxLayers);
    c.num_heads = r.get_positive("num_attention_heads");
    c.num_kv_heads = r.has("num_key_value_heads") ? r.get_positive("num_key_value_heads") : c.num_heads;
    if (c.num_heads % c.num_kv_heads != 0)
        fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", where, c.num_heads, c.num_kv_heads);
    c.head_dim = r.has("head_dim") ? r.get_positive("head_dim") : c.hidden_size / c.num_heads;
    if (!r.has("head_dim") && c.hidden_size % c.num_heads != 0)
        fail("{}: hidden_size {} is not a multiple of num_attention_heads {}", where, c.hidden_size, c.num_heads);
    c.max_position_embeddings = r.get_int("max_position_embeddings", 2048);
    c.rms_norm_eps = r.get_positive_num("rms_norm_eps", 1e-6);
    c.rope_theta = r.get_positive_num("rope_theta", 10000.0);
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
    c.bos_token_id = r.get_int("bos_token_id", 1);
    c.eos_token_id = j.contains("eos_token_id") && j["eos_token_id"].is_array() && !j["eos_token_id"].empty()
                         ? int(json_int(j["eos_token_id"][0], INT32_MIN, INT32_MAX, where + ": field 'eos_token_id'"))
                         : r.get_int("eos_token_id", 2);
    c.torch_dtype = r.get_str("torch_dtype", "");
    if (r.has("sliding_window")) c.sliding_window = r.get_positive("sliding_window");
    if (r.get_bool("attention_bias", false)) fail("{}: attention_bias true is not supported", where);
    if (r.get_bool("mlp_bias", false)) fail("{}: mlp_bias true is not supported", where);

    if (r.has("rope_scaling")) {
        const json& rs = j["rope_scaling"];
        if (!rs.is_object()) fail("{}: rope_scaling must be an object or null", where);
        Reader q{rs, where};
        std::string type = q.get_str("rope_type", q.get_str("type", ""));
        if (type == "llama3") {
            c.rope_scaling.type = "llama3";
            c.rope_scaling.factor = q.get_num("factor", 8.0);
            c.rope_scaling.low_freq_factor = q.get_num("low_freq_factor", 1.0);
            c.rope_scaling.high_freq_factor = q.get_num("high_freq_factor", 4.0);
            c.rope_scaling.original_max_position_embeddings = q.get_int("original_max_position_embeddings", 8192);
        } else if (type == "linear") {
            c.rope_scaling.type = "linear";
            c.rope_scaling.factor = q.get_num("factor", 1.0);
        } else if (type != "default" && !type.empty()) {
            fail("{}: rope_scaling type '{}' is not supported (llama3 and linear are)", where, type);
        }
    }

    MoEConfig& m = c.moe;
    const int L = c.num_layers;
    switch (c.kind) {
        case ModelKind::Dense:
            c.intermediate_size = r.get_positive("intermediate_size");
            break;
        case ModelKind::LlamaMoE:
        case ModelKind::LlamaMoEResidual: {
            c.intermediate_size = r.get_positive("intermediate_size");
            m.num_experts = r.get_positive("num_experts");
            check_expert_slots(L, m.num_experts, "num_experts", where);
            m.top_k = r.get_positive("num_selects");
            m.expert_widths = r.get_table("size_experts", L, m.num_experts);
            m.gate_network = r.get_str("gate_network", "mlp");
            if (m.gate_network != "mlp" && m.gate_network != "linear")
                fail("{}: gate_network '{}' is not supported (mlp or linear)", where, m.gate_network);
            m.gate_softmax = r.get_bool("gate_use_softmax", true);
            m.multiply_gate_scores = r.get_bool("multiply_gate_scores", true);
            m.score_scale = scale_list(j, "score_scale_factor", L, where);
            if (c.kind == ModelKind::LlamaMoEResidual) {
                m.num_shared = r.get_positive("num_experts_residual");
                m.shared_widths = r.get_table("size_experts_residual", L, m.num_shared);
                m.shared_scale = float(r.get_num("score_scale_factor_residual", 1.0));
                m.shared_multiply = r.get_bool("multiply_gate_scores_residual", true);
            }
            std::string gt = r.get_str("gate_type", "TopKBalancedNoisyGate");
            if (gt != "TopKBalancedNoisyGate")
                fail("{}: gate_type '{}' is not supported (TopKBalancedNoisyGate, as in published LLaMA-MoE checkpoints)", where, gt);
            break;
        }
        case ModelKind::Mixtral: {
            m.num_experts = r.get_positive("num_local_experts");
            check_expert_slots(L, m.num_experts, "num_local_experts", where);
            m.top_k = r.get_positive("num_experts_per_tok");
            int w = r.get_positive("intermediate_size");
            c.intermediate_size = checked_product(w, m.num_experts, "intermediate_size x num_local_experts", where);
            m.expert_widths.assign(size_t(L), std::vector<int>(size_t(m.num_experts), w));
            m.gate_network = "linear";
            m.softmax_over_all = true;
            m.renormalize_topk = true;
            m.score_scale.assign(size_t(L), 1.0f);
            break;
        }
        case ModelKind::Deepseek: {
            m.num_experts = r.get_positive("n_routed_experts");
            check_expert_slots(L, m.num_experts, "n_routed_experts", where);
            m.top_k = r.get_positive("num_experts_per_tok");
            int w = r.get_positive("moe_intermediate_size");
            if (r.get_int("first_k_dense_replace", 0) != 0 || r.get_int("moe_layer_freq", 1) != 1)
                fail("{}: deepseek models with dense layers (first_k_dense_replace/moe_layer_freq) are not supported", where);
            if (r.get_str("scoring_func", "softmax") != "softmax") fail("{}: scoring_func must be softmax", where);
            c.intermediate_size = r.has("intermediate_size") ? r.get_positive("intermediate_size")
                                                             : checked_product(w, m.num_experts, "moe_intermediate_size x n_routed_experts", where);
            m.expert_widths.assign(size_t(L), std::vector<int>(size_t(m.num_experts), w));
            // DeepSeek stores all shared experts as one MLP of width n_shared * w.
            const int n_shared = r.get_int("n_shared_experts", 0);
            if (n_shared > 0) {
                m.num_shared = 1;
                m.shared_widths.assign(size_t(L), std::vector<int>{checked_product(w, n_shared, "moe_intermediate_size x n_shared_experts", where)});
            }
            m.gate_network = "linear";
            m.softmax_over_all = true;
            m.renormalize_topk = r.get_bool("norm_topk_prob", false);
            m.score_scale.assign(size_t(L), float(r.get_num("routed_scaling_factor", 1.0)));
            m.shared_multiply = false;
            break;
        }
    }
    if (c.is_moe() && (m.top_k < 1 || m.top_k > m.num_experts))
        fail("{}: top-k {} is not between 1 and the expert count {}", where, m.top_k, m.num_experts);
    return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
    return parse(read_json_file(path), path);
}

}  // namespace moefy
