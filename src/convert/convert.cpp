// The convert driver: validate everything, lay out the output tensors in source
// order (each layer's FFN replaced by the layout's expert tensors), then stream
// them through write_checkpoint_tensors into an OutputDir.
#include "convert/convert.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"
#include "convert/gguf.h"
#include "convert/layout.h"
#include "io/output_dir.h"
#include "model/expected_tensors.h"
#include "model/tensor_names.h"

namespace moefy {

namespace fs = std::filesystem;
using nlohmann::json;
using convert::Context;
using convert::Op;
using convert::OutTensor;

namespace {
// "same" stands for nullopt.
enum class OutDType { Same, BF16, F16, F32 };
constexpr EnumName<OutDType> out_dtype_names[] = {
    {OutDType::Same, "same"}, {OutDType::BF16, "bf16"}, {OutDType::F16, "f16"}, {OutDType::F32, "f32"}};
}  // namespace

std::optional<DType> parse_out_dtype(const std::string& s) {
    switch (parse_enum(out_dtype_names, s, "--dtype")) {
        case OutDType::Same: return std::nullopt;
        case OutDType::BF16: return DType::BF16;
        case OutDType::F16: return DType::F16;
        case OutDType::F32: return DType::F32;
    }
    return std::nullopt;
}

const char* out_dtype_name(std::optional<DType> t) {
    if (!t) return "same";
    switch (*t) {
        case DType::BF16: return "bf16";
        case DType::F16: return "f16";
        case DType::F32: return "f32";
    }
    return "?";
}

size_t parse_byte_size(const std::string& s, const std::string& what) {
    size_t i = 0;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
    if (i == 0) fail("{} '{}': expected a size such as 5GB, 500MB or 2GiB", what, s);
    double v = 0;
    try {
        v = std::stod(s.substr(0, i));
    } catch (const std::exception&) {
        fail("{} '{}': not a number", what, s);
    }
    std::string unit = s.substr(i);
    for (char& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
    static const std::pair<const char*, double> units[] = {
        {"", 1},         {"B", 1},        {"KB", 1e3},           {"MB", 1e6},           {"GB", 1e9},
        {"TB", 1e12},    {"KIB", 1024.0}, {"MIB", 1048576.0},    {"GIB", 1073741824.0}, {"TIB", 1099511627776.0},
    };
    for (auto [u, mult] : units)
        if (unit == u) {
            double bytes = v * mult;
            if (!(bytes >= 1)) fail("{} '{}': must be at least one byte", what, s);
            return size_t(bytes);
        }
    fail("{} '{}': unknown unit '{}' (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", what, s, s.substr(i));
}

const char* torch_dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "float32";
        case DType::F16: return "float16";
        case DType::BF16: return "bfloat16";
    }
    return "?";
}

namespace convert {

const TensorView& Context::ffn(int l, const char* proj) const { return dense.tensors->get(names::dense_ffn(l, proj)); }

OutTensor Context::rows(std::string name, const TensorView& src, std::vector<int32_t> ids) const {
    OutTensor t;
    t.spec = {std::move(name), out_dtype(src), {int64_t(ids.size()), src.cols()}};
    t.op = Op::Rows;
    t.src = &src;
    t.ids = std::move(ids);
    return t;
}

OutTensor Context::cols(std::string name, const TensorView& src, std::vector<int32_t> ids, double scale) const {
    OutTensor t;
    t.spec = {std::move(name), out_dtype(src), {src.rows(), int64_t(ids.size())}};
    t.op = Op::Cols;
    t.src = &src;
    t.ids = std::move(ids);
    t.scale = float(scale);
    return t;
}

OutTensor Context::router(std::string name, int layer, bool second) const {
    OutTensor t;
    t.spec = {std::move(name), dtype, {E, second ? E : H}};
    t.op = second ? Op::RouterW2 : Op::RouterW1;
    t.layer = layer;
    return t;
}

OutTensor Context::zeros(std::string name, std::vector<int64_t> shape) const {
    OutTensor t;
    t.spec = {std::move(name), dtype, std::move(shape)};
    t.op = Op::Zeros;
    return t;
}

std::vector<std::vector<int>> Context::routed_widths() const {
    std::vector<std::vector<int>> w;
    for (const LayerPlan& lp : plan.layers) {
        w.emplace_back();
        for (const auto& e : lp.experts) w.back().push_back(int(e.size()));
    }
    return w;
}

std::vector<std::vector<int>> Context::shared_widths() const {
    std::vector<std::vector<int>> w;
    for (const LayerPlan& lp : plan.layers) {
        w.emplace_back();
        for (const auto& e : lp.shared) w.back().push_back(int(e.size()));
    }
    return w;
}

}  // namespace convert

