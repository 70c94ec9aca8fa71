// The GGUF layout (see convert/gguf.h): recipes for every GGUF tensor, streamed
// through TensorStreamer into write_gguf. Stacked expert tensors are E gathers
// into one sink; q8_0 output goes through a Q8Sink that quantises the f32 the
// streamer produces.
#include "convert/gguf.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <unordered_map>

#include "common/error.h"
#include "convert/layout.h"
#include "model/expected_tensors.h"
#include "model/tensor_names.h"

namespace moefy {

namespace fs = std::filesystem;
using nlohmann::json;

std::optional<GgmlType> parse_gguf_type(const std::string& s) {
    if (s == "same") return std::nullopt;
    if (s == "f32") return GgmlType::F32;
    if (s == "f16") return GgmlType::F16;
    if (s == "bf16") return GgmlType::BF16;
    if (s == "q8_0") return GgmlType::Q8_0;
    fail("--dtype '{}': expected same, bf16, f16, f32 or q8_0", s);
}

GgufOptions gguf_options(const ConvertOptions& opt) {
    GgufOptions g;
    if (opt.q8_0) g.type = GgmlType::Q8_0;
    else if (opt.dtype) g.type = *opt.dtype == DType::F32 ? GgmlType::F32 : *opt.dtype == DType::F16 ? GgmlType::F16 : GgmlType::BF16;
    return g;
}

MoEFormat gguf_routing_format(const ExpertPlan& plan) { return plan.num_shared() > 0 ? MoEFormat::Deepseek : MoEFormat::Mixtral; }

namespace {

// Tensors on 64-byte boundaries (general.alignment, which llama.cpp honours),
// not GGUF's default 32: the engine's AMX products load 64-byte weight rows,
// and rows that straddle two cache lines cost them 25-30% (README, "Engine kernels").
constexpr uint32_t kWriteAlignment = 64;

GgmlType ggml_of(DType d) {
    switch (d) {
        case DType::F32: return GgmlType::F32;
        case DType::F16: return GgmlType::F16;
        case DType::BF16: return GgmlType::BF16;
    }
    return GgmlType::F32;
}

// llama.cpp's LlamaFileType for general.file_type.
uint32_t file_type_of(GgmlType t) {
    switch (t) {
        case GgmlType::F32: return 0;
        case GgmlType::F16: return 1;
        case GgmlType::Q8_0: return 7;
        case GgmlType::BF16: return 32;
    }
    return 0;
}

enum class Kind { Copy, Rows, StackRows, StackCols, Router, Floats };

struct Recipe {
    GgufTensorSpec spec;             // as stored in the file
    DType produce = DType::F32;      // what the streamer writes (f32 when the file stores q8_0)
    Kind kind = Kind::Copy;
    const TensorView* src = nullptr;
    std::vector<int32_t> ids;                   // Rows
    std::vector<std::vector<int32_t>> parts;    // Stack*: neuron ids of each expert
    int64_t width = 0;                          // Stack*: padded width of each part
    float scale = 1.0f;                         // StackCols: folded output scale
    int layer = -1;                             // Router; StackCols from opt.down_proj[layer] when >= 0
    std::vector<float> floats;                  // Floats
};

// Collects the written bytes of one gather (the padded down projections).
struct VecSink : ByteSink {
    std::vector<uint8_t> data;
    void write(const void* p, size_t n) override {
        const uint8_t* b = static_cast<const uint8_t*>(p);
        data.insert(data.end(), b, b + n);
    }
};

// Row order of q / k in llama.cpp: GGUF row h·D + 2r + j takes HF row h·D + j·D/2 + r.
std::vector<int32_t> rope_permutation(int heads, int D) {
    std::vector<int32_t> ids(size_t(heads) * size_t(D));
    for (int h = 0; h < heads; ++h)
        for (int r = 0; r < D / 2; ++r)
            for (int j = 0; j < 2; ++j) ids[size_t(h * D + 2 * r + j)] = h * D + j * (D / 2) + r;
    return ids;
}

// LLaMA-3 RoPE frequency factors (what convert_hf_to_gguf.py writes as rope_freqs):
// 1 for short wavelengths, `factor` for long ones, smooth in between.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
    const RopeScaling& rs = c.rope_scaling;
    const double old_ctx = rs.original_max_position_embeddings;
    const double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
    std::vector<float> f;
    for (int i = 0; i < c.head_dim; i += 2) {
        const double freq = 1.0 / std::pow(c.rope_theta, double(i) / c.head_dim);
        const double wavelen = 2 * M_PI / freq;
        if (wavelen < high_wavelen) {
            f.push_back(1.0f);
        } else if (wavelen > low_wavelen) {
            f.push_back(float(rs.factor));
        } else {
            const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
            f.push_back(float(1.0 / ((1 - smooth) / rs.factor + smooth)));
        }
    }
    return f;
}

struct Builder {
    const Checkpoint& dense;
    const ModelConfig& cfg;
    std::optional<GgmlType> type;
    std::vector<Recipe> out;

