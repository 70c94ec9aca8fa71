// The inference engine against a plain double-precision reference written
// here, against golden values of the demo model, against a known story of
// stories260K, and MoE checkpoints against the dense model they were cut from.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include "common/error.h"
#include "common/rng.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/layers.h"
#include "model/llama.h"
#include "model/ops/kernel_path.h"
#include "model/matmul.h"
#include "model/moe_ffn.h"
#include "model/tensor_names.h"
#include "test_util.h"

namespace moefy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- synthetic checkpoints -------------------------------------------------------

struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> v;
};
using Weights = std::map<std::string, Tensor>;

// Values that F32, BF16 and F16 all hold exactly: bf16-rounded, and zero
// below the f16 normal range, so the three files carry the same model.
float exact_in_all_dtypes(float x) {
    const float r = bf16_to_f32(f32_to_bf16(x));
    return std::fabs(r) < 1e-4f ? 0.0f : r;
}

Tensor randn(Rng& rng, std::vector<int64_t> shape, double stddev, double mean = 0.0) {
    Tensor t{std::move(shape), {}};
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    t.v.resize(size_t(n));
    for (float& x : t.v) x = exact_in_all_dtypes(float(mean + stddev * rng.normal()));
    return t;
}

struct Spec {
    int V = 97, H = 64, I = 96, L = 2, heads = 4, kv = 2, hd = 16, max_pos = 256;
    double theta = 10000.0;
    json rope_scaling = nullptr;
    std::optional<int> window;
    bool tie = false;
};

json dense_config(const Spec& s) {
    json j;
    j["architectures"] = json::array({s.window ? "MistralForCausalLM" : "LlamaForCausalLM"});
    j["model_type"] = s.window ? "mistral" : "llama";
    j["vocab_size"] = s.V;
    j["hidden_size"] = s.H;
    j["intermediate_size"] = s.I;
    j["num_hidden_layers"] = s.L;
    j["num_attention_heads"] = s.heads;
    j["num_key_value_heads"] = s.kv;
    j["head_dim"] = s.hd;
    j["max_position_embeddings"] = s.max_pos;
    j["rms_norm_eps"] = 1e-5;
    j["rope_theta"] = s.theta;
    j["rope_scaling"] = s.rope_scaling;
    j["tie_word_embeddings"] = s.tie;
    j["hidden_act"] = "silu";
    j["bos_token_id"] = 1;
    j["eos_token_id"] = 2;
    if (s.window) j["sliding_window"] = *s.window;
    return j;
}

Weights dense_weights(const Spec& s, uint64_t seed) {
    Rng rng(seed);
    Weights w;
    const int64_t H = s.H, Q = int64_t(s.heads) * s.hd, KV = int64_t(s.kv) * s.hd, I = s.I;
    w[names::embed()] = randn(rng, {s.V, H}, 1.0);
    w[names::final_norm()] = randn(rng, {H}, 0.1, 1.0);
    if (!s.tie) w[names::lm_head()] = randn(rng, {s.V, H}, 1.0 / std::sqrt(double(H)));
    for (int l = 0; l < s.L; ++l) {
        w[names::input_norm(l)] = randn(rng, {H}, 0.1, 1.0);
        w[names::post_norm(l)] = randn(rng, {H}, 0.1, 1.0);
        w[names::attn(l, "q")] = randn(rng, {Q, H}, 1.0 / std::sqrt(double(H)));
        w[names::attn(l, "k")] = randn(rng, {KV, H}, 1.0 / std::sqrt(double(H)));
        w[names::attn(l, "v")] = randn(rng, {KV, H}, 1.0 / std::sqrt(double(H)));
        w[names::attn(l, "o")] = randn(rng, {H, Q}, 0.5 / std::sqrt(double(Q)));
        w[names::dense_ffn(l, "gate")] = randn(rng, {I, H}, 1.0 / std::sqrt(double(H)));
        w[names::dense_ffn(l, "up")] = randn(rng, {I, H}, 1.0 / std::sqrt(double(H)));
        w[names::dense_ffn(l, "down")] = randn(rng, {H, I}, 0.5 / std::sqrt(double(I)));
    }
    return w;
}

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& name)
        : path(fs::temp_directory_path() / fmt::format("moefy-engine-{}-{}", getpid(), name)) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() { fs::remove_all(path); }
    std::string str() const { return path.string(); }
};

void write_model(const std::string& dir, const json& cfg, const Weights& w, DType dt) {
    fs::create_directories(dir);
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    std::vector<TensorSpec> specs;
    std::vector<const Tensor*> ts;
    for (const auto& [name, t] : w) {
        specs.push_back({name, dt, t.shape});
        ts.push_back(&t);
    }
    write_safetensors(dir + "/model.safetensors", specs, [&](size_t i, ByteSink& sink) {
        std::vector<uint8_t> buf(ts[i]->v.size() * dtype_size(dt));
        from_f32(dt, ts[i]->v.data(), buf.data(), ts[i]->v.size());
        sink.write(buf.data(), buf.size());
    });
}

std::vector<int32_t> random_tokens(int T, int V, uint64_t seed) {
    Rng rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(T));
    for (auto& x : t) x = int32_t(rng.below(uint64_t(V)));
    return t;
}

// ---- the reference: plain loops in double ------------------------------------------

using Vec = std::vector<double>;

double silu(double g) { return g / (1.0 + std::exp(-g)); }

struct Naive {
    const ModelConfig& c;
    const Weights& w;
    Naive(const ModelConfig& c_, const Weights& w_) : c(c_), w(w_) {}
    // Replaces the routing of MoE layers: (layer, x, sel, weight) as in RouteOverride.
    std::function<void(int, const Vec&, std::vector<int>&, Vec&)> force;
    // Sees h = silu(gate)·up of dense layers per token: (layer, t, h).
    std::function<void(int, int, const Vec&)> on_h;

