#pragma once
// Writes a small random dense LLaMA checkpoint (config.json + safetensors) for tests.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/rng.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/expected_tensors.h"

struct TinyModelSpec {
    int vocab = 32, hidden = 16, intermediate = 24, layers = 2, heads = 4, kv_heads = 2, max_pos = 64;
    moefy::DType dtype = moefy::DType::F32;
    bool tie_embeddings = false;
    uint64_t seed = 1;
    size_t max_shard_bytes = size_t(1) << 40;
};

inline std::string write_tiny_model(const std::string& dir, const TinyModelSpec& s) {
    using namespace moefy;
    std::filesystem::create_directories(dir);
    nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                          {"model_type", "llama"},
                          {"vocab_size", s.vocab},
                          {"hidden_size", s.hidden},
                          {"intermediate_size", s.intermediate},
                          {"num_hidden_layers", s.layers},
                          {"num_attention_heads", s.heads},
                          {"num_key_value_heads", s.kv_heads},
                          {"max_position_embeddings", s.max_pos},
                          {"rms_norm_eps", 1e-5},
                          {"rope_theta", 10000.0},
                          {"hidden_act", "silu"},
                          {"tie_word_embeddings", s.tie_embeddings},
                          {"bos_token_id", 1},
                          {"eos_token_id", 2},
                          {"torch_dtype", s.dtype == DType::F32 ? "float32" : s.dtype == DType::F16 ? "float16" : "bfloat16"}};
    // The tensors are the architecture's list (model/expected_tensors.h); the tied head is left out.
    std::vector<TensorSpec> specs;
    for (const ExpectedTensor& e : expected_tensors(ModelConfig::parse(cfg, dir)))
        if (!e.optional) specs.push_back({e.name, s.dtype, e.shape});
    write_checkpoint_tensors(dir, specs, [&](size_t i, ByteSink& sink) {
        const TensorSpec& t = specs[i];
        size_t n = t.nbytes() / dtype_size(t.dtype);
        Rng rng(s.seed, i);
        std::vector<float> v(n);
        const bool norm = t.shape.size() == 1;
        for (float& x : v) x = norm ? float(1.0 + 0.1 * rng.normal()) : float(0.3 * rng.normal());
        std::vector<uint8_t> buf(t.nbytes());
        from_f32(t.dtype, v.data(), buf.data(), n);
        sink.write(buf.data(), buf.size());
    }, s.max_shard_bytes);
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    return dir;
}
