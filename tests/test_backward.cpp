// The backward pass to the FFN activations: against central finite
// differences of a plain double-precision forward written here (every layer,
// every position, every neuron on a tiny model), against the demo model's
// golden dNLL/dh, and its pieces (matmul_t, attention backward) against direct
// double computations.

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "io/safetensors.h"
#include "model/backward.h"
#include "common/parallel.h"
#include "model/checkpoint.h"
#include "model/layers.h"
#include "model/matmul_t.h"
#include "model/tensor_names.h"
#include "test_util.h"
#include "tiny_model.h"

namespace moefy {
namespace {

using nlohmann::json;
using Vec = std::vector<double>;

// ---- a plain double-precision LLaMA forward with one activation nudged --------------

struct RefModel {
    ModelConfig c;
    Vec embed, head, final_norm;
    struct Layer {
        Vec q, k, v, o, gate, up, down, in_norm, post_norm;
    };
    std::vector<Layer> layers;
    std::vector<float> inv_freq;

    explicit RefModel(const Checkpoint& ck) : c(ck.config) {
        auto rd = [&](const std::string& n) {
            std::vector<float> f = ck.tensors->read_f32(n);
            return Vec(f.begin(), f.end());
        };
        embed = rd(names::embed());
        head = c.tie_word_embeddings ? embed : rd(names::lm_head());
        final_norm = rd(names::final_norm());
        for (int l = 0; l < c.num_layers; ++l)
            layers.push_back({rd(names::attn(l, "q")), rd(names::attn(l, "k")), rd(names::attn(l, "v")),
                              rd(names::attn(l, "o")), rd(names::dense_ffn(l, "gate")), rd(names::dense_ffn(l, "up")),
                              rd(names::dense_ffn(l, "down")), rd(names::input_norm(l)), rd(names::post_norm(l))});
        inv_freq = layers::rope_inv_freq(c);
    }

    // y[T, N] = x[T, K] · W[N, K]ᵀ
    static Vec linear(const Vec& x, int T, const Vec& W, int N, int K) {
        Vec y(size_t(T) * N, 0.0);
        for (int t = 0; t < T; ++t)
            for (int n = 0; n < N; ++n) {
                double s = 0;
                for (int k = 0; k < K; ++k) s += x[size_t(t) * K + k] * W[size_t(n) * K + k];
                y[size_t(t) * N + n] = s;
            }
        return y;
    }
    Vec rmsnorm(const Vec& x, int T, const Vec& w) const {
        const int H = c.hidden_size;
        Vec y(x.size());
        for (int t = 0; t < T; ++t) {
            double ss = 0;
            for (int i = 0; i < H; ++i) ss += x[size_t(t) * H + i] * x[size_t(t) * H + i];
            const double r = 1.0 / std::sqrt(ss / H + c.rms_norm_eps);
            for (int i = 0; i < H; ++i) y[size_t(t) * H + i] = x[size_t(t) * H + i] * r * w[size_t(i)];
        }
        return y;
    }
    void rope(Vec& x, int T, int heads) const {
        const int d = c.head_dim, half = d / 2;
        for (int t = 0; t < T; ++t)
            for (int h = 0; h < heads; ++h)
                for (int i = 0; i < half; ++i) {
                    const double ang = double(float(t) * inv_freq[size_t(i)]);
                    double& a = x[(size_t(t) * heads + h) * d + i];
                    double& b = x[(size_t(t) * heads + h) * d + i + half];
                    const double a0 = a, b0 = b;
                    a = a0 * std::cos(ang) - b0 * std::sin(ang);
                    b = b0 * std::cos(ang) + a0 * std::sin(ang);
                }
    }

