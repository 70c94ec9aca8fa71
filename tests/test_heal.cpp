// Healing (pipeline/heal.h) and the weight gradients it rests on: the MoE
// backward (model/moe_ffn.h) checked against central finite differences in
// every layout, and against an independent PyTorch autograd (Debian's
// python3-torch) on a Mixtral-layout model; heal itself lowers the held-out
// calibration loss and writes the input's layout with only the trained
// tensors changed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>

#include "common/rng.h"
#include "convert/convert.h"
#include "io/safetensors.h"
#include "model/backward.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "pipeline/heal.h"
#include "split/expert_plan.h"
#include "split/random_split.h"
#include "tokenizer/tokenizer.h"
#include "test_util.h"
#include "tiny_model.h"

using namespace moefy;

namespace {

// Every tensor of a checkpoint copied to owned f32 buffers, and a Model that
// runs on them: changing a buffer changes the model.
struct LiveModel {
    std::map<std::string, std::vector<float>> w;
    std::unique_ptr<TensorStore> store;
    std::unique_ptr<Model> model;

    explicit LiveModel(const Checkpoint& ck) {
        std::vector<TensorView> views;
        for (const std::string& n : ck.tensors->names()) {
            TensorView v = ck.tensors->get(n);
            std::vector<float>& b = w[n] = ck.tensors->read_f32(n);
            v.dtype = DType::F32, v.data = reinterpret_cast<const uint8_t*>(b.data()), v.nbytes = b.size() * 4, v.file = nullptr;
            views.push_back(v);
        }
        store = TensorStore::from_views(ck.dir, std::move(views), nullptr);
        model = Model::load(ck.config, *store);
    }
    // The buffer behind a weight the model uses.
    std::vector<float>* buffer_of(const WeightRef& r) {
        for (auto& [n, b] : w)
            if (b.data() == r.data) return &b;
        return nullptr;
    }
};

// Gradients for every MoE weight: routers, shared gate, every expert's projections.
struct AllMoEGrads : ParamGrads {
    std::map<const void*, std::vector<float>> g;
    std::map<const void*, std::string> what;
    explicit AllMoEGrads(const Model& m) {
        for (int l = 0; l < m.config().num_layers; ++l) {
            const MoEWeights& mw = m.layer(l).moe;
            auto add = [&](const WeightRef& r, const std::string& name) {
                if (r.empty()) return;
                g[r.data].assign(size_t(r.rows * r.cols), 0.0f);
                what[r.data] = fmt::format("layer {} {}", l, name);
            };
            add(mw.router, "router"), add(mw.router_w1, "router w1"), add(mw.router_w2, "router w2");
            add(mw.shared_gate, "shared gate");
            for (size_t e = 0; e < mw.experts.size(); ++e) {
                add(mw.experts[e].gate, fmt::format("expert {} gate", e));
                add(mw.experts[e].up, fmt::format("expert {} up", e));
                add(mw.experts[e].down, fmt::format("expert {} down", e));
            }
            for (size_t s = 0; s < mw.shared.size(); ++s) {
                add(mw.shared[s].gate, fmt::format("shared {} gate", s));
                add(mw.shared[s].up, fmt::format("shared {} up", s));
                add(mw.shared[s].down, fmt::format("shared {} down", s));
            }
        }
    }
    float* grad_of(const WeightRef& r) override {
        auto it = g.find(r.data);
        return it == g.end() ? nullptr : it->second.data();
    }
};

struct Layout {
    const char* name;
    MoEFormat format;
    GateKind gate;
    int shared;  // shared experts taken from the plan's routed ones
};

const Layout kLayouts[] = {{"llama-moe mlp gate", MoEFormat::LlamaMoE, GateKind::Mlp, 0},
                           {"llama-moe linear gate", MoEFormat::LlamaMoE, GateKind::Linear, 0},
                           {"llama-moe-residual", MoEFormat::LlamaMoE, GateKind::Linear, 1},
                           {"mixtral", MoEFormat::Mixtral, GateKind::Linear, 0},
                           {"deepseek", MoEFormat::Deepseek, GateKind::Linear, 1}};

// A tiny dense F32 model cut into 5 experts (top-2), `shared` of them made always active.
std::string tiny_moe(const std::string& dir, const Layout& L, int layers = 2) {
    TinyModelSpec s;
    s.layers = layers, s.intermediate = 40, s.seed = 7;
    const std::string dense_dir = write_tiny_model(dir + "/dense", s);
    const Checkpoint dense = Checkpoint::open(dense_dir);
    ExpertPlan plan = random_split(dense, 5, 3);
    for (LayerPlan& lp : plan.layers)
        for (int i = 0; i < L.shared; ++i) {
            lp.shared.push_back(lp.experts.back());
            lp.experts.pop_back();
        }
    ConvertOptions o;
    o.format = L.format;
    o.gate = L.gate;
    o.top_k = 2;
    o.dtype = DType::F32;
    o.seed = 11;
    convert_checkpoint(dense, plan, dir + "/moe", o);
    return dir + "/moe";
}

std::vector<int32_t> tokens(int T, int V, uint64_t seed) {
    Rng rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(T));
    for (int32_t& x : t) x = int32_t(rng.below(uint64_t(V)));
    return t;
}

