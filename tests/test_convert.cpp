// Converter: expert tensors are exactly the dense rows/columns, the partition
// sums back to the dense FFN, every layout's tensor list and config.json match
// the reference layouts, and every refusal leaves nothing behind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "convert/chunk_pipe.h"
#include "convert/convert.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/tensor_names.h"
#include "route/random_router.h"
#include "split/expert_plan.h"
#include "test_util.h"

using namespace moefy;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ------------------------------------------------------------------ fixtures

struct Dense {
    int L = 2, H = 16, I = 24, V = 40, heads = 4, kv = 2;
    DType dtype = DType::BF16;
    uint64_t seed = 1;
    size_t shard_bytes = size_t(1) << 40;
};

std::vector<TensorSpec> dense_specs(const Dense& d) {
    const int64_t H = d.H, I = d.I, V = d.V, D = d.H / d.heads, Q = d.heads * D, KV = d.kv * D;
    std::vector<TensorSpec> s = {{names::embed(), d.dtype, {V, H}}};
    for (int l = 0; l < d.L; ++l) {
        s.push_back({names::input_norm(l), d.dtype, {H}});
        s.push_back({names::dense_ffn(l, "down"), d.dtype, {H, I}});
        s.push_back({names::dense_ffn(l, "gate"), d.dtype, {I, H}});
        s.push_back({names::dense_ffn(l, "up"), d.dtype, {I, H}});
        s.push_back({names::post_norm(l), d.dtype, {H}});
        s.push_back({names::attn(l, "k"), d.dtype, {KV, H}});
        s.push_back({names::attn(l, "o"), d.dtype, {H, Q}});
        s.push_back({names::attn(l, "q"), d.dtype, {Q, H}});
        s.push_back({names::attn(l, "v"), d.dtype, {KV, H}});
    }
    s.push_back({names::lm_head(), d.dtype, {V, H}});
    s.push_back({names::final_norm(), d.dtype, {H}});
    return s;
}

// A complete dense LLaMA directory: config.json, safetensors (sharded when
// shard_bytes is small), a tokenizer_config.json and generation_config.json.
void write_dense(const std::string& dir, const Dense& d) {
    fs::create_directories(dir);
    json cfg = {{"architectures", {"LlamaForCausalLM"}},
                {"model_type", "llama"},
                {"hidden_size", d.H},
                {"intermediate_size", d.I},
                {"num_hidden_layers", d.L},
                {"num_attention_heads", d.heads},
                {"num_key_value_heads", d.kv},
                {"vocab_size", d.V},
                {"max_position_embeddings", 128},
                {"rms_norm_eps", 1e-5},
                {"rope_theta", 500000.0},
                {"rope_scaling", nullptr},
                {"hidden_act", "silu"},
                {"initializer_range", 0.02},
                {"pretraining_tp", 1},
                {"use_cache", true},
                {"tie_word_embeddings", false},
                {"bos_token_id", 1},
                {"eos_token_id", 2},
                {"torch_dtype", torch_dtype_name(d.dtype)}};
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    std::ofstream(dir + "/tokenizer_config.json") << R"({"model_max_length": 128})";
    std::ofstream(dir + "/generation_config.json") << R"({"bos_token_id": 1, "eos_token_id": 2})";
    const auto specs = dense_specs(d);
    write_checkpoint_tensors(dir, specs, [&](size_t i, ByteSink& sink) {
        Rng rng(d.seed, i);
        std::vector<float> v(size_t(specs[i].nbytes() / dtype_size(d.dtype)));
        for (float& x : v) x = float(rng.normal() * 0.5);
        std::vector<uint8_t> b(specs[i].nbytes());
        from_f32(d.dtype, v.data(), b.data(), v.size());
        sink.write(b.data(), b.size());
    }, d.shard_bytes);
}

// Experts in shuffled (not ascending) neuron order, so that the test sees the
// converter keep the plan's order.
std::vector<std::vector<int32_t>> shuffled_partition(int I, int E, uint64_t seed, int layer) {
    std::vector<int32_t> perm(static_cast<size_t>(I));
    std::iota(perm.begin(), perm.end(), 0);
    Rng rng(seed, uint64_t(layer) + 100);
    rng.shuffle(perm.begin(), perm.end());
    std::vector<std::vector<int32_t>> out;
    size_t at = 0;
    for (int w : balanced_widths(I, E)) {
        out.emplace_back(perm.begin() + long(at), perm.begin() + long(at + size_t(w)));
        at += size_t(w);
    }
    return out;
}

ExpertPlan plan_for(const Checkpoint& ck, std::vector<LayerPlan> layers) {
    ExpertPlan p;
    p.num_layers = ck.config.num_layers;
    p.hidden_size = ck.config.hidden_size;
    p.intermediate_size = ck.config.intermediate_size;
    p.ffn_fingerprint = ffn_fingerprint(*ck.tensors, ck.config);
    p.method = "test";
    p.layers = std::move(layers);
    return p;
}

ExpertPlan partition_plan(const Checkpoint& ck, int E, uint64_t seed = 7) {
    std::vector<LayerPlan> layers(size_t(ck.config.num_layers));
    for (int l = 0; l < ck.config.num_layers; ++l) layers[size_t(l)].experts = shuffled_partition(ck.config.intermediate_size, E, seed, l);
    return plan_for(ck, std::move(layers));
}

// ------------------------------------------------------------------ checks

const uint8_t* row_ptr(const TensorView& t, int64_t r) { return t.data + size_t(r * t.cols()) * dtype_size(t.dtype); }
const uint8_t* elem_ptr(const TensorView& t, int64_t r, int64_t c) {
    return row_ptr(t, r) + size_t(c) * dtype_size(t.dtype);
}
bool same_bytes(const TensorView& a, const TensorView& b) {
    return a.dtype == b.dtype && a.shape == b.shape && std::memcmp(a.data, b.data, a.nbytes) == 0;
}

// out rows == src rows[ids], bitwise.
void expect_rows(const TensorView& out, const TensorView& src, const std::vector<int32_t>& ids) {
    ASSERT_EQ(out.shape, (std::vector<int64_t>{int64_t(ids.size()), src.cols()})) << out.name;
    ASSERT_EQ(out.dtype, src.dtype) << out.name;
    const size_t row = size_t(src.cols()) * dtype_size(src.dtype);
    for (size_t i = 0; i < ids.size(); ++i)
        ASSERT_EQ(0, std::memcmp(row_ptr(out, int64_t(i)), row_ptr(src, ids[i]), row)) << out.name << " row " << i;
}