    const Tensor& t(const std::string& n) const {
        auto it = w.find(n);
        if (it == w.end()) throw std::runtime_error("naive: no tensor " + n);
        return it->second;
    }
    Vec mv(const std::string& n, const Vec& x) const {  // W · x
        const Tensor& W = t(n);
        const int64_t R = W.shape[0], C = W.shape[1];
        Vec y(static_cast<size_t>(R), 0.0);
        for (int64_t r = 0; r < R; ++r)
            for (int64_t k = 0; k < C; ++k) y[size_t(r)] += double(W.v[size_t(r * C + k)]) * x[size_t(k)];
        return y;
    }
    Vec rms(const Vec& x, const std::string& n) const {
        double ss = 0;
        for (double v : x) ss += v * v;
        const double inv = 1.0 / std::sqrt(ss / double(x.size()) + c.rms_norm_eps);
        Vec y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = double(t(n).v[i]) * x[i] * inv;
        return y;
    }
    Vec swiglu(const std::string& g, const std::string& u, const std::string& d, const Vec& x, Vec* h_out = nullptr) const {
        Vec a = mv(g, x), b = mv(u, x);
        for (size_t i = 0; i < a.size(); ++i) a[i] = silu(a[i]) * b[i];
        if (h_out) *h_out = a;
        return mv(d, a);
    }
    static void add(Vec& y, const Vec& a, double s = 1.0) {
        for (size_t i = 0; i < y.size(); ++i) y[i] += s * a[i];
    }
    static Vec softmax(const Vec& v) {
        const double m = *std::max_element(v.begin(), v.end());
        Vec p(v.size());
        double z = 0;
        for (size_t i = 0; i < v.size(); ++i) z += p[i] = std::exp(v[i] - m);
        for (double& x : p) x /= z;
        return p;
    }
    Vec expert(int l, int e, const Vec& x) const {
        switch (c.kind) {
            case ModelKind::Mixtral:
                return swiglu(names::mixtral_expert(l, e, "w1"), names::mixtral_expert(l, e, "w3"), names::mixtral_expert(l, e, "w2"), x);
            case ModelKind::Deepseek:
                return swiglu(names::deepseek_expert(l, e, "gate"), names::deepseek_expert(l, e, "up"),
                              names::deepseek_expert(l, e, "down"), x);
            default: {
                const char* pre = c.kind == ModelKind::LlamaMoE ? "mlp" : "mlp.moe_layer";
                return swiglu(names::llama_moe_expert(l, "gate", e, pre), names::llama_moe_expert(l, "up", e, pre),
                              names::llama_moe_expert(l, "down", e, pre), x);
            }
        }
    }
    Vec router(int l, const Vec& x) const {
        switch (c.kind) {
            case ModelKind::Mixtral: return mv(names::mixtral_router(l), x);
            case ModelKind::Deepseek: return mv(names::deepseek_router(l), x);
            default: {
                const char* pre = c.kind == ModelKind::LlamaMoE ? "mlp" : "mlp.moe_layer";
                if (c.moe.gate_network == "linear") return mv(names::llama_moe_gate_linear(l, pre), x);
                Vec a = mv(names::llama_moe_gate_mlp(l, 0, pre), x);
                for (double& v : a) v = std::tanh(v);
                return mv(names::llama_moe_gate_mlp(l, 2, pre), a);
            }
        }
    }
    Vec ffn(int l, int tok, const Vec& x) const {
        if (!c.is_moe()) {
            Vec h;
            Vec y = swiglu(names::dense_ffn(l, "gate"), names::dense_ffn(l, "up"), names::dense_ffn(l, "down"), x, &h);
            if (on_h) on_h(l, tok, h);
            return y;
        }
        const MoEConfig& m = c.moe;
        const int E = m.num_experts, k = m.top_k;
        const Vec r = router(l, x);
        std::vector<int> order(static_cast<size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return r[size_t(a)] > r[size_t(b)]; });
        std::vector<int> sel(order.begin(), order.begin() + k);
        Vec wt(static_cast<size_t>(k));
        if (m.softmax_over_all) {
            const Vec p = softmax(r);
            double s = 0;
            for (int j = 0; j < k; ++j) s += wt[size_t(j)] = p[size_t(sel[size_t(j)])];
            if (m.renormalize_topk)
                for (double& v : wt) v /= s;
        } else {
            Vec sr(static_cast<size_t>(k));
            for (int j = 0; j < k; ++j) sr[size_t(j)] = r[size_t(sel[size_t(j)])];
            wt = m.gate_softmax ? softmax(sr) : sr;
        }
        for (double& v : wt) v = m.multiply_gate_scores ? v * m.score_scale[size_t(l)] : 1.0;
        if (force) force(l, x, sel, wt);
        Vec y(x.size(), 0.0);
        for (size_t j = 0; j < sel.size(); ++j)
            if (sel[j] >= 0) add(y, expert(l, sel[j], x), wt[j]);
        if (c.kind == ModelKind::Deepseek && m.num_shared > 0)
            add(y, swiglu(names::deepseek_shared(l, "gate"), names::deepseek_shared(l, "up"), names::deepseek_shared(l, "down"), x));
        if (c.kind == ModelKind::LlamaMoEResidual) {
            const Vec g = softmax(mv(names::llama_moe_residual_gate(l), x));
            for (int i = 0; i < m.num_shared; ++i)
                add(y,
                    swiglu(names::llama_moe_residual_expert(l, "gate", i), names::llama_moe_residual_expert(l, "up", i),
                           names::llama_moe_residual_expert(l, "down", i), x),
                    m.shared_multiply ? g[size_t(i)] * m.shared_scale : 1.0);
        }
        return y;
    }
    Vec inv_freq() const {
        const int d = c.head_dim;
        Vec f(static_cast<size_t>(d / 2));
        for (int i = 0; i < d / 2; ++i) f[size_t(i)] = std::pow(c.rope_theta, -2.0 * i / d);
        const RopeScaling& s = c.rope_scaling;
        if (s.type == "llama3") {
            for (double& x : f) {
                const double wl = 2 * M_PI / x, lo = s.original_max_position_embeddings / s.low_freq_factor,
                             hi = s.original_max_position_embeddings / s.high_freq_factor;
                if (wl > lo) {
                    x /= s.factor;
                } else if (wl >= hi) {
                    const double a = (s.original_max_position_embeddings / wl - s.low_freq_factor) /
                                     (s.high_freq_factor - s.low_freq_factor);
                    x = (1 - a) * x / s.factor + a * x;
                }
            }
        }
        return f;
    }
    void rope(Vec& v, int heads, int pos, const Vec& f) const {
        const int d = c.head_dim, half = d / 2;
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < half; ++i) {
                const double a = v[size_t(h * d + i)], b = v[size_t(h * d + i + half)], th = pos * f[size_t(i)];
                v[size_t(h * d + i)] = a * std::cos(th) - b * std::sin(th);
                v[size_t(h * d + i + half)] = b * std::cos(th) + a * std::sin(th);
            }
    }
    // logits [T, V] of tokens at positions 0..T-1
    Vec logits(const std::vector<int32_t>& toks) const {
        const int T = int(toks.size()), H = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
        const Vec f = inv_freq();
        std::vector<Vec> x(static_cast<size_t>(T));
        const Tensor& emb = t(names::embed());
        for (int i = 0; i < T; ++i) x[size_t(i)].assign(emb.v.begin() + int64_t(toks[size_t(i)]) * H, emb.v.begin() + int64_t(toks[size_t(i)] + 1) * H);
        for (int l = 0; l < c.num_layers; ++l) {
            std::vector<Vec> q(static_cast<size_t>(T)), k(static_cast<size_t>(T)), v(static_cast<size_t>(T));
            for (int i = 0; i < T; ++i) {
                const Vec a = rms(x[size_t(i)], names::input_norm(l));
                q[size_t(i)] = mv(names::attn(l, "q"), a);
                k[size_t(i)] = mv(names::attn(l, "k"), a);
                v[size_t(i)] = mv(names::attn(l, "v"), a);
                rope(q[size_t(i)], nh, i, f);
                rope(k[size_t(i)], nkv, i, f);
            }
            for (int i = 0; i < T; ++i) {
                Vec o(static_cast<size_t>(nh * d), 0.0);
                for (int h = 0; h < nh; ++h) {
                    const int g = h / (nh / nkv);
                    Vec s;
                    std::vector<int> js;
                    for (int j = 0; j <= i; ++j) {
                        if (c.sliding_window && i - j >= *c.sliding_window) continue;
                        double dot = 0;
                        for (int e = 0; e < d; ++e) dot += q[size_t(i)][size_t(h * d + e)] * k[size_t(j)][size_t(g * d + e)];
                        s.push_back(dot / std::sqrt(double(d)));
                        js.push_back(j);
                    }
                    const Vec p = softmax(s);
                    for (size_t n = 0; n < js.size(); ++n)
                        for (int e = 0; e < d; ++e) o[size_t(h * d + e)] += p[n] * v[size_t(js[n])][size_t(g * d + e)];
                }
                add(x[size_t(i)], mv(names::attn(l, "o"), o));
            }
            for (int i = 0; i < T; ++i) add(x[size_t(i)], ffn(l, i, rms(x[size_t(i)], names::post_norm(l))));
        }
        const std::string head = c.tie_word_embeddings ? names::embed() : names::lm_head();
        Vec out;
        for (int i = 0; i < T; ++i) {
            const Vec y = mv(head, rms(x[size_t(i)], names::final_norm()));
            out.insert(out.end(), y.begin(), y.end());
        }
        return out;
    }
};

// max |a - b| / max(1, |b|) over all entries
template <typename A, typename B>
double max_rel_err(const A& a, const B& b) {
    EXPECT_EQ(a.size(), b.size());
    double e = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
        e = std::max(e, std::fabs(double(a[i]) - double(b[i])) / std::max(1.0, std::fabs(double(b[i]))));
    return e;
}

std::vector<float> engine_logits(Model& m, const std::vector<int32_t>& toks, const RunHooks& hooks = {}) {
    std::vector<float> out(toks.size() * size_t(m.vocab_size()));
    m.forward(toks.data(), int(toks.size()), 0, nullptr, out.data(), hooks);
    return out;
}

// A model written to a temporary directory and opened.
struct Opened {
    TempDir dir;
    Checkpoint ckpt;
    std::unique_ptr<Model> model;
    Opened(const std::string& name, const json& cfg, const Weights& w, DType dt) : dir(name) {
        write_model(dir.str(), cfg, w, dt);
        ckpt = Checkpoint::open(dir.str());
        model = Model::load(ckpt);
    }
};

// ---- matmul -------------------------------------------------------------------------

