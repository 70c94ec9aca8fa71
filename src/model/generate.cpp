// Token-by-token decoding with a KV cache, and the sampling rules.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"
#include "model/llama.h"

namespace moefy {

int32_t sample_token(const float* logits, int V, float temperature, float top_p, Rng& rng) {
    if (temperature <= 0.0f) return int32_t(std::max_element(logits, logits + V) - logits);  // first max: lowest id
    const float mx = *std::max_element(logits, logits + V);
    std::vector<double> p(static_cast<size_t>(V));
    double z = 0.0;
    for (int i = 0; i < V; ++i) z += p[size_t(i)] = std::exp(double(logits[i] - mx) / temperature);
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    // Nucleus: the most probable tokens whose mass first reaches top_p
    // (stable by id among equals), then sample within them.
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
    size_t keep = size_t(V);
    if (top_p < 1.0f) {
        double cum = 0.0;
        for (size_t i = 0; i < order.size(); ++i) {
            cum += p[size_t(order[i])] / z;
            if (cum >= top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double mass = 0.0;
    for (size_t i = 0; i < keep; ++i) mass += p[size_t(order[i])];
    double r = rng.uniform() * mass;
    for (size_t i = 0; i < keep; ++i) {
        r -= p[size_t(order[i])];
        if (r < 0.0) return order[i];
    }
    return order[keep - 1];
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                              const std::function<void(int32_t)>& on_token) {
    const ModelConfig& c = model.config();
    if (prompt.empty()) fail("generate: empty prompt (start it with BOS)");
    const int64_t total = int64_t(prompt.size()) + std::max(0, opts.max_new_tokens);
    if (c.max_position_embeddings > 0 && total > c.max_position_embeddings)
        fail("generate: prompt of {} tokens + {} new tokens exceeds max_position_embeddings {}", prompt.size(),
             opts.max_new_tokens, c.max_position_embeddings);
    std::vector<int32_t> out;
    if (opts.max_new_tokens <= 0) return out;
    KVCache cache = model.make_cache(int(total));
    Rng rng(opts.seed);
    const int V = model.vocab_size();
    std::vector<float> logits(static_cast<size_t>(V));
    model.forward_last(prompt.data(), int(prompt.size()), 0, &cache, logits.data());
    for (int i = 0; i < opts.max_new_tokens; ++i) {
        const int32_t tok = sample_token(logits.data(), V, opts.temperature, opts.top_p, rng);
        if (opts.stop_at_eos && tok == c.eos_token_id) break;
        out.push_back(tok);
        if (on_token) on_token(tok);
        if (i + 1 == opts.max_new_tokens) break;
        model.forward_last(&tok, 1, cache.n, &cache, logits.data());
    }
    return out;
}

}  // namespace moefy