// out[:, j] == src[:, ids[j]], bitwise.
void expect_cols(const TensorView& out, const TensorView& src, const std::vector<int32_t>& ids) {
    ASSERT_EQ(out.shape, (std::vector<int64_t>{src.rows(), int64_t(ids.size())})) << out.name;
    ASSERT_EQ(out.dtype, src.dtype) << out.name;
    const size_t es = dtype_size(src.dtype);
    for (int64_t h = 0; h < src.rows(); ++h)
        for (size_t j = 0; j < ids.size(); ++j)
            ASSERT_EQ(0, std::memcmp(elem_ptr(out, h, int64_t(j)), elem_ptr(src, h, ids[j]), es)) << out.name << " [" << h << ", " << j << "]";
}

std::vector<float> as_f32(const TensorView& t) {
    std::vector<float> v(size_t(t.numel()));
    to_f32(t.dtype, t.data, v.data(), v.size());
    return v;
}

// The output router equals the seeded random router cast to the output dtype.
void expect_router(const TensorView& t, const std::vector<float>& want) {
    ASSERT_EQ(size_t(t.numel()), want.size()) << t.name;
    std::vector<uint8_t> b(t.nbytes);
    from_f32(t.dtype, want.data(), b.data(), want.size());
    EXPECT_EQ(0, std::memcmp(b.data(), t.data, t.nbytes)) << t.name;
}

void expect_zeros(const TensorView& t) {
    for (size_t i = 0; i < t.nbytes; ++i) ASSERT_EQ(t.data[i], 0) << t.name;
}

// Every name of the store, as a set.
std::set<std::string> names_of(const TensorStore& s) {
    auto v = s.names();
    return {v.begin(), v.end()};
}

// Dense names that are not FFN weights: what every layout copies verbatim.
std::set<std::string> non_ffn_names(const Dense& d) {
    std::set<std::string> out;
    for (auto& s : dense_specs(d))
        if (s.name.find(".mlp.") == std::string::npos) out.insert(s.name);
    return out;
}

void expect_non_ffn_copied(const TensorStore& out, const TensorStore& dense, const Dense& d) {
    for (const std::string& n : non_ffn_names(d)) EXPECT_TRUE(same_bytes(out.get(n), dense.get(n))) << n;
}

std::vector<std::string> tmp_siblings(const std::string& out) {
    std::vector<std::string> v;
    const fs::path p(out);
    for (auto& e : fs::directory_iterator(p.parent_path()))
        if (e.path().filename().string().rfind(p.filename().string() + ".tmp-", 0) == 0) v.push_back(e.path().string());
    return v;
}

// fn must throw an Error whose message contains `msg`, leaving no output and no temporary.
template <typename F>
void expect_refused(F fn, const std::string& msg, const std::string& out, bool out_existed = false) {
    try {
        fn();
        ADD_FAILURE() << "not refused; expected: " << msg;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << "message: " << e.what() << "\nexpected: " << msg;
    }
    if (!out_existed) {
        EXPECT_FALSE(fs::exists(out)) << out;
    }
    EXPECT_TRUE(tmp_siblings(out).empty());
}

// Dense SwiGLU FFN of rows [0, T) of x, from f32 copies of the weights; double accumulation.
std::vector<double> swiglu(const std::vector<float>& wg, const std::vector<float>& wu, const std::vector<float>& wd, int H, int W,
                           const std::vector<float>& x, int T) {
    std::vector<double> y(size_t(T) * size_t(H), 0.0);
    for (int t = 0; t < T; ++t) {
        const float* xt = x.data() + size_t(t) * size_t(H);
        for (int n = 0; n < W; ++n) {
            double g = 0, u = 0;
            for (int k = 0; k < H; ++k) {
                g += double(wg[size_t(n) * size_t(H) + size_t(k)]) * xt[k];
                u += double(wu[size_t(n) * size_t(H) + size_t(k)]) * xt[k];
            }
            const double h = g / (1.0 + std::exp(-g)) * u;
            for (int k = 0; k < H; ++k) y[size_t(t) * size_t(H) + size_t(k)] += double(wd[size_t(k) * size_t(W) + size_t(n)]) * h;
        }
    }
    return y;
}

ConvertOptions opts(MoEFormat f = MoEFormat::LlamaMoE) {
    ConvertOptions o;
    o.format = f;
    return o;
}

}  // namespace

// ------------------------------------------------------------------ llama-moe

TEST(ConvertLlamaMoE, ExpertRowsAndColumnsAreTheDenseOnesBitwise) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    ExpertPlan plan = partition_plan(ck, 4);
    ConvertReport rep = convert_checkpoint(ck, plan, tmp.path + "/moe", opts());
    EXPECT_EQ(rep.layout, "llama-moe");
    Checkpoint out = Checkpoint::open(tmp.path + "/moe");  // the engine's loader accepts it
    ASSERT_EQ(out.config.kind, ModelKind::LlamaMoE);
    const TensorStore& o = *out.tensors;
    for (int l = 0; l < d.L; ++l)
        for (int e = 0; e < 4; ++e) {
            const auto& ids = plan.layers[size_t(l)].experts[size_t(e)];
            expect_rows(o.get(names::llama_moe_expert(l, "gate", e)), ck.tensors->get(names::dense_ffn(l, "gate")), ids);
            expect_rows(o.get(names::llama_moe_expert(l, "up", e)), ck.tensors->get(names::dense_ffn(l, "up")), ids);
            expect_cols(o.get(names::llama_moe_expert(l, "down", e)), ck.tensors->get(names::dense_ffn(l, "down")), ids);
        }
    expect_non_ffn_copied(o, *ck.tensors, d);
    EXPECT_TRUE(tmp_siblings(tmp.path + "/moe").empty());
}

TEST(ConvertLlamaMoE, SummingAllExpertsReproducesTheDenseFFN) {
    TempDir tmp;
    Dense d;
    d.dtype = DType::F32;
    d.H = 32;
    d.I = 48;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    ExpertPlan plan = partition_plan(ck, 6);
    convert_checkpoint(ck, plan, tmp.path + "/moe", opts());
    Checkpoint out = Checkpoint::open(tmp.path + "/moe");
    const int T = 5;
    std::vector<float> x(size_t(T * d.H));
    Rng rng(3);
    for (float& v : x) v = float(rng.normal());
    for (int l = 0; l < d.L; ++l) {
        const auto dense = swiglu(ck.tensors->read_f32(names::dense_ffn(l, "gate")), ck.tensors->read_f32(names::dense_ffn(l, "up")),
                                  ck.tensors->read_f32(names::dense_ffn(l, "down")), d.H, d.I, x, T);
        std::vector<double> sum(dense.size(), 0.0);
        for (int e = 0; e < 6; ++e) {
            const int w = out.config.moe.expert_widths[size_t(l)][size_t(e)];
            auto y = swiglu(out.tensors->read_f32(names::llama_moe_expert(l, "gate", e)),
                            out.tensors->read_f32(names::llama_moe_expert(l, "up", e)),
                            out.tensors->read_f32(names::llama_moe_expert(l, "down", e)), d.H, w, x, T);
            for (size_t i = 0; i < y.size(); ++i) sum[i] += y[i];
        }
        double err = 0, ref = 0;
        for (size_t i = 0; i < sum.size(); ++i) err = std::max(err, std::abs(sum[i] - dense[i])), ref = std::max(ref, std::abs(dense[i]));
        EXPECT_GT(ref, 0.1);
        EXPECT_LT(err / ref, 1e-5) << "layer " << l;
    }
}