TEST(EngineMatmul, AllPathsMatchDoubleReference) {
    // 1000 x 600 = 600k elements: more than one converted row block.
    const int N = 1000, K = 600;
    Rng rng(7);
    Tensor W = randn(rng, {N, K}, 0.05);
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
        std::vector<uint8_t> raw(W.v.size() * dtype_size(dt));
        from_f32(dt, W.v.data(), raw.data(), W.v.size());
        const WeightRef ref{raw.data(), dt, N, K};
        for (int T : {1, 3, 6, 31, 32, 40}) {  // direct (single, 4-token tiles), sgemm
            Tensor x = randn(rng, {T, K}, 1.0);
            std::vector<float> y0(size_t(T) * N);
            for (float& v : y0) v = float(rng.normal());
            for (bool acc : {false, true}) {
                std::vector<float> y = y0;
                matmul(x.v.data(), T, ref, y.data(), acc);
                double err = 0;
                for (int t = 0; t < T; ++t)
                    for (int n = 0; n < N; ++n) {
                        double s = acc ? y0[size_t(t) * N + n] : 0.0;
                        for (int k = 0; k < K; ++k) s += double(x.v[size_t(t) * K + k]) * W.v[size_t(n) * K + k];
                        err = std::max(err, std::fabs(s - y[size_t(t) * N + n]));
                    }
                EXPECT_LT(err, 2e-5) << dtype_name(dt) << " T=" << T << " acc=" << acc;
            }
        }
        // gather_rows: exact rows, and out-of-range ids refused
        const int32_t ids[3] = {999, 0, 17};
        std::vector<float> g(3 * size_t(K));
        gather_rows(ref, ids, 3, g.data());
        for (int i = 0; i < 3; ++i)
            for (int k = 0; k < K; ++k) ASSERT_EQ(g[size_t(i) * K + k], W.v[size_t(ids[i]) * K + k]);
        const int32_t bad[1] = {N};
        EXPECT_THROW(gather_rows(ref, bad, 1, g.data()), Error);
    }
}

// Every kernel path this CPU has, on BF16 weights: against a double reference,
// and row t of y is bitwise the same whatever T (so prefill, decode and
// thread count never change a token's numbers).
// Shapes: odd K (the pair padding) with N not a multiple of 16 or 64; whole
// 32 x 32 tiles (amx reads W as stored); whole tiles but a half block of rows.
class EveryKernelPath : public ::testing::TestWithParam<std::pair<int, int>> {};
INSTANTIATE_TEST_SUITE_P(EngineMatmul, EveryKernelPath,
                         ::testing::Values(std::pair{200, 333}, std::pair{96, 256}, std::pair{48, 64}));
TEST_P(EveryKernelPath, MatchesDoubleReference) {
    const auto [N, K] = GetParam();
    Rng rng(8);
    Tensor W = randn(rng, {N, K}, 0.05);
    std::vector<uint16_t> raw(W.v.size());
    from_f32(DType::BF16, W.v.data(), raw.data(), W.v.size());
    std::vector<float> wq(W.v.size());
    to_f32(DType::BF16, raw.data(), wq.data(), wq.size());
    const WeightRef ref{raw.data(), DType::BF16, N, K};
    const int Tmax = 45;
    Tensor x = randn(rng, {Tmax, K}, 1.0);
    for (ops::KernelPath p : {ops::KernelPath::Sgemm, ops::KernelPath::Avx2, ops::KernelPath::Avx512Bf16, ops::KernelPath::Amx}) {
        if (!ops::cpu_supports(p)) continue;
        ops::ScopedKernelPath sp(p);
        for (bool exact : {true, false}) {
            if (!exact && p != ops::KernelPath::Avx512Bf16 && p != ops::KernelPath::Amx) continue;
            const bool prev = ops::set_exact_activations(exact);
            std::vector<float> full(size_t(Tmax) * N), part(size_t(Tmax) * N);
            matmul(x.v.data(), Tmax, ref, full.data());
            double err = 0, scale = 0;
            for (int t = 0; t < Tmax; ++t)
                for (int n = 0; n < N; ++n) {
                    double s = 0, a = 0;
                    for (int k = 0; k < K; ++k) {
                        s += double(x.v[size_t(t) * K + k]) * wq[size_t(n) * K + k];
                        a += std::fabs(double(x.v[size_t(t) * K + k]) * wq[size_t(n) * K + k]);
                    }
                    err = std::max(err, std::fabs(s - full[size_t(t) * N + n]));
                    scale = std::max(scale, a);
                }
            // exact: three BF16 terms hold all of x; one BF16 keeps 8 bits (2^-9 relative per product)
            EXPECT_LT(err, exact ? 2e-5 : 4e-3 * scale) << ops::kernel_path_name(p) << " exact=" << exact;
            if (p != ops::KernelPath::Sgemm)
                for (int T : {8, 13, 32}) {
                    matmul(x.v.data() + size_t(Tmax - T) * K, T, ref, part.data());
                    for (size_t i = 0; i < size_t(T) * N; ++i)
                        ASSERT_EQ(part[i], full[size_t(Tmax - T) * N + i]) << ops::kernel_path_name(p) << " T=" << T;
                }
            // decoding (the direct kernel, < 8 tokens) rounds x as the micro-kernels do: the same
            // products, summed in another order. x here has all 24 bits (randn's are BF16-exact);
            // one BF16 rounding apart would be about 1e-4 * scale.
            if (ops::rounds_activations_to_bf16()) {
                std::vector<float> xf(x.v);
                for (float& v : xf) v *= float(1.0 + 0.01 * rng.normal());
                matmul(xf.data(), Tmax, ref, full.data());
                for (int T : {1, 5}) {
                    matmul(xf.data(), T, ref, part.data());
                    for (size_t i = 0; i < size_t(T) * N; ++i)
                        ASSERT_NEAR(part[i], full[i], 1e-6 * scale) << ops::kernel_path_name(p) << " T=" << T;
                }
            }
            ops::set_exact_activations(prev);
        }
    }
    EXPECT_THROW(ops::parse_kernel_path("avx9"), Error);
}

// matmul_multi (q/k/v, gate/up: one conversion of x, the row blocks of all
// products in one parallel region) gives each product's own matmul, bit for bit.
TEST(EngineMatmul, MultiEqualsSeparateProductsOnEveryPath) {
    Rng rng(9);
    for (int K : {333, 256}) {
        std::vector<std::vector<uint16_t>> raw;
        std::vector<WeightRef> ws;
        for (int N : {200, 96, 48}) {
            Tensor W = randn(rng, {N, K}, 0.05);
            raw.emplace_back(W.v.size());
            from_f32(DType::BF16, W.v.data(), raw.back().data(), W.v.size());
        }
        for (size_t i = 0; i < raw.size(); ++i) ws.push_back({raw[i].data(), DType::BF16, int64_t(raw[i].size() / K), K});
        Tensor x = randn(rng, {40, K}, 1.0);
        for (ops::KernelPath p : {ops::KernelPath::Sgemm, ops::KernelPath::Avx2, ops::KernelPath::Avx512Bf16, ops::KernelPath::Amx}) {
            if (!ops::cpu_supports(p)) continue;
            ops::ScopedKernelPath sp(p);
            for (int T : {3, 8, 40}) {
                std::vector<std::vector<float>> multi(3), single(3);
                for (int i = 0; i < 3; ++i) {
                    multi[size_t(i)].assign(size_t(T) * size_t(ws[size_t(i)].rows), -1.0f);
                    single[size_t(i)].assign(multi[size_t(i)].size(), -2.0f);
                    matmul(x.v.data(), T, ws[size_t(i)], single[size_t(i)].data());
                }
                matmul_multi(x.v.data(), T, {{&ws[0], multi[0].data()}, {&ws[1], multi[1].data()}, {&ws[2], multi[2].data()}});
                for (int i = 0; i < 3; ++i)
                    ASSERT_EQ(multi[size_t(i)], single[size_t(i)]) << ops::kernel_path_name(p) << " K=" << K << " T=" << T << " product " << i;
            }
        }
    }
}

