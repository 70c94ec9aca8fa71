#include "model/gguf_checkpoint.h"

#include <cstring>
#include <set>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/warn.h"
#include "io/gguf.h"
#include "io/json.h"
#include "model/expected_tensors.h"
#include "model/tensor_names.h"

namespace moefy {

using nlohmann::json;

namespace {

// Keeps the mapping and the buffers made at load alive as long as the TensorStore.
struct GgufOwner {
    GgufFile file;
    std::vector<std::vector<uint8_t>> buffers;  // moved, never copied: data pointers stay valid
};

DType dtype_of(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return DType::F32;
        case GgmlType::F16: return DType::F16;
        case GgmlType::BF16: return DType::BF16;
        case GgmlType::Q8_0: return DType::F32;  // dequantised
    }
    return DType::F32;
}

class ViewBuilder {
public:
    ViewBuilder(GgufOwner& o) : o_(o), g_(o.file) {}

    // The whole of GGUF tensor `gname` as HF tensor `hname` (shapes checked against the list before).
    void add(const std::string& gname, const std::string& hname, const std::vector<int64_t>& shape) {
        const GgufTensorInfo& t = g_.tensor(gname);
        push(t, hname, shape, t.data, t.numel());
    }
    bool add_optional(const std::string& gname, const std::string& hname, const std::vector<int64_t>& shape) {
        if (!g_.find_tensor(gname)) return false;
        add(gname, hname, shape);
        return true;
    }
    // Slice e of a stacked [E, rows, cols] tensor.
    void add_expert(const std::string& gname, int e, const std::string& hname, const std::vector<int64_t>& stacked) {
        const GgufTensorInfo& t = g_.tensor(gname);
        const int64_t per = stacked[1] * stacked[2];
        const size_t bytes_per = ggml_nbytes(t.type, {per});
        push(t, hname, {stacked[1], stacked[2]}, t.data + size_t(e) * bytes_per, per);
    }
    // q or k [heads·D, H] with llama.cpp's RoPE row order undone: GGUF row
    // h·D + 2r + j holds HF row h·D + j·D/2 + r (r < D/2, j ∈ {0, 1}).
    void add_unpermuted(const std::string& gname, const std::string& hname, int64_t heads, int64_t D, int64_t H) {
        const GgufTensorInfo& t = g_.tensor(gname);
        const DType dt = dtype_of(t.type);
        const size_t row = size_t(H) * dtype_size(dt);
        std::vector<uint8_t> buf(size_t(heads * D) * row);
        std::vector<float> f(t.type == GgmlType::Q8_0 ? size_t(H) : 0);
        const size_t in_row = ggml_nbytes(t.type, {H});
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t r = 0; r < D / 2; ++r)
                for (int64_t j = 0; j < 2; ++j) {
                    const int64_t from = h * D + 2 * r + j, to = h * D + j * (D / 2) + r;
                    uint8_t* dst = buf.data() + size_t(to) * row;
                    if (t.type == GgmlType::Q8_0) {
                        dequantize_q8_0(t.data + size_t(from) * in_row, f.data(), size_t(H));
                        std::memcpy(dst, f.data(), row);
                    } else {
                        std::memcpy(dst, t.data + size_t(from) * in_row, row);
                    }
                }
        own(hname, dt, {heads * D, H}, std::move(buf));
    }
    std::vector<TensorView> take() { return std::move(views_); }

private:
    void push(const GgufTensorInfo& t, const std::string& hname, std::vector<int64_t> shape, const uint8_t* data, int64_t n) {
        if (t.type == GgmlType::Q8_0) {
            std::vector<uint8_t> buf(size_t(n) * 4);
            dequantize_q8_0(data, reinterpret_cast<float*>(buf.data()), size_t(n));
            own(hname, DType::F32, std::move(shape), std::move(buf));
            return;
        }
        TensorView v;
        v.name = hname;
        v.dtype = dtype_of(t.type);
        v.shape = std::move(shape);
        v.data = data;
        v.nbytes = size_t(n) * dtype_size(v.dtype);
        v.file = g_.mapping();
        views_.push_back(std::move(v));
    }
    void own(const std::string& hname, DType dt, std::vector<int64_t> shape, std::vector<uint8_t> buf) {
        TensorView v;
        v.name = hname;
        v.dtype = dt;
        v.shape = std::move(shape);
        v.data = buf.data();
        v.nbytes = buf.size();
        v.file = nullptr;
        o_.buffers.push_back(std::move(buf));
        views_.push_back(std::move(v));
    }
    GgufOwner& o_;
    const GgufFile& g_;
    std::vector<TensorView> views_;
};

}  // namespace