TEST(ConvertLlamaMoE, TensorListAndConfigMatchTheReferenceLayout) {
    TempDir tmp;
    Dense d;
    d.I = 26;  // 4 experts: widths 7, 7, 6, 6
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    ExpertPlan plan = partition_plan(ck, 4);
    ConvertOptions o = opts();
    o.top_k = 3;
    o.seed = 11;
    convert_checkpoint(ck, plan, tmp.path + "/moe", o);
    const std::string dir = tmp.path + "/moe";

    auto store = TensorStore::open_dir(dir);
    std::set<std::string> want = non_ffn_names(d);
    for (int l = 0; l < d.L; ++l) {
        for (int e = 0; e < 4; ++e)
            for (const char* p : {"gate", "up", "down"}) want.insert(names::llama_moe_expert(l, p, e));
        want.insert(names::llama_moe_gate_mlp(l, 0));
        want.insert(names::llama_moe_gate_mlp(l, 2));
        want.insert(names::llama_moe_noise(l));
    }
    EXPECT_EQ(names_of(*store), want);
    for (int l = 0; l < d.L; ++l) {
        const RouterWeights r = make_random_router(4, d.H, true, 11, l);
        const TensorView& g0 = store->get(names::llama_moe_gate_mlp(l, 0));
        const TensorView& g2 = store->get(names::llama_moe_gate_mlp(l, 2));
        EXPECT_EQ(g0.shape, (std::vector<int64_t>{4, d.H}));
        EXPECT_EQ(g2.shape, (std::vector<int64_t>{4, 4}));
        EXPECT_EQ(g0.dtype, DType::BF16);
        expect_router(g0, r.w1);
        expect_router(g2, r.w2);
        const TensorView& noise = store->get(names::llama_moe_noise(l));
        EXPECT_EQ(noise.shape, (std::vector<int64_t>{4, d.H}));
        expect_zeros(noise);
        for (int e = 0; e < 4; ++e) {
            const int64_t w = int64_t(plan.layers[size_t(l)].experts[size_t(e)].size());
            EXPECT_EQ(store->get(names::llama_moe_expert(l, "gate", e)).shape, (std::vector<int64_t>{w, d.H}));
            EXPECT_EQ(store->get(names::llama_moe_expert(l, "up", e)).shape, (std::vector<int64_t>{w, d.H}));
            EXPECT_EQ(store->get(names::llama_moe_expert(l, "down", e)).shape, (std::vector<int64_t>{d.H, w}));
        }
    }

    json c = json::parse(read_file(dir + "/config.json"));
    json dense = json::parse(read_file(tmp.path + "/dense/config.json"));
    json expect = dense;
    expect["architectures"] = {"LlamaMoEForCausalLM"};
    expect["model_type"] = "llama_moe";
    expect["torch_dtype"] = "bfloat16";
    expect["intermediate_size"] = 26;
    expect["num_experts"] = 4;
    expect["num_selects"] = 3;
    expect["size_experts"] = {{7, 7, 6, 6}, {7, 7, 6, 6}};
    expect["gate_type"] = "TopKBalancedNoisyGate";
    expect["gate_network"] = "mlp";
    expect["gate_use_softmax"] = true;
    expect["gate_use_balance"] = true;
    expect["gate_balance_loss_weight"] = 0.01;
    expect["gate_add_noise"] = true;
    expect["gate_noise_epsilon"] = 0.01;
    expect["calculator_type"] = "UniversalCalculator";
    expect["multiply_gate_scores"] = true;
    expect["score_scale_factor"] = 4.0 / 3.0;  // auto: E / k
    expect["add_weight_norm"] = false;
    expect["drop_tokens"] = true;
    expect["dropped_padding"] = "zero";
    expect["capacity_factor"] = 1.25;
    // moefy's own provenance; HF config loaders keep unknown keys as attributes.
    expect["moefy"] = {{"split_method", "test"}, {"router", {{"kind", "random"}, {"init", "N(0, 0.02)"}, {"seed", 11}}}};
    EXPECT_EQ(c, expect) << "diff: " << json::diff(expect, c).dump();

    // The side files come along byte for byte.
    EXPECT_EQ(read_file(dir + "/tokenizer_config.json"), read_file(tmp.path + "/dense/tokenizer_config.json"));
    EXPECT_EQ(read_file(dir + "/generation_config.json"), read_file(tmp.path + "/dense/generation_config.json"));
    EXPECT_FALSE(fs::exists(dir + "/tokenizer.model"));  // absent in the source

    // And the engine's config parser reads back what was meant.
    ModelConfig mc = ModelConfig::load(dir + "/config.json");
    EXPECT_EQ(mc.moe.num_experts, 4);
    EXPECT_EQ(mc.moe.top_k, 3);
    EXPECT_EQ(mc.moe.expert_widths, (std::vector<std::vector<int>>{{7, 7, 6, 6}, {7, 7, 6, 6}}));
    EXPECT_FLOAT_EQ(mc.moe.score_scale[1], 4.0f / 3.0f);
}

TEST(ConvertLlamaMoE, LinearGateOptionsDtypeAndPerLayerScales) {
    TempDir tmp;
    Dense d;
    d.L = 3;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    ExpertPlan plan = partition_plan(ck, 4);
    ConvertOptions o = opts();
    o.gate = GateKind::Linear;
    o.gate_softmax = false;
    o.multiply_gate_scores = false;
    o.layer_scales = {1.0, 2.5, 4.0};
    o.dtype = DType::F32;
    // Precomputed routers replace the random ones.
    for (int l = 0; l < d.L; ++l) {
        RouterWeights r;
        r.num_experts = 4;
        r.hidden_size = d.H;
        for (int i = 0; i < 4 * d.H; ++i) r.w1.push_back(float(l * 1000 + i) * 0.25f);
        o.routers.push_back(r);
    }
    convert_checkpoint(ck, plan, tmp.path + "/moe", o);
    Checkpoint out = Checkpoint::open(tmp.path + "/moe");
    EXPECT_EQ(out.config.moe.gate_network, "linear");
    EXPECT_FALSE(out.config.moe.gate_softmax);
    EXPECT_FALSE(out.config.moe.multiply_gate_scores);
    EXPECT_EQ(out.config.moe.score_scale, (std::vector<float>{1.0f, 2.5f, 4.0f}));
    json c = json::parse(read_file(tmp.path + "/moe/config.json"));
    EXPECT_EQ(c["torch_dtype"], "float32");
    EXPECT_EQ(c["score_scale_factor"], json({1.0, 2.5, 4.0}));
    const TensorStore& s = *out.tensors;
    for (int l = 0; l < d.L; ++l) {
        EXPECT_EQ(s.find(names::llama_moe_gate_mlp(l, 0)), nullptr);
        const TensorView& g = s.get(names::llama_moe_gate_linear(l));
        EXPECT_EQ(g.dtype, DType::F32);
        expect_router(g, o.routers[size_t(l)].w1);
        // bf16 -> f32 is exact: every expert value is the dense value.
        const auto dense_up = ck.tensors->read_f32(names::dense_ffn(l, "up"));
        const auto& ids = plan.layers[size_t(l)].experts[2];
        const TensorView& up = s.get(names::llama_moe_expert(l, "up", 2));
        ASSERT_EQ(up.dtype, DType::F32);
        const auto got = as_f32(up);
        for (size_t i = 0; i < ids.size(); ++i)
            for (int k = 0; k < d.H; ++k) ASSERT_EQ(got[i * size_t(d.H) + size_t(k)], dense_up[size_t(ids[i]) * size_t(d.H) + size_t(k)]);
    }
    const auto emb = as_f32(s.get(names::embed()));
    EXPECT_EQ(emb, ck.tensors->read_f32(names::embed()));
}

