#pragma once
// The native LLaMA-family engine: dense LLaMA 1/2/3 and Mistral, and every MoE
// layout moefy writes (llama-moe, llama-moe-residual, mixtral, deepseek).
//
// Weights stay where the checkpoint maps them, in their stored dtype; every
// product goes through matmul() (model/matmul.h). One Model runs one token
// sequence at a time (T tokens, causal) and is not safe to call from two
// threads at once (it owns its scratch buffers).
//
// Per decoder layer l (x: [T, H] residual stream):
//   xa = RMSNorm_in(x);   x += Attn(xa)            (RoPE, GQA, causal, sliding window)
//   xf = RMSNorm_post(x); x += FFN_l(xf)           (SwiGLU, or the MoE FFN below)
// then logits = RMSNorm_final(x) · lm_headᵀ.
//
// MoE FFN (see MoEConfig in model/config.h for the weighting of each layout):
//   r = router(xf) [T, E]; top-k of r per token, ties to the lower expert index;
//   y_t = Σ_j w_tj · E_{sel_tj}(xf_t) + Σ_s v_ts · S_s(xf_t)     (s: shared/residual experts)
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/kv_cache.h"
#include "model/matmul.h"
#include "model/config.h"

namespace moefy {

struct Checkpoint;
struct LayerBuffers;
class TensorStore;

// ---- hooks -------------------------------------------------------------------

// Activations of one SwiGLU block while a layer runs; pointers are valid only
// during the on_ffn call.
//   Dense layer: one call, expert == -1, rows == nullptr, n == T.
//   MoE layer:   one call per routed expert that received tokens (expert = its
//                index, shared = false, rows[i] = the token of row i, weight[i] =
//                the combine weight its output was multiplied by), then one call
//                per shared/residual expert (shared = true, all T tokens, rows == nullptr).
struct FfnActs {
    int layer = 0;
    int T = 0;                // tokens in the batch
    int H = 0;
    const float* x = nullptr;  // [T, H] FFN input of all T tokens (after the post-attention norm)
    int expert = -1;
    bool shared = false;
    int n = 0;                     // rows below
    const int32_t* rows = nullptr;  // [n] token index of each row, nullptr = row i is token i
    const float* weight = nullptr;  // [n] combine weight, nullptr = 1
    int I = 0;                     // width of this block
    const float* gate = nullptr;   // [n, I] pre-activation x·W_gateᵀ
    const float* up = nullptr;     // [n, I] x·W_upᵀ
    const float* h = nullptr;      // [n, I] silu(gate) * up
};

struct FfnObserver {
    virtual ~FfnObserver() = default;
    // Only layers that return true are handed out (nothing is copied for the others).
    virtual bool wants(int layer) const { return true; }
    virtual void on_ffn(int layer, const FfnActs& a) = 0;
};

// Tokens per expert, accumulated over calls; the caller owns it.
struct RoutingStats {
    std::vector<std::vector<int64_t>> counts;  // [layer][expert]: tokens that selected the expert
    std::vector<int64_t> tokens;               // [layer]: tokens routed
    void reset() { counts.clear(); tokens.clear(); }
};

// What a routing override sees for one MoE layer.
struct RouteInput {
    int layer = 0;
    int T = 0, H = 0, E = 0, k = 0;
    const float* x = nullptr;       // [T, H] FFN input
    const float* logits = nullptr;  // [T, E] router logits
    // [T, E] ‖E_e(x_t)‖₂, the output norm of every routed expert on every token
    // (unweighted); computed (at dense cost) only when wants_mass() is true.
    const float* mass = nullptr;
};

// Replaces the router's choice in MoE layers (oracle routing, ablations).
struct RouteOverride {
    virtual ~RouteOverride() = default;
    virtual bool wants(int layer) const { return true; }
    virtual bool wants_mass() const { return false; }
    // sel [T, k] and weight [T, k] hold the model's own routing on entry and may
    // be rewritten; sel = -1 leaves a slot empty. Weights are the final combine
    // weights (score × scale factor, or 1 when multiply_gate_scores is off).
    virtual void route(const RouteInput& in, int32_t* sel, float* weight) = 0;
};

struct RunHooks {
    FfnObserver* ffn = nullptr;
    RoutingStats* routing = nullptr;
    RouteOverride* route = nullptr;
    RunHooks() = default;
    RunHooks(FfnObserver* obs) : ffn(obs) {}  // NOLINT: implicit, so forward(..., &observer) reads naturally
};

// ---- weights -------------------------------------------------------------------

// One SwiGLU block: y = W_down · (silu(W_gate·x) ⊙ (W_up·x)).
struct FfnWeights {
    WeightRef gate, up;  // [I, H]
    WeightRef down;      // [H, I]
    int width() const { return int(gate.rows); }
};

struct MoEWeights {
    WeightRef router;                // [E, H] linear router (llama-moe "linear", mixtral, deepseek)
    WeightRef router_w1, router_w2;  // llama-moe "mlp": W2 · tanh(W1 · x), [E, H] and [E, E]
    std::vector<FfnWeights> experts;
    std::vector<FfnWeights> shared;  // residual experts (llama-moe-residual) or deepseek's shared MLP
    WeightRef shared_gate;           // llama-moe-residual: [R, H], softmax over R per token
};

struct LayerWeights {
    std::vector<float> input_norm, post_norm;  // [H]
    WeightRef q, k, v, o;
    bool is_moe = false;
    FfnWeights ffn;  // dense layers
    MoEWeights moe;  // MoE layers
};

// ---- the model -----------------------------------------------------------------

class Model {
public:
    // Holds pointers into the checkpoint's mapping: the Checkpoint (or the
    // TensorStore) must outlive the Model.
    static std::unique_ptr<Model> load(const Checkpoint& ckpt);
    static std::unique_ptr<Model> load(Checkpoint&&) = delete;  // a temporary would unmap under the Model
    static std::unique_ptr<Model> load(const ModelConfig& cfg, const TensorStore& tensors);
    ~Model();