// Attention on every kernel path (amx and avx512bf16 run the AVX-512 tiles of
// ops/attention_f32.h for head sizes 16..128, amx in bf16 mode the AMX tiles of
// ops/attention_amx.h for head sizes that are multiples of 32, the others sgemm)
// against a double reference: causal and sliding window, a key offset (a KV cache), GQA, query
// counts that leave partial row and key tiles.
TEST(EngineAttention, EveryPathMatchesDoubleReference) {
    Rng rng(11);
    struct Case { int heads, kv, d, T, S, kpos0; std::optional<int> window; };
    for (const Case& c : {Case{4, 2, 64, 70, 70, 0, std::nullopt}, Case{2, 1, 128, 37, 45, 0, std::nullopt},
                          Case{4, 4, 16, 33, 33, 0, 9}, Case{3, 1, 48, 20, 61, 3, std::nullopt},
                          Case{4, 2, 32, 50, 77, 5, 12}, Case{2, 2, 96, 100, 100, 0, std::nullopt}}) {
        const int qld = c.heads * c.d, kld = c.kv * c.d, qpos0 = c.kpos0 + c.S - c.T;
        Tensor q = randn(rng, {c.T, qld}, 1.0), k = randn(rng, {c.S, kld}, 1.0), v = randn(rng, {c.S, kld}, 1.0);
        std::vector<double> want(size_t(c.T) * qld);
        for (int t = 0; t < c.T; ++t)
            for (int h = 0; h < c.heads; ++h) {
                const int g = h / (c.heads / c.kv), p = qpos0 + t;
                std::vector<double> w(size_t(c.S), 0.0);
                double mx = -1e300, z = 0;
                for (int j = 0; j < c.S; ++j) {
                    const int kp = c.kpos0 + j;
                    if (kp > p || (c.window && kp <= p - *c.window)) continue;
                    double dot = 0;
                    for (int i = 0; i < c.d; ++i) dot += double(q.v[size_t(t) * qld + h * c.d + i]) * k.v[size_t(j) * kld + g * c.d + i];
                    w[size_t(j)] = dot / std::sqrt(double(c.d));
                    mx = std::max(mx, w[size_t(j)]);
                }
                for (int j = 0; j < c.S; ++j) {
                    const int kp = c.kpos0 + j;
                    const bool vis = !(kp > p || (c.window && kp <= p - *c.window));
                    w[size_t(j)] = vis ? std::exp(w[size_t(j)] - mx) : 0.0;
                    z += w[size_t(j)];
                }
                for (int i = 0; i < c.d; ++i) {
                    double o = 0;
                    for (int j = 0; j < c.S; ++j) o += w[size_t(j)] * v.v[size_t(j) * kld + g * c.d + i];
                    want[size_t(t) * qld + h * c.d + i] = o / z;
                }
            }
        for (ops::KernelPath path : {ops::KernelPath::Sgemm, ops::KernelPath::Avx2, ops::KernelPath::Avx512Bf16, ops::KernelPath::Amx}) {
            if (!ops::cpu_supports(path)) continue;
            ops::ScopedKernelPath sp(path);
            for (bool exact : {true, false}) {
                if (!exact && path != ops::KernelPath::Amx) continue;
                const bool prev = ops::set_exact_activations(exact);
                std::vector<float> out(want.size(), -7.0f);
                layers::attention({c.heads, c.kv, c.d, c.window}, q.v.data(), c.T, qpos0, k.v.data(), v.v.data(), c.S,
                                  c.kpos0, out.data());
                ops::set_exact_activations(prev);
                double err = 0;
                for (size_t i = 0; i < want.size(); ++i) err = std::max(err, std::fabs(out[i] - want[i]));
                // bf16 mode on amx (d a multiple of 32): operands split into two BF16 terms, 2^-16 per
                // product (measured up to 1.3e-5 here; one BF16 per operand would be near 1e-2)
                EXPECT_LT(err, exact ? 2e-5 : 5e-5) << ops::kernel_path_name(path) << " exact=" << exact << " d=" << c.d
                                                    << " T=" << c.T;
            }
        }
    }
}

// ---- dense models against the reference ------------------------------------------------

TEST(EngineDense, DtypesAgreeAndMatchReference) {
    Spec s;
    const Weights w = dense_weights(s, 11);
    const ModelConfig cfg = ModelConfig::parse(dense_config(s), "test");
    const Naive ref{cfg, w};
    std::vector<std::vector<float>> by_dtype;
    for (int T : {5, 40}) {  // direct kernels, then the sgemm paths
        const auto toks = random_tokens(T, s.V, 100 + T);
        const Vec want = ref.logits(toks);
        std::vector<std::vector<float>> got;
        for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
            Opened m(fmt::format("dtype-{}-{}", dtype_name(dt), T), dense_config(s), w, dt);
            got.push_back(engine_logits(*m.model, toks));
            EXPECT_LT(max_rel_err(got.back(), want), 1e-4) << dtype_name(dt) << " T=" << T;
        }
        // Same values in every dtype: only the summation order may differ.
        EXPECT_LT(max_rel_err(got[1], got[0]), 1e-5);
        EXPECT_LT(max_rel_err(got[2], got[0]), 1e-5);
    }
}

TEST(EngineDense, GqaLlama3RopeSlidingWindowTiedMatchReference) {
    Spec s;
    s.heads = 6;
    s.kv = 2;
    s.hd = 12;  // heads·head_dim = 72 != hidden 64
    s.rope_scaling = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                      {"original_max_position_embeddings", 32}};
    s.window = 8;
    s.tie = true;
    const Weights w = dense_weights(s, 12);
    const json cj = dense_config(s);
    const ModelConfig cfg = ModelConfig::parse(cj, "test");
    ASSERT_EQ(cfg.rope_scaling.type, "llama3");
    Opened m("gqa", cj, w, DType::BF16);
    for (int T : {7, 70}) {
        const auto toks = random_tokens(T, s.V, 200 + T);
        EXPECT_LT(max_rel_err(engine_logits(*m.model, toks), Naive{cfg, w}.logits(toks)), 1e-4) << "T=" << T;
    }
}

TEST(EngineDense, NllMatchesReferenceAcrossVocabBlocks) {
    Spec s;
    s.V = 2100;  // more than one 2048-row block of lm_head
    const Weights w = dense_weights(s, 13);
    const json cj = dense_config(s);
    const ModelConfig cfg = ModelConfig::parse(cj, "test");
    Opened m("nll", cj, w, DType::BF16);
    for (int T : {6, 30}) {
        const auto toks = random_tokens(T, s.V, 300 + T);
        const Vec lg = Naive{cfg, w}.logits(toks);
        std::vector<float> per(static_cast<size_t>(T - 1));
        const double got = m.model->nll_sum(toks.data(), T, {}, per.data());
        double want = 0;
        for (int t = 0; t + 1 < T; ++t) {
            const double* row = lg.data() + size_t(t) * s.V;
            const double mx = *std::max_element(row, row + s.V);
            double z = 0;
            for (int v = 0; v < s.V; ++v) z += std::exp(row[v] - mx);
            const double nll = mx + std::log(z) - row[toks[size_t(t + 1)]];
            EXPECT_NEAR(per[size_t(t)], nll, 1e-4 * std::max(1.0, nll));
            want += nll;
        }
        EXPECT_NEAR(got, want, 1e-4 * want);
    }
}

TEST(EngineDense, KvCacheDecodingEqualsFullForward) {
    Spec s;
    s.window = 12;  // smaller than the sequence, so the cache path masks too
    const Weights w = dense_weights(s, 14);
    Opened m("kv", dense_config(s), w, DType::BF16);
    Model& model = *m.model;
    const int T = 45, V = s.V;
    const auto toks = random_tokens(T, V, 400);
    const std::vector<float> full = engine_logits(model, toks);
    KVCache cache = model.make_cache(T);
    std::vector<float> step(size_t(T) * V);
    // prefill 20 (sgemm attention), a chunk of 17 at an offset (sgemm with a
    // cached prefix), then one token at a time (direct kernels)
    model.forward(toks.data(), 20, 0, &cache, step.data());
    model.forward(toks.data() + 20, 17, 20, &cache, step.data() + 20 * V);
    for (int t = 37; t < T; ++t) model.forward(&toks[size_t(t)], 1, t, &cache, step.data() + size_t(t) * V);
    EXPECT_EQ(cache.n, T);
    EXPECT_LT(max_rel_err(step, full), 1e-5);
    // forward_last gives the last row
    KVCache c2 = model.make_cache(T);
    std::vector<float> last(static_cast<size_t>(V));
    model.forward_last(toks.data(), T, 0, &c2, last.data());
    EXPECT_LT(max_rel_err(last, std::vector<float>(full.end() - V, full.end())), 1e-5);
    // wrong start position and overflow are refused
    EXPECT_THROW(model.forward(toks.data(), 1, 3, &cache, nullptr), Error);
    EXPECT_THROW(model.forward(toks.data(), 1, T, &cache, nullptr), Error);
}