TEST(ConvertLlamaMoE, SameSeedSameBytesOtherSeedOtherRouter) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    ExpertPlan plan = partition_plan(ck, 3);
    ConvertOptions o = opts();
    convert_checkpoint(ck, plan, tmp.path + "/a", o);
    convert_checkpoint(ck, plan, tmp.path + "/b", o);
    o.seed = 1;
    convert_checkpoint(ck, plan, tmp.path + "/c", o);
    EXPECT_EQ(read_file(tmp.path + "/a/model.safetensors"), read_file(tmp.path + "/b/model.safetensors"));
    auto a = TensorStore::open_dir(tmp.path + "/a"), c = TensorStore::open_dir(tmp.path + "/c");
    EXPECT_FALSE(same_bytes(a->get(names::llama_moe_gate_mlp(0, 0)), c->get(names::llama_moe_gate_mlp(0, 0))));
    EXPECT_TRUE(same_bytes(a->get(names::llama_moe_expert(1, "down", 2)), c->get(names::llama_moe_expert(1, "down", 2))));
}

TEST(ConvertLlamaMoE, InnerSharingPlanKeepsPerExpertWidths) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    // Overlapping experts of different widths (both layers total 30 > I = 24), in pick order.
    std::vector<LayerPlan> layers(2);
    layers[0].experts = {{5, 1, 9, 23, 0, 2, 3, 4, 6, 7}, {9, 5, 11, 12, 13, 14, 15, 16}, {23, 22, 21, 20, 19, 18, 17, 1, 2, 3, 8, 10}};
    layers[1].experts = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {11, 10, 12}, {13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 0, 1, 2, 3}};
    ExpertPlan plan = plan_for(ck, layers);
    convert_checkpoint(ck, plan, tmp.path + "/moe", opts());
    Checkpoint out = Checkpoint::open(tmp.path + "/moe");
    EXPECT_EQ(out.config.intermediate_size, 30);
    EXPECT_EQ(out.config.moe.expert_widths, (std::vector<std::vector<int>>{{10, 8, 12}, {12, 3, 15}}));
    for (int l = 0; l < 2; ++l)
        for (int e = 0; e < 3; ++e) {
            const auto& ids = layers[size_t(l)].experts[size_t(e)];
            expect_rows(out.tensors->get(names::llama_moe_expert(l, "gate", e)), ck.tensors->get(names::dense_ffn(l, "gate")), ids);
            expect_cols(out.tensors->get(names::llama_moe_expert(l, "down", e)), ck.tensors->get(names::dense_ffn(l, "down")), ids);
        }
    // Per-layer totals that differ cannot be one intermediate_size.
    layers[1].experts[1].push_back(13);
    ExpertPlan bad = plan_for(ck, layers);
    expect_refused([&] { convert_checkpoint(ck, bad, tmp.path + "/bad", opts()); }, "layer 1 routed experts hold 31 neurons",
                   tmp.path + "/bad");
}

TEST(ConvertLlamaMoE, SharedExpertsGiveTheResidualLayout) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    std::vector<LayerPlan> layers(2);
    for (int l = 0; l < 2; ++l) {
        auto parts = shuffled_partition(d.I, 6, 5, l);  // 6 x 4 neurons: 2 shared, 4 routed
        layers[size_t(l)].shared = {parts[0], parts[1]};
        layers[size_t(l)].experts = {parts[2], parts[3], parts[4], parts[5]};
    }
    ExpertPlan plan = plan_for(ck, layers);
    ConvertReport rep = convert_checkpoint(ck, plan, tmp.path + "/moe", opts());
    EXPECT_EQ(rep.layout, "llama-moe-residual");
    Checkpoint out = Checkpoint::open(tmp.path + "/moe");
    ASSERT_EQ(out.config.kind, ModelKind::LlamaMoEResidual);
    std::set<std::string> want = non_ffn_names(d);
    for (int l = 0; l < 2; ++l) {
        for (const char* p : {"gate", "up", "down"}) {
            for (int e = 0; e < 4; ++e) want.insert(names::llama_moe_expert(l, p, e, "mlp.moe_layer"));
            for (int r = 0; r < 2; ++r) want.insert(names::llama_moe_residual_expert(l, p, r));
        }
        want.insert(names::llama_moe_gate_mlp(l, 0, "mlp.moe_layer"));
        want.insert(names::llama_moe_gate_mlp(l, 2, "mlp.moe_layer"));
        want.insert(names::llama_moe_noise(l, "mlp.moe_layer"));
        want.insert(names::llama_moe_residual_gate(l));
        for (int r = 0; r < 2; ++r) {
            const auto& ids = layers[size_t(l)].shared[size_t(r)];
            expect_rows(out.tensors->get(names::llama_moe_residual_expert(l, "up", r)), ck.tensors->get(names::dense_ffn(l, "up")), ids);
            expect_cols(out.tensors->get(names::llama_moe_residual_expert(l, "down", r)), ck.tensors->get(names::dense_ffn(l, "down")), ids);
        }
        const TensorView& rg = out.tensors->get(names::llama_moe_residual_gate(l));
        EXPECT_EQ(rg.shape, (std::vector<int64_t>{2, d.H}));
        expect_zeros(rg);
        expect_rows(out.tensors->get(names::llama_moe_expert(l, "gate", 3, "mlp.moe_layer")), ck.tensors->get(names::dense_ffn(l, "gate")),
                    layers[size_t(l)].experts[3]);
    }
    EXPECT_EQ(names_of(*out.tensors), want);
    json c = json::parse(read_file(tmp.path + "/moe/config.json"));
    EXPECT_EQ(c["architectures"], json({"LlamaMoEResidualForCausalLM"}));
    EXPECT_EQ(c["model_type"], "llama_moe_residual");
    EXPECT_EQ(c["intermediate_size_moe"], 16);
    EXPECT_EQ(c["intermediate_size_residual"], 8);
    EXPECT_EQ(c["intermediate_size"], 24);
    EXPECT_EQ(c["num_experts"], 4);
    EXPECT_EQ(c["num_experts_residual"], 2);
    EXPECT_EQ(c["size_experts"], json({{4, 4, 4, 4}, {4, 4, 4, 4}}));
    EXPECT_EQ(c["size_experts_residual"], json({{4, 4}, {4, 4}}));
    EXPECT_EQ(c["score_scale_factor_residual"], 2.0);  // R: the shared experts sum, not average
    EXPECT_EQ(c["gate_use_softmax_residual"], true);
    EXPECT_EQ(c["multiply_gate_scores_residual"], true);
    EXPECT_EQ(c["use_weighting"], false);
    EXPECT_EQ(c["score_scale_factor"], 2.0);  // 4 routed / top-2
    EXPECT_FALSE(c.contains("add_weight_norm"));
}

