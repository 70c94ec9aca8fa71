#pragma once
// The tensors of each architecture, names (model/tensor_names.h) with shapes,
// in one list: checkpoint validation, the engine's loader, every converter
// layout (safetensors and GGUF) and the tests all read it, so the set of
// tensors an architecture has is written once.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"

namespace moefy {

struct ExpectedTensor {
    std::string name;
    std::vector<int64_t> shape;  // PyTorch order ([rows, cols]); GGUF lists give GGUF's ne order
    bool optional = false;       // part of the layout when present (tied lm_head, llama-moe's gate noise)
    bool check_shape = true;     // false: only the name is known (gate noise: used by nothing moefy runs)
};

// Every tensor of `c`'s architecture in Hugging Face naming: embeddings, final
// norm, lm_head, then each layer (attention, norms, FFN or experts and routers).
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c);

// The same, one tensor at a time. Readers check a file with these: a visitor
// that throws at the first tensor the file lacks stops the walk, so the work is
// bounded by the file, not by counts in its metadata (a hostile block_count or
// expert count would otherwise make the full list itself the problem).
using ExpectedTensorVisitor = std::function<void(ExpectedTensor)>;
void for_each_expected_tensor(const ModelConfig& c, const ExpectedTensorVisitor& visit);

// What a GGUF file of llama.cpp's `llama` / `deepseek` architecture holds.
struct GgufShape {
    bool deepseek = false;  // arch "deepseek" (routed + shared experts), else "llama" (dense or mixtral-style)
    int64_t layers = 0, hidden = 0, vocab = 0, q_rows = 0, kv_rows = 0;
    int64_t ffn = 0;            // dense FFN width
    int64_t experts = 0;        // 0: dense
    int64_t expert_width = 0;   // stacked experts' (padded) width
    int64_t shared_width = 0;   // deepseek: all shared experts side by side; 0: none
    bool has_output = true;     // output.weight (else tied to token_embd)
    int64_t rope_freqs = 0;     // rope_freqs.weight length (llama3 RoPE); 0: none
};

// The GGUF tensors of `s`, ne in GGUF order (ne[0] innermost), in llama.cpp's order.
std::vector<ExpectedTensor> expected_gguf_tensors(const GgufShape& s);
void for_each_expected_gguf_tensor(const GgufShape& s, const ExpectedTensorVisitor& visit);

// Throws "<where>: <what> ..." unless `have` (name, shape) is exactly `expected`:
// every required tensor present with its shape, optional ones with theirs, no
// other tensor. For writers checking what they are about to write.
void check_tensor_list(const std::vector<ExpectedTensor>& expected,
                       const std::vector<std::pair<std::string, std::vector<int64_t>>>& have, const std::string& where);

}  // namespace moefy