TEST(EngineDense, ErrorsNameTheProblem) {
    Spec s;
    s.max_pos = 32;
    Opened m("err", dense_config(s), dense_weights(s, 15), DType::F32);
    const auto toks = random_tokens(33, s.V, 500);
    try {
        m.model->forward(toks.data(), 33, 0, nullptr, nullptr);
        FAIL() << "no error for a context past max_position_embeddings";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("max_position_embeddings"), std::string::npos) << e.what();
    }
    std::vector<int32_t> bad = {1, 5, s.V};
    EXPECT_THROW(m.model->forward(bad.data(), 3, 0, nullptr, nullptr), Error);
    bad = {1, -1};
    EXPECT_THROW(m.model->nll_sum(bad.data(), 2), Error);
    GenerateOptions go;
    go.max_new_tokens = 30;
    EXPECT_THROW(generate(*m.model, std::vector<int32_t>(5, 3), go), Error);
}

struct Recorder : FfnObserver {
    int want;
    std::vector<FfnActs> seen;  // pointers dangle after the call: use the copies below
    std::vector<std::vector<float>> h, g, u, weight;
    std::vector<std::vector<int32_t>> rows;
    explicit Recorder(int layer) : want(layer) {}
    bool wants(int layer) const override { return want < 0 || layer == want; }
    void on_ffn(int layer, const FfnActs& a) override {
        seen.push_back(a);
        rows.emplace_back(a.rows ? std::vector<int32_t>(a.rows, a.rows + a.n) : std::vector<int32_t>{});
        weight.emplace_back(a.weight ? std::vector<float>(a.weight, a.weight + a.n) : std::vector<float>{});
        h.emplace_back(a.h, a.h + size_t(a.n) * a.I);
        g.emplace_back(a.gate, a.gate + size_t(a.n) * a.I);
        u.emplace_back(a.up, a.up + size_t(a.n) * a.I);
    }
};

// The graph split's layer-major run (embed, then run_layer for each layer) is
// forward's computation: every layer's FFN activations bit for bit, and the
// stream after the last layer is final_hidden's input.
TEST(EngineDense, LayerMajorRunEqualsForward) {
    const Checkpoint ck = Checkpoint::open(demo_model_dir());
    auto m = Model::load(ck);
    const int T = 40, H = ck.config.hidden_size, L = ck.config.num_layers, V = ck.config.vocab_size;
    std::vector<int32_t> toks;
    for (int t = 0; t < T; ++t) toks.push_back(int32_t(1 + (t * 53) % (V - 1)));
    Recorder whole(-1), by_layer(-1);
    m->forward(toks.data(), T, 0, nullptr, nullptr, &whole);
    std::vector<float> x(size_t(T) * H);
    m->embed(toks.data(), T, x.data());
    for (int l = 0; l < L; ++l) m->run_layer(l, x.data(), T, &by_layer);
    ASSERT_EQ(whole.h.size(), size_t(L));
    ASSERT_EQ(by_layer.h.size(), size_t(L));
    for (int l = 0; l < L; ++l) {
        EXPECT_EQ(whole.h[size_t(l)], by_layer.h[size_t(l)]) << "layer " << l;
        EXPECT_EQ(whole.g[size_t(l)], by_layer.g[size_t(l)]) << "layer " << l;
    }
    EXPECT_THROW(m->run_layer(L, x.data(), T), Error);
}

// final_hidden is exactly the lm_head input: logits = final_hidden · lm_headᵀ.
TEST(EngineDense, FinalHiddenTimesLmHeadIsTheLogits) {
    const Checkpoint ck = Checkpoint::open(demo_model_dir());
    auto m = Model::load(ck);
    const int T = 9, H = ck.config.hidden_size, V = ck.config.vocab_size;
    std::vector<int32_t> toks;
    for (int t = 0; t < T; ++t) toks.push_back(int32_t(1 + (t * 37) % (V - 1)));
    std::vector<float> logits(size_t(T) * V), hidden(size_t(T) * H);
    m->forward(toks.data(), T, 0, nullptr, logits.data());
    m->final_hidden(toks.data(), T, hidden.data());
    const std::string head = ck.config.tie_word_embeddings ? names::embed() : names::lm_head();
    const std::vector<float> w = ck.tensors->read_f32(head);
    double num = 0, den = 0;
    for (int t = 0; t < T; ++t)
        for (int v = 0; v < V; ++v) {
            double z = 0;
            for (int i = 0; i < H; ++i) z += double(hidden[size_t(t) * H + i]) * w[size_t(v) * H + i];
            num += std::pow(z - logits[size_t(t) * V + v], 2);
            den += z * z;
        }
    EXPECT_LT(std::sqrt(num / den), 1e-5);
}

TEST(EngineDense, ObserverSeesOnlyWantedLayerActivations) {
    Spec s;
    s.L = 3;
    const Weights w = dense_weights(s, 16);
    const json cj = dense_config(s);
    const ModelConfig cfg = ModelConfig::parse(cj, "test");
    Opened m("obs", cj, w, DType::BF16);
    const int T = 20;
    const auto toks = random_tokens(T, s.V, 600);
    Recorder rec(1);
    engine_logits(*m.model, toks, &rec);
    ASSERT_EQ(rec.seen.size(), 1u);
    const FfnActs& a = rec.seen[0];
    EXPECT_EQ(a.layer, 1);
    EXPECT_EQ(a.n, T);
    EXPECT_EQ(a.I, s.I);
    EXPECT_EQ(a.expert, -1);
    for (size_t i = 0; i < rec.h[0].size(); ++i)
        ASSERT_NEAR(rec.h[0][i], silu(rec.g[0][i]) * rec.u[0][i], 1e-6 * (1 + std::fabs(rec.h[0][i])));
    Vec want(size_t(T) * s.I);
    Naive ref{cfg, w};
    ref.on_h = [&](int l, int t, const Vec& h) {
        if (l == 1) std::copy(h.begin(), h.end(), want.begin() + int64_t(t) * s.I);
    };
    ref.logits(toks);
    EXPECT_LT(max_rel_err(rec.h[0], want), 1e-4);
    // nll_sum hands out the same activations
    Recorder rec2(1);
    m.model->nll_sum(toks.data(), T, &rec2);
    ASSERT_EQ(rec2.h.size(), 1u);
    EXPECT_EQ(rec2.h[0], rec.h[0]);
}

// ---- MoE checkpoints cut from a dense model ------------------------------------------------

struct MoESpec {
    ModelKind kind = ModelKind::LlamaMoE;
    std::vector<int> widths;  // routed expert widths (sum + shared = I)
    int k = 0;
    int shared_neurons = 0;   // deepseek: one shared MLP; residual: split over R experts
    int R = 0;
    std::string gate_network = "mlp";
    bool gate_softmax = true, multiply = false;
    json scale = 1.0;         // score_scale_factor / routed_scaling_factor
    double shared_scale = 1.0;
    bool zero_router = false;
    std::vector<double> down_scale;  // per layer factor on routed experts' down weights
    bool random_residual_gate = false;
};