TEST(ConvertLlamaMoE, StagingOfDownProjectionsDoesNotChangeTheBytes) {
    // Down projections are gathered in one pass per layer with the later experts
    // staged; a small stage budget splits that into several passes. Same bytes always.
    TempDir tmp;
    Dense d;
    d.I = 28;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    std::vector<LayerPlan> layers(2);
    for (int l = 0; l < 2; ++l) {
        auto p = shuffled_partition(d.I, 7, 4, l);
        layers[size_t(l)].shared = {p[0], p[1]};
        layers[size_t(l)].experts = {p[2], p[3], p[4], p[5], p[6]};
    }
    ExpertPlan plan = plan_for(ck, layers);
    const size_t one_expert = size_t(d.H) * 4 * 2;  // [H, 4] bf16
    for (MoEFormat f : {MoEFormat::LlamaMoE, MoEFormat::Deepseek}) {
        std::string first;
        for (size_t stage : {size_t(256) << 20, 2 * one_expert + 1, one_expert, size_t(0)}) {
            ConvertOptions o = opts(f);
            o.gather_stage_bytes = stage;
            const std::string out = tmp.path + "/" + moe_format_name(f) + std::to_string(stage);
            convert_checkpoint(ck, plan, out, o);
            const std::string bytes = read_file(out + "/model.safetensors");
            if (first.empty()) first = bytes;
            EXPECT_EQ(bytes, first) << moe_format_name(f) << " stage " << stage;
        }
    }
}

// ------------------------------------------------------------------ mixtral

TEST(ConvertMixtral, LayoutConfigAndExactlyFoldedScale) {
    for (DType dt : {DType::BF16, DType::F32}) {
        TempDir tmp;
        Dense d;
        d.dtype = dt;
        write_dense(tmp.path + "/dense", d);
        Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
        ExpertPlan plan = partition_plan(ck, 4);  // 4 x 6
        ConvertOptions o = opts(MoEFormat::Mixtral);
        o.top_k = 3;  // scale auto = 4/3: not a power of two, so the cast really rounds
        ConvertReport rep = convert_checkpoint(ck, plan, tmp.path + "/mx", o);
        EXPECT_TRUE(rep.scale_folded);
        Checkpoint out = Checkpoint::open(tmp.path + "/mx");
        ASSERT_EQ(out.config.kind, ModelKind::Mixtral);
        const float scale = float(4.0 / 3.0);
        std::set<std::string> want = non_ffn_names(d);
        for (int l = 0; l < d.L; ++l) {
            want.insert(names::mixtral_router(l));
            expect_router(out.tensors->get(names::mixtral_router(l)), make_random_router(4, d.H, false, 0, l).w1);
            const TensorView& wd = ck.tensors->get(names::dense_ffn(l, "down"));
            const auto dense_down = as_f32(wd);
            for (int e = 0; e < 4; ++e) {
                for (const char* w : {"w1", "w2", "w3"}) want.insert(names::mixtral_expert(l, e, w));
                const auto& ids = plan.layers[size_t(l)].experts[size_t(e)];
                expect_rows(out.tensors->get(names::mixtral_expert(l, e, "w1")), ck.tensors->get(names::dense_ffn(l, "gate")), ids);
                expect_rows(out.tensors->get(names::mixtral_expert(l, e, "w3")), ck.tensors->get(names::dense_ffn(l, "up")), ids);
                // w2 = down[:, ids] * scale in f32, cast once to the stored dtype.
                const TensorView& w2 = out.tensors->get(names::mixtral_expert(l, e, "w2"));
                ASSERT_EQ(w2.shape, (std::vector<int64_t>{d.H, 6}));
                ASSERT_EQ(w2.dtype, dt);
                std::vector<float> want_f(size_t(d.H) * 6);
                for (int h = 0; h < d.H; ++h)
                    for (size_t j = 0; j < 6; ++j) want_f[size_t(h) * 6 + j] = dense_down[size_t(h) * size_t(d.I) + size_t(ids[j])] * scale;
                std::vector<uint8_t> want_b(w2.nbytes);
                from_f32(dt, want_f.data(), want_b.data(), want_f.size());
                EXPECT_EQ(0, std::memcmp(want_b.data(), w2.data, w2.nbytes)) << w2.name;
                // ... which is not the unscaled gather.
                for (float& v : want_f) v /= scale;
                from_f32(dt, want_f.data(), want_b.data(), want_f.size());
                EXPECT_NE(0, std::memcmp(want_b.data(), w2.data, w2.nbytes)) << w2.name;
            }
        }
        EXPECT_EQ(names_of(*out.tensors), want);
        expect_non_ffn_copied(*out.tensors, *ck.tensors, d);

        json c = json::parse(read_file(tmp.path + "/mx/config.json"));
        EXPECT_EQ(c["architectures"], json({"MixtralForCausalLM"}));
        EXPECT_EQ(c["model_type"], "mixtral");
        EXPECT_EQ(c["num_local_experts"], 4);
        EXPECT_EQ(c["num_experts_per_tok"], 3);
        EXPECT_EQ(c["intermediate_size"], 6);
        EXPECT_TRUE(c["sliding_window"].is_null());
        EXPECT_EQ(c["router_aux_loss_coef"], 0.02);
        EXPECT_EQ(c["output_router_logits"], false);
        EXPECT_EQ(c["rope_theta"], 500000.0);
        EXPECT_EQ(c["rms_norm_eps"], 1e-5);
        EXPECT_EQ(c["vocab_size"], d.V);
        EXPECT_EQ(c["num_key_value_heads"], d.kv);
        EXPECT_EQ(c["max_position_embeddings"], 128);
        EXPECT_EQ(c["torch_dtype"], torch_dtype_name(dt));
        EXPECT_FALSE(c.contains("score_scale_factor"));
    }
}