// Makes routing decisive (converted routers are N(0, 0.02): nearly uniform
// weights) and the residual gate non-zero, so that every gradient term is exercised.
void sharpen_routers(LiveModel& lm, uint64_t seed) {
    Rng rng(seed);
    for (int l = 0; l < lm.model->config().num_layers; ++l) {
        const MoEWeights& mw = lm.model->layer(l).moe;
        for (const WeightRef* r : {&mw.router, &mw.router_w1, &mw.router_w2, &mw.shared_gate})
            if (std::vector<float>* b = lm.buffer_of(*r))
                for (float& x : *b) x = float(0.7 * rng.normal());
    }
}

// The live model's tensors written as an F32 checkpoint beside ck's config.json.
std::string save_live(const LiveModel& lm, const Checkpoint& ck, const std::string& dir) {
    std::filesystem::create_directories(dir);
    std::vector<TensorSpec> specs;
    for (const auto& [n, b] : lm.w) specs.push_back({n, DType::F32, ck.tensors->get(n).shape});
    write_checkpoint_tensors(dir, specs, [&](size_t i, ByteSink& sink) {
        const std::vector<float>& b = lm.w.at(specs[i].name);
        sink.write(b.data(), b.size() * sizeof(float));
    }, size_t(1) << 40);
    std::filesystem::copy_file(ck.dir + "/config.json", dir + "/config.json");
    return dir;
}

bool python_has_torch() {
    return std::system("/usr/bin/python3 -c 'import importlib.util as u, sys; "
                       "sys.exit(u.find_spec(\"torch\") is None or u.find_spec(\"numpy\") is None)' >/dev/null 2>&1") == 0;
}

double mean_loss(Model& m, const std::vector<int32_t>& t) { return m.nll_sum(t.data(), int(t.size())) / double(t.size() - 1); }

// For every weight with a gradient: the directional derivative along a random
// unit direction d, (L(W + εd) − L(W − εd)) / 2ε, against ⟨∂L/∂W, d⟩. Returns
// how many weights were checked.
int check_directional_derivatives(LiveModel& lm, AllMoEGrads& grads, const std::function<double()>& loss, uint64_t seed) {
    Rng rng(seed);
    int checked = 0;
    for (auto& [data, g] : grads.g) {
        std::vector<float>* W = nullptr;
        for (auto& [n, b] : lm.w)
            if (b.data() == data) W = &b;
        EXPECT_NE(W, nullptr);
        if (!W) continue;
        std::vector<float> d(W->size());
        double nd = 0, gd = 0;
        for (float& x : d) x = float(rng.normal()), nd += double(x) * x;
        for (size_t i = 0; i < d.size(); ++i) d[i] = float(d[i] / std::sqrt(nd)), gd += double(g[i]) * d[i];
        const std::vector<float> w0 = *W;
        const double eps = 1e-2;
        for (size_t i = 0; i < d.size(); ++i) (*W)[i] = float(w0[i] + eps * d[i]);
        const double up = loss();
        for (size_t i = 0; i < d.size(); ++i) (*W)[i] = float(w0[i] - eps * d[i]);
        const double down = loss();
        *W = w0;
        const double fd = (up - down) / (2 * eps);
        EXPECT_NEAR(gd, fd, 5e-5 + 5e-3 * std::abs(fd)) << grads.what[data];
        ++checked;
    }
    return checked;
}

}  // namespace