    const ModelConfig& config() const { return cfg_; }
    const LayerWeights& layer(int l) const { return layers_[size_t(l)]; }
    int vocab_size() const { return cfg_.vocab_size; }
    // The weights outside the decoder layers (for the backward pass, model/backward.h).
    const WeightRef& embed_weight() const { return embed_; }
    const WeightRef& lm_head_weight() const { return lm_head_; }
    const std::vector<float>& final_norm_weight() const { return final_norm_; }
    const std::vector<float>& rope_freqs() const { return inv_freq_; }  // [head_dim / 2]

    KVCache make_cache(int max_tokens) const;

    // Runs tokens[0..T) at positions pos0.. . With a cache, pos0 must equal
    // cache->n and the keys/values are appended (attention sees the cached
    // prefix); without one, attention sees only these T tokens.
    // logits: [T, V] or nullptr.
    void forward(const int32_t* tokens, int T, int pos0, KVCache* cache, float* logits, const RunHooks& hooks = {});
    // As forward, but only the last token's logits: [V].
    void forward_last(const int32_t* tokens, int T, int pos0, KVCache* cache, float* logits, const RunHooks& hooks = {});
    // Σ_{t<T-1} -log p(tokens[t+1] | tokens[..t]), over T-1 predictions from position 0.
    // per_position: optional [T-1] output of the single terms.
    double nll_sum(const int32_t* tokens, int T, const RunHooks& hooks = {}, float* per_position = nullptr);
    // Layer-major runs (the graph split: each layer's weights read once for
    // many windows): embed tokens into a residual stream x [T, H], then advance
    // it one layer at a time from position 0, without a KV cache. embed then
    // run_layer for l = 0..L-1 is exactly forward's computation.
    void embed(const int32_t* tokens, int T, float* x) const;
    void run_layer(int l, float* x, int T, const RunHooks& hooks = {});
    // nll_sum's tail on a stream x [T, H] after the last layer (final norm, lm_head).
    double nll_sum_of_stream(const float* x, const int32_t* tokens, int T, float* per_position = nullptr);
    // Drops layer l's weight pages from the resident set (the page cache keeps
    // them; the next use maps them again): layer-major runs over a large model
    // keep one layer resident. A no-op for weights not read from a file mapping.
    void release_layer(int l) const;
    // The final hidden states (after the final RMSNorm, the lm_head input) of
    // tokens[0..T) from position 0: out [T, H].
    void final_hidden(const int32_t* tokens, int T, float* out);

    // Bytes of every weight tensor the engine uses (each tensor once).
    size_t weight_bytes() const { return weight_bytes_; }
    // Weight bytes read to decode one token: every matrix but the embedding
    // table (one row of it), routed experts counted at their top-k / E share.
    double bytes_per_token() const { return bytes_per_token_; }
    // Weights used per token in matrix products, counted the same way: the
    // "parameters" of the 2·params·tokens FLOP count.
    double matmul_params_per_token() const { return params_per_token_; }

    struct Workspace;

private:
    Model();
    void run_layers(const int32_t* tokens, int T, int pos0, KVCache* cache, const RunHooks& hooks);
    LayerBuffers layer_buffers(int T, bool cached);  // the workspace grown for T tokens
    void final_norm(int T);
    double nll_of_normed(const int32_t* tokens, int T, float* per_position);  // on ws_->xn

    const TensorStore* store_ = nullptr;  // the checkpoint's (outlives the model)
    ModelConfig cfg_;
    std::vector<LayerWeights> layers_;
    WeightRef embed_, lm_head_;
    std::vector<float> final_norm_;
    std::vector<float> inv_freq_;  // RoPE [head_dim / 2]
    size_t weight_bytes_ = 0;
    double bytes_per_token_ = 0, params_per_token_ = 0;
    std::unique_ptr<Workspace> ws_;
};

// ---- generation ----------------------------------------------------------------

struct GenerateOptions {
    int max_new_tokens = 64;
    float temperature = 0.0f;  // 0: greedy (argmax, ties to the lower id)
    float top_p = 1.0f;        // nucleus sampling mass when temperature > 0
    uint64_t seed = 0;
    bool stop_at_eos = true;   // the EOS token itself is not returned
};

// Decodes after `prompt` with a KV cache; returns the new tokens. on_token is
// called with each one as it is chosen. Throws when prompt + new tokens exceed
// max_position_embeddings.
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                              const std::function<void(int32_t)>& on_token = {});

// Next token from logits [V]: greedy when temperature == 0, else temperature +
// top-p sampling with `rng_state` (a moefy::Rng).
class Rng;
int32_t sample_token(const float* logits, int V, float temperature, float top_p, Rng& rng);

}  // namespace moefy