TEST(ConvertMixtral, UnequalWidthsSharedExpertsAndMlpGateAreRefused) {
    TempDir tmp;
    Dense d;
    d.I = 26;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    const std::string out = tmp.path + "/mx";
    ExpertPlan uneven = partition_plan(ck, 4);  // 7, 7, 6, 6
    expect_refused([&] { convert_checkpoint(ck, uneven, out, opts(MoEFormat::Mixtral)); }, "use --format llama-moe", out);
    ExpertPlan even = partition_plan(ck, 2);
    ConvertOptions mlp = opts(MoEFormat::Mixtral);
    mlp.gate = GateKind::Mlp;
    expect_refused([&] { convert_checkpoint(ck, even, out, mlp); }, "--gate mlp", out);
    ConvertOptions nosm = opts(MoEFormat::Mixtral);
    nosm.gate_softmax = false;
    expect_refused([&] { convert_checkpoint(ck, even, out, nosm); }, "--no-softmax", out);
    std::vector<LayerPlan> layers(2);
    for (int l = 0; l < 2; ++l) {
        auto p = shuffled_partition(26, 3, 1, l);  // 9, 9, 8: two routed (equal), one shared
        layers[size_t(l)].experts = {p[0], p[1]};
        layers[size_t(l)].shared = {p[2]};
    }
    ExpertPlan shared = plan_for(ck, layers);
    expect_refused([&] { convert_checkpoint(ck, shared, out, opts(MoEFormat::Mixtral)); }, "--format deepseek", out);
}

// ------------------------------------------------------------------ deepseek

TEST(ConvertDeepseek, SharedExpertsConcatenateAndScaleFoldsIntoRoutedDown) {
    TempDir tmp;
    Dense d;
    d.I = 28;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    std::vector<LayerPlan> layers(2);
    for (int l = 0; l < 2; ++l) {
        auto p = shuffled_partition(d.I, 7, 9, l);  // 7 x 4: 2 shared, 5 routed
        layers[size_t(l)].shared = {p[0], p[1]};
        layers[size_t(l)].experts = {p[2], p[3], p[4], p[5], p[6]};
    }
    ExpertPlan plan = plan_for(ck, layers);
    ConvertOptions o = opts(MoEFormat::Deepseek);
    o.scale = 1.7;
    convert_checkpoint(ck, plan, tmp.path + "/ds", o);
    Checkpoint out = Checkpoint::open(tmp.path + "/ds");
    ASSERT_EQ(out.config.kind, ModelKind::Deepseek);
    std::set<std::string> want = non_ffn_names(d);
    for (int l = 0; l < 2; ++l) {
        const auto& lp = layers[size_t(l)];
        want.insert(names::deepseek_router(l));
        for (const char* p : {"gate", "up", "down"}) {
            want.insert(names::deepseek_shared(l, p));
            for (int e = 0; e < 5; ++e) want.insert(names::deepseek_expert(l, e, p));
        }
        std::vector<int32_t> sh = lp.shared[0];
        sh.insert(sh.end(), lp.shared[1].begin(), lp.shared[1].end());
        expect_rows(out.tensors->get(names::deepseek_shared(l, "gate")), ck.tensors->get(names::dense_ffn(l, "gate")), sh);
        expect_rows(out.tensors->get(names::deepseek_shared(l, "up")), ck.tensors->get(names::dense_ffn(l, "up")), sh);
        expect_cols(out.tensors->get(names::deepseek_shared(l, "down")), ck.tensors->get(names::dense_ffn(l, "down")), sh);
        expect_rows(out.tensors->get(names::deepseek_expert(l, 4, "up")), ck.tensors->get(names::dense_ffn(l, "up")), lp.experts[4]);
        const TensorView& down = out.tensors->get(names::deepseek_expert(l, 1, "down"));
        const auto dense_down = ck.tensors->read_f32(names::dense_ffn(l, "down"));
        std::vector<float> wantf;
        for (int h = 0; h < d.H; ++h)
            for (int32_t n : lp.experts[1]) wantf.push_back(dense_down[size_t(h) * size_t(d.I) + size_t(n)] * 1.7f);
        std::vector<uint8_t> wb(down.nbytes);
        from_f32(DType::BF16, wantf.data(), wb.data(), wantf.size());
        EXPECT_EQ(0, std::memcmp(wb.data(), down.data, down.nbytes));
        expect_router(out.tensors->get(names::deepseek_router(l)), make_random_router(5, d.H, false, 0, l).w1);
    }
    EXPECT_EQ(names_of(*out.tensors), want);
    json c = json::parse(read_file(tmp.path + "/ds/config.json"));
    EXPECT_EQ(c["architectures"], json({"DeepseekForCausalLM"}));
    EXPECT_EQ(c["model_type"], "deepseek");
    EXPECT_EQ(c["n_routed_experts"], 5);
    EXPECT_EQ(c["n_shared_experts"], 2);
    EXPECT_EQ(c["moe_intermediate_size"], 4);
    EXPECT_EQ(c["num_experts_per_tok"], 2);
    EXPECT_EQ(c["first_k_dense_replace"], 0);
    EXPECT_EQ(c["moe_layer_freq"], 1);
    EXPECT_EQ(c["norm_topk_prob"], false);
    EXPECT_EQ(c["scoring_func"], "softmax");
    EXPECT_EQ(c["routed_scaling_factor"], 1.0);
    EXPECT_EQ(c["intermediate_size"], 28);
    EXPECT_EQ(c["hidden_size"], d.H);
    EXPECT_EQ(out.config.moe.shared_widths[1], std::vector<int>{8});
}

TEST(ConvertDeepseek, RoutedOnlyPlanAndRefusals) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    convert_checkpoint(ck, partition_plan(ck, 4), tmp.path + "/ds", opts(MoEFormat::Deepseek));
    json c = json::parse(read_file(tmp.path + "/ds/config.json"));
    EXPECT_TRUE(c["n_shared_experts"].is_null());
    Checkpoint out = Checkpoint::open(tmp.path + "/ds");
    EXPECT_EQ(out.config.moe.num_shared, 0);
    EXPECT_EQ(out.tensors->find(names::deepseek_shared(0, "up")), nullptr);

    // Shared width 5 is not a multiple of the routed width 4.
    std::vector<LayerPlan> layers(2);
    for (int l = 0; l < 2; ++l) {
        std::vector<int32_t> all(24);
        std::iota(all.begin(), all.end(), 0);
        layers[size_t(l)].shared = {{all.begin(), all.begin() + 5}};
        for (int e = 0; e < 4; ++e) layers[size_t(l)].experts.push_back({all.begin() + 5 + 4 * e, all.begin() + 9 + 4 * e});
    }
    const std::string bad = tmp.path + "/bad";
    expect_refused([&] { convert_checkpoint(ck, plan_for(ck, layers), bad, opts(MoEFormat::Deepseek)); },
                   "not a multiple of the routed width 4", bad);
    layers[0].experts[0].pop_back();
    expect_refused([&] { convert_checkpoint(ck, plan_for(ck, layers), bad, opts(MoEFormat::Deepseek)); }, "different widths", bad);
}

