// Model loading (weight references into the checkpoint mapping) and the
// forward pass over one token sequence.
#include "model/llama.h"
#include "model/scratch.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/decoder_layer.h"
#include "model/expected_tensors.h"
#include "model/layers.h"
#include "model/moe_ffn.h"
#include "common/parallel.h"
#include "model/tensor_names.h"
#include "model/vec_math.h"

namespace moefy {

// Activations of the current batch, grown to the largest T seen.
struct Model::Workspace {
    std::vector<float> x;     // [T, H] residual stream
    std::vector<float> xn;    // [T, H] normed input of the current sub-block
    std::vector<float> q;     // [T, heads·d]
    std::vector<float> k, v;  // [T, kv_heads·d] when there is no cache
    std::vector<float> att;   // [T, heads·d]
    std::vector<float> g, u, h;  // [T, I] dense FFN
    std::vector<float> logits_block;
    MoEScratch moe;
};

namespace {

// Collects weight references and counts their bytes. Shapes come from the
// architecture's tensor list (model/expected_tensors.h), not restated here.
struct Loader {
    Loader(const ModelConfig& c, const TensorStore& store) : ts(store) {
        for (ExpectedTensor& e : expected_tensors(c)) shapes.emplace(e.name, std::move(e.shape));
    }
    const TensorStore& ts;
    std::unordered_map<std::string, std::vector<int64_t>> shapes;
    size_t bytes = 0;