    // Mean NLL of tokens; adds `delta` to h (or to g when `gate`) of (layer, t, i) when layer >= 0.
    double loss(const std::vector<int32_t>& tok, int el = -1, int et = 0, int ei = 0, double delta = 0,
                bool gate = false) const {
        const int T = int(tok.size()), H = c.hidden_size, I = c.intermediate_size, d = c.head_dim;
        const int nh = c.num_heads, nkv = c.num_kv_heads, V = c.vocab_size, group = nh / nkv;
        Vec x(size_t(T) * H);
        for (int t = 0; t < T; ++t)
            std::copy_n(embed.begin() + ptrdiff_t(size_t(tok[size_t(t)]) * H), H, x.begin() + ptrdiff_t(size_t(t) * H));
        for (int l = 0; l < c.num_layers; ++l) {
            const Layer& L = layers[size_t(l)];
            Vec xa = rmsnorm(x, T, L.in_norm);
            Vec q = linear(xa, T, L.q, nh * d, H), k = linear(xa, T, L.k, nkv * d, H), v = linear(xa, T, L.v, nkv * d, H);
            rope(q, T, nh);
            rope(k, T, nkv);
            Vec att(size_t(T) * nh * d, 0.0);
            for (int t = 0; t < T; ++t)
                for (int h = 0; h < nh; ++h) {
                    const int g = h / group, lo = c.sliding_window ? std::max(0, t - *c.sliding_window + 1) : 0;
                    Vec p(size_t(t + 1), 0.0);
                    double mx = -1e300, s = 0;
                    for (int j = lo; j <= t; ++j) {
                        double dot = 0;
                        for (int e = 0; e < d; ++e) dot += q[(size_t(t) * nh + h) * d + e] * k[(size_t(j) * nkv + g) * d + e];
                        p[size_t(j)] = dot / std::sqrt(double(d));
                        mx = std::max(mx, p[size_t(j)]);
                    }
                    for (int j = lo; j <= t; ++j) s += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
                    for (int j = lo; j <= t; ++j)
                        for (int e = 0; e < d; ++e)
                            att[(size_t(t) * nh + h) * d + e] += p[size_t(j)] / s * v[(size_t(j) * nkv + g) * d + e];
                }
            Vec o = linear(att, T, L.o, H, nh * d);
            for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
            Vec xf = rmsnorm(x, T, L.post_norm);
            Vec g = linear(xf, T, L.gate, I, H), u = linear(xf, T, L.up, I, H), hh(size_t(T) * I);
            if (l == el && gate) g[size_t(et) * I + ei] += delta;
            for (size_t i = 0; i < hh.size(); ++i) hh[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
            if (l == el && !gate) hh[size_t(et) * I + ei] += delta;
            Vec y = linear(hh, T, L.down, H, I);
            for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
        }
        Vec xn = rmsnorm(x, T, final_norm);
        Vec logits = linear(xn, T, head, V, H);
        double nll = 0;
        for (int t = 0; t + 1 < T; ++t) {
            const double* r = logits.data() + size_t(t) * V;
            const double mx = *std::max_element(r, r + V);
            double s = 0;
            for (int j = 0; j < V; ++j) s += std::exp(r[j] - mx);
            nll += mx + std::log(s) - r[tok[size_t(t) + 1]];
        }
        return nll / (T - 1);
    }
};

// Every layer's h, dh, g, dg of one backward run.
struct Capture : BackwardObserver {
    std::vector<std::vector<float>> h, dh, g, dg;
    int T = 0, I = 0;
    void on_ffn_grads(const FfnGrads& a) override {
        const size_t n = size_t(a.T) * size_t(a.I), l = size_t(a.layer);
        if (h.size() <= l) h.resize(l + 1), dh.resize(l + 1), g.resize(l + 1), dg.resize(l + 1);
        h[l].assign(a.h, a.h + n), dh[l].assign(a.dh, a.dh + n), g[l].assign(a.g, a.g + n), dg[l].assign(a.dg, a.dg + n);
        T = a.T, I = a.I;
    }
};

std::vector<int32_t> random_tokens(int T, int V, uint64_t seed) {
    Rng rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(T));
    for (auto& x : t) x = int32_t(rng.below(uint64_t(V)));
    return t;
}

void set_config_field(const std::string& dir, const std::string& key, const json& value) {
    json j = json::parse(read_file(dir + "/config.json"));
    j[key] = value;
    std::ofstream(dir + "/config.json") << j.dump(2);
}

// Central differences of the reference loss at (layer, t, i) against the
// backward's dh (and dg); the error is measured against the largest gradient
// of the layer, since f32 gradients carry absolute, not relative, rounding.
struct FdCheck {
    double worst = 0;  // max |backward - fd| / max |fd| over the layer
    int checked = 0;
};
FdCheck check_layer(const RefModel& ref, const std::vector<int32_t>& tok, const Capture& cap, int l, bool gate,
                    const std::vector<int>& positions, const std::vector<int>& neurons) {
    const double eps = 1e-5;
    const std::vector<float>& got = gate ? cap.dg[size_t(l)] : cap.dh[size_t(l)];
    double max_fd = 0, max_err = 0;
    FdCheck r;
    for (int t : positions)
        for (int i : neurons) {
            const double fd = (ref.loss(tok, l, t, i, eps, gate) - ref.loss(tok, l, t, i, -eps, gate)) / (2 * eps);
            max_fd = std::max(max_fd, std::fabs(fd));
            max_err = std::max(max_err, std::fabs(fd - double(got[size_t(t) * cap.I + size_t(i)])));
            ++r.checked;
        }
    r.worst = max_fd > 0 ? max_err / max_fd : max_err;
    return r;
}

std::vector<int> iota_n(int n) {
    std::vector<int> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[size_t(i)] = i;
    return v;
}

// ---- finite differences ---------------------------------------------------------------

TEST(BackwardTest, FiniteDifferencesEveryLayerPositionAndNeuron) {
    TempDir tmp;
    TinyModelSpec s;
    s.layers = 3;
    write_tiny_model(tmp.path, s);
    Checkpoint ck = Checkpoint::open(tmp.path);
    auto model = Model::load(ck);
    const RefModel ref(ck);
    const int T = 12;
    const auto tok = random_tokens(T, s.vocab, 7);

    Backprop bp(*model);
    Capture cap;
    std::vector<float> per(T - 1);
    const double nll = bp.run(tok.data(), T, &cap, per.data());
    // The loss itself: the reference and the engine's own forward.
    EXPECT_NEAR(nll / (T - 1), ref.loss(tok), 1e-5);
    std::vector<float> per_engine(T - 1);
    EXPECT_NEAR(nll, model->nll_sum(tok.data(), T, {}, per_engine.data()), 1e-4);
    for (int t = 0; t < T - 1; ++t) EXPECT_NEAR(per[size_t(t)], per_engine[size_t(t)], 1e-5) << t;

    ASSERT_EQ(cap.dh.size(), 3u);
    for (int l = 0; l < 3; ++l) {
        for (bool gate : {false, true}) {
            // Positions 0..T-2 (the last one has no gradient, checked exactly below), every neuron.
            FdCheck r = check_layer(ref, tok, cap, l, gate, iota_n(T - 1), iota_n(s.intermediate));
            EXPECT_LT(r.worst, 2e-5) << "layer " << l << (gate ? " dg" : " dh");
            EXPECT_EQ(r.checked, (T - 1) * s.intermediate);
        }
        for (int i = 0; i < s.intermediate; ++i) {
            EXPECT_EQ(cap.dh[size_t(l)][size_t(T - 1) * s.intermediate + size_t(i)], 0.0f);
            EXPECT_EQ(cap.dg[size_t(l)][size_t(T - 1) * s.intermediate + size_t(i)], 0.0f);
        }
    }
}

TEST(BackwardTest, FiniteDifferencesAcrossAttentionBlocksAndSlidingWindow) {
    // 150 tokens: three 64-token attention blocks in both backward passes;
    // then a Mistral-style sliding window of 9 keys.
    for (int window : {0, 9}) {
        TempDir tmp;
        TinyModelSpec s;
        s.max_pos = 256;
        s.seed = 3;
        write_tiny_model(tmp.path, s);
        if (window) set_config_field(tmp.path, "sliding_window", window);
        Checkpoint ck = Checkpoint::open(tmp.path);
        ASSERT_EQ(ck.config.sliding_window.has_value(), window > 0);
        auto model = Model::load(ck);
        const RefModel ref(ck);
        const int T = window ? 80 : 150;
        const auto tok = random_tokens(T, s.vocab, 11);
        Backprop bp(*model);
        Capture cap;
        const double nll = bp.run(tok.data(), T, &cap);
        EXPECT_NEAR(nll / (T - 1), ref.loss(tok), 1e-5);
        const std::vector<int> pos = {0, 5, 63, 64, T / 2 + 7, T - 2}, neurons = {0, 7, 13, 23};
        for (int l = 0; l < s.layers; ++l)
            for (bool gate : {false, true})
                EXPECT_LT(check_layer(ref, tok, cap, l, gate, pos, neurons).worst, 2e-5)
                    << "window " << window << " layer " << l << (gate ? " dg" : " dh");
    }
}

TEST(BackwardTest, StoreRecomputeAndThreadCountGiveIdenticalGradients) {
    TempDir tmp;
    TinyModelSpec s;
    s.layers = 3;
    s.max_pos = 128;
    s.dtype = DType::BF16;
    write_tiny_model(tmp.path, s);
    Checkpoint ck = Checkpoint::open(tmp.path);
    auto model = Model::load(ck);
    const int T = 100;
    const auto tok = random_tokens(T, s.vocab, 5);
    auto run = [&](ActivationMemory mem, int threads) {
        BackwardOptions o;
        o.memory = mem;
        Backprop bp(*model, o);
        EXPECT_EQ(bp.stores_all(T), mem == ActivationMemory::Store);
        Capture cap;
        ScopedThreadLimit limit(threads);
        bp.run(tok.data(), T, &cap);
        return cap;
    };
    const Capture a = run(ActivationMemory::Store, 2);
    for (const Capture& b : {run(ActivationMemory::Recompute, 2), run(ActivationMemory::Store, 1)})
        for (int l = 0; l < s.layers; ++l) {
            EXPECT_EQ(a.h[size_t(l)], b.h[size_t(l)]) << l;
            EXPECT_EQ(a.dh[size_t(l)], b.dh[size_t(l)]) << l;
            EXPECT_EQ(a.dg[size_t(l)], b.dg[size_t(l)]) << l;
        }
}

TEST(BackwardTest, MemoryEstimateAndAutoMode) {
    ModelConfig c;  // a 7B LLaMA-2 shape
    c.num_layers = 32, c.hidden_size = 4096, c.intermediate_size = 11008, c.num_heads = 32, c.num_kv_heads = 32;
    c.head_dim = 128, c.vocab_size = 32000;
    const BackwardMemory store = Backprop::memory(c, 2048, true), rec = Backprop::memory(c, 2048, false);
    const double GiB = 1073741824.0;
    EXPECT_EQ(store.checkpoints, size_t(33) * 2048 * 4096 * 4);
    EXPECT_EQ(store.layer_acts, size_t(32) * 2048 * (4096 * 4 + 2 * 11008) * 4);
    EXPECT_EQ(rec.layer_acts, store.layer_acts / 32);
    EXPECT_GT(store.total() / GiB, 11.0);  // with 13.5 GB of BF16 weights: more than 24 GiB
    EXPECT_LT(rec.total() / GiB, 2.5);
}

// ---- golden values -----------------------------------------------------------------------

TEST(BackwardTest, GoldenDnllDhOfTheDemoModel) {
    const std::string dir = demo_model_dir();
    REQUIRE_REPO_FILE(dir + "/reference.json");
    const json ref = json::parse(read_file(dir + "/reference.json"));
    Checkpoint ck = Checkpoint::open(dir);
    auto model = Model::load(ck);
    const auto tok = ref["token_ids"].get<std::vector<int32_t>>();
    const int T = int(tok.size());
    Backprop bp(*model);
    Capture cap;
    const double nll = bp.run(tok.data(), T, &cap);
    EXPECT_NEAR(nll / (T - 1), ref["mean_nll"].get<double>(), 2e-5);
    for (const char* name : {"layer0", "layer5"}) {
        const json& f = ref["ffn"][name];
        const int l = name[5] - '0', t = f["position"].get<int>(), I = cap.I;
        const float* h = cap.h[size_t(l)].data() + size_t(t) * I;
        const float* dh = cap.dh[size_t(l)].data() + size_t(t) * I;
        const auto h8 = f["h_first8"].get<std::vector<double>>(), dh8 = f["dnll_dh_first8"].get<std::vector<double>>();
        const double dh_norm = f["dnll_dh_l2_norm"].get<double>();
        for (int i = 0; i < 8; ++i) {
            EXPECT_NEAR(h[i], h8[size_t(i)], 1e-5 + 1e-4 * std::fabs(h8[size_t(i)])) << name << " h " << i;
            // f32 against the reference's fp32 PyTorch: measured 2e-7 of the row's norm on the
            // sgemm path, 2.2e-6 for the norm on the amx path (its f32 accumulation rounds differently)
            EXPECT_NEAR(dh[i], dh8[size_t(i)], 4e-6 * dh_norm) << name << " dh " << i;
        }
        double hn = 0, dn = 0;
        for (int i = 0; i < I; ++i) hn += double(h[i]) * h[i], dn += double(dh[i]) * dh[i];
        EXPECT_NEAR(std::sqrt(hn), f["h_l2_norm"].get<double>(), 1e-4 * f["h_l2_norm"].get<double>()) << name;
        EXPECT_NEAR(std::sqrt(dn), dh_norm, 4e-6 * dh_norm) << name;
    }
}

// ---- pieces ------------------------------------------------------------------------------

TEST(MatmulTTest, MatchesDoubleProductForEveryDtypeAndBlockCount) {
    Rng rng(17);
    // [N, K]: one column block; and 4096 rows, so that 1100 columns make three blocks.
    for (auto [T, N, K] : {std::tuple{5, 37, 29}, std::tuple{3, 4096, 1100}, std::tuple{1, 8, 200}}) {
        std::vector<float> x(size_t(T) * N), w(size_t(N) * K);
        for (float& v : x) v = float(rng.normal());
        for (float& v : w) v = bf16_to_f32(f32_to_bf16(float(rng.normal())));  // exact in F32, BF16 (and near in F16)
        for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
            std::vector<uint8_t> buf(w.size() * dtype_size(dt));
            from_f32(dt, w.data(), buf.data(), w.size());
            std::vector<float> wq(w.size());
            to_f32(dt, buf.data(), wq.data(), w.size());
            const WeightRef W{buf.data(), dt, N, K};
            std::vector<float> y(size_t(T) * K, 1.0f);
            matmul_t(x.data(), T, W, y.data());
            std::vector<float> y2(y.size(), 1.0f);
            matmul_t(x.data(), T, W, y2.data(), /*accumulate=*/true);
            for (int t = 0; t < T; ++t)
                for (int k = 0; k < K; ++k) {
                    double s = 0, mag = 0;
                    for (int n = 0; n < N; ++n) {
                        s += double(x[size_t(t) * N + n]) * wq[size_t(n) * K + k];
                        mag += std::fabs(double(x[size_t(t) * N + n]) * wq[size_t(n) * K + k]);
                    }
                    const size_t i = size_t(t) * K + k;
                    ASSERT_NEAR(y[i], s, 1e-5 * mag + 1e-6) << dtype_name(dt) << " " << t << "," << k;
                    ASSERT_NEAR(y2[i], s + 1.0, 1e-5 * mag + 1e-5) << dtype_name(dt) << " " << t << "," << k;
                }
        }
    }
}

// The weight gradient's sgemm tiles are shared by the pool's threads: the same
// bits for 1 thread and for all of them, and the product it should be. Shapes:
// several tiles each way with short edge tiles, and a router's few rows.
TEST(BackwardTest, WeightGradSameBitsForAnyThreadCountAndMatchesDouble) {
    Rng rng(17);
    for (const auto& [N, K, n] : {std::tuple{300, 1100, 33}, std::tuple{8, 1300, 40}}) {
        std::vector<float> dy(size_t(n) * N), x(size_t(n) * K), w0(size_t(N) * K);
        for (float& v : dy) v = float(rng.normal());
        for (float& v : x) v = float(rng.normal());
        for (float& v : w0) v = float(rng.normal());
        std::vector<float> one = w0, all = w0;
        {
            ScopedThreadLimit limit(1);
            layers::add_weight_grad(one.data(), dy.data(), x.data(), n, N, K);
        }
        layers::add_weight_grad(all.data(), dy.data(), x.data(), n, N, K);
        EXPECT_EQ(one, all) << N << "x" << K;
        double maxerr = 0;
        for (int i = 0; i < N; ++i)
            for (int j = 0; j < K; ++j) {
                double s = w0[size_t(i) * K + j];
                for (int t = 0; t < n; ++t) s += double(dy[size_t(t) * N + i]) * x[size_t(t) * K + j];
                maxerr = std::max(maxerr, std::fabs(s - all[size_t(i) * K + j]));
            }
        EXPECT_LT(maxerr, 1e-3) << N << "x" << K;
    }
}

// dq, dk, dv of attention against their closed form in double, on random q, k, v, dout.
TEST(BackwardTest, AttentionBackwardMatchesClosedForm) {
    for (auto [heads, kv, window, T] : {std::tuple{4, 2, 0, 130}, std::tuple{3, 1, 5, 70}, std::tuple{2, 2, 0, 9}, std::tuple{4, 2, 9, 80}}) {
        const int d = 8, qld = heads * d, kld = kv * d, group = heads / kv;
        Rng rng{uint64_t(T)};
        auto rnd = [&](size_t n) {
            std::vector<float> v(n);
            for (float& x : v) x = float(rng.normal());
            return v;
        };
        const auto q = rnd(size_t(T) * qld), k = rnd(size_t(T) * kld), v = rnd(size_t(T) * kld), dout = rnd(size_t(T) * qld);
        std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), stats(2 * size_t(T) * heads);
        layers::AttnShape s{heads, kv, d, window ? std::optional<int>(window) : std::nullopt};
        layers::attention_backward(s, q.data(), k.data(), v.data(), T, dout.data(), dq.data(), dk.data(), dv.data(),
                                   stats.data());
        Vec edq(q.size(), 0.0), edk(k.size(), 0.0), edv(v.size(), 0.0);
        const double scale = 1.0 / std::sqrt(double(d));
        for (int h = 0; h < heads; ++h) {
            const int g = h / group;
            for (int t = 0; t < T; ++t) {
                const int lo = window ? std::max(0, t - window + 1) : 0;
                Vec p(size_t(T), 0.0), dp(size_t(T), 0.0);
                double mx = -1e300, sum = 0, D = 0;
                for (int j = lo; j <= t; ++j) {
                    double a = 0, b = 0;
                    for (int e = 0; e < d; ++e) {
                        a += double(q[size_t(t) * qld + h * d + e]) * k[size_t(j) * kld + g * d + e];
                        b += double(dout[size_t(t) * qld + h * d + e]) * v[size_t(j) * kld + g * d + e];
                    }
                    p[size_t(j)] = a * scale, dp[size_t(j)] = b;
                    mx = std::max(mx, p[size_t(j)]);
                }
                for (int j = lo; j <= t; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
                for (int j = lo; j <= t; ++j) D += (p[size_t(j)] /= sum) * dp[size_t(j)];
                for (int j = lo; j <= t; ++j) {
                    const double ds = p[size_t(j)] * (dp[size_t(j)] - D);
                    for (int e = 0; e < d; ++e) {
                        edq[size_t(t) * qld + h * d + e] += scale * ds * k[size_t(j) * kld + g * d + e];
                        edk[size_t(j) * kld + g * d + e] += scale * ds * q[size_t(t) * qld + h * d + e];
                        edv[size_t(j) * kld + g * d + e] += p[size_t(j)] * dout[size_t(t) * qld + h * d + e];
                    }
                }
            }
        }
        auto max_err = [](const std::vector<float>& a, const Vec& b) {
            double e = 0, m = 0;
            for (size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(a[i] - b[i])), m = std::max(m, std::fabs(b[i]));
            return e / m;
        };
        EXPECT_LT(max_err(dq, edq), 2e-6) << "T " << T;
        EXPECT_LT(max_err(dk, edk), 2e-6) << "T " << T;
        EXPECT_LT(max_err(dv, edv), 2e-6) << "T " << T;
    }
}

TEST(BackwardTest, RefusesShortOverlongAndBadWindows) {
    TempDir tmp;
    TinyModelSpec s;
    write_tiny_model(tmp.path, s);
    Checkpoint ck = Checkpoint::open(tmp.path);
    auto model = Model::load(ck);
    Backprop bp(*model);
    const std::vector<int32_t> one = {1};
    EXPECT_THROW(bp.run(one.data(), 1, nullptr), Error);
    const auto long_tok = random_tokens(s.max_pos + 1, s.vocab, 1);
    try {
        bp.run(long_tok.data(), int(long_tok.size()), nullptr);
        FAIL() << "no error for a window past max_position_embeddings";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("max_position_embeddings"), std::string::npos) << e.what();
    }
    std::vector<int32_t> bad = {1, 2, int32_t(s.vocab)};
    EXPECT_THROW(bp.run(bad.data(), 3, nullptr), Error);
}

}  // namespace
}  // namespace moefy