// Splits each dense FFN into shared experts (the first shared_neurons of a
// seeded permutation) and routed experts (the rest, in `widths`).
std::pair<json, Weights> cut_moe(const Spec& s, const Weights& dense, const MoESpec& ms, uint64_t seed) {
    Rng rng(seed);
    const int E = int(ms.widths.size()), H = s.H;
    json cfg = dense_config(s);
    cfg.erase("sliding_window");
    Weights w;
    for (const auto& [n, t] : dense)
        if (n.find(".mlp.") == std::string::npos) w[n] = t;
    auto rows_of = [](const Tensor& t, const std::vector<int>& ids) {  // [ids, C]
        const int64_t C = t.shape[1];
        Tensor o{{int64_t(ids.size()), C}, {}};
        for (int i : ids) o.v.insert(o.v.end(), t.v.begin() + i * C, t.v.begin() + (i + 1) * C);
        return o;
    };
    auto cols_of = [](const Tensor& t, const std::vector<int>& ids, double scale) {  // [R, ids]
        const int64_t R = t.shape[0], C = t.shape[1];
        Tensor o{{R, int64_t(ids.size())}, {}};
        for (int64_t r = 0; r < R; ++r)
            for (int i : ids) o.v.push_back(float(t.v[size_t(r * C + i)] * scale));
        return o;
    };
    const char* pre = ms.kind == ModelKind::LlamaMoEResidual ? "mlp.moe_layer" : "mlp";
    for (int l = 0; l < s.L; ++l) {
        std::vector<int> perm(static_cast<size_t>(s.I));
        std::iota(perm.begin(), perm.end(), 0);
        rng.shuffle(perm.begin(), perm.end());
        const Tensor &G = dense.at(names::dense_ffn(l, "gate")), &U = dense.at(names::dense_ffn(l, "up")),
                     &D = dense.at(names::dense_ffn(l, "down"));
        const double ds = ms.down_scale.empty() ? 1.0 : ms.down_scale[size_t(l)];
        int at = ms.shared_neurons;
        for (int e = 0; e < E; ++e) {
            std::vector<int> ids(perm.begin() + at, perm.begin() + at + ms.widths[size_t(e)]);
            std::sort(ids.begin(), ids.end());
            at += ms.widths[size_t(e)];
            std::string gn, un, dn;
            if (ms.kind == ModelKind::Mixtral) {
                gn = names::mixtral_expert(l, e, "w1"), un = names::mixtral_expert(l, e, "w3"), dn = names::mixtral_expert(l, e, "w2");
            } else if (ms.kind == ModelKind::Deepseek) {
                gn = names::deepseek_expert(l, e, "gate"), un = names::deepseek_expert(l, e, "up"), dn = names::deepseek_expert(l, e, "down");
            } else {
                gn = names::llama_moe_expert(l, "gate", e, pre), un = names::llama_moe_expert(l, "up", e, pre);
                dn = names::llama_moe_expert(l, "down", e, pre);
            }
            w[gn] = rows_of(G, ids), w[un] = rows_of(U, ids), w[dn] = cols_of(D, ids, ds);
        }
        const std::vector<int> shared(perm.begin(), perm.begin() + ms.shared_neurons);
        if (ms.kind == ModelKind::Deepseek && ms.shared_neurons > 0) {
            w[names::deepseek_shared(l, "gate")] = rows_of(G, shared);
            w[names::deepseek_shared(l, "up")] = rows_of(U, shared);
            w[names::deepseek_shared(l, "down")] = cols_of(D, shared, 1.0);
        }
        if (ms.kind == ModelKind::LlamaMoEResidual) {
            const int per = ms.shared_neurons / ms.R;
            for (int r = 0; r < ms.R; ++r) {
                const std::vector<int> ids(shared.begin() + r * per, shared.begin() + (r + 1) * per);
                w[names::llama_moe_residual_expert(l, "gate", r)] = rows_of(G, ids);
                w[names::llama_moe_residual_expert(l, "up", r)] = rows_of(U, ids);
                w[names::llama_moe_residual_expert(l, "down", r)] = cols_of(D, ids, 1.0);
            }
            Tensor gate = randn(rng, {ms.R, H}, ms.random_residual_gate ? 0.5 : 0.0);
            w[names::llama_moe_residual_gate(l)] = gate;
        }
        const double rs = ms.zero_router ? 0.0 : 0.5;
        if (ms.kind == ModelKind::Mixtral) {
            w[names::mixtral_router(l)] = randn(rng, {E, H}, rs);
        } else if (ms.kind == ModelKind::Deepseek) {
            w[names::deepseek_router(l)] = randn(rng, {E, H}, rs);
        } else if (ms.gate_network == "mlp") {
            w[names::llama_moe_gate_mlp(l, 0, pre)] = randn(rng, {E, H}, rs);
            w[names::llama_moe_gate_mlp(l, 2, pre)] = randn(rng, {E, E}, rs * 2);
        } else {
            w[names::llama_moe_gate_linear(l, pre)] = randn(rng, {E, H}, rs);
        }
    }
    json widths = json::array();
    for (int l = 0; l < s.L; ++l) widths.push_back(ms.widths);
    switch (ms.kind) {
        case ModelKind::LlamaMoE:
        case ModelKind::LlamaMoEResidual:
            cfg["architectures"] = json::array({ms.kind == ModelKind::LlamaMoE ? "LlamaMoEForCausalLM" : "LlamaMoEResidualForCausalLM"});
            cfg["model_type"] = ms.kind == ModelKind::LlamaMoE ? "llama_moe" : "llama_moe_residual";
            cfg["num_experts"] = E;
            cfg["num_selects"] = ms.k;
            cfg["size_experts"] = widths;
            cfg["gate_network"] = ms.gate_network;
            cfg["gate_use_softmax"] = ms.gate_softmax;
            cfg["multiply_gate_scores"] = ms.multiply;
            cfg["score_scale_factor"] = ms.scale;
            if (ms.kind == ModelKind::LlamaMoEResidual) {
                json rw = json::array();
                for (int l = 0; l < s.L; ++l) rw.push_back(std::vector<int>(size_t(ms.R), ms.shared_neurons / ms.R));
                cfg["num_experts_residual"] = ms.R;
                cfg["size_experts_residual"] = rw;
                cfg["score_scale_factor_residual"] = ms.shared_scale;
                cfg["multiply_gate_scores_residual"] = true;
            }
            break;
        case ModelKind::Mixtral:
            cfg["architectures"] = json::array({"MixtralForCausalLM"});
            cfg["model_type"] = "mixtral";
            cfg["intermediate_size"] = ms.widths[0];
            cfg["num_local_experts"] = E;
            cfg["num_experts_per_tok"] = ms.k;
            break;
        case ModelKind::Deepseek:
            cfg["architectures"] = json::array({"DeepseekForCausalLM"});
            cfg["model_type"] = "deepseek";
            cfg["n_routed_experts"] = E;
            cfg["num_experts_per_tok"] = ms.k;
            cfg["moe_intermediate_size"] = ms.widths[0];
            cfg["n_shared_experts"] = ms.shared_neurons / ms.widths[0];
            cfg["norm_topk_prob"] = false;
            cfg["routed_scaling_factor"] = ms.scale;
            break;
        case ModelKind::Dense: break;
    }
    return {cfg, w};
}

struct MoECase {
    const char* name;
    MoESpec ms;
};

// All experts active with weights that come to exactly 1: the MoE model must
// give the dense model's logits.
std::vector<MoECase> dense_identity_cases() {
    std::vector<MoECase> c;
    {   // llama-moe: top-k = E, plain sum; uneven widths; mlp gate
        MoESpec m;
        m.widths = {20, 28, 24, 24};
        m.k = 4;
        c.push_back({"llama-moe-sum", m});
    }
    {   // llama-moe with weighting: zero linear gate -> softmax 1/4, per-layer scale
        // [4, 8] with layer 1's down halved: every weight is 1 again
        MoESpec m;
        m.widths = {20, 28, 24, 24};
        m.k = 4;
        m.gate_network = "linear";
        m.multiply = true;
        m.zero_router = true;
        m.scale = json::array({4.0, 8.0});
        m.down_scale = {1.0, 0.5};
        c.push_back({"llama-moe-scaled", m});
    }
    {   // mixtral: zero router -> renormalised weights 1/4, down weights x4
        MoESpec m;
        m.kind = ModelKind::Mixtral;
        m.widths = {24, 24, 24, 24};
        m.k = 4;
        m.zero_router = true;
        m.down_scale = {4.0, 4.0};
        c.push_back({"mixtral", m});
    }
    {   // deepseek: 1/4 each times routed_scaling_factor 4, plus a shared MLP of 2 x 16
        MoESpec m;
        m.kind = ModelKind::Deepseek;
        m.widths = {16, 16, 16, 16};
        m.k = 4;
        m.shared_neurons = 32;
        m.zero_router = true;
        m.scale = 4.0;
        c.push_back({"deepseek", m});
    }
    {   // residual: routed plain sum; 2 residual experts, zero gate -> (2/2)·Σ
        MoESpec m;
        m.kind = ModelKind::LlamaMoEResidual;
        m.widths = {16, 16, 16, 16};
        m.k = 4;
        m.shared_neurons = 32;
        m.R = 2;
        m.shared_scale = 2.0;
        c.push_back({"residual", m});
    }
    return c;
}

TEST(EngineMoE, AllExpertsActiveEqualsDense) {
    Spec s;
    const Weights dense = dense_weights(s, 21);
    Opened d("moe-dense", dense_config(s), dense, DType::BF16);
    for (int T : {6, 33}) {
        const auto toks = random_tokens(T, s.V, 700 + T);
        const std::vector<float> want = engine_logits(*d.model, toks);
        for (const MoECase& c : dense_identity_cases()) {
            auto [cj, w] = cut_moe(s, dense, c.ms, 99);
            Opened m(fmt::format("moe-{}", c.name), cj, w, DType::BF16);
            ASSERT_EQ(m.ckpt.config.kind, c.ms.kind) << c.name;
            RoutingStats st;
            RunHooks hooks;
            hooks.routing = &st;
            EXPECT_LT(max_rel_err(engine_logits(*m.model, toks, hooks), want), 1e-5) << c.name << " T=" << T;
            ASSERT_EQ(st.counts.size(), size_t(s.L));
            for (int l = 0; l < s.L; ++l)
                for (int64_t n : st.counts[size_t(l)]) EXPECT_EQ(n, T) << c.name;
        }
    }
}