TEST(HealGradients, MatchFiniteDifferencesInEveryLayout) {
    for (const Layout& L : kLayouts) {
        SCOPED_TRACE(L.name);
        TempDir tmp;
        const Checkpoint ck = Checkpoint::open(tiny_moe(tmp.path, L));
        LiveModel lm(ck);
        sharpen_routers(lm, 5);
        const std::vector<int32_t> t = tokens(24, ck.config.vocab_size, 9);
        AllMoEGrads grads(*lm.model);
        Backprop bp(*lm.model);
        const double loss = bp.run(t.data(), int(t.size()), nullptr, nullptr, &grads) / double(t.size() - 1);
        EXPECT_NEAR(loss, mean_loss(*lm.model, t), 1e-5 * loss);  // the backward's forward is the engine's
        const int checked = check_directional_derivatives(lm, grads, [&] { return mean_loss(*lm.model, t); }, 17);
        EXPECT_GE(checked, 2 * (5 - L.shared) * 3 + 2);
    }
}
TEST(HealGradients, MatchPyTorchAutogradOnMixtral) {
    if (!python_has_torch()) GTEST_SKIP() << "/usr/bin/python3 without torch/numpy (apt-get install python3-torch)";
    TempDir tmp;
    const Layout mixtral{"mixtral", MoEFormat::Mixtral, GateKind::Linear, 0};
    const Checkpoint converted = Checkpoint::open(tiny_moe(tmp.path, mixtral));
    LiveModel sharp(converted);
    sharpen_routers(sharp, 5);
    const Checkpoint ck = Checkpoint::open(save_live(sharp, converted, tmp.path + "/sharp"));
    LiveModel lm(ck);
    const std::vector<int32_t> t = tokens(20, ck.config.vocab_size, 4);
    AllMoEGrads grads(*lm.model);
    Backprop bp(*lm.model);
    const double loss = bp.run(t.data(), int(t.size()), nullptr, nullptr, &grads) / double(t.size() - 1);

    std::string list;
    for (int32_t x : t) list += (list.empty() ? "" : ",") + std::to_string(x);
    const std::string out = tmp.path + "/ref.json";
    const std::string cmd = "/usr/bin/python3 " + std::string(MOEFY_SOURCE_DIR) + "/tests/reference/mixtral_grads.py " + ck.dir +
                            " " + list + " " + out;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const nlohmann::json ref = nlohmann::json::parse(read_file(out));
    EXPECT_NEAR(loss, ref["loss"].get<double>(), 1e-5 * loss);
    size_t tensors = 0;
    for (const auto& [name, want] : ref["grads"].items()) {
        SCOPED_TRACE(name);
        const std::vector<float>& buf = lm.w.at(name);
        auto it = grads.g.find(buf.data());
        ASSERT_NE(it, grads.g.end());
        const std::vector<float>& got = it->second;
        ASSERT_EQ(got.size(), want.size());
        double num = 0, den = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            const double w = want[i].get<double>();
            num += (got[i] - w) * (got[i] - w), den += w * w;
        }
        EXPECT_LE(std::sqrt(num), 1e-4 * std::sqrt(den) + 1e-7) << "relative error " << std::sqrt(num / std::max(den, 1e-30));
        ++tensors;
    }
    EXPECT_EQ(tensors, size_t(2 * (1 + 5 * 3)));  // per layer: the router and 5 experts' w1, w2, w3
}

namespace {

// The demo model cut into 8 random experts, Mixtral layout with random routers, top-2 (no calibration needed).
std::string demo_moe(const std::string& dir) {
    const Checkpoint dense = Checkpoint::open(demo_model_dir());
    ConvertOptions o;
    o.format = MoEFormat::Mixtral;
    o.top_k = 2;
    convert_checkpoint(dense, random_split(dense, 8, 1), dir, o);
    return dir;
}

std::vector<TokenWindow> calib_windows(const Checkpoint& ck, size_t tokens) {
    auto tok = Tokenizer::from_dir(ck.dir);
    return read_windows(repo_data_file("calib.jsonl"), "", *tok, 128, tokens);
}

}  // namespace