    // The stored type of a weight matrix from `src`.
    GgmlType matrix_type(const TensorView& src) const { return type.value_or(ggml_of(src.dtype)); }
    static DType produce_of(GgmlType t, const TensorView* src) {
        switch (t) {
            case GgmlType::F32: return DType::F32;
            case GgmlType::F16: return DType::F16;
            case GgmlType::BF16: return DType::BF16;
            case GgmlType::Q8_0: return DType::F32;
        }
        return src ? src->dtype : DType::F32;
    }
    void check_q8(const Recipe& r) const {
        if (r.spec.type == GgmlType::Q8_0 && r.spec.ne[0] % kQ8Block != 0)
            fail("--dtype q8_0: tensor '{}' has rows of {} values, not a multiple of 32 (q8_0 stores blocks of 32 along "
                 "each row); use --dtype f16, bf16 or f32{}",
                 r.spec.name, r.spec.ne[0],
                 r.spec.name.find("_exps") != std::string::npos || r.spec.name.find("_shexp") != std::string::npos
                     ? ", or a plan whose expert width is a multiple of 32"
                     : "");
    }
    void add(Recipe r) {
        check_q8(r);
        out.push_back(std::move(r));
    }
    // A 1-D tensor (norm): always f32.
    void vec(const std::string& name, const std::string& hf) {
        const TensorView& t = dense.tensors->get(hf);
        Recipe r;
        r.spec = {name, GgmlType::F32, {t.numel()}};
        r.produce = DType::F32;
        r.kind = Kind::Copy;
        r.src = &t;
        add(std::move(r));
    }
    void matrix(const std::string& name, const TensorView& t) {
        Recipe r;
        r.spec = {name, matrix_type(t), {t.cols(), t.rows()}};
        r.produce = produce_of(r.spec.type, &t);
        r.kind = Kind::Copy;
        r.src = &t;
        add(std::move(r));
    }
    void permuted(const std::string& name, const TensorView& t, int heads) {
        Recipe r;
        r.spec = {name, matrix_type(t), {t.cols(), t.rows()}};
        r.produce = produce_of(r.spec.type, &t);
        r.kind = Kind::Rows;
        r.src = &t;
        r.ids = rope_permutation(heads, cfg.head_dim);
        add(std::move(r));
    }
    // [parts, width, H] from rows of `t` (gate/up), or [parts, H, width] from its columns (down).
    void stack(const std::string& name, const TensorView& t, std::vector<std::vector<int32_t>> parts, int64_t width,
               bool columns, float scale, bool flat) {
        Recipe r;
        const int64_t P = int64_t(parts.size());
        r.spec.name = name;
        r.spec.type = matrix_type(t);
        if (columns) r.spec.ne = flat ? std::vector<int64_t>{width, t.rows()} : std::vector<int64_t>{width, t.rows(), P};
        else r.spec.ne = flat ? std::vector<int64_t>{t.cols(), width} : std::vector<int64_t>{t.cols(), width, P};
        r.produce = produce_of(r.spec.type, &t);
        r.kind = columns ? Kind::StackCols : Kind::StackRows;
        r.src = &t;
        r.parts = std::move(parts);
        r.width = width;
        r.scale = scale;
        add(std::move(r));
    }
};

void put(std::vector<GgufKV>& kv, std::string key, GgufValue v) { kv.push_back({std::move(key), std::move(v)}); }

}  // namespace