// Partial routing (k < E) with random routers, against the reference.
TEST(EngineMoE, TopKRoutingMatchesReference) {
    Spec s;
    const Weights dense = dense_weights(s, 22);
    std::vector<MoECase> cases;
    {
        MoESpec m;  // llama-moe: mlp gate, softmax, weighted, per-layer scale
        m.widths = {20, 19, 19, 19, 19};
        m.k = 2;
        m.multiply = true;
        m.scale = json::array({1.5, 0.5});
        cases.push_back({"llama-moe-mlp", m});
    }
    {
        MoESpec m;  // llama-moe: linear gate, raw logits as weights, scalar scale
        m.widths = {20, 19, 19, 19, 19};
        m.k = 3;
        m.gate_network = "linear";
        m.gate_softmax = false;
        m.multiply = true;
        m.scale = 2.0;
        cases.push_back({"llama-moe-linear-nosoftmax", m});
    }
    {
        MoESpec m;  // llama-moe: softmax on, but unweighted sum (scale ignored)
        m.widths = {24, 24, 24, 24};
        m.k = 2;
        m.scale = 5.0;
        cases.push_back({"llama-moe-unweighted", m});
    }
    {
        MoESpec m;
        m.kind = ModelKind::Mixtral;
        m.widths = {24, 24, 24, 24};
        m.k = 2;
        cases.push_back({"mixtral", m});
    }
    {
        MoESpec m;
        m.kind = ModelKind::Deepseek;
        m.widths = {16, 16, 16, 16};
        m.k = 2;
        m.shared_neurons = 32;
        m.scale = 1.25;
        cases.push_back({"deepseek", m});
    }
    {
        MoESpec m;
        m.kind = ModelKind::LlamaMoEResidual;
        m.widths = {16, 16, 16, 16};
        m.k = 1;
        m.multiply = true;
        m.scale = 3.0;
        m.shared_neurons = 32;
        m.R = 2;
        m.shared_scale = 0.75;
        m.random_residual_gate = true;
        cases.push_back({"residual-gated", m});
    }
    for (const MoECase& c : cases) {
        auto [cj, w] = cut_moe(s, dense, c.ms, 98);
        Opened m(fmt::format("topk-{}", c.name), cj, w, DType::BF16);
        for (int T : {4, 37}) {
            const auto toks = random_tokens(T, s.V, 800 + T);
            RoutingStats st;
            RunHooks hooks;
            hooks.routing = &st;
            const std::vector<float> got = engine_logits(*m.model, toks, hooks);
            EXPECT_LT(max_rel_err(got, Naive{m.ckpt.config, w}.logits(toks)), 1e-4) << c.name << " T=" << T;
            for (int l = 0; l < s.L; ++l) {
                EXPECT_EQ(std::accumulate(st.counts[size_t(l)].begin(), st.counts[size_t(l)].end(), int64_t(0)),
                          int64_t(T) * c.ms.k);
                EXPECT_EQ(st.tokens[size_t(l)], T);
            }
        }
    }
}

TEST(EngineMoE, TopKTiesGoToLowerExpert) {
    const float v[6] = {0.5f, 2.0f, 1.0f, 2.0f, 1.0f, 2.0f};
    int32_t idx[4];
    topk_desc(v, 6, 4, idx);
    EXPECT_EQ(std::vector<int32_t>(idx, idx + 4), (std::vector<int32_t>{1, 3, 5, 2}));
    // route_tokens on ties: softmax over the selected, then the scale factor
    MoEConfig m;
    m.num_experts = 4;
    m.top_k = 2;
    m.multiply_gate_scores = true;
    m.score_scale = {3.0f, 5.0f};
    const float lg[8] = {1, 1, 1, 1, 0, 2, 2, 0};
    int32_t sel[4];
    float w[4];
    route_tokens(m, 1, lg, 2, sel, w);
    EXPECT_EQ(std::vector<int32_t>(sel, sel + 4), (std::vector<int32_t>{0, 1, 1, 2}));
    for (float x : w) EXPECT_FLOAT_EQ(x, 2.5f);  // 0.5 · 5

    // In a model: a zero linear router ties every expert, so experts 0..k-1 run,
    // which is the dense model without the other experts' neurons.
    Spec s;
    const Weights dense = dense_weights(s, 23);
    MoESpec ms;
    ms.widths = {24, 24, 24, 24};
    ms.k = 2;
    ms.gate_network = "linear";
    ms.zero_router = true;
    auto [cj, w2] = cut_moe(s, dense, ms, 97);
    Opened moe("ties", cj, w2, DType::BF16);
    Weights pruned = dense;
    for (int l = 0; l < s.L; ++l) {
        // neurons of experts 2, 3 are those not in experts 0, 1: zero their down columns
        std::vector<bool> keep(static_cast<size_t>(s.I), false);
        const Tensor& G = dense.at(names::dense_ffn(l, "gate"));
        for (int e = 0; e < 2; ++e) {
            const Tensor& eg = w2.at(names::llama_moe_expert(l, "gate", e));
            for (int64_t r = 0; r < eg.shape[0]; ++r)
                for (int n = 0; n < s.I; ++n)
                    if (std::equal(eg.v.begin() + r * s.H, eg.v.begin() + (r + 1) * s.H, G.v.begin() + int64_t(n) * s.H))
                        keep[size_t(n)] = true;
        }
        ASSERT_EQ(std::count(keep.begin(), keep.end(), true), 48);
        Tensor& D = pruned.at(names::dense_ffn(l, "down"));
        for (int64_t r = 0; r < s.H; ++r)
            for (int n = 0; n < s.I; ++n)
                if (!keep[size_t(n)]) D.v[size_t(r * s.I + n)] = 0.0f;
    }
    Opened d("ties-dense", dense_config(s), pruned, DType::BF16);
    const auto toks = random_tokens(20, s.V, 900);
    RoutingStats st;
    RunHooks hooks;
    hooks.routing = &st;
    EXPECT_LT(max_rel_err(engine_logits(*moe.model, toks, hooks), engine_logits(*d.model, toks)), 1e-5);
    EXPECT_EQ(st.counts[0], (std::vector<int64_t>{20, 20, 0, 0}));
}

// Oracle-style override: route each token to the expert with the largest output norm.
struct MassOracle : RouteOverride {
    std::vector<float> mass;  // of layer 1
    bool wants(int layer) const override { return layer == 1; }
    bool wants_mass() const override { return true; }
    void route(const RouteInput& in, int32_t* sel, float* weight) override {
        mass.assign(in.mass, in.mass + size_t(in.T) * in.E);
        for (int t = 0; t < in.T; ++t) {
            const float* m = in.mass + size_t(t) * in.E;
            sel[size_t(t) * in.k] = int32_t(std::max_element(m, m + in.E) - m);
            weight[size_t(t) * in.k] = 1.0f;
            for (int j = 1; j < in.k; ++j) sel[size_t(t) * in.k + j] = -1;
        }
    }
};