TEST(Heal, LowersTheHeldOutLossAndWritesTheSameLayout) {
    TempDir tmp;
    const Checkpoint moe = Checkpoint::open(demo_moe(tmp.path + "/moe"));
    const auto windows = calib_windows(moe, 8192);
    HealOptions h;
    h.out_dir = tmp.path + "/healed";
    h.steps = 20;
    h.accumulate = 2;
    h.all_experts = false;  // routers and down projections: then only those may change
    const HealResult r = heal_checkpoint(moe, windows, h);
    EXPECT_EQ(r.steps, 20);
    EXPECT_EQ(r.heldout_windows, windows.size() / 8);
    EXPECT_LT(r.heldout_nll_after, r.heldout_nll_before - 0.05) << r.heldout_nll_before;

    // The written checkpoint measures what heal reported: the trained tensors as stored (BF16).
    const Checkpoint healed = Checkpoint::open(h.out_dir);
    auto model = Model::load(healed);
    double nll = 0;
    for (size_t i = 7; i < windows.size(); i += 8) nll += model->nll_sum(windows[i].data(), int(windows[i].size()));
    EXPECT_NEAR(nll / double(r.heldout_tokens), r.heldout_nll_after, 1e-6);

    // Same tensors, dtypes and shapes; only routers and expert down projections (w2) changed; other files as they were.
    EXPECT_EQ(healed.tensors->names().size(), moe.tensors->names().size());
    size_t changed = 0;
    for (const std::string& n : moe.tensors->names()) {
        const TensorView& a = moe.tensors->get(n);
        const TensorView* b = healed.tensors->find(n);
        ASSERT_NE(b, nullptr) << n;
        EXPECT_EQ(a.dtype, b->dtype) << n;
        EXPECT_EQ(a.shape, b->shape) << n;
        const bool same = std::memcmp(a.data, b->data, a.nbytes) == 0;
        const bool trained = n.find(".gate.weight") != std::string::npos || n.find(".w2.weight") != std::string::npos;
        if (!trained) {
            EXPECT_TRUE(same) << n;
        }
        changed += !same;
    }
    EXPECT_EQ(changed, size_t(moe.config.num_layers * (1 + 8)));
    EXPECT_EQ(read_file(h.out_dir + "/config.json"), read_file(moe.dir + "/config.json"));
    EXPECT_EQ(read_file(h.out_dir + "/tokenizer.model"), read_file(moe.dir + "/tokenizer.model"));

    // Same bytes on a rerun.
    h.out_dir = tmp.path + "/again";
    heal_checkpoint(moe, windows, h);
    EXPECT_EQ(read_file(tmp.path + "/again/model.safetensors"), read_file(tmp.path + "/healed/model.safetensors"));
}

TEST(Heal, RefusesWhatItCannotTrainAndWritesNothing) {
    TempDir tmp;
    const Checkpoint dense = Checkpoint::open(demo_model_dir());
    const auto windows = calib_windows(dense, 2048);
    HealOptions h;
    h.out_dir = tmp.path + "/out";
    EXPECT_NE(error_of([&] { heal_checkpoint(dense, windows, h); }).find("is a dense model"), std::string::npos);
    const Checkpoint moe = Checkpoint::open(demo_moe(tmp.path + "/moe"));
    EXPECT_NE(error_of([&] { heal_checkpoint(moe, {windows[0]}, h); }).find("at least 2"), std::string::npos);
    h.steps = 0;
    EXPECT_NE(error_of([&] { heal_checkpoint(moe, windows, h); }).find("--steps 0"), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(h.out_dir));
    h.steps = 1;
    h.out_dir = moe.dir;  // exists, no --force
    EXPECT_NE(error_of([&] { heal_checkpoint(moe, windows, h); }).find("exists"), std::string::npos);
}

