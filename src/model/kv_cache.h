#pragma once
// Keys and values of every layer for the tokens seen so far (f32, after RoPE),
// so that generation runs one token at a time without recomputing the prefix.
#include <cstddef>
#include <vector>

namespace moefy {

struct KVCache {
    int max_tokens = 0;
    int layers = 0;
    int kv_dim = 0;  // num_kv_heads * head_dim
    int n = 0;       // tokens stored (positions 0..n-1)
    std::vector<float> k, v;  // [layers, max_tokens, kv_dim]

    KVCache() = default;
    KVCache(int layers_, int max_tokens_, int kv_dim_)
        : max_tokens(max_tokens_), layers(layers_), kv_dim(kv_dim_),
          k(size_t(layers_) * size_t(max_tokens_) * size_t(kv_dim_)),
          v(size_t(layers_) * size_t(max_tokens_) * size_t(kv_dim_)) {}

    float* k_at(int layer, int pos) { return k.data() + (size_t(layer) * size_t(max_tokens) + size_t(pos)) * size_t(kv_dim); }
    float* v_at(int layer, int pos) { return v.data() + (size_t(layer) * size_t(max_tokens) + size_t(pos)) * size_t(kv_dim); }
    void clear() { n = 0; }
    size_t bytes() const { return (k.size() + v.size()) * sizeof(float); }
};

}  // namespace moefy