// ------------------------------------------------------------------ sharding

TEST(ConvertSharding, ShardsAndIndexHoldTheSameTensors) {
    TempDir tmp;
    Dense d;
    d.H = 32;
    d.I = 64;
    write_dense(tmp.path + "/dense", d);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    ExpertPlan plan = partition_plan(ck, 4);
    convert_checkpoint(ck, plan, tmp.path + "/one", opts());
    ConvertOptions o = opts();
    o.max_shard_bytes = 8000;
    ConvertReport rep = convert_checkpoint(ck, plan, tmp.path + "/many", o);
    EXPECT_FALSE(fs::exists(tmp.path + "/many/model.safetensors"));
    json idx = json::parse(read_file(tmp.path + "/many/model.safetensors.index.json"));
    auto one = TensorStore::open_dir(tmp.path + "/one");
    auto many = TensorStore::open_dir(tmp.path + "/many");
    EXPECT_GT(many->files().size(), 3u);
    EXPECT_EQ(idx["weight_map"].size(), one->tensor_count());
    EXPECT_EQ(idx["metadata"]["total_size"].get<size_t>(), one->total_bytes());
    EXPECT_EQ(rep.tensor_bytes, one->total_bytes());
    for (const auto& f : many->files()) {
        const size_t n = f->tensors().size();
        size_t bytes = 0;
        for (const auto& t : f->tensors()) bytes += t.nbytes;
        EXPECT_TRUE(bytes <= 8000 || n == 1) << f->path();
    }
    for (const std::string& n : one->names()) {
        EXPECT_TRUE(same_bytes(one->get(n), many->get(n))) << n;
        EXPECT_EQ(idx["weight_map"][n], fs::path(many->get(n).file->path()).filename().string());
    }
    // Every file the report lists is there, and nothing else.
    std::set<std::string> listed(rep.files.begin(), rep.files.end()), present;
    for (auto& e : fs::directory_iterator(tmp.path + "/many")) present.insert(e.path().filename().string());
    EXPECT_EQ(listed, present);
    // A sharded source converts too (and gives the same tensors).
    Dense ds = d;
    ds.shard_bytes = 6000;
    write_dense(tmp.path + "/dense_sharded", ds);
    plan.save(tmp.path + "/plan.json");
    convert_model_dir(tmp.path + "/dense_sharded", tmp.path + "/plan.json", tmp.path + "/from_sharded", opts());
    auto fs_store = TensorStore::open_dir(tmp.path + "/from_sharded");
    for (const std::string& n : one->names()) EXPECT_TRUE(same_bytes(one->get(n), fs_store->get(n))) << n;
}

// ------------------------------------------------------------------ refusals

TEST(ConvertRefusal, BadPlansOptionsAndOutputsLeaveNothingBehind) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    Dense other = d;
    other.seed = 99;  // same shapes, other weights
    write_dense(tmp.path + "/other", other);
    Checkpoint ck = Checkpoint::open(tmp.path + "/dense");
    Checkpoint ck_other = Checkpoint::open(tmp.path + "/other");
    const std::string out = tmp.path + "/out";
    ExpertPlan good = partition_plan(ck, 4);

    expect_refused([&] { convert_checkpoint(ck_other, good, out, opts()); }, "plan was made for another model", out);
    Dense bigger = d;
    bigger.I = 32;
    write_dense(tmp.path + "/bigger", bigger);
    Checkpoint ck_big = Checkpoint::open(tmp.path + "/bigger");
    expect_refused([&] { convert_checkpoint(ck_big, good, out, opts()); }, "intermediate 24", out);

    ExpertPlan dup = good;
    dup.layers[1].experts[2][1] = dup.layers[1].experts[2][0];
    expect_refused([&] { convert_checkpoint(ck, dup, out, opts()); }, "twice", out);
    ExpertPlan range = good;
    range.layers[0].experts[3].push_back(24);
    expect_refused([&] { convert_checkpoint(ck, range, out, opts()); }, "outside [0, 24)", out);

    ConvertOptions k0 = opts();
    k0.top_k = 0;
    expect_refused([&] { convert_checkpoint(ck, good, out, k0); }, "--top-k 0", out);
    ConvertOptions k5 = opts();
    k5.top_k = 5;
    expect_refused([&] { convert_checkpoint(ck, good, out, k5); }, "--top-k 5", out);
    EXPECT_THROW(parse_gate_kind("conv"), Error);
    ConvertOptions sc = opts();
    sc.scale = -1.0;
    expect_refused([&] { convert_checkpoint(ck, good, out, sc); }, "--scale", out);
    ConvertOptions rt = opts();
    rt.routers.resize(2);
    expect_refused([&] { convert_checkpoint(ck, good, out, rt); }, "router of layer 0", out);
    EXPECT_THROW(parse_moe_format("gguf"), Error);
    EXPECT_THROW(parse_out_dtype("int8"), Error);
    EXPECT_THROW(parse_byte_size("5XB", "--max-shard-size"), Error);
    EXPECT_EQ(parse_byte_size("5GB", "x"), size_t(5'000'000'000));
    EXPECT_EQ(parse_byte_size("2GiB", "x"), size_t(2) << 30);
    EXPECT_EQ(parse_byte_size("1.5MB", "x"), size_t(1'500'000));
    EXPECT_EQ(parse_byte_size("4096", "x"), size_t(4096));

    // An existing output is kept untouched without --force, replaced with it.
    fs::create_directories(out);
    std::ofstream(out + "/keep.txt") << "mine";
    expect_refused([&] { convert_checkpoint(ck, good, out, opts()); }, "already exists", out, true);
    EXPECT_EQ(read_file(out + "/keep.txt"), "mine");
    ConvertOptions force = opts();
    force.force = true;
    convert_checkpoint(ck, good, out, force);
    EXPECT_FALSE(fs::exists(out + "/keep.txt"));
    EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
    // --force never replaces the model being read, and an MoE model is not converted again.
    const std::string self = tmp.path + "/dense";
    expect_refused([&] { convert_checkpoint(ck, good, self, force); }, "would replace the model", self, true);
    EXPECT_TRUE(fs::exists(self + "/model.safetensors"));
    Checkpoint moe = Checkpoint::open(out);
    expect_refused([&] { convert_checkpoint(moe, good, tmp.path + "/again", opts()); }, "already an MoE model", tmp.path + "/again");
}

TEST(ConvertRefusal, TruncatedOrMissingShardIsRefusedBeforeWriting) {
    TempDir tmp;
    Dense d;
    d.shard_bytes = 3000;
    write_dense(tmp.path + "/dense", d);
    ExpertPlan plan = partition_plan(Checkpoint::open(tmp.path + "/dense"), 4);
    plan.save(tmp.path + "/plan.json");
    std::vector<std::string> shards;
    for (auto& e : fs::directory_iterator(tmp.path + "/dense"))
        if (e.path().filename().string().rfind("model-", 0) == 0) shards.push_back(e.path().string());
    std::sort(shards.begin(), shards.end());
    ASSERT_GT(shards.size(), 2u);
    const std::string out = tmp.path + "/out";

    const std::string victim = shards[1];
    const std::string saved = read_file(victim);
    fs::resize_file(victim, saved.size() - 100);
    expect_refused([&] { convert_model_dir(tmp.path + "/dense", tmp.path + "/plan.json", out, opts()); }, fs::path(victim).filename().string(),
                   out);
    fs::remove(victim);
    expect_refused([&] { convert_model_dir(tmp.path + "/dense", tmp.path + "/plan.json", out, opts()); }, "is missing", out);
    std::ofstream(victim, std::ios::binary) << saved;
    convert_model_dir(tmp.path + "/dense", tmp.path + "/plan.json", out, opts());
    EXPECT_TRUE(fs::exists(out + "/config.json"));
}

// ------------------------------------------------------------------ writer pipe

namespace {
struct RecordingSink : ByteSink {
    std::string bytes;
    size_t fail_after = SIZE_MAX;  // throw on the write that would pass this many bytes
    void write(const void* d, size_t n) override {
        if (bytes.size() + n > fail_after) throw Error("disk full (test)");
        bytes.append(static_cast<const char*>(d), n);
    }
};
}  // namespace

TEST(ConvertPipe, ChunksArriveInOrderAndWriterErrorsReachTheCaller) {
    convert::ChunkPipe pipe(16, 3);
    RecordingSink ok;
    std::string want;
    {
        convert::ChunkPipe::Tensor t(pipe, ok);
        for (int i = 0; i < 200; ++i) {
            const size_t n = size_t(1 + i % 40);  // some chunks larger than the pipe's 16 bytes
            uint8_t* p = pipe.acquire(n);
            for (size_t k = 0; k < n; ++k) p[k] = uint8_t(i * 7 + int(k));
            want.append(reinterpret_cast<char*>(p), n);
            pipe.submit(n);
        }
        t.end();
    }
    EXPECT_EQ(ok.bytes, want);

    RecordingSink bad;
    bad.fail_after = 100;
    try {
        convert::ChunkPipe::Tensor t(pipe, bad);
        for (int i = 0; i < 1000; ++i) {
            uint8_t* p = pipe.acquire(10);
            std::memset(p, 1, 10);
            pipe.submit(10);
        }
        t.end();
        ADD_FAILURE() << "the writer's error was lost";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("disk full"), std::string::npos);
    }
    EXPECT_EQ(bad.bytes.size(), 100u);
    // The caller throwing mid-tensor: the pipe drops the rest and stays usable.
    RecordingSink later;
    try {
        convert::ChunkPipe::Tensor t(pipe, later);
        pipe.acquire(4);
        throw Error("gather failed");
    } catch (const Error&) {
    }
    RecordingSink again;
    {
        convert::ChunkPipe::Tensor t(pipe, again);
        std::memcpy(pipe.acquire(3), "abc", 3);
        pipe.submit(3);
        t.end();
    }
    EXPECT_EQ(again.bytes, "abc");
}