TEST(HealCli, BuildHealsAfterConvertAndReportsIt) {
    TempDir tmp;
    const CliResult c = run_cli(fmt::format(
        "build --model {} --method random --experts 8 --top-k 2 --format mixtral --router random --scale auto --no-refit "
        "--data {} --calib-tokens 4096 --ctx 128 --heal-steps 8 --out {}/moe --json",
        demo_model_dir(), repo_data_file("calib.jsonl"), tmp.path));
    ASSERT_EQ(c.status, 0) << c.out;
    const nlohmann::json j = nlohmann::json::parse(c.out.substr(c.out.find('{')));
    EXPECT_EQ(j["heal"]["steps"], 8);
    EXPECT_LT(j["heal"]["heldout_nll_after"].get<double>(), j["heal"]["heldout_nll_before"].get<double>());
    EXPECT_TRUE(j["stages"].contains("heal"));
    const Checkpoint built = Checkpoint::open(tmp.path + "/moe");
    EXPECT_TRUE(Model::load(built)->config().is_moe());
    // GGUF: healed in a copy of the file; only the trained tensors' bytes differ from the unhealed build.
    const std::string gguf = fmt::format(
        "build --model {} --method random --experts 8 --top-k 2 --format gguf --dtype bf16 --router random --scale auto "
        "--no-refit --data {} --calib-tokens 4096 --ctx 128 --heal-tokens 4096 --json",
        demo_model_dir(), repo_data_file("calib.jsonl"));
    const CliResult g = run_cli(gguf + fmt::format(" --heal-steps 4 --out {}/healed.gguf", tmp.path));
    ASSERT_EQ(g.status, 0) << g.out;
    const nlohmann::json gj = nlohmann::json::parse(g.out.substr(g.out.find('{')));
    EXPECT_LT(gj["heal"]["heldout_nll_after"].get<double>(), gj["heal"]["heldout_nll_before"].get<double>());
    ASSERT_EQ(run_cli(gguf + fmt::format(" --out {}/plain.gguf", tmp.path)).status, 0);
    const std::string a = read_file(tmp.path + "/plain.gguf"), b = read_file(tmp.path + "/healed.gguf");
    ASSERT_EQ(a.size(), b.size());
    EXPECT_NE(a, b);
    const Checkpoint healed = Checkpoint::open(tmp.path + "/healed.gguf");
    const Checkpoint plain = Checkpoint::open(tmp.path + "/plain.gguf");
    for (const std::string& n : plain.tensors->names()) {
        const TensorView& x = plain.tensors->get(n);
        const bool same = std::memcmp(x.data, healed.tensors->get(n).data, x.nbytes) == 0;
        const bool trained = n.find("block_sparse_moe") != std::string::npos;
        if (!trained) {
            EXPECT_TRUE(same) << n;
        }
    }
    std::string q8 = gguf;
    q8.replace(q8.find("--dtype bf16"), 12, "--dtype q8_0");
    const CliResult q = run_cli(q8 + fmt::format(" --heal-steps 2 --out {}/q.gguf", tmp.path));
    EXPECT_EQ(q.status, 1);
    EXPECT_NE(q.out.find("--heal-steps with --dtype q8_0"), std::string::npos) << q.out;
    EXPECT_FALSE(std::filesystem::exists(tmp.path + "/q.gguf"));
}

TEST(HealGradients, DistillationLossMatchesFiniteDifferences) {
    TempDir tmp;
    const Layout mixtral{"mixtral", MoEFormat::Mixtral, GateKind::Linear, 0};
    const Checkpoint ck = Checkpoint::open(tiny_moe(tmp.path, mixtral));
    LiveModel lm(ck);
    sharpen_routers(lm, 5);
    const int V = ck.config.vocab_size;
    const std::vector<int32_t> t = tokens(20, V, 9);
    const size_t n = t.size() - 1;
    std::vector<float> q(n * size_t(V));  // a random teacher distribution per position
    Rng rng(21);
    for (size_t i = 0; i < n; ++i) {
        double z = 0;
        for (int j = 0; j < V; ++j) z += (q[i * V + j] = float(std::exp(2 * rng.normal())));
        for (int j = 0; j < V; ++j) q[i * V + j] = float(q[i * V + j] / z);
    }
    // Mean KL(q ‖ p) over the positions, p from the model's logits.
    auto kl = [&] {
        std::vector<float> logits(t.size() * size_t(V));
        lm.model->forward(t.data(), int(t.size()), 0, nullptr, logits.data());
        double s = 0;
        for (size_t i = 0; i < n; ++i) {
            const float* r = logits.data() + i * V;
            double mx = *std::max_element(r, r + V), z = 0;
            for (int j = 0; j < V; ++j) z += std::exp(r[j] - mx);
            for (int j = 0; j < V; ++j) s += q[i * V + j] * (std::log(q[i * V + j]) - (r[j] - mx - std::log(z)));
        }
        return s / double(n);
    };
    AllMoEGrads grads(*lm.model);
    Backprop bp(*lm.model);
    const double loss = bp.run(t.data(), int(t.size()), nullptr, nullptr, &grads, q.data()) / double(n);
    EXPECT_NEAR(loss, kl(), 1e-5 * loss);
    EXPECT_EQ(check_directional_derivatives(lm, grads, kl, 3), 2 * (1 + 5 * 3));
}
