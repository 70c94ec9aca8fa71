#include "model/checkpoint.h"

#include <filesystem>
#include <map>
#include <set>

#include "common/error.h"
#include "common/warn.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/gguf_checkpoint.h"
#include "model/tensor_names.h"

namespace moefy {

namespace {

// Every tensor the architecture needs, with its shape, so that a checkpoint
// that opens is one the engine and the converter can use.
// Records every name it is asked for, so that check_tensors can tell which tensors are extra.
struct ExpectedTensors {
    const TensorStore& store;
    std::set<std::string> names;
    const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) {
        names.insert(name);
        return store.get(name, shape);
    }
    const TensorView* find(const std::string& name) const { return store.find(name); }
    // Part of the layout when present, used by nothing moefy runs (e.g. llama-moe's training-time gate noise).
    void optional(const std::string& name) { names.insert(name); }
};

// "model.layers.<n>." prefix: the layer number, else -1.
long layer_of(const std::string& name) {
    static const std::string pre = "model.layers.";
    if (name.compare(0, pre.size(), pre) != 0) return -1;
    size_t i = pre.size(), j = i;
    while (j < name.size() && j - i < 9 && name[j] >= '0' && name[j] <= '9') ++j;
    return j > i && j < name.size() && name[j] == '.' ? std::stol(name.substr(i, j - i)) : -1;
}

void check_tensors(const ModelConfig& c, const TensorStore& store, const std::string& dir) {
    ExpectedTensors t{store, {}};
    const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim;
    const int64_t Q = int64_t(c.num_heads) * D, KV = int64_t(c.num_kv_heads) * D;
    t.get(names::embed(), {V, H});
    t.get(names::final_norm(), {H});
    if (!c.tie_word_embeddings || t.find(names::lm_head())) t.get(names::lm_head(), {V, H});
    const MoEConfig& m = c.moe;
    for (int l = 0; l < c.num_layers; ++l) {
        t.get(names::attn(l, "q"), {Q, H});
        t.get(names::attn(l, "k"), {KV, H});
        t.get(names::attn(l, "v"), {KV, H});
        t.get(names::attn(l, "o"), {H, Q});
        t.get(names::input_norm(l), {H});
        t.get(names::post_norm(l), {H});
        const int64_t E = m.num_experts;
        switch (c.kind) {
            case ModelKind::Dense: {
                const int64_t I = c.intermediate_size;
                t.get(names::dense_ffn(l, "gate"), {I, H});
                t.get(names::dense_ffn(l, "up"), {I, H});
                t.get(names::dense_ffn(l, "down"), {H, I});
                break;
            }
            case ModelKind::LlamaMoE:
            case ModelKind::LlamaMoEResidual: {
                const char* pre = c.kind == ModelKind::LlamaMoE ? "mlp" : "mlp.moe_layer";
                for (int e = 0; e < E; ++e) {
                    const int64_t w = m.expert_widths[size_t(l)][size_t(e)];
                    t.get(names::llama_moe_expert(l, "gate", e, pre), {w, H});
                    t.get(names::llama_moe_expert(l, "up", e, pre), {w, H});
                    t.get(names::llama_moe_expert(l, "down", e, pre), {H, w});
                }
                if (m.gate_network == "mlp") {
                    t.get(names::llama_moe_gate_mlp(l, 0, pre), {E, H});
                    t.get(names::llama_moe_gate_mlp(l, 2, pre), {E, E});
                } else {
                    t.get(names::llama_moe_gate_linear(l, pre), {E, H});
                }
                for (int r = 0; r < m.num_shared; ++r) {
                    const int64_t w = m.shared_widths[size_t(l)][size_t(r)];
                    t.get(names::llama_moe_residual_expert(l, "gate", r), {w, H});
                    t.get(names::llama_moe_residual_expert(l, "up", r), {w, H});
                    t.get(names::llama_moe_residual_expert(l, "down", r), {H, w});
                }
                if (m.num_shared > 0) t.get(names::llama_moe_residual_gate(l), {m.num_shared, H});
                t.optional(names::llama_moe_noise(l, pre));
                break;
            }
            case ModelKind::Mixtral: {
                t.get(names::mixtral_router(l), {E, H});
                for (int e = 0; e < E; ++e) {
                    const int64_t w = m.expert_widths[size_t(l)][size_t(e)];
                    t.get(names::mixtral_expert(l, e, "w1"), {w, H});
                    t.get(names::mixtral_expert(l, e, "w3"), {w, H});
                    t.get(names::mixtral_expert(l, e, "w2"), {H, w});
                }
                break;
            }
            case ModelKind::Deepseek: {
                t.get(names::deepseek_router(l), {E, H});
                for (int e = 0; e < E; ++e) {
                    const int64_t w = m.expert_widths[size_t(l)][size_t(e)];
                    t.get(names::deepseek_expert(l, e, "gate"), {w, H});
                    t.get(names::deepseek_expert(l, e, "up"), {w, H});
                    t.get(names::deepseek_expert(l, e, "down"), {H, w});
                }
                if (m.num_shared > 0) {
                    const int64_t w = m.shared_widths[size_t(l)][0];
                    t.get(names::deepseek_shared(l, "gate"), {w, H});
                    t.get(names::deepseek_shared(l, "up"), {w, H});
                    t.get(names::deepseek_shared(l, "down"), {H, w});
                }
                break;
            }
        }
    }
    // Tensors the architecture does not name: a layer beyond num_hidden_layers means the
    // config and the weights disagree (refused); anything else is copied through by
    // convert, which the user should know about.
    for (const std::string& n : store.names()) {
        if (t.names.count(n)) continue;
        const long l = layer_of(n);
        if (l >= c.num_layers)
            fail("{}: config.json says num_hidden_layers {} but the checkpoint holds tensor '{}' of layer {}", dir,
                 c.num_layers, n, l);
        warn("{}: tensor '{}' is not part of the {} architecture (convert copies it unchanged)", dir, n,
             model_kind_name(c.kind));
    }
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
    namespace fs = std::filesystem;
    if (is_gguf_file(dir)) {
        Checkpoint ck = open_gguf_checkpoint(dir);
        check_tensors(ck.config, *ck.tensors, dir);
        warn_non_finite(*ck.tensors);
        return ck;
    }
    if (!fs::is_directory(dir)) fail("{}: model directory does not exist", dir);
    const std::string cfg_path = (fs::path(dir) / "config.json").string();
    if (!fs::exists(cfg_path)) fail("{}: no config.json (expected a Hugging Face model directory)", dir);
    Checkpoint ck;
    ck.dir = dir;
    ck.config = ModelConfig::load(cfg_path);
    ck.tensors = TensorStore::open_dir(dir);
    check_tensors(ck.config, *ck.tensors, dir);
    warn_non_finite(*ck.tensors);
    return ck;
}

DType Checkpoint::main_dtype() const {
    std::map<DType, size_t> bytes;
    for (const std::string& name : tensors->names()) {
        const TensorView& t = tensors->get(name);
        bytes[t.dtype] += t.nbytes;
    }
    DType best = DType::F32;
    size_t most = 0;
    for (auto [d, n] : bytes)
        if (n > most) most = n, best = d;
    return best;
}

}  // namespace moefy