// ------------------------------------------------------------------ real model + CLI

TEST(SharedConvertStories260K, ConvertsToLlamaMoEAndMixtralWithFourExperts) {
    if (!shared_exists("fixtures/stories260K/model.safetensors")) GTEST_SKIP() << "fixtures/stories260K not present";
    TempDir tmp;
    Checkpoint ck = Checkpoint::open(shared_path("fixtures/stories260K"));
    ASSERT_EQ(ck.config.intermediate_size, 172);
    ExpertPlan plan = partition_plan(ck, 4);
    for (MoEFormat f : {MoEFormat::LlamaMoE, MoEFormat::Mixtral}) {
        const std::string out = tmp.path + "/" + moe_format_name(f);
        convert_checkpoint(ck, plan, out, opts(f));
        Checkpoint moe = Checkpoint::open(out);
        EXPECT_EQ(moe.config.kind, f == MoEFormat::LlamaMoE ? ModelKind::LlamaMoE : ModelKind::Mixtral);
        EXPECT_EQ(moe.config.moe.expert_widths[4], (std::vector<int>{43, 43, 43, 43}));
        EXPECT_EQ(read_file(out + "/tokenizer.model"), read_file(shared_path("fixtures/stories260K/tokenizer.model")));
        for (int l = 0; l < ck.config.num_layers; ++l)
            for (int e = 0; e < 4; ++e) {
                const auto& ids = plan.layers[size_t(l)].experts[size_t(e)];
                const std::string up = f == MoEFormat::LlamaMoE ? names::llama_moe_expert(l, "up", e) : names::mixtral_expert(l, e, "w3");
                expect_rows(moe.tensors->get(up), ck.tensors->get(names::dense_ffn(l, "up")), ids);
                if (f == MoEFormat::LlamaMoE)
                    expect_cols(moe.tensors->get(names::llama_moe_expert(l, "down", e)), ck.tensors->get(names::dense_ffn(l, "down")), ids);
            }
        for (const std::string& n : ck.tensors->names()) {
            if (n.find(".mlp.") == std::string::npos) {
                EXPECT_TRUE(same_bytes(moe.tensors->get(n), ck.tensors->get(n))) << n;
            }
        }
    }
}

TEST(ConvertCli, ConvertsAndRefusesWithAClearMessage) {
    TempDir tmp;
    Dense d;
    write_dense(tmp.path + "/dense", d);
    partition_plan(Checkpoint::open(tmp.path + "/dense"), 4).save(tmp.path + "/plan.json");
    const std::string base = "convert --model " + tmp.path + "/dense --plan " + tmp.path + "/plan.json --out " + tmp.path + "/mx";
    CliResult r = run_cli(base + " --format mixtral --top-k 1 --scale 2 --max-shard-size 4KB");
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("mixtral layout"), std::string::npos) << r.out;
    Checkpoint mx = Checkpoint::open(tmp.path + "/mx");
    EXPECT_EQ(mx.config.moe.top_k, 1);
    EXPECT_GT(mx.tensors->files().size(), 1u);
    r = run_cli(base + " --format mixtral");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
    r = run_cli(base + "2 --format gguf");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("--format 'gguf'"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(tmp.path + "/mx2"));
    r = run_cli(base + "2 --scale fast");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("--scale 'fast'"), std::string::npos) << r.out;
}