Checkpoint open_gguf_checkpoint(const std::string& path) {
    auto owner = std::make_shared<GgufOwner>();
    owner->file = open_gguf(path);
    const GgufFile& g = owner->file;
    const std::string arch = g.get_str("general.architecture");
    if (arch != "llama" && arch != "deepseek")
        fail("{}: general.architecture '{}' is not supported (moefy runs llama and deepseek GGUF files)", path, arch);
    const std::string p = arch + ".";
    const int64_t H = g.get_int(p + "embedding_length"), L = g.get_int(p + "block_count");
    const int64_t heads = g.get_int(p + "attention.head_count"), kv_heads = g.get_int(p + "attention.head_count_kv", heads);
    if (H <= 0 || L <= 0 || heads <= 0 || kv_heads <= 0) fail("{}: non-positive model dimensions in the metadata", path);
    const int64_t D = g.get_int(p + "attention.key_length", H / heads);
    if (g.get_int(p + "rope.dimension_count", D) != D)
        fail("{}: {}rope.dimension_count {} differs from the head size {} (partial RoPE is not supported)", path, p,
             g.get_int(p + "rope.dimension_count"), D);
    const GgufTensorInfo& embd = g.tensor("token_embd.weight");
    if (embd.ne.size() != 2 || embd.ne[0] != H) fail("{}: token_embd.weight must be {{{}, n_vocab}}", path, H);
    const int64_t V = embd.ne[1];

    json c;
    c["vocab_size"] = V;
    c["hidden_size"] = H;
    c["num_hidden_layers"] = L;
    c["num_attention_heads"] = heads;
    c["num_key_value_heads"] = kv_heads;
    c["head_dim"] = D;
    c["max_position_embeddings"] = g.get_int(p + "context_length", 2048);
    c["rms_norm_eps"] = g.get_float(p + "attention.layer_norm_rms_epsilon");
    c["rope_theta"] = g.get_float(p + "rope.freq_base", 10000.0);
    c["hidden_act"] = "silu";
    c["tie_word_embeddings"] = g.find_tensor("output.weight") == nullptr;
    c["bos_token_id"] = g.get_int("tokenizer.ggml.bos_token_id", 1);
    c["eos_token_id"] = g.get_int("tokenizer.ggml.eos_token_id", 2);
    const std::string scaling = g.get_str(p + "rope.scaling.type", "none");
    if (scaling == "linear") c["rope_scaling"] = {{"type", "linear"}, {"factor", g.get_float(p + "rope.scaling.factor")}};
    else if (scaling != "none") fail("{}: {}rope.scaling.type '{}' is not supported (none or linear)", path, p, scaling);
    if (g.find_tensor("rope_freqs.weight")) {
        // llama3 frequency factors: moefy records the HF parameters they came from.
        if (!g.find("moefy.rope_scaling"))
            fail("{}: rope_freqs.weight (LLaMA-3 RoPE scaling) is supported only in files moefy wrote (moefy.rope_scaling)", path);
        c["rope_scaling"] = parse_json(g.get_str("moefy.rope_scaling"), path + ": moefy.rope_scaling");
    }
    const int64_t E = g.get_int(p + "expert_count", 0);
    const int64_t n_ff = g.get_int(p + "feed_forward_length", 0);
    int64_t w = 0, shared_w = 0;
    if (arch == "llama") {
        if (E == 0) {
            c["architectures"] = {"LlamaForCausalLM"};
            c["model_type"] = "llama";
            c["intermediate_size"] = n_ff;
        } else {
            c["architectures"] = {"MixtralForCausalLM"};
            c["model_type"] = "mixtral";
            c["num_local_experts"] = E;
            c["num_experts_per_tok"] = g.get_int(p + "expert_used_count");
            c["intermediate_size"] = n_ff;
            w = n_ff;
        }
    } else {
        if (E == 0) fail("{}: deepseek file without {}expert_count", path, p);
        if (g.get_int(p + "leading_dense_block_count") != 0)
            fail("{}: {}leading_dense_block_count {}: deepseek files with dense layers are not supported", path, p,
                 g.get_int(p + "leading_dense_block_count"));
        if (g.get_int(p + "expert_gating_func", 1) != 1) fail("{}: {}expert_gating_func must be softmax (1)", path, p);
        const double ws = g.get_float(p + "expert_weights_scale", 1.0);
        if (ws != 1.0) fail("{}: {}expert_weights_scale {} is not supported (moefy folds scales into the weights: 1.0)", path, p, ws);
        w = g.get_int(p + "expert_feed_forward_length");
        const int64_t ns = g.get_int(p + "expert_shared_count", 0);
        shared_w = ns * w;
        c["architectures"] = {"DeepseekForCausalLM"};
        c["model_type"] = "deepseek";
        c["n_routed_experts"] = E;
        c["num_experts_per_tok"] = g.get_int(p + "expert_used_count");
        c["moe_intermediate_size"] = w;
        c["n_shared_experts"] = ns;
        c["intermediate_size"] = n_ff > 0 ? n_ff : w * E;
        c["first_k_dense_replace"] = 0;
        c["norm_topk_prob"] = g.get_bool(p + "expert_weights_norm", false);
        c["scoring_func"] = "softmax";
    }
    json info = {{"architecture", arch}, {"file_type", g.get_int("general.file_type", -1)}, {"version", g.version()}};
    if (g.find("moefy.plan")) {
        const std::string where = path + ": moefy.plan";
        const json plan = parse_json(g.get_str("moefy.plan"), where);
        if (!plan.is_object()) fail("{}: moefy.plan is not a JSON object", path);
        // The summary fields inspect prints (convert/gguf.cpp writes them); checked here so a bad one is refused at open.
        (void)json_get_or(plan, "method", "", where);
        for (const char* k : {"padded_neurons", "stored_expert_width", "stored_shared_width"})
            if (json_get_or(plan, k, int64_t(0), where) < 0) fail("{}: field '{}' is negative", where, k);
        if (plan.contains("expert_widths")) {
            const json& w = plan["expert_widths"];
            bool ok = w.is_array();
            for (size_t l = 0; ok && l < w.size(); ++l) {
                ok = w[l].is_array();
                for (size_t e = 0; ok && e < w[l].size(); ++e) ok = json_int_in(w[l][e], 0, INT32_MAX);
            }
            if (!ok) fail("{}: field 'expert_widths' must be a list of lists of non-negative integers", where);
        }
        info["plan"] = plan;
    }
    c["gguf"] = info;

    // The file holds exactly llama.cpp's tensors for this metadata (model/expected_tensors.h);
    // shapes are checked here once, so the views below are built without restating them.
    GgufShape gs;
    gs.deepseek = arch == "deepseek";
    gs.layers = L, gs.hidden = H, gs.vocab = V, gs.q_rows = heads * D, gs.kv_rows = kv_heads * D;
    gs.ffn = n_ff, gs.experts = E, gs.expert_width = w, gs.shared_width = shared_w;
    gs.has_output = g.find_tensor("output.weight") != nullptr;
    gs.rope_freqs = g.find_tensor("rope_freqs.weight") ? D / 2 : 0;
    std::set<std::string> known;
    for_each_expected_gguf_tensor(gs, [&](const ExpectedTensor& e) {  // g.tensor throws at the first missing tensor
        known.insert(e.name);
        const GgufTensorInfo& t = g.tensor(e.name);
        if (t.ne != e.shape)
            fail("{}: tensor '{}' has ne {{{}}}, expected {{{}}} from the metadata", path, t.name, fmt::join(t.ne, ", "),
                 fmt::join(e.shape, ", "));
    });
    for (const GgufTensorInfo& t : g.tensors())
        if (!known.count(t.name)) warn("{}: tensor '{}' is not part of llama.cpp's {} layout (ignored)", path, t.name, arch);

    ViewBuilder vb(*owner);
    vb.add("token_embd.weight", names::embed(), {V, H});
    vb.add("output_norm.weight", names::final_norm(), {H});
    vb.add_optional("output.weight", names::lm_head(), {V, H});
    for (int l = 0; l < int(L); ++l) {
        const std::string b = fmt::format("blk.{}.", l);
        vb.add(b + "attn_norm.weight", names::input_norm(l), {H});
        vb.add(b + "ffn_norm.weight", names::post_norm(l), {H});
        vb.add_unpermuted(b + "attn_q.weight", names::attn(l, "q"), heads, D, H);
        vb.add_unpermuted(b + "attn_k.weight", names::attn(l, "k"), kv_heads, D, H);
        vb.add(b + "attn_v.weight", names::attn(l, "v"), {kv_heads * D, H});
        vb.add(b + "attn_output.weight", names::attn(l, "o"), {H, heads * D});
        if (E == 0) {
            vb.add(b + "ffn_gate.weight", names::dense_ffn(l, "gate"), {n_ff, H});
            vb.add(b + "ffn_up.weight", names::dense_ffn(l, "up"), {n_ff, H});
            vb.add(b + "ffn_down.weight", names::dense_ffn(l, "down"), {H, n_ff});
            continue;
        }
        const bool ds = arch == "deepseek";
        vb.add(b + "ffn_gate_inp.weight", ds ? names::deepseek_router(l) : names::mixtral_router(l), {E, H});
        for (int e = 0; e < int(E); ++e) {
            vb.add_expert(b + "ffn_gate_exps.weight", e, ds ? names::deepseek_expert(l, e, "gate") : names::mixtral_expert(l, e, "w1"), {E, w, H});
            vb.add_expert(b + "ffn_up_exps.weight", e, ds ? names::deepseek_expert(l, e, "up") : names::mixtral_expert(l, e, "w3"), {E, w, H});
            vb.add_expert(b + "ffn_down_exps.weight", e, ds ? names::deepseek_expert(l, e, "down") : names::mixtral_expert(l, e, "w2"), {E, H, w});
        }
        if (ds && shared_w > 0) {
            vb.add(b + "ffn_gate_shexp.weight", names::deepseek_shared(l, "gate"), {shared_w, H});
            vb.add(b + "ffn_up_shexp.weight", names::deepseek_shared(l, "up"), {shared_w, H});
            vb.add(b + "ffn_down_shexp.weight", names::deepseek_shared(l, "down"), {H, shared_w});
        }
    }
    Checkpoint ck;
    ck.dir = path;
    ck.config = ModelConfig::parse(c, path + " (GGUF metadata)");
    ck.tensors = TensorStore::from_views(path, vb.take(), owner);
    return ck;
}

}  // namespace moefy