TEST(EngineMoE, RouteOverrideAndObserver) {
    Spec s;
    const Weights dense = dense_weights(s, 24);
    MoESpec ms;
    ms.kind = ModelKind::Mixtral;
    ms.widths = {24, 24, 24, 24};
    ms.k = 2;
    auto [cj, w] = cut_moe(s, dense, ms, 96);
    Opened m("override", cj, w, DType::BF16);
    const int T = 25;
    const auto toks = random_tokens(T, s.V, 1000);
    MassOracle oracle;
    Recorder rec(1);
    RoutingStats st;
    RunHooks hooks;
    hooks.route = &oracle;
    hooks.ffn = &rec;
    hooks.routing = &st;
    const std::vector<float> got = engine_logits(*m.model, toks, hooks);

    Naive ref{m.ckpt.config, w};
    std::vector<Vec> xs;
    ref.force = [&](int l, const Vec& x, std::vector<int>& sel, Vec& wt) {
        if (l != 1) return;
        Vec norms;
        for (int e = 0; e < 4; ++e) {
            const Vec y = ref.expert(l, e, x);
            double ss = 0;
            for (double v : y) ss += v * v;
            norms.push_back(std::sqrt(ss));
        }
        sel = {int(std::max_element(norms.begin(), norms.end()) - norms.begin()), -1};
        wt = {1.0, 0.0};
        const size_t t = xs.size();
        xs.push_back(x);
        for (int e = 0; e < 4; ++e) EXPECT_NEAR(oracle.mass[t * 4 + size_t(e)], norms[size_t(e)], 1e-4 * norms[size_t(e)]);
    };
    EXPECT_LT(max_rel_err(got, ref.logits(toks)), 1e-4);
    EXPECT_EQ(xs.size(), size_t(T));
    EXPECT_EQ(std::accumulate(st.counts[1].begin(), st.counts[1].end(), int64_t(0)), T);  // one expert per token
    // The observer saw layer 1's routed experts: rows partition the tokens, weight 1,
    // inputs are rows of x, and h = silu(gate)·up.
    std::vector<int> times(size_t(T), 0);
    for (size_t i = 0; i < rec.seen.size(); ++i) {
        const FfnActs& a = rec.seen[i];
        EXPECT_EQ(a.layer, 1);
        EXPECT_FALSE(a.shared);
        EXPECT_EQ(a.I, 24);
        ASSERT_EQ(rec.rows[i].size(), size_t(a.n));
        ASSERT_EQ(rec.weight[i].size(), size_t(a.n));
        for (int r = 0; r < a.n; ++r) {
            EXPECT_EQ(rec.weight[i][size_t(r)], 1.0f);
            ASSERT_TRUE(rec.rows[i][size_t(r)] >= 0 && rec.rows[i][size_t(r)] < T);
            ++times[size_t(rec.rows[i][size_t(r)])];
        }
        for (size_t j = 0; j < rec.h[i].size(); ++j)
            ASSERT_NEAR(rec.h[i][j], silu(rec.g[i][j]) * rec.u[i][j], 1e-6 * (1 + std::fabs(rec.h[i][j])));
    }
    EXPECT_EQ(times, std::vector<int>(size_t(T), 1));  // every token went to exactly one expert
}

// ---- real models ---------------------------------------------------------------------

const std::string kShared = MOEFY_SHARED_DIR;

// The demo model against its fp32 goldens: logits, log-sum-exp, FFN
// activations and per-position NLL within `tol` (relative), mean NLL within
// `nll_tol` (relative); argmax exact.
void expect_demo_golden(double tol, double nll_tol) {
    const std::string dir = demo_model_dir();
    REQUIRE_REPO_FILE(dir + "/reference.json");
    const json ref = json::parse(std::ifstream(dir + "/reference.json"));
    Checkpoint ck = Checkpoint::open(dir);
    auto model = Model::load(ck);
    const std::vector<int32_t> toks = ref["token_ids"].get<std::vector<int32_t>>();
    const int T = int(toks.size()), V = model->vocab_size();
    auto close = [tol](double got, double want, double scale) { return std::fabs(got - want) <= tol * scale; };

    std::vector<float> logits(size_t(T) * V);
    Recorder rec(-1);
    model->forward(toks.data(), T, 0, nullptr, logits.data(), &rec);
    for (auto& [pos, want] : ref["logits"].items()) {
        const float* row = logits.data() + size_t(std::stoi(pos)) * V;
        for (size_t i = 0; i < want.size(); ++i)
            EXPECT_PRED3(close, row[i], want[i].get<double>(), std::max(1.0, std::fabs(want[i].get<double>()))) << pos << " " << i;
        EXPECT_EQ(std::max_element(row, row + V) - row, ref["logits_argmax"][pos].get<int>());
        const float mx = *std::max_element(row, row + V);
        double z = 0;
        for (int v = 0; v < V; ++v) z += std::exp(double(row[v] - mx));
        const double lse = mx + std::log(z), want_lse = ref["logits_logsumexp"][pos].get<double>();
        EXPECT_PRED3(close, lse, want_lse, std::fabs(want_lse));
    }
    for (auto& [name, f] : ref["ffn"].items()) {  // "layer0", "layer5"
        const int layer = std::stoi(name.substr(5)), pos = f["position"].get<int>();
        const FfnActs* a = nullptr;
        size_t idx = 0;
        for (size_t i = 0; i < rec.seen.size(); ++i)
            if (rec.seen[i].layer == layer) a = &rec.seen[i], idx = i;
        ASSERT_NE(a, nullptr) << name;
        const float* h = rec.h[idx].data() + size_t(pos) * a->I;
        const double norm = f["h_l2_norm"].get<double>();
        double ss = 0;
        for (int i = 0; i < a->I; ++i) ss += double(h[i]) * h[i];
        EXPECT_PRED3(close, std::sqrt(ss), norm, norm) << name;
        // elements relative to the vector's rms, as small entries carry cancellation
        const double rms = norm / std::sqrt(double(a->I));
        const auto first = f["h_first8"].get<std::vector<double>>();
        for (size_t i = 0; i < first.size(); ++i) EXPECT_PRED3(close, h[i], first[i], std::max(std::fabs(first[i]), rms)) << name << " " << i;
    }
    std::vector<float> per(static_cast<size_t>(T - 1));
    const double mean = model->nll_sum(toks.data(), T, {}, per.data()) / (T - 1);
    EXPECT_NEAR(mean, ref["mean_nll"].get<double>(), nll_tol * ref["mean_nll"].get<double>());
    if (ref.contains("nll_per_position")) {
        const auto want = ref["nll_per_position"].get<std::vector<double>>();
        ASSERT_EQ(want.size(), per.size());
        for (size_t i = 0; i < want.size(); ++i) EXPECT_PRED3(close, per[i], want[i], std::max(1.0, want[i])) << i;
    }
}

TEST(EngineGolden, DemoModelReproducesReference) { expect_demo_golden(1e-4, 1e-4); }

// The default mode, activations rounded to BF16 as llama.cpp does: mean NLL
// within the 1e-3 relative the engine promises for it; each logit moves by
// about 2^-9 relative per layer's rounding, so elements get 1e-2.
TEST(EngineGoldenBf16Activations, DemoModelWithinItsRounding) {
    if (!ops::cpu_supports(ops::KernelPath::Avx512Bf16)) GTEST_SKIP() << "no BF16 dot-product instructions";
    for (ops::KernelPath p : {ops::KernelPath::Avx512Bf16, ops::KernelPath::Amx}) {
        if (!ops::cpu_supports(p)) continue;
        ops::ScopedKernelPath sp(p);
        const bool prev = ops::set_exact_activations(false);
        ASSERT_TRUE(ops::rounds_activations_to_bf16());
        expect_demo_golden(1e-2, 1e-3);
        ops::set_exact_activations(prev);
    }
}

TEST(SharedEngineGolden, Stories260KGreedyStory) {
    const std::string dir = kShared + "/fixtures/stories260K";
    if (!fs::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " not present";
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.Load(dir + "/tokenizer.model").ok());
    std::vector<int> ids;
    ASSERT_TRUE(sp.Encode("Once upon a time", &ids).ok());
    std::vector<int32_t> prompt = {1};
    prompt.insert(prompt.end(), ids.begin(), ids.end());
    Checkpoint ck = Checkpoint::open(dir);
    auto model = Model::load(ck);
    GenerateOptions go;
    go.max_new_tokens = 60;
    std::vector<int32_t> streamed;
    const std::vector<int32_t> out = generate(*model, prompt, go, [&](int32_t t) { streamed.push_back(t); });
    EXPECT_EQ(out, streamed);
    std::vector<int> all(prompt.begin() + 1, prompt.end());
    all.insert(all.end(), out.begin(), out.end());
    std::string text;
    ASSERT_TRUE(sp.Decode(all, &text).ok());
    EXPECT_NE(text.find("there was a little girl named Lily"), std::string::npos) << text;
    EXPECT_NE(text.find("She loved to play outside in the park"), std::string::npos) << text;

    // Sampling is reproducible from the seed and stays in the vocabulary.
    go.temperature = 0.8f;
    go.top_p = 0.9f;
    go.seed = 5;
    const auto a = generate(*model, prompt, go), b = generate(*model, prompt, go);
    EXPECT_EQ(a, b);
    for (int32_t t : a) EXPECT_TRUE(t >= 0 && t < model->vocab_size());
}

}  // namespace
}  // namespace moefy