    const TensorView& get(const std::string& name) {
        auto it = shapes.find(name);
        if (it == shapes.end()) fail("{}: the engine asked for '{}', which the architecture does not list", ts.location(), name);
        const TensorView& t = ts.get(name, it->second);
        bytes += t.nbytes;
        return t;
    }
    WeightRef weight(const std::string& name) { return weight_ref(get(name)); }
    std::vector<float> vec(const std::string& name) { return ts.read_f32(get(name).name); }
    FfnWeights ffn(const std::string& gate, const std::string& up, const std::string& down) {
        return {weight(gate), weight(up), weight(down)};
    }
};

size_t ffn_bytes(const FfnWeights& f) { return f.gate.nbytes() + f.up.nbytes() + f.down.nbytes(); }
double ffn_params(const FfnWeights& f) { return double(f.gate.rows * f.gate.cols + f.up.rows * f.up.cols + f.down.rows * f.down.cols); }

void load_moe(const ModelConfig& c, int l, Loader& ld, MoEWeights& mw) {
    const MoEConfig& m = c.moe;
    const int64_t E = m.num_experts;
    switch (c.kind) {
        case ModelKind::LlamaMoE:
        case ModelKind::LlamaMoEResidual: {
            const char* pre = c.kind == ModelKind::LlamaMoE ? "mlp" : "mlp.moe_layer";
            for (int e = 0; e < E; ++e)
                mw.experts.push_back(ld.ffn(names::llama_moe_expert(l, "gate", e, pre), names::llama_moe_expert(l, "up", e, pre),
                                            names::llama_moe_expert(l, "down", e, pre)));
            if (m.gate_network == "mlp") {
                mw.router_w1 = ld.weight(names::llama_moe_gate_mlp(l, 0, pre));
                mw.router_w2 = ld.weight(names::llama_moe_gate_mlp(l, 2, pre));
            } else {
                mw.router = ld.weight(names::llama_moe_gate_linear(l, pre));
            }
            for (int r = 0; r < m.num_shared; ++r)
                mw.shared.push_back(ld.ffn(names::llama_moe_residual_expert(l, "gate", r),
                                           names::llama_moe_residual_expert(l, "up", r),
                                           names::llama_moe_residual_expert(l, "down", r)));
            if (m.num_shared > 0) mw.shared_gate = ld.weight(names::llama_moe_residual_gate(l));
            break;
        }
        case ModelKind::Mixtral:
            mw.router = ld.weight(names::mixtral_router(l));
            for (int e = 0; e < E; ++e)
                mw.experts.push_back(ld.ffn(names::mixtral_expert(l, e, "w1"), names::mixtral_expert(l, e, "w3"),
                                            names::mixtral_expert(l, e, "w2")));
            break;
        case ModelKind::Deepseek:
            mw.router = ld.weight(names::deepseek_router(l));
            for (int e = 0; e < E; ++e)
                mw.experts.push_back(ld.ffn(names::deepseek_expert(l, e, "gate"), names::deepseek_expert(l, e, "up"),
                                            names::deepseek_expert(l, e, "down")));
            if (m.num_shared > 0)
                mw.shared.push_back(ld.ffn(names::deepseek_shared(l, "gate"), names::deepseek_shared(l, "up"),
                                           names::deepseek_shared(l, "down")));
            break;
        case ModelKind::Dense: break;
    }
}

}  // namespace

Model::Model() : ws_(std::make_unique<Workspace>()) {}
Model::~Model() = default;

std::unique_ptr<Model> Model::load(const Checkpoint& ckpt) { return load(ckpt.config, *ckpt.tensors); }

std::unique_ptr<Model> Model::load(const ModelConfig& c, const TensorStore& ts) {
    std::unique_ptr<Model> m(new Model());
    m->cfg_ = c;
    m->store_ = &ts;
    const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim;
    const int64_t Q = int64_t(c.num_heads) * D, KV = int64_t(c.num_kv_heads) * D;
    if (D % 2 != 0) fail("{}: head_dim {} must be even for RoPE", ts.location(), D);
    Loader ld(c, ts);
    m->embed_ = ld.weight(names::embed());
    m->lm_head_ = c.tie_word_embeddings ? m->embed_ : ld.weight(names::lm_head());
    m->final_norm_ = ld.vec(names::final_norm());
    double bytes_tok = double(m->lm_head_.nbytes()) + double(H) * dtype_size(m->embed_.dtype);
    double params_tok = double(V * H);
    const MoEConfig& moe = c.moe;
    for (int l = 0; l < c.num_layers; ++l) {
        LayerWeights L;
        L.input_norm = ld.vec(names::input_norm(l));
        L.post_norm = ld.vec(names::post_norm(l));
        L.q = ld.weight(names::attn(l, "q"));
        L.k = ld.weight(names::attn(l, "k"));
        L.v = ld.weight(names::attn(l, "v"));
        L.o = ld.weight(names::attn(l, "o"));
        bytes_tok += double(L.q.nbytes() + L.k.nbytes() + L.v.nbytes() + L.o.nbytes());
        params_tok += double(2 * Q * H + 2 * KV * H);
        L.is_moe = c.is_moe();
        if (!L.is_moe) {
            L.ffn = ld.ffn(names::dense_ffn(l, "gate"), names::dense_ffn(l, "up"), names::dense_ffn(l, "down"));
            bytes_tok += double(ffn_bytes(L.ffn));
            params_tok += ffn_params(L.ffn);
        } else {
            load_moe(c, l, ld, L.moe);
            const MoEWeights& mw = L.moe;
            const double share = double(moe.top_k) / double(moe.num_experts);
            for (const WeightRef* r : {&mw.router, &mw.router_w1, &mw.router_w2, &mw.shared_gate}) {
                bytes_tok += double(r->nbytes());
                params_tok += double(r->rows * r->cols);
            }
            for (const FfnWeights& f : mw.experts) bytes_tok += share * double(ffn_bytes(f)), params_tok += share * ffn_params(f);
            for (const FfnWeights& f : mw.shared) bytes_tok += double(ffn_bytes(f)), params_tok += ffn_params(f);
        }
        m->layers_.push_back(std::move(L));
    }
    m->weight_bytes_ = ld.bytes;
    m->bytes_per_token_ = bytes_tok;
    m->params_per_token_ = params_tok;
    m->inv_freq_ = layers::rope_inv_freq(c);
    return m;
}

KVCache Model::make_cache(int max_tokens) const {
    if (max_tokens <= 0) fail("KV cache: max_tokens must be positive, got {}", max_tokens);
    return KVCache(cfg_.num_layers, max_tokens, cfg_.num_kv_heads * cfg_.head_dim);
}

LayerBuffers Model::layer_buffers(int T, bool cached) {
    const ModelConfig& c = cfg_;
    const int H = c.hidden_size, D = c.head_dim, Qd = c.num_heads * D, KVd = c.num_kv_heads * D;
    Workspace& w = *ws_;
    float* xn = grow(w.xn, size_t(T) * H);
    float* q = grow(w.q, size_t(T) * Qd);
    float* att = grow(w.att, size_t(T) * Qd);
    if (!cached) grow(w.k, size_t(T) * KVd), grow(w.v, size_t(T) * KVd);
    if (!c.is_moe()) {
        const size_t I = size_t(c.intermediate_size);
        grow(w.g, size_t(T) * I), grow(w.u, size_t(T) * I), grow(w.h, size_t(T) * I);
    }
    return {xn, q, att, w.g.data(), w.u.data(), w.h.data(), &w.moe, nullptr};
}

void Model::embed(const int32_t* tokens, int T, float* x) const { gather_rows(embed_, tokens, T, x); }

void Model::run_layer(int l, float* x, int T, const RunHooks& hooks) {
    const ModelConfig& c = cfg_;
    if (l < 0 || l >= c.num_layers) fail("run_layer: layer {} of a {}-layer model", l, c.num_layers);
    if (T <= 0) fail("forward: empty token batch");
    if (c.max_position_embeddings > 0 && T > c.max_position_embeddings)
        fail("forward: context of {} tokens exceeds max_position_embeddings {} of the model", T, c.max_position_embeddings);
    const LayerBuffers buf = layer_buffers(T, false);
    Workspace& w = *ws_;
    const LayerKV kv{w.k.data(), w.v.data(), w.k.data(), w.v.data(), T, 0};
    decoder_layer_forward(c, l, layers_[size_t(l)], inv_freq_, x, T, 0, kv, buf, hooks);
}

void Model::run_layers(const int32_t* tokens, int T, int pos0, KVCache* cache, const RunHooks& hooks) {
    const ModelConfig& c = cfg_;
    const int H = c.hidden_size, KVd = c.num_kv_heads * c.head_dim;
    if (T <= 0) fail("forward: empty token batch");
    if (pos0 < 0) fail("forward: negative start position {}", pos0);
    if (c.max_position_embeddings > 0 && int64_t(pos0) + T > c.max_position_embeddings)
        fail("forward: context of {} tokens exceeds max_position_embeddings {} of the model", int64_t(pos0) + T,
             c.max_position_embeddings);
    if (cache) {
        if (cache->layers != c.num_layers || cache->kv_dim != KVd) fail("forward: KV cache was made for another model");
        if (pos0 != cache->n) fail("forward: start position {} but the KV cache holds {} tokens", pos0, cache->n);
        if (pos0 + T > cache->max_tokens)
            fail("forward: {} tokens do not fit the KV cache of {} tokens", pos0 + T, cache->max_tokens);
    }
    Workspace& w = *ws_;
    float* x = grow(w.x, size_t(T) * H);
    gather_rows(embed_, tokens, T, x);  // x: [T, H]
    const LayerBuffers buf = layer_buffers(T, cache != nullptr);
    for (int l = 0; l < c.num_layers; ++l) {
        // k, v go straight into the cache rows of these positions
        LayerKV kv;
        if (cache)
            kv = {cache->k_at(l, pos0), cache->v_at(l, pos0), cache->k_at(l, 0), cache->v_at(l, 0), pos0 + T, 0};
        else
            kv = {w.k.data(), w.v.data(), w.k.data(), w.v.data(), T, pos0};
        decoder_layer_forward(c, l, layers_[size_t(l)], inv_freq_, x, T, pos0, kv, buf, hooks);
    }
    if (cache) cache->n = pos0 + T;
}

void Model::final_norm(int T) {
    layers::rmsnorm(ws_->x.data(), final_norm_.data(), T, cfg_.hidden_size, cfg_.rms_norm_eps, ws_->xn.data());
}

void Model::forward(const int32_t* tokens, int T, int pos0, KVCache* cache, float* logits, const RunHooks& hooks) {
    run_layers(tokens, T, pos0, cache, hooks);
    if (!logits) return;
    final_norm(T);
    matmul(ws_->xn.data(), T, lm_head_, logits);
}

void Model::forward_last(const int32_t* tokens, int T, int pos0, KVCache* cache, float* logits, const RunHooks& hooks) {
    run_layers(tokens, T, pos0, cache, hooks);
    const int H = cfg_.hidden_size;
    float* last = ws_->x.data() + size_t(T - 1) * H;
    layers::rmsnorm(last, final_norm_.data(), 1, H, cfg_.rms_norm_eps, ws_->xn.data());
    matmul(ws_->xn.data(), 1, lm_head_, logits);
}

void Model::final_hidden(const int32_t* tokens, int T, float* out) {
    run_layers(tokens, T, 0, nullptr, {});
    final_norm(T);
    std::copy_n(ws_->xn.data(), size_t(T) * size_t(cfg_.hidden_size), out);
}

double Model::nll_sum(const int32_t* tokens, int T, const RunHooks& hooks, float* per_position) {
    run_layers(tokens, T, 0, nullptr, hooks);
    if (T - 1 <= 0) return 0.0;
    final_norm(T - 1);
    return nll_of_normed(tokens, T, per_position);
}

double Model::nll_sum_of_stream(const float* x, const int32_t* tokens, int T, float* per_position) {
    if (T - 1 <= 0) return 0.0;
    layers::rmsnorm(x, final_norm_.data(), T - 1, cfg_.hidden_size, cfg_.rms_norm_eps,
                    grow(ws_->xn, size_t(T - 1) * size_t(cfg_.hidden_size)));
    return nll_of_normed(tokens, T, per_position);
}

void Model::release_layer(int l) const {
    const std::string prefix = names::layer_prefix(l);
    for (const std::string& name : store_->names())
        if (name.rfind(prefix, 0) == 0) store_->release(store_->get(name));
}

double Model::nll_of_normed(const int32_t* tokens, int T, float* per_position) {
    const int n = T - 1;  // predictions
    const int V = cfg_.vocab_size;
    // Logits in vocabulary blocks with a running log-sum-exp per token, so no
    // [T, V] buffer exists and lm_head is converted once.
    const int vb = std::min(V, 2048);
    float* blk = grow(ws_->logits_block, size_t(n) * size_t(vb));  // [n, vb]
    std::vector<float> mx(static_cast<size_t>(n), -std::numeric_limits<float>::infinity());
    std::vector<double> se(static_cast<size_t>(n), 0.0);
    std::vector<float> target(static_cast<size_t>(n), 0.0f);
    for (int v0 = 0; v0 < V; v0 += vb) {
        const int nb = std::min(vb, V - v0);
        matmul(ws_->xn.data(), n, lm_head_.slice_rows(v0, nb), blk);
        parallel_for_each(
            n,
            [&](int64_t t) {
                float* row = blk + size_t(t) * nb;
                const int y = tokens[t + 1];
                if (y >= v0 && y < v0 + nb) target[size_t(t)] = row[y - v0];
                const float m = std::max(mx[size_t(t)], vmath::max_of(row, size_t(nb)));
                se[size_t(t)] = se[size_t(t)] * std::exp(double(mx[size_t(t)] - m)) + vmath::exp_shifted(row, m, row, size_t(nb));
                mx[size_t(t)] = m;
            },
            int64_t(n) * nb >= (1 << 16));
    }
    double total = 0.0;
    for (int t = 0; t < n; ++t) {
        const double nll = double(mx[size_t(t)]) + std::log(se[size_t(t)]) - double(target[size_t(t)]);
        if (per_position) per_position[t] = float(nll);
        total += nll;
    }
    return total;
}

}  // namespace moefy
