#pragma once
// What a model directory says about special tokens beside the tokenizer file
// itself: tokenizer_config.json (transformers) and config.json (the model).
#include <cstdint>
#include <optional>
#include <string>

namespace moefy {

struct TokenizerSettings {
    std::optional<bool> add_bos;           // tokenizer_config.json add_bos_token
    std::optional<bool> add_eos;           // tokenizer_config.json add_eos_token
    std::optional<std::string> bos_token;  // tokenizer_config.json bos_token
    std::optional<std::string> eos_token;  // tokenizer_config.json eos_token
    std::optional<int32_t> bos_id;         // config.json bos_token_id
    std::optional<int32_t> eos_id;         // config.json eos_token_id (first if a list)
};

// Either path may be "" (not read). Throws naming the file when it is not
// valid JSON or a field has the wrong type.
TokenizerSettings read_tokenizer_settings(const std::string& tokenizer_config_path,
                                          const std::string& config_path);

}  // namespace moefy