namespace {

// Copied verbatim when the source has them, so the output is a complete model directory.
const char* const kSideFiles[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "generation_config.json"};

bool finite_positive(double v) { return std::isfinite(v) && v > 0; }

void check_output_path(const std::string& out_dir, const std::string& model_dir, bool force) {
    if (out_dir.empty()) fail("--out: output path is empty");
    if (fs::exists(out_dir) && !force) fail("{}: output already exists (use --force to replace it)", out_dir);
    // --force replaces the output at commit: never when that would delete the source.
    const fs::path out = fs::weakly_canonical(out_dir), src = fs::weakly_canonical(model_dir);
    const std::string o = out.string() + "/", s = src.string() + "/";
    if (s.compare(0, o.size(), o) == 0)
        fail("{}: the output directory would replace the model being converted ({})", out_dir, model_dir);
}

Context make_context(const Checkpoint& dense, const ExpertPlan& plan, const ConvertOptions& opt) {
    Context c(dense, plan, opt);
    c.L = dense.config.num_layers;
    c.H = dense.config.hidden_size;
    c.E = plan.num_experts();
    c.R = plan.num_shared();
    c.k = opt.top_k;
    if (c.k < 1 || c.k > c.E) fail("--top-k {}: must be between 1 and the plan's {} experts", c.k, c.E);
    const char* gate = gate_kind_name(opt.gate_kind());
    c.mlp_gate = opt.gate_kind() == GateKind::Mlp;
    if (!opt.layer_scales.empty()) {
        if (int(opt.layer_scales.size()) != c.L)
            fail("per-layer scales: {} values for a model with {} layers", opt.layer_scales.size(), c.L);
        for (size_t l = 0; l < opt.layer_scales.size(); ++l)
            if (!finite_positive(opt.layer_scales[l])) fail("per-layer scales: layer {} has {}, not a positive number", l, opt.layer_scales[l]);
        c.scales = opt.layer_scales;
    } else {
        const double s = opt.scale.value_or(double(c.E) / double(c.k));
        if (!finite_positive(s)) fail("--scale {}: must be a positive number (or auto)", s);
        c.scales.assign(size_t(c.L), s);
    }
    if (!opt.routers.empty()) {
        if (int(opt.routers.size()) != c.L) fail("routers: {} given for a model with {} layers", opt.routers.size(), c.L);
        for (int l = 0; l < c.L; ++l)
            check_router(opt.routers[size_t(l)], c.E, c.H, c.mlp_gate, fmt::format("router of layer {} ({} gate)", l, gate));
    }
    if (!opt.down_proj.empty()) {
        if (int(opt.down_proj.size()) != c.L) fail("refitted down projections: {} given for a model with {} layers", opt.down_proj.size(), c.L);
        const size_t want = size_t(c.H) * size_t(dense.config.intermediate_size);
        for (int l = 0; l < c.L; ++l) {
            if (opt.down_proj[size_t(l)].size() != want)
                fail("refitted down projection of layer {}: {} values, expected {} x {}", l, opt.down_proj[size_t(l)].size(), c.H,
                     dense.config.intermediate_size);
            for (float v : opt.down_proj[size_t(l)])
                if (!std::isfinite(v)) fail("refitted down projection of layer {}: not finite", l);
        }
    }
    c.dtype = opt.dtype.value_or(dense.main_dtype());
    return c;
}

convert::Layout pick_layout(const Context& c) {
    switch (c.opt.format) {
        case MoEFormat::LlamaMoE: return convert::llama_moe_layout(c.R > 0);
        case MoEFormat::Mixtral: return convert::mixtral_layout();
        case MoEFormat::Deepseek: return convert::deepseek_layout();
        case MoEFormat::Gguf: break;  // convert_to_gguf
    }
    fail("unknown output format");
}

// The layout's tensors are exactly its architecture's list (model/expected_tensors.h)
// for the config it writes, so the converter and the loader cannot drift apart;
// source tensors outside the dense architecture are copied through and left out.
void check_layout_tensors(const Checkpoint& dense, const json& config, const std::vector<OutTensor>& outs,
                          const std::string& layout) {
    std::unordered_set<std::string> dense_names;
    for (const ExpectedTensor& e : expected_tensors(dense.config)) dense_names.insert(e.name);
    std::vector<std::pair<std::string, std::vector<int64_t>>> have;
    for (const OutTensor& t : outs)
        if (t.op != Op::Copy || dense_names.count(t.spec.name)) have.emplace_back(t.spec.name, t.spec.shape);
    const std::string where = "convert --format " + layout + " (internal)";
    check_tensor_list(expected_tensors(ModelConfig::parse(config, where)), have, where);
}

// Every source tensor in source order; each layer's three dense FFN tensors are
// replaced, where the first of them appears, by the layout's tensors for that layer.
std::vector<OutTensor> lay_out(const Context& c, const convert::Layout& layout) {
    std::unordered_map<std::string, int> ffn_layer;
    for (int l = 0; l < c.L; ++l)
        for (const char* p : {"gate", "up", "down"}) ffn_layer[names::dense_ffn(l, p)] = l;
    std::vector<bool> done(size_t(c.L), false);
    std::vector<OutTensor> out;
    const TensorStore& ts = *c.dense.tensors;
    for (const std::string& name : ts.names()) {
        auto it = ffn_layer.find(name);
        if (it == ffn_layer.end()) {
            const TensorView& src = ts.get(name);
            OutTensor t;
            t.spec = {name, c.out_dtype(src), src.shape};
            t.op = Op::Copy;
            t.src = &src;
            out.push_back(std::move(t));
        } else if (!done[size_t(it->second)]) {
            done[size_t(it->second)] = true;
            const size_t first = out.size();
            layout.layer(c, it->second, out);
            // Refitted values replace the dense down projection's in every expert of the layer.
            const TensorView* down = &c.ffn(it->second, "down");
            if (!c.opt.down_proj.empty())
                for (size_t i = first; i < out.size(); ++i)
                    if (out[i].op == Op::Cols && out[i].src == down) {
                        out[i].op = Op::ColsF32;
                        out[i].src = nullptr;
                        out[i].layer = it->second;
                    }
        }
    }
    return out;
}

// Router matrices of one layer at a time: given, or drawn from the seed.
class RouterSource {
public:
    explicit RouterSource(const Context& c) : c_(c) {}
    const RouterWeights& get(int l) {
        if (!c_.opt.routers.empty()) return c_.opt.routers[size_t(l)];
        if (layer_ != l) {
            cache_ = make_random_router(c_.E, c_.H, c_.mlp_gate, c_.opt.seed, l);
            layer_ = l;
        }
        return cache_;
    }

private:
    const Context& c_;
    int layer_ = -1;
    RouterWeights cache_;
};

}  // namespace