GgufReport convert_to_gguf(const Checkpoint& dense, const ExpertPlan* plan, const std::string& out_path,
                           const ConvertOptions& opt_in, const GgufOptions& gopt, const ConvertProgress& progress) {
    const auto t0 = std::chrono::steady_clock::now();
    const ModelConfig& cfg = dense.config;
    if (cfg.is_moe())
        fail("{}: is already an MoE model ({}); convert takes a dense LLaMA-family model", dense.dir, model_kind_name(cfg.kind));
    if (out_path.empty()) fail("--out: output path is empty");
    if (fs::exists(out_path) && !opt_in.force) fail("{}: output already exists (use --force to replace it)", out_path);
    if (fs::is_directory(out_path)) fail("{}: is a directory; --format gguf writes one file", out_path);
    if (fs::exists(out_path) && fs::equivalent(out_path, dense.dir)) fail("{}: would replace the model being converted", out_path);
    if (cfg.sliding_window && *cfg.sliding_window < cfg.max_position_embeddings)
        fail("{}: sliding_window {} < max_position_embeddings {}: llama.cpp's llama architecture has no sliding-window "
             "attention, so the GGUF model would attend differently",
             dense.dir, *cfg.sliding_window, cfg.max_position_embeddings);
    if (cfg.head_dim % 2 != 0) fail("{}: head_dim {} is odd; RoPE needs an even head size", dense.dir, cfg.head_dim);

    GgufReport rep;
    ConvertOptions opt = opt_in;
    std::optional<convert::Context> ctx;
    const int L = cfg.num_layers, H = cfg.hidden_size;
    int E = 0, R = 0;
    int64_t W = 0, shared_w = 0;
    if (plan) {
        plan->validate_for(cfg, ffn_fingerprint(*dense.tensors, cfg), "expert plan");
        opt.format = gguf_routing_format(*plan);
        ctx.emplace(convert::make_convert_context(dense, *plan, opt));
        const convert::Context& c = *ctx;
        if (c.mlp_gate)
            fail("--gate mlp: llama.cpp's router is one linear layer (ffn_gate_inp [E, H]); the Linear-tanh-Linear gate "
                 "exists only in --format llama-moe");
        if (!opt.gate_softmax) fail("--no-softmax: llama.cpp always weights experts by a softmax; use --format llama-moe");
        if (!opt.multiply_gate_scores)
            fail("--no-multiply-gate-scores: llama.cpp always multiplies expert outputs by their weights; use --format llama-moe");
        E = c.E, R = c.R;
        for (const LayerPlan& lp : plan->layers)
            for (const auto& e : lp.experts) W = std::max<int64_t>(W, int64_t(e.size()));
        if (R > 0) {
            int64_t most = 0;
            for (const LayerPlan& lp : plan->layers) {
                int64_t s = 0;
                for (const auto& e : lp.shared) s += int64_t(e.size());
                most = std::max(most, s);
            }
            rep.shared_count = int((most + W - 1) / W);
            shared_w = rep.shared_count * W;
        }
    }
    rep.arch = R > 0 ? "deepseek" : "llama";

    // ---- tensors
    Builder b{dense, cfg, gopt.type, {}};
    const TensorStore& ts = *dense.tensors;
    b.matrix("token_embd.weight", ts.get(names::embed()));
    for (int l = 0; l < L; ++l) {
        const std::string p = fmt::format("blk.{}.", l);
        b.vec(p + "attn_norm.weight", names::input_norm(l));
        b.permuted(p + "attn_q.weight", ts.get(names::attn(l, "q")), cfg.num_heads);
        b.permuted(p + "attn_k.weight", ts.get(names::attn(l, "k")), cfg.num_kv_heads);
        b.matrix(p + "attn_v.weight", ts.get(names::attn(l, "v")));
        b.matrix(p + "attn_output.weight", ts.get(names::attn(l, "o")));
        b.vec(p + "ffn_norm.weight", names::post_norm(l));
        const TensorView& wg = ts.get(names::dense_ffn(l, "gate"));
        const TensorView& wu = ts.get(names::dense_ffn(l, "up"));
        const TensorView& wd = ts.get(names::dense_ffn(l, "down"));
        if (!plan) {
            b.matrix(p + "ffn_gate.weight", wg);
            b.matrix(p + "ffn_up.weight", wu);
            b.matrix(p + "ffn_down.weight", wd);
            continue;
        }
        const LayerPlan& lp = plan->layers[size_t(l)];
        Recipe router;
        router.spec = {p + "ffn_gate_inp.weight", GgmlType::F32, {H, E}};
        router.produce = DType::F32;
        router.kind = Kind::Router;
        router.layer = l;
        b.add(std::move(router));
        const float scale = float(ctx->scales[size_t(l)]);
        b.stack(p + "ffn_gate_exps.weight", wg, lp.experts, W, false, 1.0f, false);
        b.stack(p + "ffn_up_exps.weight", wu, lp.experts, W, false, 1.0f, false);
        b.stack(p + "ffn_down_exps.weight", wd, lp.experts, W, true, scale, false);
        if (!opt.down_proj.empty()) b.out.back().layer = l;  // refitted: columns of opt.down_proj[l]
        for (const auto& e : lp.experts) rep.padded_neurons += size_t(W) - e.size();
        if (R > 0) {
            std::vector<int32_t> shared;  // all shared experts side by side: one MLP computing their sum
            for (const auto& s : lp.shared) shared.insert(shared.end(), s.begin(), s.end());
            rep.padded_neurons += size_t(shared_w) - shared.size();
            b.stack(p + "ffn_gate_shexp.weight", wg, {shared}, shared_w, false, 1.0f, true);
            b.stack(p + "ffn_up_shexp.weight", wu, {shared}, shared_w, false, 1.0f, true);
            b.stack(p + "ffn_down_shexp.weight", wd, {shared}, shared_w, true, 1.0f, true);
            if (!opt.down_proj.empty()) b.out.back().layer = l;
        }
    }
    b.vec("output_norm.weight", names::final_norm());
    if (const TensorView* head = ts.find(names::lm_head())) b.matrix("output.weight", *head);
    if (cfg.rope_scaling.type == "llama3") {
        Recipe r;
        r.floats = llama3_rope_factors(cfg);
        r.spec = {"rope_freqs.weight", GgmlType::F32, {int64_t(r.floats.size())}};
        r.kind = Kind::Floats;
        b.add(std::move(r));
    }
    std::vector<Recipe>& outs = b.out;
    {  // what is about to be written is exactly llama.cpp's tensor list for this shape (the reader checks the same list)
        GgufShape gs;
        gs.deepseek = R > 0;
        gs.layers = L, gs.hidden = H, gs.vocab = cfg.vocab_size;
        gs.q_rows = int64_t(cfg.num_heads) * cfg.head_dim, gs.kv_rows = int64_t(cfg.num_kv_heads) * cfg.head_dim;
        gs.ffn = cfg.intermediate_size, gs.experts = E, gs.expert_width = W, gs.shared_width = shared_w;
        gs.has_output = ts.find(names::lm_head()) != nullptr;
        gs.rope_freqs = cfg.rope_scaling.type == "llama3" ? cfg.head_dim / 2 : 0;
        std::vector<std::pair<std::string, std::vector<int64_t>>> have;
        for (const Recipe& r : outs) have.emplace_back(r.spec.name, r.spec.ne);
        check_tensor_list(expected_gguf_tensors(gs), have, out_path + ": GGUF writer (internal)");
    }

    // ---- metadata
    const std::string a = rep.arch + ".";
    std::vector<GgufKV> kv;
    std::map<GgmlType, size_t> bytes_by_type;
    for (const Recipe& r : outs)  // weight matrices; norms and routers are always f32
        if (r.spec.ne.size() > 1 && r.kind != Kind::Router) bytes_by_type[r.spec.type] += r.spec.nbytes();
    GgmlType main_type = GgmlType::F32;
    size_t most = 0;
    for (auto [t, n] : bytes_by_type)
        if (n > most) most = n, main_type = t;
    rep.type = bytes_by_type.size() > 1 ? "mixed" : ggml_type_name(main_type);
    std::string name = gopt.name;
    if (name.empty()) name = fs::path(dense.dir).filename().string();
    if (name.empty()) name = fs::path(dense.dir).parent_path().filename().string();
    put(kv, "general.architecture", GgufValue::str(rep.arch));
    put(kv, "general.name", GgufValue::str(name));
    put(kv, "general.file_type", GgufValue::u32(file_type_of(main_type)));
    put(kv, "general.quantization_version", GgufValue::u32(2));
    put(kv, "general.alignment", GgufValue::u32(kWriteAlignment));
    put(kv, a + "vocab_size", GgufValue::u32(uint32_t(cfg.vocab_size)));
    put(kv, a + "context_length", GgufValue::u32(uint32_t(cfg.max_position_embeddings)));
    put(kv, a + "embedding_length", GgufValue::u32(uint32_t(H)));
    put(kv, a + "block_count", GgufValue::u32(uint32_t(L)));
    put(kv, a + "feed_forward_length", GgufValue::u32(uint32_t(plan && R == 0 ? W : cfg.intermediate_size)));
    put(kv, a + "attention.head_count", GgufValue::u32(uint32_t(cfg.num_heads)));
    put(kv, a + "attention.head_count_kv", GgufValue::u32(uint32_t(cfg.num_kv_heads)));
    put(kv, a + "attention.key_length", GgufValue::u32(uint32_t(cfg.head_dim)));
    put(kv, a + "attention.value_length", GgufValue::u32(uint32_t(cfg.head_dim)));
    put(kv, a + "attention.layer_norm_rms_epsilon", GgufValue::f32(float(cfg.rms_norm_eps)));
    put(kv, a + "rope.dimension_count", GgufValue::u32(uint32_t(cfg.head_dim)));
    put(kv, a + "rope.freq_base", GgufValue::f32(float(cfg.rope_theta)));
    if (cfg.rope_scaling.type == "linear") {
        put(kv, a + "rope.scaling.type", GgufValue::str("linear"));
        put(kv, a + "rope.scaling.factor", GgufValue::f32(float(cfg.rope_scaling.factor)));
    } else if (cfg.rope_scaling.type == "llama3") {
        put(kv, "moefy.rope_scaling", GgufValue::str(cfg.raw["rope_scaling"].dump()));
    }
    if (plan) {
        put(kv, a + "expert_count", GgufValue::u32(uint32_t(E)));
        put(kv, a + "expert_used_count", GgufValue::u32(uint32_t(ctx->k)));
        if (R > 0) {
            put(kv, a + "leading_dense_block_count", GgufValue::u32(0));
            put(kv, a + "expert_feed_forward_length", GgufValue::u32(uint32_t(W)));
            put(kv, a + "expert_shared_count", GgufValue::u32(uint32_t(rep.shared_count)));
            put(kv, a + "expert_weights_scale", GgufValue::f32(1.0f));
        }
        json pj = {{"method", plan->method},
                   {"expert_widths", ctx->routed_widths()},
                   {"shared_widths", ctx->shared_widths()},
                   {"stored_expert_width", W},
                   {"stored_shared_width", shared_w},
                   {"padded_neurons", rep.padded_neurons},
                   {"scales_folded", ctx->scales}};
        put(kv, "moefy.plan", GgufValue::str(pj.dump()));
        json meta = opt.provenance.is_object() ? opt.provenance : json::object();
        if (opt.routers.empty()) meta["router"] = {{"kind", "random"}, {"init", "N(0, 0.02)"}, {"seed", opt.seed}};
        put(kv, "moefy.provenance", GgufValue::str(meta.dump()));
    }
    rep.vocab = append_gguf_tokenizer(dense.dir, cfg.vocab_size, kv);
    rep.metadata_keys = kv.size();

    // ---- stream
    std::vector<GgufTensorSpec> specs;
    double total = 0;
    for (const Recipe& r : outs) specs.push_back(r.spec), total += double(r.spec.nbytes());
    std::unordered_map<const TensorView*, size_t> last_use;
    for (size_t i = 0; i < outs.size(); ++i)
        if (outs[i].src) last_use[outs[i].src] = i;

    convert::TensorStreamer stream;
    int router_layer = -1;
    RouterWeights router_cache;
    auto router_of = [&](int l) -> const RouterWeights& {
        if (!opt.routers.empty()) return opt.routers[size_t(l)];
        if (router_layer != l) router_cache = make_random_router(E, H, false, opt.seed, l), router_layer = l;
        return router_cache;
    };
    std::vector<uint8_t> zeros;
    auto write_zeros = [&](ByteSink& s, size_t n) {
        if (zeros.size() < n) zeros.assign(n, 0);
        if (n) s.write(zeros.data(), n);
    };
    double done = 0;
    auto emit = [&](const Recipe& r, ByteSink& sink) {
        const size_t os = dtype_size(r.produce);
        switch (r.kind) {
            case Kind::Copy: stream.copy(*r.src, r.produce, sink); break;
            case Kind::Rows: stream.rows(*r.src, r.ids, r.produce, sink); break;
            case Kind::StackRows: {
                const size_t row = size_t(r.src->cols()) * os;
                for (const auto& ids : r.parts) {
                    stream.rows(*r.src, ids, r.produce, sink);
                    write_zeros(sink, (size_t(r.width) - ids.size()) * row);
                }
                break;
            }
            case Kind::StackCols: {
                if (r.layer >= 0) {
                    // Refitted down projection: part m is [H, width], W'[:, ids] * scale then zero columns; W' [H, I] f32.
                    const std::vector<float>& Wd = opt.down_proj[size_t(r.layer)];
                    const size_t Hn = size_t(r.src->rows()), I = size_t(r.src->cols()), w = size_t(r.width);
                    std::vector<float> part(Hn * w);
                    for (const auto& ids : r.parts) {
                        std::fill(part.begin(), part.end(), 0.0f);
                        for (size_t h = 0; h < Hn; ++h)
                            for (size_t j = 0; j < ids.size(); ++j) part[h * w + j] = Wd[h * I + size_t(ids[j])] * r.scale;
                        stream.matrix(part.data(), part.size(), r.produce, sink);
                    }
                    break;
                }
                std::vector<convert::TensorStreamer::ColsMember> members;
                for (const auto& ids : r.parts) members.push_back({&ids, r.scale});
                std::vector<std::vector<uint8_t>> staged;
                bool padded = false;
                for (const auto& ids : r.parts) padded = padded || int64_t(ids.size()) != r.width;
                if (!padded) {
                    // One pass over the dense down projection; experts 1.. wait in memory.
                    stream.cols(*r.src, members, r.produce, sink, staged);
                    for (size_t m = 1; m < staged.size(); ++m) sink.write(staged[m].data(), staged[m].size());
                    break;
                }
                VecSink first;
                stream.cols(*r.src, members, r.produce, first, staged);
                staged[0] = std::move(first.data);
                const size_t Hn = size_t(r.src->rows());
                for (size_t m = 0; m < r.parts.size(); ++m) {
                    const size_t w = r.parts[m].size() * os, pad = (size_t(r.width) - r.parts[m].size()) * os;
                    for (size_t h = 0; h < Hn; ++h) {
                        sink.write(staged[m].data() + h * w, w);
                        write_zeros(sink, pad);
                    }
                }
                break;
            }
            case Kind::Router: {
                const RouterWeights& rw = router_of(r.layer);
                stream.matrix(rw.w1.data(), rw.w1.size(), DType::F32, sink);
                break;
            }
            case Kind::Floats: stream.matrix(r.floats.data(), r.floats.size(), DType::F32, sink); break;
        }
    };
    auto produce = [&](size_t i, ByteSink& sink) {
        const Recipe& r = outs[i];
        if (r.spec.type == GgmlType::Q8_0) {
            Q8Sink q(sink, r.spec.name);
            emit(r, q);
            q.finish();
        } else {
            emit(r, sink);
        }
        if (r.src && last_use[r.src] == i) ts.release(*r.src);
        done += double(r.spec.nbytes());
        if (progress) progress(done, total);
    };
    write_gguf(out_path, kv, specs, produce, opt.force, kWriteAlignment);

    ConvertReport& cr = rep.convert;
    cr.out_dir = out_path;
    cr.layout = "gguf (" + rep.arch + ")";
    cr.gate = "linear";
    cr.num_layers = L;
    cr.num_experts = E;
    cr.num_shared = R;
    cr.top_k = plan ? ctx->k : 0;
    cr.dtype = ctx ? ctx->dtype : dense.main_dtype();
    if (ctx) cr.scales = ctx->scales;
    cr.scale_folded = plan != nullptr;
    cr.files = {fs::path(out_path).filename().string()};
    cr.tensors = outs.size();
    cr.tensor_bytes = size_t(total);
    cr.source_bytes = ts.total_bytes();
    rep.expert_width = int(W);
    cr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rep;
}

}  // namespace moefy
