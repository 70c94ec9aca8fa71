#include "tokenizer/tokenizer.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/gguf.h"
#include "io/json.h"
#include "io/output_dir.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/sp_tokenizer.h"
#include "tokenizer/tokenizer_settings.h"

namespace fs = std::filesystem;

namespace moefy {

static nlohmann::json parse_json_file(const std::string& path) {
    return read_json_file(path);
}

// bos_token / eos_token are a string or, in older files, an AddedToken
// object {"content": ...}; null means "none".
static std::optional<std::string> token_field(const nlohmann::json& j, const char* key,
                                              const std::string& path) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const auto& v = j[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
        return v["content"].get<std::string>();
    fail("{}: {} is neither a string nor an object with \"content\"", path, key);
}

static std::optional<bool> bool_field(const nlohmann::json& j, const char* key, const std::string& path) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_boolean()) fail("{}: {} is not a boolean", path, key);
    return j[key].get<bool>();
}

// config.json ids: an integer, or a list of them (LLaMA-3 instruct lists
// several eos ids; the first is the canonical one).
static std::optional<int32_t> id_field(const nlohmann::json& j, const char* key, const std::string& path) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const auto& v = j[key];
    const std::string what = fmt::format("{}: {}", path, key);
    if (v.is_number_integer()) return int32_t(json_int(v, 0, 1 << 30, what));
    if (v.is_array() && !v.empty() && v[0].is_number_integer()) return int32_t(json_int(v[0], 0, 1 << 30, what));
    if (v.is_array() && v.empty()) return std::nullopt;
    fail("{}: {} is neither an integer nor a list of integers", path, key);
}

TokenizerSettings read_tokenizer_settings(const std::string& tokenizer_config_path,
                                          const std::string& config_path) {
    TokenizerSettings s;
    if (!tokenizer_config_path.empty()) {
        const auto j = parse_json_file(tokenizer_config_path);
        if (!j.is_object()) fail("{}: top level is not a JSON object", tokenizer_config_path);
        s.add_bos = bool_field(j, "add_bos_token", tokenizer_config_path);
        s.add_eos = bool_field(j, "add_eos_token", tokenizer_config_path);
        s.bos_token = token_field(j, "bos_token", tokenizer_config_path);
        s.eos_token = token_field(j, "eos_token", tokenizer_config_path);
    }
    if (!config_path.empty()) {
        const auto j = parse_json_file(config_path);
        if (!j.is_object()) fail("{}: top level is not a JSON object", config_path);
        s.bos_id = id_field(j, "bos_token_id", config_path);
        s.eos_id = id_field(j, "eos_token_id", config_path);
    }
    return s;
}

static bool ends_with(const std::string& s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::unique_ptr<Tokenizer> Tokenizer::from_dir(const std::string& model_dir) {
    if (is_gguf_file(model_dir)) return load_gguf_tokenizer(open_gguf(model_dir));
    const fs::path dir(model_dir);
    if (!fs::is_directory(dir)) fail("{}: not a directory", model_dir);
    const auto opt = [&](const char* name) {
        const fs::path p = dir / name;
        return fs::is_regular_file(p) ? p.string() : std::string();
    };
    const TokenizerSettings settings = read_tokenizer_settings(opt("tokenizer_config.json"), opt("config.json"));
    if (const auto json = opt("tokenizer.json"); !json.empty()) return load_hf_tokenizer(json, settings);
    if (const auto model = opt("tokenizer.model"); !model.empty()) return load_sentencepiece(model, settings);
    fail("{}: no tokenizer.json or tokenizer.model", model_dir);
}

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path,
                                                const std::string& tokenizer_config_json) {
    const TokenizerSettings settings = read_tokenizer_settings(tokenizer_config_json, "");
    if (ends_with(path, ".json")) return load_hf_tokenizer(path, settings);
    if (ends_with(path, ".model")) return load_sentencepiece(path, settings);
    fail("{}: unknown tokenizer file type (expected .json or .model)", path);
}

}  // namespace moefy