convert::Context convert::make_convert_context(const Checkpoint& dense, const ExpertPlan& plan, const ConvertOptions& opt) {
    return make_context(dense, plan, opt);
}

MoEFormat routing_semantics(MoEFormat f, const ExpertPlan& plan) {
    return f == MoEFormat::Gguf ? gguf_routing_format(plan) : f;
}

ConvertReport convert_checkpoint(const Checkpoint& dense, const ExpertPlan& plan, const std::string& out_dir,
                                 const ConvertOptions& opt, const ConvertProgress& progress) {
    if (opt.format == MoEFormat::Gguf) return convert_to_gguf(dense, &plan, out_dir, opt, gguf_options(opt), progress).convert;
    if (opt.q8_0) fail("--dtype q8_0: only --format gguf stores q8_0 (safetensors has no such type)");
    const auto t0 = std::chrono::steady_clock::now();
    const ModelConfig& cfg = dense.config;
    if (cfg.is_moe())
        fail("{}: is already an MoE model ({}); convert takes a dense LLaMA-family model", dense.dir, model_kind_name(cfg.kind));
    check_output_path(out_dir, dense.dir, opt.force);
    plan.validate_for(cfg, ffn_fingerprint(*dense.tensors, cfg), opt.plan_name);
    const Context c = make_context(dense, plan, opt);
    const convert::Layout layout = pick_layout(c);
    try {
        layout.check(c);
    } catch (const Error& e) {
        // The layouts' width checks speak of "plan ..."; name the file.
        if (std::string_view(e.what()).starts_with("plan")) fail("{}: {}", opt.plan_name, e.what());
        throw;
    }
    std::vector<OutTensor> outs = lay_out(c, layout);
    const json config = layout.config(c);
    check_layout_tensors(dense, config, outs, layout.name);

    // Drop each source tensor's pages once its last reader is done.
    std::unordered_map<const TensorView*, size_t> last_use;
    for (size_t i = 0; i < outs.size(); ++i)
        if (outs[i].src) last_use[outs[i].src] = i;
    std::vector<std::vector<const TensorView*>> release_after(outs.size());
    for (auto [src, i] : last_use) release_after[i].push_back(src);

    std::vector<TensorSpec> specs;
    double total = 0;
    for (const OutTensor& t : outs) {
        specs.push_back(t.spec);
        total += double(t.spec.nbytes());
    }

    ConvertReport rep;
    rep.out_dir = out_dir;
    rep.layout = layout.name;
    rep.gate = c.mlp_gate ? "mlp" : "linear";
    rep.num_layers = c.L;
    rep.num_experts = c.E;
    rep.num_shared = c.R;
    rep.top_k = c.k;
    rep.dtype = c.dtype;
    rep.scales = c.scales;
    rep.scale_folded = opt.format != MoEFormat::LlamaMoE;
    rep.tensors = outs.size();
    rep.tensor_bytes = size_t(total);
    rep.source_bytes = dense.tensors->total_bytes();

    OutputDir dir(out_dir, opt.force);
    convert::TensorStreamer stream;
    RouterSource routers(c);
    // Column gathers (down projections) of one source are made in one pass over
    // it: the first goes out directly, later ones wait in `staged` (at most
    // opt.gather_stage_bytes) until their turn.
    // Buffers are recycled (`spare`): every layer stages the same sizes, and fresh
    // pages would cost a fault and a zero fill each.
    std::unordered_map<size_t, std::vector<uint8_t>> staged;
    std::vector<std::vector<uint8_t>> spare;
    auto write_cols = [&](size_t i, ByteSink& sink) {
        if (auto it = staged.find(i); it != staged.end()) {
            sink.write(it->second.data(), it->second.size());
            spare.push_back(std::move(it->second));
            staged.erase(it);
            return;
        }
        const OutTensor& t = outs[i];
        std::vector<size_t> group = {i};
        std::vector<convert::TensorStreamer::ColsMember> members = {{&t.ids, t.scale}};
        size_t bytes = 0;
        for (size_t j = i + 1; j < outs.size(); ++j) {
            const OutTensor& u = outs[j];
            if (u.op != Op::Cols || u.src != t.src || u.spec.dtype != t.spec.dtype) continue;
            if (bytes + u.spec.nbytes() > opt.gather_stage_bytes) break;
            bytes += u.spec.nbytes();
            group.push_back(j);
            members.push_back({&u.ids, u.scale});
        }
        std::vector<std::vector<uint8_t>> bufs(group.size());
        for (size_t m = 1; m < group.size() && !spare.empty(); ++m) {
            bufs[m] = std::move(spare.back());
            spare.pop_back();
        }
        stream.cols(*t.src, members, t.spec.dtype, sink, bufs);
        for (size_t m = 1; m < group.size(); ++m) staged[group[m]] = std::move(bufs[m]);
    };
    double done = 0;
    auto produce = [&](size_t i, ByteSink& sink) {
        const OutTensor& t = outs[i];
        switch (t.op) {
            case Op::Copy: stream.copy(*t.src, t.spec.dtype, sink); break;
            case Op::Rows: stream.rows(*t.src, t.ids, t.spec.dtype, sink); break;
            case Op::Cols: write_cols(i, sink); break;
            case Op::ColsF32: {
                // out[:, j] = W'[:, ids[j]] * scale, W' [H, I] f32
                const std::vector<float>& W = opt.down_proj[size_t(t.layer)];
                const size_t I = size_t(dense.config.intermediate_size), S = t.ids.size();
                std::vector<float> m(size_t(c.H) * S);
                for (size_t h = 0; h < size_t(c.H); ++h)
                    for (size_t j = 0; j < S; ++j) m[h * S + j] = W[h * I + size_t(t.ids[j])] * t.scale;
                stream.matrix(m.data(), m.size(), t.spec.dtype, sink);
                break;
            }
            case Op::RouterW1: {
                const RouterWeights& r = routers.get(t.layer);
                stream.matrix(r.w1.data(), r.w1.size(), t.spec.dtype, sink);
                break;
            }
            case Op::RouterW2: {
                const RouterWeights& r = routers.get(t.layer);
                stream.matrix(r.w2.data(), r.w2.size(), t.spec.dtype, sink);
                break;
            }
            case Op::Zeros: stream.zeros(t.spec.nbytes(), sink); break;
        }
        for (const TensorView* src : release_after[i]) dense.tensors->release(*src);
        done += double(t.spec.nbytes());
        if (progress) progress(done, total);
    };
    rep.files = write_checkpoint_tensors(dir.path(), specs, produce, opt.max_shard_bytes);

    json meta = opt.provenance.is_object() ? opt.provenance : json::object();
    meta["split_method"] = plan.method;
    if (opt.routers.empty()) meta["router"] = {{"kind", "random"}, {"init", "N(0, 0.02)"}, {"seed", opt.seed}};
    json written = config;
    written["moefy"] = meta;
    write_file_atomic(dir.file("config.json"), written.dump(2) + "\n");
    rep.files.push_back("config.json");
    for (const char* f : kSideFiles) {
        const fs::path from = fs::path(dense.dir) / f;
        if (!fs::exists(from)) continue;
        std::error_code ec;
        fs::copy_file(from, dir.file(f), ec);
        if (ec) fail("{}: cannot copy into {}: {}", from.string(), dir.path(), ec.message());
        rep.files.push_back(f);
    }
    dir.commit();
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rep;
}

ConvertReport convert_model_dir(const std::string& model_dir, const std::string& plan_path, const std::string& out_dir,
                                const ConvertOptions& opt, const ConvertProgress& progress) {
    check_output_path(out_dir, model_dir, opt.force);
    const Checkpoint dense = Checkpoint::open(model_dir);
    if (dense.config.is_moe())
        fail("{}: is already an MoE model ({}); convert takes a dense LLaMA-family model", model_dir,
             model_kind_name(dense.config.kind));
    const ExpertPlan plan = ExpertPlan::load(plan_path);
    // Validated here too so that errors name the plan file.
    plan.validate_for(dense.config, ffn_fingerprint(*dense.tensors, dense.config), plan_path);
    ConvertOptions named = opt;
    named.plan_name = plan_path;
    return convert_checkpoint(dense, plan, out_dir, named, progress);
}

}  // namespace moefy
